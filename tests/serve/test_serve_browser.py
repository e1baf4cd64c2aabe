"""The review page in a real browser (Debian's chromium through Playwright): token, upload
form, study list with status, measurements, the overlay image and the overlay video playing;
no request leaves the server and the console logs no error."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from serve_fixtures import TOKEN, noise_avi, us_dicom

from cinelab.serve.api import create_app
from cinelab.serve.arrival import BURNED_IN_PROBLEM

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_MS = 60_000


@pytest.fixture
def base_url(service_factory: Any) -> Iterator[str]:
    """The service's app on a loopback port, served by uvicorn in a thread."""
    yield from _served(service_factory())


@pytest.fixture
def checked_url(service_factory: Any) -> Iterator[str]:
    """As `base_url`, its US route content-checked (echonet gives no ood_flag: unchecked)."""
    yield from _served(service_factory(routes=[{"modality": "US", "models": ["echonet"],
                                                "content_check": True}]))


def _served(service: Any) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1",
                                           port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.mark.slow
def test_review_page(base_url: str, tmp_path: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium); browsers are never "
                    "downloaded")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    clip = noise_avi(tmp_path / "clip.avi")
    outside: list[str] = []
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(bypass_csp=True)  # lets Playwright's own polling evaluate
        page.on("request", lambda r: None if r.url.startswith((base_url, "blob:", "data:"))
                else outside.append(r.url))
        page.on("console", lambda m: errors.append(f"{m.text} {m.location['url']}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(base_url)
        page.fill("#token", "wrong-token-0000000000")
        page.click("#save-token")
        page.wait_for_selector("#auth-status:has-text('token refused')")
        assert all("401" in e for e in errors), errors  # refused requests: logged, rightly
        errors.clear()
        page.fill("#token", TOKEN)
        page.click("#save-token")
        page.set_input_files("#files", str(clip))
        page.click("#upload-form button[type=submit]")
        page.wait_for_selector("#upload-status:has-text('queued')")
        page.wait_for_selector("#studies tbody tr td.done")
        page.locator("#studies tbody tr td.done").first.click()  # re-resolved if refreshed
        ef = page.wait_for_selector("table.measurements tr[data-key=ef]")
        assert float(ef.inner_text().split()[-1]) >= 0
        image = page.wait_for_selector("img.overlay")
        page.wait_for_function("document.querySelector('img.overlay').naturalWidth > 0")
        assert image.get_attribute("alt").startswith("overlay-echonet-")
        _assert_video_plays(page)
        browser.close()
    assert outside == []
    assert errors == [], errors


@pytest.mark.slow
def test_review_page_shows_problems_and_choice(checked_url: str, tmp_path: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    path = tmp_path / "burned.dcm"
    ds = us_dicom(path)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(path, enforce_file_format=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(bypass_csp=True)
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(checked_url)
        page.fill("#token", TOKEN)
        page.click("#save-token")
        page.set_input_files("#files", str(path))
        page.click("#upload-form button[type=submit]")
        page.wait_for_selector("#studies tbody tr td.done")
        page.locator("#studies tbody tr td.done").first.click()
        assert page.wait_for_selector("p.problem").inner_text() == \
            f"problem: {BURNED_IN_PROBLEM}"
        assert page.wait_for_selector("#selection").inner_text() == \
            "content check: chose echonet (echonet: the model gives no ood_flag: kept unchecked)"
        assert page.wait_for_selector("p.model-status").inner_text().startswith("unchecked: ")
        page.screenshot(path=str(tmp_path / "review.png"))
        browser.close()


def _assert_video_plays(page: Any) -> None:
    """The overlay <video> (muted, autoplaying, looping) has data and its time advances."""
    video = page.wait_for_selector("video.overlay-video")
    assert video.get_attribute("title").endswith(".webm")
    page.wait_for_function("document.querySelector('video.overlay-video').readyState >= 2")
    assert page.evaluate("(() => { const v = document.querySelector('video.overlay-video');"
                         " return v.muted && v.loop && v.autoplay && v.controls; })()")
    start = page.evaluate("document.querySelector('video.overlay-video').currentTime")
    page.wait_for_function(f"document.querySelector('video.overlay-video').currentTime"
                           f" !== {start}")
