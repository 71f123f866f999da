"""FSDP2: ``fully_shard`` per model block and at the root, on the ``dp_shard`` mesh dimension.

Parameters become DTensors sharded along dim 0 over the shards; a block's are all-gathered
for its forward and backward and its gradients reduce-scattered (averaged) after. Tied
weights (GPT-2's wte = lm_head) are left to the root group, so the one parameter has one
shard. Options: bf16 mixed precision (bf16 compute, fp32 gradient reduction) and
activation checkpointing of every block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..config import check_batch_splits
from ..context import WorkerContext
from ..options import MethodOptions, check_bool, check_choices, option
from ..sharding import apply_fsdp2, check_fsdp2_torch, clip_grad_norm_mixed_, dtype_bytes, fsdp_step_bytes, shard_units
from ..tasks.base import Task
from . import MethodSpec, register
from .data_parallel import Wrapped, train_data_parallel
from .fsdp import mesh_group, shard_dims

MIXED_PRECISION = ("none", "bf16")


@dataclass
class FSDP2Options(MethodOptions):
    """How each block is sharded: compute dtype, and whether its activations are recomputed."""

    mixed_precision: str = option("none", "FSDP2 compute dtype: none (the parameters') or bf16 "
                                  "(bf16 compute, fp32 gradient reduction)", MIXED_PRECISION)
    activation_checkpointing: bool = option(False, "recompute each block's activations in backward "
                                            "(checkpoint_wrapper before sharding)")

    def check(self, cfg: Any) -> None:
        check_choices(self)
        check_bool("activation_checkpointing", self.activation_checkpointing)
        check_batch_splits(cfg, cfg.world_size, f"nproc*nnodes={cfg.world_size} data-parallel shards")
        check_fsdp2_torch(cfg)


def wrap_fsdp2(ctx: WorkerContext, model: nn.Module, task: Task) -> Wrapped:
    opts = ctx.options
    shards = mesh_group(ctx, "dp_shard")
    mesh = ctx.mesh["dp_shard"] if ctx.dims.dp_shard > 1 else ctx.mesh
    units = shard_units(model, task.model_blocks(model))
    n_elements = sum(p.numel() for p in model.parameters())
    info = apply_fsdp2(model, units, mesh, opts.mixed_precision, opts.activation_checkpointing)
    gather_elt = dtype_bytes(opts.mixed_precision)

    def account() -> None:
        shards.add_modelled(fsdp_step_bytes(n_elements, shards.world, gather_elt=gather_elt))

    params = [p for p in model.parameters() if p.requires_grad]
    return Wrapped(model, sync=account, clip=lambda max_norm: clip_grad_norm_mixed_(params, max_norm),
                   info={**info, "bytes_model": "fsdp: 2 all-gathers + 1 reduce-scatter, (n-1)/n each"})


def train(ctx: WorkerContext, task: Task) -> dict[str, Any]:
    return train_data_parallel(ctx, task, lambda c, m: wrap_fsdp2(c, m, task), "FSDP2 fully_shard")


SPEC = register(MethodSpec(
    name="fsdp2", summary="FSDP2 fully_shard per block + root on the dp_shard mesh (bf16, activation checkpointing)",
    options=FSDP2Options, dims=shard_dims, default_nproc=lambda options: 2, train=train))
