"""The data-parallel training loop shared by ``naive_dp`` and ``ddp``.

Every rank takes its equal share of step ``t``'s *global* batch, so serial, naive DP and
DDP consume the same data per step and follow the same trajectory up to rounding. Only
how gradients are averaged differs; that is the one thing the two method files supply.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn

from ..context import WorkerContext
from ..optim.updates import OptimSpec, lr_at, make_torch_optimizer, set_lr
from ..tasks.base import Task
from .common import checkpoint_torch_training, eval_columns, final_report, resume_torch_training, should_eval

# (model) -> (module used for forward, gradient synchroniser called after backward)
Wrapper = Callable[[WorkerContext, nn.Module], tuple[nn.Module, Callable[[], None]]]


def train_data_parallel(ctx: WorkerContext, task: Task, wrap: Wrapper, name: str) -> dict[str, Any]:
    cfg = ctx.cfg
    spec = OptimSpec.from_config(cfg)
    model = task.build_model()
    forward_model, sync_gradients = wrap(ctx, model)
    optimizer = make_torch_optimizer(spec, model.parameters())
    start, loss = resume_torch_training(ctx, model, optimizer)
    for step in range(start, cfg.steps):
        tic = time.perf_counter()
        comm_before = ctx.comm.seconds
        batch = task.shard(task.train_batch(step), ctx.rank, ctx.world)
        optimizer.zero_grad(set_to_none=True)
        local = task.loss(forward_model, batch, step)
        local.backward()
        sync_gradients()
        if spec.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        lr = lr_at(spec, step)
        set_lr(optimizer, lr)
        optimizer.step()
        mean_loss = ctx.comm.all_reduce_(local.detach().reshape(1).clone()) / ctx.world
        loss = float(mean_loss)
        ctx.check_finite(loss, f"step {step}")
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            ctx.log_row({"step": step, "iteration": done, "train_loss": loss, "lr": lr, "grad_evals": done,
                         "time_step_s": time.perf_counter() - tic,
                         "time_comm_s": ctx.comm.seconds - comm_before, "bytes_sent": ctx.comm.bytes_sent})
            ctx.progress(done, cfg.steps, loss=loss)
        if should_eval(ctx, done, step):
            if ctx.is_main:
                ctx.log_row({"step": done, **eval_columns(task, model)})
        checkpoint_torch_training(ctx, model, optimizer, done, step, loss)
        ctx.maybe_stop(done)
    summary = final_report(ctx, task, model, cfg.steps, cfg.steps, cfg.steps, loss)
    summary["gradient_sync"] = name
    return summary
