"""Synthetic test functions (Sphere, Ackley, Rosenbrock) as a task.

The "model" is one parameter vector ``x`` in dimension ``dim``; there is no data, so
every step's loss is the function itself and the metric is the optimality gap
``f(x) - f*`` (``f* = 0`` for all three functions).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..config import RunConfig
from .base import Batch, generator_for, microbatch_tensors


def sphere(x: torch.Tensor) -> torch.Tensor:
    return (x * x).sum()


def ackley(x: torch.Tensor, a: float = 20.0, b: float = 0.2, c: float = 2 * math.pi) -> torch.Tensor:
    mean_sq = (x * x).mean()
    mean_cos = torch.cos(c * x).mean()
    return -a * torch.exp(-b * torch.sqrt(mean_sq)) - torch.exp(mean_cos) + a + math.e


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()


FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sphere": sphere,
    "ackley": ackley,
    "rosenbrock": rosenbrock,
}
OPTIMUM_VALUE = {"sphere": 0.0, "ackley": 0.0, "rosenbrock": 0.0}


class Point(nn.Module):
    """A single parameter vector, so every method can treat the function like a model."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x = nn.Parameter(x0)

    def forward(self) -> torch.Tensor:
        """Return the point; calling the module (not reading ``.x``) lets DDP hook in."""
        return self.x


class SyntheticTask:
    """Minimise a named test function from a uniform random start in [-r, r]^d."""

    name = "synthetic"

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.function = FUNCTIONS[cfg.function]
        self.optimum = OPTIMUM_VALUE[cfg.function]

    def build_model(self) -> nn.Module:
        gen = generator_for(self.cfg.seed, step=-1, stream=1)
        r = self.cfg.init_range
        x0 = (torch.rand(self.cfg.dim, generator=gen, dtype=torch.float32) * 2 - 1) * r
        return Point(x0).to(self.device)

    def train_batch(self, step: int) -> Batch:
        return None

    def shard(self, batch: Batch, dp_rank: int, dp_size: int) -> Batch:
        return None

    def train_shard(self, step: int, dp_rank: int, dp_size: int) -> Batch:
        return None

    def microbatches(self, batch: Batch, n: int) -> list[Batch]:
        return microbatch_tensors(batch, n)

    def loss(self, model: nn.Module, batch: Batch, step: int) -> torch.Tensor:
        return self.loss_on(model(), None)

    # ------------------------------------------------------------------ blocks
    def model_blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """One block, the point itself: there is nothing to split."""
        return [("point", model)]

    def inputs(self, batch: Batch) -> None:
        return None

    def targets(self, batch: Batch) -> None:
        return None

    def forward_blocks(self, blocks: Sequence[nn.Module], x: torch.Tensor | None) -> torch.Tensor:
        """The point takes no input; any later (hypothetical) block takes the previous output."""
        for block in blocks:
            x = block() if x is None else block(x)
        return x

    def loss_on(self, outputs: torch.Tensor, targets: None = None) -> torch.Tensor:
        return self.function(outputs)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        value = float(self.function(model()))
        return {"value": value, "gap": value - self.optimum}

    def items_per_step(self) -> int:
        return 1

    def describe(self) -> dict[str, Any]:
        return {"function": self.cfg.function, "dim": self.cfg.dim, "optimum": self.optimum}
