"""The worker: claims queued studies, runs the routed models, writes the results.

Outputs go to ``results/.partial-<uid>/`` and are renamed whole onto
``results/<uid>.v<version>/``, then ``results/<uid>`` (a link) is swapped onto it at once;
only then is the study marked ``done``. A study version whose finished folder is already
there (the server was killed between the rename and the mark) is marked done without running
again; earlier versions (a study re-opened by a late instance) are kept beside it.
A failing study records its reason and the worker moves on.

On a route with ``content_check`` every candidate model runs and only those whose images
are not flagged out of distribution are kept (`cinelab.serve.content`); results.json then
holds each model's ``status`` and ``reason`` and the route's ``selection``. Every path in
results.json is relative to the study's results folder (and so downloadable through the
API); paths that would point outside it or to removed temporary conversions are nulled.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import pydicom
from pydicom.dataset import Dataset

from cinelab.errors import CinelabError
from cinelab.infer.contract import read_predictions, read_problems
from cinelab.pipelines.registry import Options, pipeline_for_model
from cinelab.serve.arrival import DICOM_SUFFIX, StatePaths
from cinelab.serve.cmr import CMR_PIPELINE, cine_input, cine_segs
from cinelab.serve.config import Route, ServeConfig
from cinelab.serve.content import KEPT, judge, select
from cinelab.serve.queue import JobQueue, Study
from cinelab.serve.seg import overlay_png, overlay_webm, read_mask, source_masks, write_seg
from cinelab.serve.sr import write_sr

log = logging.getLogger("cinelab.serve")

RESULTS_JSON, SR_FILE, MASKS_DIR, FRAMES_CSV = "results.json", "sr.dcm", "masks", "frames.csv"
CINE_WORK = ".cine-"  # + model name: the study converted for a cine model (removed after)
POLL_S = 0.2
PERSON_NAME_WARNING = ".*unlikely to represent the intended person name"
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
MAX_REASON = 300


class ServeError(CinelabError):
    """A study cannot be processed (no route, no usable input)."""


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-able dicts (NaN -> null)."""
    return json.loads(table.to_json(orient="records")) if len(table) else []


def _key_frames(out: Path, sid: str) -> list[int]:
    """End-diastolic then end-systolic frame of a sample (frames.csv), else frame 0."""
    path = out / FRAMES_CSV
    if not path.is_file():
        return [0]
    frames = pd.read_csv(path, dtype={"sample_id": str})
    frames = frames[frames["sample_id"] == sid]
    picks = [int(frames.loc[frames[c] == 1, "frame"].iloc[0]) for c in ("is_ed", "is_es")
             if c in frames and (frames[c] == 1).any()]
    return picks or [0]


class Worker:
    """Processes studies of one queue with the models of one config."""

    def __init__(self, config: ServeConfig, queue: JobQueue, paths: StatePaths,
                 on_done: Callable[[Study, Path], None] | None = None) -> None:
        self.config, self.queue, self.paths, self.on_done = config, queue, paths, on_done

    def run(self, stop: threading.Event) -> None:
        """Promote quiet studies and process queued ones until `stop` is set."""
        while not stop.is_set():
            try:
                busy = self.step()
            except Exception as exc:  # e.g. the database busy for too long: retry later
                log.error("worker: %s; retrying", type(exc).__name__)
                busy = False
            if not busy:
                stop.wait(POLL_S)

    def step(self) -> bool:
        """Process at most one study; whether one was claimed."""
        self.queue.promote_quiet(self.config.dicom.quiet_seconds)
        study = self.queue.claim()
        if study is None:
            return False
        self.process(study)
        return True

    def process(self, study: Study) -> None:
        """Run one claimed study to done or failed (never raises)."""
        try:
            final = self.produce(study)
        except Exception as exc:  # one bad study is recorded and never blocks the queue
            reason = f"{type(exc).__name__}: {exc}"[:MAX_REASON]
            self.queue.finish(study.uid, reason=reason)
            log.warning("study %s failed (%s)", study.uid, type(exc).__name__)
            return
        self.queue.finish(study.uid)
        log.info("study %s done", study.uid)
        if self.on_done is not None:
            self.on_done(study, final)

    def produce(self, study: Study) -> Path:
        """The study version's finished results folder (written now unless complete)."""
        final = self.paths.version(study.uid, study.version)
        if (final / RESULTS_JSON).is_file():
            self.paths.publish(study.uid, study.version)
            return final
        index = study.meta.get("route")
        route = self.config.routes[index] if isinstance(index, int) and \
            index < len(self.config.routes) else None
        if route is None:
            raise ServeError(f"no route for modality {study.meta.get('modality') or '?'}")
        partial = self.paths.partial(study.uid)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        instances = dict(self.queue.instances(study.uid))
        summary, selection = self._run_route(route, partial, study.uid)
        tables = {n: pd.DataFrame(s["predictions"]) for n, s in summary.items()
                  if s.get("status", KEPT[0]) in KEPT}
        if not any(len(t) for t in tables.values()):
            raise ServeError("no model could use the study (see problems in the results)")
        sources = _headers(instances)
        files = self._dicom_outputs(partial, tables, sources, instances, study.uid)
        files += self._cine_outputs(partial, summary, sources)
        record = {"study": study.uid, "version": study.version, "models": summary,
                  "files": files, "problems": list(study.meta.get("problems") or [])}
        if selection is not None:
            record["selection"] = selection
        _write_json(partial / RESULTS_JSON, relative_paths(record, partial))
        os.replace(partial, final)  # the whole folder appears at once ...
        self.paths.publish(study.uid, study.version)  # ... and becomes the current one
        return final

    def _run_route(self, route: Route, partial: Path, uid: str
                   ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Every model of `route` on the study: name -> result, and the content check's
        selection (None without one). With the check a failing model is a result with
        status "no result"; without it, its error fails the study."""
        inputs = self.paths.incoming(uid)
        if not route.content_check:
            return {name: self._predict(name, inputs, partial, uid)
                    for name in route.models}, None
        summary = {}
        for name in route.models:
            try:
                result = self._predict(name, inputs, partial, uid)
            except Exception as exc:  # noqa: BLE001 - a candidate that cannot read the study
                reason = f"{type(exc).__name__}: {exc}".replace(str(inputs), "<study>")
                result = {"pipeline": None, "predictions": [], "problems": [],
                          "reason": reason[:MAX_REASON]}
            summary[name] = judge(result)
        return summary, select(summary)

    def _predict(self, name: str, inputs: Path, partial: Path, uid: str) -> dict[str, Any]:
        """Run model `name` on the study folder (a cine model on its DICOM instances
        converted into one cine named `uid`); its predictions and problems as records."""
        spec = self.config.models[name]
        pipeline = pipeline_for_model(spec.path, spec.pipeline)
        out = partial / name
        options = Options(device=self.config.device, extra=dict(spec.options))
        if pipeline.name == CMR_PIPELINE and any(inputs.glob(f"*{DICOM_SUFFIX}")):
            inputs = cine_input(inputs, partial / f"{CINE_WORK}{name}", uid)
        pipeline.predict(spec.path, inputs, out, options)
        return {"pipeline": pipeline.name, "predictions": _records(read_predictions(out)),
                "problems": [asdict(p) for p in read_problems(out)]}

    def _dicom_outputs(self, partial: Path, tables: dict[str, pd.DataFrame],
                       sources: dict[str, Dataset], instances: dict[str, str], uid: str
                       ) -> list[str]:
        """SR of every measurement; SEG, overlay PNG and WebM of every mask; their file names."""
        files = []
        warnings.filterwarnings("ignore", message=PERSON_NAME_WARNING)  # pseudonyms: 1 part
        if write_sr(partial / SR_FILE, tables, sources) is not None:
            files.append(SR_FILE)
        series = pydicom.uid.generate_uid()
        for name, table in tables.items():
            kept = set(table["sample_id"].astype(str)) if "sample_id" in table else set()
            for npz in sorted((partial / name / MASKS_DIR).glob("*.npz")):
                if npz.stem in kept:
                    files += self._mask_outputs(partial, name, npz, sources, instances,
                                                series)
        return files

    def _cine_outputs(self, partial: Path, summary: dict[str, Any],
                      sources: dict[str, Dataset]) -> list[str]:
        """SEGs of the cine models' label volumes (their conversion folders removed)."""
        files: list[str] = []
        series = pydicom.uid.generate_uid()
        for name, result in summary.items():
            work = partial / f"{CINE_WORK}{name}"
            if result["pipeline"] == CMR_PIPELINE and result["predictions"] and \
                    result.get("status", KEPT[0]) in KEPT:
                files += cine_segs(partial, name, work / "cine", sources, series)
            shutil.rmtree(work, ignore_errors=True)
        return files

    def _mask_outputs(self, partial: Path, name: str, npz: Path, sources: dict[str, Dataset],
                      instances: dict[str, str], series: str) -> list[str]:
        sid = npz.stem
        source = instances.get(sid) or _by_stem(instances, sid)
        if source is None:
            return []
        frames, masks = source_masks(Path(source), read_mask(npz))
        picks = [p for p in _key_frames(partial / name, sid) if p < len(masks)] or [0]
        files = [overlay_png(partial / f"overlay-{name}-{sid}.png", frames, masks,
                             picks).name,
                 overlay_webm(partial / f"overlay-{name}-{sid}.webm", frames, masks).name]
        if sid in sources:
            for number, frame in enumerate(picks, 1):
                path = partial / f"seg-{name}-{sid}-{number}.dcm"
                files.append(write_seg(path, sources[sid], masks[frame], frame, series,
                                       number).name)
        return files


def _by_stem(instances: dict[str, str], stem: str) -> str | None:
    """The instance file whose name (without suffix) is `stem` (uploaded videos)."""
    return next((p for p in instances.values() if Path(p).name.split(".")[0] == stem), None)


def _headers(instances: dict[str, str]) -> dict[str, Dataset]:
    """SOPInstanceUID -> header (no pixels) of every DICOM instance of a study, with the
    type 2 patient/study attributes the SR and SEG copy present (empty when absent)."""
    out = {}
    for sop, path in instances.items():
        if path.endswith(DICOM_SUFFIX):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            for keyword in TYPE2_COPIED:
                if keyword not in ds:
                    setattr(ds, keyword, "")
            out[sop] = ds
    return out


def relative_paths(obj: Any, folder: Path) -> Any:
    """`obj` with every absolute path string of a file inside `folder` made relative to it
    (POSIX); other absolute paths (outside it, or removed temporary conversions) become
    None, so that every path left can be downloaded."""
    if isinstance(obj, dict):
        return {k: relative_paths(v, folder) for k, v in obj.items()}
    if isinstance(obj, list):
        return [relative_paths(v, folder) for v in obj]
    if isinstance(obj, str) and obj.startswith("/"):
        path = Path(obj)
        for base in (folder, folder.resolve()):
            if base in path.parents and path.exists():
                return path.relative_to(base).as_posix()
        return None
    return obj


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, allow_nan=False))


def result_versions(paths: StatePaths, study: Study) -> list[dict[str, Any]]:
    """Every version of `study` the API can show, oldest first: each finished folder kept on
    disk (``results/<uid>.v<N>/``: status ``done``, ``finished`` the time its results.json
    was written, ``current`` when ``results/<uid>`` serves it), then the study's own version
    with its queue status while that one has no finished folder yet."""
    link = paths.results(study.uid)
    current = link.resolve() if link.exists() else None
    prefix = paths.version(study.uid, 0).name[:-1]  # "<uid>.v"
    found = []
    for folder in link.parent.glob(f"{prefix}*") if link.parent.is_dir() else ():
        number = folder.name[len(prefix):]
        if not number.isdigit() or folder.is_symlink() or \
                not (folder / RESULTS_JSON).is_file():
            continue
        found.append({"version": int(number), "status": "done",
                      "finished": (folder / RESULTS_JSON).stat().st_mtime,
                      "current": folder.resolve() == current})
    found.sort(key=lambda v: v["version"])
    if study.version not in {v["version"] for v in found}:
        found.append({"version": study.version, "status": study.status,
                      "finished": study.finished, "current": False})
    return found
