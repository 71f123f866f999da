"""Memory a rank holds for training: what sharding is supposed to shrink, measured per rank.

Why count tensors and not only the process peak: on CPU the resident set of a worker is
dominated by libraries and the allocator's caching, so parameters + gradients + optimizer
state (what FSDP divides by the world size) would drown in it. :func:`training_state_bytes`
adds up the storages this rank actually holds for them (local shards of DTensors, each
storage once); :func:`peak_memory_mb` is the allocator's peak on CUDA and the peak RSS on CPU.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .distributed import peak_memory_mb

__all__ = ["MEMORY_COLUMNS", "peak_memory_mb", "training_state_bytes", "state_columns", "state_per_rank"]

#: The memory columns every training row of a torch-engine method carries (MB, this rank;
#: a row reports the maximum over ranks, the summary lists every rank's value).
MEMORY_COLUMNS = ("mem_params_mb", "mem_grads_mb", "mem_optimizer_mb", "mem_state_mb", "mem_peak_mb")


def _local(tensor: torch.Tensor) -> torch.Tensor:
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def _storage_bytes(tensors: Iterable[torch.Tensor], seen: set[int]) -> int:
    total = 0
    for tensor in tensors:
        local = _local(tensor)
        storage = local.untyped_storage()
        key = storage.data_ptr()
        if key in seen or storage.nbytes() == 0:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def training_state_bytes(params: nn.Module | Iterable[torch.Tensor],
                         optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes of this rank's parameters, gradients and optimizer state (each storage once).

    ``params`` is a model or the parameters themselves (a pipeline rank's stages)."""
    seen: set[int] = set()
    params = list(params.parameters() if isinstance(params, nn.Module) else params)
    out = {"params": _storage_bytes(params, seen),
           "grads": _storage_bytes([p.grad for p in params if p.grad is not None], seen)}
    state: list[torch.Tensor] = []
    if optimizer is not None:
        for per_param in optimizer.state.values():
            state += [v for v in per_param.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    out["optimizer"] = _storage_bytes(state, seen)
    return out


def state_columns(params: nn.Module | Iterable[torch.Tensor], optimizer: torch.optim.Optimizer | None,
                  device: torch.device) -> dict[str, float]:
    """This rank's memory figures in MB: parameters, gradients, optimizer state, their sum, peak."""
    sizes = training_state_bytes(params, optimizer)
    out = {f"mem_{k}_mb": v / 2**20 for k, v in sizes.items()}
    out["mem_state_mb"] = sum(sizes.values()) / 2**20
    peak = peak_memory_mb(device)
    out["mem_peak_mb"] = peak.get("peak_cuda_mb", peak["peak_rss_mb"])
    return out


def state_per_rank(comm, params: nn.Module | Iterable[torch.Tensor], optimizer: torch.optim.Optimizer | None,
                   device: torch.device) -> dict[str, list[float]]:
    """Every rank's memory columns, as ``<column>_per_rank`` lists (collective over ``comm``).

    Why per rank: sharding and pipeline stages hold different amounts on different ranks, and
    the claim "state falls as 1/world" is about each rank, not their sum."""
    memory = state_columns(params, optimizer, device)
    gathered = comm.all_gather_floats([memory[k] for k in MEMORY_COLUMNS])
    return {f"{k}_per_rank": [float(v) for v in gathered[:, i]] for i, k in enumerate(MEMORY_COLUMNS)}
