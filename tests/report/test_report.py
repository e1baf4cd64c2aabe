"""HTML report: self-contained, every metric number shown, the right worst cases, renders."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cinelab.errors import InputError
from cinelab.evaluate.metrics import metric_rows
from cinelab.io.video import read_video
from cinelab.measure.ef import tracing_mask, tracings_from_echonet_csv
from cinelab.pipelines.echonet.evaluate import evaluate_echonet
from cinelab.pipelines.echonet.report import ED_RGB, build_echonet_report, overlay_strip
from cinelab.report.html import HtmlReport, embed_png, format_value
from cinelab.utils import read_json
from conftest import real_path

SIZE, FRAMES, N, PERIOD = 32, 16, 14, 12
TRUE_EF = np.linspace(20.0, 72.0, N)
# |error| of the beat-by-beat EF grows with the index: the worst ten are S13 ... S04
BEAT_ERRORS = np.array([(i + 1) * 0.5 * (-1) ** i for i in range(N)])
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_TIMEOUT_S = 120


def _lines(half_width: int) -> np.ndarray:
    c, y0, y1 = SIZE // 2, 6, 26
    rows = [(c, y0, c, y1)] + [(c - half_width, y, c + half_width, y)
                               for y in np.linspace(y0, y1, 6)]
    return np.array(rows, dtype=float)


def _cohort(root: Path, ids_without_mask: tuple[str, ...] = ()) -> tuple[Path, pd.DataFrame,
                                                                            pd.DataFrame]:
    pred = root / "pred"
    (pred / "masks").mkdir(parents=True)
    preds, frames, tracings = [], [], []
    for i in range(N):
        sid, ed = f"S{i:02d}", 1 + i % 3
        es = ed + PERIOD // 2
        widths = np.rint(6 + 3 * np.cos(2 * np.pi * (np.arange(FRAMES) - ed) / PERIOD))
        mask = np.stack([tracing_mask(_lines(int(w)), (SIZE, SIZE)) for w in widths])
        if sid not in ids_without_mask:
            np.savez_compressed(pred / "masks" / f"{sid}.npz", mask=mask.astype(np.uint8))
        tracings += [dict(sample_id=sid, frame=f, X1=a, Y1=b, X2=c, Y2=d)
                     for f in (ed, es) for a, b, c, d in _lines(int(widths[f]))]
        frames += [dict(sample_id=sid, frame=t, lv_area=int(mask[t].sum()), is_ed=int(t == ed),
                        is_es=int(t == es)) for t in range(FRAMES)]
        preds.append(dict(sample_id=sid, ef_one_clip=TRUE_EF[i] + 3, ef_all_clips=TRUE_EF[i] - 1,
                          ef=TRUE_EF[i] + BEAT_ERRORS[i], n_beats=1, fallback="",
                          n_frames=FRAMES, fps=50.0))
    pd.DataFrame(preds).to_csv(pred / "predictions.csv", index=False)
    pd.DataFrame(frames).to_csv(pred / "frames.csv", index=False)
    labels = pd.DataFrame({"sample_id": [p["sample_id"] for p in preds], "EF": TRUE_EF})
    return pred, labels, pd.DataFrame(tracings)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    pred, labels, tracings = _cohort(root, ids_without_mask=("S12",))
    evaluate_echonet(pred, labels, tracings, out_dir=root / "eval", n_boot=40, seed=0)

    def frames_source(sid: str) -> np.ndarray:
        if sid == "S11":
            raise OSError("video missing")
        return np.full((FRAMES, SIZE * 2, SIZE * 2, 3), 60, np.uint8)

    path = build_echonet_report(root / "run", pred, root / "eval", frames_source=frames_source)
    return path, read_json(root / "eval" / "metrics.json")


@pytest.mark.slow
def test_report_is_self_contained(built):
    path, _ = built
    text = path.read_text(encoding="utf-8")
    imgs = re.findall(r"<img[^>]*\bsrc=\"([^\"]*)\"", text)
    assert len(imgs) >= 6 + 9 + 10  # plots, then a strip and an area curve per worst case
    assert all(src.startswith("data:image/png;base64,") for src in imgs)
    links = re.findall(r"\b(?:src|href)\s*=\s*[\"']?([^\"'\s>]*)", text, flags=re.I)
    assert all(link.startswith("data:") for link in links)
    assert not re.search(r"https?://|<script|<link|@import|url\(", text, flags=re.I)


def test_every_metric_number_appears_formatted(built):
    path, metrics = built
    text = path.read_text(encoding="utf-8")
    sections = ("summary", "settings", "ef", "classification", "segmentation", "phase")
    n_rows = 0
    for section in sections:
        assert metrics[section], section
        for row in metric_rows(metrics[section]):
            cells = "".join(f"<td>{format_value(row[k])}</td>"
                            for k in ("value", "ci_low", "ci_high"))
            assert f"<tr><td>{row['metric']}</td>{cells}</tr>" in text, row
            n_rows += 1
    assert n_rows == len(metric_rows(metrics))


def test_worst_cases_are_the_largest_errors(built):
    path, _ = built
    text = path.read_text(encoding="utf-8")
    shown = re.findall(r"<h3>(S\d\d)</h3>", text)
    assert shown == [f"S{i:02d}" for i in range(N - 1, N - 11, -1)]
    assert "The 10 largest EF errors (beat-by-beat)" in text
    assert "no predicted mask for this sample" in text  # S12
    assert "video missing" in text and "mask only" in text  # S11 falls back to the mask


def test_overlay_strip_draws_outline():
    mask = np.zeros((3, 16, 16), np.uint8)
    mask[:, 4:12, 4:12] = 1
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    png = overlay_strip(mask, [("ED", 0), ("ES", 2), ("ED", 9)], frames)
    img = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR),
                       cv2.COLOR_BGR2RGB)
    assert img.shape[1] == 2 * 16 * 2 + 2  # two tiles in range, upscaled, one gap
    assert (img == ED_RGB).all(axis=2).any()


def test_html_report_builder(tmp_path):
    png = tmp_path / "x.png"
    cv2.imwrite(str(png), np.zeros((4, 4, 3), np.uint8))
    rep = HtmlReport("A <b> & c", subtitle="sub")
    rep.section("Numbers").metrics_table({"m": {"value": 0.12345, "ci_low": None,
                                                "ci_high": 1.0}, "n": 3})
    rep.table(pd.DataFrame({"id": ["<x>"], "v": [np.float32(2.5)]}))
    rep.image(png, caption="cap").gallery([(png.read_bytes(), "one")])
    path = rep.write(tmp_path / "out" / "r.html")
    text = path.read_text()
    assert "A &lt;b&gt; &amp; c" in text and "&lt;x&gt;" in text
    assert "<tr><td>m</td><td>0.123</td><td>n/a</td><td>1.000</td></tr>" in text
    assert "<tr><td>n</td><td>3</td><td></td><td></td></tr>" in text
    assert text.count("data:image/png;base64,") == 2
    assert [format_value(v) for v in (3, 2.0, float("nan"), None, True)] == [
        "3", "2.000", "n/a", "n/a", "yes"]
    with pytest.raises(InputError):
        embed_png(b"GIF89a....")


@pytest.mark.slow
def test_report_renders_in_headless_chromium(built, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    path, _ = built
    shot = tmp_path / "shot.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1200,2000", path.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=BROWSER_TIMEOUT_S, check=False)
    assert shot.exists(), "chromium wrote no screenshot"
    img = cv2.imread(str(shot), cv2.IMREAD_GRAYSCALE)
    assert img is not None and img.shape == (2000, 1200)
    assert img.std() > 5 and (img < 128).mean() > 0.001  # text and figures, not a blank page
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


@pytest.mark.slow
def test_real_echonet_mini_end_to_end(tmp_path):
    """Real tracings and videos: masks drawn from the tracings score Dice 1, the report
    shows outlines on the real frames."""
    root = real_path("echonet-mini")
    files = pd.read_csv(root / "FileList.csv").rename(columns={"FileName": "sample_id"})
    tracings = tracings_from_echonet_csv(pd.read_csv(root / "VolumeTracings.csv"))
    pred = tmp_path / "pred"
    (pred / "masks").mkdir(parents=True)
    preds, frames = [], []
    for i, f in enumerate(files.itertuples()):
        own = tracings[tracings.sample_id == f.sample_id]
        mask = np.zeros((f.NumberOfFrames, f.FrameHeight, f.FrameWidth), np.uint8)
        for frame, lines in own.groupby("frame"):
            mask[frame] = tracing_mask(lines[["X1", "Y1", "X2", "Y2"]].to_numpy(float),
                                       mask.shape[1:])
        np.savez_compressed(pred / "masks" / f"{f.sample_id}.npz", mask=mask)
        area = mask.reshape(len(mask), -1).sum(1)
        traced = own["frame"].unique()
        ed, es = max(traced, key=lambda t: area[t]), min(traced, key=lambda t: area[t])
        frames += [dict(sample_id=f.sample_id, frame=t, lv_area=int(area[t]),
                        is_ed=int(t == ed), is_es=int(t == es)) for t in range(len(mask))]
        preds.append(dict(sample_id=f.sample_id, ef=f.EF + i, n_beats=1, fallback=""))
    pd.DataFrame(preds).to_csv(pred / "predictions.csv", index=False)
    pd.DataFrame(frames).to_csv(pred / "frames.csv", index=False)
    labels = files[["sample_id", "EF", "Split"]].rename(columns={"Split": "split"})
    m = evaluate_echonet(pred, labels, tracings, out_dir=tmp_path / "eval", n_boot=50)
    assert m["ef"]["ef"]["mae"]["value"] == pytest.approx(np.arange(len(files)).mean())
    assert m["segmentation"]["dice_overall"]["value"] == 1.0
    assert m["phase"]["ed_frame_error_mean"]["value"] == 0.0
    report = build_echonet_report(tmp_path / "run", pred, tmp_path / "eval",
                                  lambda sid: read_video(root / "Videos" / f"{sid}.avi").frames)
    text = report.read_text()
    expected = files.sample_id.iloc[::-1].tolist()  # error grows with the row index
    assert re.findall(r"<h3>(0X[0-9A-F]+)</h3>", text) == expected
    assert "mask only" not in text and "no predicted mask" not in text
