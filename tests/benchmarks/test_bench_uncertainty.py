"""benchmarks/uncertainty.py, age section: the printed OOD table of a smaller ensemble."""

from __future__ import annotations

import pytest
from bench_import import load_benchmark


@pytest.mark.slow
def test_age_section_prints_flag_rates(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark("uncertainty")
    monkeypatch.setitem(bench.AGE, "n", {"train": 40, "val": 24, "test": 30})
    monkeypatch.setitem(bench.AGE, "n_wrong", 10)
    monkeypatch.setitem(bench.AGE, "models", 2)
    bench.age(0)
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("detector"))
    assert header.split()[-5:] == ["flagged", *bench.AGE["kinds"]]
    ensemble = next(line for line in lines if line.startswith("ensemble"))
    held_out, *caught = (float(v) for v in ensemble.split()[-5:])
    assert held_out <= 0.10 and min(caught) >= 0.95
    assert sum(line.startswith("model ") for line in lines) == 2
