"""Vanilla Adam vs OptEx vs PASO on synthetic functions, behind ``notebooks/optex_comparison.ipynb``.

The notebook stays thin: a ``parameters`` cell, then one call into this module per cell.
Keeping the logic here means the parts a reader has to trust (which preset fills which
value, which options each method gets, how "iterations to vanilla's gap" and the speed-up
are computed, what the comparison text says) are unit-tested without a kernel.

Flow:

1. :func:`resolve_params` fills the ``None`` parameters from a scale preset (``smoke`` /
   ``default`` / ``paper``); explicit ``papermill -p`` values win.
2. :func:`prepare` validates every planned run (:func:`plan_runs`) before any training.
3. :func:`run_all` runs the plan (:func:`paso_core.experiments.common.run_plan`) and groups
   the results ``{function: {method: [run per seed]}}``.
4. :func:`gap_curves` / :func:`plot_gaps` (log10 optimality gap against sequential
   iterations), :func:`results_table` (final gap, K, iterations to vanilla's final gap,
   speed-up, G, memory; with the paper's reported Ackley rows), :func:`optex_diagnostics`
   (OptEx's GP-estimate quality and time split) and :func:`comparison` (the text, every
   number computed) turn the run directories into the notebook's outputs.

Reading runs goes through :mod:`paso_core.experiments.common`; a reader that needs OptEx's
columns tests for them, never for the method's name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import report
from ..config import ConfigError, RunConfig
from ..methods.optex import OFFICIAL_JAX
from ..runs import RunResult
from . import common

#: The three methods, in table order. ``serial`` is plain Adam ("vanilla").
METHODS = ("serial", "optex", "paso")
METHOD_LABELS = {"serial": "Vanilla (Adam)", "optex": "OptEx", "paso": "PASO"}
#: The method every speed-up is relative to (its final gap, per seed, is the target).
BASELINE = "serial"
#: The options each method takes from the notebook's parameters (``P`` is ``nproc``).
METHOD_OPTIONS = {"optex": ("P", "history", "tune_every"), "paso": ("P", "threshold", "ema_decay")}
#: What a run's one-line label shows, for the runs that have it.
LABEL_KEYS = ("function", "P")
FUNCTIONS = ("sphere", "ackley", "rosenbrock")

#: Every notebook parameter; ``None`` in the notebook means "take it from the scale preset".
PARAMETERS = ("functions", "dim", "steps", "nproc", "lr", "seeds", "threshold", "ema_decay", "rosenbrock_lr",
              "rosenbrock_clip", "history", "tune_every", "reach_rtol", "optex_variant")
#: OptEx's GP settings: ``project`` (spread normalisation, leave-one-out tuned length scale,
#: ``history``/``tune_every`` from the parameters) or the official JAX code's (:data:`OFFICIAL_JAX`).
OPTEX_VARIANTS = ("project", "official_jax")

_COMMON = dict(lr=1e-3, threshold=1e-5, ema_decay=0.999, rosenbrock_lr=1e-4, rosenbrock_clip=100.0,
               history=20, tune_every=10, reach_rtol=1e-3, optex_variant="project")
#: Scale presets: ``smoke`` for CI (under a minute), ``default`` for a 2-core CPU (a few
#: minutes), ``paper`` the seed's settings (d = 1e4, T = 1000, 8 workers; hours on 2 cores).
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(functions=["ackley"], dim=200, steps=40, nproc=2, seeds=[0], **_COMMON),
    "default": dict(functions=["sphere", "ackley", "rosenbrock"], dim=2000, steps=300, nproc=4, seeds=[0, 1],
                    **_COMMON),
    "paper": dict(functions=["sphere", "ackley", "rosenbrock"], dim=10_000, steps=1000, nproc=8, seeds=[0, 1, 2],
                  **_COMMON),
}

#: The PASO paper's numbers for this benchmark: Ackley, d = 1e4, T = 1000, Adam, 8 workers.
REPORTED_SETTING = "PASO paper, Ackley, d=1e4, T=1000, Adam, 8 workers"
REPORTED = {
    "serial": dict(gap=0.40, iters=1000, speedup=1.0),
    "optex": dict(gap=0.40, iters=162, speedup=6.17),
    "paso": dict(gap=0.40, iters=86, speedup=11.63),
}
MEASURED_SOURCE = "measured"
REPORTED_SOURCE = "reported (PASO paper)"
TABLE_NAME = "optex_comparison"
FIGURE_NAME = "optex_comparison_gap"


# =========================================================================== parameters
def _functions(value: Any) -> list[str]:
    items = [v.strip() for v in value.strip("[]() ").split(",")] if isinstance(value, str) else list(value)
    items = [str(v).strip("'\" ") for v in items if str(v).strip("'\" ")]
    bad = [v for v in items if v not in FUNCTIONS]
    if bad or not items:
        raise ConfigError(f"functions={value!r} is not valid; give a non-empty subset of: {', '.join(FUNCTIONS)}")
    return items


def resolve_params(values: Mapping[str, Any], scale: str | None = None) -> dict[str, Any]:
    """The notebook's parameters with every ``None`` filled from the scale preset.

    The scale is ``scale``, else ``$PASO_SCALE`` (CI runs nbmake with ``PASO_SCALE=smoke``),
    else ``"default"``. Explicit values override the preset; ``functions`` and ``seeds``
    also accept comma-separated strings (``papermill -p seeds 0,1``).
    """
    common.check_known(values, PARAMETERS)
    params = report.resolve_parameters({k: values.get(k) for k in PARAMETERS}, PRESETS, scale=scale)
    params["functions"] = _functions(params["functions"])
    params["seeds"] = common.seed_list("seeds", params["seeds"])
    rtol = params["reach_rtol"]
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 <= rtol < 1:
        raise ConfigError(f"reach_rtol={rtol!r} is not valid; it must be a number in [0, 1)")
    if params["optex_variant"] not in OPTEX_VARIANTS:
        raise ConfigError(f"optex_variant={params['optex_variant']!r} is not valid; choose one of: "
                          f"{', '.join(OPTEX_VARIANTS)}")
    fixed = [k for k in ("history", "tune_every") if values.get(k) is not None]
    if params["optex_variant"] == "official_jax" and fixed:
        raise ConfigError(f"{', '.join(f'{k}={values[k]!r}' for k in fixed)} cannot be combined with "
                          f"optex_variant='official_jax', which fixes {OFFICIAL_JAX}; leave them unset or use "
                          "optex_variant='project'")
    return params


# =========================================================================== planning
def run_options(params: Mapping[str, Any], function: str, method: str, seed: int) -> dict[str, Any]:
    """The flat options of one run: the shared ones (Rosenbrock gets its own lr and a
    gradient clip), the worker count (1 for vanilla, ``nproc`` = ``P`` for OptEx and PASO)
    and only this method's own options (:data:`METHOD_OPTIONS`)."""
    rosen = function == "rosenbrock"
    own = {k: (params["nproc"] if k == "P" else params[k]) for k in METHOD_OPTIONS.get(method, ())}
    if "history" in own and params.get("optex_variant") == "official_jax":  # the runs that take OptEx's GP options
        own.update(OFFICIAL_JAX)
    return {"method": method, "task": "synthetic", "function": function, "dim": params["dim"],
            "steps": params["steps"], "seed": seed, "optimizer": "adam", "init_range": 1.0, "progress": False,
            "lr": params["rosenbrock_lr"] if rosen else params["lr"],
            "grad_clip": params["rosenbrock_clip"] if rosen else None,
            "nproc": params["nproc"] if "P" in own else 1, **own}


def plan_runs(params: Mapping[str, Any]) -> list[RunConfig]:
    """One validated run per (function, seed, method); a seed fixes the initial point the
    three methods share."""
    return [common.planned_config(run_options(params, fn, method, seed), LABEL_KEYS)
            for fn in params["functions"] for seed in params["seeds"] for method in METHODS]


@dataclass
class Plan:
    """What the preparation cell produces: the resolved parameters and the validated runs."""

    params: dict[str, Any]
    configs: list[RunConfig]

    def describe(self) -> pd.DataFrame:
        """One row per planned run (an option a method does not take stays empty)."""
        keys = ("P", "history", "tune_every", "threshold", "ema_decay")
        rows = []
        for c in self.configs:
            flat = c.to_dict()
            rows.append({"function": c.function, "method": c.method, "seed": c.seed, "workers": c.world_size,
                         "dim": c.dim, "steps": c.steps, "lr": c.lr, "grad_clip": c.grad_clip,
                         **{k: flat.get(k) for k in keys}})
        return pd.DataFrame(rows).astype({"P": "Int64", "history": "Int64", "tune_every": "Int64"})


def prepare(values: Mapping[str, Any], scale: str | None = None) -> Plan:
    """Resolve the parameters and validate every run: bad input fails here, in seconds."""
    params = resolve_params(values, scale)
    return Plan(params=params, configs=plan_runs(params))


# =========================================================================== running
def describe_config(cfg: RunConfig | Mapping[str, Any]) -> str:
    return common.describe_config(cfg, LABEL_KEYS)


Results = dict[str, dict[str, list[RunResult]]]


def group(runs: Sequence[RunResult], functions: Sequence[str] | None = None) -> Results:
    """``{function: {method: [run per seed]}}``, functions and methods in plan order."""
    out: Results = {}
    for fn, fn_runs in common.by_key(runs, "function").items():
        methods = common.by_key(fn_runs, "method")
        out[fn] = {m: methods.get(m, []) for m in dict.fromkeys([*METHODS, *methods])}
    return {fn: out[fn] for fn in (functions or out) if fn in out}


def check_optima(results: Results) -> None:
    """The training loss is the optimality gap only when ``f* = 0``: check every run says so."""
    optima = {(r.summary.get("task_info") or {}).get("optimum") for fn in results.values()
              for runs in fn.values() for r in runs}
    if optima != {0.0}:
        raise ValueError(f"the train loss is the gap only when f* = 0; got optima {optima}")


def run_all(plan: Plan, log: Callable[[str], None] = print, runner: common.Runner | None = None) -> Results:
    """Run the plan (runs with the same worker count share a torchrun launch) and group the
    results by function and method."""
    runs = common.run_plan(plan.configs, runner=runner, log=log, describe=describe_config, headline=("final_gap",),
                           share_launches=True)  # iterations are compared, not wall time
    results = group(runs, plan.params["functions"])
    check_optima(results)
    return results


# =========================================================================== curves
def gap_curves(by_method: Mapping[str, Sequence[RunResult]]) -> pd.DataFrame:
    """Mean of ``log10(gap)`` over seeds against sequential iterations, per method.

    Every training row logs the loss at the *start* of its iteration (the state after
    ``iteration - 1`` iterations), so the curve is shifted by one and ends with the final
    gap after the last iteration.
    """
    return common.sequential_curve({m: runs for m, runs in by_method.items() if runs}, y="train_loss",
                                   x="iteration", x_offset=-1, final="final_gap", transform=np.log10)


#: The x-axis of every gap panel, with its unit.
GAP_XLABEL = "sequential iterations [count] (T vanilla, K OptEx/PASO)"
GAP_YLABEL = "optimality gap f(x) - f* [log10]"


def draw_gap(ax: Any, by_method: Mapping[str, Sequence[RunResult]], title: str, band: str = "std") -> Any:
    curves = gap_curves(by_method)
    report.plot_curves(ax, curves, labels=METHOD_LABELS, band=band)
    report.finish_axes(ax, title=title, xlabel=GAP_XLABEL, ylabel=GAP_YLABEL, integer_x=True,
                       series=report.curve_series(curves, "iteration", METHOD_LABELS),
                       note=None if not curves.empty else "no runs")
    return ax


def plot_gaps(results: Results, params: Mapping[str, Any]) -> Any:
    """One panel per function: :func:`gap_curves` with the ± std band; the setting and the
    seeds behind the means in the title."""
    import matplotlib.pyplot as plt

    fns = list(results)
    fig, axes = plt.subplots(1, len(fns), figsize=(5.2 * len(fns), 4.3), squeeze=False, layout="constrained")
    notes = []
    for ax, fn in zip(axes[0], fns):
        draw_gap(ax, results[fn], f"{fn} (d={params['dim']}, T={params['steps']}, N={params['nproc']})")
        notes.append(report.seed_note(gap_curves(results[fn])))
    lr = f"Adam lr {params['lr']:g}" + (f" (rosenbrock {params['rosenbrock_lr']:g})" if "rosenbrock" in fns else "")
    fig.suptitle(f"log10 optimality gap against sequential iterations: {lr}, N = {params['nproc']} workers, "
                 f"PASO threshold {params['threshold']:g}; " + "; ".join(dict.fromkeys(notes)))
    return fig


def curve_explorer(results: Results) -> Any | None:
    """A function picker and band toggle redrawing :func:`draw_gap`; None headless or
    without ipywidgets (see :func:`paso_core.report.widgets_module`)."""
    widgets = report.widgets_module()
    if widgets is None:
        return None
    import matplotlib.pyplot as plt
    from IPython.display import display

    band = widgets.ToggleButtons(options=["std", "range", "none"], description="band")
    pick = widgets.Dropdown(options=list(results), description="function")
    out = widgets.Output()

    def redraw(*_: Any) -> None:
        with out:
            out.clear_output(wait=True)
            _, ax = plt.subplots(figsize=(6, 4))
            draw_gap(ax, results[pick.value], pick.value, band=band.value)
            plt.show()

    pick.observe(redraw, names="value")
    band.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([widgets.HBox([pick, band]), out])
    display(box)
    return box


# =========================================================================== table
def iterations_to(run: RunResult, target: float) -> float:
    """Sequential iterations after which the run's gap is ``<= target`` (NaN: never)."""
    curve = common.run_curve(run, "train_loss", x_offset=-1, final="final_gap")
    return common.iterations_to_reach(curve, "train_loss", target)


#: Columns of :func:`results_table`, in order.
TABLE_COLUMNS = ("function", "method", "source", "final gap", "final_gap_mean", "final_gap_std", "K",
                 "iters to vanilla gap", "reached", "speed-up", "T/K", "G", "peak RSS/worker MB")


#: What the table's Markdown shows (the CSV has every column): the final gap as ``mean ± std``
#: (not its parts), the iterations K, T/K and gradient evaluations G, and the speed-up to
#: vanilla's gap with how many seeds got there; peak memory (the Python baseline, mostly) stays
#: in the CSV.
MD_COLUMNS = ("function", "method", "source", "final gap", "K", "T/K", "G", "iters to vanilla gap", "reached",
              "speed-up")


def _function_table(by_method: Mapping[str, Sequence[RunResult]], rtol: float) -> pd.DataFrame:
    runs = [r for m in by_method for r in by_method[m]]
    summary = ("final_gap", "iterations", "speedup", "grad_evals", "peak_rss_mb_max")
    table = common.run_table(runs, summary=summary)
    base = common.run_table(by_method.get(BASELINE, []), summary=("final_gap",))
    base["hit"] = [iterations_to(r, g * (1 + rtol)) for r, g in zip(by_method.get(BASELINE, []), base["final_gap"])]
    target = common.baseline_values(table, base, "final_gap") * (1 + rtol)
    table["hit"] = [iterations_to(r, t) if math.isfinite(t) else float("nan") for r, t in zip(runs, target)]
    hit = table["hit"].where(table["hit"] != 0)  # reached at the start: no speed-up to speak of
    table["speed"] = common.baseline_values(table, base, "hit") / hit
    table["reached"] = np.isfinite(table["hit"]).astype(int)
    agg = common.aggregate(table, "method", [*summary, "hit", "speed"])
    agg["reached"] = table.groupby("method", sort=False)["reached"].sum().to_numpy()
    return pd.DataFrame({
        "method": [METHOD_LABELS.get(m, m) for m in agg["method"]], "source": MEASURED_SOURCE,
        "final gap": [common.format_pm(m, s, ".4g", n, t) for m, s, n, t in zip(
            agg["final_gap_mean"], agg["final_gap_std"], agg["final_gap_n"], agg["n_runs"])],
        "final_gap_mean": agg["final_gap_mean"], "final_gap_std": agg["final_gap_std"],
        "K": agg["iterations_mean"], "iters to vanilla gap": agg["hit_mean"],
        "reached": [f"{k}/{n}" for k, n in zip(agg["reached"], agg["n_runs"])],
        "speed-up": agg["speed_mean"], "T/K": agg["speedup_mean"], "G": agg["grad_evals_mean"],
        "peak RSS/worker MB": agg["peak_rss_mb_max_mean"],
    })


def reported_rows() -> pd.DataFrame:
    """The paper's Ackley numbers as table rows (the rest empty: not stated)."""
    return pd.DataFrame([{"function": "ackley", "method": METHOD_LABELS[m], "source": REPORTED_SOURCE,
                          "final gap": f"≈{rep['gap']}", "final_gap_mean": rep["gap"],
                          "iters to vanilla gap": rep["iters"], "speed-up": rep["speedup"],
                          "T/K": float("nan"), "K": float("nan")} for m, rep in REPORTED.items()])


def results_table(results: Results, params: Mapping[str, Any]) -> pd.DataFrame:
    """Per function and method, over seeds (:data:`common.STD_NOTE`): final gap; ``K``
    (``T`` for vanilla); iterations to reach vanilla's final gap *of the same seed* (within
    a relative ``reach_rtol``); speed-up = vanilla's iterations to that gap / the method's,
    per seed, then the mean (empty: not reached); ``T/K``; gradient evaluations ``G``; peak
    resident memory of the largest worker. The paper's Ackley rows follow the measured ones.
    """
    parts = []
    for fn, by_method in results.items():
        part = _function_table(by_method, float(params["reach_rtol"]))
        part.insert(0, "function", fn)
        parts.append(part)
        if fn == "ackley":
            parts.append(reported_rows())
    if not parts:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    return pd.concat(parts, ignore_index=True).reindex(columns=list(TABLE_COLUMNS))


def table_title(params: Mapping[str, Any]) -> str:
    return (f"Vanilla vs OptEx vs PASO ({params['scale']} scale: d={params['dim']}, T={params['steps']}, "
            f"N={params['nproc']}, seeds={params['seeds']})")


def table_notes(params: Mapping[str, Any]) -> str:
    return (f"Speed-up = vanilla iterations to vanilla's final gap (within {params['reach_rtol']:g} relative) / "
            "the method's, per seed, then mean; empty = not reached. "
            f"Reported rows: {REPORTED_SETTING}. Spread: {common.STD_NOTE}.")


# =========================================================================== OptEx internals
#: OptEx's per-iteration columns the diagnostics read, from every run that logs them.
DIAGNOSTIC_COLUMNS = ("grad_est_cosine", "grad_est_cosine_max", "grad_est_relerr", "lengthscale",
                      "time_compute_s", "time_proxy_s", "time_comm_s")


def optex_diagnostics(results: Results) -> pd.DataFrame:
    """Per function and seed, of the runs that log OptEx's GP estimate (``grad_est_cosine``):
    the mean and max cosine distance between the estimate that drove each proxy step and
    the true gradient later computed there, the mean relative error, the final length
    scale, and the time split (each iteration's maximum over workers, summed)."""
    runs = [r for by_method in results.values() for runs in by_method.values() for r in runs]
    rows = common.column_rows(runs, DIAGNOSTIC_COLUMNS, require="grad_est_cosine", keys=("function", "seed"))
    columns = ["function", "seed", "grad_est_cosine (mean)", "grad_est_cosine (max)", "grad_est_relerr (mean)",
               "lengthscale (final)", "time_compute_s", "time_proxy_s", "time_comm_s"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    g = rows.groupby(["function", "seed"], sort=False)
    out = pd.DataFrame({
        "grad_est_cosine (mean)": g["grad_est_cosine"].mean(), "grad_est_cosine (max)": g["grad_est_cosine_max"].max(),
        "grad_est_relerr (mean)": g["grad_est_relerr"].mean(), "lengthscale (final)": g["lengthscale"].last(),
        "time_compute_s": g["time_compute_s"].sum(), "time_proxy_s": g["time_proxy_s"].sum(),
        "time_comm_s": g["time_comm_s"].sum(),
    }).reset_index()
    return out[columns]


# =========================================================================== text
def _measured(table: pd.DataFrame, fn: str, method: str, col: str) -> float:
    sel = table[(table["function"] == fn) & (table["method"] == METHOD_LABELS[method])
                & (table["source"] == MEASURED_SOURCE)]
    return float(sel[col].iloc[0]) if len(sel) else float("nan")


def _speed(v: float) -> str:
    return f"{v:.2f}x" if math.isfinite(v) else "not reached"


def comparison(table: pd.DataFrame, diagnostics: pd.DataFrame, params: Mapping[str, Any]) -> str:
    """Markdown: where our numbers and the paper's agree or differ, every number from ``table``
    and ``diagnostics`` (nothing typed in but the paper's own numbers)."""
    N = params["nproc"]
    official = params.get("optex_variant") == "official_jax"
    gp = (f"the official JAX code's settings: T0={OFFICIAL_JAX['history']}, fixed length scale "
          f"{OFFICIAL_JAX['lengthscale']}, inputs divided by the mean of √‖x_j‖, zero estimate on the first "
          "iteration" if official else
          f"T0={params['history']}, length scale re-tuned every {params['tune_every']} iterations")
    lines = [f"**Variant measured.** OptEx here is the algorithm (proxy rollout of N-1 steps with the "
             f"Matérn-5/2 GP-mean gradient, N true gradients in parallel, last worker kept; {gp}), not the public "
             f"PyTorch port, whose workers all evaluate the same point. What the GP estimate contributes is "
             f"measured in `notebooks/optex_ablation.ipynb`."]
    functions = list(dict.fromkeys(table.loc[table["source"] == MEASURED_SOURCE, "function"]))
    for fn in functions:
        ox, ps = _measured(table, fn, "optex", "speed-up"), _measured(table, fn, "paso", "speed-up")
        og, pg, vg = (_measured(table, fn, m, "final_gap_mean") for m in ("optex", "paso", "serial"))
        o, p = (v if math.isfinite(v) else 0.0 for v in (ox, ps))
        faster = "PASO needs" if p > o else ("OptEx needs" if o > p else "neither method needs")
        lines.append(f"**{fn}.** Speed-up to vanilla's final gap: OptEx {_speed(ox)}, PASO {_speed(ps)} with N={N} "
                     f"(OptEx's ceiling is N={N}: it advances exactly N steps per iteration); {faster} fewer "
                     f"sequential iterations. Final gaps: vanilla {vg:.4g}, OptEx {og:.4g}, PASO {pg:.4g} "
                     f"({100 * (og / vg - 1):+.2g} % and {100 * (pg / vg - 1):+.2g} % vs vanilla).")
    if "ackley" in functions:
        ox, ps = _measured(table, "ackley", "optex", "speed-up"), _measured(table, "ackley", "paso", "speed-up")
        vg = _measured(table, "ackley", "serial", "final_gap_mean")
        tk = _measured(table, "ackley", "paso", "T/K")
        rep_o, rep_p = REPORTED["optex"]["speedup"], REPORTED["paso"]["speedup"]
        same_order = (ps > ox) == (rep_p > rep_o)
        lines.append(
            f"**Ackley vs the paper.** Paper (N=8): OptEx {rep_o}x ({rep_o / 8:.0%} of N), PASO {rep_p}x "
            f"({rep_p / 8:.0%} of N), gap ≈ {REPORTED['serial']['gap']}. Ours (N={N}): OptEx {_speed(ox)} "
            f"({ox / N:.0%} of N), PASO {_speed(ps)} ({ps / N:.0%} of N), vanilla final gap {vg:.3g}. "
            f"The ordering of the two methods {'agrees with' if same_order else 'differs from'} the paper's.")
        cos = diagnostics.loc[diagnostics["function"] == "ackley", "grad_est_cosine (mean)"].astype(float).mean()
        lines.append(
            f"*OptEx.* Its mean cosine distance between estimated and true gradients on Ackley is {cos:.2g}: "
            + ("the GP extrapolates Adam's short, almost straight steps very accurately, so the proxy rollout "
               "nearly equals vanilla and OptEx gets close to its ceiling of N. "
               if cos < 0.01 else "the estimate is visibly off, so proxy steps drift from vanilla. ")
            + (f"The paper's {rep_o}x of 8 suggests a less accurate estimate or a different iteration count "
               "there: the seed says it ran OptEx's own source code without saying which version (the JAX "
               "code normalises inputs by a common norm factor and tunes differently; the PyTorch port does "
               "no proxy steps at all) or how iterations were counted. "
               if ox / N > rep_o / 8 else f"This is at or below the paper's {rep_o / 8:.0%} of N. "))
        lines.append(
            "*PASO.* " + (f"A speed-up above N ({ps:.2f}x > {N}) means PASO's accepted-with-tolerance trajectory "
                          f"reached vanilla's final gap in fewer than T sequential steps: it is approximate, not a "
                          f"faster exact solver. " if ps > N else
                          f"{_speed(ps)} ≤ N: PASO accepted on average {tk / N:.0%} of each window under the adaptive "
                          f"tolerance (T/K = {tk:.2f}). ")
            + (f"PASO advances at most P steps per iteration, so the paper's {rep_p}x with P = 8 is only possible "
               "if its tolerance-accepted trajectory reached gap 0.40 in fewer than 1000 sequential steps, or if "
               "its iterations were counted differently; we cannot tell which from the paper."))
        diffs = []
        if params["dim"] != 10_000:
            diffs.append(f"d = {params['dim']} instead of 10 000")
        if params["steps"] != 1000:
            diffs.append(f"T = {params['steps']} instead of 1000: runs stop earlier, so vanilla's "
                         f"final gap, the speed-up target, is {vg:.3g} rather than ≈ 0.40")
        if N != 8:
            diffs.append(f"N = {N} workers instead of 8 (speed-ups scale with N; compare the % of N)")
        if len(params["seeds"]) < 3:
            diffs.append(f"only {len(params['seeds'])} seed(s)")
        lines.append("*Why numbers can differ.* " + "; ".join(diffs + [
            "the paper does not state its exact function definitions, scales or init beyond U[-1, 1] "
            "(we use Ackley with a=20, b=0.2, c=2π and f* = 0)",
            f"PASO's tolerance adapts (threshold {params['threshold']:g}, ema {params['ema_decay']}) and its accepted "
            "prefix depends on that schedule",
            "OptEx's first iteration has no history: " + ("a zero estimate drives its proxy steps" if official else
                                                          "it uses worker 0's true gradient as a constant proxy"),
            "the GP uses the official JAX code's fixed length scale and input scaling" if official else
            "the GP uses 'spread' input normalisation and leave-one-out tuning on a 1e-2…1e2 grid "
            "(`-p optex_variant official_jax` runs the official JAX code's settings)",
        ]) + ".")
    return "\n\n".join(lines)
