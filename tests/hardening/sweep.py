"""The DICOM sweep: every file pydicom ships locally through cinelab's DICOM readers.

`sweep_one` runs in an isolated runner worker (per-file timeout and memory ceiling), so a
hang or a crash is measured, not suffered. Outcome per file: "read" (the ultrasound reader,
any modality, or else the radiograph reader decoded it), "reported" (an InputError with its
field), or "traceback" (anything else).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom.data.data_manager as dm
from pydicom.data import get_testdata_file

from cinelab.errors import InputError
from cinelab.io.cxr_dicom import read_cxr_dicom
from cinelab.io.dicom import read_ultrasound

NOT_DICOM_SUFFIXES = (".json", ".txt", ".dump", ".icc", ".py")


def local_names() -> list[str]:
    """Names of the test files in pydicom's own (installed, never downloaded) data folder."""
    root = Path(dm.DATA_ROOT) / "test_files"
    return sorted({p.name for p in root.rglob("*") if p.is_file()
                   and p.suffix.lower() not in NOT_DICOM_SUFFIXES})


def local_paths() -> list[str]:
    """Paths of those files via get_testdata_file(name, download=False)."""
    paths = []
    for name in local_names():
        path = get_testdata_file(name, download=False)
        if path is not None:
            paths.append(str(path))
    return sorted(set(paths))


def sweep_one(path: str) -> dict[str, str]:
    """{"path", "outcome", "detail"} for one file; never raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            read_ultrasound(path, require_ultrasound=False)
            return {"path": path, "outcome": "read", "detail": "ultrasound reader"}
        except InputError as exc:
            first = exc
        except Exception as exc:  # noqa: BLE001 - that is what the sweep measures
            return {"path": path, "outcome": "traceback",
                    "detail": f"read_ultrasound {type(exc).__name__}: {exc}"}
        try:
            read_cxr_dicom(path)
            return {"path": path, "outcome": "read", "detail": "radiograph reader"}
        except InputError:
            return {"path": path, "outcome": "reported",
                    "detail": f"[{first.field}] {first}"}
        except Exception as exc:  # noqa: BLE001
            return {"path": path, "outcome": "traceback",
                    "detail": f"read_cxr_dicom {type(exc).__name__}: {exc}"}


def sweep_failure(path: str, failure: Exception) -> dict[str, str]:
    """A runner failure (timeout, memory, crash) as a sweep row."""
    kind = getattr(failure, "kind", "error")
    outcome = "hang" if kind == "timeout" else "traceback"
    return {"path": path, "outcome": outcome, "detail": str(failure)}
