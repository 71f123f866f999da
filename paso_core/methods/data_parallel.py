"""The data-parallel training loop shared by ``naive_dp`` and ``ddp``.

Every rank takes its equal share (by its data-parallel coordinate) of step ``t``'s
*global* batch, so serial, naive DP and DDP consume the same data per step and follow the
same trajectory up to rounding. Only how gradients are averaged differs; that is the one
thing the two method files supply.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..config import RunConfig, check_batch_splits
from ..context import WorkerContext
from ..distributed import Comm
from ..optim.updates import OptimSpec, lr_at, make_torch_optimizer, set_lr
from ..options import MethodOptions
from ..parallel import ParallelDims
from ..tasks.base import Task
from .common import checkpoint_torch_training, eval_columns, final_report, resume_torch_training, should_eval

# (context, replica group, model) -> (module used for forward, gradient synchroniser called after backward)
Wrapper = Callable[[WorkerContext, Comm, nn.Module], tuple[nn.Module, Callable[[], None]]]


@dataclass
class DataParallelOptions(MethodOptions):
    """Data parallelism has no options of its own: the degree is the number of processes."""

    def check(self, cfg: RunConfig) -> None:
        check_batch_splits(cfg, cfg.world_size, f"nproc*nnodes={cfg.world_size} data-parallel shards")


def replica_dims(cfg: RunConfig) -> ParallelDims:
    return ParallelDims(dp_replicate=cfg.world_size)


def train_data_parallel(ctx: WorkerContext, task: Task, wrap: Wrapper, name: str) -> dict[str, Any]:
    cfg = ctx.cfg
    spec = OptimSpec.from_config(cfg)
    replicas = ctx.group("dp_replicate")
    dp_rank, dp_size = ctx.dims.data_parallel(ctx.rank)
    model = task.build_model()
    forward_model, sync_gradients = wrap(ctx, replicas, model)
    optimizer = make_torch_optimizer(spec, model.parameters())
    start, loss = resume_torch_training(ctx, model, optimizer)
    for step in range(start, cfg.steps):
        tic = time.perf_counter()
        batch = task.shard(task.train_batch(step), dp_rank, dp_size)
        optimizer.zero_grad(set_to_none=True)
        local = task.loss(forward_model, batch, step)
        local.backward()
        sync_gradients()
        if spec.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        time_compute = time.perf_counter() - tic
        lr = lr_at(spec, step)
        set_lr(optimizer, lr)
        optimizer.step()
        mean_loss = replicas.all_reduce_(local.detach().reshape(1).clone()) / dp_size
        loss = float(mean_loss)
        ctx.check_finite(loss, f"step {step}")
        done = step + 1
        stats, _ = ctx.gather_iteration(time_compute)
        ctx.record_train({"train_loss": loss, "lr": lr}, stats, time.perf_counter() - tic,
                         steps_done=done, iteration=done, grad_evals=done, last=done == cfg.steps)
        if done % cfg.log_every == 0 or done == cfg.steps:
            ctx.progress(done, cfg.steps, loss=loss)
        if should_eval(ctx, done, step) and ctx.is_main:
            ctx.record_eval(eval_columns(task, model), steps_done=done, iteration=done, grad_evals=done)
        checkpoint_torch_training(ctx, model, optimizer, done, step, loss)
        ctx.maybe_stop(done)
    summary = final_report(ctx, task, model, cfg.steps, cfg.steps, cfg.steps, loss)
    summary["gradient_sync"] = name
    return summary
