"""`cinelab serve` configuration: one YAML file, safe-loaded and validated into typed fields.

Every wrong value raises `ConfigError` naming the field, what was expected, what was found
and the fix. Relative paths are resolved against the config file's folder.

```yaml
models:                  # name -> checkpoint or model folder (pipeline found from it)
  echonet: runs/demo/echonet
  cxr: {path: runs/demo/cxr/ensemble, pipeline: cxr, options: {}}
routes:                  # first match wins; fields absent match anything
  - {modality: US, models: [echonet, rvf]}
  - {modality: MR, series_description: "(?i)lax|[234] ?ch", models: [age]}
  - {modality: MR, models: [cmr, age], content_check: true}   # keep the models whose
                         # ood_flag is false; the study fails when every model flags it
  - {modality: [CR, DX], models: [cxr]}
dicom: {ae_title: CINELAB, port: 11112, host: 127.0.0.1, quiet_seconds: 10}
http: {host: 127.0.0.1, port: 8080}
token: null              # else env CINELAB_SERVE_TOKEN; refused when neither is set
state: serve-state       # queue database, incoming studies, results
limits: {upload_bytes: 2000000000, instances_per_study: 5000}
pseudonymise: {enabled: true, series_description: null}   # series_description: a regex
                         # of allowed words (PS3.15 Clean Descriptors Option): the stored
                         # SeriesDescription is only its matches, joined by a space, and is
                         # removed when none match (null: always removed, the basic profile)
burned_in_annotation: flag   # BurnedInAnnotation YES: flag the study (processed) or refuse
forward: {ae_title: PACS, host: 127.0.0.1, port: 104}   # optional C-STORE of SR/SEG
                         # link_to_original: true -> their references name the original
                         # (not pseudonymised) study, series and instance UIDs
```
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cinelab.errors import InputError

TOKEN_ENV = "CINELAB_SERVE_TOKEN"
BURNED_IN_CHOICES = ("flag", "refuse")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_AE_TITLE = "CINELAB"
DEFAULT_DICOM_PORT, DEFAULT_HTTP_PORT = 11112, 8080
DEFAULT_QUIET_S = 10.0
DEFAULT_UPLOAD_BYTES = 2 * 1024 ** 3
DEFAULT_INSTANCES = 5000
DEFAULT_ATTEMPTS = 2
MIN_TOKEN_CHARS = 16
AE_TITLE = re.compile(r"^[ -~]{1,16}$")


class ConfigError(InputError):
    """The serve configuration holds a value it cannot use."""


@dataclass(frozen=True)
class ModelSpec:
    """One served model: its name in routes, where it is, its pipeline (None: found)."""

    name: str
    path: Path
    pipeline: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    """Which models a study goes to: by Modality, SOP Class UID and a SeriesDescription regex.
    With `content_check`, every listed model runs and only those whose predictions are not
    flagged out of distribution (``ood_flag`` false) are kept (`cinelab.serve.content`)."""

    models: tuple[str, ...]
    modality: tuple[str, ...] = ()
    sop_class: tuple[str, ...] = ()
    series_description: str | None = None
    content_check: bool = False

    def matches(self, meta: dict[str, Any]) -> bool:
        """Whether a study with this metadata (modality, sop_class, series_description) fits."""
        if self.modality and str(meta.get("modality") or "").upper() not in self.modality:
            return False
        if self.sop_class and str(meta.get("sop_class") or "") not in self.sop_class:
            return False
        if self.series_description is not None:
            return re.search(self.series_description, str(meta.get("series_description")
                                                           or "")) is not None
        return True


@dataclass(frozen=True)
class DicomConfig:
    """The DICOM node: AE title, bind address, port, quiet time before processing."""

    ae_title: str = DEFAULT_AE_TITLE
    host: str = DEFAULT_HOST
    port: int = DEFAULT_DICOM_PORT
    quiet_seconds: float = DEFAULT_QUIET_S
    enabled: bool = True


@dataclass(frozen=True)
class Forward:
    """Where results are C-STOREd (optional); `link_to_original`: with pseudonymisation on,
    rewrite their UID references to the originals (kept per study in the state folder)."""

    ae_title: str
    host: str
    port: int
    link_to_original: bool = False


@dataclass(frozen=True)
class Limits:
    """Upload size, instances per study and processing attempts of one study."""

    upload_bytes: int = DEFAULT_UPLOAD_BYTES
    instances_per_study: int = DEFAULT_INSTANCES
    attempts: int = DEFAULT_ATTEMPTS


@dataclass(frozen=True)
class ServeConfig:
    """Everything `cinelab serve` needs."""

    models: dict[str, ModelSpec]
    routes: tuple[Route, ...]
    token: str
    state: Path
    dicom: DicomConfig = DicomConfig()
    http_host: str = DEFAULT_HOST
    http_port: int = DEFAULT_HTTP_PORT
    limits: Limits = Limits()
    pseudonymise: bool = True
    series_description_words: str | None = None
    forward: Forward | None = None
    workers: int = 1
    device: str = "cpu"
    burned_in_annotation: str = "flag"

    def route_index(self, meta: dict[str, Any]) -> int | None:
        """Index of the first route matching a study's metadata, None when none does."""
        return next((i for i, r in enumerate(self.routes) if r.matches(meta)), None)

    def route(self, meta: dict[str, Any]) -> Route | None:
        """The first route matching a study's metadata, None when none does."""
        index = self.route_index(meta)
        return None if index is None else self.routes[index]


def load_config(path: str | Path, env: dict[str, str] | None = None) -> ServeConfig:
    """Read and validate a serve config file (YAML, safe-loaded)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(path, "config", "a readable YAML file",
                          exc.strerror or "unreadable") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, "config", "valid YAML", type(exc).__name__) from None
    return parse_config(raw, path.parent, env if env is not None else dict(os.environ), path)


def parse_config(raw: Any, base: Path, env: dict[str, str], where: Path | None = None
                 ) -> ServeConfig:
    """A `ServeConfig` from a loaded mapping; relative paths resolved against `base`."""
    top = _mapping(raw, "config", where)
    _known(top, {"models", "routes", "dicom", "http", "token", "state", "limits",
                 "pseudonymise", "forward", "workers", "device", "burned_in_annotation"},
           "config", where)
    models = _models(top.get("models"), base, where)
    routes = _routes(top.get("routes"), models, where)
    http = _mapping(top.get("http") or {}, "http", where)
    _known(http, {"host", "port"}, "http", where)
    return ServeConfig(
        models=models, routes=routes, token=_token(top.get("token"), env, where),
        state=_path(top.get("state", "serve-state"), base),
        dicom=_dicom(top.get("dicom") or {}, where),
        http_host=_text(http.get("host", DEFAULT_HOST), "http.host", where),
        http_port=_port(http.get("port", DEFAULT_HTTP_PORT), "http.port", where),
        limits=_limits(top.get("limits") or {}, where),
        pseudonymise=_pseudonymise(top.get("pseudonymise", {"enabled": True}), where),
        series_description_words=_description_words(top.get("pseudonymise"), where),
        forward=_forward(top.get("forward"), where),
        workers=_positive_int(top.get("workers", 1), "workers", where),
        device=_text(top.get("device", "cpu"), "device", where),
        burned_in_annotation=_choice(top.get("burned_in_annotation", "flag"),
                                     "burned_in_annotation", BURNED_IN_CHOICES, where))


def _choice(value: Any, name: str, choices: tuple[str, ...], where: Path | None) -> str:
    if value not in choices:
        raise ConfigError(where, name, f"one of {', '.join(choices)}", repr(value))
    return str(value)


def _flag(value: Any, name: str, where: Path | None) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(where, name, "true or false", repr(value))
    return value


def _mapping(value: Any, name: str, where: Path | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(where, name, "a mapping", type(value).__name__)
    return value


def _known(value: dict[str, Any], keys: set[str], name: str, where: Path | None) -> None:
    unknown = sorted(set(map(str, value)) - keys)
    if unknown:
        raise ConfigError(where, name, f"keys among {sorted(keys)}", ", ".join(unknown))


def _text(value: Any, name: str, where: Path | None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(where, name, "a non-empty string", repr(value))
    return value.strip()


def _path(value: Any, base: Path) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _positive_int(value: Any, name: str, where: Path | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(where, name, "an integer >= 1", repr(value))
    return value


def _port(value: Any, name: str, where: Path | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(where, name, "a port 0-65535 (0: any free port)", repr(value))
    return value


def _models(value: Any, base: Path, where: Path | None) -> dict[str, ModelSpec]:
    models = _mapping(value, "models", where)
    if not models:
        raise ConfigError(where, "models", "at least one model", "none")
    out = {}
    for name, spec in models.items():
        spec = {"path": spec} if isinstance(spec, str) else _mapping(spec, f"models.{name}",
                                                                      where)
        _known(spec, {"path", "pipeline", "options"}, f"models.{name}", where)
        out[str(name)] = ModelSpec(
            str(name), _path(_text(spec.get("path"), f"models.{name}.path", where), base),
            spec.get("pipeline"), dict(_mapping(spec.get("options") or {},
                                                f"models.{name}.options", where)))
    return out


def _strings(value: Any, name: str, where: Path | None, upper: bool = False
             ) -> tuple[str, ...]:
    items = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise ConfigError(where, name, "a string or a list of strings", repr(value))
    return tuple(v.upper() if upper else v for v in items)


def _routes(value: Any, models: dict[str, ModelSpec], where: Path | None
            ) -> tuple[Route, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(where, "routes", "a non-empty list of routes", repr(value))
    routes = []
    for i, item in enumerate(value):
        item = _mapping(item, f"routes[{i}]", where)
        _known(item, {"models", "modality", "sop_class", "series_description",
                      "content_check"}, f"routes[{i}]", where)
        names = _strings(item.get("models"), f"routes[{i}].models", where)
        missing = [n for n in names if n not in models]
        if not names or missing:
            raise ConfigError(where, f"routes[{i}].models", f"names among {sorted(models)}",
                              ", ".join(missing) or "none")
        regex = item.get("series_description")
        if regex is not None:
            try:
                re.compile(str(regex))
            except re.error as exc:
                raise ConfigError(where, f"routes[{i}].series_description",
                                  "a regular expression", str(exc)) from None
        routes.append(Route(names, _strings(item.get("modality"), "modality", where, True),
                            _strings(item.get("sop_class"), "sop_class", where),
                            None if regex is None else str(regex),
                            _flag(item.get("content_check", False),
                                  f"routes[{i}].content_check", where)))
    return tuple(routes)


def _token(value: Any, env: dict[str, str], where: Path | None) -> str:
    token = value if value is not None else env.get(TOKEN_ENV)
    if not isinstance(token, str) or len(token.strip()) < MIN_TOKEN_CHARS:
        raise ConfigError(where, "token", f"a token of >= {MIN_TOKEN_CHARS} characters in the "
                          f"config or ${TOKEN_ENV}", "none" if token is None else "too short",
                          fix=f"export {TOKEN_ENV}=$(python -c 'import secrets; "
                          "print(secrets.token_urlsafe(32))')")
    return token.strip()


def _ae_title(value: Any, name: str, where: Path | None) -> str:
    if not isinstance(value, str) or not AE_TITLE.match(value) or not value.strip():
        raise ConfigError(where, name, "1-16 printable ASCII characters", repr(value))
    return value.strip()


def _dicom(value: Any, where: Path | None) -> DicomConfig:
    node = _mapping(value, "dicom", where)
    _known(node, {"ae_title", "host", "port", "quiet_seconds", "enabled"}, "dicom", where)
    quiet = node.get("quiet_seconds", DEFAULT_QUIET_S)
    if isinstance(quiet, bool) or not isinstance(quiet, int | float) or quiet < 0:
        raise ConfigError(where, "dicom.quiet_seconds", "seconds >= 0", repr(quiet))
    return DicomConfig(_ae_title(node.get("ae_title", DEFAULT_AE_TITLE), "dicom.ae_title",
                                 where),
                       _text(node.get("host", DEFAULT_HOST), "dicom.host", where),
                       _port(node.get("port", DEFAULT_DICOM_PORT), "dicom.port", where),
                       float(quiet), bool(node.get("enabled", True)))


def _limits(value: Any, where: Path | None) -> Limits:
    node = _mapping(value, "limits", where)
    _known(node, {"upload_bytes", "instances_per_study", "attempts"}, "limits", where)
    return Limits(_positive_int(node.get("upload_bytes", DEFAULT_UPLOAD_BYTES),
                                "limits.upload_bytes", where),
                  _positive_int(node.get("instances_per_study", DEFAULT_INSTANCES),
                                "limits.instances_per_study", where),
                  _positive_int(node.get("attempts", DEFAULT_ATTEMPTS), "limits.attempts",
                                where))


def _pseudonymise(value: Any, where: Path | None) -> bool:
    if isinstance(value, bool):
        return value
    node = _mapping(value, "pseudonymise", where)
    if "keep" in node:  # removed: it kept free text (names, ids) as sent
        raise ConfigError(where, "pseudonymise.keep", "no such key", "keep",
                          fix="use pseudonymise.series_description: a regex of allowed words")
    _known(node, {"enabled", "series_description"}, "pseudonymise", where)
    enabled = node.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(where, "pseudonymise.enabled", "true or false", repr(enabled))
    return enabled


def _description_words(value: Any, where: Path | None) -> str | None:
    """The regex of words a de-identified SeriesDescription keeps (None: it is removed)."""
    words = value.get("series_description") if isinstance(value, dict) else None
    if words is None:
        return None
    name = "pseudonymise.series_description"
    if not isinstance(words, str) or not words.strip():
        raise ConfigError(where, name, "a regular expression of allowed words", repr(words))
    try:
        re.compile(words)
    except re.error as exc:
        raise ConfigError(where, name, "a regular expression",
                          " ".join(str(exc).split())) from None
    return words


def _forward(value: Any, where: Path | None) -> Forward | None:
    if value is None:
        return None
    node = _mapping(value, "forward", where)
    _known(node, {"ae_title", "host", "port", "link_to_original"}, "forward", where)
    link = node.get("link_to_original", False)
    if not isinstance(link, bool):
        raise ConfigError(where, "forward.link_to_original", "true or false",
                          type(link).__name__)
    return Forward(_ae_title(node.get("ae_title"), "forward.ae_title", where),
                   _text(node.get("host"), "forward.host", where),
                   _port(node.get("port"), "forward.port", where), link)
