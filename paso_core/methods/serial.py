"""Serial training: the plain loop every parallel method is measured against.

Uses ``torch.optim`` directly, so it is also the reference trajectory that PASO must
reproduce exactly when its tolerance is zero.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..context import WorkerContext
from ..optim.updates import OptimSpec, lr_at, make_torch_optimizer, set_lr
from ..tasks.base import Task
from .common import (checkpoint_torch_training, clip_model_grads_, eval_columns, final_report, loss_and_grad, resume_torch_training,
                     should_eval)


def train(ctx: WorkerContext, task: Task) -> dict[str, Any]:
    cfg = ctx.cfg
    if ctx.world != 1:
        ctx.log.warning("serial runs on rank 0 only; %d other ranks idle", ctx.world - 1)
    spec = OptimSpec.from_config(cfg)
    model = task.build_model()
    optimizer = make_torch_optimizer(spec, model.parameters())
    start, loss = resume_torch_training(ctx, model, optimizer)
    if ctx.is_main:
        for step in range(start, cfg.steps):
            loss = _one_step(ctx, task, model, optimizer, spec, step)
            done = step + 1
            if should_eval(ctx, done, step):
                ctx.log_row({"step": done, **eval_columns(task, model)})
            checkpoint_torch_training(ctx, model, optimizer, done, step, loss)
            ctx.maybe_stop(done)
    ctx.comm.barrier()
    return final_report(ctx, task, model, cfg.steps, cfg.steps, cfg.steps, loss)


def _one_step(ctx: WorkerContext, task: Task, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              spec: OptimSpec, step: int) -> float:
    tic = time.perf_counter()
    batch = task.train_batch(step)
    loss = loss_and_grad(task, model, batch, step)
    ctx.check_finite(loss, f"step {step}")
    grad_norm = clip_model_grads_(model, spec.grad_clip)
    lr = lr_at(spec, step)
    set_lr(optimizer, lr)
    optimizer.step()
    row = {"step": step, "iteration": step + 1, "train_loss": loss, "lr": lr,
           "grad_evals": step + 1, "time_grad_s": time.perf_counter() - tic}
    if grad_norm is not None:
        row["grad_norm"] = grad_norm
    if (step + 1) % ctx.cfg.log_every == 0 or step + 1 == ctx.cfg.steps:
        ctx.log_row(row)
        ctx.progress(step + 1, ctx.cfg.steps, loss=loss)
    return loss
