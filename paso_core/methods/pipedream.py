"""PipeDream (Narayanan et al.): asynchronous 1F1B with weight stashing: the forward of a
mini-batch uses the stage's latest weights and stashes them, its backward uses the stash
(consistent, stale gradients), so stage ``k`` keeps up to ``D-k`` weight versions.
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
class PipeDreamOptions(AsyncPipelineOptions):
    """The asynchronous pipeline's options only."""


def train(ctx: WorkerContext, task: Task) -> dict[str, Any]:
    return train_async(ctx, task, lambda n, k: WeightRule("pipedream", stash=True))


SPEC = register(MethodSpec(
    name="pipedream", summary="asynchronous 1F1B with weight stashing (PipeDream)",
    options=PipeDreamOptions, dims=dims, default_nproc=default_nproc, train=train, world_rule=WORLD_RULE))
