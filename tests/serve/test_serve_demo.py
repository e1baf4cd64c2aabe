"""`cinelab serve examples/serve.yaml` over a demo-shaped runs/demo folder: tiny checkpoints
at the paths the example names (a copy of it, its paths relative to the file), the real CLI
in a subprocess, /health and /ready, and one study per route sent over DICOM to done."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import torch
import yaml
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    DigitalXRayImageStorageForPresentation,
    MRImageStorage,
    UltrasoundMultiFrameImageStorage,
)
from serve_fixtures import (
    CMR_CLASSES,
    TOKEN,
    chest_dicom,
    cine_study,
    send_instances,
    tiny_age,
    tiny_cxr,
    tiny_echonet,
    us_dicom,
)

from cinelab.models import create_model
from cinelab.pipelines.age.synth import synth_cmr_lax_cohort
from cinelab.serve.config import TOKEN_ENV
from cinelab.train.checkpoint import InputSpec, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
RVF_KW = {"backbone": "tiny_video", "backbone_kwargs": {"channels": [4, 8]},
          "fusion": "mean_prob"}
START_S, WAIT_S = 60.0, 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _demo(root: Path) -> Path:
    """runs/demo with tiny checkpoints (models the package registers: the server runs in
    a subprocess) where examples/serve.yaml looks for them; the synthetic long-axis cohort
    the age cv was trained on."""
    demo = root / "runs" / "demo"
    tiny_echonet(demo / "echonet")
    spec = InputSpec(task="video_classification", size=32, channels=3, frames=4, period=2,
                     mean=[0.0] * 3, std=[1.0] * 3, target="label")
    torch.manual_seed(0)
    save_checkpoint(demo / "rvf" / "run" / "model.pt", create_model("two_stream", **RVF_KW),
                    {"name": "rvf-test", "model": {"name": "two_stream", "kwargs": RVF_KW},
                     "data": {"clips": 3}}, spec)
    torch.manual_seed(0)
    cmr_kw = {"in_channels": 1, "out_channels": 4, "channels": [4, 8, 16, 32]}
    save_checkpoint(demo / "cmr" / "train" / "model.pt", create_model("unet_small", **cmr_kw),
                    {"name": "serve-demo", "model": {"name": "unet_small", "kwargs": cmr_kw},
                     "data": {"classes": CMR_CLASSES}},
                    InputSpec("image_segmentation", 32, 1, mean=[60.0], std=[40.0],
                              target="labels"), {"classes": CMR_CLASSES})
    cohort = synth_cmr_lax_cohort(root / "lax", n=8, seed=1, size=32).root
    tiny_age(demo / "age", cohort)
    tiny_cxr(demo / "cxr" / "ensemble")
    return cohort


def _config(root: Path) -> tuple[Path, int, int]:
    """A copy of examples/serve.yaml in root/examples with free ports and a short quiet time."""
    raw = yaml.safe_load((ROOT / "examples" / "serve.yaml").read_text())
    dicom_port, http_port = _free_port(), _free_port()
    raw["dicom"].update(port=dicom_port, quiet_seconds=0.5)
    raw["http"]["port"] = http_port
    path = root / "examples" / "serve.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(raw))
    return path, dicom_port, http_port


def _wait_ready(client: httpx.Client, process: subprocess.Popen) -> None:
    deadline = time.time() + START_S
    while time.time() < deadline:
        assert process.poll() is None, "cinelab serve exited"
        try:
            if client.get("/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("cinelab serve not ready in time")


def _finished(client: httpx.Client, n: int) -> list[dict[str, Any]]:
    deadline = time.time() + WAIT_S
    while time.time() < deadline:
        studies = client.get("/api/studies").json()
        if len(studies) == n and all(s["status"] in ("done", "failed") for s in studies):
            return studies
        time.sleep(0.3)
    raise AssertionError(f"studies not finished: {client.get('/api/studies').json()}")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*person name")
def test_example_config_serves_demo_checkpoints(tmp_path: Path) -> None:
    cohort = _demo(tmp_path)
    config, dicom_port, http_port = _config(tmp_path)
    env = {**os.environ, TOKEN_ENV: TOKEN, "OMP_NUM_THREADS": "1"}
    cli = shutil.which("cinelab", path=str(Path(sys.executable).parent)) or "cinelab"
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen([cli, "serve", str(config)], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}",
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
            _wait_ready(client, process)
            assert client.get("/health").json() == {"status": "ok"}
            lax = [pydicom.dcmread(p) for p in sorted((cohort / "dicom" / "S0001").rglob(
                "*.dcm"))]
            sends = [(UltrasoundMultiFrameImageStorage, [us_dicom(tmp_path / "us.dcm")]),
                     (MRImageStorage, lax), (MRImageStorage, cine_study(tmp_path / "sax")),
                     (DigitalXRayImageStorageForPresentation,
                      [chest_dicom(tmp_path / "cxr.dcm")])]
            for context, datasets in sends:
                assert set(send_instances(dicom_port, context, *datasets)) == {0}
            studies = _finished(client, len(sends))
            assert [s["status"] for s in studies] == ["done"] * 4, [s["reason"] for s in studies]
            chosen = {}
            for study in studies:
                results = client.get(f"/api/studies/{study['uid']}/results").json()
                kept = results.get("selection", {}).get("chosen") or list(results["models"])
                chosen[str(study["meta"]["route"])] = kept
                for name in results["files"]:
                    assert client.get(f"/api/studies/{study['uid']}/files/{name}"
                                      ).status_code == 200
                if kept != ["cmr"]:  # an untrained U-Net may find no ventricle to measure
                    assert "sr.dcm" in results["files"]
            assert chosen == {"0": ["echonet", "rvf"], "1": ["age"], "2": ["cmr"],
                              "3": ["cxr"]}
    finally:
        process.terminate()
        process.wait(30)
        log.close()
