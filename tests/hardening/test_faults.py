"""Faults never cost work: a full disk, a read-only or file-as-folder --out, SIGKILL during
prepare and damaged store entries each end in a one-line error or a rerun that gives the same
store as an uninterrupted run; nothing is written outside --out (nor under $HOME)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import cinelab.data.store as store_module
from cinelab.cli import app
from cinelab.cliutil import friendly
from cinelab.data.manifest import new_manifest, write_manifest
from cinelab.data.store import PreparedStore, is_complete, sample_files
from cinelab.errors import InputError, OutputWriteError, output_fault
from cinelab.io.video import write_video
from cinelab.prep.prepare import PrepSpec, prepare
from cinelab.utils import read_json

runner = CliRunner()
SPEC = PrepSpec(size=32)
N = 5
TIMEOUT = 120


def video(seed: int, frames: int = 12, size: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(20, 200, (size, size), dtype=np.uint8)
    return np.repeat(np.stack([np.roll(base, t, axis=1) for t in range(frames)])[..., None],
                     3, axis=-1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """N small AVIs and their manifest.csv; returns the manifest path."""
    root = tmp_path_factory.mktemp("cohort")
    rows = []
    for i in range(N):
        path = write_video(root / "Videos" / f"v{i}.avi", video(i), fps=50)
        rows.append({"sample_id": f"v{i}", "path": str(path), "modality": "echo",
                     "split": "train" if i else "val", "EF": 40.0 + i})
    return write_manifest(new_manifest(rows), root / "manifest.csv")


@pytest.fixture(scope="module")
def reference(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store of an uninterrupted prepare."""
    out = tmp_path_factory.mktemp("ref") / "store"
    summary = prepare(pd.read_csv(cohort), out, SPEC, workers=1)
    assert summary.prepared == N
    return out


def manifest(cohort: Path) -> pd.DataFrame:
    return pd.read_csv(cohort)


def store_files(root: Path) -> dict[str, bytes]:
    """Every file of a store but store.json (which records versions), by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "store.json"}


def assert_same_store(a: Path, b: Path) -> None:
    fa, fb = store_files(a), store_files(b)
    assert fa.keys() == fb.keys()
    assert [k for k in fa if fa[k] != fb[k]] == []
    ia, ib = read_json(a / "store.json"), read_json(b / "store.json")
    assert (ia["status"], ia["mean"], ia["counts"]) == (ib["status"], ib["mean"], ib["counts"])


# -- friendly: one line, exit 2 ----------------------------------------------------------------


@pytest.mark.parametrize(("code", "reason", "fix"), [
    (errno.ENOSPC, "no space left on the device", "free some space"),
    (errno.EROFS, "read-only file system", "choose a writable output folder"),
    (errno.ENOTDIR, "a part of the path is a file, not a folder", "remove or rename that file"),
    (errno.EACCES, "permission denied", "check the folder's permissions"),
    (errno.EEXIST, "a file is in the way of a folder", "remove or rename that file"),
])
def test_friendly_turns_output_os_errors_into_one_line(
        code: int, reason: str, fix: str, capsys: pytest.CaptureFixture) -> None:
    def command() -> None:
        raise OSError(code, os.strerror(code), "/data/out/samples/v1.npy")

    with pytest.raises(SystemExit) as info:
        friendly(command)()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: /data/out/samples/v1.npy: cannot write ({reason}); {fix}")


def test_other_os_errors_are_one_line_too(capsys: pytest.CaptureFixture) -> None:
    def command() -> None:
        raise OSError(errno.EIO, "Input/output error", "/dev/sdz")

    with pytest.raises(SystemExit):
        friendly(command)()
    assert capsys.readouterr().err == "error: /dev/sdz: Input/output error\n"
    assert output_fault(OSError(errno.EIO, "x")) is None


# -- disk full during prepare ------------------------------------------------------------------


def full_after(monkeypatch: pytest.MonkeyPatch, n_writes: int) -> None:
    """The store's array writes fail with ENOSPC after `n_writes` succeed."""
    real = store_module._save_npy
    count = [0]

    def save(path: Path, array: np.ndarray) -> None:
        count[0] += 1
        if count[0] > n_writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, array)

    monkeypatch.setattr(store_module, "_save_npy", save)


def test_disk_full_during_prepare_stops_incomplete_then_rerun_matches(
        cohort: Path, reference: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "store"
    with monkeypatch.context() as m:
        full_after(m, 2)
        with pytest.raises(OutputWriteError) as info:
            prepare(manifest(cohort), out, SPEC, workers=1)
    assert info.value.reason == "no space left on the device"
    assert info.value.path == str(out / "samples" / "v2.npy")
    assert read_json(out / "store.json")["status"] == "incomplete"
    with pytest.raises(InputError, match="status"):
        PreparedStore(out)
    assert [is_complete(out, f"v{i}", verify=True) for i in range(N)] == \
        [True, True, False, False, False]
    assert not list((out / "samples").glob(".*tmp*"))  # no partial file left
    again = prepare(manifest(cohort), out, SPEC, workers=1)
    assert (again.prepared, again.skipped, again.failed) == (N - 2, 2, 0)
    assert_same_store(out, reference)


def test_disk_full_in_the_cli_exits_2_and_names_the_file(
        cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full_after(monkeypatch, 0)
    out = tmp_path / "store"
    result = runner.invoke(app, ["prepare", str(cohort), "--out", str(out), "--workers", "1"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"{out / 'samples' / 'v0.npy'}: cannot write (no space left on the device)" in \
        " ".join(result.output.split())
    assert read_json(out / "store.json")["status"] == "incomplete"


# -- read-only and file-as-folder --out --------------------------------------------------------


def test_file_as_folder_out_is_one_line(cohort: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("a file, not a folder")
    for out in (blocker, blocker / "store"):
        reason = "a part of the path is a file, not a folder"  # mkdir out/samples: ENOTDIR
        result = runner.invoke(app, ["prepare", str(cohort), "--out", str(out)])
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert "Traceback" not in text and f"cannot write ({reason})" in text
    assert blocker.read_text() == "a file, not a folder"


def test_read_only_out_is_one_line(cohort: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    if os.geteuid() != 0:  # a real read-only folder (root writes anyway: inject it)
        out.chmod(0o555)
    else:
        import cinelab.utils as utils

        def mkstemp(*args: object, dir: str | Path = "", **kwargs: object) -> tuple:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))

        monkeypatch.setattr(utils.tempfile, "mkstemp", mkstemp)
    try:
        result = runner.invoke(app, ["prepare", str(cohort), "--out", str(out / "store")])
    finally:
        out.chmod(0o755)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "Traceback" not in text and str(out / "store") in text
    assert "cannot write (read-only file system)" in text or \
        "cannot write (permission denied)" in text


# -- SIGKILL and damage ------------------------------------------------------------------------


SLOW_PREPARE = """
import time
import pandas as pd
import cinelab.data.store as store
from cinelab.prep.prepare import PrepSpec, prepare

real = store.write_sample
def slow(*args, **kwargs):
    out = real(*args, **kwargs)
    print("WROTE", args[1], flush=True)
    time.sleep(30)
    return out
store.write_sample = slow
import cinelab.prep.prepare as p
p.write_sample = slow
prepare(pd.read_csv({manifest!r}), {out!r}, PrepSpec(size=32), workers=1)
"""


@pytest.mark.slow
def test_sigkill_during_prepare_then_rerun_gives_the_same_store(
        cohort: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    script = tmp_path / "slow_prepare.py"
    script.write_text(SLOW_PREPARE.format(manifest=str(cohort), out=str(out)))
    log = tmp_path / "log.txt"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, str(script)], stdout=f,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + TIMEOUT
    try:
        while "WROTE" not in log.read_text() and proc.poll() is None and \
                time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert "WROTE v0" in log.read_text(), log.read_text()[-2000:]
    assert read_json(out / "store.json")["status"] == "incomplete"
    again = prepare(manifest(cohort), out, SPEC, workers=1)
    assert (again.prepared, again.skipped) == (N - 1, 1)
    assert_same_store(out, reference)


def test_a_damaged_store_entry_is_found_by_its_checksum_and_rewritten(
        cohort: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    prepare(manifest(cohort), out, SPEC, workers=1)
    frames = sample_files(out, "v3")["frames"]
    data = bytearray(frames.read_bytes())
    data[len(data) // 2] ^= 0x55  # same size and shape: only the checksum sees it
    frames.write_bytes(bytes(data))
    again = prepare(manifest(cohort), out, SPEC, workers=1)
    assert (again.prepared, again.skipped) == (1, N - 1)
    assert_same_store(out, reference)


# -- nothing outside --out ---------------------------------------------------------------------


def test_hostile_sample_ids_never_write_outside_out(cohort: Path, tmp_path: Path) -> None:
    rows = manifest(cohort).to_dict("records")
    escape = tmp_path / "escaped"
    rows[1]["sample_id"] = "../../escaped"
    rows[2]["sample_id"] = str(escape)
    rows[3]["sample_id"] = rows[0]["sample_id"]  # a duplicate: prepared once
    out = tmp_path / "deep" / "out" / "store"
    summary = prepare(new_manifest(rows), out, SPEC, workers=1)
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents]
    assert outside == []
    assert (summary.prepared, summary.failed) == (2, 3)
    assert [(p.row, p.column, p.found) for p in summary.problems] == [
        (1, "sample_id", "'../../escaped'"),
        (2, "sample_id", repr(str(escape))),
        (3, "sample_id", "'v0' again (first in row 0)"),
    ]
    store = PreparedStore(out)
    assert store.ids == ["v0", "v4"]
    assert read_json(sample_files(out, "v0")["meta"])["source"] == rows[0]["path"]


@pytest.mark.slow
def test_importing_cinelab_and_plotting_writes_nothing_under_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CACHE_HOME",
                                                             "XDG_CONFIG_HOME")}
    env["HOME"] = str(home)
    code = ("import cinelab, os\n"
            "from cinelab.evaluate import plots\n"
            "import matplotlib\n"
            "print(matplotlib.get_configdir(), matplotlib.get_cachedir())\n"
            "from matplotlib.figure import Figure\n"
            "fig = Figure(); fig.add_subplot().plot([0, 1]); fig.savefig(os.devnull, "
            "format='png')\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert str(home) not in done.stdout
    assert list(home.rglob("*")) == []


# -- damaged weight and checkpoint files -------------------------------------------------------


def test_damaged_weight_files_are_unreadable_file_errors(tmp_path: Path) -> None:
    import io
    import random

    import torch

    from cinelab.errors import UnreadableFileError
    from cinelab.models.weights import load_weights_file
    from cinelab.train.fit import load_lightning_checkpoint

    buf = io.BytesIO()
    torch.save({"state_dict": {"a": torch.randn(10, 10), "b": torch.arange(5)}, "epoch": 3},
               buf)
    data = buf.getvalue()
    rng = random.Random(0)
    path = tmp_path / "w.pt"
    outcomes = set()
    for i in range(120):
        damaged = bytearray(data)
        if i % 2:
            damaged = damaged[: rng.randrange(len(damaged))]  # truncated
        else:
            for _ in range(rng.randint(1, 5)):  # bytes flipped
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        path.write_bytes(bytes(damaged))
        for load in (load_weights_file, load_lightning_checkpoint):
            try:
                load(path)
                outcomes.add("loaded")
            except UnreadableFileError as exc:
                assert exc.path == str(path) and "\n" not in str(exc)
                outcomes.add("refused")
    assert "refused" in outcomes  # anything else (another exception) fails the test


def test_a_device_or_fifo_in_the_manifest_is_a_problem_not_a_hang(
        cohort: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.avi"
    os.mkfifo(fifo)
    rows = manifest(cohort).to_dict("records")[:2]
    rows += [dict(rows[0], sample_id="zero", path="/dev/zero"),
             dict(rows[0], sample_id="fifo", path=str(fifo)),
             dict(rows[0], sample_id="dir", path=str(tmp_path))]
    summary = prepare(new_manifest(rows), tmp_path / "store", SPEC, workers=1)
    assert (summary.prepared, summary.failed) == (2, 3)
    assert [(p.file, p.found) for p in summary.problems] == [
        ("/dev/zero", "a device"), (str(fifo), "a FIFO"), (str(tmp_path), "a folder")]
