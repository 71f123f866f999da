"""Serial training: the plain loop every parallel method is measured against.

Uses ``torch.optim`` directly, so it is also the reference trajectory that PASO must
reproduce exactly when its tolerance is zero.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ..context import WorkerContext
from ..memory import state_columns
from ..optim.updates import OptimSpec, lr_at, make_torch_optimizer, set_lr
from ..options import MethodOptions
from ..parallel import ParallelDims
from ..tasks.base import Task
from . import MethodSpec, register
from .common import (checkpoint_torch_training, clip_model_grads_, eval_columns, final_report, loss_and_grad,
                     resume_torch_training, should_eval)


@dataclass
class SerialOptions(MethodOptions):
    """Serial training has no options of its own."""


def train(ctx: WorkerContext, task: Task) -> dict[str, Any]:
    cfg = ctx.cfg
    spec = OptimSpec.from_config(cfg)
    model = task.build_model()
    optimizer = make_torch_optimizer(spec, model.parameters())
    start, loss = resume_torch_training(ctx, model, optimizer)
    for step in range(start, cfg.steps):
        loss = one_step(ctx, task, model, optimizer, spec, step)
        done = step + 1
        if should_eval(ctx, done, step):
            ctx.record_eval(eval_columns(task, model), steps_done=done, iteration=done, grad_evals=done)
        checkpoint_torch_training(ctx, model, optimizer, done, step, loss)
        ctx.maybe_stop(done)
    return final_report(ctx, task, model, cfg.steps, cfg.steps, cfg.steps, loss)


def one_step(ctx: WorkerContext, task: Task, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             spec: OptimSpec, step: int) -> float:
    """Step ``step`` exactly as a plain PyTorch loop does it; writes the training row."""
    tic = time.perf_counter()
    batch = task.train_batch(step)
    loss = loss_and_grad(task, model, batch, step)
    ctx.check_finite(loss, f"step {step}")
    grad_norm = clip_model_grads_(model, spec.grad_clip)
    time_compute = time.perf_counter() - tic
    lr = lr_at(spec, step)
    set_lr(optimizer, lr)
    optimizer.step()
    stats, _ = ctx.gather_iteration(time_compute)
    seconds = time.perf_counter() - tic
    row: dict[str, Any] = {"train_loss": loss, "lr": lr, "tokens_per_s": task.items_per_step() / seconds,
                           **state_columns(model, optimizer, ctx.device)}
    if grad_norm is not None:
        row["grad_norm"] = grad_norm
    done = step + 1
    ctx.record_train(row, stats, seconds, steps_done=done, iteration=done, grad_evals=done,
                     last=done == ctx.cfg.steps)
    if done % ctx.cfg.log_every == 0 or done == ctx.cfg.steps:
        ctx.progress(done, ctx.cfg.steps, loss=loss)
    return loss


SPEC = register(MethodSpec(
    name="serial", summary="one process, torch.optim: the reference every method is compared with",
    options=SerialOptions, dims=lambda cfg: ParallelDims(), default_nproc=lambda options: 1, train=train,
    world_rule="runs one process, so nproc*nnodes must be 1 (use nproc=1, or a data-parallel method: naive_dp, ddp, to train on more workers)"))
