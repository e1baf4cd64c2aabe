"""The running service: queue, arrival, worker threads, DICOM node and HTTP server wired from
one `ServeConfig`; `serve(config)` runs it until interrupted."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pydicom
import uvicorn
from pydicom.dataset import Dataset

from cinelab.serve.api import create_app
from cinelab.serve.arrival import LINK_PREFIX, PARTIAL_PREFIX, RESULTS, Arrival, StatePaths
from cinelab.serve.config import ServeConfig
from cinelab.serve.link import read_links, relink
from cinelab.serve.node import forward, start_node
from cinelab.serve.queue import JobQueue, Study
from cinelab.serve.worker import Worker

log = logging.getLogger("cinelab.serve")
JOIN_S = 30.0


class Service:
    """Everything `cinelab serve` runs, started and stopped together."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.paths = StatePaths(config.state)
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.queue = JobQueue(self.paths.db)
        requeued = self.queue.recover(config.limits.attempts)
        _remove_partials(self.paths.root / RESULTS)
        if requeued:
            log.info("requeued %d interrupted study(ies)", requeued)
        link = config.forward is not None and config.forward.link_to_original
        self.arrival = Arrival(self.queue, self.paths, config.limits, config.pseudonymise,
                               config.route_index, link, config.burned_in_annotation,
                               config.series_description_words)
        self.worker = Worker(config, self.queue, self.paths,
                             on_done=self._forward if config.forward else None)
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.node: Any = None
        self.started = time.time()

    def start(self, node: bool = True) -> Service:
        """Start the worker threads and (when enabled and `node`) the DICOM node."""
        for i in range(self.config.workers):
            thread = threading.Thread(target=self.worker.run, args=(self.stop_event,),
                                      name=f"cinelab-worker-{i}", daemon=True)
            thread.start()
            self.threads.append(thread)
        if node and self.config.dicom.enabled:
            self.node = start_node(self.config.dicom, self.arrival)
        return self

    def stop(self) -> None:
        """Stop the node, then let the workers finish their current study."""
        if self.node is not None:
            self.node.shutdown()
            self.node = None
        self.stop_event.set()
        for thread in self.threads:
            thread.join(JOIN_S)

    def ready(self) -> bool:
        """Queue readable, every worker alive, node up when enabled."""
        try:
            self.queue.counts()
        except Exception:  # noqa: BLE001 - any database failure means not ready
            return False
        workers = bool(self.threads) and all(t.is_alive() for t in self.threads)
        return workers and (self.node is not None or not self.config.dicom.enabled)

    def uptime(self) -> float:
        """Seconds since the service was built."""
        return time.time() - self.started

    @property
    def dicom_port(self) -> int | None:
        """The port the DICOM node is bound to (useful with port 0)."""
        return None if self.node is None else int(self.node.server_address[1])

    def _forward(self, study: Study, results: Path) -> None:
        destination = self.config.forward
        if destination is None:
            return
        files = sorted(results.glob("*.dcm"))
        try:
            sent = forward(self._outgoing(study, files), destination,
                           self.config.dicom.ae_title)
        except Exception as exc:  # forwarding never fails the study
            log.warning("forward of study %s failed (%s)", study.uid, type(exc).__name__)
            return
        log.info("forwarded %d/%d result(s) of study %s", sent, len(files), study.uid)

    def _outgoing(self, study: Study, files: list[Path]) -> list[Path | Dataset]:
        """The results to forward: the files, or copies referencing the original UIDs when
        the destination asks for them and the study's links were kept."""
        destination = self.config.forward
        links = read_links(self.paths.links(study.uid)) \
            if destination is not None and destination.link_to_original else {}
        if not links:
            return list(files)
        return [relink(pydicom.dcmread(path), links) for path in files]


def _remove_partials(results: Path) -> None:
    """Half-written outputs of studies interrupted by a kill (they are requeued) and links
    left before their swap."""
    for path in results.glob(f"{PARTIAL_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in results.glob(f"{LINK_PREFIX}*"):
        path.unlink(missing_ok=True)


def serve(config: ServeConfig) -> None:
    """Run the service until interrupted (Ctrl-C / SIGTERM)."""
    for name in ("pynetdicom", "highdicom"):  # they log UIDs at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    service = Service(config).start()
    log.info("HTTP on http://%s:%d", config.http_host, config.http_port)
    try:
        uvicorn.run(create_app(service), host=config.http_host, port=config.http_port,
                    log_level="warning", access_log=False)
    finally:
        service.stop()
