"""Gradient accumulation: serial training with each step's batch split into micro-batches.

Why it is here: it is the worked example of README "Adding a method" (the README shows
this file), and it equals serial training up to the rounding of summing micro-batch
gradients, which the equivalence matrix checks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..config import RunConfig, check_batch_splits
from ..context import WorkerContext
from ..optim.updates import OptimSpec, lr_at, make_torch_optimizer, set_lr
from ..options import MethodOptions, check_int, option
from ..parallel import ParallelDims
from ..tasks.base import Task
from . import MethodSpec, register
from .common import (checkpoint_torch_training, clip_model_grads_, eval_columns, final_report,
                     resume_torch_training, should_eval)


@dataclass
class GradAccumOptions(MethodOptions):
    micro_batches: int = option(2, "micro-batches each step's batch is split into")

    def check(self, cfg: RunConfig) -> None:
        super().check(cfg)
        check_int("micro_batches", self.micro_batches)
        check_batch_splits(cfg, self.micro_batches, f"micro_batches={self.micro_batches}")


def train(ctx: WorkerContext, task: Task) -> dict[str, Any]:
    cfg, micro_batches = ctx.cfg, ctx.options.micro_batches
    spec = OptimSpec.from_config(cfg)
    model = task.build_model()
    optimizer = make_torch_optimizer(spec, model.parameters())
    start, loss = resume_torch_training(ctx, model, optimizer)
    for step in range(start, cfg.steps):
        tic = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        for micro in task.microbatches(task.train_batch(step), micro_batches):
            part = task.loss(model, micro, step) / micro_batches
            part.backward()
            loss += float(part)
        ctx.check_finite(loss, f"step {step}")
        clip_model_grads_(model, spec.grad_clip)
        time_compute = time.perf_counter() - tic
        set_lr(optimizer, lr_at(spec, step))
        optimizer.step()
        done = step + 1
        stats, _ = ctx.gather_iteration(time_compute)
        ctx.record_train({"train_loss": loss, "lr": lr_at(spec, step)}, stats, time.perf_counter() - tic,
                         steps_done=done, iteration=done, grad_evals=done, last=done == cfg.steps)
        if should_eval(ctx, done, step):
            ctx.record_eval(eval_columns(task, model), steps_done=done, iteration=done, grad_evals=done)
        checkpoint_torch_training(ctx, model, optimizer, done, step, loss)
        ctx.maybe_stop(done)
    return final_report(ctx, task, model, cfg.steps, cfg.steps, cfg.steps, loss)


SPEC = register(MethodSpec(
    name="grad_accum", summary="serial training, each step's batch split into micro-batches (README example)",
    options=GradAccumOptions, dims=lambda cfg: ParallelDims(), default_nproc=lambda options: 1, train=train,
    world_rule="runs one process, so nproc*nnodes must be 1"))
