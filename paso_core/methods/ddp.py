"""PyTorch DistributedDataParallel: bucketed all-reduce overlapped with backward."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..context import WorkerContext
from ..tasks.base import Task
from . import MethodSpec, register
from .data_parallel import DataParallelOptions, Wrapped, replica_dims, train_data_parallel


def wrap_ddp(ctx: WorkerContext, model: nn.Module) -> Wrapped:
    replicas = ctx.group("dp_replicate")
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    ddp_model = DistributedDataParallel(model, device_ids=device_ids, process_group=replicas.group)
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)

    def account() -> None:
        # DDP's all-reduce runs inside backward, outside Comm: counted by the ring formula.
        replicas.add_modelled(int(2 * (replicas.world - 1) / replicas.world * grad_bytes))

    return Wrapped(ddp_model, sync=account)


def train(ctx: WorkerContext, task: Task) -> dict[str, Any]:
    return train_data_parallel(ctx, task, wrap_ddp, "DistributedDataParallel")


SPEC = register(MethodSpec(
    name="ddp", summary="DistributedDataParallel: bucketed all-reduce overlapped with backward",
    options=DataParallelOptions, dims=replica_dims, default_nproc=lambda options: 2, train=train))
