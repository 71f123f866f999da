"""What every task gives every method: a model, the batch of step t, a loss, an evaluation.

Methods only talk to this interface, so a new task works with every method and a new
method works on every task. The batch of step ``t`` (and any randomness used while
computing its loss) is a pure function of ``(seed, t)``: PASO re-evaluates the same step
on different workers and needs the same answer each time.

Pipeline-parallel methods see the model as an ordered list of blocks (:meth:`Task.model_blocks`):
stage ``k`` runs :meth:`Task.forward_blocks` on its slice of blocks, the last stage applies
:meth:`Task.loss_on`, and :meth:`Task.microbatches` splits a batch for the pipeline schedule.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Protocol, Sequence

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

    def shard(self, batch: Batch, dp_rank: int, dp_size: int) -> Batch:
        """Data-parallel coordinate ``dp_rank``'s equal share of a global batch.

        Named by the data-parallel coordinate, not the global rank: with pipeline stages
        several ranks hold the same shard."""

    def train_shard(self, step: int, dp_rank: int, dp_size: int) -> Batch:
        """Coordinate ``dp_rank``'s share of step ``step``'s global batch.

        Equal to ``shard(train_batch(step), dp_rank, dp_size)``; a streaming task overrides it
        to read only its own rows, never the whole global batch."""

    def microbatches(self, batch: Batch, n: int) -> list[Batch]:
        """``batch`` split into ``n`` equal micro-batches along dim 0 (in order), for pipeline schedules."""

    def loss(self, model: nn.Module, batch: Batch, step: int) -> torch.Tensor:
        """Mean loss of ``model`` on ``batch``; randomness seeded by ``step``."""

    # ------------------------------------------------------------ the model as blocks
    def model_blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """Ordered, named blocks whose sequential composition is the whole model.

        The blocks are the model's own submodules (or thin wrappers registering them), never
        copies, so a stage's parameters *are* the model's. A parameter tied across blocks (GPT-2's
        embedding = LM head) appears in each of them; see :func:`shared_block_parameters`."""

    def inputs(self, batch: Batch) -> torch.Tensor | None:
        """What the first block takes (None for tasks without data)."""

    def targets(self, batch: Batch) -> torch.Tensor | None:
        """What :meth:`loss_on` compares the last block's outputs with."""

    def forward_blocks(self, blocks: Sequence[nn.Module], x: torch.Tensor | None) -> torch.Tensor:
        """One stage's forward: apply ``blocks`` in order to ``x`` (the previous stage's output)."""

    def loss_on(self, outputs: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """Mean loss of the last block's ``outputs``; only the last pipeline stage needs it."""

    # ------------------------------------------------------------ evaluation, bookkeeping
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Held-out metrics of ``model`` (test accuracy, perplexity, optimality gap, ...)."""

    def items_per_step(self) -> int:
        """Examples (images, tokens, 1 for a function) consumed by one optimizer step."""

    def describe(self) -> dict[str, Any]:
        """What was actually used (dataset source, sizes), recorded in the summary."""


def _part_sizes(batch: Sequence[torch.Tensor], parts: int, what: str) -> list[int]:
    """Rows per part of each tensor, or a ValueError naming the sizes that do not divide."""
    if parts < 1:
        raise ValueError(f"cannot split a batch into {parts} {what}; need at least 1")
    sizes = [int(t.shape[0]) for t in batch]
    if any(n % parts for n in sizes):
        rows = "/".join(map(str, sizes))
        raise ValueError(f"batch of {rows} rows does not split into {parts} equal {what}")
    return [n // parts for n in sizes]


def shard_tensors(batch: Sequence[torch.Tensor] | None, dp_rank: int, dp_size: int) -> Any:
    """Split every tensor of a batch along dim 0 into ``dp_size`` equal parts; keep part ``dp_rank``."""
    if batch is None:
        return None
    sizes = _part_sizes(batch, dp_size, "parts")
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank={dp_rank} is outside 0..{dp_size - 1} (dp_size={dp_size})")
    return tuple(t[dp_rank * m:(dp_rank + 1) * m] for t, m in zip(batch, sizes))


def microbatch_tensors(batch: Sequence[torch.Tensor] | None, n: int) -> list[Any]:
    """``n`` equal, consecutive slices (views) of every tensor of a batch along dim 0."""
    if batch is None:
        if n < 1:
            raise ValueError(f"cannot split a batch into {n} micro-batches; need at least 1")
        return [None] * n
    sizes = _part_sizes(batch, n, "micro-batches")
    return [tuple(t[i * m:(i + 1) * m] for t, m in zip(batch, sizes)) for i in range(n)]


def apply_blocks(blocks: Iterable[nn.Module], x: Any) -> Any:
    """Sequential composition, exactly what each model's own forward does between blocks."""
    for block in blocks:
        x = block(x)
    return x


class InputTargetTask:
    """What every task whose batch is ``(inputs, targets)`` does the same way: sharding,
    micro-batching and stage forwards are slices along dim 0 and block composition."""

    def shard(self, batch: Batch, dp_rank: int, dp_size: int) -> Batch:
        return shard_tensors(batch, dp_rank, dp_size)

    def train_shard(self, step: int, dp_rank: int, dp_size: int) -> Batch:
        return self.shard(self.train_batch(step), dp_rank, dp_size)  # type: ignore[attr-defined]

    def microbatches(self, batch: Batch, n: int) -> list[Batch]:
        return microbatch_tensors(batch, n)

    def inputs(self, batch: Batch) -> torch.Tensor:
        return batch[0]

    def targets(self, batch: Batch) -> torch.Tensor:
        return batch[1]

    def forward_blocks(self, blocks: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
        return apply_blocks(blocks, x)


def shared_block_parameters(blocks: Sequence[tuple[str, nn.Module]]) -> dict[str, list[str]]:
    """Parameters held by more than one block (tied weights): ``{block:param name: [blocks]}``.

    A pipeline method must sum such a parameter's gradient over the stages that hold it
    (as Megatron does for tied embeddings); everything else belongs to exactly one block."""
    owners: dict[int, tuple[str, list[str]]] = {}
    for block_name, block in blocks:
        for param_name, param in block.named_parameters():
            entry = owners.setdefault(id(param), (f"{block_name}:{param_name}", []))
            if block_name not in entry[1]:
                entry[1].append(block_name)
    return {name: holders for name, holders in owners.values() if len(holders) > 1}
