"""Data-requirement curves: one training run per subset size, validation metrics tabulated."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cinelab.data.store import PreparedStore
from cinelab.errors import InputError
from cinelab.train.checkpoint import read_checkpoint
from cinelab.train.fit import MODEL_FILE, fit
from cinelab.train.recipe import Recipe, apply_overrides
from cinelab.utils import atomic_path, write_csv

CURVE_FILE = "data_requirement.csv"
CURVE_PLOT = "data_requirement.png"
CURVE_FIGSIZE, CURVE_DPI = (5.0, 3.5), 100
CURVE_BY = ("patients", "fraction", "images")


def data_requirement_curve(recipe: Recipe, store: PreparedStore | str | Path,
                           sizes: Sequence[int | float], out: str | Path,
                           by: str = "patients", **fit_kwargs: Any) -> pd.DataFrame:
    """Train `recipe` once per subset size (``data.subset.<by>``; by = patients, fraction or
    images) into out/<by>_<size>/; tabulate validation metrics in out/data_requirement.csv and
    plot them in out/data_requirement.png.
    Runs already finished are reused (their model.pt), so an interrupted curve resumes."""
    if by not in CURVE_BY:
        raise InputError(None, "by", f"one of {list(CURVE_BY)}", repr(by))
    out = Path(out)
    rows = []
    for size in sizes:
        run = out / f"{by}_{size}"
        if not (run / MODEL_FILE).exists():
            fit(apply_overrides(recipe, [f"data.subset.{by}={size}"]), store, run,
                resume=True, **{"progress": False, **fit_kwargs})
        extra = read_checkpoint(run / MODEL_FILE)["extra"]
        rows.append({by: size, "train_images": extra.get("train_images"),
                     "train_patients": extra.get("train_patients"), "run": str(run),
                     **{k: v for k, v in extra.get("metrics", {}).items()
                        if k.startswith("val/") or k in ("best_score", "best_epoch")}})
    table = pd.DataFrame(rows)
    write_csv(table, out / CURVE_FILE)
    curve_plot(table, by, out / CURVE_PLOT)
    return table


def curve_plot(table: pd.DataFrame, by: str, path: str | Path) -> Path:
    """Validation Dice per class (``val/dice_*`` columns) against the subset size, as PNG."""
    fig = Figure(figsize=CURVE_FIGSIZE, dpi=CURVE_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for column in sorted(c for c in table.columns if str(c).startswith("val/dice")):
        ax.plot(table[by], table[column], marker="o", label=column.removeprefix("val/"))
    ax.set_xlabel(f"training {by}")
    ax.set_ylabel("validation Dice")
    if ax.get_lines():
        ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
