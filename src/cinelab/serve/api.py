"""The HTTP API (FastAPI): upload, list and read studies and results (with the versions
kept of a re-opened study), download outputs (current, or of one kept version), /health,
/ready, /metrics and the review page. Every /api and /metrics route needs
``Authorization: Bearer <token>`` (401 without); uploads over the limit get 413."""

from __future__ import annotations

import hmac
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile

from cinelab.errors import InputError
from cinelab.serve.arrival import Arrival, BurnedInError, LimitError, StatePaths
from cinelab.serve.config import ServeConfig
from cinelab.serve.metrics import CONTENT_TYPE, prometheus_text
from cinelab.serve.page import review_page
from cinelab.serve.queue import JobQueue
from cinelab.serve.worker import RESULTS_JSON, result_versions
from cinelab.utils import inside

MAX_FORM_FIELDS = 8
CHUNK = 1 << 20
MEDIA_TYPES = {".webm": "video/webm", ".png": "image/png", ".dcm": "application/dicom",
               ".json": "application/json"}


class Service(Protocol):
    """What the app needs from the running service."""

    config: ServeConfig
    queue: JobQueue
    paths: StatePaths
    arrival: Arrival

    def ready(self) -> bool: ...  # noqa: D102

    def uptime(self) -> float: ...  # noqa: D102


def _authorizer(token: str) -> Any:
    """A dependency refusing requests without the bearer token (constant-time compare)."""
    expected = f"Bearer {token}".encode()

    def check(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "a valid bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})
    return check


def _study_or_404(service: Service, uid: str) -> Any:
    study = service.queue.get(uid)
    if study is None:
        raise HTTPException(404, "no such study")
    return study


def _results(service: Service, uid: str) -> dict[str, Any] | None:
    path = service.paths.results(uid) / RESULTS_JSON
    return json.loads(path.read_text()) if path.is_file() else None


async def _save_upload(item: UploadFile, folder: Path, index: int, budget: int) -> Path:
    """Write one uploaded part to `folder` (never under its own name); LimitError past
    `budget` bytes."""
    target = folder / f"upload{index:04d}{_suffix(item.filename or '')}"
    written = 0
    with target.open("wb") as out:
        while chunk := await item.read(CHUNK):
            written += len(chunk)
            if written > budget:
                raise LimitError("upload larger than limits.upload_bytes")
            out.write(chunk)
    return target


def _file_response(folder: Path, name: str) -> FileResponse:
    """A file of a results folder; 404 for anything not a file inside it (``..``, links
    that lead out)."""
    path = folder / name
    if not inside(folder, path) or not path.is_file():
        raise HTTPException(404, "no such file")
    return FileResponse(path, filename=path.name, media_type=_media_type(path))


def _media_type(path: Path) -> str | None:
    """The content type of a results file (None: guessed from its name)."""
    return MEDIA_TYPES.get(path.suffix.lower())


def _suffix(name: str) -> str:
    lower = name.lower()
    return ".nii.gz" if lower.endswith(".nii.gz") else Path(lower).suffix[:8]


async def _upload(service: Service, request: Request) -> dict[str, Any]:
    limit = service.config.limits.upload_bytes
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise HTTPException(411, "Content-Length required")
    if int(length) > limit:
        raise HTTPException(413, f"upload larger than {limit} bytes (limits.upload_bytes)")
    form = await request.form(max_files=service.config.limits.instances_per_study,
                              max_fields=MAX_FORM_FIELDS)
    files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
    if not files:
        raise HTTPException(422, "no files (multipart field 'files')")
    modality = form.get("modality")
    work = Path(tempfile.mkdtemp(prefix="upload-", dir=service.paths.root))
    try:
        saved = [await _save_upload(f, work, i, limit) for i, f in enumerate(files)]
        studies = service.arrival.accept_files(saved, modality if isinstance(modality, str)
                                               and modality else None, work)
    except LimitError as exc:
        raise HTTPException(413, str(exc)) from None
    except BurnedInError as exc:
        raise HTTPException(422, str(exc)) from None
    except InputError as exc:
        raise HTTPException(422, f"{exc.field}: expected {exc.expected}, found {exc.found}"
                            ) from None
    finally:
        await form.close()
        shutil.rmtree(work, ignore_errors=True)
    return {"studies": studies, "status": "queued"}


def create_app(service: Service) -> FastAPI:
    """The FastAPI app over a running (or test) service."""
    app = FastAPI(title="cinelab serve", docs_url=None, redoc_url=None, openapi_url=None)
    authorized = [Depends(_authorizer(service.config.token))]

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return review_page()

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)  # no icon; spares the browser a logged 404

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> JSONResponse:
        ok = service.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/metrics", dependencies=authorized)
    def metrics() -> Response:
        text = prometheus_text(service.queue.counts(), service.queue.latencies(),
                               service.uptime())
        return Response(text, media_type=CONTENT_TYPE)

    @app.get("/api/studies", dependencies=authorized)
    def studies() -> list[dict[str, Any]]:
        return [s.as_json() for s in service.queue.studies()]

    @app.get("/api/studies/{uid}", dependencies=authorized)
    def study(uid: str) -> dict[str, Any]:
        found = _study_or_404(service, uid)
        return {**found.as_json(), "results": _results(service, uid),
                "versions": result_versions(service.paths, found)}

    @app.get("/api/studies/{uid}/results", dependencies=authorized)
    def results(uid: str) -> dict[str, Any]:
        _study_or_404(service, uid)
        found = _results(service, uid)
        if found is None:
            raise HTTPException(404, "no results yet")
        return found

    @app.get("/api/studies/{uid}/files/{name:path}", dependencies=authorized)
    def download(uid: str, name: str) -> FileResponse:
        _study_or_404(service, uid)
        return _file_response(service.paths.results(uid), name)

    @app.get("/api/studies/{uid}/versions/{version}/files/{name:path}",
             dependencies=authorized)
    def download_version(uid: str, version: int, name: str) -> FileResponse:
        _study_or_404(service, uid)
        folder = service.paths.version(uid, version)
        if version < 0 or folder.is_symlink() or not folder.is_dir():
            raise HTTPException(404, "no such version")
        return _file_response(folder, name)

    @app.post("/api/studies", dependencies=authorized, status_code=202)
    async def upload(request: Request) -> dict[str, Any]:
        return await _upload(service, request)

    return app
