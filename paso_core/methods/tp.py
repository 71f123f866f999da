"""Tensor parallelism: ``parallelize_module`` splits attention and MLP projections over the ``tp`` mesh.

q/k/v (and MLP gate/up) are split by output columns, so each rank computes whole heads
(and a slice of the MLP's hidden units); o (and down) by input rows, whose partial outputs
are all-reduced. Every rank holds the full batch; embeddings, norms, the LM head and what
has no correct split (gated-DeltaNet, routed experts) stay replicated. The summary names
every split and replicated module. Refused before launch: GPT-2 (fused c_attn), the ViT and
ResNet, and head counts the degree does not divide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..context import WorkerContext
from ..options import MethodOptions, check_choices
from ..parallel import ParallelDims
from ..sharding import ActivationMeter, apply_tp, check_tp_supported, clip_grad_norm_mixed_, tp_step_bytes
from ..tasks.base import Task
from . import MethodSpec, register
from .data_parallel import Wrapped, train_data_parallel
from .fsdp import mesh_group


@dataclass
class TPOptions(MethodOptions):
    """The tensor-parallel degree is the number of processes; the model must have a plan."""

    def check(self, cfg: Any) -> None:
        check_choices(self)
        check_tp_supported(cfg, cfg.world_size)


def tp_dims(cfg: Any) -> ParallelDims:
    return ParallelDims(tp=cfg.world_size)


def apply_tp_with_bytes(ctx: WorkerContext, model: nn.Module) -> tuple[dict[str, Any], Any]:
    """Split the model on the ``tp`` mesh; returns the plan's description and the byte accounting."""
    tp = mesh_group(ctx, "tp")
    mesh = ctx.mesh["tp"] if ctx.dims.tp > 1 else ctx.mesh
    plan = apply_tp(model, mesh)
    meter = ActivationMeter(model, plan.rowwise)

    def account() -> None:
        for name in plan.partial_grads:  # looked up each step: FSDP2 replaces the parameters later
            grad = model.get_parameter(name).grad
            if grad is not None:
                tp.all_reduce_(getattr(grad, "_local_tensor", grad))
        elements, elt = meter.take()
        tp.add_modelled(tp_step_bytes(elements, tp.world, elt))

    info = {**plan.describe(), "bytes_model": "tp: each row-parallel output all-reduced in forward and its "
                                              "input gradient in backward, ring 2 (n-1)/n x b*s*h each"}
    return info, account


def wrap_tp(ctx: WorkerContext, model: nn.Module) -> Wrapped:
    info, account = apply_tp_with_bytes(ctx, model)
    params = [p for p in model.parameters() if p.requires_grad]
    return Wrapped(model, sync=account, clip=lambda max_norm: clip_grad_norm_mixed_(params, max_norm), info=info)


def train(ctx: WorkerContext, task: Task) -> dict[str, Any]:
    return train_data_parallel(ctx, task, wrap_tp, "tensor parallel (all-reduce of activations)")


SPEC = register(MethodSpec(
    name="tp", summary="tensor parallel: attention/MLP projections split column/row-wise over the tp mesh",
    options=TPOptions, dims=tp_dims, default_nproc=lambda options: 2, train=train,
    world_rule="the tensor-parallel degree is nproc*nnodes"))
