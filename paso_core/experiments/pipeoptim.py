"""PipeOptim's accuracy-vs-epoch curves (seed 001): plan, run, tables, figures, discussion.

What the notebook ``pipeoptim_curves`` compares, on the same stage split, batches and initial
weights: the asynchronous 1F1B methods (``pipeoptim``, ``spectrain``, ``pipedream``,
``async_nostash``; :mod:`paso_core.pipeline.async_training`) and the synchronous pipelines
with a flush (``gpipe``, ``1f1b``: the ``pp`` method with that ``pp_schedule``), each with
SGD + momentum and with AdamW. Three parts:

* **curves**: every method for ``epochs`` epochs, every seed; the asynchronous ones on the exact
  single-process simulator (a long curve at a fraction of the cost), the synchronous ones on
  ``torch.distributed.pipelining`` with one process per stage;
* **agreement**: the first epoch of every asynchronous method run twice, by the multi-process
  runtime (one torchrun rank per stage, non-blocking point-to-point) and by the simulator, to
  show on this very configuration that the simulator's curves are the runtime's;
* **text**: the same methods with AdamW on a small causal transformer, the stand-in for the
  seed's GNMT / Adam translation experiment.

Every number shown is read from the runs (``metrics.csv``, ``summary.json``, ``final.pt``);
the seed's own values, read from its figures, are in :data:`REPORTED` and labelled as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .. import report
from ..config import ConfigError, RunConfig
from ..metrics import eval_rows, train_rows
from ..runs import RunResult
from . import common

ASYNC_METHODS = ("pipeoptim", "spectrain", "pipedream", "async_nostash")
SYNC_SCHEDULES = ("gpipe", "1f1b")
METHODS = ASYNC_METHODS + SYNC_SCHEDULES
#: SpecTrain predicts with the SGD-momentum velocity only (its option check says so too).
ONLY_WITH = {"spectrain": ("momentum",)}
STUDIES = ("curves", "agreement", "text")
#: The text task's validation perplexity (exp of the mean token loss over the validation split).
TEXT_METRIC = "eval_val_ppl"

PARAMETERS = ("model", "dataset", "data_root", "stages", "optimizer", "lr", "epochs", "methods", "seeds",
              "batch_size", "momentum", "weight_decay", "lr_decay_at", "agreement_methods", "text_model",
              "text_dataset", "text_data_root", "text_steps", "text_lr", "studies")

#: The seed's schedule: ÷10 at epochs 40 and 60 of 70, as fractions of the training.
SEED_DECAY = (40 / 70, 60 / 70)

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "model": "cnn", "dataset": "digits", "data_root": None, "stages": 4, "optimizer": ["momentum", "adamw"],
        "lr": {"momentum": 0.05, "adamw": 2e-3}, "epochs": 1, "methods": list(METHODS), "seeds": [0],
        "batch_size": 128, "momentum": 0.9, "weight_decay": {"momentum": 5e-4, "adamw": 0.01},
        "lr_decay_at": list(SEED_DECAY), "agreement_methods": ["pipeoptim"], "text_model": "gpt2-tiny",
        "text_dataset": "pydoc", "text_data_root": None, "text_steps": 6, "text_lr": 2e-3,
        "studies": list(STUDIES),
    },
    # digits (bundled) with the seed's schedule shape, 12 epochs, 2 seeds: minutes on 2 CPU cores
    "default": {
        "model": "cnn", "dataset": "digits", "data_root": None, "stages": 4, "optimizer": ["momentum", "adamw"],
        "lr": {"momentum": 0.05, "adamw": 2e-3}, "epochs": 12, "methods": list(METHODS), "seeds": [0, 1],
        "batch_size": 64, "momentum": 0.9, "weight_decay": {"momentum": 5e-4, "adamw": 0.01},
        "lr_decay_at": list(SEED_DECAY), "agreement_methods": list(ASYNC_METHODS), "text_model": "gpt2-tiny",
        "text_dataset": "pydoc", "text_data_root": None, "text_steps": 150, "text_lr": 2e-3,
        "studies": list(STUDIES),
    },
    # the seed's setting: Tiny-ImageNet, 4 stages, SGDM lr 0.01 (momentum 0.9, wd 5e-4), batch 64,
    # 70 epochs, ÷10 at 40 and 60; ResNet-101 (-p model inception_v3 for its second model); the text
    # stand-in for GNMT on WikiText-2 with Adam(W) lr 3e-4, batch 64. Needs GPUs and data_root.
    "paper": {
        "model": "resnet101", "dataset": "tinyimagenet", "data_root": None, "stages": 4,
        "optimizer": ["momentum", "adamw"], "lr": {"momentum": 0.01, "adamw": 3e-4}, "epochs": 70,
        "methods": list(METHODS), "seeds": [0, 1, 2], "batch_size": 64, "momentum": 0.9,
        "weight_decay": {"momentum": 5e-4, "adamw": 0.01}, "lr_decay_at": list(SEED_DECAY),
        "agreement_methods": list(ASYNC_METHODS), "text_model": "gpt2-small", "text_dataset": "wikitext2",
        "text_data_root": None, "text_steps": 20000, "text_lr": 3e-4, "studies": list(STUDIES),
    },
}

#: Final validation top-1 (%) read from the seed's figures (Tiny-ImageNet, 4 stages, SGDM
#: lr 0.01, batch 64, 70 epochs): its Inception-V3 values per method, and "about 67-68 % for
#: all methods" for ResNet-101. XPipe's curve (≈ GPipe's) has no method here.
REPORTED = pd.DataFrame([
    {"model": "inception_v3", "method": "pipeoptim", "seed_top1": 57.3},
    {"model": "inception_v3", "method": "spectrain", "seed_top1": 57.0},
    {"model": "inception_v3", "method": "pipedream_2bw", "seed_top1": 56.8},
    {"model": "inception_v3", "method": "pipedream", "seed_top1": 56.6},
    {"model": "inception_v3", "method": "gpipe", "seed_top1": 56.1},
    *[{"model": "resnet101", "method": m, "seed_top1": 67.5, "note": "≈ 67-68 for all methods"}
      for m in ("pipeoptim", "spectrain", "pipedream", "gpipe")],
])
SEED_LEAD = "PipeOptim leads by 1-4 points mid-training (seed 001's figures)"

STYLES = {"pipeoptim": ("C3", "-", "o"), "spectrain": ("C1", "--", "s"), "pipedream": ("C0", "-.", "^"),
          "async_nostash": ("C4", ":", "v"), "gpipe": ("C2", "-", "D"), "1f1b": ("C7", "--", "x")}


# =========================================================================== parameters
def resolve_params(values: Mapping[str, Any], scale: str | None = None) -> dict[str, Any]:
    """The scale's preset with the given values on top, every list and number checked."""
    unknown = sorted(set(values) - set(PARAMETERS))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown}; valid: {', '.join(PARAMETERS)}")
    params = report.resolve_parameters(dict(values), PRESETS, scale)
    from ..config import OPTIMIZERS

    params["optimizer"] = common.names("optimizer", params["optimizer"], OPTIMIZERS)
    params["methods"] = common.names("methods", params["methods"], METHODS)
    params["agreement_methods"] = [m for m in common.names("agreement_methods", params["agreement_methods"], METHODS)
                                   if m in ASYNC_METHODS]
    params["studies"] = common.names("studies", params["studies"], STUDIES)
    params["lr"] = common.per_optimizer("lr", params["lr"], params["optimizer"])
    params["weight_decay"] = common.per_optimizer("weight_decay", params["weight_decay"], params["optimizer"])
    params["seeds"] = report.parse_list("seeds", params["seeds"], int)
    params["lr_decay_at"] = report.parse_list("lr_decay_at", params["lr_decay_at"], float)
    for name in ("stages", "epochs", "batch_size", "text_steps"):
        params[name] = common.one_int(name, params[name])
    return params


# =========================================================================== plan
@dataclass(frozen=True)
class PlannedRun:
    """One run: its part of the study, method label, optimizer, seed, engine and config."""

    study: str
    label: str
    optimizer: str
    seed: int
    engine: str
    config: RunConfig


@dataclass
class Plan:
    params: dict[str, Any]
    runs: list[PlannedRun]
    steps_per_epoch: int
    skipped: list[dict[str, str]] = field(default_factory=list)

    def describe(self) -> pd.DataFrame:
        rows = [{"study": r.study, "method": r.label, "optimizer": r.optimizer, "seed": r.seed, "engine": r.engine,
                 "processes": r.config.world_size, "steps": r.config.steps} for r in self.runs]
        return pd.DataFrame(rows).groupby(["study", "method", "optimizer", "engine", "processes", "steps"],
                                          sort=False).size().rename("runs").reset_index()


def steps_per_epoch(params: Mapping[str, Any]) -> int:
    """``training images // batch size``, as the vision task's epochs are cut (a dataset
    missing from ``data_root`` is named here, before anything is read)."""
    from ..config import dataset_problem
    from ..tasks.vision_data import load_vision_data

    problem = dataset_problem(params["dataset"], params["data_root"], None)
    if problem is not None:
        raise ConfigError(f"{problem} (or -p scale default for the bundled digits)")

    if params["dataset"] == "tinyimagenet":  # 100 000 JPEGs: count them, do not decode them
        from ..tasks.layouts import find_tinyimagenet_dir

        directory = find_tinyimagenet_dir(params["data_root"])
        n_train = sum(1 for _ in directory.glob("train/*/images/*.JPEG")) if directory else 0
    else:
        n_train = int(load_vision_data(params["dataset"], params["data_root"]).train_y.shape[0])
    if n_train < params["batch_size"]:
        raise ConfigError(f"batch_size={params['batch_size']} is larger than the {n_train} training images of "
                          f"dataset={params['dataset']!r}")
    return n_train // params["batch_size"]


def _method_options(label: str, stages: int, engine: str) -> dict[str, Any]:
    if label in SYNC_SCHEDULES:  # one micro-batch per stage: the smallest count 1F1B accepts
        return {"method": "pp", "pp_schedule": label, "microbatches": stages, "nproc": stages}
    return {"method": label, "stages": stages, "engine": engine, "nproc": stages if engine == "processes" else 1}


def _shared(params: Mapping[str, Any], optimizer: str, seed: int) -> dict[str, Any]:
    return {"optimizer": optimizer, "lr": params["lr"][optimizer], "weight_decay": params["weight_decay"][optimizer],
            "momentum": params["momentum"], "seed": seed, "progress": False, "threads_per_worker": 1}


def _vision(params: Mapping[str, Any], spe: int, epochs: int) -> dict[str, Any]:
    return {"task": "vision", "dataset": params["dataset"], "data_root": params["data_root"],
            "model": params["model"], "batch_size": params["batch_size"], "steps": epochs * spe,
            "eval_every": spe, "log_every": max(1, spe // 4), "lr_schedule": "step",
            "lr_decay_at": tuple(params["lr_decay_at"]), "split": "uniform"}


def _text(params: Mapping[str, Any]) -> dict[str, Any]:
    steps = params["text_steps"]
    return {"task": "text", "dataset": params["text_dataset"], "data_root": params["text_data_root"],
            "model": params["text_model"], "block_size": 64, "batch_size": 16, "eval_batch_size": 64,
            "steps": steps, "eval_every": max(1, steps // 6), "log_every": max(1, steps // 20),
            "lr_schedule": "cosine", "warmup_steps": max(1, steps // 10), "eval_test": False, "split": "uniform"}


def _planned(study: str, label: str, optimizer: str, seed: int, engine: str, options: dict[str, Any]) -> PlannedRun:
    options = dict(options)
    stages = options.pop("stages")
    if label in SYNC_SCHEDULES:
        options.pop("quality_every", None)
    options.update(_method_options(label, stages, engine))
    engine = "pipelining" if label in SYNC_SCHEDULES else engine
    return PlannedRun(study, label, optimizer, seed, engine, common.planned_config(options, ("optimizer",)))


def plan_runs(params: Mapping[str, Any]) -> Plan:
    """Every run of the study, validated (a bad value fails here, before any worker starts)."""
    spe = steps_per_epoch(params)
    runs: list[PlannedRun] = []
    skipped: list[dict[str, str]] = []
    stages = params["stages"]
    quality = max(1, spe // 2)

    def allowed(label: str, optimizer: str, study: str) -> bool:
        if optimizer in ONLY_WITH.get(label, (optimizer,)):
            return True
        skipped.append({"study": study, "method": label, "optimizer": optimizer,
                        "reason": f"{label} predicts with the SGD-momentum velocity only"})
        return False

    if "curves" in params["studies"]:
        for optimizer in params["optimizer"]:
            for label in params["methods"]:
                if allowed(label, optimizer, "curves"):
                    for seed in params["seeds"]:
                        options = {**_vision(params, spe, params["epochs"]), **_shared(params, optimizer, seed),
                                   "stages": stages, "quality_every": quality}
                        runs.append(_planned("curves", label, optimizer, seed, "simulator", options))
    if "agreement" in params["studies"]:
        optimizer, seed = params["optimizer"][0], params["seeds"][0]
        for label in params["agreement_methods"]:
            if allowed(label, optimizer, "agreement"):
                for engine in ("processes", "simulator"):
                    options = {**_vision(params, spe, 1), **_shared(params, optimizer, seed), "stages": stages,
                               "quality_every": quality, "log_every": 1}
                    runs.append(_planned("agreement", label, optimizer, seed, engine, options))
    if "text" in params["studies"]:
        optimizer = "adamw"
        for label in params["methods"]:
            if allowed(label, optimizer, "text"):
                options = {**_text(params), **_shared({**params, "lr": {optimizer: params["text_lr"]},
                                                        "weight_decay": {optimizer: 0.01}}, optimizer,
                                                       params["seeds"][0]),
                           "stages": stages, "quality_every": max(1, params["text_steps"] // 10)}
                runs.append(_planned("text", label, optimizer, params["seeds"][0], "simulator", options))
    return Plan(dict(params), runs, spe, skipped)


def prepare(values: Mapping[str, Any], scale: str | None = None) -> Plan:
    """Resolve the parameters and validate every run."""
    return plan_runs(resolve_params(values, scale))


def run_plan(plan: Plan, *, log: Callable[[str], None] = print) -> list[tuple[PlannedRun, RunResult]]:
    """Every run; those with the same process options share one torchrun launch."""
    from ..launch import launch_grouped

    log(f"{len(plan.runs)} runs ({plan.steps_per_epoch} steps per epoch) on process counts "
        f"{sorted({r.config.world_size for r in plan.runs})}")
    results = launch_grouped([r.config for r in plan.runs])
    return list(zip(plan.runs, results))


def of_study(results: Iterable[tuple[PlannedRun, RunResult]], study: str) -> list[tuple[PlannedRun, RunResult]]:
    return [(p, r) for p, r in results if p.study == study]


# =========================================================================== curves and tables
def curves(results: Iterable[tuple[PlannedRun, RunResult]], spe: int, column: str) -> pd.DataFrame:
    """One row per evaluation: method, optimizer, seed, epoch (steps / steps per epoch), ``column``."""
    rows = []
    for planned, result in results:
        evals = eval_rows(result.metrics)
        if column not in evals:
            continue
        for steps, value in zip(evals["steps_done"], evals[column]):
            rows.append({"method": planned.label, "optimizer": planned.optimizer, "seed": planned.seed,
                         "steps_done": int(steps), "epoch": steps / spe, column: float(value)})
    return pd.DataFrame(rows)


def accuracy_curves(results: Iterable[tuple[PlannedRun, RunResult]], spe: int) -> pd.DataFrame:
    """Top-1 accuracy in % against epoch (the evaluation split: the dataset's test/validation split)."""
    frame = curves(results, spe, "eval_test_accuracy")
    if not frame.empty:
        frame["top1"] = 100 * frame.pop("eval_test_accuracy")
    return frame


def _mean_curve(frame: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    return common.aggregate(frame, ["optimizer", "method", x], [y]).rename(
        columns={f"{y}_mean": "mean", f"{y}_std": "std", f"{y}_n": "n"})


def final_table(results: Sequence[tuple[PlannedRun, RunResult]], acc: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer and method (in :data:`METHODS` order): final and best top-1 (mean ± std
    over seeds), top-1 at mid training, and the weight versions kept per stage."""
    if acc.empty:
        return pd.DataFrame()
    last = acc.loc[acc.groupby(["optimizer", "method", "seed"])["steps_done"].idxmax()]
    best = acc.groupby(["optimizer", "method", "seed"], as_index=False)["top1"].max()
    mid_epoch = _mid_epoch(acc)
    mid = acc[acc["epoch"] == mid_epoch]
    rows = []
    for (optimizer, method), part in last.groupby(["optimizer", "method"], sort=False):
        runs = [r for p, r in results if p.label == method and p.optimizer == optimizer]
        versions = runs[0].summary.get("max_weight_versions_per_stage") if runs else None
        mean, std, n = common.mean_std_n(part["top1"])
        rows.append({
            "optimizer": optimizer, "method": method, "n_seeds": n,
            "final_top1": common.format_pm(mean, std, ".2f", n), "final_top1_mean": mean, "final_top1_std": std,
            "best_top1_mean": best[(best["optimizer"] == optimizer) & (best["method"] == method)]["top1"].mean(),
            f"top1_epoch_{mid_epoch:g}_mean": mid[(mid["optimizer"] == optimizer)
                                                 & (mid["method"] == method)]["top1"].mean(),
            "weight_versions_per_stage": "/".join(map(str, versions)) if versions else "1 (synchronous)",
            "final_train_loss_mean": float(np.mean([common.num(r.summary.get("final_train_loss")) for r in runs])),
        })
    order = {m: i for i, m in enumerate(METHODS)}
    return pd.DataFrame(rows).sort_values(["optimizer", "method"], key=lambda c: c.map(order) if c.name == "method"
                                          else c.map({o: i for i, o in enumerate(dict.fromkeys(acc["optimizer"]))}),
                                          kind="stable").reset_index(drop=True)


def _mid_epoch(acc: pd.DataFrame) -> float:
    """The first evaluated epoch at or past half of the training (the seed's "mid-training")."""
    epochs = np.sort(acc["epoch"].unique())
    return float(epochs[epochs >= epochs.max() / 2][0])


def quality_table(results: Iterable[tuple[PlannedRun, RunResult]]) -> pd.DataFrame:
    """Prediction quality ``‖Ŵ - W_backward‖ / ‖W_stale - W_backward‖`` per stage and mini-batch:
    below 1, the predicted forward weights are closer to the backward's than the stale ones."""
    rows = []
    for planned, result in results:
        for stage, points in (result.summary.get("prediction_quality") or {}).items():
            for minibatch, value in points:
                rows.append({"method": planned.label, "optimizer": planned.optimizer, "seed": planned.seed,
                             "stage": int(stage), "minibatch": int(minibatch), "quality": float(value)})
    return pd.DataFrame(rows)


def quality_summary(quality: pd.DataFrame) -> pd.DataFrame:
    if quality.empty:
        return quality
    return (quality.groupby(["optimizer", "method", "stage"])["quality"]
            .agg(median="median", q10=lambda s: s.quantile(0.1), q90=lambda s: s.quantile(0.9), n="size")
            .reset_index())


def _state(result: RunResult) -> dict[str, torch.Tensor]:
    return torch.load(result.path / "final.pt", weights_only=True)


def agreement_table(results: Sequence[tuple[PlannedRun, RunResult]]) -> pd.DataFrame:
    """Runtime against simulator for each method's first epoch: the largest loss difference
    over the steps, the largest relative parameter difference, and the runtime's time split."""
    by_key = {(p.label, p.engine): r for p, r in results}
    rows = []
    for label in dict.fromkeys(p.label for p, _ in results):
        runtime, simulator = by_key.get((label, "processes")), by_key.get((label, "simulator"))
        if runtime is None or simulator is None:
            continue
        a = train_rows(runtime.metrics).set_index("steps_done")["train_loss"]
        b = train_rows(simulator.metrics).set_index("steps_done")["train_loss"]
        sa, sb = _state(runtime), _state(simulator)
        param_diff = max(float((sa[k].double() - sb[k].double()).norm() / max(float(sb[k].double().norm()), 1e-30))
                         for k in sb if sb[k].is_floating_point())
        stages = runtime.summary.get("per_stage", [])
        rows.append({
            "method": label, "steps": len(b), "same_steps": list(a.index) == list(b.index),
            "max_abs_loss_diff": float((a - b).abs().max()), "max_rel_param_diff": param_diff,
            "runtime_wall_s": common.num(runtime.summary.get("wall_time_s")),
            "simulator_wall_s": common.num(simulator.summary.get("wall_time_s")),
            "compute_s_per_stage": "/".join(f"{s['time_compute_s']:.2f}" for s in stages),
            "wait_s_per_stage": "/".join(f"{s['time_wait_s']:.2f}" for s in stages),
            "comm_s_per_stage": "/".join(f"{s['time_comm_s']:.3f}" for s in stages),
        })
    return pd.DataFrame(rows)


def text_table(results: Sequence[tuple[PlannedRun, RunResult]], column: str = TEXT_METRIC) -> pd.DataFrame:
    rows = []
    for planned, result in results:
        evals = eval_rows(result.metrics)
        rows.append({"method": planned.label, "optimizer": planned.optimizer, "steps": result.summary.get("steps"),
                     "final_train_loss": common.num(result.summary.get("final_train_loss")),
                     column: float(evals[column].iloc[-1]) if column in evals and len(evals) else float("nan")})
    return pd.DataFrame(rows)


def text_curves(results: Sequence[tuple[PlannedRun, RunResult]], column: str = TEXT_METRIC) -> pd.DataFrame:
    return curves(results, 1, column)


def compare_reported(table: pd.DataFrame, model: str) -> pd.DataFrame:
    """Our final top-1 (this run's model and data) beside the seed's for its model, per method."""
    seed = REPORTED[REPORTED["model"] == (model if model in set(REPORTED["model"]) else "inception_v3")]
    ours = table[table["optimizer"] == "momentum"][["method", "final_top1"]] if not table.empty else pd.DataFrame(
        columns=["method", "final_top1"])
    merged = seed[["method", "seed_top1", *(["note"] if "note" in seed else [])]].merge(
        ours.rename(columns={"final_top1": "ours_final_top1 (SGDM)"}), on="method", how="outer")
    merged["seed_setting"] = f"seed 001: {seed['model'].iloc[0]}, Tiny-ImageNet, 4 stages, SGDM, 70 epochs"
    order = {m: i for i, m in enumerate(("pipeoptim", "spectrain", "pipedream_2bw", "pipedream", "async_nostash",
                                         "gpipe", "1f1b"))}
    return merged.sort_values("method", key=lambda s: s.map(order)).reset_index(drop=True)


# =========================================================================== figures
def _style(method: str) -> dict[str, Any]:
    color, line, marker = STYLES.get(method, ("k", "-", "."))
    return {"color": color, "linestyle": line, "marker": marker, "markersize": 4}


def plot_accuracy(acc: pd.DataFrame, setting: str) -> Any:
    """Top-1 against epoch, one panel per optimizer (the seed's figure), mean ± std over seeds
    (``n`` in the legend); the legend's title names the curves that coincide (GPipe and
    1F1B make the same synchronous updates), found from the data."""
    import matplotlib.pyplot as plt

    optimizers = list(dict.fromkeys(acc["optimizer"]))
    fig, axes = plt.subplots(1, len(optimizers), figsize=(6.2 * len(optimizers), 4.2), squeeze=False,
                             layout="constrained")
    mean = _mean_curve(acc, "epoch", "top1")
    for ax, optimizer in zip(axes[0], optimizers):
        part = mean[mean["optimizer"] == optimizer]
        for method, curve in part.groupby("method", sort=False):
            n = int(curve["n"].max())
            ax.plot(curve["epoch"], curve["mean"], label=f"{method} ({report.seed_counts(curve['n'])})",
                    **_style(method))
            if n > 1:
                ax.fill_between(curve["epoch"], curve["mean"] - curve["std"].fillna(0),
                                curve["mean"] + curve["std"].fillna(0), color=_style(method)["color"], alpha=0.12)
        report.finish_axes(ax, title=optimizer, xlabel="epoch", ylabel="validation top-1 [%]", integer_x=True,
                           series=_series(part, "mean"))
    fig.suptitle(f"Validation top-1 against epoch: {setting} (mean ± std over seeds)")
    return fig


def _series(curves: pd.DataFrame, y: str, x: str = "epoch") -> dict[str, tuple[Any, Any]]:
    """``{method: (x, y)}`` of a long frame, for :func:`paso_core.report.coinciding_series`."""
    return {m: (c.sort_values(x)[x], c.sort_values(x)[y]) for m, c in curves.groupby("method", sort=False)}


def coinciding(curves: pd.DataFrame) -> list[list[str]]:
    """Groups of methods whose mean curves coincide (GPipe and 1F1B make the same
    synchronous updates), so a figure can say why one line hides another."""
    return report.coinciding_series(_series(curves, "mean"))


def plot_quality(quality: pd.DataFrame, spe: int, setting: str) -> Any:
    """Prediction quality per stage over training (median over seeds per mini-batch), one panel per
    predicting method and optimizer; 1 = no better than the stale weights, 0 = exact."""
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(zip(quality["method"], quality["optimizer"])))
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(5.2 * max(1, len(keys)), 3.8), squeeze=False,
                             layout="constrained")
    for ax, (method, optimizer) in zip(axes[0], keys):
        part = quality[(quality["method"] == method) & (quality["optimizer"] == optimizer)]
        for stage, rows in part.groupby("stage"):
            med = rows.groupby("minibatch")["quality"].median()
            ax.plot(med.index / spe, med.values, marker="o", markersize=3, label=f"stage {stage}")
        ax.axhline(1.0, color="grey", linestyle=":", linewidth=1, label="stale weights (= 1)")
        ax.set_yscale("log")
        report.finish_axes(ax, title=f"{method}, {optimizer} ({report.seed_counts([part['seed'].nunique()])} seeds)",
                           xlabel="epoch", ylabel="‖Ŵ − W_bwd‖ / ‖W_stale − W_bwd‖ [ratio]", integer_x=True)
    fig.suptitle(f"Prediction quality per stage (median over seeds): {setting}")
    return fig


def plot_text(frame: pd.DataFrame, setting: str, column: str = TEXT_METRIC) -> Any:
    """Validation perplexity against mini-batches on text, one line per method; the legend's
    title names the curves that coincide."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for method, part in frame.groupby("method", sort=False):
        ax.plot(part["steps_done"], part[column], label=method, **_style(method))
    seeds = sorted(frame["seed"].unique()) if "seed" in frame else []
    report.finish_axes(ax, title=f"AdamW on text: {setting}" + (f", seed {seeds[0]}" if len(seeds) == 1 else ""),
                       xlabel="mini-batches (optimizer steps) [count]", ylabel="validation perplexity",
                       integer_x=True, series=_series(frame, column, "steps_done"))
    return fig


# =========================================================================== words
def setting(params: Mapping[str, Any], spe: int) -> str:
    return (f"{params['dataset']} {params['model']}, {params['stages']} stages, batch {params['batch_size']}, "
            f"{params['epochs']} epochs x {spe} steps")


def artifact_name(params: Mapping[str, Any], what: str) -> str:
    return f"pipeoptim_curves_{params['scale']}_{params['dataset']}_{params['model']}_D{params['stages']}_{what}"


def artifact_config(plan: Plan, results: Sequence[tuple[PlannedRun, RunResult]]) -> dict[str, Any]:
    return {"params": plan.params, "steps_per_epoch": plan.steps_per_epoch,
            "runs": [{"study": p.study, "method": p.label, "optimizer": p.optimizer, "seed": p.seed,
                      "engine": p.engine, "run": _relative(r.path)} for p, r in results]}


def _relative(path: Path) -> str:
    """A run directory relative to the artifacts root (no build-machine paths in artifacts)."""
    from ..runs import artifacts_root

    try:
        return str(Path(path).resolve().relative_to(artifacts_root().resolve()))
    except ValueError:
        return Path(path).name


def discussion(table: pd.DataFrame, agreement: pd.DataFrame, quality: pd.DataFrame, text: pd.DataFrame) -> str:
    """What the run shows, every number read from the tables above."""
    lines: list[str] = []
    for optimizer, part in table.groupby("optimizer", sort=False):
        part = part.assign(key=part["final_top1_mean"].round(6)).sort_values("key", ascending=False, kind="stable")
        order = ", ".join(f"{m} {v:.2f}" for m, v in zip(part["method"], part["final_top1_mean"]))
        spread = part["final_top1_mean"].max() - part["final_top1_mean"].min()
        lines.append(f"- **{optimizer}**, final top-1 (mean over seeds): {order}; spread {spread:.2f} points "
                     f"(the seed: within about 1 point at 70 epochs).")
        mid_col = next(c for c in part.columns if c.startswith("top1_epoch"))
        if "pipeoptim" in set(part["method"]):
            lead = part.set_index("method")[mid_col]
            others = lead.drop("pipeoptim")
            if not others.empty:
                gap = lead["pipeoptim"] - others.max()
                lines.append(f"  At {mid_col.removeprefix('top1_').removesuffix('_mean').replace('_', ' ')} "
                             "(mid-training), PipeOptim is "
                             f"{'ahead of' if gap > 0 else 'behind'} the best other method by {abs(gap):.2f} points "
                             f"({SEED_LEAD}).")
    if not agreement.empty:
        worst_loss, worst_param = agreement["max_abs_loss_diff"].max(), agreement["max_rel_param_diff"].max()
        lines.append(f"- **Simulator vs runtime** over the first epoch of {len(agreement)} methods: largest loss "
                     f"difference {worst_loss:.3g}, largest relative parameter difference {worst_param:.3g}"
                     f"{' (identical)' if worst_loss == 0 and worst_param == 0 else ''}, so the simulator's curves "
                     "above stand for the multi-process runtime's on this configuration.")
    if not quality.empty:
        summary = quality_summary(quality)
        for (method, optimizer), part in summary.groupby(["method", "optimizer"], sort=False):
            medians = ", ".join(f"stage {s}: " + ("0 (its backward runs on the forward's predicted weights)"
                                                   if hi == 0 else f"{m:.3g}")
                                for s, m, hi in zip(part["stage"], part["median"], part["q90"]))
            lines.append(f"- **{method} prediction quality** ({optimizer}, median): {medians} (below 1: the "
                         "predicted weights are nearer the backward's weights than the stale ones).")
    if not text.empty:
        column = [c for c in text.columns if c.startswith("eval_")][0]
        best = text.sort_values(column).iloc[0]
        lines.append(f"- **Text (AdamW)**: lowest {column.removeprefix('eval_')} {best[column]:.4g} by "
                     f"{best['method']}; " + ", ".join(f"{m} {v:.4g}" for m, v in zip(text["method"], text[column])))
    return "\n".join(lines)


def cpu_note(params: Mapping[str, Any]) -> str:
    if params["scale"] == "paper":
        return ""
    return (f"**Scale.** This is the `{params['scale']}` scale: {params['dataset']} with a {params['model']} on CPU, "
            "not the seed's Tiny-ImageNet / ResNet-101 on GPUs, so compare orderings and gaps with the seed's "
            "figures, not accuracies; `-p scale paper -p data_root <dir>` runs the seed's setting.")


