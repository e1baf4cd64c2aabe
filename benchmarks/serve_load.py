"""Load test of `cinelab serve` on loopback: K concurrent HTTP and K DICOM clients send M
studies in all; prints studies/s, p50/p95 arrival-to-done latency, peak memory, and how many
studies were lost or processed twice (both must be 0). Times are printed, never asserted.

The service runs in this process (worker threads, DICOM node, uvicorn in a thread) with tiny
random-weight EchoNet checkpoints unless --model names a real one. HTTP clients upload small
AVIs; DICOM clients C-STORE synthetic multi-frame ultrasound DICOMs (one study each, two
instances per study). Everything is bounded by --timeout.

    python benchmarks/serve_load.py [--clients 4] [--studies 24] [--workers 1] [--model RUN]
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
import uvicorn
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import UltrasoundMultiFrameImageStorage  # type: ignore[attr-defined]

from cinelab.io.video import write_video
from cinelab.models.registry import create_model
from cinelab.serve.api import create_app
from cinelab.serve.config import parse_config
from cinelab.serve.queue import DONE, FAILED
from cinelab.serve.service import Service
from cinelab.train.checkpoint import InputSpec, save_checkpoint

TOKEN = "benchmark-token-0123456789"
MEAN, STD = [32.0] * 3, [50.0] * 3
INSTANCES_PER_DICOM_STUDY = 2


def tiny_models(root: Path) -> Path:
    """EchoNet run folder (ef/ + seg/) with random weights at 32 px."""
    torch.manual_seed(0)
    for sub, name, kw, spec in (
            ("ef", "tiny_video", {"in_channels": 3, "channels": [4, 8]},
             InputSpec("video", 32, 3, 8, 2, MEAN, STD, "EF")),
            ("seg", "unet_small", {"in_channels": 3, "out_channels": 1,
                                   "channels": [4, 8, 16, 32]},
             InputSpec("segmentation", 32, 3, None, None, MEAN, STD))):
        save_checkpoint(root / sub / "model.pt", create_model(name, **kw),
                        {"model": {"name": name, "kwargs": kw}}, spec)
    return root


def clip(seed: int, frames: int = 24) -> np.ndarray:
    """A pulsing blob on noise (T, 40, 48, 3)."""
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 40, (frames, 40, 48, 3), dtype=np.uint8)
    for t in range(frames):
        r = 8 + int(5 * np.sin(2 * np.pi * t / 10))
        video[t, 20 - r:20 + r, 24 - r:24 + r] += 150
    return video


def us_dataset(study: str, seed: int) -> Dataset:
    """A synthetic multi-frame ultrasound instance of `study`."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundMultiFrameImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "US", "Load^Test", "LOAD1"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    pixels = clip(seed, 20)
    ds.NumberOfFrames, ds.Rows, ds.Columns = pixels.shape[:3]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.FrameTime, ds.FrameIncrementPointer = 33.333, (0x0018, 0x1063)
    ds.PixelData = pixels.tobytes()
    return ds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_client(base: str, avis: list[Path]) -> list[str]:
    """Upload each AVI as one study; the study uids."""
    uids: list[str] = []
    with httpx.Client(base_url=base, timeout=120) as client:
        for path in avis:
            response = client.post("/api/studies", headers={"Authorization": f"Bearer {TOKEN}"},
                                   files=[("files", (path.name, path.read_bytes()))])
            response.raise_for_status()
            uids += response.json()["studies"]
    return uids


def dicom_client(port: int, studies: list[str], seed: int) -> list[str]:
    """C-STORE INSTANCES_PER_DICOM_STUDY instances of each study in one association."""
    ae = AE(ae_title="LOADSCU")
    ae.add_requested_context(UltrasoundMultiFrameImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="CINELAB")
    if not assoc.is_established:
        raise RuntimeError("association refused")
    try:
        for i, study in enumerate(studies):
            for k in range(INSTANCES_PER_DICOM_STUDY):
                status = assoc.send_c_store(us_dataset(study, seed * 1000 + i * 10 + k))
                if int(status.Status) != 0:
                    raise RuntimeError(f"C-STORE status {int(status.Status):#06x}")
    finally:
        assoc.release()
    return studies


def split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    model = args.model or tiny_models(root / "model")
    http_port = free_port()
    raw = {"models": {"echonet": {"path": str(model), "options": {"stride": 4}}},
           "routes": [{"modality": "US", "models": ["echonet"]}],
           "dicom": {"port": 0, "quiet_seconds": args.quiet}, "http": {"port": http_port},
           "token": TOKEN, "state": str(root / "state"), "workers": args.workers,
           "pseudonymise": {"enabled": False}}
    service = Service(parse_config(raw, root, {})).start()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1",
                                           port=http_port, log_level="warning",
                                           access_log=False))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    n_http = args.studies // 2
    avis = [write_video(root / "avi" / f"{i}.avi", clip(i), 30) for i in range(n_http)]
    dicom_studies = [generate_uid() for _ in range(args.studies - n_http)]
    started = time.time()
    with ThreadPoolExecutor(2 * args.clients) as pool:
        futures = [pool.submit(http_client, f"http://127.0.0.1:{http_port}", part)
                   for part in split(avis, args.clients)]
        futures += [pool.submit(dicom_client, service.dicom_port, part, i)
                    for i, part in enumerate(split(dicom_studies, args.clients))]
        sent = [uid for f in futures for uid in f.result()]
    while time.time() - started < args.timeout:
        counts = service.queue.counts()
        if counts[DONE] + counts[FAILED] >= len(set(sent)):
            break
        time.sleep(0.1)
    wall = time.time() - started
    studies = {s.uid: s for s in service.queue.studies(limit=10 * args.studies)}
    done = [studies[u] for u in set(sent) if u in studies and studies[u].status == DONE]
    latencies = np.array([s.finished - s.created for s in done])
    server.should_exit = True
    service.stop()
    return {"clients_http": args.clients, "clients_dicom": args.clients,
            "studies_sent": len(sent), "done": len(done),
            "failed": sum(s.status == FAILED for s in studies.values()),
            "lost": len(set(sent) - {s.uid for s in done}),
            "duplicated": sum(s.completions > s.version for s in studies.values())
            + (len(sent) - len(set(sent))),
            "reopened": sum(s.version > 1 for s in studies.values()),
            "instances_ok": all(s.n_instances == INSTANCES_PER_DICOM_STUDY
                                for s in done if s.source == "dicom"),
            "wall_s": round(wall, 2), "studies_per_s": round(len(done) / wall, 3),
            "latency_p50_s": round(float(np.percentile(latencies, 50)), 2) if len(done) else None,
            "latency_p95_s": round(float(np.percentile(latencies, 95)), 2) if len(done) else None,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "workers": args.workers, "quiet_s": args.quiet}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4, help="HTTP clients (and as many "
                        "DICOM clients)")
    parser.add_argument("--studies", type=int, default=24, help="studies in all (half each)")
    parser.add_argument("--workers", type=int, default=1, help="worker threads")
    parser.add_argument("--quiet", type=float, default=0.5, help="DICOM quiet seconds")
    parser.add_argument("--timeout", type=float, default=600, help="bound on the whole run")
    parser.add_argument("--model", type=Path, default=None, help="EchoNet run folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        print(json.dumps(run(args, Path(tmp)), indent=1))


if __name__ == "__main__":
    main()
