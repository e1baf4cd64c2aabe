"""The DICOM node: a Verification + Storage SCP (pynetdicom) feeding `Arrival`, and the
C-STORE SCU that forwards results (SR, SEG) to a configured destination."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
    SegmentationStorage,
    Verification,
)

from cinelab.serve.arrival import Arrival, BurnedInError, LimitError
from cinelab.serve.config import DicomConfig, Forward
from cinelab.serve.queue import DICOM_SOURCE

log = logging.getLogger("cinelab.serve")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
MAX_PDU = 0  # unlimited


def _on_store(event: Any, arrival: Arrival) -> int:
    """C-STORE: store the instance; 0xA700 when its study is full, 0xC000 when unusable
    or refused for burned-in annotation."""
    try:
        ds = event.dataset
        ds.file_meta = event.file_meta
        arrival.accept_dataset(ds, DICOM_SOURCE)
    except LimitError:
        log.warning("C-STORE refused: study instance limit reached")
        return OUT_OF_RESOURCES
    except BurnedInError:
        log.warning("C-STORE refused: burned-in annotation (burned_in_annotation: refuse)")
        return CANNOT_UNDERSTAND
    except Exception as exc:  # a bad instance is refused, never a crash of the node
        log.warning("C-STORE refused (%s)", type(exc).__name__)
        return CANNOT_UNDERSTAND
    return SUCCESS


def start_node(config: DicomConfig, arrival: Arrival) -> Any:
    """Start the Storage + Verification SCP in a background thread; the pynetdicom server
    (its ``server_address`` holds the bound port; ``shutdown()`` stops it)."""
    ae = AE(ae_title=config.ae_title)
    ae.maximum_pdu_size = MAX_PDU
    for context in AllStoragePresentationContexts:  # any transfer syntax, compressed too
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    handlers = [(evt.EVT_C_STORE, _on_store, [arrival])]
    server = ae.start_server((config.host, config.port), block=False, evt_handlers=handlers)
    log.info("DICOM node %s listening on %s:%d", config.ae_title, *server.server_address[:2])
    return server


def forward(files: Sequence[Path | Dataset], destination: Forward, calling: str) -> int:
    """C-STORE `files` (paths or datasets) to `destination`; how many it accepted."""
    ae = AE(ae_title=calling)
    for context in (Comprehensive3DSRStorage, SegmentationStorage):
        ae.add_requested_context(context)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        log.warning("forward: association with %s refused", destination.ae_title)
        return 0
    sent = 0
    try:
        for path in files:
            ds = path if isinstance(path, Dataset) else pydicom.dcmread(path)
            status = assoc.send_c_store(ds)
            sent += int(getattr(status, "Status", -1) == SUCCESS)
    finally:
        assoc.release()
    return sent
