"""Intra-step parallel strategies side by side (seeds 002 and 003): plan, run, tables, figures.

Why one module for the notebook ``parallel_strategies`` and ``benchmarks/strategies.py``:
both compare every method on one model, and a figure of tokens/s or memory per rank means
the same thing in both only if it is read from the runs the same way. Every number here is
read from a run's ``metrics.csv``/``summary.json``; the seeds' own numbers are in
:data:`REPORTED` and labelled as such.

A *study* is a list of runs that differ in one thing:

* ``methods``: every method on one model, one world size (the side-by-side table);
* ``world``: a few methods at each world size (memory per rank; FSDP2 must fall as 1/world);
* ``context``: a few methods at each context length (seed 003's 1k-16k sweep);
* ``microbatches``: pipeline schedules at each micro-batch count (bubble from the schedule
  and measured idle time);
* ``split``: a 2-stage GPipe at every split point, plus the split rules (seed 003's hand
  sweep of the split layer, and its planned "dynamic split" = ``split='time'``).

Runs of one world size share one torchrun launch (:func:`paso_core.launch.launch_all`), run
one after another. On CPU the process peak (``mem_peak_mb``, the peak resident set) is
therefore the launch's running maximum; the per-rank *training state* (parameters +
gradients + optimizer state counted from the tensors each rank holds, ``mem_state_mb``) is
exact per run and is what the memory figures show.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import report
from ..config import ConfigError, RunConfig
from ..memory import MEMORY_COLUMNS
from ..methods import get_method
from ..metrics import train_rows
from ..runs import RunResult, artifacts_root
from . import common

#: Every method the comparison knows; ``pp:<schedule>`` is ``pp`` with that ``pp_schedule``.
ALL_METHODS: tuple[str, ...] = ("serial", "naive_dp", "ddp", "fsdp", "fsdp2", "tp", "fsdp2_tp",
                                "pp:gpipe", "pp:1f1b", "pp:interleaved_1f1b", "model_parallel")
PIPELINE = ("pp", "model_parallel")
STUDIES = ("methods", "world", "context", "microbatches", "split")

PARAMETERS = ("methods", "nproc", "model", "block_size", "microbatches", "pp_schedule", "split", "lora", "steps",
              "batch_size", "lr", "optimizer", "dataset", "data_root", "world_sizes", "contexts",
              "microbatch_counts", "sweep_methods", "studies", "seed")

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "methods": list(ALL_METHODS), "nproc": 2, "model": "llama-tiny", "block_size": 32, "microbatches": 2,
        "pp_schedule": "1f1b", "split": "uniform", "lora": None, "steps": 2, "batch_size": 8, "lr": 1e-3,
        "optimizer": "adamw", "dataset": "pydoc", "data_root": None, "world_sizes": [2], "contexts": [32],
        "microbatch_counts": [2], "sweep_methods": ["ddp", "fsdp2", "pp:1f1b"], "studies": list(STUDIES),
        "seed": 0,
    },
    "default": {
        "methods": list(ALL_METHODS), "nproc": 2, "model": "qwen3next-tiny", "block_size": 128, "microbatches": 4,
        "pp_schedule": "1f1b", "split": "uniform", "lora": None, "steps": 8, "batch_size": 16, "lr": 1e-3,
        "optimizer": "adamw", "dataset": "pydoc", "data_root": None, "world_sizes": [1, 2, 4],
        "contexts": [64, 128, 256], "microbatch_counts": [1, 2, 4, 8], "sweep_methods": ["ddp", "fsdp2", "pp:1f1b"],
        "studies": list(STUDIES), "seed": 0,
    },
    # seed 003's setting: the ~2B hybrid, LoRA r=32 alpha=64 on the full-attention layers,
    # AdamW lr 2e-5, parquet shards, 1-4 GPUs, 1k-16k context (needs GPUs and data_root)
    "paper": {
        "methods": list(ALL_METHODS), "nproc": 4, "model": "qwen3next-2b", "block_size": 4096, "microbatches": 4,
        "pp_schedule": "gpipe", "split": "uniform", "lora": "r=32,alpha=64,targets=full_attention", "steps": 30,
        "batch_size": 8, "lr": 2e-5, "optimizer": "adamw", "dataset": "parquet", "data_root": None,
        "world_sizes": [1, 2, 4], "contexts": [1024, 2048, 4096, 8192, 16384], "microbatch_counts": [1, 2, 4, 8],
        "sweep_methods": ["ddp", "fsdp", "fsdp2", "pp:gpipe"], "studies": list(STUDIES), "seed": 0,
    },
}

#: What the seeds report (their hardware, their models): shown beside ours, never mixed in.
REPORTED = pd.DataFrame([
    {"seed": "002", "setting": "GPT-2 small, 1 GPU", "method": "ddp", "world": 1, "tokens_per_s_per_rank": 217.8e3},
    {"seed": "002", "setting": "GPT-2 small, 2 GPUs (rank 0)", "method": "ddp", "world": 2,
     "tokens_per_s_per_rank": 218.5e3},
    {"seed": "002", "setting": "GPT-2 small, 2 GPUs (rank 1)", "method": "ddp", "world": 2,
     "tokens_per_s_per_rank": 216.1e3},
    {"seed": "002", "setting": "GPT-2 small, 2 GPUs, GPipe (forward only pipelined)", "method": "pp:gpipe",
     "world": 2, "tokens_per_s": 17.6e3},
    {"seed": "002", "setting": "GPT-2 small, 2 GPUs", "method": "model_parallel", "world": 2, "tokens_per_s": 30.1e3},
    {"seed": "003", "setting": "~2B hybrid + LoRA, 4k context, per GPU", "method": "ddp",
     "tokens_per_s_per_rank": 28.3e3, "peak_memory_gb": 41.0},
    {"seed": "003", "setting": "~2B hybrid + LoRA, 4k context, per GPU", "method": "fsdp",
     "tokens_per_s_per_rank": 24.3e3, "peak_memory_gb": 50.0},
    {"seed": "003", "setting": "~2B hybrid + LoRA, 4k context, per GPU", "method": "fsdp2",
     "tokens_per_s_per_rank": 13.2e3, "peak_memory_gb": 13.8},
    {"seed": "003", "setting": "~2B hybrid + LoRA, 2-stage GPipe, best split, whole pipeline",
     "method": "pp:gpipe", "world": 2, "tokens_per_s": 38.2e3},
])

#: Per-step phase columns, by the name the table uses (whichever a method writes).
PHASES: dict[str, tuple[str, ...]] = {
    "forward_s": ("time_forward_s",), "backward_s": ("time_backward_s",), "pipeline_s": ("time_pipeline_s",),
    "grad_sync_s": ("time_grad_sync_s",), "optimizer_s": ("time_optim_s",), "comm_s": ("time_comm_s",),
}
MEMORY = MEMORY_COLUMNS


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study: which study, what varies (``x``), the method label and its config."""

    study: str
    label: str
    x: Any
    config: RunConfig


@dataclass
class Plan:
    params: dict[str, Any]
    runs: list[PlannedRun]
    skipped: list[dict[str, Any]] = field(default_factory=list)  # combinations refused, with the reason

    def describe(self) -> pd.DataFrame:
        counts = pd.Series([r.study for r in self.runs]).value_counts().reindex(self.params["studies"]).fillna(0)
        return counts.astype(int).rename("runs").to_frame()


# =========================================================================== parameters
def _as_list(name: str, value: Any, kind: type) -> list[Any]:
    if kind is str:
        if isinstance(value, str):
            return [v.strip() for v in value.strip("[]() ").split(",") if v.strip()]
        return [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    return report.parse_list(name, value, kind)


def resolve_params(values: Mapping[str, Any], scale: str | None = None) -> dict[str, Any]:
    """The notebook's parameters with every ``None`` filled from the scale preset (the scale
    is ``scale``, else ``$PASO_SCALE``, else ``default``); unknown names and methods fail here."""
    unknown = sorted(set(values) - set(PARAMETERS) - {"scale"})
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown}; the parameters are: {', '.join(PARAMETERS)}, scale")
    given = {k: values.get(k) for k in PARAMETERS}
    params = report.resolve_parameters(given, PRESETS, scale=scale or values.get("scale"))
    for name in ("methods", "sweep_methods", "studies"):
        params[name] = _as_list(name, params[name], str)
    for name in ("world_sizes", "contexts", "microbatch_counts"):
        params[name] = _as_list(name, params[name], int)
    for name in ("methods", "sweep_methods"):
        bad = [m for m in params[name] if m not in ALL_METHODS and m.split(":")[0] not in ("pp",)]
        if bad:
            raise ConfigError(f"{name}={params[name]!r}: {bad} not valid; choose among {', '.join(ALL_METHODS)}")
    bad = [s for s in params["studies"] if s not in STUDIES]
    if bad:
        raise ConfigError(f"studies={params['studies']!r}: {bad} not valid; choose among {', '.join(STUDIES)}")
    return params


def method_options(label: str, params: Mapping[str, Any], nproc: int) -> dict[str, Any]:
    """The run options of one method label at ``nproc`` workers.

    A one-process method (``serial``: its registered default is 1 worker) runs 1; ``fsdp2_tp`` needs a 2-D mesh (tensor degree 2 x data shard
    >= 2), so it runs ``max(nproc, 4)`` workers; ``pp:interleaved_1f1b`` holds 2 stages per
    rank; the pipeline methods take ``microbatches`` and ``split``.
    """
    name, _, schedule = label.partition(":")
    opts: dict[str, Any] = {"method": name, "nproc": nproc}
    spec = get_method(name)
    if spec.default_nproc(spec.options()) == 1:
        opts["nproc"] = 1
    elif name == "fsdp2_tp":
        opts.update(nproc=max(nproc, 4) if nproc % 2 == 0 else 4, tp=2)
    elif name == "pp":
        schedule = schedule or params["pp_schedule"]
        opts.update(pp_schedule=schedule, microbatches=params["microbatches"], split=params["split"],
                    stages_per_rank=2 if schedule == "interleaved_1f1b" else 1)
    elif name == "model_parallel":
        opts["split"] = params["split"]
    return opts


def _shared(params: Mapping[str, Any]) -> dict[str, Any]:
    return {"task": "text", "model": params["model"], "block_size": params["block_size"],
            "n_positions": max(1024, int(params["block_size"])), "batch_size": params["batch_size"],
            "steps": params["steps"], "lr": params["lr"], "optimizer": params["optimizer"], "seed": params["seed"],
            "dataset": params["dataset"], "data_root": params["data_root"], "lora": params["lora"],
            "eval_test": False, "eval_batch_size": 64, "progress": False}


def _out_dir(params: Mapping[str, Any], study: str, label: str, x: Any) -> str:
    tag = str(x).replace(" ", "").replace(",", "-").replace("[", "").replace("]", "")
    return str(artifacts_root() / "runs" / f"parallel_strategies_{params['scale']}" / study
               / f"{label.replace(':', '-')}_{tag}")


def _study_points(params: Mapping[str, Any], n_blocks: int) -> list[tuple[str, str, Any, dict[str, Any]]]:
    """(study, label, x, overrides) of every planned run."""
    nproc = int(params["nproc"])
    points: list[tuple[str, str, Any, dict[str, Any]]] = []
    studies = params["studies"]
    if "methods" in studies:
        points += [("methods", m, nproc, {}) for m in params["methods"]]
    if "world" in studies:
        points += [("world", m, w, {"nproc": w}) for m in params["sweep_methods"] for w in params["world_sizes"]]
    if "context" in studies:
        points += [("context", m, c, {"block_size": c})
                   for m in params["sweep_methods"] for c in params["contexts"]]
    if "microbatches" in studies:
        points += [("microbatches", m, k, {"microbatches": k})
                   for m in ("pp:gpipe", "pp:1f1b") for k in params["microbatch_counts"]]
    if "split" in studies:
        splits: list[Any] = [[k] for k in range(1, n_blocks)] + ["uniform", "params", "time"]
        points += [("split", "pp:gpipe", s, {"split": s, "nproc": 2}) for s in splits]
    return points


def _n_blocks(params: Mapping[str, Any]) -> int:
    """Blocks the text task cuts the model into: embedding, decoder layers, head (see the tasks)."""
    from ..pipeline.stages import count_blocks

    probe = common.planned_config({**_shared(params), "method": "serial", "nproc": 1})
    return count_blocks(probe) or 1  # unknown before download (modelscope): no per-point sweep


def plan_runs(params: Mapping[str, Any]) -> Plan:
    """Every run of the chosen studies, validated before any launch.

    A combination a method refuses (``tp`` on GPT-2, a pipeline on one worker, more stages
    than blocks) is recorded in ``Plan.skipped`` with the method's own reason, so a sweep
    over world sizes still runs the combinations that exist; a bad value of a parameter
    that applies to every run (an unknown model) fails here. A sweep point identical to a
    run already planned (the world-size sweep at the comparison's own world size, ...)
    shares that run's config and directory, so it runs once and appears in both studies.
    """
    common.planned_config({**_shared(params), "method": "serial", "nproc": 1})
    n_blocks = _n_blocks(params)
    runs: list[PlannedRun] = []
    skipped: list[dict[str, Any]] = []
    planned: dict[str, RunConfig] = {}
    for study, label, x, overrides in _study_points(params, n_blocks):
        local = {**params, **overrides}
        opts = {**_shared(local), **method_options(label, local, int(overrides.get("nproc", params["nproc"])))}
        opts["out_dir"] = _out_dir(params, study, label, x)
        try:
            cfg = common.planned_config(opts, ("nproc", "block_size", "microbatches", "split"))
        except ConfigError as err:
            skipped.append({"study": study, "method": label, "x": str(x), "reason": str(err)})
            continue
        cfg = planned.setdefault(_identity(cfg), cfg)
        runs.append(PlannedRun(study, label, x, cfg))
    if "methods" in params["studies"]:
        refused = [s for s in skipped if s["study"] == "methods"]
        if refused:
            raise ConfigError("; ".join(f"{s['method']}: {s['reason']}" for s in refused))
    return Plan(dict(params), runs, skipped)


def _identity(cfg: RunConfig) -> str:
    """Everything that makes a run what it is: its options without where it is written."""
    return json.dumps({k: v for k, v in cfg.to_dict().items() if k != "out_dir"}, sort_keys=True, default=str)


def prepare(values: Mapping[str, Any], scale: str | None = None) -> Plan:
    """Resolve the parameters and validate every run: bad input fails here, before any worker."""
    return plan_runs(resolve_params(values, scale))


# =========================================================================== running
def run_plan(plan: Plan, *, log: Callable[[str], None] = print) -> list[tuple[PlannedRun, RunResult]]:
    """Run every planned run: those of one world size (and the same process options) in one
    torchrun launch, one after another, so start-up does not dominate the short runs."""
    from ..launch import launch_grouped

    unique = list({id(r.config): r.config for r in plan.runs}.values())  # shared sweep points run once
    log(f"{len(unique)} runs on world sizes {sorted({c.world_size for c in unique})}")
    results = dict(zip(map(id, unique), launch_grouped(unique)))
    return [(run, results[id(run.config)]) for run in plan.runs]


def canary(plan: Plan, root: str | Path, studies: Sequence[str] = ("methods",)) -> pd.DataFrame:
    """The engine canary of every distinct (method, world size) the plan runs in ``studies``:
    one SGD step with lr 1 on the plan's own model and batch against serial ``torch.optim``.

    Run before the experiment because an engine that is wrong on this torch/backend (FSDP2's
    gradients x world on CPU/gloo in torch 2.7-2.8) still trains and still plots; raises
    :class:`paso_core.equivalence.CanaryFailed` naming every case that differs.
    """
    from ..equivalence import CANARY_OPTIONS, CanaryFailed, canary_case, run_matrix

    cases = {}
    for run in plan.runs:
        if run.study not in studies:
            continue
        options = {k: v for k, v in run.config.to_dict().items()
                   if k not in ("method", "steps", "out_dir", "run_name", *CANARY_OPTIONS)}
        name = f"canary-{run.label.replace(':', '-')}-w{run.config.world_size}"
        cases.setdefault(name, dataclasses.replace(canary_case(run.config.method, **options), name=name))
    table = run_matrix(list(cases.values()), root)
    failed = table[~table["passed"]]
    if not failed.empty:
        raise CanaryFailed("engine canary failed (first step differs from serial): " + "; ".join(
            f"{r.case}: relative error {r.rel_displacement_err:.3g} > {r.rtol:g}" for r in failed.itertuples()))
    return table


# =========================================================================== tables
def _steady(rows: pd.DataFrame) -> pd.DataFrame:
    """Training rows without the first step (lazy initialisation, first collectives)."""
    return rows.iloc[1:] if len(rows) > 1 else rows


def run_row(planned: PlannedRun, result: RunResult) -> dict[str, Any]:
    """One run as one row: what ran, throughput, step phases, memory per rank, bytes, bubble."""
    cfg, s = result.config, result.summary
    rows = _steady(train_rows(result.metrics))
    world = int(s.get("world_size", planned.config.world_size))
    row: dict[str, Any] = {
        "study": planned.study, "x": str(planned.x), "method": planned.label, "world": world,
        "model": cfg.get("model"), "lora": cfg.get("lora") or "", "block_size": cfg.get("block_size"),
        "batch_size": cfg.get("batch_size"), "microbatches": cfg.get("microbatches", np.nan),
        "split_points": str(s.get("split_points", "")), "steps": s.get("steps"),
        "final_train_loss": common.num(s.get("final_train_loss")), "device": str(s.get("device", "")),
    }
    step_s = float(rows["time_iteration_s"].median())
    tokens = int(cfg["batch_size"]) * int(cfg["block_size"])
    row["step_s"] = step_s
    row["tokens_per_s"] = tokens / step_s if step_s > 0 else math.nan
    row["tokens_per_s_per_rank"] = row["tokens_per_s"] / world
    for name, columns in PHASES.items():
        present = [c for c in columns if c in rows]
        row[name] = float(rows[present[0]].median()) if present else math.nan
    for name in MEMORY:
        row[name] = float(rows[name].iloc[-1]) if name in rows else math.nan
    state = s.get("mem_state_mb_per_rank")
    row["mem_state_mb_per_rank"] = str([round(v, 3) for v in state]) if state else ""
    per_iter = train_rows(result.metrics)["bytes_iter_max"]
    row["bytes_per_step"] = float(per_iter.iloc[1:].max() if len(per_iter) > 1 else per_iter.max())
    row["bubble_schedule"] = common.num(rows["bubble_schedule"].iloc[-1]) if "bubble_schedule" in rows else math.nan
    row["bubble_measured"] = float(rows["bubble_measured"].median()) if "bubble_measured" in rows else math.nan
    row["path"] = str(result.path)
    return row


def results_table(results: Iterable[tuple[PlannedRun, RunResult]]) -> pd.DataFrame:
    return pd.DataFrame([run_row(p, r) for p, r in results])


def study(table: pd.DataFrame, name: str) -> pd.DataFrame:
    return table[table["study"] == name].reset_index(drop=True)


def with_ratios(table: pd.DataFrame, baseline: str = "serial") -> pd.DataFrame:
    """``speedup_vs_<baseline>`` (tokens/s) and ``state_vs_<baseline>`` (training state per
    rank) side by side, from the same invocation's runs."""
    out = table.copy()
    base = out[out["method"] == baseline]
    if base.empty:
        return out
    ref = base.iloc[0]
    out[f"speedup_vs_{baseline}"] = out["tokens_per_s"] / ref["tokens_per_s"]
    out[f"state_vs_{baseline}"] = out["mem_state_mb"] / ref["mem_state_mb"]
    return out


def memory_scaling(table: pd.DataFrame) -> pd.DataFrame:
    """The world study's training state per rank relative to the same method at the
    smallest world size it ran, beside ``1 / world`` scaled the same way (FSDP2's claim)."""
    world = study(table, "world")
    rows = []
    for method, group in world.groupby("method", sort=False):
        group = group.sort_values("world")
        first = group.iloc[0]
        for _, r in group.iterrows():
            rows.append({"method": method, "world": int(r["world"]), "mem_state_mb": r["mem_state_mb"],
                         "mem_params_mb": r["mem_params_mb"], "mem_optimizer_mb": r["mem_optimizer_mb"],
                         "relative_state": r["mem_state_mb"] / first["mem_state_mb"],
                         "ideal_1_over_world": first["world"] / r["world"],
                         "tokens_per_s_per_rank": r["tokens_per_s_per_rank"]})
    return pd.DataFrame(rows)


SUMMARY_COLUMNS = ("method", "world", "tokens_per_s", "tokens_per_s_per_rank", "step_s", "forward_s", "backward_s",
                   "pipeline_s", "optimizer_s", "comm_s", "mem_state_mb", "mem_peak_mb", "bytes_per_step",
                   "bubble_schedule", "bubble_measured", "final_train_loss")


def reported_table() -> pd.DataFrame:
    return REPORTED.copy()


# =========================================================================== figures
def _plot_lines(ax: Any, frame: pd.DataFrame, x: str, y: str, *, logx: bool = False) -> None:
    for method, group in frame.groupby("method", sort=False):
        group = group.sort_values(x)
        ax.plot(group[x].astype(float), group[y].astype(float), marker="o", label=method)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)


def plot_methods(table: pd.DataFrame, title: str) -> Any:
    """Four panels that transfer from CPU first (memory per rank, bytes per step, bubble),
    tokens/s last (on shared CPU cores it measures overheads, not GPU speed-ups)."""
    import matplotlib.pyplot as plt

    frame = study(table, "methods")
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    labels = frame["method"] + " (" + frame["world"].astype(str) + ")"
    panels = [("mem_state_mb", "training state per rank [MB]"), ("bytes_per_step", "bytes sent per step (busiest rank)"),
              ("bubble_schedule", "pipeline bubble (schedule)"), ("tokens_per_s", "tokens/s (whole job)")]
    for ax, (column, label) in zip(axes, panels):
        ax.barh(labels, frame[column].astype(float).fillna(0.0))
        ax.set_xlabel(label)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_sweeps(table: pd.DataFrame, title: str) -> Any:
    """World size, context length, micro-batches and the split sweep, one panel each."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(18, 9))
    world = study(table, "world")
    if not world.empty:
        _plot_lines(axes[0, 0], world, "world", "mem_state_mb")
        scaling = memory_scaling(table)
        for method, group in scaling.groupby("method", sort=False):
            first = group.iloc[0]
            if method.startswith("fsdp2"):
                axes[0, 0].plot(group["world"], first["mem_state_mb"] * group["ideal_1_over_world"], "k--",
                                label=f"{method}: 1/world")
        axes[0, 0].set_title("training state per rank vs world size")
        axes[0, 0].legend(fontsize=8)
        _plot_lines(axes[0, 1], world, "world", "tokens_per_s_per_rank")
        axes[0, 1].set_title("tokens/s per rank vs world size")
    context = study(table, "context")
    if not context.empty:
        _plot_lines(axes[0, 2], context, "block_size", "tokens_per_s_per_rank", logx=True)
        axes[0, 2].set_title("tokens/s per rank vs context length")
        axes[0, 2].legend(fontsize=8)
    micro = study(table, "microbatches")
    if not micro.empty:
        for method, group in micro.groupby("method", sort=False):
            group = group.sort_values("microbatches")
            line, = axes[1, 0].plot(group["microbatches"], group["bubble_schedule"], marker="o",
                                    label=f"{method} schedule")
            axes[1, 0].plot(group["microbatches"], group["bubble_measured"], marker="x", ls=":",
                            color=line.get_color(), label=f"{method} measured")
        axes[1, 0].set_xscale("log", base=2)
        axes[1, 0].set_xlabel("micro-batches")
        axes[1, 0].set_ylabel("bubble fraction")
        axes[1, 0].set_title("pipeline bubble vs micro-batches")
        axes[1, 0].legend(fontsize=8)
        axes[1, 0].grid(alpha=0.3)
        _plot_lines(axes[1, 1], micro, "microbatches", "tokens_per_s", logx=True)
        axes[1, 1].set_title("pipeline tokens/s vs micro-batches")
        axes[1, 1].legend(fontsize=8)
    split = study(table, "split")
    if not split.empty:
        points = split[split["x"].str.startswith("[")]
        axes[1, 2].plot(points["split_points"], points["tokens_per_s"], marker="o", label="fixed split point")
        for _, r in split[~split["x"].str.startswith("[")].iterrows():
            axes[1, 2].axhline(r["tokens_per_s"], ls="--", lw=1, color="gray")
            axes[1, 2].annotate(f"split={r['x']} {r['split_points']}", (0, r["tokens_per_s"]), fontsize=8)
        axes[1, 2].set_xlabel("stage 1 starts at block")
        axes[1, 2].set_ylabel("tokens/s (2-stage GPipe)")
        axes[1, 2].set_title("split sweep")
        axes[1, 2].grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# =========================================================================== provenance
def artifact_name(params: Mapping[str, Any], what: str) -> str:
    lora = "_lora" if params.get("lora") else ""
    return f"parallel_strategies_{params['scale']}_{params['model']}{lora}_{what}"


def artifact_config(plan: Plan, results: Sequence[tuple[PlannedRun, RunResult]]) -> dict[str, Any]:
    return {"params": plan.params, "skipped": plan.skipped,
            "runs": [{"study": p.study, "method": p.label, "x": str(p.x), "path": str(r.path),
                      "config": r.config} for p, r in results]}


def cpu_caveat(table: pd.DataFrame) -> str:
    """What the timings mean, generated from the runs' device."""
    on_gpu = table["device"].astype(str).str.startswith("cuda").any()
    return ("These runs used " + ("GPUs" if on_gpu else "CPU processes only") + ". "
            "On a CPU with 2 shared cores every worker competes for the same cores, so tokens/s shows the "
            "overheads of each strategy (collectives, schedule ticks, sharding), not the speed-ups the seeds "
            "measured on GPUs. Memory per rank, bytes per step and the schedule's bubble fraction do not depend "
            "on the hardware and are the figures that transfer.")
