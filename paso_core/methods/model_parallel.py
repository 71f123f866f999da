"""Naive model parallelism: the pipeline's stages without micro-batching (one micro-batch,
GPipe), so only one stage computes at a time -- the seeds' baseline for pipelining.

Shares everything with :mod:`.pp` (:mod:`paso_core.pipeline`); its bubble is ``(n-1)/n``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import RunConfig
from ..context import WorkerContext
from ..options import ConfigError, MethodOptions, option
from ..parallel import ParallelDims
from ..pipeline.split import SPLIT_RULES
from ..tasks.base import Task
from . import MethodSpec, register


@dataclass
class ModelParallelOptions(MethodOptions):
    split: str | list[int] = option(
        "uniform", f"stage split: {' | '.join(SPLIT_RULES)} (balanced block counts, parameters, measured "
        "time) or increasing block indices where stages 1.. start, e.g. '3' or [2, 4]")

    def check(self, cfg: RunConfig) -> None:
        from ..distributed import uses_cuda
        from ..pipeline.stages import check_split_option, check_torch_version

        super().check(cfg)
        if cfg.world_size < 2:
            raise ConfigError(f"method={cfg.method!r} needs at least 2 processes (one per stage); "
                              f"got nproc*nnodes={cfg.world_size}")
        check_split_option(cfg, self.split, cfg.world_size)
        check_torch_version(uses_cuda(cfg))


def train(ctx: WorkerContext, task: Task) -> dict[str, Any]:
    from ..pipeline.training import train_pipeline

    return train_pipeline(ctx, task, "gpipe", 1, 1, ctx.options.split)


SPEC = register(MethodSpec(
    name="model_parallel", summary="naive model parallel: pipeline stages, one micro-batch (the baseline)",
    options=ModelParallelOptions, dims=lambda cfg: ParallelDims(pp=cfg.world_size),
    default_nproc=lambda options: 2, train=train, world_rule="runs one stage per process"))
