"""`cinelab import echonet`: EchoNet-Dynamic's released weights -> cinelab checkpoints.

EchoNet-Dynamic (Ouyang et al., Nature 2020) released ``deeplabv3_resnet50_random.pt`` (LV
segmentation) and ``r2plus1d_18_32_2_pretrained.pt`` (EF from 32-frame clips, period 2):
``torch.save`` dicts whose "state_dict" keys carry DataParallel's "module." prefix, saved from
GPU. They become self-describing cinelab checkpoints (recipes echonet-seg / echonet-ef) that
`load_checkpoint` and `predict` use like any trained model.

EchoNet normalises with the mean/std of *its* training videos (computed per run by
``echonet.utils.get_mean_and_std``, 0-255 units) and the release does not record them, so
they must be given: explicitly, or from a prepared store of the EchoNet-Dynamic data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.models.weights import resolve_weights
from cinelab.pipelines.echonet.weights import load_echonet_model
from cinelab.train.checkpoint import InputSpec, save_checkpoint
from cinelab.train.recipe import load_recipe, recipe_to_dict
from cinelab.utils import file_hash

SEG_RECIPE = "echonet-seg"
EF_RECIPE = "echonet-ef"
ECHONET_SIZE = 112
ECHONET_CHANNELS = 3
ECHONET_FRAMES = 32
ECHONET_PERIOD = 2
ECHONET_EF_TARGET = "EF"
ECHONET_SEG_TARGET = "LV"  # the LV cavity mask, as in cinelab's segmentation training
SOURCE = "EchoNet-Dynamic release (https://github.com/echonet/dynamic/releases)"


def _stats(mean: Sequence[float] | None, std: Sequence[float] | None,
           store: str | Path | PreparedStore | None) -> tuple[list[float], list[float]]:
    """Per-channel mean/std (0-255): given explicitly, or read from a prepared store."""
    if mean is None and std is None and store is not None:
        store = store if isinstance(store, PreparedStore) else PreparedStore(store)
        mean, std = store.mean.tolist(), store.std.tolist()
    if mean is None or std is None:
        raise InputError(None, "mean/std", "EchoNet's per-channel training-set mean and std "
                         "(0-255 units)", "none given",
                         "pass --mean/--std, or --store with a prepared EchoNet-Dynamic store")
    mean, std = _channel_values("mean", mean), _channel_values("std", std)
    if min(std) <= 0:
        raise InputError(None, "std", "values > 0", str(std))
    return mean, std


def _channel_values(name: str, values: Sequence[float]) -> list[float]:
    """One float per channel (a single value is repeated)."""
    out = [float(v) for v in values]
    out = out * ECHONET_CHANNELS if len(out) == 1 else out
    if len(out) != ECHONET_CHANNELS:
        raise InputError(None, name, f"1 or {ECHONET_CHANNELS} values", str(list(values)))
    return out


def _import_one(path: str | Path, recipe_name: str, out: Path, spec: InputSpec,
                overrides: Sequence[str] = ()) -> Path:
    """Load one release file into its recipe's model and save it as a cinelab checkpoint."""
    recipe = load_recipe(recipe_name, overrides)
    file = resolve_weights(path)
    model = load_echonet_model(file, recipe.model.name, **dict(recipe.model.kwargs))
    extra = {"imported_from": SOURCE, "source_file": str(file), "source_sha256": file_hash(file)}
    return save_checkpoint(out / f"{recipe_name}.pt", model, recipe_to_dict(recipe), spec, extra)


def import_echonet(seg_path: str | Path | None, ef_path: str | Path | None,
                   out_dir: str | Path, frames: int = ECHONET_FRAMES,
                   period: int = ECHONET_PERIOD, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None,
                   store: str | Path | PreparedStore | None = None) -> dict[str, Path]:
    """Import EchoNet-Dynamic's released files into out_dir/echonet-seg.pt, echonet-ef.pt.

    Returns {"echonet-seg": path, "echonet-ef": path} for the files given. `frames`/`period`
    describe the EF model's clips (32/2 for r2plus1d_18_32_2_pretrained.pt); `mean`/`std`
    (0-255, per channel) or `store` give EchoNet's normalisation.
    """
    if seg_path is None and ef_path is None:
        raise InputError(None, "seg_path/ef_path", "at least one EchoNet-Dynamic file", "none")
    mean, std = _stats(mean, std, store)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if seg_path is not None:
        spec = InputSpec(task=load_recipe(SEG_RECIPE).task, size=ECHONET_SIZE,
                         channels=ECHONET_CHANNELS, mean=mean, std=std,
                         target=ECHONET_SEG_TARGET)
        written[SEG_RECIPE] = _import_one(seg_path, SEG_RECIPE, out, spec)
    if ef_path is not None:
        spec = InputSpec(task=load_recipe(EF_RECIPE).task, size=ECHONET_SIZE,
                         channels=ECHONET_CHANNELS, frames=int(frames), period=int(period),
                         mean=mean, std=std, target=ECHONET_EF_TARGET)
        written[EF_RECIPE] = _import_one(ef_path, EF_RECIPE, out, spec,
                                         [f"data.frames={int(frames)}",
                                          f"data.period={int(period)}"])
    return written
