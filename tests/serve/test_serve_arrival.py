"""Arrival rules: burned-in annotation flagged (or refused), late instances re-opening a
finished study as its next version (each version done exactly once, the earlier kept), a
running study queued again when instances arrive during its run, and the per-study instance
limit holding under concurrent C-STOREs."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pynetdicom.sop_class import UltrasoundMultiFrameImageStorage  # type: ignore[attr-defined]
from serve_fixtures import (
    QUICK_DICOM,
    TOKEN,
    VIEW_WORDS,
    WAIT_S,
    send_instances,
    us_dicom,
    wait_done,
)

from cinelab.pipelines.age.layout import VIEW_PATTERNS, view_of
from cinelab.pipelines.age.synth import DESCRIPTIONS
from cinelab.serve.api import create_app
from cinelab.serve.arrival import BURNED_IN_PROBLEM, DESCRIPTION_CHARS, clean_description
from cinelab.serve.node import OUT_OF_RESOURCES, start_node
from cinelab.serve.queue import DONE, HTTP_SOURCE, QUEUED, RECEIVING, JobQueue

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _burned(path: Path, study: str | None = None) -> Any:
    ds = us_dicom(path, study=study)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(path, enforce_file_format=True)
    return ds


def _wait_version(service: Any, uid: str, version: int) -> Any:
    deadline = time.time() + WAIT_S
    while time.time() < deadline:
        study = service.queue.get(uid)
        if study is not None and study.version == version and study.status == DONE:
            return study
        time.sleep(0.1)
    raise AssertionError(f"version {version} not done in time")


@pytest.mark.slow
def test_burned_in_instance_is_flagged_and_processed(service_factory: Any,
                                                     tmp_path: Path) -> None:
    service = service_factory(node=True, dicom=QUICK_DICOM)
    sent = _burned(tmp_path / "b.dcm")
    assert send_instances(service.dicom_port, UltrasoundMultiFrameImageStorage, sent) == [0]
    study = wait_done(service, str(sent.StudyInstanceUID))
    body = TestClient(create_app(service)).get(f"/api/studies/{study.uid}",
                                               headers=AUTH).json()
    assert body["meta"]["problems"] == [BURNED_IN_PROBLEM]
    assert body["results"]["problems"] == [BURNED_IN_PROBLEM]


def test_burned_in_refused_over_http_and_dicom(service_factory: Any, tmp_path: Path) -> None:
    service = service_factory(start=False, burned_in_annotation="refuse",
                              dicom={"port": 0, "quiet_seconds": 30})
    service.node = start_node(service.config.dicom, service.arrival)
    path = tmp_path / "b.dcm"
    sent = _burned(path)
    response = TestClient(create_app(service)).post(
        "/api/studies", headers=AUTH, files=[("files", ("b.dcm", path.read_bytes()))])
    assert response.status_code == 422
    assert response.json()["detail"] == ("BurnedInAnnotation is YES: refused "
                                         "(burned_in_annotation: refuse)")
    assert send_instances(service.dicom_port, UltrasoundMultiFrameImageStorage, sent) == \
        [0xC000]
    assert service.queue.studies() == [] and not list(service.paths.root.rglob("*.dcm"))


@pytest.mark.slow
def test_late_instance_reopens_a_done_study_as_next_version(service_factory: Any,
                                                            tmp_path: Path) -> None:
    service = service_factory(node=True, dicom=QUICK_DICOM)
    uid = "1.2.826.0.1.3680043.8.498.4242"
    first, late = (us_dicom(tmp_path / f"{i}.dcm", study=uid, seed=i) for i in range(2))
    assert send_instances(service.dicom_port, UltrasoundMultiFrameImageStorage, first) == [0]
    _wait_version(service, uid, 1)
    assert send_instances(service.dicom_port, UltrasoundMultiFrameImageStorage, late) == [0]
    study = _wait_version(service, uid, 2)
    assert study.completions == 2 and study.n_instances == 2
    current = json.loads((service.paths.results(uid) / "results.json").read_text())
    old = json.loads((service.paths.version(uid, 1) / "results.json").read_text())
    assert (current["version"], old["version"]) == (2, 1)
    assert sorted(r["sample_id"] for r in current["models"]["echonet"]["predictions"]) == \
        sorted([str(first.SOPInstanceUID), str(late.SOPInstanceUID)])
    assert [r["sample_id"] for r in old["models"]["echonet"]["predictions"]] == \
        [str(first.SOPInstanceUID)]
    assert service.paths.results(uid).resolve() == service.paths.version(uid, 2).resolve()


def test_instance_during_a_run_queues_the_next_version(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "q.db")
    queue.add_instance("s", "a", "a.dcm", {}, HTTP_SOURCE)
    queue.enqueue("s")
    assert queue.claim().version == 1
    queue.add_instance("s", "b", "b.dcm", {}, HTTP_SOURCE)  # while it runs
    queue.finish("s")
    again = queue.get("s")
    assert (again.status, again.version, again.completions) == (QUEUED, 2, 1)
    assert queue.claim().uid == "s"
    queue.finish("s")
    assert (queue.get("s").status, queue.get("s").completions) == (DONE, 2)
    queue.add_instance("s", "b", "b.dcm", {}, HTTP_SOURCE)  # a duplicate re-opens nothing
    assert queue.get("s").status == DONE
    queue.add_instance("s", "c", "c.dcm", {}, HTTP_SOURCE)
    assert (queue.get("s").status, queue.get("s").version) == (RECEIVING, 3)


def test_instance_limit_holds_under_concurrent_stores(service_factory: Any,
                                                      tmp_path: Path) -> None:
    service = service_factory(start=False, limits={"instances_per_study": 3},
                              dicom={"port": 0, "quiet_seconds": 30})
    service.node = start_node(service.config.dicom, service.arrival)  # no worker threads
    uid = "1.2.826.0.1.3680043.8.498.99"
    sent = [us_dicom(tmp_path / f"{i}.dcm", study=uid, seed=i, frames=2) for i in range(8)]
    statuses: list[int] = []
    start = threading.Barrier(len(sent))

    def store(ds: Any) -> None:
        start.wait()
        statuses.extend(send_instances(service.dicom_port, UltrasoundMultiFrameImageStorage,
                                       ds))

    threads = [threading.Thread(target=store, args=(ds,)) for ds in sent]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert sorted(statuses) == [0] * 3 + [OUT_OF_RESOURCES] * 5
    assert service.queue.get(uid).n_instances == 3
    assert len(service.queue.instances(uid)) == 3
    assert len(list(service.paths.incoming(uid).glob("*.dcm"))) == 3


@pytest.mark.parametrize(("text", "cleaned"), [
    ("4CH cine PATIENT-12345 John", "4CH"),
    ("CINE_segmented_LAX_4Ch", "LAX 4Ch"),
    ("LAX 4 chamber cine", "LAX 4 chamber"),
    ("sax stack Vladimir Saxon", "sax"),  # view words inside names are not words
    ("cine_lax_3ch A2C1234 ID-2 chamber", "lax 3ch 2 chamber"),
    ("PATIENT-12345 John", None),
    ("", None),
])
def test_example_keeps_only_view_words(text: str, cleaned: str | None) -> None:
    assert clean_description(text, VIEW_WORDS) == cleaned


def test_cleaned_description_is_distinct_words_within_lo_length() -> None:
    assert clean_description("4ch 4ch  4\tch 4  ch", r"4\s*ch") == "4ch 4 ch"
    long = clean_description(" ".join(f"w{i:02d}" for i in range(40)), r"w\d+")
    assert long is not None and len(long) <= DESCRIPTION_CHARS and long.startswith("w00 w01")


ALSO_RECOGNISED = ("four-chamber", "Two_chamber cine", "3-ch", "4 - ch", "VLA cine",
                   "SSFP_4CH_TF", "cine4ch", "LAX4CH", "lvot", "HLA 4CH", "4 chambers",
                   "B-TFE 2CH", "three chamber LVOT", "cine_2ch_PATIENT-12345")


def test_cleaning_keeps_every_view_the_age_layout_recognises() -> None:
    views = tuple(VIEW_PATTERNS)
    texts = [*(d for names in DESCRIPTIONS.values() for d in names), *ALSO_RECOGNISED]
    for text in texts:
        view = view_of(text, views)
        assert view is not None, text
        assert view_of(clean_description(text, VIEW_WORDS) or "", views) == view, text
