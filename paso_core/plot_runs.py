"""Overlay one metric of several run directories in one figure (``python -m paso_core plot``).

Why: comparing methods means looking at the same column of several runs on one axis, as the
PASO seed's ``plot.py`` did; this reads only the run directories (:func:`paso_core.runs.load_run`),
so it works for finished, partial and old runs alike.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .metrics import COMMON_COLUMNS, EVAL_COLUMNS, TRAIN_COLUMNS
from .runs import RunResult, load_run

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

#: ``--x`` choices and the metrics column each one reads.
X_COLUMNS: dict[str, str] = {
    "step": "steps_done",
    "iteration": "iteration",
    "train_time_s": "train_time_s",
    "wall_time_s": "wall_time_s",
    "grad_evals": "grad_evals",
    "items": "items",
}

#: Axis labels of the x choices (units included).
X_LABELS: dict[str, str] = {
    "step": "optimizer steps",
    "iteration": "sequential iterations",
    "train_time_s": "training time (s)",
    "wall_time_s": "wall time since worker start (s)",
    "grad_evals": "gradient evaluations",
    "items": "training items",
}

#: Options that never tell runs apart in a legend (paths, display, bookkeeping).
_NOT_LABELS = {"out_dir", "run_name", "progress", "resume", "stop_after", "checkpoint_every", "mirror"}


class PlotError(ValueError):
    """Plotting cannot proceed; the message names the run or column and what is valid."""


def unit_of(column: str) -> str:
    """The unit of a metrics column, from the schema's naming conventions ('' when unitless)."""
    if column.endswith("_per_s"):
        return column.removesuffix("_per_s").rsplit("_", 1)[-1] + "/s"
    if column.endswith("_s"):
        return "s"
    if column.endswith("_mb"):
        return "MB"
    if column.startswith("bytes"):
        return "bytes"
    return ""


def axis_label(column: str) -> str:
    unit = unit_of(column)
    return f"{column} ({unit})" if unit else column


def column_help(column: str) -> str:
    """The schema's one-line meaning of ``column`` ('' for a method's own column)."""
    return {**COMMON_COLUMNS, **TRAIN_COLUMNS, **EVAL_COLUMNS}.get(column, "")


def load_runs(paths: Sequence[str | Path]) -> list[RunResult]:
    """Every run directory read back; a missing one, or one without metrics, is an error naming it."""
    runs = []
    for path in paths:
        try:
            run = load_run(path)
        except FileNotFoundError as err:
            raise PlotError(str(err)) from None
        if run.metrics.empty:
            raise PlotError(f"run directory {str(path)!r} has no metrics rows (no metrics.csv or metrics.jsonl)")
        runs.append(run)
    return runs


def series(metrics: "pd.DataFrame", column: str, x: str) -> tuple[list[float], list[float]]:
    """``(xs, ys)`` of the rows where both the column and the x column hold a number.

    Why skip NaN rows: metrics.csv mixes training and evaluation rows, so a training column
    is empty on evaluation rows and vice versa; drawing them would break every line.
    """
    import pandas as pd

    x_column = X_COLUMNS[x]
    if column not in metrics.columns or x_column not in metrics.columns:
        return [], []
    xs = pd.to_numeric(metrics[x_column], errors="coerce")
    ys = pd.to_numeric(metrics[column], errors="coerce")
    keep = xs.notna() & ys.notna()
    return xs[keep].astype(float).tolist(), ys[keep].astype(float).tolist()


def _method_option_defaults(method: Any) -> dict[str, Any]:
    from .methods import get_method
    from .options import ConfigError

    try:
        options = get_method(method).options
    except ConfigError:
        return {}
    return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())  # type: ignore[misc]
            for f in dataclasses.fields(options)}


def _fmt(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return format(value, "g")
    return str(value)


def legend_labels(runs: Sequence[RunResult]) -> list[str]:
    """``<run name>: <method> k=v ...`` with the method's own options that any plotted run of
    that method sets away from its default, so two PASO runs differing in ``P`` read apart."""
    keys_by_method: dict[Any, list[str]] = {}
    for run in runs:
        method = run.config.get("method", run.summary.get("method"))
        defaults = _method_option_defaults(method)
        keys = keys_by_method.setdefault(method, [])
        for name, default in defaults.items():
            value = run.config.get(name, default)
            if name not in keys and name not in _NOT_LABELS and _norm(value) != _norm(default):
                keys.append(name)
    labels = []
    for run in runs:
        method = run.config.get("method", run.summary.get("method", "?"))
        options = "".join(f" {k}={_fmt(run.config[k])}" for k in keys_by_method.get(method, []) if k in run.config)
        labels.append(f"{run.path.name}: {method}{options}")
    return labels


def _norm(value: Any) -> Any:
    """JSON turns tuples into lists; compare them alike."""
    return list(value) if isinstance(value, tuple) else value


def check_column(runs: Sequence[RunResult], column: str) -> None:
    """A column no run has is an error listing the columns the runs do have."""
    available = sorted({c for run in runs for c in run.metrics.columns})
    if column not in available:
        raise PlotError(f"no run has column {column!r}; the runs have: {', '.join(available)}")
    numeric = [c for c in available if any(_numeric(run.metrics, c) for run in runs)]
    if column not in numeric:
        raise PlotError(f"column {column!r} holds no numbers; choose one of: {', '.join(numeric)}")


def _numeric(metrics: "pd.DataFrame", column: str) -> bool:
    import pandas as pd

    return column in metrics.columns and pd.to_numeric(metrics[column], errors="coerce").notna().any()


def draw(runs: Sequence[RunResult], column: str, *, x: str = "step", logy: bool = False
         ) -> tuple["Figure", list[str]]:
    """A figure of ``column`` of every run against ``x``, and notes on runs left out (no value
    in the column), so the caller can say why a legend entry is missing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x not in X_COLUMNS:
        raise PlotError(f"x={x!r} is not valid; choose one of: {', '.join(X_COLUMNS)}")
    check_column(runs, column)
    notes: list[str] = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        for run, label in zip(runs, legend_labels(runs)):
            xs, ys = series(run.metrics, column, x)
            if not xs:
                notes.append(f"{run.path}: no {column!r} values against {X_COLUMNS[x]!r}; not drawn")
                continue
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(X_LABELS[x])
        ax.set_ylabel(axis_label(column))
        meaning = column_help(column)
        ax.set_title(column + (f"\n{meaning}" if meaning and len(meaning) <= 90 else ""), fontsize=10)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        fig.tight_layout()
    except BaseException:
        plt.close(fig)  # pyplot keeps every open figure alive
        raise
    return fig, notes


def plot_runs(paths: Sequence[str | Path], column: str, *, x: str = "step", out: str | Path | None = None,
              logy: bool = False) -> tuple[Path, list[str]]:
    """Draw ``column`` of the run directories ``paths`` into the PNG ``out`` (default
    ``<column>.png``); returns the file written and the notes of :func:`draw`."""
    import matplotlib.pyplot as plt

    if not paths:
        raise PlotError("give at least one run directory")
    fig, notes = draw(load_runs(paths), column, x=x, logy=logy)
    out = Path(out) if out is not None else Path(f"{column}.png")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
    finally:
        plt.close(fig)
    return out, notes
