"""The plan / run / aggregate / plot layer every experiment shares (CIFAR, WikiText, OptEx).

Why one layer: a number in a table means the same thing in every notebook only if every
notebook computes it the same way. So this module holds, once:

* **running a plan** (:func:`run_plan`): one torchrun job at a time, the launch time and
  (optionally) the machine's other load recorded in each summary, a one-line log per run;
* **training time** (:func:`training_time`): :func:`paso_core.metrics.training_time`, the
  schema's definition (setup and every evaluation excluded), for every method alike;
* **one mean ± std convention** (:data:`DDOF`, :data:`STD_NOTE`, :func:`mean_std`,
  :func:`aggregate`): the sample standard deviation over the ``n`` runs (seeds) of a group,
  ``ddof=1``, left blank (NaN) for ``n < 2``, computed with pandas ``groupby``;
* **per-run tables** (:func:`run_table`) and per-seed comparisons with a baseline
  (:func:`baseline_values`);
* **curves** (:func:`run_points`, :func:`run_curve`, :func:`curve_points`,
  :func:`aggregate_curve`, :func:`sequential_curve`): ``x`` is a schema column
  (``iteration``, ``steps_done`` or ``train_time_s``), ``y`` a training column (read from
  :func:`paso_core.metrics.train_rows`) or an evaluation column (``eval_*``, read from
  :func:`paso_core.metrics.eval_rows`).

Nothing here reads a method's name to decide what to do: a reader that needs a column only
some methods write (PASO's ``accepted``) tests for the column. Method labels, colours and
which runs form the baseline are the calling experiment's business.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..config import ConfigError, RunConfig, validate
from ..metrics import EVAL_COLUMNS, eval_rows, train_rows
from ..metrics import training_time as metrics_training_time
from ..runs import RunResult

__all__ = [
    "DDOF", "STD_NOTE", "mean_std", "mean_std_n", "format_mean_std", "format_pm", "aggregate",
    "Runner", "describe_config", "planned_config", "run_plan", "by_key", "other_runnable", "peak_busy",
    "training_time", "run_table", "baseline_values", "num",
    "X_AXES", "is_eval_column", "rows_for", "final_x", "run_points", "run_curve", "curve_points",
    "aggregate_curve", "sequential_curve", "iterations_to_reach", "column_rows", "per_optimizer", "names", "one_int",
    "paso_workers",
    "placement_suffix",
]

# =========================================================================== mean ± std
#: Delta degrees of freedom of every standard deviation over seeds: the sample std.
DDOF = 1
#: Fewest values with a standard deviation; below it the std is NaN (blank), because a
#: "± 0" from one seed would read as a measured absence of spread.
MIN_N_FOR_STD = DDOF + 1
#: The convention in words, for the notes of every table that shows a spread.
STD_NOTE = (f"mean ± std over the n runs (seeds) of each row: sample standard deviation (ddof={DDOF}), "
            f"left blank when n < {MIN_N_FOR_STD}; non-finite values are left out of n")


def _finite(values: Iterable[Any]) -> np.ndarray:
    arr = np.asarray([num(v) for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def mean_std_n(values: Iterable[Any]) -> tuple[float, float, int]:
    """Mean, std (:data:`DDOF`; NaN for fewer than :data:`MIN_N_FOR_STD` values) and n of
    the finite values; ``(nan, nan, 0)`` when none is finite."""
    arr = _finite(values)
    if arr.size == 0:
        return float("nan"), float("nan"), 0
    std = float(arr.std(ddof=DDOF)) if arr.size >= MIN_N_FOR_STD else float("nan")
    return float(arr.mean()), std, int(arr.size)


def mean_std(values: Iterable[Any]) -> tuple[float, float]:
    """Mean and std of the finite values under the one convention (see :func:`mean_std_n`)."""
    mean, std, _ = mean_std_n(values)
    return mean, std


def format_pm(mean: float, std: float, fmt: str = ".3g", n: int | None = None, total: int | None = None) -> str:
    """``"m ± s"``; just ``"m"`` when the std is blank; ``"n/a"`` when the mean is; with
    ``" (n/total)"`` appended when some of the ``total`` values were not finite."""
    if mean is None or not math.isfinite(float(mean)):
        return "n/a"
    text = format(float(mean), fmt)
    if std is not None and math.isfinite(float(std)):
        text += f" ± {format(float(std), fmt)}"
    if n is not None and total is not None and n != total:
        text += f" ({n}/{total})"
    return text


def format_mean_std(values: Iterable[Any], fmt: str = ".3g") -> str:
    """``"m ± s"`` over the values (see :func:`format_pm`)."""
    vals = list(values)
    mean, std, n = mean_std_n(vals)
    return format_pm(mean, std, fmt, n, len(vals))


def aggregate(frame: pd.DataFrame, by: str | Sequence[str], columns: Sequence[str], *,
              first: Sequence[str] = ()) -> pd.DataFrame:
    """Per group of ``by`` (in order of first appearance): ``n_runs`` and, for each of
    ``columns``, ``<col>_mean``, ``<col>_std`` (:data:`DDOF`, NaN for n < 2) and ``<col>_n``
    (finite values), plus the first non-missing value of each ``first`` column.

    Non-finite values (NaN, inf: a speed-up of a run that never got there) are left out
    of mean, std and n alike.
    """
    keys = [by] if isinstance(by, str) else list(by)
    data = frame[keys].copy()
    for col in columns:
        data[col] = pd.to_numeric(frame[col], errors="coerce").replace([np.inf, -np.inf], np.nan)
    for col in first:
        data[col] = frame[col]
    groups = data.groupby(keys, sort=False, dropna=False)
    parts = [groups.size().rename("n_runs")]
    for col in columns:
        n = groups[col].count()
        parts += [groups[col].mean().rename(f"{col}_mean"),
                  groups[col].std(ddof=DDOF).where(n >= MIN_N_FOR_STD).rename(f"{col}_std"),
                  n.rename(f"{col}_n")]
    parts += [groups[col].first().rename(col) for col in first]
    return pd.concat(parts, axis=1).reset_index()


# =========================================================================== notebook parameters
def per_optimizer(name: str, value: Any, optimizers: Sequence[str], kind: type = float) -> dict[str, Any]:
    """A number for every optimizer: one number for all, a mapping, or 'momentum:0.05,adamw:2e-3'
    (``=`` also accepted; papermill cannot parse a ``=`` inside a parameter's comment)."""
    if isinstance(value, str) and any(sep in value for sep in ":="):
        value = dict(part.replace("=", ":").split(":", 1) for part in value.replace(" ", "").split(",") if part)
    if not isinstance(value, Mapping):
        value = {opt: value for opt in optimizers}
    missing = [opt for opt in optimizers if opt not in value]
    if missing:
        raise ConfigError(f"{name}={value!r} gives no value for optimizer(s) {missing}; give one number, or "
                          f"one per optimizer like 'momentum:0.05,adamw:2e-3'")
    try:
        return {opt: kind(value[opt]) for opt in optimizers}
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not valid; give numbers, e.g. 'momentum:0.05,adamw:2e-3'") from None


def one_int(name: str, value: Any, minimum: int = 1) -> int:
    """One integer >= ``minimum`` from a number or a one-item list / string (papermill ``-p``)."""
    from .. import report

    items = report.parse_list(name, value, int)
    if len(items) != 1 or items[0] < minimum:
        raise ConfigError(f"{name}={value!r} is not valid; give one integer >= {minimum}")
    return items[0]


def names(name: str, value: Any, valid: Sequence[str]) -> list[str]:
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    unknown = [v for v in items if v not in valid]
    if unknown or not items:
        raise ConfigError(f"{name}={value!r} is not valid; choose from: {', '.join(valid)}")
    return items



def check_known(values: Mapping[str, Any], parameters: Sequence[str]) -> None:
    """A notebook's values name only its parameters (and ``scale``), else the error lists them."""
    unknown = sorted(set(values) - set(parameters) - {"scale"})
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown}; the notebook's parameters are: "
                          f"{', '.join(parameters)}, scale")


def seed_list(name: str, value: Any) -> list[int]:
    """Distinct seeds >= 0 from a list, one int, or a comma-separated string (``-p seeds 0,1``)."""
    from .. import report

    seeds = report.parse_list(name, value, int)
    if any(seed < 0 for seed in seeds):
        raise ConfigError(f"{name}={value!r} is not valid; give a list of integers >= 0, e.g. [0, 1]")
    if not seeds:
        raise ConfigError(f"{name}={value!r} is empty; give at least one seed, e.g. [0]")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{name}={seeds} repeats a seed; give distinct seeds")
    return seeds


def paso_workers(params: Mapping[str, Any]) -> int:
    """PASO's worker count in a study: ``paso_nproc`` if given, else the most workers not above
    ``nproc`` (the devices the study may use) that divide ``P``, each holding ``P / n``
    window positions. ``P = 7`` with ``nproc = 8`` is the paper's one GPU per position;
    ``nproc = 1`` is the seed's single-device mode. The trajectory is the same for every
    placement; only the time differs."""
    if params.get("paso_nproc"):
        return int(params["paso_nproc"])
    P, devices = params["P"], params["nproc"]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (P, devices)):
        return P  # the run's validation names the bad value
    return max(n for n in range(1, P + 1) if P % n == 0 and n <= devices)


def placement_suffix(params: Mapping[str, Any]) -> str:
    """``_on<n>`` when PASO runs on fewer workers than ``P`` (same trajectory, other timings),
    so such a run does not overwrite the one-worker-per-position artifacts."""
    n = paso_workers(params)
    return f"_on{n}" if n != params["P"] else ""


# =========================================================================== plans and runs
Runner = Callable[[RunConfig], RunResult]


def num(value: Any) -> float:
    """``float(value)``, NaN for what is not a number (a missing summary key, a string)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _g(value: Any) -> str:
    """``format(value, 'g')`` for numbers, ``repr`` otherwise (labels of not-yet-valid input)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, "g")
    return repr(value)


def describe_config(cfg: RunConfig | Mapping[str, Any], keys: Sequence[str] = ()) -> str:
    """A short label of a run: method, seed, workers, and each of ``keys`` the run has.

    ``cfg`` is a config or its flat dict (common options + the method's own), so a key is
    shown exactly for the methods that take it (PASO's ``threshold``), without naming them.
    """
    c = cfg.to_dict() if isinstance(cfg, RunConfig) else dict(cfg)
    text = f"{c.get('method')} seed={_g(c.get('seed'))} workers={_g(c.get('nproc'))}"
    return text + "".join(f" {k}={_g(c[k])}" for k in keys if k in c)


def planned_config(options: Mapping[str, Any], label_keys: Sequence[str] = ()) -> RunConfig:
    """``validate(RunConfig.from_dict(options))``, the error naming the planned run.

    ``options`` is one run's flat options: the common ones and only its method's own
    (another method's option is an error of :meth:`RunConfig.from_dict`).
    """
    try:
        return validate(RunConfig.from_dict(dict(options)))
    except ConfigError as err:
        raise ConfigError(f"{err} (in the planned {describe_config(options, label_keys)} run)") from None


def other_runnable(samples: int = 20, interval_s: float = 0.05) -> float:
    """Mean number of *other* processes ready to run, from ``/proc/loadavg`` (NaN off Linux).

    Why: wall times mean little when other jobs compete for the cores, and the load
    average cannot tell: it also counts our own workers and decays over minutes. Sampled
    between runs (when none of ours runs), the instantaneous runnable count minus the
    sampling process itself is what else is using the CPU right now.
    """
    counts = []
    for _ in range(samples):
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return float("nan")
        counts.append(max(running - 1, 0))
        time.sleep(interval_s)
    return float(np.mean(counts))


def peak_busy(runs: Iterable[RunResult]) -> float:
    """The most other runnable processes seen before any run (recorded by :func:`run_plan`)."""
    finite = _finite(r.summary.get("other_runnable_before") for r in runs)
    return float(finite.max()) if finite.size else float("nan")


def _headline(summary: Mapping[str, Any], keys: Sequence[str]) -> str:
    parts = [f"worker wall {num(summary.get('wall_time_s')):.1f} s",
             f"{summary.get('iterations', '?')} iterations for {summary.get('steps', '?')} steps"]
    parts += [f"{key.removeprefix('final_')} {num(summary.get(key)):.4g}" for key in keys]
    return ", ".join(parts)


def run_plan(configs: Sequence[RunConfig], *, runner: Runner | None = None, log: Callable[[str], None] = print,
             describe: Callable[[RunConfig], str] = describe_config, headline: Sequence[str] = (),
             keep_nonfinite: bool = False, sample_load: bool = False,
             share_launches: bool = False) -> list[RunResult]:
    """Run ``configs`` in order, one torchrun job at a time; the results in the same order.

    One at a time because the methods are compared on wall time: concurrent jobs would
    share the cores and distort each other. Each summary gets ``launch_time_s`` (torchrun
    start to result) and, with ``sample_load``, ``other_runnable_before``
    (:func:`other_runnable`, sampled while none of our workers runs). ``headline`` names
    summary keys to log per run (``final_test_accuracy``). With ``keep_nonfinite`` a run
    whose loss became NaN/inf (a loose tolerance can do that) is kept as a partial result
    with ``status='nonfinite'``; any other failure stops the plan with the worker's error.
    ``runner`` (default :func:`paso_core.launch.launch`) is injectable for tests.

    ``share_launches``: for studies that compare iterations or quality, not wall time, runs
    with the same process options share one torchrun launch
    (:func:`paso_core.launch.launch_grouped`; seconds of start-up saved per run). A run's
    training time is still its own; ``launch_time_s`` is its launch's time over its runs.
    It is ignored (one launch per run) with a test ``runner``, ``keep_nonfinite`` (a NaN run
    must not end the runs after it in its launch) or ``sample_load`` (sampled between runs).
    """
    from ..launch import NonFiniteLossError, launch, launch_grouped
    from ..runs import load_run

    if share_launches and runner is None and not (keep_nonfinite or sample_load):
        tic = time.perf_counter()
        keys = [json.dumps(c.to_dict(), sort_keys=True, default=str) for c in configs]
        unique = dict(zip(keys, configs))  # a plan may name one run twice: run it once
        done = dict(zip(unique, launch_grouped(list(unique.values()))))
        results = [done[k] for k in keys]
        for i, (cfg, result) in enumerate(zip(configs, results), 1):
            result.summary["launch_time_s"] = (time.perf_counter() - tic) / len(configs)
            log(f"[{i}/{len(configs)}] {describe(cfg)}: {result.summary.get('status')} "
                f"({_headline(result.summary, headline)})")
        log(f"all {len(configs)} runs finished in {time.perf_counter() - tic:.0f} s (shared launches)")
        return results
    runner = runner or launch
    results: list[RunResult] = []
    started = time.perf_counter()
    for i, cfg in enumerate(configs, 1):
        busy = other_runnable() if sample_load else None
        tic = time.perf_counter()
        try:
            result = runner(cfg)
        except NonFiniteLossError as err:
            if not keep_nonfinite:
                raise
            log(f"[{i}/{len(configs)}] {describe(cfg)}: LOSS BECAME NON-FINITE; kept as a failed point "
                f"({str(err).splitlines()[0]})")
            result = load_run(err.path)
            result.summary["status"] = "nonfinite"
        result.summary["launch_time_s"] = time.perf_counter() - tic
        if busy is not None:
            result.summary["other_runnable_before"] = busy
        s = result.summary
        log(f"[{i}/{len(configs)}] {describe(cfg)}: {s.get('status')} in {s['launch_time_s']:.1f} s "
            f"({_headline(s, headline)})")
        results.append(result)
    log(f"all {len(configs)} runs finished in {time.perf_counter() - started:.0f} s")
    return results


def by_key(runs: Iterable[RunResult], key: str = "method") -> dict[Any, list[RunResult]]:
    """``{config[key]: runs}`` in order of first appearance (e.g. per method, per function)."""
    groups: dict[Any, list[RunResult]] = {}
    for r in runs:
        groups.setdefault(r.config.get(key), []).append(r)
    return groups


# =========================================================================== time and tables
def training_time(run: RunResult) -> float:
    """Seconds the run spent training: :func:`paso_core.metrics.training_time` of its
    metrics (setup and every evaluation excluded; NaN without training rows)."""
    return metrics_training_time(run.metrics)


def run_table(runs: Iterable[RunResult], *, config: Sequence[str] = ("method", "seed"),
              summary: Sequence[str] = (),
              derived: Mapping[str, Callable[[RunResult], Any]] | None = None) -> pd.DataFrame:
    """One row per run: the ``config`` keys (missing ones empty: a method without that
    option), the ``summary`` values as floats (NaN when missing), ``status``,
    ``train_time_s`` (:func:`training_time`), the ``derived`` values and ``path``."""
    rows = []
    for r in runs:
        row: dict[str, Any] = {k: r.config.get(k) for k in config}
        row.update({k: num(r.summary.get(k)) for k in summary})
        row["status"] = r.summary.get("status")
        row["train_time_s"] = training_time(r)
        row.update({k: f(r) for k, f in (derived or {}).items()})
        row["path"] = str(r.path)
        rows.append(row)
    columns = [*config, *summary, "status", "train_time_s", *(derived or {}), "path"]
    return pd.DataFrame(rows, columns=list(dict.fromkeys(columns)))


def baseline_values(table: pd.DataFrame, baseline: pd.DataFrame, column: str, on: str = "seed") -> pd.Series:
    """For each row of ``table``, ``column`` of the ``baseline`` row with the same ``on``
    (seed), NaN where the baseline has none: speed-ups and differences are taken per seed,
    so seed-to-seed variation does not leak into the ratio."""
    if baseline.empty:
        return pd.Series(np.nan, index=table.index, dtype=float)
    reference = baseline.drop_duplicates(on, keep="last").set_index(on)[column].astype(float)
    return table[on].map(reference).astype(float)


# =========================================================================== curves
#: The schema columns a curve can run along, with their axis labels.
X_AXES = {"iteration": "sequential iterations [count]", "steps_done": "optimizer steps [count]",
          "train_time_s": "training time [s]"}


def is_eval_column(column: str) -> bool:
    """Whether ``column`` lives on evaluation rows (``eval_*``, ``time_eval_s``)."""
    return column.startswith("eval_") or column in EVAL_COLUMNS


def rows_for(metrics: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows that carry ``column``: evaluation rows for an evaluation column, else training rows."""
    return eval_rows(metrics) if is_eval_column(column) else train_rows(metrics)


#: Where a run ends on each x-axis, from its summary and metrics (for a final point).
_FINAL_X: dict[str, Callable[[RunResult], float]] = {
    "iteration": lambda r: num(r.summary.get("iterations")),
    "steps_done": lambda r: num(r.summary.get("steps")),
    "train_time_s": training_time,
}


def final_x(run: RunResult, x: str) -> float:
    """The run's last value of the x-axis ``x`` (NaN for an axis without one)."""
    return _FINAL_X[x](run) if x in _FINAL_X else float("nan")


def run_points(run: RunResult, columns: Sequence[str], x: Sequence[str] = ("iteration",), *,
               x_offset: float = 0.0, final: Mapping[str, str] | None = None,
               final_x_key: str | None = None) -> pd.DataFrame:
    """The run's ``columns`` against the x-axes ``x``, one row per logged point, sorted by
    ``x[0]`` (a point logged twice at the same ``x[0]`` keeps the later one).

    ``columns`` are all training or all evaluation columns (:func:`rows_for`); a row is
    kept when any of them is present. ``x_offset`` shifts the first x-axis of the logged
    rows: a training row's loss is the state *before* its iteration, so ``-1`` puts it at
    the iterations done. ``final`` maps a column to a summary key (``eval_test_accuracy``
    to ``final_test_accuracy``) whose value is appended as a point at the run's end
    (:func:`final_x`; ``final_x_key`` names a summary key instead): the last evaluation
    is in the summary, not always in a metrics row. A column the run never logged yields
    only that final point, and a :class:`KeyError` without one.
    """
    x = list(x)
    kinds = {is_eval_column(c) for c in columns}
    if len(kinds) != 1:
        raise ValueError(f"columns {list(columns)} mix training and evaluation columns; ask for one kind")
    metrics = run.metrics
    rows = rows_for(metrics, columns[0])
    missing_x = [c for c in x if c not in metrics.columns]
    absent = [c for c in columns if c not in metrics.columns and c not in (final or {})]
    if missing_x or absent:
        raise KeyError(f"run {run.path} has no column {missing_x + absent}; columns: {list(metrics.columns)}")
    present = [c for c in columns if c in rows.columns]
    frame = rows.reindex(columns=[*x, *columns]).astype(float)
    frame = frame[frame[present].notna().any(axis=1)] if present else frame.iloc[0:0]
    frame = frame.dropna(subset=x[:1]).copy()
    frame[x[0]] = frame[x[0]] + x_offset
    if final:
        point = {c: final_x(run, c) for c in x}
        if final_x_key is not None:
            point[x[0]] = num(run.summary.get(final_x_key))
        point.update({c: num(run.summary.get(key)) for c, key in final.items()})
        if math.isfinite(point[x[0]]) and any(math.isfinite(point[c]) for c in final):
            last = pd.DataFrame([point], columns=frame.columns).astype(float)
            frame = pd.concat([frame, last], ignore_index=True) if len(frame) else last
    frame = frame.sort_values(x[0], kind="stable").drop_duplicates(subset=x[0], keep="last")
    return frame.reset_index(drop=True)


def run_curve(result: RunResult, y: str, x: str = "iteration", *, x_offset: float = 0.0,
              final: str | None = None, final_x: str | None = None,
              transform: Callable[[pd.Series], pd.Series] | None = None) -> pd.DataFrame:
    """One run's ``y`` against ``x`` as a two-column frame (see :func:`run_points`).

    ``final`` is a summary key appended at the run's end on ``x`` (``final_x``: another
    summary key for that position), e.g. the final gap after the last iteration, which no
    "start of iteration" training row contains. ``transform`` maps the ``y`` values
    (``np.log10`` to average log-gaps).
    """
    frame = run_points(result, [y], [x], x_offset=x_offset, final={y: final} if final else None,
                       final_x_key=final_x).dropna()
    if transform is not None:
        frame[y] = transform(frame[y])
    return frame.reset_index(drop=True)


def curve_points(groups: Mapping[Any, Sequence[RunResult]], y: str, x: str = "iteration",
                 **curve_options: Any) -> pd.DataFrame:
    """Long format of many runs' :func:`run_curve`: columns ``label, run, seed, x, y``
    (``run`` numbers the runs of a label). Runs without the columns are left out."""
    parts = []
    for label, runs in groups.items():
        for i, r in enumerate(runs):
            try:
                curve = run_curve(r, y, x, **curve_options)
            except KeyError:
                continue
            curve.insert(0, "seed", r.config.get("seed"))
            curve.insert(0, "run", i)
            curve.insert(0, "label", label)
            parts.append(curve)
    if not parts:
        return pd.DataFrame(columns=["label", "run", "seed", x, y])
    return pd.concat(parts, ignore_index=True)


def aggregate_curve(points: pd.DataFrame, x: str, y: str, by: str = "label", run: str = "run") -> pd.DataFrame:
    """Mean, std (:data:`DDOF`; NaN for n < 2), min, max and n over the runs of each group
    on the union of their x values: a run contributes from its first to its last x,
    holding its last value in between, so runs logged at different x still line up."""
    out = []
    for label, part in points.groupby(by, sort=False):
        wide = part.pivot_table(index=x, columns=run, values=y, aggfunc="last").sort_index()
        held = wide.ffill().where(wide.bfill().notna())  # no data outside a run's range
        n = held.count(axis=1)
        frame = pd.DataFrame({
            by: label, x: held.index.to_numpy(dtype=float), "mean": held.mean(axis=1).to_numpy(),
            "std": held.std(axis=1, ddof=DDOF).where(n >= MIN_N_FOR_STD).to_numpy(),
            "min": held.min(axis=1).to_numpy(), "max": held.max(axis=1).to_numpy(), "n": n.to_numpy(),
        })
        out.append(frame)
    if not out:
        return pd.DataFrame(columns=[by, x, "mean", "std", "min", "max", "n"])
    return pd.concat(out, ignore_index=True)


def sequential_curve(results: Sequence[RunResult] | Mapping[Any, Sequence[RunResult]], y: str,
                     x: str = "iteration", **curve_options: Any) -> pd.DataFrame:
    """Align runs (e.g. seeds) on ``x`` and aggregate them (:func:`aggregate_curve`).

    ``results`` is a list of runs (one group; no ``label`` column in the output) or
    ``{label: runs}``. Options go to :func:`run_curve`. Output columns: ``[label,] x, mean,
    std, min, max, n`` where ``n`` counts the runs with data at ``x``.
    """
    grouped = isinstance(results, Mapping)
    groups = results if grouped else {"": list(results)}
    if not any(groups.values()):
        raise ValueError("sequential_curve needs at least one run")
    curves = aggregate_curve(curve_points(groups, y, x, **curve_options), x, y)
    return curves if grouped else curves.drop(columns="label")


def iterations_to_reach(metrics: pd.DataFrame, column: str, target: float, x: str = "iteration",
                        mode: str = "below") -> float:
    """First ``x`` at which ``column`` reaches ``target`` (``<=`` for ``below``, ``>=`` for ``above``).

    Returns NaN if it is never reached, so callers can report "not reached" rather than a
    misleading number. Works on a :func:`run_curve` frame (or any frame with both columns).
    """
    if mode not in ("below", "above"):
        raise ValueError(f"mode must be 'below' or 'above', got {mode!r}")
    if column not in metrics.columns or x not in metrics.columns:
        raise KeyError(f"no column {column!r} or {x!r}; columns: {list(metrics.columns)}")
    frame = metrics[[x, column]].dropna().sort_values(x, kind="stable")
    hit = frame[column] <= target if mode == "below" else frame[column] >= target
    return float(frame.loc[hit, x].iloc[0]) if bool(hit.any()) else float("nan")


def column_rows(runs: Iterable[RunResult], columns: Sequence[str], require: str, *,
                keys: Sequence[str] = ("seed",)) -> pd.DataFrame:
    """The rows of every run that logs ``require`` (e.g. PASO's ``accepted``), with the
    ``columns`` it has and the run's ``keys`` from its config in front. Runs without the
    column contribute nothing: the reader tests for the column, not for the method."""
    parts = []
    for r in runs:
        rows = rows_for(r.metrics, require)
        if require not in rows.columns:
            continue
        frame = rows.reindex(columns=list(columns)).loc[rows[require].notna()].copy()
        for i, key in enumerate(keys):
            frame.insert(i, key, r.config.get(key))
        parts.append(frame)
    if not parts:
        return pd.DataFrame(columns=[*keys, *columns])
    return pd.concat(parts, ignore_index=True)
