"""Execution engines for prediction, and checkpoint export (ONNX, TorchScript).

`load_engine(checkpoint, engine)` returns an `Engine`: a callable on a batch tensor that
returns the model's output tensor (a torchvision segmentation model's ``{"out": ...}`` is
unwrapped), and with `Engine.predict` also the features the checkpoint's OOD detector scores
(``features``: `engine_outputs.FeatureSpec`, the same numbers `infer.ood.capture_features`
takes from the eager model), whatever runs it:

- ``"eager"``: the PyTorch module as loaded (the reference);
- ``"compiled"``: ``torch.compile`` of it (Inductor; the first batch of each new shape
  compiles, later ones are fast);
- ``"onnx"``: the model exported with `torch.onnx.export` (TorchScript-based exporter,
  dynamic batch axis) and run by ONNX Runtime (CPUExecutionProvider with as many intra-op
  threads as torch uses; CUDAExecutionProvider first when `device` is CUDA and ORT has it).
  An exported ``.onnx`` file (with its JSON sidecar) loads directly too.

An `Engine` also answers ``eval()`` and ``to(device)`` (both return itself), so code written
for an ``nn.Module`` (``model.eval().to(device)`` then ``model(x)``) takes an engine as is,
and `capture_features(engine, ...)` yields the engine's ``features`` when they are taken
where asked (`Engine.feature_capture`; an InputError otherwise). `EngineCache` loads each
checkpoint of a predict call once (exported once, or the ``.onnx`` `cinelab export` wrote
beside it).

Outputs agree with eager within `TOLERANCE`: ``max|engine - eager| <= TOLERANCE *
max(1, max|eager|)`` (float32; `output_difference` computes the left side over the scale).

`export_checkpoint(ckpt, out, fmt)` writes ``out`` (ONNX or TorchScript) and a JSON sidecar
``out + ".json"``: the input spec, input/output names and shapes, dynamic axes, opset, the
checkpoint's hash, versions, the export's measured difference from eager, the features
(``features``: modules, capture, pool, output name, dim; null without) and the
checkpoint's uncertainty state (``uncertainty``: intervals, calibration, OOD; JSON-safe).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cinelab.errors import CinelabError, InputError
from cinelab.infer.engine_outputs import (
    FEATURES_NAME,
    OUTPUT_NAME,
    Engine,
    FeatureSpec,
    OutputModule,
    check_features,
    default_features,
    named_outputs,
    output_tensor,  # noqa: F401 - re-exported
)
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.models import model_task
from cinelab.train.checkpoint import InputSpec, LoadedCheckpoint, load_checkpoint
from cinelab.utils import atomic_path, file_hash, read_json, versions, write_json

ENGINES = ("eager", "compiled", "onnx")
EXPORT_FORMATS = ("onnx", "torchscript")
FORMAT_SUFFIX = {"onnx": ".onnx", "torchscript": ".ts"}
SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = "cinelab-export/1"
INPUT_NAME, BATCH_AXIS = "input", "batch"
AUTO = "auto"  # features: the OOD detector's (`default_features`)
DEFAULT_OPSET = 17
DEFAULT_FRAMES = 16  # clip length of a video model whose input spec records none
TOLERANCE = 1e-4  # max |engine - eager| relative to max(1, max |eager|)
VIDEO_TASK_WORDS = ("video", "regression", "cine")


def _loaded(checkpoint: str | Path | LoadedCheckpoint) -> LoadedCheckpoint:
    return checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load_checkpoint(checkpoint)


def is_video(loaded: LoadedCheckpoint) -> bool:
    """True for a model that takes clips (B, C, T, H, W): by its registered task, else by the
    checkpoint's task name."""
    name = (loaded.recipe.get("model") or {}).get("name")
    try:
        return model_task(str(name)) == "video"
    except (CinelabError, KeyError, ValueError):
        return any(w in str(loaded.input_spec.task) for w in VIDEO_TASK_WORDS)


def input_shape(loaded: LoadedCheckpoint, batch: int = 1) -> tuple[int, ...]:
    """The shape of one batch the model expects, from its input spec."""
    spec = loaded.input_spec
    size, channels = int(spec.size), int(spec.channels)
    if is_video(loaded):
        return (batch, channels, int(spec.frames or DEFAULT_FRAMES), size, size)
    return (batch, channels, size, size)


def _example(shape: Sequence[int], device: torch.device) -> Tensor:
    return torch.randn(*[int(s) for s in shape], generator=torch.Generator().manual_seed(0)
                       ).to(device)


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise InputError(None, "engine", f"one of {', '.join(ENGINES)}", repr(engine))


def load_engine(checkpoint_or_loaded: str | Path | LoadedCheckpoint, engine: str = "eager",
                example_shape: Sequence[int] | None = None,
                device: str | torch.device = "cpu", features: FeatureSpec | None | str = AUTO,
                taps: Mapping[str, str] | None = None) -> Engine:
    """An `Engine` running the checkpoint's model (a path, a `LoadedCheckpoint`, or an exported
    ``.onnx`` file with its sidecar) with `engine` (one of `ENGINES`).

    `example_shape` (default: one batch from the input spec) is what ONNX export traces
    and what `compiled` warms up on; the batch axis stays dynamic either way. `features`
    (default "auto": `default_features`, the OOD detector's) adds the ``features`` output,
    `taps` named submodules' outputs (`engine_outputs`).
    """
    device = torch.device(device)
    if not isinstance(checkpoint_or_loaded, LoadedCheckpoint) and \
            Path(checkpoint_or_loaded).suffix == FORMAT_SUFFIX["onnx"]:
        return load_onnx_file(checkpoint_or_loaded, device)
    _check_engine(engine)
    loaded = _loaded(checkpoint_or_loaded)
    shape = tuple(int(s) for s in (example_shape or input_shape(loaded)))
    spec = _features(loaded, features)
    wrapped = OutputModule(loaded.model, spec, taps).eval().to(device)
    names = wrapped.output_names()
    args = (engine, loaded.input_spec, shape)
    if engine == "eager":
        return Engine(*args, _Named(wrapped, names), device, module=loaded.model, features=spec)
    if engine == "compiled":  # static shapes: one compilation per batch size seen
        compiled = torch.compile(wrapped, dynamic=False)
        return Engine(*args, _Named(compiled, names), device, module=loaded.model,
                      features=spec)
    buffer = io.BytesIO()
    _onnx_export(wrapped.cpu(), shape, buffer, DEFAULT_OPSET)
    wrapped.to(device)
    session = _ort_session(buffer.getvalue(), device)
    return Engine(*args, _OrtRunner(session), device, {"providers": session.get_providers()},
                  module=loaded.model, features=spec)


def _features(loaded: LoadedCheckpoint, features: FeatureSpec | None | str) -> FeatureSpec | None:
    """The features to output: `default_features` for AUTO, else `features` (checked)."""
    if isinstance(features, str):  # AUTO
        return default_features(loaded.model, loaded.info.get("extra"))
    return None if features is None else check_features(loaded.model, features)


class _Named:
    """A module returning a tuple as ``Tensor -> {name: Tensor}``."""

    def __init__(self, module: Any, names: Sequence[str]) -> None:
        self.module, self.names = module, list(names)

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        return named_outputs(self.names, self.module(x))


def engine_checkpoint(loaded: LoadedCheckpoint, engine: str = "eager",
                      device: str | torch.device = "cpu",
                      example_shape: Sequence[int] | None = None,
                      features: FeatureSpec | None | str = AUTO,
                      taps: Mapping[str, str] | None = None,
                      path: str | Path | None = None) -> LoadedCheckpoint:
    """The checkpoint with its model replaced by an `Engine` (``"eager"``: unchanged), so a
    predict function written for ``loaded.model`` runs on any engine:
    ``loaded = engine_checkpoint(loaded, options.get("engine", "eager"), options.device)``.
    With the checkpoint's `path`, the ONNX file `cinelab export` wrote beside it
    (``model.onnx``, its sidecar naming this checkpoint's hash; not with `taps`) is used
    instead of exporting again (``info["file"]``, for run.json); its features are those it
    was exported with (an older file: none, `Engine.has_features` says so)."""
    _check_engine(engine)
    if engine == "eager":
        return loaded
    spec = _features(loaded, features)
    exported = None if engine != "onnx" or taps or path is None else exported_beside(path)
    runner = load_onnx_file(exported, device) if exported else \
        load_engine(loaded, engine, example_shape, device, spec, taps)
    runner.module = loaded.model
    return LoadedCheckpoint(runner, loaded.recipe, loaded.input_spec,  # type: ignore[arg-type]
                            {**loaded.info, "engine": engine})


def exported_beside(path: str | Path) -> Path | None:
    """``<checkpoint>.onnx`` when `cinelab export` wrote it from this very checkpoint (its
    sidecar's hash), else None."""
    path = Path(path)
    onnx = path.with_suffix(FORMAT_SUFFIX["onnx"])
    if not path.is_file() or not onnx.is_file() or not sidecar_path(onnx).is_file():
        return None
    try:
        side = read_sidecar(onnx)
    except (InputError, ValueError, OSError):
        return None
    return onnx if side.get("checkpoint_sha256") == file_hash(path) else None


class EngineCache:
    """Checkpoints behind one engine, each loaded (and exported) once per predict call."""

    def __init__(self, engine: str = "eager", device: str | torch.device = "cpu") -> None:
        _check_engine(engine)
        self.engine, self.device = engine, device
        self.loaded: dict[tuple[str, str], LoadedCheckpoint] = {}

    def load(self, path: str | Path, features: FeatureSpec | None | str = AUTO,
             taps: Mapping[str, str] | None = None) -> LoadedCheckpoint:
        """The checkpoint at `path` behind the engine (the same object on later calls;
        eager ones are loaded afresh, not kept)."""
        if self.engine == "eager":
            return load_checkpoint(path)
        key = (str(Path(path).resolve()), repr((features, sorted((taps or {}).items()))))
        if key not in self.loaded:
            self.loaded[key] = engine_checkpoint(load_checkpoint(path), self.engine,
                                                 self.device, None, features, taps, path)
        return self.loaded[key]

    def record(self) -> dict[str, Any]:
        """run.json's ``engine``: the name and, per checkpoint, what runs it."""
        models = {k[0]: dict(getattr(v.model, "info", {})) for k, v in self.loaded.items()}
        return {"name": self.engine, **({"models": models} if self.engine != "eager" else {})}


class _OrtRunner:
    """ONNX Runtime session as ``Tensor -> {name: Tensor}`` (on the input's device)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.names = [o.name for o in session.get_outputs()]

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        outs = self.session.run(None, {self.input_name: array})
        return named_outputs(self.names, [torch.from_numpy(np.asarray(o)).to(x.device)
                                          for o in outs])


def _ort_session(model: bytes | str, device: torch.device) -> Any:
    import onnxruntime as ort  # heavy; only when the ONNX engine is used

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(model, sess_options=options, providers=providers)


def _onnx_export(module: OutputModule, shape: Sequence[int], f: Any, opset: int) -> None:
    """Export with the TorchScript-based exporter (the dynamo one needs onnxscript), the
    batch axis of the input and of every output dynamic."""
    example = _example(shape, torch.device("cpu"))
    names = module.output_names()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), f, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=names,
                          dynamic_axes={n: {0: BATCH_AXIS} for n in [INPUT_NAME, *names]},
                          do_constant_folding=True)


def load_onnx_file(path: str | Path, device: str | torch.device = "cpu") -> Engine:
    """An ONNX Runtime `Engine` from a file written by `export_checkpoint` (its sidecar gives
    the input spec and the features; an older sidecar without them: no features)."""
    path, device = Path(path), torch.device(device)
    sidecar = read_sidecar(path)
    session = _ort_session(str(path), device)
    runner = _OrtRunner(session)
    features = FeatureSpec.from_dict(sidecar.get("features"))
    if FEATURES_NAME not in runner.names:
        features = None
    return Engine("onnx", InputSpec(**sidecar["input_spec"]),
                  tuple(int(s) for s in sidecar["example_shape"]), runner, device,
                  {"providers": session.get_providers(), "file": str(path)}, features=features)


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar of an exported model file: ``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar of an exported file, checked for its format."""
    side = sidecar_path(path)
    if not side.is_file():
        raise InputError(path, "sidecar", f"an exported model with its sidecar {side.name}",
                         "no sidecar", "export it with `cinelab export`")
    data = read_json(side)
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise InputError(side, "format", SIDECAR_FORMAT, repr(found))
    return data


def output_difference(output: Tensor, reference: Tensor) -> float:
    """``max|output - reference| / max(1, max|reference|)``: compare with `TOLERANCE`."""
    output, reference = output.detach().float().cpu(), reference.detach().float().cpu()
    if output.shape != reference.shape:
        raise ValueError(f"output shape {tuple(output.shape)} differs from the reference's "
                         f"{tuple(reference.shape)}")
    scale = max(1.0, float(reference.abs().max())) if reference.numel() else 1.0
    return float((output - reference).abs().max()) / scale if output.numel() else 0.0


def export_checkpoint(ckpt: str | Path | LoadedCheckpoint, out: str | Path, fmt: str = "onnx",
                      example_shape: Sequence[int] | None = None,
                      opset: int = DEFAULT_OPSET,
                      features: FeatureSpec | None | str = AUTO) -> Path:
    """Write the checkpoint's model as ONNX or TorchScript to `out`, and its sidecar.

    The graph outputs the prediction (``output``) and, where `features` (default: the
    checkpoint's OOD detector's, `default_features`) says, the ``features`` (N, D) the OOD
    detector scores. The export is run once on an example batch (batch 2, to exercise the
    dynamic axis) and compared with eager; the relative differences are recorded in the
    sidecar, and an export differing by more than `TOLERANCE` is refused (nothing written).
    """
    if fmt not in EXPORT_FORMATS:
        raise InputError(None, "format", f"one of {', '.join(EXPORT_FORMATS)}", repr(fmt))
    loaded = _loaded(ckpt)
    out = Path(out)
    shape = tuple(int(s) for s in (example_shape or input_shape(loaded)))
    module = OutputModule(loaded.model, _features(loaded, features)).eval().cpu()
    check = _example((2, *shape[1:]), torch.device("cpu"))
    with torch.no_grad():
        reference = list(named_outputs(module.output_names(), module(check)).values())
    with atomic_path(out) as tmp:
        if fmt == "onnx":
            _onnx_export(module, shape, str(tmp), opset)
            produced = list(_OrtRunner(_ort_session(str(tmp), torch.device("cpu")))(check)
                            .values())
        else:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(module, (_example(shape, torch.device("cpu")),))
                traced.save(str(tmp))
                produced = list(named_outputs(module.output_names(),
                                              torch.jit.load(str(tmp))(check)).values())
        differences = [output_difference(a, b) for a, b in zip(produced, reference,
                                                                strict=True)]
        if not max(differences) <= TOLERANCE:
            raise CinelabError(f"{out}: the {fmt} export differs from eager by "
                               f"{max(differences):.3g} (relative), above the tolerance "
                               f"{TOLERANCE}")
    write_json(sidecar_path(out), _sidecar(loaded, ckpt, fmt, shape, opset, module,
                                           differences, reference))
    return out


def _sidecar(loaded: LoadedCheckpoint, ckpt: str | Path | LoadedCheckpoint, fmt: str,
             shape: tuple[int, ...], opset: int, module: OutputModule,
             differences: list[float], reference: Sequence[Tensor]) -> dict[str, Any]:
    path = None if isinstance(ckpt, LoadedCheckpoint) else Path(ckpt)
    dims = ["batch", "channels", "frames", "height", "width"] if len(shape) == 5 else \
        ["batch", "channels", "height", "width"]
    names = module.output_names()
    features = None if module.features is None else {
        **module.features.to_dict(), "output_name": FEATURES_NAME,
        "dim": int(reference[1].shape[1]),
        "max_relative_difference_vs_eager": differences[1]}
    return {
        "format": SIDECAR_FORMAT,
        "export_format": fmt,
        "checkpoint": None if path is None else str(path),
        "checkpoint_sha256": None if path is None else file_hash(path),
        "model": (loaded.recipe.get("model") or {}).get("name"),
        "input_spec": loaded.input_spec.to_dict(),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "output_names": names,
        "features": features,
        "input_dims": dims,
        "example_shape": list(shape),
        "dynamic_axes": {n: {"0": BATCH_AXIS} for n in [INPUT_NAME, *names]},
        "opset": opset if fmt == "onnx" else None,
        "dtype": "float32",
        "normalisation": "(x - mean) / std of the input spec, 0-255 units, before the model",
        "max_relative_difference_vs_eager": differences[0],
        "tolerance": TOLERANCE,
        "versions": versions(),
        "uncertainty": _uncertainty(loaded),
    }


def _uncertainty(loaded: LoadedCheckpoint) -> dict[str, Any] | None:
    """The checkpoint's uncertainty state (intervals, calibration, OOD) as JSON, so that an
    exported model keeps what says when not to trust it; None when it has none."""
    state = UncertaintyState.from_extra(loaded.info.get("extra"))
    return None if state.empty else state.to_dict(json_safe=True)
