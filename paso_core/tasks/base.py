"""What every task gives every method: a model, the batch of step t, a loss, an evaluation.

Methods only talk to this interface, so a new task works with every method and a new
method works on every task. The batch of step ``t`` (and any randomness used while
computing its loss) is a pure function of ``(seed, t)``: PASO re-evaluates the same step
on different workers and needs the same answer each time.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Protocol, Sequence

import torch
from torch import nn

Batch = Any  # a tuple of tensors, or None for tasks without data (synthetic functions)


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed for (run seed, step, stream), so streams never collide."""
    x = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB)
    x &= (1 << 64) - 1
    x ^= x >> 31
    return x & ((1 << 63) - 1)


def generator_for(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded for (seed, step, stream)."""
    gen = torch.Generator()
    gen.manual_seed(step_seed(seed, step, stream))
    return gen


@contextlib.contextmanager
def seeded_rng(seed: int, step: int, device: torch.device) -> Iterator[None]:
    """Seed the global RNG (dropout, stochastic layers) for step ``step`` and restore it after."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(step_seed(seed, step, stream=7))
        yield


class Task(Protocol):
    """Data + model + loss + evaluation for one kind of problem."""

    name: str
    device: torch.device

    def build_model(self) -> nn.Module:
        """A freshly initialised model; identical on every rank for the same seed."""

    def train_batch(self, step: int) -> Batch:
        """The global mini-batch of optimizer step ``step`` (a pure function of seed and step)."""

    def shard(self, batch: Batch, rank: int, world: int) -> Batch:
        """This rank's equal share of a global batch (for data-parallel methods)."""

    def loss(self, model: nn.Module, batch: Batch, step: int) -> torch.Tensor:
        """Mean loss of ``model`` on ``batch``; randomness seeded by ``step``."""

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Held-out metrics of ``model`` (test accuracy, perplexity, optimality gap, ...)."""

    def items_per_step(self) -> int:
        """Examples (images, tokens, 1 for a function) consumed by one optimizer step."""

    def describe(self) -> dict[str, Any]:
        """What was actually used (dataset source, sizes), recorded in the summary."""


def shard_tensors(batch: Sequence[torch.Tensor] | None, rank: int, world: int) -> Any:
    """Split every tensor of a batch along dim 0 into ``world`` equal parts; keep part ``rank``."""
    if batch is None:
        return None
    out = []
    for tensor in batch:
        if tensor.shape[0] % world:
            raise ValueError(f"batch of {tensor.shape[0]} rows does not split into {world} equal parts")
        part = tensor.shape[0] // world
        out.append(tensor[rank * part:(rank + 1) * part])
    return tuple(out)
