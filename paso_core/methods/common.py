"""Small helpers the methods share: flat parameter views, gradients, final evaluation."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..context import WorkerContext
from ..tasks.base import Batch, Task


def flat_params(model: nn.Module) -> torch.Tensor:
    """Make every parameter a view into one flat vector and return that vector.

    Step-parallel methods move whole parameter vectors between workers; with views there
    is exactly one copy of the parameters, and sending it needs no packing.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    flat = torch.cat([p.detach().reshape(-1) for p in params]).clone()
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat[offset:offset + n].view_as(p)
        offset += n
    return flat


def flat_grad(model: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """Copy the model's gradients into the flat buffer ``out`` (zeros where a grad is None)."""
    offset = 0
    for p in model.parameters():
        if not p.requires_grad:
            continue
        n = p.numel()
        if p.grad is None:
            out[offset:offset + n].zero_()
        else:
            out[offset:offset + n].copy_(p.grad.reshape(-1))
        offset += n
    return out


def loss_and_grad(task: Task, model: nn.Module, batch: Batch, step: int) -> float:
    """Forward + backward of step ``step``; gradients left in ``.grad``; returns the loss."""
    model.zero_grad(set_to_none=True)
    loss = task.loss(model, batch, step)
    loss.backward()
    return float(loss.detach())


def final_report(ctx: WorkerContext, task: Task, model: nn.Module, steps: int, iterations: int,
                 grad_evals: int, last_loss: float) -> dict[str, Any]:
    """Evaluate and save the final model on rank 0; the summary fields every method shares."""
    summary: dict[str, Any] = {
        "steps": steps,
        "iterations": iterations,
        "grad_evals": grad_evals,
        "speedup": steps / max(1, iterations),
        "overhead": grad_evals / max(1, steps),
        "final_train_loss": last_loss,
        "items_consumed": grad_evals * task.items_per_step(),
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    if ctx.is_main:
        metrics = task.evaluate(model)
        summary.update({f"final_{k}": v for k, v in metrics.items()})
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        torch.save(state, ctx.run_dir / "final.pt")
    return summary


def eval_columns(task: Task, model: nn.Module) -> dict[str, float]:
    """Held-out metrics as ``eval_*`` columns plus ``time_eval_s``, so training-time
    comparisons can subtract evaluation cost exactly."""
    import time

    tic = time.perf_counter()
    metrics = {f"eval_{k}": v for k, v in task.evaluate(model).items()}
    metrics["time_eval_s"] = time.perf_counter() - tic
    return metrics


def should_eval(ctx: WorkerContext, done: int, previous: int) -> bool:
    every = ctx.cfg.eval_every
    return bool(every) and done // every > previous // every


def resume_torch_training(ctx: WorkerContext, model: nn.Module, optimizer: torch.optim.Optimizer
                          ) -> tuple[int, float]:
    """Restore model and optimizer from rank 0's checkpoint (ranks share one state) and open
    the metrics file; returns ``(first step to run, last loss)``."""
    checkpoint = ctx.load_checkpoint(rank=0)
    start, loss = 0, float("nan")
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start, loss = checkpoint["step"], checkpoint["loss"]
        ctx.log.info("resumed at step %d", start)
    ctx.open_metrics(keep_rows=checkpoint["metrics_rows"] if checkpoint and ctx.is_main else None)
    return start, loss


def checkpoint_torch_training(ctx: WorkerContext, model: nn.Module, optimizer: torch.optim.Optimizer,
                              done: int, previous: int, loss: float) -> None:
    """Rank 0 writes model + optimizer when a checkpoint is due (all ranks hold the same)."""
    if ctx.is_main and ctx.due_for_checkpoint(done, previous):
        ctx.save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "step": done, "loss": loss})
