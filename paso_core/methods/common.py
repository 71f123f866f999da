"""Small helpers the methods share: flat parameter views, gradients, final evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..context import WorkerContext
from ..tasks.base import Batch, Task


@dataclass(frozen=True)
class FlatLayout:
    """Where each trainable parameter lives inside a flat vector (offset, shape), plus padding.

    Why padding: with ``align_bytes`` every parameter starts on the same boundary a fresh
    allocation would (512 bytes covers the CPU and CUDA allocators), so BLAS/oneDNN kernels
    that pick code paths by address see the same alignment as in serial training, and the
    gradients computed on these views are the serial ones bit for bit.
    """

    offsets: tuple[int, ...]
    shapes: tuple[torch.Size, ...]
    total: int

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def n_real(self) -> int:
        """Elements that are parameters (the rest is padding, always zero)."""
        return sum(self.numels)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """One view per parameter, shaped like it, into ``flat``."""
        return [flat[o:o + n].view(s) for o, n, s in zip(self.offsets, self.numels, self.shapes)]

    def pack(self, flat: torch.Tensor) -> torch.Tensor:
        """The parameters without padding, concatenated (model.parameters() order)."""
        return torch.cat([v.reshape(-1) for v in self.views(flat)])

    def unpack_(self, flat: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        """Write an unpadded vector (as :meth:`pack` returns) into ``flat``."""
        start = 0
        for view in self.views(flat):
            n = view.numel()
            view.copy_(packed[start:start + n].view_as(view))
            start += n
        return flat


def layout_of(model: nn.Module, align_bytes: int = 0) -> FlatLayout:
    params = [p for p in model.parameters() if p.requires_grad]
    align = max(1, align_bytes // params[0].element_size()) if params and align_bytes else 1
    offsets, offset = [], 0
    for p in params:
        offsets.append(offset)
        offset += -(-p.numel() // align) * align
    return FlatLayout(tuple(offsets), tuple(p.shape for p in params), offset)


def bind_flat_params(model: nn.Module, align_bytes: int = 0) -> tuple[torch.Tensor, FlatLayout]:
    """Make every trainable parameter a view into one flat vector; return it and its layout.

    Step-parallel methods move whole parameter vectors between workers; with views there
    is exactly one copy of the parameters, and sending it needs no packing.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    layout = layout_of(model, align_bytes)
    flat = params[0].new_zeros(layout.total) if params else torch.zeros(0)
    for p, view in zip(params, layout.views(flat)):
        view.copy_(p.detach())
        p.data = view
    return flat, layout


def flat_params(model: nn.Module) -> torch.Tensor:
    """:func:`bind_flat_params` without padding (the vector is exactly the parameters)."""
    return bind_flat_params(model)[0]


def flat_grad(model: nn.Module, out: torch.Tensor, layout: FlatLayout | None = None) -> torch.Tensor:
    """Copy the model's gradients into the flat buffer ``out`` (zeros where a grad is None)."""
    layout = layout or layout_of(model)
    params = [p for p in model.parameters() if p.requires_grad]
    for p, view in zip(params, layout.views(out)):
        if p.grad is None:
            view.zero_()
        else:
            view.copy_(p.grad)
    return out


def clip_model_grads_(model: nn.Module, max_norm: float | None) -> float | None:
    """``torch.nn.utils.clip_grad_norm_`` on the model, the very call serial training makes,
    so clipped gradients are bitwise the serial ones; returns the pre-clip norm."""
    if max_norm is None:
        return None
    return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))


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
