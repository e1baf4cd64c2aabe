"""The paper's repeated patient-wise splits and their ensemble (issue 14): N seeded splits
with the test patients kept, members trained on store views, the ensemble's probability the
mean of its members'."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cinelab.cli import app
from cinelab.data.manifest import read_manifest
from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.infer.contract import read_predictions
from cinelab.pipelines.registry import Options, get_pipeline
from cinelab.pipelines.rvf.commands import prepare_rvf
from cinelab.pipelines.rvf.ensemble import (
    MEMBERS_FILE,
    is_ensemble,
    member_splits,
    member_store,
    read_ensemble,
    train_ensemble,
)
from cinelab.pipelines.rvf.layout import ingest_rvf
from cinelab.pipelines.rvf.predict import predict_rvf
from cinelab.pipelines.rvf.synth import synth_rvf_cohort
from cinelab.pipelines.rvf.uncertainty import read_rvf_state
from cinelab.train.recipe import load_recipe
from cinelab.utils import read_json

TINY = ["data.size=32", "data.frames=4", "data.period=2", "data.batch_size=4", "data.pad=2",
        "model.kwargs.backbone_kwargs={channels: [4, 8]}", "trainer.max_epochs=1",
        "data.clips=2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("rvf_ens")
    raw = synth_rvf_cohort(base / "raw", n=12, seed=4, size=40, frames=10)
    ingest_rvf(raw, raw / "classes.csv", raw / "splits.csv", base / "ingest")
    prepare_rvf(base / "ingest", base / "store", size=32, workers=1)
    return base / "store"


def _manifest() -> pd.DataFrame:
    rows = [("a", "p1", "train", 1), ("b", "p1", "train", 1), ("c", "p2", "train", 0),
            ("d", "p3", "val", 0), ("e", "p4", "val", 1), ("f", "p5", "train", 0),
            ("g", "p6", "train", 1), ("h", "p7", "test", 0), ("i", "p8", "test", 1),
            ("j", "p9", "train", 0)]
    return pd.DataFrame(rows, columns=["sample_id", "patient_id", "split", "label"])


def test_member_splits_are_patient_wise_seeded_and_keep_test() -> None:
    m = _manifest()
    splits = member_splits(m, 3, seed=1, val_fraction=0.34)
    assert [s.tolist() for s in member_splits(m, 3, seed=1, val_fraction=0.34)] == \
        [s.tolist() for s in splits]  # seeded
    assert len({tuple(s) for s in splits}) > 1  # the members differ
    for s in splits:
        assert (s[m["split"] == "test"] == "test").all()
        assert set(s[m["split"] != "test"]) == {"train", "val"}
        per_patient = pd.DataFrame({"p": m["patient_id"], "s": s}).groupby("p")["s"].nunique()
        assert (per_patient == 1).all()  # no patient in two sets
        val_labels = set(m.loc[s == "val", "label"])
        assert val_labels == {0, 1}  # stratified: both classes in every val set
    folds = member_splits(m, 2, seed=0, mode="folds")
    val_sets = [set(m.loc[f == "val", "patient_id"]) for f in folds]
    assert not val_sets[0] & val_sets[1]
    assert val_sets[0] | val_sets[1] == set(m.loc[m["split"] != "test", "patient_id"])
    with pytest.raises(InputError) as err:
        member_splits(m, 2, mode="bootstrap")
    assert err.value.field == "mode" and err.value.found == "'bootstrap'"
    with pytest.raises(InputError) as err:
        member_splits(m, 1, mode="folds")
    assert err.value.field == "members"


def test_member_store_is_a_view_with_its_own_split(store: Path, tmp_path: Path) -> None:
    m = read_manifest(store / "manifest.csv")
    split = member_splits(m, 2, seed=3)[1]
    view = PreparedStore(member_store(store, split, tmp_path / "view"))
    assert view.manifest["split"].tolist() == split.tolist()
    assert (tmp_path / "view" / "samples").is_symlink()
    sid = view.ids[0]
    np.testing.assert_array_equal(view.frames(sid), PreparedStore(store).frames(sid))
    assert read_manifest(store / "manifest.csv")["split"].tolist() == m["split"].tolist()


@pytest.mark.slow
def test_ensemble_probability_is_the_mean_of_the_members(store: Path, tmp_path: Path) -> None:
    recipe = load_recipe("rvf-twostream-cpu", TINY)
    info = train_ensemble(recipe, store, tmp_path / "ens", n=2, seed=0)
    assert info["members"] == ["members/0/run/model.pt", "members/1/run/model.pt"]
    assert 0.0 <= info["threshold"] <= 1.0 and info["mode"] == "repeated"
    _, models = read_ensemble(tmp_path / "ens")
    options = Options(split="test", seed=0)
    pipeline = get_pipeline("rvf")
    assert pipeline.owns_model is not None and pipeline.owns_model(tmp_path / "ens")
    pipeline.predict(tmp_path / "ens", store, tmp_path / "pred", options)
    ensemble = read_predictions(tmp_path / "pred").set_index("sample_id")
    members = []
    for k, model in enumerate(models):  # each member predicted on its own
        predict_rvf(model, store, tmp_path / f"alone{k}", options)
        members.append(read_predictions(tmp_path / f"alone{k}").set_index("sample_id"))
    assert len(ensemble) == len(PreparedStore(store).split_ids("test"))
    for column in ("probability", "p_grey", "p_flow"):
        expected = (members[0][column] + members[1][column]) / 2
        np.testing.assert_allclose(ensemble[column], expected.loc[ensemble.index], rtol=1e-6)
    assert not np.allclose(members[0]["probability"], members[1]["probability"])
    assert (ensemble["threshold"] == info["threshold"]).all()
    assert (ensemble["prediction"] == (ensemble["probability"] >= info["threshold"])).all()
    assert (ensemble["n_members"] == 2).all()
    long = pd.read_csv(tmp_path / "pred" / MEMBERS_FILE, dtype={"sample_id": str})
    assert sorted(long["member"].unique()) == [0, 1] and len(long) == 2 * len(ensemble)
    run = read_json(tmp_path / "pred" / "run.json")
    assert run["members"] == [str(m) for m in models]
    assert run["threshold_source"] == info["threshold_source"]
    again = train_ensemble(recipe, store, tmp_path / "ens", n=2, seed=0)
    assert again == info  # resumable: members kept
    cli = CliRunner().invoke(app, ["rvf", "predict", str(tmp_path / "ens"), str(store),
                                   "--out", str(tmp_path / "cli"), "--split", "test",
                                   "--threshold", "0.4"])
    assert cli.exit_code == 0, cli.output
    via_cli = read_predictions(tmp_path / "cli").set_index("sample_id")
    np.testing.assert_allclose(via_cli["probability"], ensemble["probability"], rtol=1e-6)
    assert (via_cli["threshold"] == 0.4).all()


@pytest.mark.slow
def test_run_with_members_evaluates_the_ensemble(store: Path, tmp_path: Path) -> None:
    raw = store.parent / "raw"
    options = Options(split="train", extra={"set": TINY, "members": 2, "top": 0, "n_boot": 20,
                                           "workers": 1})
    metrics = get_pipeline("rvf").run(raw, tmp_path / "out", options)
    assert "auc" in metrics and Path(metrics["report"]).is_file()
    info, models = read_ensemble(tmp_path / "out" / "run")
    assert info["pipeline"] == "rvf" and is_ensemble(tmp_path / "out" / "run")
    calibrator = read_rvf_state(tmp_path / "out" / "run").calibrator  # the run calibrates
    assert len(models) == 2 and calibrator is not None
    assert metrics["threshold"] == pytest.approx(calibrator.apply([info["threshold"]])[0])
    table = read_predictions(tmp_path / "out" / "predictions")
    assert (table["n_members"] == 2).all() and set(table["split"]) == {"train"}


def test_read_ensemble_names_a_missing_member(tmp_path: Path) -> None:
    (tmp_path / "ens").mkdir()
    (tmp_path / "ens" / "ensemble.json").write_text(
        '{"pipeline": "rvf", "members": ["members/0/run/model.pt"]}')
    with pytest.raises(InputError) as err:
        read_ensemble(tmp_path / "ens")
    assert err.value.field == "members" and "members/0/run/model.pt" in err.value.found


def test_only_rvf_ensembles_are_claimed(tmp_path: Path) -> None:
    ours, other = tmp_path / "rvf", tmp_path / "other"
    ours.mkdir(), other.mkdir()
    (ours / "ensemble.json").write_text('{"pipeline": "rvf", "members": []}')
    (other / "ensemble.json").write_text('{"member_info": {}, "weights": []}')
    assert is_ensemble(ours) and not is_ensemble(other)
    (other / "ensemble.json").write_text("not json")
    assert not is_ensemble(other)
