"""FSDP1: PyTorch's ``FullyShardedDataParallel``, one flat-parameter unit per model block.

FULL_SHARD: parameters, gradients and optimizer state are split over all ranks; each unit's
parameters are all-gathered before its forward and again before its backward, and its
gradients reduce-scattered after. ``use_orig_params=True`` keeps the model's own parameters
(names, optimizer groups); the gradient norm is clipped by FSDP's own ``clip_grad_norm_``,
which knows the shards. State dicts are taken from the FSDP root (``Wrapped.state_root``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..context import WorkerContext
from ..parallel import ParallelDims
from ..sharding import apply_fsdp1, fsdp_step_bytes, shard_units
from ..tasks.base import Task
from . import MethodSpec, register
from .data_parallel import DataParallelOptions, Wrapped, train_data_parallel


def shard_dims(cfg: Any) -> ParallelDims:
    return ParallelDims(dp_shard=cfg.world_size)


def mesh_group(ctx: WorkerContext, name: str) -> Any:
    """The :class:`Comm` of mesh dimension ``name``, or the whole world when its degree is 1."""
    return ctx.group(name) if getattr(ctx.dims, name) > 1 else ctx.comm


def wrap_fsdp1(ctx: WorkerContext, model: nn.Module, task: Task) -> Wrapped:
    shards = mesh_group(ctx, "dp_shard")
    units = shard_units(model, task.model_blocks(model))
    n_elements = sum(p.numel() for p in model.parameters())
    root = apply_fsdp1(model, units, ctx.device, shards.group)

    def account() -> None:
        shards.add_modelled(fsdp_step_bytes(n_elements, shards.world))

    return Wrapped(root, sync=account, clip=lambda max_norm: float(root.clip_grad_norm_(max_norm)),
                   state_root=root, info={"fsdp_units": [n for n, _ in units], "sharding": "FULL_SHARD",
                                          "bytes_model": "fsdp: 3 (n-1)/n x parameter bytes per step"})


def train(ctx: WorkerContext, task: Task) -> dict[str, Any]:
    return train_data_parallel(ctx, task, lambda c, m: wrap_fsdp1(c, m, task), "FSDP1 FullyShardedDataParallel")


SPEC = register(MethodSpec(
    name="fsdp", summary="FSDP1 FullyShardedDataParallel: one FULL_SHARD unit per block, use_orig_params",
    options=DataParallelOptions, dims=shard_dims, default_nproc=lambda options: 2, train=train))
