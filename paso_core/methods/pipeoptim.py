"""PipeOptim (Guan et al.): asynchronous 1F1B whose forward on stage ``k`` runs on weights
predicted ``s = D-k-1`` steps ahead, ``Ŵ = W - lr s ΔW``, with ΔW from the optimizer's own
rule (SGD-momentum, Adam, AdamW; :mod:`paso_core.optim.prediction`); the backward runs on the
current weights, so a stage keeps at most two weight versions. The reference code's variants
are options: ``prediction_steps="reference"`` (``s = D-k``) and ``sgdm_delta="lookahead"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import RunConfig
from ..context import WorkerContext
from ..optim.prediction import DELTA_RULES, PREDICTION_VARIANTS, SGDM_DELTAS, pipeoptim_steps
from ..options import ConfigError, option
from ..pipeline.async_stage import WeightRule
from ..pipeline.async_training import WORLD_RULE, AsyncPipelineOptions, default_nproc, dims, train_async
from ..tasks.base import Task
from . import MethodSpec, register


@dataclass
class PipeOptimOptions(AsyncPipelineOptions):
    prediction_steps: str = option("paper", "look-ahead s on stage k: paper = D-k-1, reference = D-k (the public "
                                   "code)", PREDICTION_VARIANTS)
    sgdm_delta: str = option("momentum", "SGD-momentum's ΔW: momentum = m_t (the paper), lookahead = "
                             "mu m_t + (1-dampening) g_t (the public code)", SGDM_DELTAS)

    def check(self, cfg: RunConfig) -> None:
        super().check(cfg)
        if cfg.optimizer not in DELTA_RULES:
            raise ConfigError(f"optimizer={cfg.optimizer!r} has no ΔW rule for method='pipeoptim'; choose one of: "
                              f"{', '.join(DELTA_RULES)}")


def rule(n_stages: int, stage: int, options: PipeOptimOptions) -> WeightRule:
    return WeightRule("pipeoptim", forward_ahead=pipeoptim_steps(n_stages, stage, options.prediction_steps),
                      sgdm_delta=options.sgdm_delta)


def train(ctx: WorkerContext, task: Task) -> dict[str, Any]:
    return train_async(ctx, task, lambda n, k: rule(n, k, ctx.options))


SPEC = register(MethodSpec(
    name="pipeoptim", summary="asynchronous 1F1B, forward on weights predicted by the optimizer's own rule (PipeOptim)",
    options=PipeOptimOptions, dims=dims, default_nproc=default_nproc, train=train, world_rule=WORLD_RULE))
