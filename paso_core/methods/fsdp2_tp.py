"""2-D parallelism: tensor parallel inside, FSDP2 across, on a ``dp_shard x tp`` mesh.

torchtitan's order: the projections are first split over ``tp`` (:mod:`.tp`), then each
block and the root are ``fully_shard``-ed over the ``dp_shard`` sub-mesh, so a parameter is
a 2-D DTensor (sharded along dim 0 by FSDP, along its TP dimension by TP). Each
``dp_shard`` coordinate takes its share of the global batch; its ``tp`` ranks share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..config import check_batch_splits
from ..context import WorkerContext
from ..options import ConfigError, MethodOptions, check_choices, check_int, option
from ..parallel import ParallelDims
from ..sharding import (apply_fsdp2, check_fsdp2_torch, check_tp_supported, clip_grad_norm_mixed_,
                        fsdp_step_bytes, local_numel, shard_units)
from ..tasks.base import Task
from . import MethodSpec, register
from .data_parallel import Wrapped, train_data_parallel
from .tp import apply_tp_with_bytes


@dataclass
class FSDP2TPOptions(MethodOptions):
    """The tensor-parallel degree; the data-parallel shard degree is the rest of the world."""

    tp: int = option(2, "tensor-parallel degree (ranks per TP group); dp_shard = nproc*nnodes / tp")

    def check(self, cfg: Any) -> None:
        check_choices(self)
        check_int("tp", self.tp, 1)
        world = cfg.world_size
        if world % self.tp or world // self.tp < 2:
            raise ConfigError(f"tp={self.tp} does not leave a data-parallel shard degree of at least 2 in "
                              f"nproc*nnodes={world} (dp_shard = world / tp must be an integer >= 2); choose tp "
                              f"among {[d for d in range(1, world // 2 + 1) if world % d == 0 and world // d >= 2]} "
                              "or method='tp'")
        check_tp_supported(cfg, self.tp)
        check_batch_splits(cfg, world // self.tp, f"dp_shard={world // self.tp} data-parallel shards")
        check_fsdp2_torch(cfg)


def two_d_dims(cfg: Any) -> ParallelDims:
    tp = cfg.options.tp
    return ParallelDims(dp_shard=max(1, cfg.world_size // tp), tp=tp)


def wrap_fsdp2_tp(ctx: WorkerContext, model: nn.Module, task: Task) -> Wrapped:
    info, account_tp = apply_tp_with_bytes(ctx, model)
    shards = ctx.group("dp_shard")
    n_local = local_numel(model)  # this rank's TP slice, which FSDP gathers over dp_shard
    units = shard_units(model, task.model_blocks(model))
    info.update(apply_fsdp2(model, units, ctx.mesh["dp_shard"]))

    def account() -> None:
        account_tp()
        shards.add_modelled(fsdp_step_bytes(n_local, shards.world))

    params = [p for p in model.parameters() if p.requires_grad]
    return Wrapped(model, sync=account, clip=lambda max_norm: clip_grad_norm_mixed_(params, max_norm),
                   info={**info, "mesh": "dp_shard x tp", "bytes_model": "tp (activations) + fsdp (TP-local params)"})


def train(ctx: WorkerContext, task: Task) -> dict[str, Any]:
    return train_data_parallel(ctx, task, lambda c, m: wrap_fsdp2_tp(c, m, task), "FSDP2 x tensor parallel (2-D)")


SPEC = register(MethodSpec(
    name="fsdp2_tp", summary="2-D mesh dp_shard x tp: tensor parallel inside, FSDP2 across",
    options=FSDP2TPOptions, dims=two_d_dims, default_nproc=lambda options: 4, train=train,
    world_rule="nproc*nnodes = dp_shard x tp"))
