"""What an exported model outputs beside its prediction: the OOD detector's features and taps.

A `FeatureSpec` names where the features come from, exactly as `infer.ood.capture_features`
takes them: modules (``""`` = the input of the recorded output Linear, the penultimate
features), ``capture`` ("input" or "output"; None: input for ``""``, output for a named
module) and ``pool`` ("mean" or "meanstd"). Several modules give their pooled features
concatenated (per clip, in order). `OutputModule` wraps a model so that one forward returns
``(prediction, features, *taps)``: what ONNX export traces, and what eager and compiled
engines run; taps are named submodules' raw outputs (e.g. each stream's logits). `Engine`
is a model behind an execution engine (`infer.engines`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from cinelab.errors import InputError
from cinelab.infer.ood import POOLS, MahalanobisDetector, capture_features
from cinelab.infer.uncertainty import UncertaintyState
from cinelab.models.registry import output_layer
from cinelab.train.checkpoint import InputSpec

OUTPUT_NAME, FEATURES_NAME = "output", "features"


@dataclass(frozen=True)
class FeatureSpec:
    """Where an engine's ``features`` output is taken (see the module docstring)."""

    modules: tuple[str, ...] = ("",)
    capture: str | None = None
    pool: str = "mean"

    @classmethod
    def request(cls, module: str | None, capture: str | None = None,
                pool: str = "mean") -> FeatureSpec:
        """The spec of one `capture_features(model, module, capture, pool)` call."""
        return cls((module or "",), capture, pool)

    @classmethod
    def of_detector(cls, detector: MahalanobisDetector) -> FeatureSpec:
        """Where `detector` was fitted (`MahalanobisDetector.features`)."""
        return cls.request(detector.module or None, None, detector.pool)

    def captures(self) -> tuple[str, ...]:
        """Per module: "input" or "output" (the default resolved)."""
        return tuple(self.capture or ("input" if not m else "output") for m in self.modules)

    def same_as(self, other: FeatureSpec | None) -> bool:
        """True when both take the same features (defaults resolved)."""
        return other is not None and (self.modules, self.captures(), self.pool) == \
            (other.modules, other.captures(), other.pool)

    def to_dict(self) -> dict[str, Any]:
        """JSON for a sidecar."""
        return {"modules": list(self.modules), "capture": self.capture, "pool": self.pool}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> FeatureSpec | None:
        """From `to_dict` (None: no features)."""
        if not data:
            return None
        return cls(tuple(str(m) for m in data.get("modules", [""])), data.get("capture"),
                   str(data.get("pool", "mean")))

    def __str__(self) -> str:
        where = ", ".join(f"{m or '<penultimate>'} ({c})"
                          for m, c in zip(self.modules, self.captures(), strict=True))
        return f"{where}, pool {self.pool}"


def default_features(model: nn.Module, extra: dict[str, Any] | None) -> FeatureSpec | None:
    """The features of a checkpoint's OOD detector (`extra`'s uncertainty state), else the
    penultimate features of a model with a recorded output Linear, else None."""
    state = UncertaintyState.from_extra(extra)
    if isinstance(state.ood, MahalanobisDetector):
        return FeatureSpec.of_detector(state.ood)
    try:
        output_layer(model)
    except (TypeError, AttributeError):
        return None
    return FeatureSpec()


def check_features(model: nn.Module, spec: FeatureSpec) -> FeatureSpec:
    """`spec` when `model` has its modules and its pool and captures are known; else an
    InputError naming the first wrong one."""
    names = {n for n, _ in model.named_modules()}
    missing = [m for m in spec.modules if m and m not in names]
    if missing:
        raise InputError(None, "features", f"a module of {type(model).__name__}",
                         repr(missing[0]))
    if spec.pool not in POOLS:
        raise InputError(None, "pool", f"one of {', '.join(POOLS)}", repr(spec.pool))
    if set(spec.captures()) - {"input", "output"}:
        raise InputError(None, "capture", "'input' or 'output'", repr(spec.capture))
    return spec


def module_name(model: nn.Module, module: nn.Module | str | None) -> str:
    """The name of `module` inside `model` ("" for None or ""); InputError when absent."""
    if module is None or isinstance(module, str):
        return module or ""
    for name, found in model.named_modules():
        if found is module and name:
            return name
    raise InputError(None, "feature module", f"a submodule of {type(model).__name__}",
                     type(module).__name__)


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


class OutputModule(nn.Module):
    """The model returning ``(prediction, features?, *taps)``: one tensor each (a
    segmentation model's ``{"out": ...}`` unwrapped); the prediction alone (not a tuple)
    when there is nothing else."""

    def __init__(self, model: nn.Module, features: FeatureSpec | None = None,
                 taps: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.model, self.features, self.taps = model, features, dict(taps or {})

    def output_names(self) -> list[str]:
        """Names of the outputs, in order."""
        return [OUTPUT_NAME, *([FEATURES_NAME] if self.features else []), *self.taps]

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        with ExitStack() as stack:
            found = [] if self.features is None else [
                stack.enter_context(capture_features(self.model, m or None, c,
                                                     self.features.pool))
                for m, c in zip(self.features.modules, self.features.captures(), strict=True)]
            raw: dict[str, list[Tensor]] = {name: [] for name in self.taps}
            for name, path in self.taps.items():
                stack.enter_context(_raw_hook(self.model.get_submodule(path), raw[name]))
            out = output_tensor(self.model(x))
        feats = [torch.cat([torch.cat(f, dim=0) for f in found], dim=1)] if found else []
        outs = (out, *feats, *(output_tensor(raw[n][0]) for n in self.taps))
        return outs if len(outs) > 1 else out


@contextmanager
def _raw_hook(module: nn.Module, into: list[Tensor]) -> Iterator[list[Tensor]]:
    """While open, `module`'s outputs are appended to `into`."""
    handle = module.register_forward_hook(lambda _m, _args, out: into.append(out))
    try:
        yield into
    finally:
        handle.remove()


def named_outputs(names: Sequence[str], values: Tensor | Sequence[Tensor]
                  ) -> dict[str, Tensor]:
    """``{name: tensor}`` of an `OutputModule`'s (or a session's) outputs."""
    return dict(zip(names, [values] if isinstance(values, Tensor) else values, strict=True))


@dataclass
class Engine:
    """A model behind one execution engine: ``engine(x) -> prediction`` on x's device;
    `predict` gives ``(prediction, features)``, `outputs` every named output."""

    name: str
    input_spec: InputSpec
    example_shape: tuple[int, ...]
    run: Any  # callable Tensor -> {output name: Tensor}
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    info: dict[str, Any] = field(default_factory=dict)
    module: nn.Module | None = None  # the eager model, for introspection (DataParallel-style)
    features: FeatureSpec | None = None  # where the ``features`` output is taken (None: none)
    listeners: list[list[Tensor]] = field(default_factory=list)

    @torch.inference_mode()
    def outputs(self, x: Tensor) -> dict[str, Tensor]:
        """Every output of one batch by name (``output``, ``features``, taps); open
        `feature_capture` lists get the features."""
        found = self.run(x)
        if FEATURES_NAME in found:
            for into in self.listeners:
                into.append(found[FEATURES_NAME].detach().float().cpu())
        return found

    def __call__(self, x: Tensor) -> Tensor:
        return self.outputs(x)[OUTPUT_NAME]

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(prediction, features (N, D) or None when the engine has no features output)."""
        found = self.outputs(x)
        return found[OUTPUT_NAME], found.get(FEATURES_NAME)

    def has_features(self, module: nn.Module | str | FeatureSpec | None = None,
                     capture: str | None = None, pool: str = "mean") -> bool:
        """Whether the ``features`` output is what `capture_features(model, module, capture,
        pool)` would take from the eager model (`module` may be a whole `FeatureSpec`)."""
        if isinstance(module, FeatureSpec):
            return module.same_as(self.features)
        name = module if self.module is None or not isinstance(module, nn.Module) else \
            module_name(self.module, module)
        return FeatureSpec.request(name, capture, pool).same_as(self.features)  # type: ignore[arg-type]

    @contextmanager
    def feature_capture(self, module: nn.Module | str | FeatureSpec | None = None,
                        capture: str | None = None, pool: str = "mean"
                        ) -> Iterator[list[Tensor]]:
        """Like `infer.ood.capture_features` on the eager model: while open, every call
        appends its (N, D) features (on CPU) to the yielded list; InputError when this
        engine's features are taken elsewhere (or it has none)."""
        if not self.has_features(module, capture, pool):
            wanted = module if isinstance(module, str | FeatureSpec | None) else \
                type(module).__name__
            raise InputError(self.info.get("file"), "features",
                             f"features at {wanted or '<penultimate>'} (pool {pool})",
                             "no features output" if self.features is None else
                             str(self.features), "export it again with its OOD detector")
        found: list[Tensor] = []
        self.listeners.append(found)
        try:
            yield found
        finally:
            self.listeners.remove(found)

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
