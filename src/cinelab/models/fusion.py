"""`two_stream`: greyscale and optical-flow 3D CNN streams fused late (Shad et al. 2021).

Input contract (task "video", like every video model): one tensor (B, 3, T, H, W) that
concatenates the streams along the channel axis in `INPUT_LAYOUT` order: channel 0 the
greyscale frames, channels 1-2 the optical flow (dx, dy) of the same frames. The model splits
it; a stream left out of ``streams`` ignores its channels (so single-stream baselines take the
same input and run through the same code). Output: logits (B, num_outputs).

Each stream is any registered video model (``backbone``: one name, or a mapping stream ->
name): MONAI ``resnet3d_18..152`` for the paper, ``tiny_video`` on a CPU. Late fusion
(``fusion``):

- ``"mean_prob"``: the average of the streams' probabilities (sigmoid for one output, softmax
  for several), returned as a logit (``logit(mean p)``, or ``log(mean p)`` for softmax) so the
  usual losses apply and ``sigmoid(output)`` is exactly the averaged probability;
- ``"mean_logit"``: the average of the streams' logits (a frozen fusion Linear of weights 1/n);
- ``"learned"``: a trainable Linear over the streams' logits, initialised to their average;
- ``"features"``: a trainable Linear over the streams' concatenated pooled features (the
  streams' heads are removed).

Pretrained streams (``pretrained=`` of `create_model`, see `TwoStream.load_pretrained`): a
two-stream checkpoint loads whole; a single-stream checkpoint (e.g. a grey EF model) loads
into every stream; ``"grey=a.pt;flow=b.pt"`` gives each stream its own file. Loading a stream
keeps every tensor that fits (the stem is adapted to 1 or 2 input channels) and re-initialises
its head.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cinelab.models.registry import HEAD_ATTR, create_model, register_model, set_head
from cinelab.models.weights import LoadReport, extract_state_dict, load_weights, load_weights_file

INPUT_LAYOUT = ("grey", "flow")
STREAM_CHANNELS = {"grey": 1, "flow": 2}
FUSIONS = ("mean_prob", "mean_logit", "learned", "features")
DEFAULT_BACKBONE = "tiny_video"
DEFAULT_FUSION = "learned"
FUSION_HEAD = "fusion"
MAPPING_SEPARATORS = (";", ",")
PROB_EPS = 1e-6


def _slices() -> dict[str, slice]:
    """Channel slice of each stream in the concatenated input."""
    out, start = {}, 0
    for name in INPUT_LAYOUT:
        out[name] = slice(start, start + STREAM_CHANNELS[name])
        start += STREAM_CHANNELS[name]
    return out


INPUT_CHANNELS = sum(STREAM_CHANNELS.values())
SLICES = _slices()


def _check_streams(streams: Sequence[str]) -> tuple[str, ...]:
    names = tuple(str(s) for s in (streams or ()))
    if not names or len(set(names)) != len(names) or set(names) - set(INPUT_LAYOUT):
        raise ValueError(f"streams: expected one or both of {list(INPUT_LAYOUT)} (no repeats), "
                         f"found {list(streams or ())!r}")
    return tuple(n for n in INPUT_LAYOUT if n in names)


def _backbone_of(backbone: str | Mapping[str, str], stream: str) -> str:
    if isinstance(backbone, str):
        return backbone
    if stream not in backbone:
        raise ValueError(f"backbone: expected a model name or a mapping with an entry for "
                         f"stream {stream!r}, found {dict(backbone)!r}")
    return str(backbone[stream])


def _head_path(model: nn.Module) -> str:
    path = getattr(model, HEAD_ATTR, None)
    if path is None:
        raise TypeError(f"{type(model).__name__} records no output layer; a two_stream "
                        "backbone must be a registered video model with a Linear head")
    return path


def _drop_head(model: nn.Module) -> int:
    """Replace the model's final Linear by Identity; the feature size it received."""
    path = _head_path(model)
    head = model.get_submodule(path)
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, attr, nn.Identity())
    return int(head.in_features)


def _average_linear(n_streams: int, num_outputs: int, trainable: bool) -> nn.Linear:
    """Linear(n * K -> K) whose output is the mean of the n stream outputs."""
    layer = nn.Linear(n_streams * num_outputs, num_outputs)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(num_outputs).repeat(1, n_streams) / n_streams)
        layer.bias.zero_()
    layer.requires_grad_(trainable)
    return layer


class TwoStream(nn.Module):
    """Grey and flow streams (registered video models) with late fusion; see the module doc."""

    input_layout = INPUT_LAYOUT

    def __init__(self, backbone: str | Mapping[str, str] = DEFAULT_BACKBONE,
                 num_outputs: int = 1, dropout: float = 0.0,
                 streams: Sequence[str] = INPUT_LAYOUT, fusion: str = DEFAULT_FUSION,
                 backbone_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion: expected one of {list(FUSIONS)}, found {fusion!r}")
        self.active_streams = _check_streams(streams)
        self.fusion_mode, self.num_outputs = fusion, int(num_outputs)
        kwargs = dict(backbone_kwargs or {})
        self.streams = nn.ModuleDict({
            name: create_model(_backbone_of(backbone, name), in_channels=STREAM_CHANNELS[name],
                               num_outputs=num_outputs, dropout=dropout, **kwargs)
            for name in self.active_streams})
        n = len(self.active_streams)
        if fusion == "features":
            width = sum(_drop_head(m) for m in self.streams.values())
            self.fusion: nn.Module = nn.Linear(width, num_outputs)
        elif fusion in ("learned", "mean_logit"):
            self.fusion = _average_linear(n, num_outputs, trainable=fusion == "learned")
        else:
            self.fusion = nn.Identity()

    def stream_outputs(self, x: Tensor) -> dict[str, Tensor]:
        """Each active stream's output for the concatenated input (B, 3, T, H, W)."""
        if x.ndim != 5 or x.shape[1] != INPUT_CHANNELS:
            raise ValueError(f"x: expected (B, {INPUT_CHANNELS}, T, H, W) = grey + flow "
                             f"(dx, dy) channels, found shape {tuple(x.shape)}")
        return {name: self.streams[name](x[:, SLICES[name]]) for name in self.active_streams}

    @property
    def stream_logits(self) -> bool:
        """True when `stream_outputs` are per-stream logits (every fusion but "features")."""
        return self.fusion_mode != "features"

    def fuse(self, outputs: Mapping[str, Tensor]) -> Tensor:
        """Fused logits (B, num_outputs) from `stream_outputs`."""
        outs = [outputs[name] for name in self.active_streams]
        if self.fusion_mode == "mean_prob":
            return _mean_probability_logit(outs)
        return self.fusion(torch.cat(outs, dim=1))

    def forward(self, x: Tensor) -> Tensor:
        """Concatenated clip (B, 3, T, H, W) -> fused logits (B, num_outputs)."""
        return self.fuse(self.stream_outputs(x))

    def load_pretrained(self, path: str | Path, description: str | None = None) -> LoadReport:
        """Load a two-stream checkpoint whole, a single-stream one into every stream, or a
        mapping ``"grey=a.pt;flow=b.pt"`` stream by stream (heads re-initialised)."""
        mapping = parse_stream_weights(path)
        if mapping is None:
            if _is_two_stream_file(path, description):
                return load_weights(self, path, description=description)
            mapping = {name: str(path) for name in self.active_streams}
        unknown = sorted(set(mapping) - set(self.active_streams))
        if unknown:
            raise ValueError(f"pretrained: streams {unknown} are not in this model's streams "
                             f"{list(self.active_streams)}")
        reports = {name: load_stream(self.streams[name], file, description)
                   for name, file in mapping.items()}
        return _merge_reports(str(path), reports)


def _mean_probability_logit(outs: list[Tensor]) -> Tensor:
    """logit (one output) or log (several) of the streams' mean probability."""
    if outs[0].shape[1] == 1:
        p = torch.stack([o.float().sigmoid() for o in outs]).mean(0).clamp(PROB_EPS,
                                                                           1 - PROB_EPS)
        return torch.log(p) - torch.log1p(-p)
    p = torch.stack([o.float().softmax(dim=1) for o in outs]).mean(0)
    return p.clamp_min(PROB_EPS).log()


def parse_stream_weights(spec: str | Path) -> dict[str, str] | None:
    """``"grey=a.pt;flow=b.pt"`` -> {"grey": "a.pt", "flow": "b.pt"}; None for a plain path."""
    text = str(spec)
    if "=" not in text or Path(text).exists():
        return None
    sep = next((s for s in MAPPING_SEPARATORS if s in text), MAPPING_SEPARATORS[0])
    out = {}
    for part in filter(None, (p.strip() for p in text.split(sep))):
        name, eq, file = part.partition("=")
        if not eq or name.strip() not in INPUT_LAYOUT or not file.strip():
            raise ValueError(f"pretrained: expected a file or 'grey=<file>;flow=<file>', "
                             f"found {text!r}")
        out[name.strip()] = file.strip()
    return out


def _is_two_stream_file(path: str | Path, description: str | None) -> bool:
    state = extract_state_dict(load_weights_file(path, description=description), path)
    return any(".streams." in f".{k}" for k in state)  # also under "model." / "module."


def load_stream(stream: nn.Module, path: str | Path, description: str | None = None
                ) -> LoadReport:
    """Transfer a pretrained network into one stream: every tensor that fits (stem adapted to
    the stream's channels), the stream's head kept as initialised."""
    head = getattr(stream, HEAD_ATTR, None)
    keep = {k: v.clone() for k, v in stream.state_dict().items()
            if head is not None and k.startswith(f"{head}.")}
    report = load_weights(stream, path, description=description)
    stream.load_state_dict(keep, strict=False)
    report.loaded = [k for k in report.loaded if k not in keep]
    report.missing = sorted(set(report.missing) | set(keep))
    return report


def _merge_reports(path: str, reports: dict[str, LoadReport]) -> LoadReport:
    """One report over all streams, keys prefixed with ``streams.<name>.``."""
    out = LoadReport(path)
    for name, r in reports.items():
        pre = f"streams.{name}."
        out.loaded += [pre + k for k in r.loaded]
        out.adapted += [pre + k for k in r.adapted]
        out.mismatched += [(pre + k, a, b) for k, a, b in r.mismatched]
        out.missing += [pre + k for k in r.missing]
        out.unexpected += [pre + k for k in r.unexpected]
    return out


@register_model("two_stream", task="video",
                weights_hint="a cinelab two_stream checkpoint, or a single-stream video "
                             "checkpoint (e.g. EF pretraining) loaded into each stream")
def two_stream(in_channels: int = INPUT_CHANNELS, num_outputs: int = 1, dropout: float = 0.0,
               backbone: str | Mapping[str, str] = DEFAULT_BACKBONE,
               streams: Sequence[str] = INPUT_LAYOUT, fusion: str = DEFAULT_FUSION,
               backbone_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Greyscale + optical-flow 3D CNN streams with late fusion (input: grey|dx|dy)."""
    if in_channels != INPUT_CHANNELS:
        raise ValueError(f"in_channels: expected {INPUT_CHANNELS} (grey + flow dx, dy "
                         f"concatenated), found {in_channels!r}")
    model = TwoStream(backbone, num_outputs, dropout, streams, fusion, backbone_kwargs)
    return set_head(model, FUSION_HEAD) if isinstance(model.fusion, nn.Linear) else model
