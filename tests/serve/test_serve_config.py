"""The serve config: defaults, routes, the token, typed errors, the shipped example."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_fixtures import TOKEN, config_dict

from cinelab.serve.config import TOKEN_ENV, ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_and_routes(tmp_path: Path) -> None:
    raw = config_dict(tmp_path / "state", tmp_path / "m")
    raw["routes"] = [{"modality": "MR", "series_description": "(?i)age", "models": ["echonet"]},
                     {"modality": ["us", "DX"], "models": ["echonet"]}]
    del raw["http"]
    config = parse_config(raw, tmp_path, {})
    assert config.http_host == "127.0.0.1" and config.dicom.host == "127.0.0.1"
    assert config.route({"modality": "US"}) is config.routes[1]
    assert config.route({"modality": "MR", "series_description": "Cine AGE"}) is \
        config.routes[0]
    assert config.route({"modality": "MR", "series_description": "cine"}) is None
    assert config.route({"modality": "CT"}) is None


def test_token_from_environment(tmp_path: Path) -> None:
    raw = config_dict(tmp_path / "state", tmp_path / "m")
    del raw["token"]
    assert parse_config(raw, tmp_path, {TOKEN_ENV: TOKEN}).token == TOKEN
    with pytest.raises(ConfigError, match="token"):
        parse_config(raw, tmp_path, {})
    with pytest.raises(ConfigError, match="too short"):
        parse_config(raw, tmp_path, {TOKEN_ENV: "short"})


@pytest.mark.parametrize(("change", "field"), [
    ({"routes": [{"modality": "US", "models": ["nope"]}]}, "routes\\[0\\].models"),
    ({"limits": {"upload_bytes": -1}}, "limits.upload_bytes"),
    ({"dicom": {"ae_title": "X" * 17}}, "dicom.ae_title"),
    ({"dicom": {"port": 70000}}, "dicom.port"),
    ({"surprise": 1}, "config"),
    ({"forward": {"ae_title": "PACS", "host": "h", "port": 104, "link_to_original": "yes"}},
     "forward.link_to_original"),
    ({"routes": [{"modality": "MR", "series_description": "(", "models": ["echonet"]}]},
     "series_description"),
    ({"routes": [{"modality": "US", "models": ["echonet"], "content_check": "yes"}]},
     "routes\\[0\\].content_check"),
    ({"burned_in_annotation": "ignore"}, "burned_in_annotation"),
    ({"pseudonymise": {"enabled": True, "keep": ["SeriesDescription"]}},
     "pseudonymise.keep"),
    ({"pseudonymise": {"enabled": True, "series_description": ""}},
     "pseudonymise.series_description"),
])
def test_bad_values_name_the_field(tmp_path: Path, change: dict, field: str) -> None:
    raw = {**config_dict(tmp_path / "state", tmp_path / "m"), **change}
    with pytest.raises(ConfigError, match=field):
        parse_config(raw, tmp_path, {})


def test_bad_description_regex_is_one_line_error(tmp_path: Path) -> None:
    raw = {**config_dict(tmp_path / "state", tmp_path / "m"),
           "pseudonymise": {"enabled": True, "series_description": "(?i)(4ch|[3"}}
    with pytest.raises(ConfigError, match="pseudonymise.series_description: expected a "
                       "regular expression, found") as caught:
        parse_config(raw, tmp_path, {})
    assert "\n" not in str(caught.value)


def test_yaml_is_safe_loaded(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("models: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="valid YAML"):
        load_config(path, {})


def test_shipped_example_loads() -> None:
    config = load_config(ROOT / "examples" / "serve.yaml", {TOKEN_ENV: TOKEN})
    assert set(config.models) == {"echonet", "rvf", "cmr", "age", "cxr"}
    assert config.route({"modality": "US"}).models == ("echonet", "rvf")
    assert config.route({"modality": "US"}).content_check
    assert config.route({"modality": "CR"}).models == ("cxr",)
    for description in ("LAX 3 chamber cine", "cine_4ch", "CINE_segmented_LAX_2Ch"):
        assert config.route({"modality": "MR", "series_description": description}
                            ).models == ("age",)
    assert config.route({"modality": "MR", "series_description": "SAX stack"}).models == \
        ("cmr",)
    assert config.pseudonymise and config.http_host == "127.0.0.1"
    assert config.series_description_words is not None
    assert config.burned_in_annotation == "flag"


def test_cli_refuses_a_config_without_token(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cinelab.cli import app

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    result = CliRunner().invoke(app, ["serve", str(ROOT / "examples" / "serve.yaml")])
    assert result.exit_code != 0
    assert "token" in result.output and "Traceback" not in result.output
