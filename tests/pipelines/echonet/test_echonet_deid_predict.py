"""EchoNet predict on a DICOM folder with pseudonymise: ids are keyed pseudonyms, nothing
written names the patient or the raw folder, burned-in annotation is flagged."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from test_echonet_predict import EF_KW, SEG_KW, SIZE, _ef_spec, _noise, _seg_spec

from cinelab.models.registry import create_model
from cinelab.pipelines.echonet.api import predict_echonet
from cinelab.pipelines.registry import Options
from cinelab.synth.dicom import write_ultrasound_dicom
from cinelab.train.checkpoint import save_checkpoint

NAME = "Smith_Anna"
RAW_ID = "MRN-778899"


def _save(path: Path, name: str, kwargs: dict, spec) -> None:
    torch.manual_seed(0)
    save_checkpoint(path, create_model(name, **kwargs),
                    {"model": {"name": name, "kwargs": kwargs}}, spec)


def test_pseudonymised_predict_on_a_dicom_folder(tmp_path: Path) -> None:
    _save(tmp_path / "run" / "ef" / "model.pt", "tiny_video", EF_KW, _ef_spec())
    _save(tmp_path / "run" / "seg" / "model.pt", "unet_small", SEG_KW, _seg_spec())
    raw = tmp_path / "raw" / NAME
    for k, burned in enumerate(("NO", "YES")):
        write_ultrasound_dicom(raw / f"{NAME}_{k}.dcm", _noise(k, 20, SIZE, SIZE), 30.0, RAW_ID,
                               PatientName="Smith^Anna", BurnedInAnnotation=burned)
    out = tmp_path / "pred"
    predict_echonet(tmp_path / "run", raw.parent, out,
                    Options(batch_size=4, extra={"pseudonymise": True}))
    preds = pd.read_csv(out / "predictions.csv", dtype={"sample_id": str})
    assert len(preds) == 2 and preds["sample_id"].str.fullmatch(r"P[0-9a-f]{12}_[12]").all()
    written = "".join(p.read_text() for p in (*out.glob("*.csv"), *out.glob("*.json"),
                                              *(out / "ingest").glob("*.csv")))
    assert NAME not in written and RAW_ID not in written and "Smith" not in written
    problems = pd.read_csv(out / "ingest" / "problems.csv", dtype=str)
    assert problems["column"].tolist() == ["BurnedInAnnotation"]
