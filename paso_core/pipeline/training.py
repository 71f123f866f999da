"""The training loop of the pipeline methods (``pp``, ``model_parallel``): one optimizer step
per global batch, the batch pushed through the stages by torch's schedule.

Each training row adds ``bubble_schedule`` (the idle fraction the schedule itself implies
for this m, n, v: :func:`schedule_oracle.bubble_of`), ``bubble_measured`` (1 - this rank's
stage compute time / step time, the maximum over ranks; the stage compute time is m times the
stage's forward+backward per micro-batch measured alone at start) and the step's phases:
``time_pipeline_s`` (the schedule's forward + backward, point-to-point waits included),
``time_grad_sync_s`` (wall time of the gradient phase: tied-gradient sums, replica averaging,
clipping) and ``time_optim_s``. The schema's ``time_compute_s`` is the schedule plus clipping
without their metered collectives, which are in ``time_comm_s`` only.
Pipeline traffic (activations forward, their gradients back) is modelled per micro-batch
boundary and counted in ``bytes_modelled``; the summary keeps every rank's figures. With
data-parallel replicas (``dims.dp_replicate > 1``) each pipeline takes its shard of the
global batch and stage gradients are averaged across replicas before clipping.
"""

from __future__ import annotations

from typing import Any

import torch

from ..context import WorkerContext
from ..memory import MEMORY_COLUMNS, state_columns, state_per_rank
from ..methods.common import (checkpoint_torch_training, evaluate_collectively, final_report,
                              resume_torch_training, should_eval)
from ..optim.updates import OptimSpec, lr_at, make_torch_optimizer, set_lr
from ..tasks.base import Task
from .stages import Pipeline, build_pipeline


def _last_stage_rank(ctx: WorkerContext) -> int:
    return ctx.dims.rank_at(**{**ctx.coords, "pp": ctx.dims.pp - 1})


def _shared_loss(ctx: WorkerContext, loss: float | None) -> float:
    """The last stage's loss on every rank of the pipeline (so all ranks check and stop alike),
    averaged over data-parallel replicas: the global batch's loss."""
    value = torch.tensor([0.0 if loss is None else loss], dtype=torch.float64, device=ctx.device)
    value = ctx.group("pp").broadcast_(value, src=_last_stage_rank(ctx))
    if ctx.dims.dp_replicate > 1:
        value = ctx.group("dp_replicate").all_reduce_(value) / ctx.dims.dp_replicate
    return float(value)


def _average_over_replicas_(ctx: WorkerContext, params: list[torch.nn.Parameter]) -> None:
    """pp x dp: every replica's stage gradients averaged (replica shards are equal, so the
    mean of their mean gradients is the global batch's)."""
    if ctx.dims.dp_replicate == 1:
        return
    replicas = ctx.group("dp_replicate")
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        replicas.all_reduce_(p.grad)
        p.grad.div_(replicas.world)


def train_pipeline(ctx: WorkerContext, task: Task, schedule: str, microbatches: int, stages_per_rank: int,
                   split: Any) -> dict[str, Any]:
    cfg = ctx.cfg
    spec = OptimSpec.from_config(cfg)
    dp_rank, dp_size = ctx.dims.data_parallel(ctx.rank)
    model = task.build_model()
    pipe: Pipeline = build_pipeline(ctx, task, model, schedule, microbatches, stages_per_rank, split,
                                    calibration=task.train_shard(0, dp_rank, dp_size))
    params = pipe.parameters()
    optimizer = make_torch_optimizer(spec, params)
    start, loss = resume_torch_training(ctx, pipe.mirror, optimizer)
    compute_alone = microbatches * pipe.stage_seconds
    last_bubbles: list[float] = []
    for step in range(start, cfg.steps):
        clock = ctx.start_iteration()
        optimizer.zero_grad(set_to_none=True)
        local = pipe.step(task, task.train_shard(step, dp_rank, dp_size))
        pipeline = clock.lap()
        pipe.sum_tied_grads_()
        _average_over_replicas_(ctx, params)
        sync = clock.lap()
        pipe.clip_grads_(spec.grad_clip)
        clip = clock.lap()
        lr = lr_at(spec, step)
        set_lr(optimizer, lr)
        optimizer.step()
        optim = clock.lap()
        loss = _shared_loss(ctx, local)
        ctx.check_finite(loss, f"step {step}")
        done = step + 1
        bubble = 1.0 - compute_alone / pipeline.wall
        memory = state_columns(params, optimizer, ctx.device)
        stats, per_rank = ctx.gather_iteration(pipeline.compute + clip.compute,
                                               [pipeline.wall, sync.wall + clip.wall, optim.compute, bubble]
                                               + [memory[k] for k in MEMORY_COLUMNS])
        seconds = clock.elapsed()
        row = {"train_loss": loss, "lr": lr, "tokens_per_s": task.items_per_step() / seconds,
               "time_pipeline_s": float(per_rank[:, 0].max()), "time_grad_sync_s": float(per_rank[:, 1].max()),
               "time_optim_s": float(per_rank[:, 2].max()),
               "bubble_schedule": pipe.info["bubble_schedule"], "bubble_measured": float(per_rank[:, 3].max()),
               **{k: float(per_rank[:, 4 + i].max()) for i, k in enumerate(MEMORY_COLUMNS)}}
        ctx.record_train(row, stats, seconds, steps_done=done, iteration=done, grad_evals=done,
                         last=done == cfg.steps)
        if done % cfg.log_every == 0 or done == cfg.steps:
            ctx.progress(done, cfg.steps, loss=loss)
        if should_eval(ctx, done, step):
            evaluate_collectively(ctx, task, pipe.mirror, steps_done=done, iteration=done, grad_evals=done)
        checkpoint_torch_training(ctx, pipe.mirror, optimizer, done, step, loss)
        last_bubbles = [float(v) for v in per_rank[:, 3]]
        ctx.maybe_stop(done)
    summary = final_report(ctx, task, pipe.mirror, cfg.steps, cfg.steps, cfg.steps, loss)
    gathered = ctx.comm.all_gather_floats([pipe.stage_seconds, float(sum(p.numel() for p in params))])
    summary.update({**pipe.info, "stage_seconds_per_microbatch_per_rank": [float(v) for v in gathered[:, 0]],
                    "trainable_params_per_rank": [int(v) for v in gathered[:, 1]],
                    "modelled_bytes_per_step": pipe.bytes_per_step, "bubble_measured_per_rank": last_bubbles,
                    **state_per_rank(ctx.comm, params, optimizer, ctx.device)})
    return summary
