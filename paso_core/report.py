"""Method-agnostic helpers the notebooks share: save figures/tables with their config,
draw seed-aggregated curves, and fill notebook parameters.

Every artifact is written next to a JSON file holding the configuration that produced it
(and the machine it ran on), so a figure or table found on disk can be traced back to
the exact settings without the notebook. Nothing here knows about a particular method:
the caller names the metric columns. Reading runs (curves, training time, the mean ± std
convention) is :mod:`paso_core.experiments.common`; its curve and statistics functions are
re-exported here (``report.sequential_curve`` is ``common.sequential_curve``).
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
from .provenance import provenance
from .runs import artifacts_root

__all__ = [
    "environment",
    "save_figure",
    "save_table",
    "to_markdown",
    "run_curve",
    "sequential_curve",
    "iterations_to_reach",
    "plot_curves",
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
    path.write_text(json.dumps(record, indent=2, sort_keys=True))
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


def save_table(df: pd.DataFrame, name: str, config: Mapping[str, Any] | None = None, *,
               root: str | Path | None = None, title: str | None = None,
               notes: str | None = None, md_columns: Sequence[str] | None = None,
               world_size: int | None = None, threads: int | None = None) -> tuple[Path, Path]:
    """Write ``df`` to ``<artifacts>/tables/<name>.csv`` and ``.md`` (+ ``.json`` config).

    The Markdown file carries an optional title and notes so it reads on its own, and only
    ``md_columns`` when given (the columns a reader compares; the CSV keeps them all). The
    JSON's environment records ``world_size`` and ``threads`` (per process) when given.
    Returns ``(csv_path, md_path)``.
    """
    folder = Path(root) if root is not None else artifacts_root() / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / f"{_check_name(name)}.csv"
    md = folder / f"{name}.md"
    df.to_csv(csv, index=False)
    parts = [f"# {title}\n"] if title else []
    if notes:
        parts.append(notes.strip() + "\n")
    parts.append(to_markdown(df[list(md_columns)] if md_columns else df) + "\n")
    md.write_text("\n".join(parts))
    _write_config(folder / f"{name}.json", config, "table", [csv, md], environment(world_size, threads))
    return csv, md


# ----------------------------------------------------------------------- curves
# The curves and the mean ± std convention live in the experiments' shared layer
# (:mod:`paso_core.experiments.common`); they are re-exported here for existing callers.
def plot_curves(ax: Any, curves: pd.DataFrame, x: str = "iteration", *, band: str = "std",
                labels: Mapping[str, str] | None = None, colors: Mapping[str, str] | None = None,
                alpha: float = 0.2, style: str = "-", drawstyle: str = "steps-post", **line: Any) -> Any:
    """Draw :func:`sequential_curve` output (with a ``label`` column): mean line + spread band.

    ``band`` is ``"std"`` (mean ± std, see :data:`STD_NOTE`), ``"range"`` (min … max) or
    ``"none"``; it is drawn where more than one run has data. ``labels`` and ``colors`` map
    a group's label to its legend text and colour; ``style``, ``drawstyle`` and ``line``
    go to ``ax.plot``.
    """
    if band not in ("std", "range", "none"):
        raise ValueError(f"band must be 'std', 'range' or 'none', got {band!r}")
    groups = curves.groupby("label", sort=False) if "label" in curves.columns else [("", curves)]
    step = "post" if drawstyle == "steps-post" else None
    for label, part in groups:
        name = (labels or {}).get(label, label)
        (drawn,) = ax.plot(part[x], part["mean"], style, label=name, drawstyle=drawstyle,
                           color=(colors or {}).get(label), **line)
        if band != "none" and (part["n"] > 1).any():
            lo, hi = ((part["mean"] - part["std"].fillna(0), part["mean"] + part["std"].fillna(0)) if band == "std"
                      else (part["min"], part["max"]))
            ax.fill_between(part[x], lo, hi, step=step, color=drawn.get_color(), alpha=alpha, linewidth=0)
    return ax


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

