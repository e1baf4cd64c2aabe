"""Two-stage stream pretraining of the RVF model, as in the paper (Shad et al. 2021):

1. Kinetics: each stream starts from a local Kinetics-format weights file (a video network
   trained on RGB Kinetics-400, e.g. torchvision's ``r3d_18-b3b3357e.pth`` or a cinelab
   checkpoint of the stream backbone); the stem is adapted to 1 (grey) or 2 (flow) channels
   (timm's rule) and the 400-class head is dropped;
2. EchoNet EF: each stream is trained to regress EF on a prepared EchoNet store with optical
   flow (grey clips for the grey stream, flow dx/dy clips for the flow stream);
3. transfer: the RVF two-stream classifier loads ``model.pretrained="grey=<...>;flow=<...>"``
   (`pretrained_spec`): each stream takes its own EF model, heads re-initialised.

Files in `out`: ``grey/`` and ``flow/`` (training runs, model.pt each) and pretrained.json
(``{"grey": path, "flow": path, "pretrained": "grey=...;flow=...", "kinetics": path}``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cinelab.data.flow_store import flow_files
from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.models.fusion import INPUT_LAYOUT, STREAM_CHANNELS
from cinelab.prep.flow import prepare_flow
from cinelab.train.fit import fit
from cinelab.train.recipe import load_recipe
from cinelab.utils import is_done, mark_done, read_json, write_json

PRETRAIN_RECIPE = "rvf-stream-pretrain-cpu"
PRETRAINED_FILE = "pretrained.json"
MODEL_FILE = "model.pt"


def pretrained_spec(models: dict[str, str | Path]) -> str:
    """The two_stream ``model.pretrained`` value for per-stream files: "grey=a;flow=b"."""
    return ";".join(f"{name}={models[name]}" for name in INPUT_LAYOUT if name in models)


def _ensure_flow(store: Path, method: str, workers: int | None) -> None:
    ids = [str(i) for i in PreparedStore(store).ids]
    if any(not flow_files(store, i)["meta"].exists() for i in ids):
        summary = prepare_flow(store, method, workers=workers)
        if summary.failed:
            raise InputError(store, "flow", "optical flow for every video of the EF store",
                             f"{summary.failed} video(s) failed",
                             "see the problems and `cinelab rvf flow STORE`")


def pretrain_streams(store: str | Path, out: str | Path, kinetics: str | Path | None = None,
                     recipe: str | Path = PRETRAIN_RECIPE, overrides: Sequence[str] = (),
                     streams: Sequence[str] = INPUT_LAYOUT, max_epochs: int | None = None,
                     flow_method: str = "farneback", workers: int | None = None,
                     accelerator: str | None = None) -> dict[str, Any]:
    """Kinetics -> EF pretraining of each stream on `store` (resumable per stream); returns
    the content of pretrained.json (see the module docstring)."""
    store, out = Path(store), Path(out)
    unknown = sorted(set(streams) - set(INPUT_LAYOUT))
    if not streams or unknown:
        raise InputError(None, "streams", f"one or both of {list(INPUT_LAYOUT)}",
                         repr(list(streams)))
    if kinetics is not None and not Path(kinetics).is_file():
        raise InputError(kinetics, "kinetics", "a local Kinetics-format weights file",
                         "no such file", "download it once, e.g. torchvision's r3d_18 file")
    if "flow" in streams:
        _ensure_flow(store, flow_method, workers)
    models: dict[str, str] = {}
    for name in (s for s in INPUT_LAYOUT if s in streams):
        run = out / name
        if not is_done(run):
            sets = [*overrides, f"model.kwargs.in_channels={STREAM_CHANNELS[name]}"]
            if kinetics is not None:
                sets.append(f"model.pretrained={kinetics}")
            fit(load_recipe(recipe, sets), store, run, resume=True, progress=False,
                max_epochs=max_epochs, accelerator=accelerator)
            mark_done(run, [MODEL_FILE])
        models[name] = str(run / MODEL_FILE)
    result = {**models, "pretrained": pretrained_spec(models),
              "kinetics": None if kinetics is None else str(kinetics), "store": str(store)}
    write_json(out / PRETRAINED_FILE, result)
    return result


def read_pretrained(path: str | Path) -> str:
    """The ``model.pretrained`` value from a pretrain folder (or its pretrained.json)."""
    path = Path(path)
    file = path / PRETRAINED_FILE if path.is_dir() else path
    if not file.is_file():
        raise InputError(file, "pretrained", "a folder written by `cinelab rvf pretrain`",
                         "no pretrained.json")
    return str(read_json(file)["pretrained"])
