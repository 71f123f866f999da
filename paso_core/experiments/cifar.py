"""The CIFAR-10 PASO study behind ``notebooks/cifar_paso.ipynb``, as testable functions.

The notebook stays thin: a ``parameters`` cell, then calls into this module. Keeping the
logic here means the parts a reader must trust (which preset fills which value, when the
dataset silently could have changed, which runs the numbers come from, how a speed-up is
computed) are unit-tested without starting a kernel or a process.

Flow (one function per notebook cell):

1. :func:`resolve_params` fills the ``None`` parameters from a scale preset
   (``smoke`` / ``default`` / ``paper``); explicit ``papermill -p`` values win.
2. :func:`prepare` checks every planned run with :func:`paso_core.validate` *before any
   training*, resolves the dataset (:func:`resolve_dataset`: CIFAR-10 if it is on disk or
   can be downloaded, otherwise the bundled ``digits`` with a loud explanation at the
   smoke/default scales and an error at ``paper`` scale, never a silent substitution) and
   returns the run plan (:func:`plan_runs`).
3. :func:`run_all` runs the plan (:func:`paso_core.experiments.common.run_plan`): serial,
   PASO, naive DP and DDP per seed, then the PASO sweep over ``threshold`` and ``ema_decay``.
4. :func:`results_table`, :func:`curves`, :func:`paso_dynamics`, :func:`tradeoff_table`,
   the ``plot_*`` functions and :func:`discussion` turn run directories into the table,
   the figures and a text whose every number is computed, not typed in.

Reading runs goes through the shared layer :mod:`paso_core.experiments.common` (training
time, mean ± std over seeds, curves from the metrics schema); no reader here looks at a
run's method to decide what to read: a PASO-only column is tested for, not the method.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import report
from ..config import VISION_DATASETS, ConfigError, RunConfig
from ..runs import PACKAGE_ROOT, RunResult
from . import common
from .common import num as _num

METHODS = ("serial", "paso", "naive_dp", "ddp")
#: The method every speed-up and accuracy change is relative to (per seed).
BASELINE = "serial"
#: The options each method takes from the notebook's parameters (the others take none of
#: their own): another method's option is an error of ``RunConfig.from_dict``.
METHOD_OPTIONS = {"paso": ("P", "threshold", "ema_decay", "adaptivity")}
#: The options of the PASO sweep: a run with these in its config is a sweep point.
SWEEP_OPTIONS = ("threshold", "ema_decay")
#: What a run's one-line label shows, for the runs that have it.
LABEL_KEYS = ("P", "threshold", "ema_decay")
METHOD_LABELS = {"serial": "serial", "paso": "PASO", "naive_dp": "naive DP", "ddp": "DDP"}
METHOD_COLORS = {"serial": "black", "paso": "tab:red", "naive_dp": "tab:blue", "ddp": "tab:green"}
#: Serial and both data-parallel methods make the same updates, so their curves against
#: iterations coincide: widths, dashes and markers keep each one visible on the others.
METHOD_STYLES = {"serial": {"linestyle": "-", "linewidth": 3.0, "marker": "o"},
                 "paso": {"linestyle": "-", "linewidth": 1.2, "marker": "s"},
                 "naive_dp": {"linestyle": "--", "linewidth": 1.4, "marker": "^"},
                 "ddp": {"linestyle": ":", "linewidth": 1.8, "marker": "x"}}

#: Every notebook parameter; ``None`` in the notebook means "take it from the scale preset".
#: ``nproc`` is the devices (workers) a study may use: the data-parallel methods run on all of
#: them, PASO on the most that divide ``P`` (each holding ``P / n`` window positions; ``nproc=1``
#: is the seed's single-device mode) unless ``paso_nproc`` says otherwise; serial runs one.
PARAMETERS = (
    "P", "threshold", "ema_decay", "adaptivity", "steps", "batch_size", "lr", "optimizer",
    "model", "dataset", "data_root", "download", "nproc", "paso_nproc", "seeds", "eval_every",
    "sweep_thresholds", "sweep_ema_decays", "sweep_n_seeds", "threads_per_worker",
)

#: Scale presets. ``smoke`` is for CI (the whole notebook in about a minute), ``default``
#: fits the whole notebook into a few minutes on a 2-core CPU with the bundled digits, and
#: ``paper`` is the PASO seed's CIFAR-10 configuration (``cv_v2.py``: CNN, 60 000 steps,
#: batch 128, Adam lr 1e-3, P = 7, threshold 1e-5, ema 0.999, 8 GPUs), which needs the
#: CIFAR-10 files (or a network) and GPUs to finish in reasonable time.
#:
#: ``threads_per_worker=1`` on the CPU scales: every worker gets one thread, the CPU analogue
#: of the paper's one GPU per worker. With the launcher's default (cores / local workers),
#: serial would run two OpenMP threads on a busy 2-core machine, which was measured here
#: to make its steps 15-30x slower (thread spinning), a distortion that would flatter
#: every parallel method's wall-clock speed-up.
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "P": 4, "threshold": 1e-5, "ema_decay": 0.999, "adaptivity": "mean", "steps": 16,
        "batch_size": 32, "lr": 1e-3, "optimizer": "adam", "model": "cnn", "dataset": "digits",
        "data_root": None, "download": False, "nproc": 2,
        "paso_nproc": None, "seeds": [0], "eval_every": 8,
        "sweep_thresholds": [1e-5, 1e-1], "sweep_ema_decays": [], "sweep_n_seeds": 1,
        "threads_per_worker": 1,
    },
    "default": {
        "P": 4, "threshold": 1e-5, "ema_decay": 0.999, "adaptivity": "mean", "steps": 300,
        "batch_size": 64, "lr": 1e-3, "optimizer": "adam", "model": "cnn", "dataset": "digits",
        "data_root": None, "download": False, "nproc": 2,
        "paso_nproc": None, "seeds": [0, 1, 2], "eval_every": 30,
        "sweep_thresholds": [1e-5, 1e-2, 1e-1, 1.0], "sweep_ema_decays": [0.99, 1.0],
        "sweep_n_seeds": 1, "threads_per_worker": 1,
    },
    "paper": {
        "P": 7, "threshold": 1e-5, "ema_decay": 0.999, "adaptivity": "mean", "steps": 60_000,
        "batch_size": 128, "lr": 1e-3, "optimizer": "adam", "model": "cnn", "dataset": "cifar10",
        "data_root": None, "download": True, "nproc": 8,
        "paso_nproc": None, "seeds": [0], "eval_every": 2000,
        "sweep_thresholds": [1e-6, 1e-5, 1e-4], "sweep_ema_decays": [0.99], "sweep_n_seeds": 1,
        "threads_per_worker": None,
    },
}

ARTIFACT_STEM = "cifar_paso"


# =========================================================================== parameters
def resolve_params(values: Mapping[str, Any], scale: str | None = None) -> dict[str, Any]:
    """The notebook's parameters with every ``None`` filled from the scale preset.

    The scale is ``scale``, else ``$PASO_SCALE`` (CI runs nbmake with ``PASO_SCALE=smoke``
    because nbmake cannot pass parameters), else ``"default"``. Explicit values (papermill
    ``-p``) override the preset; list parameters also accept comma-separated strings.
    Scalar values are *not* coerced: ``P="7"`` stays a string so that validation names it.
    """
    common.check_known(values, PARAMETERS)
    params = report.resolve_parameters({k: values.get(k) for k in PARAMETERS}, PRESETS, scale=scale)
    params["seeds"] = common.seed_list("seeds", params["seeds"])
    params["sweep_thresholds"] = report.parse_list("sweep_thresholds", params["sweep_thresholds"], float)
    params["sweep_ema_decays"] = report.parse_list("sweep_ema_decays", params["sweep_ema_decays"], float)
    n = params["sweep_n_seeds"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"sweep_n_seeds={n!r} is not valid; it must be an integer >= 0 "
                          "(how many of the first seeds the threshold/ema sweep runs)")
    tpw = params["threads_per_worker"]
    if tpw is not None and (isinstance(tpw, bool) or not isinstance(tpw, int) or tpw < 1):
        raise ConfigError(f"threads_per_worker={tpw!r} is not valid; it must be an integer >= 1 (or None)")
    if not isinstance(params["download"], bool):
        raise ConfigError(f"download={params['download']!r} is not valid; it must be True or False")
    return params


def default_data_root() -> Path:
    """``$PASO_DATA``, else the checkout's git-ignored ``data/``, else ``./data``."""
    env = os.environ.get("PASO_DATA")
    if env:
        return Path(env)
    checkout = PACKAGE_ROOT.parent
    if (checkout / "pyproject.toml").exists():
        return checkout / "data"
    return Path.cwd() / "data"


# =========================================================================== dataset
@dataclass
class DatasetChoice:
    """Which dataset the runs use, and why; ``message`` is printed by the notebook as is."""

    requested: str
    dataset: str
    data_root: str | None
    fallback: bool
    message: str


#: Scales at which a missing CIFAR-10 falls back to the bundled digits (loudly). At
#: ``paper`` scale the point is the paper's CIFAR-10 numbers, and hours of digits training
#: that ends with exit status 0 would be mistaken for them, so a missing dataset is an error.
FALLBACK_SCALES = ("smoke", "default")


def resolve_dataset(params: Mapping[str, Any]) -> DatasetChoice:
    """CIFAR-10 if its files are under ``data_root`` (or can be downloaded), else ``digits``
    at the scales of :data:`FALLBACK_SCALES` and a :class:`ConfigError` at the others.

    Why a fallback at all: the notebook must run offline on a small CPU machine, yet a run
    that quietly trained on something else than it claims would be worse than a failure.
    So the fallback is explicit: ``fallback=True`` and a message that says, in capitals,
    that the numbers are *not* CIFAR-10 numbers and how to get CIFAR-10. The download is
    done here, once, in the notebook's process, so that the P workers never race on it.
    """
    from ..tasks.layouts import CIFAR_LAYOUT, cifar10_problem, find_cifar10_dir

    requested = params["dataset"]
    if requested not in VISION_DATASETS:
        raise ConfigError(f"dataset={requested!r} is not valid; choose one of: {', '.join(VISION_DATASETS)}")
    if requested == "digits":
        return DatasetChoice("digits", "digits", None, False,
                             "Dataset: scikit-learn's bundled 'digits' (1797 grayscale 8x8 images, 10 "
                             "classes), as requested. These are NOT CIFAR-10 results; run with "
                             "-p dataset cifar10 (or -p scale paper) for CIFAR-10.")
    root = Path(params["data_root"]).expanduser() if params.get("data_root") else default_data_root()
    problem = cifar10_problem(root)
    download_note = ""
    if problem is not None and params.get("download"):
        from ..tasks.vision_data import load_cifar10

        try:
            load_cifar10(root, download=True)
            problem = cifar10_problem(root)
        except Exception as exc:  # any network/disk failure leads to the same, explained outcome
            download_note = f"; downloading it failed ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    if problem is None:
        return DatasetChoice("cifar10", "cifar10", str(root), False,
                             f"Dataset: CIFAR-10 from {find_cifar10_dir(root)} (torchvision layout).")
    how = f"put {CIFAR_LAYOUT} under data_root (now {str(root)!r}) or pass -p data_root <dir>"
    if not params.get("download"):
        how += ", or pass -p download True on a machine with a network"
    scale = params.get("scale")
    if scale not in FALLBACK_SCALES:
        raise ConfigError(
            f"scale={scale!r} runs on CIFAR-10, but {problem}{download_note}. To use CIFAR-10: {how}. "
            f"Or pass -p scale default (or smoke) to run offline on the bundled digits instead.")
    message = (
        "WARNING: CIFAR-10 IS NOT USED IN THIS NOTEBOOK. dataset='cifar10' was requested, but "
        f"{problem}{download_note}. Falling back to scikit-learn's bundled 'digits' dataset "
        "(1797 grayscale 8x8 images, 10 classes). Every table, figure and number below is "
        "measured on DIGITS, not CIFAR-10, and cannot be compared with the paper's CIFAR-10 "
        f"accuracies. To use CIFAR-10: {how}."
    )
    return DatasetChoice("cifar10", "digits", None, True, message)


def with_dataset(params: Mapping[str, Any], choice: DatasetChoice) -> dict[str, Any]:
    """``params`` with the dataset actually used (and its root) in place of the requested one."""
    out = dict(params)
    out.update({"requested_dataset": choice.requested, "dataset": choice.dataset,
                "data_root": choice.data_root, "dataset_fallback": choice.fallback})
    return out


# =========================================================================== planning
def sweep_points(params: Mapping[str, Any]) -> list[tuple[float, float]]:
    """(threshold, ema_decay) pairs of the PASO sweep: the main point, every threshold at the
    main ``ema_decay``, and every ``ema_decay`` at the main threshold (a cross, not a grid,
    so that each axis is read at the setting the main run uses)."""
    main = (float(params["threshold"]), float(params["ema_decay"]))
    points = [main]
    points += [(float(t), main[1]) for t in params["sweep_thresholds"]]
    points += [(main[0], float(e)) for e in params["sweep_ema_decays"]]
    unique: list[tuple[float, float]] = []
    for p in points:
        if p not in unique:
            unique.append(p)
    return unique


def _base_options(params: Mapping[str, Any]) -> dict[str, Any]:
    """The options every run of the study shares (no method's own options)."""
    return {
        "task": "vision", "dataset": params["dataset"], "data_root": params.get("data_root"),
        "download": False, "model": params["model"], "optimizer": params["optimizer"],
        "lr": params["lr"], "steps": params["steps"], "batch_size": params["batch_size"],
        "eval_every": params["eval_every"], "augment": True,
        "progress": params.get("scale") == "paper", "threads_per_worker": params.get("threads_per_worker"),
    }


def run_options(params: Mapping[str, Any], method: str, seed: int, **overrides: Any) -> dict[str, Any]:
    """The flat options of one run: the shared ones, the worker count, and only this
    method's own options (:data:`METHOD_OPTIONS`; ``overrides`` replace those, e.g. a sweep's
    threshold). Workers: serial 1, PASO :func:`common.paso_workers`, DP ``nproc``."""
    nproc = {"serial": 1, "paso": common.paso_workers(params)}.get(method, params["nproc"])
    own = {k: params[k] for k in METHOD_OPTIONS.get(method, ())}
    unknown = sorted(set(overrides) - set(own))
    if unknown:
        raise ConfigError(f"{unknown} are not options of method={method!r} in this study")
    return {**_base_options(params), "method": method, "seed": seed, "nproc": nproc, **own, **overrides}


def plan_runs(params: Mapping[str, Any]) -> list[RunConfig]:
    """Every run the notebook makes, each checked by :func:`paso_core.validate`.

    Per seed: serial, PASO (main setting), naive DP and DDP. Then the PASO sweep
    (:func:`sweep_points`) on the first ``sweep_n_seeds`` seeds, minus the runs already
    planned. Validation happens here, before any training, so bad input (``P=0``,
    ``P="7"``, an unknown model, a batch that ``nproc`` does not divide) fails in the
    first cell after the parameters with the message of :class:`ConfigError`.
    """
    planned: list[dict[str, Any]] = []
    for seed in params["seeds"]:
        planned += [run_options(params, method, seed) for method in METHODS]
    for seed in params["seeds"][:params["sweep_n_seeds"]]:
        planned += [run_options(params, "paso", seed, threshold=threshold, ema_decay=ema)
                    for threshold, ema in sweep_points(params)]
    unique = [options for i, options in enumerate(planned) if options not in planned[:i]]
    return [common.planned_config(options, LABEL_KEYS) for options in unique]


@dataclass
class Plan:
    """What the validation cell produces: parameters, the dataset decision, the runs."""

    params: dict[str, Any]
    dataset: DatasetChoice
    configs: list[RunConfig]

    def describe(self) -> pd.DataFrame:
        """One row per planned run, so the reader sees what will run before it runs (an
        option a method does not take stays empty)."""
        rows = []
        for c in self.configs:
            flat = c.to_dict()
            rows.append({"method": c.method, "seed": c.seed, "workers": c.world_size,
                         **{k: flat.get(k) for k in LABEL_KEYS},
                         "dataset": c.dataset, "model": c.model, "steps": c.steps, "batch_size": c.batch_size})
        return pd.DataFrame(rows).astype({"P": "Int64"})


def prepare(values: Mapping[str, Any], scale: str | None = None) -> Plan:
    """Resolve, validate and plan, in the order that fails fastest on bad input.

    Every run is validated once on ``digits`` *before* the dataset is resolved, so a typo
    in ``P`` or ``model`` is reported before a possibly long CIFAR-10 download; the plan
    is then built again on the dataset actually used (which validates the data root too).
    """
    params = resolve_params(values, scale)
    if params["dataset"] not in VISION_DATASETS:
        raise ConfigError(f"dataset={params['dataset']!r} is not valid; choose one of: "
                          f"{', '.join(VISION_DATASETS)}")
    plan_runs({**params, "dataset": "digits", "data_root": None})
    choice = resolve_dataset(params)
    params = with_dataset(params, choice)
    return Plan(params=params, dataset=choice, configs=plan_runs(params))


# =========================================================================== running
def describe_config(cfg: RunConfig | Mapping[str, Any]) -> str:
    """A short human label of a run: method, seed, workers and, for the runs that take
    them, ``P``, ``threshold`` and ``ema_decay``."""
    return common.describe_config(cfg, LABEL_KEYS)


def run_all(configs: Sequence[RunConfig], log: Callable[[str], None] = print,
            runner: common.Runner | None = None) -> list[RunResult]:
    """Run the plan in order, one torchrun job at a time (:func:`common.run_plan`).

    A run whose loss becomes NaN/inf (possible for a loose PASO threshold) is kept as a
    partial result with ``status='nonfinite'`` so the sweep still reports it; any other
    failure stops the notebook with the worker's error.
    """
    return common.run_plan(configs, runner=runner, log=log, describe=describe_config,
                           headline=("final_test_accuracy",), keep_nonfinite=True)


# =========================================================================== grouping
def is_main_setting(result: RunResult, params: Mapping[str, Any]) -> bool:
    """Whether the run is at the main setting: each sweep option (:data:`SWEEP_OPTIONS`) it
    has equals the main value. Runs without them (serial, data parallel) always are."""
    c = result.config
    return all(float(c[k]) == float(params[k]) for k in SWEEP_OPTIONS if c.get(k) is not None)


def main_results(results: Sequence[RunResult], params: Mapping[str, Any]) -> dict[str, list[RunResult]]:
    """``{method: runs over seeds}`` of the head-to-head comparison (PASO at its main setting)."""
    groups = common.by_key([r for r in results if r.config.get("seed") in params["seeds"]
                            and is_main_setting(r, params)], "method")
    return {m: groups[m] for m in [*METHODS, *groups] if m in groups and groups[m]}


def is_sweep_run(result: RunResult) -> bool:
    """Whether the run has the sweep's options (a PASO run), read from its config."""
    return all(result.config.get(k) is not None for k in SWEEP_OPTIONS)


def sweep_results(results: Sequence[RunResult], params: Mapping[str, Any]) -> list[RunResult]:
    """The runs with the sweep's options on the sweep seeds (the main setting included),
    for :func:`tradeoff_table`."""
    seeds = params["seeds"][:params["sweep_n_seeds"]]
    return [r for r in results if is_sweep_run(r) and r.config.get("seed") in seeds]


def _group(results: Sequence[RunResult] | Mapping[str, Sequence[RunResult]]) -> dict[str, list[RunResult]]:
    if isinstance(results, Mapping):
        return {k: list(v) for k, v in results.items()}
    return common.by_key(results, "method")


# =========================================================================== tables
#: The summary values the tables read (every method's summary has them, PASO's ``final_threshold`` aside).
SUMMARY_KEYS = ("final_test_accuracy", "final_test_f1", "steps", "iterations", "grad_evals", "items_consumed",
                "wall_time_s", "peak_rss_mb_max", "world_size", "speedup", "overhead", "final_threshold")


def _sent_mb_max(run: RunResult) -> float:
    """The most payload any worker sent, in MiB."""
    return max(run.summary.get("bytes_sent_per_rank") or [float("nan")]) / 2**20


def run_table(runs: Sequence[RunResult]) -> pd.DataFrame:
    """One row per run with what the tables aggregate (:func:`common.run_table`)."""
    return common.run_table(runs, config=("method", "seed", "nproc", *LABEL_KEYS), summary=SUMMARY_KEYS,
                            derived={"sent_mb_max": _sent_mb_max})


#: Columns of :func:`results_table`, in order.
RESULTS_COLUMNS = (
    "method", "workers", "seeds", "test_accuracy", "test_f1_macro", "test_accuracy_mean", "test_accuracy_std",
    "test_f1_mean", "test_f1_std", "steps", "sequential_iterations", "grad_evals", "images_consumed",
    "train_time_s_mean", "train_time_s_std", "worker_wall_time_s", "speedup_iterations", "speedup_wall",
    "peak_rss_mb_per_worker", "sent_mb_per_worker_max",
)


#: What the results table's Markdown shows (the CSV has every column): who ran, how many
#: seeds, accuracy with its spread (the ``mean ± std`` string, not its parts), iterations and
#: gradient evaluations, training time, both speed-ups, and the bytes a worker sent.
RESULTS_MD_COLUMNS = (
    "method", "workers", "seeds", "test_accuracy", "sequential_iterations", "grad_evals", "train_time_s_mean",
    "speedup_iterations", "speedup_wall", "sent_mb_per_worker_max",
)


def results_table(results: Sequence[RunResult] | Mapping[str, Sequence[RunResult]]) -> pd.DataFrame:
    """The head-to-head table: one row per method, statistics over seeds (:data:`common.STD_NOTE`).

    ``results`` is ``{method: runs}`` (see :func:`main_results`) or a flat list grouped by
    method. Speed-ups are relative to serial *of the same seed* and then averaged, so seed
    to seed variation in timing does not leak into the ratio. ``speedup_iterations`` is
    serial's sequential iterations over the method's (``T/K`` for PASO, 1 for data
    parallelism, which still takes one step per iteration); ``speedup_wall`` is the same
    ratio of the training time (:func:`common.training_time`: every iteration's time,
    setup and evaluations excluded). ``worker_wall_time_s`` is the whole worker lifetime
    (data loading to final evaluation) for reference. Peak memory is the largest resident
    set of any worker (mean over seeds); ``sent_mb_per_worker_max`` the most payload any
    worker sent.
    """
    groups = {k: v for k, v in _group(results).items() if v}
    if not groups:
        return pd.DataFrame(columns=list(RESULTS_COLUMNS))
    table = pd.concat([run_table(runs).assign(group=key) for key, runs in groups.items()], ignore_index=True)
    base = run_table(groups.get(BASELINE, []))
    table["speedup_iterations"] = common.baseline_values(table, base, "iterations") / table["iterations"]
    table["speedup_wall"] = common.baseline_values(table, base, "train_time_s") / table["train_time_s"]
    values = ["final_test_accuracy", "final_test_f1", "steps", "iterations", "grad_evals", "items_consumed",
              "train_time_s", "wall_time_s", "speedup_iterations", "speedup_wall", "peak_rss_mb_max", "sent_mb_max"]
    agg = common.aggregate(table, "group", values, first=("world_size", "nproc"))
    out = pd.DataFrame({
        "method": [METHOD_LABELS.get(g, g) for g in agg["group"]],
        "workers": [int(w) if pd.notna(w) else n for w, n in zip(agg["world_size"], agg["nproc"])],
        "seeds": agg["n_runs"],
        "test_accuracy": [common.format_pm(m, s, ".4f", n, t) for m, s, n, t in zip(
            agg["final_test_accuracy_mean"], agg["final_test_accuracy_std"], agg["final_test_accuracy_n"], agg["n_runs"])],
        "test_f1_macro": [common.format_pm(m, s, ".4f", n, t) for m, s, n, t in zip(
            agg["final_test_f1_mean"], agg["final_test_f1_std"], agg["final_test_f1_n"], agg["n_runs"])],
        "test_accuracy_mean": agg["final_test_accuracy_mean"], "test_accuracy_std": agg["final_test_accuracy_std"],
        "test_f1_mean": agg["final_test_f1_mean"], "test_f1_std": agg["final_test_f1_std"],
        "steps": agg["steps_mean"], "sequential_iterations": agg["iterations_mean"],
        "grad_evals": agg["grad_evals_mean"], "images_consumed": agg["items_consumed_mean"],
        "train_time_s_mean": agg["train_time_s_mean"], "train_time_s_std": agg["train_time_s_std"],
        "worker_wall_time_s": agg["wall_time_s_mean"],
        "speedup_iterations": agg["speedup_iterations_mean"], "speedup_wall": agg["speedup_wall_mean"],
        "peak_rss_mb_per_worker": agg["peak_rss_mb_max_mean"], "sent_mb_per_worker_max": agg["sent_mb_max_mean"],
    })
    return out[list(RESULTS_COLUMNS)]


#: What the trade-off table's Markdown shows: the setting, seeds (and failures), the
#: speed-up and the accuracy with their spread, the extra work and what the accuracy cost.
TRADEOFF_MD_COLUMNS = (
    "threshold", "ema_decay", "seeds", "failed", "speedup_T_over_K_mean", "speedup_T_over_K_std",
    "overhead_G_over_T", "test_accuracy_mean", "test_accuracy_std", "accuracy_change_vs_serial",
)


def tradeoff_table(sweep: Sequence[RunResult], serial: Sequence[RunResult] = ()) -> pd.DataFrame:
    """PASO's speed-up ``T/K`` and final accuracy per (threshold, ema_decay), over seeds.

    ``accuracy_change_vs_serial`` subtracts serial's accuracy of the same seed (when
    ``serial`` runs are given), so the column reads directly as "what the approximation
    cost". ``failed`` counts runs that did not complete (e.g. a non-finite loss); the
    statistics are over the completed runs.
    """
    columns = ["threshold", "ema_decay", "P", "seeds", "failed", "speedup_T_over_K_mean", "speedup_T_over_K_std",
               "iterations_mean", "overhead_G_over_T", "test_accuracy_mean", "test_accuracy_std", "test_f1_mean",
               "accuracy_change_vs_serial", "final_threshold_mean", "train_time_s_mean"]
    table = run_table(sweep)
    lacking = table[table[list(SWEEP_OPTIONS)].isna().any(axis=1)]
    if not lacking.empty:
        raise ValueError(f"tradeoff_table takes PASO runs only (runs with the options {', '.join(SWEEP_OPTIONS)}); "
                         f"got a {lacking['method'].iloc[0]!r} run ({lacking['path'].iloc[0]})")
    if table.empty:
        return pd.DataFrame(columns=columns)
    for key in SWEEP_OPTIONS:
        table[key] = table[key].astype(float)
    done = table["status"] == "completed"
    table["failed"] = (~done).astype(int)
    values = ["speedup", "iterations", "overhead", "final_test_accuracy", "final_test_f1", "final_threshold",
              "train_time_s"]
    table.loc[~done, values] = np.nan
    base = run_table(serial)
    table["accuracy_change"] = table["final_test_accuracy"] - common.baseline_values(table, base, "final_test_accuracy")
    keys = list(SWEEP_OPTIONS)
    agg = common.aggregate(table, keys, [*values, "accuracy_change"], first=("P",))
    agg["failed"] = table.groupby(keys, sort=False)["failed"].sum().to_numpy()
    agg = agg.sort_values(["ema_decay", "threshold"], kind="stable").reset_index(drop=True)
    return pd.DataFrame({
        "threshold": agg["threshold"], "ema_decay": agg["ema_decay"], "P": agg["P"], "seeds": agg["n_runs"],
        "failed": agg["failed"],
        "speedup_T_over_K_mean": agg["speedup_mean"], "speedup_T_over_K_std": agg["speedup_std"],
        "iterations_mean": agg["iterations_mean"], "overhead_G_over_T": agg["overhead_mean"],
        "test_accuracy_mean": agg["final_test_accuracy_mean"], "test_accuracy_std": agg["final_test_accuracy_std"],
        "test_f1_mean": agg["final_test_f1_mean"], "accuracy_change_vs_serial": agg["accuracy_change_mean"],
        "final_threshold_mean": agg["final_threshold_mean"], "train_time_s_mean": agg["train_time_s_mean"],
    })[columns]


# =========================================================================== curves
#: The figure's curves: ``name: (y, x)``; ``x`` is a schema column, ``y`` a training or
#: evaluation column (:func:`common.rows_for`).
CURVES = {
    "loss_vs_iteration": ("train_loss", "iteration"),
    "loss_vs_wall": ("train_loss", "train_time_s"),
    "accuracy_vs_iteration": ("eval_test_accuracy", "iteration"),
    "accuracy_vs_wall": ("eval_test_accuracy", "train_time_s"),
}
#: The summary value that ends a curve: the final evaluation is not a metrics row, and
#: without it a curve would stop at the last periodic evaluation and disagree with the table.
FINAL = {"eval_test_accuracy": "final_test_accuracy"}


def curves(groups: Mapping[str, Sequence[RunResult]]) -> dict[str, pd.DataFrame]:
    """Seed-aggregated curves per method: training loss and test accuracy against sequential
    iterations and against training time (keys of :data:`CURVES`; columns ``label, x, mean,
    std, min, max, n``). Runs without a column (e.g. no evaluations) are left out."""
    groups = {k: list(v) for k, v in groups.items() if v}
    if not groups:
        return {name: pd.DataFrame() for name in CURVES}
    return {name: common.sequential_curve(groups, y, x, final=FINAL.get(y)) for name, (y, x) in CURVES.items()}


#: PASO's per-iteration bookkeeping columns, read from every run that logs ``accepted``.
DYNAMICS_COLUMNS = ("iteration", "window_start", "accepted", "threshold", "err_mean", "steps_done")


def paso_dynamics(runs: Sequence[RunResult]) -> pd.DataFrame:
    """Per-iteration bookkeeping (accepted steps, threshold, window errors) per seed, of the
    runs that log ``accepted`` (PASO's column)."""
    return common.column_rows(runs, DYNAMICS_COLUMNS, require="accepted", keys=("seed",))


# =========================================================================== figures
def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _curve_styles(markers: bool) -> dict[str, dict[str, Any]]:
    """:data:`METHOD_STYLES`, with markers only where the points are sparse (evaluations)."""
    return {m: {k: v for k, v in style.items() if markers or k != "marker"} | ({"markersize": 3} if markers else {})
            for m, style in METHOD_STYLES.items()}


#: The y-axis of each kind of curve, with its unit.
CURVE_LABELS = {"train_loss": "training loss, mini-batch cross-entropy [nats]",
                "eval_test_accuracy": "test accuracy [fraction, 0-1]"}


def plot_curves(curve_data: Mapping[str, pd.DataFrame], title: str) -> Any:
    """2x2 figure: loss and accuracy against sequential iterations and against training time.

    Every panel has its legend; curves that coincide (serial and data parallelism against
    iterations) are named in it, and the seeds behind each point are in the title, or in
    the legend where their number varies (runs that end at different times)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), layout="constrained")
    panels = {"loss_vs_iteration": axes[0, 0], "loss_vs_wall": axes[0, 1],
              "accuracy_vs_iteration": axes[1, 0], "accuracy_vs_wall": axes[1, 1]}
    notes = []
    for key, ax in panels.items():
        frame = curve_data.get(key, pd.DataFrame())
        y, x = CURVES[key]
        what = "training loss" if y == "train_loss" else "test accuracy"
        if frame.empty:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        else:
            report.plot_curves(ax, frame, x, labels=METHOD_LABELS, colors=METHOD_COLORS, alpha=0.15,
                               styles=_curve_styles(markers=key.startswith("accuracy")), drawstyle="default")
            notes.append(report.seed_note(frame))
        if y == "train_loss":
            ax.set_yscale("log")
        report.finish_axes(ax, title=f"{what} vs {common.X_AXES[x].split(' [')[0]}", xlabel=common.X_AXES[x],
                           ylabel=CURVE_LABELS[y], integer_x=x == "iteration",
                           series=report.curve_series(frame, x, METHOD_LABELS) if not frame.empty else {})
    seeds = "; ".join(dict.fromkeys(notes))
    fig.suptitle(f"{title}\n{seeds}" if seeds else title)
    return fig


def plot_paso_dynamics(dynamics: pd.DataFrame, title: str) -> Any:
    """Accepted steps per iteration, and the (adaptive) threshold against the window's mean
    error: why PASO advanced fast or slowly at each point of training."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
    for seed, part in dynamics.groupby("seed"):
        ax1.plot(part["iteration"], part["accepted"], lw=1, alpha=0.8, label=f"seed {seed}")
        line, = ax2.plot(part["iteration"], part["threshold"], lw=1.5, label=f"threshold, seed {seed}")
        if "err_mean" in part:
            ax2.plot(part["iteration"], part["err_mean"], lw=0.8, ls=":", color=line.get_color(),
                     label=f"mean window error, seed {seed}")
    positive = dynamics[["threshold", "err_mean"]].to_numpy(dtype=float) if not dynamics.empty else np.array([])
    if positive.size and np.nanmax(positive) > 0:
        ax2.set_yscale("symlog", linthresh=max(1e-12, np.nanmin(positive[positive > 0])))
    empty = None if not dynamics.empty else "no PASO run logged its iterations"
    report.finish_axes(ax1, title="steps accepted per iteration", xlabel="PASO iteration K [count]",
                       ylabel="steps accepted in the iteration [count]", integer_x=True, integer_y=True,
                       note=empty)
    report.finish_axes(ax2, title="threshold and the window's mean error", xlabel="PASO iteration K [count]",
                       ylabel="threshold, error [1e6 x parameter MSE]", integer_x=True, note=empty)
    fig.suptitle(title)
    return fig


def plot_tradeoff(tradeoff: pd.DataFrame, params: Mapping[str, Any], serial_accuracy: Sequence[float],
                  title: str) -> Any:
    """Speed-up T/K and final accuracy against threshold (at the main ema_decay) and
    against ema_decay (at the main threshold), plus accuracy against speed-up for every
    point, with serial's accuracy (mean ± std over seeds) as the reference band.

    The third panel names each point in its legend (its own marker), not beside it: the
    points of a sweep crowd together and their labels would overlap. The seeds behind a
    point are in its label where their number differs between points, else in the title."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), layout="constrained")
    acc_m, acc_s = common.mean_std(serial_accuracy)
    if tradeoff.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "no sweep runs (sweep_n_seeds=0)", ha="center", va="center", transform=ax.transAxes)
        fig.suptitle(title)
        return fig
    ok = tradeoff[tradeoff["failed"] < tradeoff["seeds"]]
    done = ok["seeds"] - ok["failed"]
    varies = done.nunique() > 1
    n_serial = int(np.isfinite(np.asarray(serial_accuracy, dtype=float)).sum())
    serial_label = f"serial accuracy ({report.seed_counts([n_serial])}; band: ± std)"
    axes_spec = [
        (axes[0], ok[ok["ema_decay"] == float(params["ema_decay"])], "threshold",
         f"threshold (ema_decay={params['ema_decay']:g})"),
        (axes[1], ok[ok["threshold"] == float(params["threshold"])], "ema_decay",
         f"ema_decay (threshold={params['threshold']:g})"),
    ]
    for ax, part, col, xlabel in axes_spec:
        part = part.sort_values(col)
        pos = np.arange(len(part))  # categorical axis: thresholds span decades and include 0
        ax.plot(pos, part["speedup_T_over_K_mean"], "-o", color="tab:red", label="PASO speed-up T/K")
        ax.set_xticks(pos, [f"{v:g}" + (f"\n(n={int(n)})" if varies else "")
                            for v, n in zip(part[col], part["seeds"] - part["failed"])])
        ax.set_ylabel("speed-up in iterations T/K [x]", color="tab:red")
        twin = ax.twinx()
        twin.errorbar(pos, part["test_accuracy_mean"], yerr=report.error_bars(part["test_accuracy_std"]), fmt="-s",
                      color="tab:blue", capsize=3, label="PASO test accuracy")
        if math.isfinite(acc_m):
            twin.axhline(acc_m, color="black", ls="--", lw=1, label=serial_label)
            if acc_s > 0:
                twin.axhspan(acc_m - acc_s, acc_m + acc_s, color="black", alpha=0.08)
        twin.set_ylabel("final test accuracy [fraction, 0-1]", color="tab:blue")
        report.finish_axes(ax, title=f"against {col}", xlabel=xlabel, twins=[twin], framealpha=0.7, loc="best")
    ax = axes[2]
    markers = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h")
    for i, (_, row) in enumerate(ok.iterrows()):
        n = int(row["seeds"] - row["failed"])
        ax.errorbar(row["speedup_T_over_K_mean"], row["test_accuracy_mean"],
                    yerr=report.error_bars([row["test_accuracy_std"]]), fmt=markers[i % len(markers)],
                    color=f"C{i % 10}", capsize=2, markersize=7,
                    label=f"thr={row['threshold']:g}, ema={row['ema_decay']:g}" + (f" (n={n})" if varies else ""))
    if math.isfinite(acc_m):
        ax.axhline(acc_m, color="black", ls="--", lw=1, label=f"serial, 1x ({report.seed_counts([n_serial])})")
        if acc_s > 0:
            ax.axhspan(acc_m - acc_s, acc_m + acc_s, color="black", alpha=0.08)
    report.finish_axes(ax, title="accuracy against speed-up, every sweep point", xlabel="speed-up in iterations T/K [x]",
                       ylabel="final test accuracy [fraction, 0-1]", fontsize=7)
    seeds = "" if varies or done.empty else f" (PASO: mean ± std over {int(done.iloc[0])} seed(s) per point)"
    fig.suptitle(title + seeds)
    return fig


def plot_sweep_run(run: RunResult, serial: RunResult | None) -> Any:
    """One sweep run next to serial: loss against sequential iterations, accepted steps."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 3.8), layout="constrained")
    for r in (serial, run):
        if r is None:
            continue
        method = r.config.get("method")
        curve = common.run_curve(r, "train_loss", "iteration")
        ax1.plot(curve["iteration"], curve["train_loss"], color=METHOD_COLORS.get(method), lw=1, label=_label(method))
    ax1.set_yscale("log")
    report.finish_axes(ax1, title="training loss", xlabel="sequential iterations [count]",
                       ylabel=CURVE_LABELS["train_loss"], integer_x=True)
    accepted = common.column_rows([run], ("iteration", "accepted"), require="accepted", keys=())
    ax2.plot(accepted["iteration"], accepted["accepted"], color=METHOD_COLORS.get(run.config.get("method")), lw=1)
    report.finish_axes(ax2, title="steps accepted per iteration", xlabel="PASO iteration K [count]",
                       ylabel="steps accepted [count]", integer_x=True, integer_y=True,
                       note=f"PASO, seed {run.config.get('seed')}")
    c, s = run.config, run.summary
    fig.suptitle(f"PASO threshold={c['threshold']:g}, ema_decay={c['ema_decay']:g}, seed {c.get('seed')}: "
                 f"T/K={_num(s.get('speedup')):.2f}, test accuracy {_num(s.get('final_test_accuracy')):.4f}")
    return fig


def figure_png(fig: Any, dpi: int = 90) -> bytes:
    """``fig`` as PNG bytes, and closed (so the notebook does not also display it)."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def sweep_explorer(sweep: Sequence[RunResult], serial: RunResult | None) -> Any | None:
    """A dropdown over the sweep's runs that redraws :func:`plot_sweep_run` into an image.

    Returns None without a live frontend, without ipywidgets, or for an empty sweep
    (see :func:`paso_core.report.widgets_module`); the notebook
    then draws the main run statically. Why an ``Image`` widget fed with PNG bytes and not
    an ``Output`` widget: headless executors (papermill, nbmake via nbclient) emulate
    ``Output`` widgets by exchanging comm messages with the kernel, and that emulation was
    seen to stall cell execution for minutes here (cf. jupyter/nbclient#312); an image is
    plain widget state, so the first drawing is simply stored in the notebook.
    """
    widgets = report.widgets_module()
    if widgets is None:
        return None
    ordered = sorted(sweep, key=lambda r: (float(r.config["ema_decay"]), float(r.config["threshold"]),
                                           r.config["seed"]))
    if not ordered:
        return None
    options = [(f"threshold={r.config['threshold']:g}, ema_decay={r.config['ema_decay']:g}, "
                f"seed={r.config['seed']}", i) for i, r in enumerate(ordered)]
    dropdown = widgets.Dropdown(options=options, value=0, description="PASO run",
                                layout=widgets.Layout(width="480px"))
    image = widgets.Image(value=figure_png(plot_sweep_run(ordered[0], serial)), format="png")

    def redraw(change: Any) -> None:
        image.value = figure_png(plot_sweep_run(ordered[dropdown.value], serial))

    dropdown.observe(redraw, names="value")
    return widgets.VBox([dropdown, image])


# =========================================================================== text
def artifact_name(params: Mapping[str, Any], what: str) -> str:
    """``cifar_paso_<scale>_<dataset>_<model>_P<P>_<what>``: runs at other settings (``-p P 7``,
    smoke CI runs) do not overwrite each other's tables and figures."""
    return f"{ARTIFACT_STEM}_{params['scale']}_{params['dataset']}_{params['model']}_P{params['P']}{common.placement_suffix(params)}_{what}"


def artifact_config(plan: Plan) -> dict[str, Any]:
    """What is stored beside every table and figure: parameters and the dataset decision."""
    return {"params": plan.params, "dataset_message": plan.dataset.message,
            "runs": [describe_config(c) for c in plan.configs]}


def discussion(table: pd.DataFrame, tradeoff: pd.DataFrame, params: Mapping[str, Any],
               choice: DatasetChoice, cpu_count: int | None = None) -> str:
    """A Markdown discussion whose every number comes from ``table`` and ``tradeoff``.

    Why generated: typed-in results go stale the moment someone reruns the notebook with
    other parameters or on other hardware; this text follows the numbers it sits next to.
    """
    cpu_count = cpu_count or os.cpu_count() or 1
    rows = {r["method"]: r for _, r in table.iterrows()}
    lines = []
    paso, serial = rows.get(METHOD_LABELS["paso"]), rows.get(METHOD_LABELS["serial"])
    data = ("the bundled **digits** dataset (the CIFAR-10 fallback, see the warning above)" if choice.fallback
            else f"**{choice.dataset}**")
    lines.append(f"These results are for {data}, model `{params['model']}`, {params['steps']} steps of batch "
                 f"{params['batch_size']}, {params['optimizer']} lr {params['lr']:g}, {len(params['seeds'])} seed(s), "
                 f"on a machine with {cpu_count} CPU core(s)"
                 + (" and no GPU." if not _has_cuda() else " and a GPU."))
    if paso is not None and serial is not None:
        lines.append(
            f"- **Iterations.** PASO (P={params['P']}, threshold {params['threshold']:g}, ema {params['ema_decay']:g}) "
            f"needed {paso['sequential_iterations']:.0f} sequential iterations for the {serial['steps']:.0f} steps "
            f"serial takes one by one: a speed-up of **{paso['speedup_iterations']:.2f}x in iterations**, "
            f"paid for with {paso['grad_evals']:.0f} gradient evaluations instead of {serial['grad_evals']:.0f} "
            f"({paso['grad_evals'] / serial['grad_evals']:.2f}x the compute).")
        wall = paso["speedup_wall"]
        workers = int(paso["workers"]) if pd.notna(paso["workers"]) else params["P"]
        if not math.isfinite(wall):
            verdict = "The wall-clock speed-up could not be computed (missing timings)"
        elif wall >= 1:
            verdict = f"PASO was **{wall:.2f}x faster** than serial in wall time"
        else:
            verdict = f"PASO was **{1 / wall:.2f}x slower** than serial in wall time, a speed-up of {wall:.2f}x"
        lines.append(
            f"- **Wall clock.** {verdict}: {paso['train_time_s_mean']:.1f} s vs {serial['train_time_s_mean']:.1f} s of "
            "training. "
            + (f"Its {workers} workers share {cpu_count} core(s), so its {paso['grad_evals']:.0f} gradient "
               "evaluations cannot all run at once: wall time follows gradient evaluations per core plus "
               "communication, not iterations. The paper's wall-clock gains assume one accelerator per worker."
               if workers > cpu_count else
               "Each worker has its own core, so iteration savings can turn into wall-clock savings, minus "
               "the extra gradient evaluations and the communication of each iteration."))
        diff = paso["test_accuracy_mean"] - serial["test_accuracy_mean"]
        n_p, n_s = int(paso["seeds"]), int(serial["seeds"])
        sd_p, sd_s = float(paso["test_accuracy_std"]), float(serial["test_accuracy_std"])
        if min(n_p, n_s) > 1 and math.isfinite(sd_p) and math.isfinite(sd_s):
            se = math.sqrt(sd_p**2 / n_p + sd_s**2 / n_s)
            verdict = "within" if abs(diff) <= 2 * se else "outside"
            parity_text = (f"{verdict} two standard errors of the difference of the means ({2 * se:.4f}; "
                           f"seed-to-seed std: serial {sd_s:.4f}, PASO {sd_p:.4f})")
            if verdict == "outside" and diff < 0:
                parity_text += ", so at this setting the approximation cost measurable accuracy"
            elif verdict == "within":
                parity_text += ", so these seeds cannot tell the two apart"
        else:
            parity_text = "with a single seed, so no seed-to-seed spread to compare with"
        lines.append(
            f"- **Accuracy.** Final test accuracy {paso['test_accuracy']} (PASO) vs {serial['test_accuracy']} "
            f"(serial): a difference of {diff:+.4f}, {parity_text}.")
    for key in ("naive_dp", "ddp"):
        row = rows.get(METHOD_LABELS[key])
        if row is not None and serial is not None:
            lines.append(
                f"- **{METHOD_LABELS[key]}** ({int(row['workers'])} workers) splits serial's global batch of every "
                f"step, so it takes the same {row['sequential_iterations']:.0f} iterations and computes the same "
                "updates up to floating-point rounding (the test suite checks 1e-5 agreement after 10 steps; "
                "over a long run rounding differences can grow). Its final accuracy "
                f"{row['test_accuracy']} differs from serial's by "
                f"{row['test_accuracy_mean'] - serial['test_accuracy_mean']:+.4f}; its wall-clock speed-up is "
                f"{row['speedup_wall']:.2f}x.")
    if not tradeoff.empty:
        done = tradeoff[tradeoff["failed"] < tradeoff["seeds"]]
        if not done.empty:
            best = done.loc[done["speedup_T_over_K_mean"].idxmax()]
            worst = done.loc[done["test_accuracy_mean"].idxmin()]
            lines.append(
                f"- **Trade-off.** Across the sweep, T/K ranged from {done['speedup_T_over_K_mean'].min():.2f}x to "
                f"{done['speedup_T_over_K_mean'].max():.2f}x; the largest speed-up (threshold {best['threshold']:g}, "
                f"ema {best['ema_decay']:g}) ended at accuracy {best['test_accuracy_mean']:.4f}"
                + (f" ({best['accuracy_change_vs_serial']:+.4f} vs serial)"
                   if pd.notna(best["accuracy_change_vs_serial"]) else "")
                + f"; the lowest accuracy in the sweep was {worst['test_accuracy_mean']:.4f} (threshold "
                f"{worst['threshold']:g}, ema {worst['ema_decay']:g})."
                + (f" Serial's seed-to-seed standard deviation is {serial['test_accuracy_std']:.4f}; with "
                   f"{int(done['seeds'].max())} seed(s) per sweep point, accuracy differences of that size are "
                   "noise, not a cost of the approximation."
                   if serial is not None and pd.notna(serial["test_accuracy_std"]) and serial["seeds"] > 1 else ""))
        failed = tradeoff[tradeoff["failed"] > 0]
        if not failed.empty:
            lines.append(f"- {int(failed['failed'].sum())} sweep run(s) did not finish (non-finite loss): "
                         + ", ".join(f"threshold {r.threshold:g}/ema {r.ema_decay:g}" for r in failed.itertuples()))
    paper = PRESETS["paper"]
    is_paper = (choice.dataset == "cifar10" and params["steps"] >= paper["steps"] and params["model"] == "cnn")
    lines.append(
        "- **What this does not reproduce.** " + (
            "This run matches the paper's CIFAR-10 configuration in dataset, model and length."
            if is_paper else
            f"The paper's accuracy claims are for CIFAR-10 with {paper['steps']} steps of batch {paper['batch_size']} "
            f"on {paper['nproc']} GPUs (`-p scale paper`); this run ({choice.dataset}, {params['steps']} steps) "
            "checks the method's behaviour (iterations, exactness, trade-off), not those accuracies."))
    return "\n".join(lines)


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
