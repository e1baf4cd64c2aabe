"""/metrics in the Prometheus text exposition format (version 0.0.4)."""

from __future__ import annotations

import numpy as np

from cinelab.serve.queue import FAILED, QUEUED, RECEIVING, RUNNING

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUANTILES = (0.5, 0.95, 0.99)


def _metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> str:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {value:.6g}" for labels, value in samples]
    return "\n".join(lines)


def prometheus_text(counts: dict[str, int], latencies: list[float], uptime_s: float) -> str:
    """Queue length, studies per status, failures, arrival-to-done latency quantiles."""
    waiting = counts.get(QUEUED, 0) + counts.get(RECEIVING, 0)
    parts = [
        _metric("cinelab_queue_length", "gauge", "Studies waiting (receiving or queued).",
                [("", float(waiting))]),
        _metric("cinelab_running", "gauge", "Studies being processed.",
                [("", float(counts.get(RUNNING, 0)))]),
        _metric("cinelab_studies", "gauge", "Studies by status.",
                [(f'{{status="{s}"}}', float(n)) for s, n in sorted(counts.items())]),
        _metric("cinelab_failures_total", "counter", "Studies that failed.",
                [("", float(counts.get(FAILED, 0)))]),
        _metric("cinelab_uptime_seconds", "gauge", "Seconds since the service started.",
                [("", uptime_s)]),
    ]
    values = np.asarray(latencies, dtype=float)
    samples = [(f'{{quantile="{q}"}}', float(np.quantile(values, q)) if len(values)
                else float("nan")) for q in QUANTILES]
    samples += [("_sum", float(values.sum())), ("_count", float(len(values)))]
    parts.append("# HELP cinelab_study_latency_seconds Arrival-to-done seconds of recent "
                 "studies.\n# TYPE cinelab_study_latency_seconds summary\n" + "\n".join(
                     f"cinelab_study_latency_seconds{s} {v:.6g}" for s, v in samples))
    return "\n".join(parts) + "\n"
