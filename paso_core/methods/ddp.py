"""PyTorch DistributedDataParallel: bucketed all-reduce overlapped with backward."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..context import WorkerContext
from ..tasks.base import Task
from .data_parallel import train_data_parallel


def wrap_ddp(ctx: WorkerContext, model: nn.Module) -> tuple[nn.Module, Callable[[], None]]:
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    ddp_model = DistributedDataParallel(model, device_ids=device_ids)
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)

    def account() -> None:
        # DDP's all-reduce runs inside backward, outside Comm: count it with the ring model.
        ctx.comm.bytes_sent += int(2 * (ctx.world - 1) / ctx.world * grad_bytes)

    return ddp_model, account


def train(ctx: WorkerContext, task: Task) -> dict[str, Any]:
    return train_data_parallel(ctx, task, wrap_ddp, "DistributedDataParallel")
