"""Parallel dimensions: how a run's ranks split into named groups, and the device mesh of them.

Why: tensor, sharded-data and pipeline parallelism (and their combinations with data
parallelism) each talk inside their own sub-group of ranks. A method declares its degrees
once; the core checks them against the world size before any process starts and builds
one named :class:`~torch.distributed.device_mesh.DeviceMesh` (torchtitan's ``ParallelDims``
idea), so a method asks ``mesh["tp"]`` instead of computing rank arithmetic itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

#: Mesh dimensions, outermost first (a rank's coordinates are row-major in this order):
#: pipeline stages outermost, so a stage's ranks are contiguous; tensor parallel innermost,
#: so its ranks share a node (the dimension with the most traffic per step).
DIM_ORDER = ("pp", "dp_replicate", "window", "dp_shard", "tp")

DIM_HELP = {
    "pp": "pipeline stages (each holds a contiguous slice of the model's blocks)",
    "dp_replicate": "data-parallel replicas (full copies of the model, gradients averaged: DDP, local SGD)",
    "window": "PASO/OptEx window positions (one optimizer step of the window each)",
    "dp_shard": "data-parallel shards (parameters sharded across them: FSDP2)",
    "tp": "tensor-parallel ranks (each holds a slice of every layer)",
}


class DimsError(ValueError):
    """The degrees cannot tile the world: raised before any process starts."""


@dataclass(frozen=True)
class ParallelDims:
    """The degree of every parallel dimension; their product is the world size."""

    pp: int = 1
    dp_replicate: int = 1
    window: int = 1
    dp_shard: int = 1
    tp: int = 1

    def __post_init__(self) -> None:
        for name in DIM_ORDER:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DimsError(f"parallel degree {name}={value!r} is not valid; it must be an integer >= 1")

    @property
    def world_size(self) -> int:
        return math.prod(self.degrees().values())

    def degrees(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def enabled(self) -> dict[str, int]:
        """The dimensions with degree > 1, outermost first (the mesh's dimensions)."""
        return {name: getattr(self, name) for name in DIM_ORDER if getattr(self, name) > 1}

    def check_world(self, world: int) -> None:
        """Reject degrees whose product is not the number of processes."""
        if self.world_size != world:
            shown = " x ".join(f"{k}={v}" for k, v in self.enabled().items()) or "all degrees 1"
            raise DimsError(f"parallel degrees {shown} need {self.world_size} processes, but the run has "
                            f"nproc*nnodes={world}; make the product of the degrees equal nproc*nnodes")

    def mesh_shape(self) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """Shape and names of the mesh; a run without parallelism is a 1-D mesh of one rank."""
        enabled = self.enabled() or {"dp_replicate": 1}
        return tuple(enabled.values()), tuple(enabled)

    def coordinates(self, rank: int) -> dict[str, int]:
        """This rank's coordinate along every dimension (0 along those of degree 1)."""
        if not 0 <= rank < self.world_size:
            raise DimsError(f"rank {rank} is outside 0..{self.world_size - 1}")
        coords = {name: 0 for name in DIM_ORDER}
        rest = rank
        for name in reversed(DIM_ORDER):
            degree = getattr(self, name)
            coords[name] = rest % degree
            rest //= degree
        return coords

    def rank_at(self, **coords: int) -> int:
        """The global rank at the given coordinates (omitted dimensions: 0)."""
        unknown = sorted(set(coords) - set(DIM_ORDER))
        if unknown:
            raise DimsError(f"unknown mesh dimension(s) {unknown}; choose from: {', '.join(DIM_ORDER)}")
        rank = 0
        for name in DIM_ORDER:
            degree, c = getattr(self, name), coords.get(name, 0)
            if not 0 <= c < degree:
                raise DimsError(f"coordinate {name}={c} is outside 0..{degree - 1}")
            rank = rank * degree + c
        return rank

    def logging_rank(self) -> int:
        """The rank that writes metrics and the summary: the first rank of the last pipeline
        stage, which is where the loss of a pipelined step exists (rank 0 without pipelining)."""
        return self.rank_at(pp=self.pp - 1)

    def data_parallel(self, rank: int) -> tuple[int, int]:
        """``(dp_rank, dp_size)`` over replicas and shards: which share of a global batch a rank takes."""
        c = self.coordinates(rank)
        return c["dp_replicate"] * self.dp_shard + c["dp_shard"], self.dp_replicate * self.dp_shard

    def describe(self) -> dict[str, Any]:
        shape, names = self.mesh_shape()
        return {"degrees": self.degrees(), "mesh_shape": list(shape), "mesh_dim_names": list(names)}


def build_mesh(dims: ParallelDims, device_type: str) -> "DeviceMesh":
    """The named device mesh of ``dims`` (gloo on CPU, NCCL on CUDA); needs the process group."""
    from torch.distributed.device_mesh import init_device_mesh

    shape, names = dims.mesh_shape()
    return init_device_mesh(device_type, shape, mesh_dim_names=names)
