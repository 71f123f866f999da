"""Asynchronous 1F1B without stashing: the latest weights in both passes of every mini-batch,
so the backward's weights are newer than the forward's (the inconsistency weight stashing
and weight prediction remove).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..context import WorkerContext
from ..pipeline.async_stage import WeightRule
from ..pipeline.async_training import WORLD_RULE, AsyncPipelineOptions, default_nproc, dims, train_async
from ..tasks.base import Task
from . import MethodSpec, register


@dataclass
class AsyncNoStashOptions(AsyncPipelineOptions):
    """The asynchronous pipeline's options only."""


def train(ctx: WorkerContext, task: Task) -> dict[str, Any]:
    return train_async(ctx, task, lambda n, k: WeightRule("async_nostash"))


SPEC = register(MethodSpec(
    name="async_nostash", summary="asynchronous 1F1B, latest weights in both passes (no stashing)",
    options=AsyncNoStashOptions, dims=dims, default_nproc=default_nproc, train=train, world_rule=WORLD_RULE))
