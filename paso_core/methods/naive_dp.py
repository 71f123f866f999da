"""Naive data parallelism, as in the PASO seed's baseline: one all-reduce per parameter.

Initial weights are broadcast from the first replica; after backward every gradient is
summed across replicas with its own collective and divided by their number. No bucketing,
no overlap of communication with backward: this is the baseline DDP improves on.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..context import WorkerContext
from ..tasks.base import Task
from . import MethodSpec, register
from .data_parallel import DataParallelOptions, Wrapped, replica_dims, train_data_parallel


def wrap_naive(ctx: WorkerContext, model: nn.Module) -> Wrapped:
    replicas = ctx.group("dp_replicate")
    first = ctx.dims.rank_at(dp_replicate=0)
    for tensor in list(model.parameters()) + list(model.buffers()):
        replicas.broadcast_(tensor.data, src=first)

    def sync() -> None:
        for p in model.parameters():
            if p.grad is not None:
                replicas.all_reduce_(p.grad).div_(replicas.world)

    return Wrapped(model, sync=sync)


def train(ctx: WorkerContext, task: Task) -> dict[str, Any]:
    return train_data_parallel(ctx, task, wrap_naive, "per-parameter all-reduce")


SPEC = register(MethodSpec(
    name="naive_dp", summary="data parallel with one all-reduce per parameter (the PASO seed's baseline)",
    options=DataParallelOptions, dims=replica_dims, default_nproc=lambda options: 2, train=train))
