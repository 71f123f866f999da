"""Pipeline parallelism: the model's blocks split into stages, one per rank (or ``v`` per rank,
interleaved), each global batch cut into micro-batches that torch's schedule pushes through.

The engine is ``torch.distributed.pipelining`` (``PipelineStage`` and ``ScheduleGPipe``,
``Schedule1F1B`` or ``ScheduleInterleaved1F1B``); :mod:`paso_core.pipeline` builds the
stages from the task's blocks, sums tied gradients, clips by the global norm and records
the schedule's bubble beside the measured one. With ``dp > 1`` each of ``dp`` replicas of the
pipeline takes its shard of the global batch and gradients are averaged across replicas
(pp x dp). Same trajectory as serial training up to the rounding of summing micro-batch
gradients (the equivalence tests check it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import RunConfig, check_batch_splits
from ..context import WorkerContext
from ..options import ConfigError, MethodOptions, check_int, option
from ..parallel import ParallelDims
from ..pipeline.schedule_oracle import SCHEDULES, interleaved_rounds
from ..pipeline.split import SPLIT_RULES
from ..tasks.base import Task
from . import MethodSpec, register


@dataclass
class PipelineOptions(MethodOptions):
    pp_schedule: str = option("1f1b", "pipeline schedule (torch.distributed.pipelining)", SCHEDULES)
    microbatches: int = option(4, "micro-batches each global batch is cut into (must divide batch_size)")
    split: str | list[int] = option(
        "uniform", f"stage split: {' | '.join(SPLIT_RULES)} (balanced block counts, parameters, measured "
        "time) or increasing block indices where stages 1.. start, e.g. '3' or [2, 4]")
    stages_per_rank: int = option(1, "stages each rank holds (interleaved_1f1b: >= 2; else 1)")
    dp: int = option(1, "data-parallel replicas of the whole pipeline (pp x dp: nproc*nnodes = pipeline ranks x dp)")

    def check(self, cfg: RunConfig) -> None:
        from ..distributed import uses_cuda
        from ..pipeline.stages import check_split_option, check_torch_version

        super().check(cfg)
        check_int("microbatches", self.microbatches)
        check_int("stages_per_rank", self.stages_per_rank)
        check_int("dp", self.dp)
        if cfg.world_size % self.dp:
            raise ConfigError(f"dp={self.dp} does not divide nproc*nnodes={cfg.world_size}; the processes are "
                              "pipeline ranks x dp replicas")
        check_batch_splits(cfg, self.dp * self.microbatches, f"dp={self.dp} shards x microbatches={self.microbatches}")
        n_ranks = pipeline_ranks(cfg)
        if n_ranks < 2:
            raise ConfigError(f"method={cfg.method!r} needs at least 2 pipeline ranks; got nproc*nnodes="
                              f"{cfg.world_size} / dp={self.dp} = {n_ranks}")
        if self.pp_schedule == "interleaved_1f1b":
            if self.stages_per_rank < 2:
                raise ConfigError(f"stages_per_rank={self.stages_per_rank} is not valid for "
                                  "pp_schedule='interleaved_1f1b'; it needs stages_per_rank >= 2")
            try:
                interleaved_rounds(self.microbatches, n_ranks)
            except ValueError as err:
                raise ConfigError(f"microbatches={self.microbatches} is not valid: {err}") from None
        elif self.stages_per_rank != 1:
            raise ConfigError(f"stages_per_rank={self.stages_per_rank} is not valid for pp_schedule="
                              f"{self.pp_schedule!r}, which holds one stage per rank; use stages_per_rank=1 "
                              "or pp_schedule='interleaved_1f1b'")
        if self.pp_schedule == "1f1b" and self.microbatches < n_ranks:
            raise ConfigError(f"microbatches={self.microbatches} is not valid for pp_schedule='1f1b' with "
                              f"{n_ranks} stages; torch's 1F1B needs microbatches >= {n_ranks}")
        check_split_option(cfg, self.split, n_ranks * self.stages_per_rank)
        check_torch_version(uses_cuda(cfg))


def pipeline_ranks(cfg: RunConfig) -> int:
    """Processes per pipeline (the ``pp`` degree): the world over the data-parallel replicas."""
    return cfg.world_size // cfg.options.dp


def train(ctx: WorkerContext, task: Task) -> dict[str, Any]:
    from ..pipeline.training import train_pipeline

    o = ctx.options
    return train_pipeline(ctx, task, o.pp_schedule, o.microbatches, o.stages_per_rank, o.split)


SPEC = register(MethodSpec(
    name="pp", summary="pipeline parallel (GPipe / 1F1B / interleaved 1F1B, torch.distributed.pipelining)",
    options=PipelineOptions, dims=lambda cfg: ParallelDims(pp=pipeline_ranks(cfg), dp_replicate=cfg.options.dp),
    default_nproc=lambda options: 2 * options.dp, train=train,
    world_rule="runs pipeline ranks x dp processes"))
