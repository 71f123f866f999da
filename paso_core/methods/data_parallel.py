"""The training loop shared by every intra-step method: naive DP, DDP, FSDP, FSDP2, TP, FSDP2 x TP.

Every rank takes its equal share (by its data-parallel coordinate) of step ``t``'s
*global* batch, so all of them consume the same data per step as serial training and
follow the same trajectory up to rounding. What differs is how the model is *applied* to
the mesh (replicated, sharded, split by tensor dimension) and how gradients meet; each
method file supplies that as a :data:`Wrapper`, and nothing else.

Each training row adds the step's phases (``time_forward_s``, ``time_backward_s`` with the
clipping, ``time_optim_s``), ``tokens_per_s`` and this step's memory (``mem_*_mb``), each the
maximum over ranks; the summary keeps every rank's memory. The phases leave out the
communication the meter times (naive DP's all-reduce: it is in ``time_comm_s``), so compute
(forward + backward), communication and optimizer times are disjoint; what an engine overlaps
with backward outside the meter (DDP's buckets, FSDP's reduce-scatter) stays in backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..config import RunConfig, check_batch_splits
from ..context import WorkerContext
from ..memory import MEMORY_COLUMNS as MEMORY, state_columns, state_per_rank
from ..optim.updates import OptimSpec, lr_at, make_torch_optimizer, set_lr
from ..options import MethodOptions
from ..parallel import ParallelDims
from ..tasks.base import Task
from .common import (checkpoint_torch_training, evaluate_collectively, final_report, resume_torch_training,
                     should_eval)

PHASES = ("time_forward_s", "time_backward_s", "time_optim_s")


def _nothing() -> None:
    return None


@dataclass
class Wrapped:
    """A model applied to the mesh: what the forward calls, and what runs after backward."""

    module: nn.Module                                   # forward through this (DDP/FSDP wrapper or the model)
    sync: Callable[[], None] = _nothing                 # after backward: explicit all-reduce, byte accounting
    clip: Callable[[float], float] | None = None        # an engine's own clip (FSDP1); else clip_grad_norm_
    state_root: nn.Module | None = None                 # what state dicts are taken from (default: the model)
    info: dict[str, Any] = field(default_factory=dict)  # recorded in the summary (plan, policy, ...)


# (context, plain model) -> the model applied to this run's mesh
Wrapper = Callable[[WorkerContext, nn.Module], Wrapped]


@dataclass
class DataParallelOptions(MethodOptions):
    """Data parallelism has no options of its own: the degree is the number of processes."""

    def check(self, cfg: RunConfig) -> None:
        check_batch_splits(cfg, cfg.world_size, f"nproc*nnodes={cfg.world_size} data-parallel shards")


def replica_dims(cfg: RunConfig) -> ParallelDims:
    return ParallelDims(dp_replicate=cfg.world_size)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clip_(wrapped: Wrapped, params: list[nn.Parameter], max_norm: float | None) -> None:
    if max_norm is None:
        return
    if wrapped.clip is not None:
        wrapped.clip(max_norm)
    else:
        torch.nn.utils.clip_grad_norm_(params, max_norm)


def train_data_parallel(ctx: WorkerContext, task: Task, wrap: Wrapper, name: str) -> dict[str, Any]:
    cfg = ctx.cfg
    spec = OptimSpec.from_config(cfg)
    dp_rank, dp_size = ctx.dims.data_parallel(ctx.rank)
    model = task.build_model()
    wrapped = wrap(ctx, model)
    root = wrapped.state_root or model
    params = [p for p in wrapped.module.parameters() if p.requires_grad]
    optimizer = make_torch_optimizer(spec, params)
    start, loss = resume_torch_training(ctx, root, optimizer)
    tokens = task.items_per_step()
    for step in range(start, cfg.steps):
        clock = ctx.start_iteration()
        batch = task.train_shard(step, dp_rank, dp_size)
        optimizer.zero_grad(set_to_none=True)
        local = task.loss(wrapped.module, batch, step)
        _synchronize(ctx.device)
        forward = clock.lap()
        local.backward()
        wrapped.sync()
        clip_(wrapped, params, spec.grad_clip)
        _synchronize(ctx.device)
        backward = clock.lap()
        lr = lr_at(spec, step)
        set_lr(optimizer, lr)
        optimizer.step()
        _synchronize(ctx.device)
        optim = clock.lap()
        # tensor-parallel ranks of one shard hold the same loss, so the world mean is the data-parallel mean
        loss = float(ctx.comm.all_reduce_(local.detach().float().reshape(1).clone()) / ctx.world)
        ctx.check_finite(loss, f"step {step}")
        done = step + 1
        phases = [forward.compute, backward.compute, optim.compute]
        memory = state_columns(model, optimizer, ctx.device)
        stats, per_rank = ctx.gather_iteration(phases[0] + phases[1], phases + [memory[k] for k in MEMORY])
        seconds = clock.elapsed()
        row = {"train_loss": loss, "lr": lr, "tokens_per_s": tokens / seconds,
               **{k: float(per_rank[:, i].max()) for i, k in enumerate(PHASES + MEMORY)}}
        ctx.record_train(row, stats, seconds, steps_done=done, iteration=done, grad_evals=done,
                         last=done == cfg.steps)
        if done % cfg.log_every == 0 or done == cfg.steps:
            ctx.progress(done, cfg.steps, loss=loss)
        if should_eval(ctx, done, step):
            evaluate_collectively(ctx, task, root, steps_done=done, iteration=done, grad_evals=done)
        checkpoint_torch_training(ctx, root, optimizer, done, step, loss)
        ctx.maybe_stop(done)
    summary = final_report(ctx, task, root, cfg.steps, cfg.steps, cfg.steps, loss)
    summary.update(state_per_rank(ctx.comm, model, optimizer, ctx.device))
    summary.update({"gradient_sync": name, "trainable_params": sum(p.numel() for p in params), **wrapped.info})
    return summary
