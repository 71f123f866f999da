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
import zlib
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
#: The run every ratio and factor is relative to.
BASELINE = "serial"
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
#: Seed 002's data parallelism all-reduces every parameter's gradient on its own ("performs
#: `allreduce` for every parameter in the model"): ``naive_dp`` here, not DDP's buckets.
REPORTED = pd.DataFrame([
    {"seed": "002", "setting": "GPT-2 small, RTX 4090D, 1 GPU", "method": "naive_dp", "world": 1,
     "tokens_per_s_per_rank": 217.8e3},
    {"seed": "002", "setting": "GPT-2 small, RTX 4090D, 2 GPUs (rank 0)", "method": "naive_dp", "world": 2,
     "tokens_per_s_per_rank": 218.5e3},
    {"seed": "002", "setting": "GPT-2 small, RTX 4090D, 2 GPUs (rank 1)", "method": "naive_dp", "world": 2,
     "tokens_per_s_per_rank": 216.1e3},
    {"seed": "002", "setting": "GPT-2 small, RTX 4090D, 2 GPUs, GPipe (forward only pipelined)",
     "method": "pp:gpipe", "world": 2, "tokens_per_s": 17.6e3},
    {"seed": "002", "setting": "GPT-2 small, RTX 4090D, 2 GPUs", "method": "model_parallel", "world": 2,
     "tokens_per_s": 30.1e3},
    {"seed": "003", "setting": "~2B hybrid + LoRA, 4k context, per GPU", "method": "ddp",
     "tokens_per_s_per_rank": 28.3e3, "peak_memory_gb": 41.0},
    {"seed": "003", "setting": "~2B hybrid + LoRA, 4k context, per GPU", "method": "fsdp",
     "tokens_per_s_per_rank": 24.3e3, "peak_memory_gb": 50.0},
    {"seed": "003", "setting": "~2B hybrid + LoRA, 4k context, per GPU", "method": "fsdp2",
     "tokens_per_s_per_rank": 13.2e3, "peak_memory_gb": 13.8},
    {"seed": "003", "setting": "~2B hybrid + LoRA, 2-stage GPipe, best split, whole pipeline",
     "method": "pp:gpipe", "world": 2, "tokens_per_s": 38.2e3},
])

#: FSDP2 pads each dim-0 shard to equal size and keeps small tensors whole: its per-rank
#: state is 1/world of the one-process state within this factor (measured ~1.0-1.1 on tiny models).
FSDP2_MEMORY_FACTOR = 1.25

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


def with_ratios(table: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
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
                   "pipeline_s", "grad_sync_s", "optimizer_s", "comm_s", "mem_state_mb", "mem_peak_mb",
                   "bytes_per_step", "bubble_schedule", "bubble_measured", "final_train_loss")

#: What each study's Markdown table shows (at most ten columns; the CSV keeps every one):
#: the method and the swept value, then throughput, training state and peak memory per rank,
#: bytes per step and the bubble. The phase split has its own table (:func:`step_split`).
STUDY_MD_COLUMNS: dict[str, tuple[str, ...]] = {
    "methods": ("method", "world", "tokens_per_s", "tokens_per_s_per_rank", "speedup_vs_serial", "mem_state_mb",
                "state_vs_serial", "mem_peak_mb", "bytes_per_step", "bubble_measured"),
    "world": ("method", "world", "tokens_per_s", "tokens_per_s_per_rank", "step_s", "mem_state_mb", "mem_peak_mb",
              "bytes_per_step", "bubble_schedule", "bubble_measured"),
    "context": ("method", "block_size", "world", "tokens_per_s", "tokens_per_s_per_rank", "step_s", "mem_state_mb",
                "mem_peak_mb", "bytes_per_step", "bubble_measured"),
    "microbatches": ("method", "microbatches", "world", "tokens_per_s", "step_s", "pipeline_s", "mem_peak_mb",
                     "bytes_per_step", "bubble_schedule", "bubble_measured"),
    "split": ("method", "x", "split_points", "world", "tokens_per_s", "step_s", "pipeline_s", "mem_peak_mb",
              "bytes_per_step", "bubble_measured"),
}
#: The comparison with the seeds' numbers: ours beside theirs; the setting (one value, in the
#: title) and our training state (the seeds do not report it) stay in the CSV.
COMPARISON_MD_COLUMNS = ("method", "ours: ranks", "seed: GPUs", "ours: throughput, job [k tokens/s]",
                         "seed: throughput, job [k tokens/s]", "ours: per rank [k tokens/s]",
                         "seed: per GPU [k tokens/s]", "ours: peak memory per rank [MiB]",
                         "seed: peak memory per GPU [GB]", "seed (their GPUs)")


def md_columns(table: pd.DataFrame, name: str) -> list[str]:
    """:data:`STUDY_MD_COLUMNS` of study ``name`` that ``table`` has (the ratios need a serial run)."""
    return [c for c in STUDY_MD_COLUMNS[name] if c in table.columns]


def fsdp2_memory(table: pd.DataFrame, factor: float = FSDP2_MEMORY_FACTOR) -> pd.DataFrame:
    """FSDP2's training state per rank relative to one replica's, beside ``1/world``, and
    whether it lies within ``factor`` of it (either way).

    Read from the world study when it ran ``fsdp2`` at two or more world sizes, else from the
    methods study (``fsdp2`` against ``serial``), so the claim is checked at every scale.
    """
    scaling = memory_scaling(table)
    rows = scaling[scaling["method"] == "fsdp2"] if not scaling.empty else scaling
    if len(rows) >= 2:
        out = rows[["world", "relative_state", "ideal_1_over_world"]].copy()
        out["reference"] = f"its state at {int(rows['world'].min())} rank(s)"
    else:
        methods = study(table, "methods").set_index("method")
        if not {"fsdp2", "serial"} <= set(methods.index):
            return pd.DataFrame(columns=["world", "relative_state", "ideal_1_over_world", "reference", "within"])
        mine, serial = methods.loc["fsdp2"], methods.loc["serial"]
        out = pd.DataFrame([{"world": int(mine["world"]),
                             "relative_state": mine["mem_state_mb"] / serial["mem_state_mb"],
                             "ideal_1_over_world": serial["world"] / mine["world"], "reference": "serial's"}])
    ideal = out["ideal_1_over_world"]
    out["within"] = out["relative_state"].between(ideal / factor, ideal * factor)
    return out.reset_index(drop=True)


def compare_reported(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, seed figure): our measured values and the seed's reported ones in
    adjacent columns, units in the names (tokens/s in thousands, as the seeds state them); a
    method either side lacks has blanks there.

    Why joined: two separate tables invite reading our CPU numbers against the wrong seed
    row. Our values repeat on each seed row of a method (seed 002 reports two ranks).
    """
    ours = study(table, "methods")[["method", "world", "model", "device", "tokens_per_s", "tokens_per_s_per_rank",
                                    "mem_peak_mb", "mem_state_mb"]]
    seeds = REPORTED.reindex(columns=["seed", "setting", "method", "world", "tokens_per_s", "tokens_per_s_per_rank",
                                      "peak_memory_gb"])
    joined = ours.merge(seeds, on="method", how="outer", suffixes=("_ours", "_seed"), sort=False)
    rank = {m: i for i, m in enumerate(dict.fromkeys([*ALL_METHODS, *ours["method"], *seeds["method"]]))}
    joined = joined.sort_values("method", key=lambda c: c.map(rank), kind="stable").reset_index(drop=True)
    ours_setting = joined["model"].fillna("").astype(str) + ", " + joined["device"].fillna("").astype(str)
    source = ("seed " + joined["seed"].fillna("") + ", their GPUs: " + joined["setting"].fillna(""))
    return pd.DataFrame({
        "method": joined["method"],
        "ours: setting": ours_setting.where(joined["model"].notna(), ""),
        "ours: ranks": joined["world_ours"],
        "seed: GPUs": joined["world_seed"],
        "ours: throughput, job [k tokens/s]": joined["tokens_per_s_ours"] / 1e3,
        "seed: throughput, job [k tokens/s]": joined["tokens_per_s_seed"] / 1e3,
        "ours: per rank [k tokens/s]": joined["tokens_per_s_per_rank_ours"] / 1e3,
        "seed: per GPU [k tokens/s]": joined["tokens_per_s_per_rank_seed"] / 1e3,
        "ours: peak memory per rank [MiB]": joined["mem_peak_mb"],
        "seed: peak memory per GPU [GB]": joined["peak_memory_gb"],
        "ours: training state per rank [MiB]": joined["mem_state_mb"],
        "seed (their GPUs)": source.where(joined["seed"].notna(), ""),
    })


#: The disjoint intervals a method's loop times in one step, in drawing order (column, label).
STEP_SEGMENTS: tuple[tuple[str, str], ...] = (
    ("forward_s", "forward"),
    ("backward_s", "backward (gradient sync of DP engines inside)"),
    ("pipeline_s", "pipelined forward + backward (+ point-to-point)"),
    ("grad_sync_s", "gradient sync (pipeline replicas, tied weights)"),
    ("optimizer_s", "optimizer"),
    ("rest_s", "rest of step (loss all-reduce, bookkeeping; all of it if no phase is timed)"),
)


def step_split(table: pd.DataFrame) -> pd.DataFrame:
    """Seconds per step of each methods-study run split into the intervals its loop times,
    the remainder of the median step in ``rest_s``, and ``comm_s`` (time inside metered
    communication calls) beside them.

    Why ``comm_s`` is not a slice: it overlaps the intervals (naive DP's per-parameter
    all-reduces run inside backward, the pipeline's gradient sync is its own interval), so
    stacking it would count it twice; engine collectives (DDP buckets, FSDP gathers, TP)
    overlap compute and stay inside forward/backward.
    """
    methods = study(table, "methods")
    out = methods[["method", "world"]].copy()
    timed = [c for c, _ in STEP_SEGMENTS if c != "rest_s"]
    for column in timed:
        out[column] = methods[column].astype(float).fillna(0.0)
    out["rest_s"] = (methods["step_s"].astype(float) - out[timed].sum(axis=1)).clip(lower=0.0)
    out["step_s"] = methods["step_s"].astype(float)
    out["comm_s"] = methods["comm_s"].astype(float)
    return out


# =========================================================================== discussion
# Each ``_*_point`` writes one bullet of :func:`discussion` from the table, or ``None`` when
# its study did not run, so a partial run (the benchmark's two studies) still reads right.
def _on_gpu(table: pd.DataFrame) -> bool:
    """Whether any run used a GPU: the caveat and the axis labels depend on it."""
    return bool(table["device"].astype(str).str.startswith("cuda").any())


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.3g} MiB"


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _names(rows: pd.DataFrame) -> str:
    return ", ".join(f"`{m}`" for m in rows["method"])


def _memory_point(methods: pd.DataFrame) -> str | None:
    rows = methods.dropna(subset=["mem_state_mb"])
    if rows.empty:
        return None
    low = rows["mem_state_mb"].min()
    least = rows[np.isclose(rows["mem_state_mb"], low, rtol=1e-6)]
    text = (f"**Training state per rank** (parameters + gradients + optimizer state): {_names(least)} "
            f"({'/'.join(str(int(w)) for w in least['world'])} ranks) {'hold' if len(least) > 1 else 'holds'} "
            f"the least, {low:.3g} MiB")
    serial = rows[rows["method"] == BASELINE]
    if not serial.empty:
        base = float(serial["mem_state_mb"].iloc[0])
        text += f", {base / low:.2f}x less than `serial`'s {base:.3g} MiB"
    return text + "."


def _fsdp2_point(table: pd.DataFrame) -> str | None:
    check = fsdp2_memory(table)
    if len(check) > 1:
        check = check[check["world"] > check["world"].min()]
    if check.empty:
        return None
    verdict = "falls as about 1/world" if check["within"].all() else "does **not** fall as 1/world"
    points = "; ".join(f"at {int(r.world)} ranks {r.relative_state:.3f} of {r.reference} (1/world: "
                       f"{r.ideal_1_over_world:.3f})" for r in check.itertuples())
    return f"**FSDP2** per-rank state {verdict} (measured, within a factor {FSDP2_MEMORY_FACTOR:g}): {points}."


def _bytes_point(methods: pd.DataFrame) -> str | None:
    rows = methods.dropna(subset=["bytes_per_step"]).sort_values("bytes_per_step", ascending=False, kind="stable")
    if rows.empty:
        return None
    ranking = ", ".join(f"`{r.method}` {_mib(r.bytes_per_step)}" for r in rows.itertuples())
    return ("**Bytes per step** sent by the busiest rank (point-to-point measured, collectives by formula), "
            f"most first: {ranking}.")


def _bubble_point(table: pd.DataFrame) -> str | None:
    methods = study(table, "methods").dropna(subset=["bubble_schedule"])
    if methods.empty:
        return None
    above = int((methods["bubble_measured"] > methods["bubble_schedule"]).sum())
    each = "; ".join(f"`{r.method}` ({int(r.world)} ranks"
                     + (f", {int(r.microbatches)} micro-batches" if pd.notna(r.microbatches) else "")
                     + f") {r.bubble_schedule:.3f} vs {r.bubble_measured:.3f}" for r in methods.itertuples())
    text = (f"**Pipeline bubble**, schedule vs measured idle fraction: {each}; measured above the schedule's "
            f"in {above} of {len(methods)}.")
    micro = study(table, "microbatches").dropna(subset=["bubble_schedule"])
    for method, group in micro.groupby("method", sort=False):
        group = group.sort_values("microbatches")
        if len(group) > 1:
            a, b = group.iloc[0], group.iloc[-1]
            text += (f" From {int(a['microbatches'])} to {int(b['microbatches'])} micro-batches, `{method}`'s "
                     f"schedule bubble goes {a['bubble_schedule']:.3f} -> {b['bubble_schedule']:.3f}, measured "
                     f"{a['bubble_measured']:.3f} -> {b['bubble_measured']:.3f}.")
    return text


def _split_point(table: pd.DataFrame) -> str | None:
    split = study(table, "split")
    fixed = split[split["x"].astype(str).str.startswith("[")].dropna(subset=["tokens_per_s"])
    if fixed.empty:
        return None
    best = fixed.loc[fixed["tokens_per_s"].idxmax()]
    worst = fixed.loc[fixed["tokens_per_s"].idxmin()]
    text = (f"**Split sweep** (2-stage GPipe, {len(fixed)} split points): the fastest split is {best['split_points']} "
            f"at {_rate(best['tokens_per_s'])} tokens/s, the slowest {worst['split_points']} at "
            f"{_rate(worst['tokens_per_s'])}.")
    at = fixed.set_index("split_points")["tokens_per_s"]
    for rule in ("uniform", "params", "time"):
        chosen = split.loc[split["x"] == rule, "split_points"]
        if chosen.empty:
            continue
        points = chosen.iloc[0]
        if points == best["split_points"]:
            text += f" `{rule}` chose {points}, the fastest point."
        elif points in at.index:
            text += (f" `{rule}` chose {points}, not the fastest ({at[points] / best['tokens_per_s']:.2f}x its "
                     "tokens/s in the sweep).")
        else:
            text += f" `{rule}` chose {points}, a split the sweep did not run."
    return text


def _speed_point(table: pd.DataFrame, methods: pd.DataFrame) -> str | None:
    rows = methods.dropna(subset=["tokens_per_s"]).sort_values("tokens_per_s", ascending=False, kind="stable")
    if rows.empty:
        return None
    order = " > ".join(f"`{r.method}` {_rate(r.tokens_per_s)}" for r in rows.itertuples())
    text = f"**Tokens/s** (whole job), fastest first: {order}."
    serial = rows[rows["method"] == BASELINE]
    fastest = rows.iloc[0]
    if not serial.empty and fastest["method"] != BASELINE:
        ratio = fastest["tokens_per_s"] / serial["tokens_per_s"].iloc[0]
        text += f" `{fastest['method']}` ran {ratio:.2f}x `serial`'s tokens/s."
    return text + " " + cpu_caveat(table)


def discussion(table: pd.DataFrame) -> str:
    """A short Markdown discussion of the runs, every number read from ``table``.

    Why generated: conclusions typed into a notebook go stale as soon as it reruns with other
    parameters or on other hardware; this text follows the table it sits beside. A study
    that did not run leaves its point out.
    """
    methods = study(table, "methods")
    runs = table["path"].nunique() if "path" in table else len(table)  # a shared sweep point ran once
    lines = [f"From {runs} runs ({setting(table)}):", ""]
    points = (_memory_point(methods), _fsdp2_point(table), _bytes_point(methods), _bubble_point(table),
              _split_point(table), _speed_point(table, methods))
    lines += [f"- {p}" for p in points if p]
    return "\n".join(lines)


# =========================================================================== figures
#: Families colour the bar charts, so bars of one kind of parallelism read as a group.
FAMILIES = {"serial": "one process", "naive_dp": "replicated data parallel", "ddp": "replicated data parallel",
            "fsdp": "sharded data parallel", "fsdp2": "sharded data parallel", "tp": "tensor parallel",
            "fsdp2_tp": "sharded x tensor", "pp": "pipeline", "model_parallel": "pipeline"}
_MARKERS = ("o", "s", "D", "^", "v", "<", ">", "P", "X", "*", "h")
_LINESTYLES = ("-", "--", "-.", ":")


def method_style(method: str) -> dict[str, Any]:
    """Colour, hollow marker, marker size and line style of a method, the same in every
    figure; neighbours differ in all of them, so equal curves (``ddp`` and ``naive_dp`` hold
    the same state) stay visible on top of each other."""
    i = ALL_METHODS.index(method) if method in ALL_METHODS else len(ALL_METHODS) + zlib.crc32(method.encode()) % 13
    return {"color": f"C{i % 10}", "marker": _MARKERS[i % len(_MARKERS)], "markersize": 10 - 2 * (i % 3),
            "markerfacecolor": "none", "linestyle": _LINESTYLES[i % len(_LINESTYLES)]}


def setting(table: pd.DataFrame) -> str:
    """The setting every figure title names: model, LoRA, context, batch, steps, device."""
    methods = study(table, "methods")
    head = (methods if not methods.empty else table).iloc[0]
    lora = f", LoRA {head['lora']}" if head.get("lora") else ""
    return (f"{head['model']}{lora}, context {int(head['block_size'])} tokens, global batch {int(head['batch_size'])}, "
            f"{int(head['steps'])} steps, {'GPU' if _on_gpu(table) else 'CPU'}")


def _integer_axis(ax: Any, values: Iterable[Any], *, log2: bool = False) -> None:
    """Ticks at exactly the integer values the x axis takes (world sizes, context lengths...)."""
    from matplotlib.ticker import NullLocator

    ticks = sorted({int(v) for v in values if pd.notna(v)})
    if log2 and len(ticks) > 1 and ticks[0] > 0:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())


def _empty(ax: Any, title: str, why: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax.set_axis_off()


def _plot_lines(ax: Any, frame: pd.DataFrame, x: str, y: str, *, title: str, xlabel: str, ylabel: str,
                scale: float = 1.0, log2: bool = False) -> None:
    """One line per method (its own style), integer x ticks, labelled axes, a legend."""
    drawn = False
    for method, group in frame.groupby("method", sort=False):
        group = group.dropna(subset=[y]).sort_values(x)
        if not group.empty:
            ax.plot(group[x].astype(float), group[y].astype(float) * scale, label=method, **method_style(method))
            drawn = True
    if not drawn:
        _empty(ax, title, f"no {ylabel} measured")
        return
    _integer_axis(ax, frame[x], log2=log2)
    report.finish_axes(ax, title=title, xlabel=xlabel, ylabel=ylabel)


def _family_bars(ax: Any, frame: pd.DataFrame, column: str, *, title: str, xlabel: str, scale: float = 1.0) -> None:
    from matplotlib.patches import Patch

    families = frame["method"].map(lambda m: FAMILIES.get(m.split(":")[0], "other"))
    colours = {f: f"C{i}" for i, f in enumerate(dict.fromkeys(FAMILIES.values()))}
    values = frame[column].astype(float).fillna(0.0) * scale
    ax.barh(_bar_labels(frame), values, color=[colours.get(f, "gray") for f in families])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.6 * max(float(values.max()), 1e-12))  # room on the right for the legend
    ax.set(title=title, xlabel=xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(handles=[Patch(color=colours.get(f, "gray"), label=f) for f in dict.fromkeys(families)], fontsize=8,
              loc="best")


def _bar_labels(frame: pd.DataFrame) -> pd.Series:
    return frame["method"] + frame["world"].map(lambda w: f" ({int(w)} rank{'s' if int(w) != 1 else ''})")


def plot_methods(table: pd.DataFrame, title: str | None = None) -> Any:
    """Every method side by side: the panels that transfer from CPU first (memory per rank,
    bytes per step, bubble), tokens/s last (on shared CPU cores it measures overheads)."""
    import matplotlib.pyplot as plt

    frame = study(table, "methods")
    fig, axes = plt.subplots(2, 3, figsize=(20, 10), layout="constrained")
    _family_bars(axes[0, 0], frame, "mem_state_mb", title="training state per rank (max over ranks)",
                 xlabel="parameters + gradients + optimizer state [MiB]")
    _family_bars(axes[0, 1], frame, "mem_peak_mb", title="peak memory per rank (max over ranks)",
                 xlabel=f"{'CUDA allocator peak' if _on_gpu(table) else 'peak resident set (launch maximum)'} [MiB]")
    _family_bars(axes[0, 2], frame, "bytes_per_step", title="bytes sent per step by the busiest rank",
                 xlabel="bytes per step [MiB]", scale=2.0**-20)
    pipe = frame.dropna(subset=["bubble_schedule"])
    ax = axes[1, 0]
    if pipe.empty:
        _empty(ax, "pipeline bubble", "no pipeline method ran")
    else:
        y = np.arange(len(pipe))
        ax.barh(y - 0.2, pipe["bubble_schedule"], height=0.4, label="schedule", color="C0")
        ax.barh(y + 0.2, pipe["bubble_measured"].fillna(0.0), height=0.4, label="measured idle", color="C1",
                hatch="//")
        ax.set_yticks(y, _bar_labels(pipe))
        ax.invert_yaxis()
        ax.set(title="pipeline bubble", xlabel="idle fraction of the step [0-1]")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=8)
    _family_bars(axes[1, 1], frame, "tokens_per_s", title="throughput, whole job",
                 xlabel="tokens/s, whole job [tokens/s]")
    _family_bars(axes[1, 2], frame, "tokens_per_s_per_rank", title="throughput per rank",
                 xlabel="tokens/s per rank [tokens/s]")
    fig.suptitle(f"Every method side by side: {title or setting(table)}")
    return fig


def plot_step_split(table: pd.DataFrame, title: str | None = None) -> Any:
    """Stacked bars of each method's step (:func:`step_split`), and below each bar the time
    inside metered communication calls, which overlaps the slices."""
    import matplotlib.pyplot as plt

    split = step_split(table)
    fig, ax = plt.subplots(figsize=(12, 0.55 * len(split) + 3.5), layout="constrained")
    y = np.arange(len(split), dtype=float)
    left = np.zeros(len(split))
    for i, (column, label) in enumerate(STEP_SEGMENTS):
        values = split[column].to_numpy(dtype=float)
        if np.any(values > 0):
            ax.barh(y, values, left=left, height=0.55, label=label, color=f"C{i}")
        left += values
    ax.barh(y + 0.42, split["comm_s"].fillna(0.0), height=0.2, color="k", alpha=0.6, hatch="..",
            label="inside communication calls (overlaps the slices)")
    ax.set_yticks(y, _bar_labels(split))
    ax.invert_yaxis()
    ax.set(xlabel="time per step [s] (median over steps; each phase the maximum over ranks)",
           title=f"Step time split: {title or setting(table)}")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    return fig


def plot_sweeps(table: pd.DataFrame, title: str | None = None) -> Any:
    """One row per sweep: world size and context length (state and peak per rank, bytes per
    step, tokens/s per rank), then micro-batches (bubble, tokens/s, bytes) and the split."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 4, figsize=(24, 15), layout="constrained")
    state, peak = "training state per rank [MiB]", "peak memory per rank [MiB]"
    sent, speed = "bytes per step, busiest rank [MiB]", "tokens/s per rank [tokens/s]"
    per_step = "micro-batches per step [count]"
    for row, (name, x, xlabel, log2) in enumerate((("world", "world", "world size [ranks]", False),
                                                   ("context", "block_size", "context length [tokens]", True))):
        frame = study(table, name)
        label = "world size" if name == "world" else "context length"
        if frame.empty:
            for ax in axes[row]:
                _empty(ax, f"against {label}", f"the {name} study did not run")
            continue
        fixed = (f"context {int(frame['block_size'].iloc[0])}" if name == "world"
                 else f"{'/'.join(map(str, sorted(frame['world'].astype(int).unique())))} ranks")
        for ax, (y, ylabel, scale) in zip(axes[row], (("mem_state_mb", state, 1.0), ("mem_peak_mb", peak, 1.0),
                                                      ("bytes_per_step", sent, 2.0**-20),
                                                      ("tokens_per_s_per_rank", speed, 1.0))):
            _plot_lines(ax, frame, x, y, title=f"{ylabel.split(' [')[0]} vs {label} ({fixed})", xlabel=xlabel,
                        ylabel=ylabel, scale=scale, log2=log2)
    scaling = memory_scaling(table)
    for method, group in (scaling.groupby("method", sort=False) if not scaling.empty else ()):
        if method.startswith("fsdp2") and len(group) > 1:
            axes[0, 0].plot(group["world"], group["mem_state_mb"].iloc[0] * group["ideal_1_over_world"], "k--", lw=1,
                            label=f"{method}: 1/world")
            report.finish_axes(axes[0, 0])  # the legend again, now naming what the ideal line coincides with
    micro = study(table, "microbatches")
    if micro.empty:
        for ax in axes[2, :3]:
            _empty(ax, "against micro-batches", "the microbatches study did not run")
    else:
        ax = axes[2, 0]
        for method, group in micro.groupby("method", sort=False):
            group = group.sort_values("microbatches")
            style = method_style(method)
            ax.plot(group["microbatches"], group["bubble_schedule"], color=style["color"], marker=style["marker"],
                    markerfacecolor="none", ls="-", label=f"{method}: schedule")
            ax.plot(group["microbatches"], group["bubble_measured"], color=style["color"], marker="x", ls=":",
                    label=f"{method}: measured")
        _integer_axis(ax, micro["microbatches"], log2=True)
        report.finish_axes(ax, title=f"pipeline bubble vs micro-batches ({int(micro['world'].max())} ranks)",
                           xlabel=per_step, ylabel="idle fraction of the step [0-1]")
        _plot_lines(axes[2, 1], micro, "microbatches", "tokens_per_s", title="pipeline tokens/s vs micro-batches",
                    xlabel=per_step, ylabel="tokens/s, whole job [tokens/s]", log2=True)
        _plot_lines(axes[2, 2], micro, "microbatches", "bytes_per_step",
                    title="pipeline bytes per step vs micro-batches",
                    xlabel=per_step, ylabel=sent, scale=2.0**-20, log2=True)
    _plot_split(axes[2, 3], study(table, "split"))
    fig.suptitle(f"Sweeps: {title or setting(table)}")
    return fig


def _plot_split(ax: Any, split: pd.DataFrame) -> None:
    """Tokens/s of a 2-stage GPipe at every split point; the split rules as horizontal lines."""
    if split.empty:
        _empty(ax, "split sweep", "the split study did not run")
        return
    fixed = split[split["x"].astype(str).str.startswith("[")]
    points = fixed["x"].map(lambda x: json.loads(x)[0])
    ax.plot(points, fixed["tokens_per_s"], marker="o", color="C0", label="fixed split point")
    for i, r in enumerate(split[~split["x"].astype(str).str.startswith("[")].itertuples()):
        ax.axhline(r.tokens_per_s, ls=_LINESTYLES[(i + 1) % len(_LINESTYLES)], lw=1.2, color=f"C{i + 1}",
                   label=f"rule {r.x}: split {r.split_points}")
    _integer_axis(ax, points)
    report.finish_axes(ax, title="2-stage GPipe split sweep", xlabel="split point: first block of stage 2 [block index]",
                       ylabel="tokens/s, whole job [tokens/s]")


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
    transfer = ("Memory per rank, bytes per step and the schedule's bubble fraction do not depend on the hardware "
                "and are the figures that transfer.")
    if _on_gpu(table):
        return ("These runs used GPUs: tokens/s depends on the GPUs and their interconnect, so compare orderings "
                "and ratios with the seeds', not absolute values. " + transfer)
    return ("These runs used CPU processes only. On a CPU with 2 shared cores every worker competes for the same "
            "cores, so tokens/s shows the overheads of each strategy (collectives, schedule ticks, sharding), not "
            "the speed-ups the seeds measured on GPUs. " + transfer)
