"""Asynchronous 1F1B pipelines (PipeDream's schedule, no flush): the options every
asynchronous method shares, the multi-process runtime and the exact single-process simulator.

Mini-batch ``j`` is the task's step-``j`` batch, whole (no micro-batches); every stage makes
one optimizer step per backward, so a run of ``steps`` mini-batches makes ``steps`` updates
on every stage. Every process builds the whole model from the run's seed and keeps its
stage's blocks; the simulator builds one model per stage the same way, so both start from
the serial model's weights and a stage never shares a tensor with another (tied embeddings
become per-stage copies, as in PipeDream).

Runtime (``engine="processes"``, one rank per stage): activations go forward and their
gradients back with non-blocking ``isend``/``irecv`` (a stage only ever waits for the one
tensor its next action needs, so the schedule cannot deadlock); the last stage, which has
the loss, writes a training row after each backward (its own compute / wait / comm times).
Simulator (``engine="simulator"``, one process): the same :class:`AsyncStage` objects run in
a dependency-respecting global order (:func:`async_schedule.dataflow_order`), so it gives
the runtime's losses and parameters (tested) at a fraction of the cost, for long curves.

Evaluation: each stage keeps a copy of its weights after every ``eval_every`` updates; at
the end the copies of update ``t`` from all stages form the model "after ``t`` mini-batches"
and the logging rank evaluates it (an eval row per point, then ``final.pt``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..config import RunConfig
from ..context import WorkerContext
from ..methods.common import eval_columns, final_report
from ..optim.updates import OptimSpec, make_torch_optimizer
from ..options import ConfigError, MethodOptions, check_int, option
from ..parallel import ParallelDims
from ..tasks.base import Task
from .async_schedule import BACKWARD, FORWARD, async_1f1b_order, dataflow_order
from .async_stage import AsyncStage, WeightRule
from .split import SPLIT_RULES, choose_split, parse_split, stage_ranges
from .stages import StageModule, agreed_profile, check_split_option, measure_blocks, state_mirror

ENGINES = ("processes", "simulator")


@dataclass
class AsyncPipelineOptions(MethodOptions):
    stages: int = option(4, "pipeline stages (engine='processes': one process each, so nproc*nnodes = stages)")
    split: str | list[int] = option(
        "uniform", f"stage split: {' | '.join(SPLIT_RULES)} or increasing block indices where stages 1.. start")
    engine: str = option("processes", "processes: one torchrun rank per stage; simulator: the same stages "
                         "replayed exactly in one process (long convergence studies)", ENGINES)
    quality_every: int = option(10, "record prediction quality every this many mini-batches (0: never)")

    def check(self, cfg: RunConfig) -> None:
        super().check(cfg)
        check_int("stages", self.stages, 2)
        check_int("quality_every", self.quality_every, 0)
        processes = self.stages if self.engine == "processes" else 1
        if cfg.world_size != processes:
            where = (f"engine='processes' runs one process per stage, so stages={self.stages} needs "
                     f"nproc*nnodes={self.stages}" if self.engine == "processes"
                     else "engine='simulator' runs every stage in one process, so it needs nproc*nnodes=1")
            raise ConfigError(f"stages={self.stages} does not match the pipeline degree of the mesh "
                              f"(nproc*nnodes={cfg.world_size}): {where}")
        for name, bad in (("grad_clip", cfg.grad_clip is not None), ("checkpoint_every", cfg.checkpoint_every),
                          ("resume", cfg.resume), ("stop_after", cfg.stop_after is not None)):
            if bad:
                raise ConfigError(f"{name}={getattr(cfg, name)!r} is not supported by method={cfg.method!r}: "
                                  "asynchronous pipelines clip, checkpoint and stop per stage, which is not "
                                  f"implemented; leave {name} unset")
        if cfg.task == "synthetic":
            raise ConfigError(f"task='synthetic' cannot be split into pipeline stages (one block); method="
                              f"{cfg.method!r} needs task='vision' or 'text'")
        check_split_option(cfg, self.split, self.stages)


def dims(cfg: RunConfig) -> ParallelDims:
    return ParallelDims(pp=cfg.options.stages) if cfg.options.engine == "processes" else ParallelDims()


def default_nproc(options: AsyncPipelineOptions) -> int:
    return options.stages if options.engine == "processes" else 1


WORLD_RULE = "runs one process per stage (engine='processes') or one process (engine='simulator')"


# ----------------------------------------------------------------------------- stages
def stage_points(task: Task, model: torch.nn.Module, n_stages: int, split: Any, comm: Any) -> tuple[int, ...]:
    """Split points of the blocks (measured costs agreed over ``comm`` for ``time``)."""
    blocks = task.model_blocks(model)
    rule = parse_split(split)
    costs = None
    if rule in ("params", "time"):
        profile = measure_blocks(task, model, [b for _, b in blocks], task.train_batch(0))
        if comm is not None:
            profile = agreed_profile(comm, profile)
        costs = profile.params if rule == "params" else profile.seconds
    return choose_split(rule, n_stages, len(blocks), costs)


def build_stage(task: Task, cfg: RunConfig, model: torch.nn.Module, stage: int, points: tuple[int, ...],
                rule_of: Callable[[int, int], WeightRule]) -> AsyncStage:
    """Stage ``stage`` cut from ``model`` (freshly built: the serial initial weights) with its own optimizer."""
    blocks = task.model_blocks(model)
    mine = [blocks[i][1] for i in stage_ranges(points, len(blocks))[stage]]
    module = StageModule(mine, task.forward_blocks)
    spec = OptimSpec.from_config(cfg)
    optimizer = make_torch_optimizer(spec, module.parameters())
    n_stages = cfg.options.stages
    return AsyncStage(stage, n_stages, module, state_mirror(model, mine), optimizer, spec, rule_of(n_stages, stage),
                      task.loss_on, cfg.eval_every, cfg.steps, cfg.options.quality_every)


def boundary_shapes(task: Task, model_blocks: list[Any], points: tuple[int, ...]) -> list[tuple[torch.Size, torch.dtype]]:
    """Shape and dtype of the tensor leaving each stage but the last (one no-grad forward of step 0)."""
    ranges = stage_ranges(points, len(model_blocks))
    x = task.inputs(task.train_batch(0))
    out = []
    with torch.no_grad():
        for r in ranges[:-1]:
            x = task.forward_blocks([model_blocks[i][1] for i in r], x)
            out.append((x.shape, x.dtype))
    return out


def merged_model(task: Task, parts: list[dict[str, torch.Tensor]]) -> torch.nn.Module:
    """A whole model holding every stage's weights (later stages win on tied names)."""
    model = task.build_model()
    state = model.state_dict()
    for part in parts:
        state.update(part)
    model.load_state_dict(state)
    return model


def evaluate_snapshots(ctx: WorkerContext, task: Task, per_stage: list[dict[int, dict[str, torch.Tensor]]]) -> None:
    """An eval row per common snapshot point: the model whose every stage made ``t`` updates."""
    points = sorted(set.intersection(*(set(s) for s in per_stage)))
    for t in points:
        model = merged_model(task, [s[t] for s in per_stage])
        ctx.record_eval(eval_columns(task, model), steps_done=t, iteration=t, grad_evals=t)


def _row(stage: AsyncStage, loss: float, done: int, seconds: float, bytes_sent: int, since: dict[str, float],
         items: int) -> tuple[dict[str, Any], dict[str, float]]:
    times = stage.times
    stats = {"time_compute_s": times.compute - since["compute"],
             "time_comm_s": (times.wait + times.comm) - since["comm"],
             "bytes_measured": bytes_sent, "bytes_modelled": 0, "bytes_iter_max": bytes_sent - int(since["bytes"])}
    since.update(compute=times.compute, comm=times.wait + times.comm, bytes=bytes_sent)
    row = {"train_loss": loss, "lr": stage.optimizer.param_groups[0]["lr"], "tokens_per_s": items / seconds,
           "weight_versions": stage.max_versions, "time_wait_s": times.wait}
    return row, stats


def _finish(ctx: WorkerContext, task: Task, stages_summary: list[dict[str, Any]],
            quality: list[list[tuple[int, float]]], points: tuple[int, ...], model_for_final: torch.nn.Module,
            last_loss: float, rule_name: str) -> dict[str, Any]:
    cfg = ctx.cfg
    summary = final_report(ctx, task, model_for_final, cfg.steps, cfg.steps, cfg.steps, last_loss)
    blocks = task.model_blocks(task.build_model()) if ctx.is_main else []
    summary.update({
        "pipeline": "async_1f1b", "weight_rule": rule_name, "engine": cfg.options.engine,
        "stages": cfg.options.stages, "split_points": list(points),
        "stage_blocks": [[blocks[i][0] for i in r] for r in stage_ranges(points, len(blocks))] if blocks else [],
        "per_stage": stages_summary,
        "max_weight_versions_per_stage": [s["max_weight_versions"] for s in stages_summary],
        "prediction_quality": {str(k): q for k, q in enumerate(quality)},
    })
    return summary


# ----------------------------------------------------------------------------- runtime
def train_processes(ctx: WorkerContext, task: Task, rule_of: Callable[[int, int], WeightRule]) -> dict[str, Any]:
    """One stage per rank; activations and gradients by non-blocking point-to-point."""
    cfg = ctx.cfg
    comm = ctx.group("pp")
    k, n_stages = ctx.coords["pp"], cfg.options.stages
    model = task.build_model()
    points = stage_points(task, model, n_stages, cfg.options.split, ctx.comm)
    shapes = boundary_shapes(task, task.model_blocks(model), points)
    stage = build_stage(task, cfg, model, k, points, rule_of)
    previous = ctx.dims.rank_at(pp=k - 1) if k > 0 else None
    following = ctx.dims.rank_at(pp=k + 1) if k < n_stages - 1 else None
    ctx.open_metrics()
    sends: list[tuple[Any, torch.Tensor]] = []
    since = {"compute": 0.0, "comm": 0.0, "bytes": 0.0}
    last_loss, tic = float("nan"), time.perf_counter()
    losses: dict[int, float] = {}
    peak_update_bytes = bytes_at_update = 0  # bytes this stage sent between two of its updates

    def receive(shape: torch.Size, dtype: torch.dtype, src: int) -> torch.Tensor:
        buffer = torch.empty(shape, dtype=dtype, device=ctx.device)
        t0 = time.perf_counter()
        work = comm.irecv(buffer, src)
        t1 = time.perf_counter()
        work.wait()
        stage.times.comm += t1 - t0
        stage.times.wait += time.perf_counter() - t1
        return buffer

    def send(tensor: torch.Tensor, dst: int) -> None:
        t0 = time.perf_counter()
        payload = tensor.contiguous()
        sends.append((comm.isend(payload, dst), payload))
        while sends and sends[0][0].is_completed():
            sends.pop(0)
        stage.times.comm += time.perf_counter() - t0

    for action in async_1f1b_order(cfg.steps, n_stages, k):
        j = action.microbatch
        if action.kind == FORWARD:
            batch = task.train_batch(j) if k in (0, n_stages - 1) else None
            x = task.inputs(batch) if k == 0 else receive(*shapes[k - 1], previous)
            out = stage.forward(j, x, task.targets(batch) if stage.is_last else None)
            if following is not None:
                send(out, following)
            else:
                losses[j] = float(out)
                ctx.check_finite(losses[j], f"mini-batch {j}")
            continue
        grad = receive(*shapes[k], following) if following is not None else None
        grad_input = stage.backward(j, grad)
        if previous is not None and grad_input is not None:
            send(grad_input, previous)
        peak_update_bytes = max(peak_update_bytes, comm.meter.measured - bytes_at_update)
        bytes_at_update = comm.meter.measured
        if stage.is_last:
            last_loss = losses.pop(j)
            seconds, tic = time.perf_counter() - tic, time.perf_counter()
            row, stats = _row(stage, last_loss, j + 1, seconds, comm.meter.measured, since, task.items_per_step())
            ctx.record_train(row, stats, seconds, steps_done=j + 1, iteration=j + 1, grad_evals=j + 1,
                             last=j + 1 == cfg.steps)
            if (j + 1) % cfg.log_every == 0 or j + 1 == cfg.steps:
                ctx.progress(j + 1, cfg.steps, loss=last_loss)
    t0 = time.perf_counter()
    for work, _ in sends:
        work.wait()
    stage.times.comm += time.perf_counter() - t0
    last = ctx.dims.rank_at(pp=n_stages - 1)
    loss_tensor = comm.broadcast_(torch.tensor([last_loss], dtype=torch.float64, device=ctx.device), src=last)
    snapshots = comm.gather_objects(stage.snapshots, dst=last)
    infos = comm.gather_objects(({**stage.summary(), "bytes_update_max": peak_update_bytes}, stage.quality), dst=last)
    if ctx.is_main:
        # no collective per update in an asynchronous pipeline: the busiest stage's figure at the end
        ctx.bytes_iter_max = max(info[0]["bytes_update_max"] for info in infos)
        evaluate_snapshots(ctx, task, snapshots)
    summaries = [i[0] for i in infos] if infos else []
    quality = [i[1] for i in infos] if infos else []
    return _finish(ctx, task, summaries, quality, points, stage.mirror, float(loss_tensor), rule_of(n_stages, k).name)


# ----------------------------------------------------------------------------- simulator
def replay(stages: list[AsyncStage], steps: int, batch_of: Callable[[int], tuple[Any, Any]],
           on_update: Callable[[int, float], None] = lambda j, loss: None) -> list[float]:
    """Run every stage's asynchronous 1F1B order in one process, in a dataflow order.

    ``batch_of(j)`` gives mini-batch ``j``'s (stage-0 input, last-stage targets); the tensors a
    stage would send are handed over in FIFO dictionaries instead. ``on_update(j, loss)`` runs
    after the last stage's update for mini-batch ``j``. Returns the loss of every mini-batch.
    Pure of any process group, so the closed-form and version tests drive it directly."""
    n_stages = len(stages)
    orders = {k: async_1f1b_order(steps, n_stages, k) for k in range(n_stages)}
    activations: dict[tuple[int, int], torch.Tensor] = {}   # (stage receiving, mini-batch)
    gradients: dict[tuple[int, int], torch.Tensor] = {}
    pending: dict[int, float] = {}
    losses: list[float] = []
    for action in dataflow_order(orders, n_stages):
        j, k = action.microbatch, action.stage
        stage = stages[k]
        if action.kind == FORWARD:
            inputs, targets = batch_of(j) if k in (0, n_stages - 1) else (None, None)
            out = stage.forward(j, inputs if k == 0 else activations.pop((k, j)), targets)
            if stage.is_last:
                pending[j] = float(out)
            else:
                activations[(k + 1, j)] = out.clone()
            continue
        grad_input = stage.backward(j, gradients.pop((k, j), None))
        if k > 0 and grad_input is not None:
            gradients[(k - 1, j)] = grad_input.clone()
        if stage.is_last:
            losses.append(pending.pop(j))
            on_update(j, losses[-1])
    return losses


def simulate(ctx: WorkerContext, task: Task, rule_of: Callable[[int, int], WeightRule]) -> dict[str, Any]:
    """Every stage in this process (:func:`replay`), built exactly as the runtime builds them."""
    cfg = ctx.cfg
    n_stages = cfg.options.stages
    points = stage_points(task, task.build_model(), n_stages, cfg.options.split, None)
    stages = [build_stage(task, cfg, task.build_model(), k, points, rule_of) for k in range(n_stages)]
    ctx.open_metrics()
    since = {"compute": 0.0, "comm": 0.0, "bytes": 0.0}
    clock = {"tic": time.perf_counter()}

    def batch_of(j: int) -> tuple[Any, Any]:
        batch = task.train_batch(j)
        return task.inputs(batch), task.targets(batch)

    def on_update(j: int, loss: float) -> None:
        ctx.check_finite(loss, f"mini-batch {j}")
        now = time.perf_counter()
        seconds, clock["tic"] = now - clock["tic"], now
        row, stats = _row(stages[-1], loss, j + 1, seconds, 0, since, task.items_per_step())
        ctx.record_train(row, stats, seconds, steps_done=j + 1, iteration=j + 1, grad_evals=j + 1,
                         last=j + 1 == cfg.steps)
        if (j + 1) % cfg.log_every == 0 or j + 1 == cfg.steps:
            ctx.progress(j + 1, cfg.steps, loss=loss)

    losses = replay(stages, cfg.steps, batch_of, on_update)
    evaluate_snapshots(ctx, task, [s.snapshots for s in stages])
    final = merged_model(task, [{k: v.detach().clone() for k, v in s.mirror.state_dict().items()} for s in stages])
    return _finish(ctx, task, [s.summary() for s in stages], [s.quality for s in stages], points, final,
                   losses[-1], stages[0].rule.name)


def train_async(ctx: WorkerContext, task: Task, rule_of: Callable[[int, int], WeightRule]) -> dict[str, Any]:
    """The method's ``train``: the runtime or the simulator, as ``engine`` says."""
    run = simulate if ctx.cfg.options.engine == "simulator" else train_processes
    return run(ctx, task, rule_of)


__all__ = ["AsyncPipelineOptions", "ENGINES", "WORLD_RULE", "BACKWARD", "default_nproc", "dims", "train_async"]
