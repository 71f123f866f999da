"""Method-agnostic helpers the notebooks share: save figures/tables with their config,
draw seed-aggregated curves, and fill notebook parameters.

Every artifact is written next to a JSON file holding the configuration that produced it
(and the machine it ran on), so a figure or table found on disk can be traced back to
the exact settings without the notebook. Nothing here knows about a particular method:
the caller names the metric columns. A table's Markdown shows at most ten columns (the
CSV keeps all); figure panels finish with :func:`finish_axes` (labelled axes, integer ticks
on counts, a legend naming the curves that coincide). Reading runs (curves, training time,
the mean ± std convention) is :mod:`paso_core.experiments.common`; its curve and statistics
functions are re-exported here (``report.sequential_curve`` is ``common.sequential_curve``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .config import ConfigError
from .experiments.common import (STD_NOTE, format_mean_std, iterations_to_reach, mean_std, run_curve,
                                 sequential_curve)
from .provenance import provenance, repo_relative
from .runs import artifacts_root

__all__ = [
    "environment",
    "save_figure",
    "save_table",
    "MAX_MD_COLUMNS",
    "markdown_columns",
    "to_markdown",
    "run_curve",
    "sequential_curve",
    "iterations_to_reach",
    "plot_curves",
    "seed_counts",
    "seed_note",
    "error_bars",
    "coinciding_series",
    "curve_series",
    "overlap_note",
    "finish_axes",
    "mean_std",
    "format_mean_std",
    "STD_NOTE",
    "resolve_parameters",
]


# ------------------------------------------------------------------------ saving
def environment(world_size: int | None = None, threads: int | None = None) -> dict[str, Any]:
    """Where the numbers were measured (timings mean little without it): code, stack, machine,
    and the processes and threads per process when the caller knows them."""
    info = provenance(world_size, threads)
    if hasattr(os, "getloadavg"):
        info["load_average_1_5_15_min"] = [round(v, 2) for v in os.getloadavg()]
    return info


def _jsonable(value: Any) -> Any:
    """Best-effort conversion for config values (paths, numpy scalars, tuples)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _check_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"artifact name {name!r} must be a plain file stem (no directories, no leading dot)")
    return name


def _write_config(path: Path, config: Mapping[str, Any] | None, kind: str, files: Iterable[Path],
                  env: Mapping[str, Any] | None = None) -> Path:
    record = {"artifact": kind, "files": [p.name for p in files], "config": _jsonable(dict(config or {})),
              "environment": _jsonable(dict(env)) if env is not None else environment()}
    # paths of this checkout (run directories, data) relative to it: no build-machine paths
    path.write_text(repo_relative(json.dumps(record, indent=2, sort_keys=True), path.parent.parent))
    return path


def save_figure(fig: Any, name: str, config: Mapping[str, Any] | None = None, *,
                root: str | Path | None = None, dpi: int = 150) -> Path:
    """Write ``fig`` as ``<artifacts>/figures/<name>.png`` plus ``<name>.json`` (config + machine)."""
    folder = Path(root) if root is not None else artifacts_root() / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / f"{_check_name(name)}.png"
    fig.savefig(png, dpi=dpi, bbox_inches="tight")
    _write_config(folder / f"{name}.json", config, "figure", [png])
    return png


def to_markdown(df: pd.DataFrame, floatfmt: str = ".4g", missing: str = "") -> str:
    """A GitHub pipe table (NaN/None shown as ``missing``); uses ``tabulate`` via pandas when
    installed, else a plain fallback, so saving a table never fails on a missing extra."""
    try:
        shown = df.astype(object).where(df.notna(), None)  # tabulate blanks None, not NaN
        return shown.to_markdown(index=False, floatfmt=floatfmt, missingval=missing)
    except ImportError:
        def cell(v: Any) -> str:
            if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)):
                return missing
            if isinstance(v, (float, np.floating)):
                return format(float(v), floatfmt)
            return str(v).replace("|", "\\|")
        header = "| " + " | ".join(map(str, df.columns)) + " |"
        rule = "|" + "|".join("---" for _ in df.columns) + "|"
        rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
        return "\n".join([header, rule, *rows])


#: The most columns a Markdown table shows. Why a limit: past about ten columns a pipe table
#: wraps or scrolls and a reader can no longer compare rows; the CSV keeps every column.
MAX_MD_COLUMNS = 10


def markdown_columns(df: pd.DataFrame, md_columns: Sequence[str] | None, name: str = "table") -> list[str]:
    """The columns the Markdown of ``df`` shows: ``md_columns``, or every column when the
    table is narrow enough; a :class:`ValueError` naming the fix otherwise.

    Why refuse instead of cutting: which columns a reader compares is the caller's decision
    (identifying columns, the headline metric with its spread, the speed-up, bytes or memory
    the study is about); the first ten of a wide table are rarely those.
    """
    if md_columns is None:
        if len(df.columns) > MAX_MD_COLUMNS:
            raise ValueError(
                f"table {name!r} has {len(df.columns)} columns and its Markdown shows at most {MAX_MD_COLUMNS}: "
                f"pass md_columns= with the <= {MAX_MD_COLUMNS} a reader compares (the CSV keeps all of them); "
                f"columns: {list(df.columns)}")
        return list(df.columns)
    if isinstance(md_columns, str):
        raise TypeError(f"md_columns for table {name!r} must be a list of column names, not the string {md_columns!r}")
    shown = list(md_columns)
    if not shown:
        raise ValueError(f"md_columns for table {name!r} is empty; give the columns a reader compares, or None "
                         f"for all (at most {MAX_MD_COLUMNS})")
    if len(shown) > MAX_MD_COLUMNS:
        raise ValueError(f"md_columns for table {name!r} names {len(shown)} columns; the Markdown shows at most "
                         f"{MAX_MD_COLUMNS} (the CSV keeps every column): {shown}")
    duplicated = sorted({c for c in shown if shown.count(c) > 1})
    missing = [c for c in shown if c not in df.columns]
    if duplicated or missing:
        raise ValueError(f"md_columns for table {name!r}: "
                         + "; ".join([*([f"not in the table: {missing}"] if missing else []),
                                      *([f"named twice: {duplicated}"] if duplicated else [])])
                         + f"; the table has {list(df.columns)}")
    return shown


def save_table(df: pd.DataFrame, name: str, config: Mapping[str, Any] | None = None, *,
               root: str | Path | None = None, title: str | None = None,
               notes: str | None = None, md_columns: Sequence[str] | None = None,
               world_size: int | None = None, threads: int | None = None) -> tuple[Path, Path]:
    """Write ``df`` to ``<artifacts>/tables/<name>.csv`` and ``.md`` (+ ``.json`` config).

    The Markdown file carries an optional title and notes so it reads on its own, and only
    ``md_columns`` (at most :data:`MAX_MD_COLUMNS`: the columns a reader compares; a wider
    table must name them, see :func:`markdown_columns`); when some are left out it says
    "More columns in <name>.csv" and names them. The JSON's environment records ``world_size`` and
    ``threads`` (per process) when given. Nothing is written when the columns are refused.
    Returns ``(csv_path, md_path)``.
    """
    _check_name(name)
    shown = markdown_columns(df, md_columns, name)
    hidden = [str(c) for c in df.columns if c not in shown]
    folder = Path(root) if root is not None else artifacts_root() / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / f"{name}.csv"
    md = folder / f"{name}.md"
    csv.write_text(repo_relative(df.to_csv(index=False), folder.parent))  # run paths relative to the checkout
    parts = [f"# {title}\n"] if title else []
    if notes:
        parts.append(notes.strip() + "\n")
    parts.append(to_markdown(df[shown]) + "\n")
    if hidden:
        parts.append(f"More columns in {name}.csv: {', '.join(hidden)}.\n")
    md.write_text(repo_relative("\n".join(parts), folder.parent))
    _write_config(folder / f"{name}.json", config, "table", [csv, md], environment(world_size, threads))
    return csv, md


# ----------------------------------------------------------------------- curves
# The curves and the mean ± std convention live in the experiments' shared layer
# (:mod:`paso_core.experiments.common`); they are re-exported here for existing callers.
def seed_counts(n: Iterable[Any]) -> str:
    """``"n=3"``, or ``"n=1–3"`` when the number of runs (seeds) behind the points varies."""
    counts = sorted({int(v) for v in n if pd.notna(v)})
    if not counts:
        return "n=0"
    return f"n={counts[0]}" if len(counts) == 1 else f"n={counts[0]}–{counts[-1]}"


def seed_note(curves: pd.DataFrame) -> str:
    """How many seeds the mean curves of :func:`sequential_curve` average, for a title:
    one number when every point has the same, else a pointer to the legend (where
    :func:`plot_curves` then shows each curve's ``n``)."""
    if curves.empty or "n" not in curves:
        return "no runs"
    counts = sorted({int(v) for v in curves["n"] if pd.notna(v)})
    if len(counts) == 1:
        return ("1 seed (no spread)" if counts[0] == 1 else
                f"mean ± std over {counts[0]} seeds")
    return "mean ± std over the seeds with data at each point (n in the legend)"


def plot_curves(ax: Any, curves: pd.DataFrame, x: str = "iteration", *, band: str = "std",
                labels: Mapping[str, str] | None = None, colors: Mapping[str, str] | None = None,
                styles: Mapping[str, Mapping[str, Any]] | None = None, show_n: bool | None = None,
                alpha: float = 0.2, style: str = "-", drawstyle: str = "steps-post", **line: Any) -> Any:
    """Draw :func:`sequential_curve` output (with a ``label`` column): mean line + spread band.

    ``band`` is ``"std"`` (mean ± std, see :data:`STD_NOTE`), ``"range"`` (min … max) or
    ``"none"``; it is drawn where more than one run has data. ``labels`` and ``colors`` map
    a group's label to its legend text and colour; ``styles`` to line keywords (linestyle,
    marker, width) that replace the ``style`` string, so curves that coincide stay
    distinguishable; ``drawstyle`` and ``line`` go to ``ax.plot``. ``show_n`` appends the
    number of seeds to each legend label (:func:`seed_counts`); by default only where it
    varies (between curves or along one), since a constant count belongs in the title
    (:func:`seed_note`).
    """
    if band not in ("std", "range", "none"):
        raise ValueError(f"band must be 'std', 'range' or 'none', got {band!r}")
    groups = list(curves.groupby("label", sort=False)) if "label" in curves.columns else [("", curves)]
    if show_n is None:
        show_n = "n" in curves and curves["n"].dropna().nunique() > 1
    step = "post" if drawstyle == "steps-post" else None
    for label, part in groups:
        name = str((labels or {}).get(label, label))
        if show_n and "n" in part:
            name = f"{name} ({seed_counts(part['n'])})"
        own = dict((styles or {}).get(label, {}))
        fmt = () if own else (style,)
        (drawn,) = ax.plot(part[x], part["mean"], *fmt, label=name, drawstyle=drawstyle,
                           color=(colors or {}).get(label), **{**line, **own})
        if band != "none" and (part["n"] > 1).any():
            lo, hi = ((part["mean"] - part["std"].fillna(0), part["mean"] + part["std"].fillna(0)) if band == "std"
                      else (part["min"], part["max"]))
            ax.fill_between(part[x], lo, hi, step=step, color=drawn.get_color(), alpha=alpha, linewidth=0)
    return ax


# ----------------------------------------------------------------------- figures
def error_bars(std: Iterable[Any]) -> np.ndarray:
    """Error bar lengths for ``ax.errorbar``: NaN (no bar) where the std is blank, so a point
    from one seed shows no bar instead of a "± 0" one (see :data:`STD_NOTE`)."""
    return pd.to_numeric(pd.Series(list(std), dtype=object), errors="coerce").to_numpy(dtype=float)


#: Two curves coincide when they differ by at most this fraction of the panel's y span
#: wherever both have points: less than a line's width on any figure saved here.
COINCIDE_RTOL = 1e-3


def _finite_points(x: Any, y: Any, log: bool) -> dict[float, float]:
    xs, ys = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            ys = np.where(ys > 0, np.log10(np.where(ys > 0, ys, 1.0)), np.nan)
    keep = np.isfinite(xs) & np.isfinite(ys)
    return dict(zip(xs[keep].tolist(), ys[keep].tolist()))  # a repeated x keeps its last value


def _coincide(series: Mapping[str, tuple[Any, Any]], rtol: float, log: bool) -> list[tuple[list[str], bool]]:
    """Groups of coinciding labels, each with whether all of them have the same x values."""
    points = {str(k): _finite_points(x, y, log) for k, (x, y) in series.items()}
    points = {k: v for k, v in points.items() if len(v) >= 2}
    values = np.array([y for p in points.values() for y in p.values()], dtype=float)
    if len(points) < 2:
        return []
    tol = rtol * float(values.max() - values.min())
    parent = {k: k for k in points}

    def root(k: str) -> str:
        while parent[k] != k:
            k = parent[k]
        return k

    names = list(points)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            small, big = sorted((points[a], points[b]), key=len)
            if small.keys() <= big.keys() and all(abs(y - big[x]) <= tol for x, y in small.items()):
                parent[root(b)] = root(a)
    groups: dict[str, list[str]] = {}
    for k in names:
        groups.setdefault(root(k), []).append(k)
    return [(g, len({frozenset(points[k]) for k in g}) == 1) for g in groups.values() if len(g) > 1]


def coinciding_series(series: Mapping[str, tuple[Any, Any]], *, rtol: float = COINCIDE_RTOL,
                      log: bool = False) -> list[list[str]]:
    """Labels whose curves lie on top of each other, grouped, in order of first appearance.

    Why from the data: that serial, naive DP and DDP draw the same curve (same updates) is a
    result, so no plotting code may assume it, and a reader must be told why a line is
    hidden. ``series`` maps a label to its ``(x, y)``. Two curves coincide when one's x values
    (at least two) are all x values of the other (a shorter run on the same grid) and their
    y differ there by at most ``rtol`` of the y span of all the series; ``log`` compares
    ``log10(y)`` (a log axis). Non-finite points are left out.
    """
    return [group for group, _ in _coincide(series, rtol, log)]


def curve_series(curves: pd.DataFrame, x: str, labels: Mapping[str, str] | None = None,
                 y: str = "mean") -> dict[str, tuple[Any, Any]]:
    """``{legend name: (x, y)}`` of :func:`sequential_curve` output, for :func:`finish_axes`'s
    overlap check by method name (the legend text may carry the seed counts)."""
    groups = curves.groupby("label", sort=False) if "label" in curves.columns else [("", curves)]
    return {str((labels or {}).get(label, label)): (part[x], part[y]) for label, part in groups}


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def overlap_note(series: Mapping[str, tuple[Any, Any]], *, rtol: float = COINCIDE_RTOL, log: bool = False) -> str:
    """``"serial, naive DP and DDP coincide"`` for each group of :func:`coinciding_series`
    (``"… where both have points"`` when one curve is shorter), ``""`` when none do."""
    notes = []
    for group, same_x in _coincide(series, rtol, log):
        where = "" if same_x else (" where both have points" if len(group) == 2 else " where they have points")
        notes.append(f"{_join(group)} coincide{where}")
    return "; ".join(notes)


def _labelled_lines(ax: Any) -> dict[str, tuple[Any, Any]]:
    """The data lines of ``ax`` that have a legend label (reference lines such as ``axhline``
    live in axes coordinates and are left out)."""
    out = {}
    for line in ax.get_lines():
        label = str(line.get_label())
        if not label.startswith("_") and line.get_transform() == ax.transData:
            out.setdefault(label, (line.get_xdata(orig=False), line.get_ydata(orig=False)))
    return out


def finish_axes(ax: Any, *, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None,
                integer_x: bool = False, integer_y: bool = False, note: str | None = None,
                series: Mapping[str, tuple[Any, Any]] | None = None, twins: Sequence[Any] = (),
                grid: bool = True, **legend: Any) -> str:
    """The last touches every panel gets, in one place: title and labelled axes, integer
    ticks on a count axis (steps, iterations, workers, P, H), a light grid, and a legend
    whose title says which curves coincide (:func:`overlap_note`, computed from the lines
    drawn or from ``series``). A panel without labelled lines gets ``note`` (what its one
    series is) as its legend instead, placed where it hides no data. ``twins`` are
    ``twinx`` axes whose labelled lines join the legend; ``legend`` goes to ``ax.legend``.
    Returns the overlap note.
    """
    from matplotlib.ticker import MaxNLocator

    if title is not None:
        ax.set_title(title)
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    if integer_x and ax.get_xscale() == "linear":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if integer_y and ax.get_yscale() == "linear":
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if grid:
        ax.grid(True, alpha=0.3)
    overlap = overlap_note(series if series is not None else _labelled_lines(ax), log=ax.get_yscale() == "log")
    handles, labels = ax.get_legend_handles_labels()
    for twin in twins:
        more, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more, labels + more_labels
    text = "\n".join(t for t in (note, overlap) if t)
    options = {"fontsize": 8, "title_fontsize": 8, **legend}
    if handles:
        ax.legend(handles, labels, title=text or None, **options)
    elif text:  # the note as a legend without a handle: matplotlib's "best" keeps it off the data
        from matplotlib.lines import Line2D

        ax.legend([Line2D([], [], linestyle="none")], [text], handlelength=0, handletextpad=0, **options)
    return overlap


# ------------------------------------------------------------------ widgets
def widgets_module() -> Any | None:
    """``ipywidgets`` when a person is looking at a live Jupyter frontend, else None.

    Why not always: headless executors (papermill, nbmake via nbclient) handle widget comm
    messages imperfectly, and a widget cell was seen to leave execution waiting forever
    with the kernel idle. Kernels started by Jupyter Server carry ``JPY_SESSION_NAME``;
    ``PASO_WIDGETS=1`` forces widgets on (other frontends), ``PASO_WIDGETS=0`` off.
    Without widgets the notebooks show the same view as a static figure.
    """
    flag = os.environ.get("PASO_WIDGETS")
    if flag == "0" or (flag != "1" and "JPY_SESSION_NAME" not in os.environ):
        return None
    try:
        import ipywidgets
    except ImportError:
        return None
    return ipywidgets


# ------------------------------------------------------------------ parameters
def parse_list(name: str, value: Any, kind: type) -> list[Any]:
    """A list of ``kind`` from a list, a single value, or a comma-separated string.

    Why strings: ``papermill -p seeds 0,1,2`` passes a string (lists need ``-y``), and a
    notebook must accept what its documented command line produces.
    """
    if isinstance(value, str):
        items: list[Any] = [v.strip() for v in value.strip("[]() ").split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    out = []
    for item in items:
        try:
            if isinstance(item, bool):
                raise ValueError
            if kind is int:
                number = float(item) if isinstance(item, str) else item
                if not isinstance(number, (int, float)) or float(number) != int(number):
                    raise ValueError
                out.append(int(number))
            else:
                number = float(item)
                if not math.isfinite(number):
                    raise ValueError
                out.append(number)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{name}={value!r} is not valid; give a list of {kind.__name__}s, e.g. "
                f"{'[0, 1, 2]' if kind is int else '[1e-5, 1e-3]'} (or '0,1,2' with papermill -p)"
            ) from None
    return out


def resolve_parameters(values: Mapping[str, Any], presets: Mapping[str, Mapping[str, Any]],
                       scale: str | None = None, env_var: str = "PASO_SCALE",
                       default_scale: str = "default") -> dict[str, Any]:
    """Fill the ``None`` entries of ``values`` from the preset of the chosen scale.

    The scale is ``scale`` if given, else ``$PASO_SCALE`` (how CI runs notebooks at smoke
    scale under nbmake, which cannot pass parameters), else ``default_scale``. Values given
    explicitly (papermill ``-p``) always win over the preset. The result includes ``scale``.
    """
    chosen = scale or os.environ.get(env_var) or default_scale
    if chosen not in presets:
        raise ValueError(f"scale={chosen!r} is not valid; choose one of: {', '.join(presets)}")
    preset = presets[chosen]
    unknown = sorted(set(values) - set(preset))
    if unknown:
        raise ValueError(f"parameter(s) {unknown} have no preset in scale {chosen!r}")
    out = {k: (preset[k] if v is None else v) for k, v in values.items()}
    out.update({k: v for k, v in preset.items() if k not in out})
    out["scale"] = chosen
    return out

