"""Naive data parallelism, as in the PASO seed's baseline: one all-reduce per parameter.

Initial weights are broadcast from rank 0; after backward every gradient is summed across
ranks with its own collective and divided by the world size. No bucketing, no overlap of
communication with backward: this is the baseline DDP improves on.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ..context import WorkerContext
from ..tasks.base import Task
from .data_parallel import train_data_parallel


def wrap_naive(ctx: WorkerContext, model: nn.Module) -> tuple[nn.Module, Callable[[], None]]:
    for tensor in list(model.parameters()) + list(model.buffers()):
        ctx.comm.broadcast_(tensor.data, src=0)

    def sync() -> None:
        for p in model.parameters():
            if p.grad is not None:
                ctx.comm.all_reduce_(p.grad).div_(ctx.world)

    return model, sync


def train(ctx: WorkerContext, task: Task) -> dict[str, Any]:
    return train_data_parallel(ctx, task, wrap_naive, "per-parameter all-reduce")
