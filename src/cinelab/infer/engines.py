"""Execution engines for prediction, and checkpoint export (ONNX, TorchScript).

`load_engine(checkpoint, engine)` returns an `Engine`: a callable on a batch tensor that
returns the model's output tensor (a torchvision segmentation model's ``{"out": ...}`` is
unwrapped), whatever runs it:

- ``"eager"``: the PyTorch module as loaded (the reference);
- ``"compiled"``: ``torch.compile`` of it (Inductor; the first batch of each new shape
  compiles, later ones are fast);
- ``"onnx"``: the model exported with `torch.onnx.export` (TorchScript-based exporter,
  dynamic batch axis) and run by ONNX Runtime (CPUExecutionProvider with as many intra-op
  threads as torch uses; CUDAExecutionProvider first when `device` is CUDA and ORT has it).
  An exported ``.onnx`` file (with its JSON sidecar) loads directly too.

An `Engine` also answers ``eval()`` and ``to(device)`` (both return itself), so code written
for an ``nn.Module`` (``model.eval().to(device)`` then ``model(x)``) takes an engine as is.

Outputs agree with eager within `TOLERANCE`: ``max|engine - eager| <= TOLERANCE *
max(1, max|eager|)`` (float32; `output_difference` computes the left side over the scale).

`export_checkpoint(ckpt, out, fmt)` writes ``out`` (ONNX or TorchScript) and a JSON sidecar
``out + ".json"``: the input spec, input/output names and shapes, dynamic axes, opset, the
checkpoint's hash, versions, the export's measured difference from eager, and the
checkpoint's uncertainty state (``uncertainty``: intervals, calibration, OOD; JSON-safe).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cinelab.errors import CinelabError, InputError
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.models import model_task
from cinelab.train.checkpoint import InputSpec, LoadedCheckpoint, load_checkpoint
from cinelab.utils import atomic_path, file_hash, read_json, versions, write_json

ENGINES = ("eager", "compiled", "onnx")
EXPORT_FORMATS = ("onnx", "torchscript")
FORMAT_SUFFIX = {"onnx": ".onnx", "torchscript": ".ts"}
SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = "cinelab-export/1"
INPUT_NAME, OUTPUT_NAME, BATCH_AXIS = "input", "output", "batch"
DEFAULT_OPSET = 17
DEFAULT_FRAMES = 16  # clip length of a video model whose input spec records none
TOLERANCE = 1e-4  # max |engine - eager| relative to max(1, max |eager|)
VIDEO_TASK_WORDS = ("video", "regression", "cine")


class _TensorOutput(nn.Module):
    """The model with its output reduced to one tensor (``{"out": ...}`` or a tuple's first)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return output_tensor(self.model(x))


def output_tensor(output: Any) -> Tensor:
    """The output tensor of a model's output: itself, a dict's "out", a sequence's first."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict):
        return output["out"] if "out" in output else next(iter(output.values()))
    if isinstance(output, list | tuple) and output:
        return output_tensor(output[0])
    raise TypeError(f"model output: expected a tensor, a dict with 'out' or a tuple, found "
                    f"{type(output).__name__}")


@dataclass
class Engine:
    """A model behind one execution engine: ``engine(x) -> output tensor`` on x's device."""

    name: str
    input_spec: InputSpec
    example_shape: tuple[int, ...]
    run: Any  # callable Tensor -> Tensor
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    info: dict[str, Any] = field(default_factory=dict)
    module: nn.Module | None = None  # the eager model, for introspection (DataParallel-style)

    @torch.inference_mode()
    def __call__(self, x: Tensor) -> Tensor:
        return self.run(x)

    def __getattr__(self, name: str) -> Any:
        """Attributes the engine lacks come from the eager model (e.g. ``active_streams``)."""
        if name.startswith("__") or name in _ENGINE_FIELDS:
            raise AttributeError(name)
        module = self.__dict__.get("module")
        if module is None:
            raise AttributeError(name)
        return getattr(module, name)

    def eval(self) -> Engine:
        """Itself (engines always run in inference mode)."""
        return self

    def to(self, device: str | torch.device) -> Engine:
        """Itself; the device was chosen at `load_engine` (inputs may come from any device)."""
        return self


_ENGINE_FIELDS = frozenset(Engine.__dataclass_fields__)


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
                device: str | torch.device = "cpu") -> Engine:
    """An `Engine` running the checkpoint's model (a path, a `LoadedCheckpoint`, or an exported
    ``.onnx`` file with its sidecar) with `engine` (one of `ENGINES`).

    `example_shape` (default: one batch from the input spec) is what ONNX export traces
    and what `compiled` warms up on; the batch axis stays dynamic either way.
    """
    device = torch.device(device)
    if not isinstance(checkpoint_or_loaded, LoadedCheckpoint) and \
            Path(checkpoint_or_loaded).suffix == FORMAT_SUFFIX["onnx"]:
        return load_onnx_file(checkpoint_or_loaded, device)
    _check_engine(engine)
    loaded = _loaded(checkpoint_or_loaded)
    shape = tuple(int(s) for s in (example_shape or input_shape(loaded)))
    module = _TensorOutput(loaded.model).eval().to(device)
    if engine == "eager":
        return Engine(engine, loaded.input_spec, shape, module, device, module=loaded.model)
    if engine == "compiled":  # static shapes: one compilation per batch size seen
        compiled = torch.compile(module, dynamic=False)
        return Engine(engine, loaded.input_spec, shape, compiled, device, module=loaded.model)
    buffer = io.BytesIO()
    _onnx_export(module.cpu(), shape, buffer, DEFAULT_OPSET)
    session = _ort_session(buffer.getvalue(), device)
    return Engine(engine, loaded.input_spec, shape, _OrtRunner(session), device,
                  {"providers": session.get_providers()}, module=loaded.model)


def engine_checkpoint(loaded: LoadedCheckpoint, engine: str = "eager",
                      device: str | torch.device = "cpu",
                      example_shape: Sequence[int] | None = None) -> LoadedCheckpoint:
    """The checkpoint with its model replaced by an `Engine` (``"eager"``: unchanged), so a
    predict function written for ``loaded.model`` runs on any engine:
    ``loaded = engine_checkpoint(loaded, options.get("engine", "eager"), options.device)``."""
    _check_engine(engine)
    if engine == "eager":
        return loaded
    runner = load_engine(loaded, engine, example_shape, device)
    return LoadedCheckpoint(runner, loaded.recipe, loaded.input_spec,  # type: ignore[arg-type]
                            {**loaded.info, "engine": engine})


class _OrtRunner:
    """ONNX Runtime session as ``Tensor -> Tensor`` (the result lands on the input's device)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def __call__(self, x: Tensor) -> Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(np.asarray(out)).to(x.device)


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


def _onnx_export(module: nn.Module, shape: Sequence[int], f: Any, opset: int) -> None:
    """Export with the TorchScript-based exporter (the dynamo one needs onnxscript), the
    batch axis dynamic."""
    example = _example(shape, torch.device("cpu"))
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), f, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: BATCH_AXIS},
                                        OUTPUT_NAME: {0: BATCH_AXIS}},
                          do_constant_folding=True)


def load_onnx_file(path: str | Path, device: str | torch.device = "cpu") -> Engine:
    """An ONNX Runtime `Engine` from a file written by `export_checkpoint` (its sidecar gives
    the input spec)."""
    path, device = Path(path), torch.device(device)
    sidecar = read_sidecar(path)
    session = _ort_session(str(path), device)
    return Engine("onnx", InputSpec(**sidecar["input_spec"]),
                  tuple(int(s) for s in sidecar["example_shape"]), _OrtRunner(session), device,
                  {"providers": session.get_providers(), "file": str(path)})


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
                      opset: int = DEFAULT_OPSET) -> Path:
    """Write the checkpoint's model as ONNX or TorchScript to `out`, and its sidecar.

    The export is run once on an example batch (batch 2, to exercise the dynamic axis) and
    compared with eager; the relative difference is recorded in the sidecar, and a model
    whose export differs by more than `TOLERANCE` is refused (nothing written).
    """
    if fmt not in EXPORT_FORMATS:
        raise InputError(None, "format", f"one of {', '.join(EXPORT_FORMATS)}", repr(fmt))
    loaded = _loaded(ckpt)
    out = Path(out)
    shape = tuple(int(s) for s in (example_shape or input_shape(loaded)))
    module = _TensorOutput(loaded.model).eval().cpu()
    check = _example((2, *shape[1:]), torch.device("cpu"))
    with torch.no_grad():
        reference = module(check)
    with atomic_path(out) as tmp:
        if fmt == "onnx":
            _onnx_export(module, shape, str(tmp), opset)
            produced = _OrtRunner(_ort_session(str(tmp), torch.device("cpu")))(check)
        else:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(module, (_example(shape, torch.device("cpu")),))
                traced.save(str(tmp))
                produced = torch.jit.load(str(tmp))(check)
        difference = output_difference(produced, reference)
        if not difference <= TOLERANCE:
            raise CinelabError(f"{out}: the {fmt} export differs from eager by "
                               f"{difference:.3g} (relative), above the tolerance {TOLERANCE}")
    write_json(sidecar_path(out), _sidecar(loaded, ckpt, fmt, shape, opset, difference))
    return out


def _sidecar(loaded: LoadedCheckpoint, ckpt: str | Path | LoadedCheckpoint, fmt: str,
             shape: tuple[int, ...], opset: int, difference: float) -> dict[str, Any]:
    path = None if isinstance(ckpt, LoadedCheckpoint) else Path(ckpt)
    dims = ["batch", "channels", "frames", "height", "width"] if len(shape) == 5 else \
        ["batch", "channels", "height", "width"]
    return {
        "format": SIDECAR_FORMAT,
        "export_format": fmt,
        "checkpoint": None if path is None else str(path),
        "checkpoint_sha256": None if path is None else file_hash(path),
        "model": (loaded.recipe.get("model") or {}).get("name"),
        "input_spec": loaded.input_spec.to_dict(),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_dims": dims,
        "example_shape": list(shape),
        "dynamic_axes": {INPUT_NAME: {"0": BATCH_AXIS}, OUTPUT_NAME: {"0": BATCH_AXIS}},
        "opset": opset if fmt == "onnx" else None,
        "dtype": "float32",
        "normalisation": "(x - mean) / std of the input spec, 0-255 units, before the model",
        "max_relative_difference_vs_eager": difference,
        "tolerance": TOLERANCE,
        "versions": versions(),
        "uncertainty": _uncertainty(loaded),
    }


def _uncertainty(loaded: LoadedCheckpoint) -> dict[str, Any] | None:
    """The checkpoint's uncertainty state (intervals, calibration, OOD) as JSON, so that an
    exported model keeps what says when not to trust it; None when it has none."""
    state = UncertaintyState.from_extra(loaded.info.get("extra"))
    return None if state.empty else state.to_dict(json_safe=True)
