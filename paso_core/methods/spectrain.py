"""SpecTrain (Chen et al.): asynchronous 1F1B with SGD-momentum weight prediction in both
passes: forward ``s_fwd = ⌊k/2⌋ + D-k-1`` and backward ``s_bwd = ⌊k/2⌋`` steps ahead, with
ΔW the momentum look-ahead ``μ m + g`` (``sgdm_delta``). SGD with momentum only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import RunConfig
from ..context import WorkerContext
from ..optim.prediction import SGDM_DELTAS, spectrain_steps
from ..options import ConfigError, option
from ..pipeline.async_stage import WeightRule
from ..pipeline.async_training import WORLD_RULE, AsyncPipelineOptions, default_nproc, dims, train_async
from ..tasks.base import Task
from . import MethodSpec, register


@dataclass
class SpecTrainOptions(AsyncPipelineOptions):
    sgdm_delta: str = option("lookahead", "ΔW of the prediction: lookahead = mu m_t + (1-dampening) g_t "
                             "(SpecTrain), momentum = m_t", SGDM_DELTAS)

    def check(self, cfg: RunConfig) -> None:
        super().check(cfg)
        if cfg.optimizer != "momentum":
            raise ConfigError(f"optimizer={cfg.optimizer!r} has no ΔW rule for method='spectrain' (SpecTrain "
                              "predicts with the SGD-momentum velocity); choose one of: momentum "
                              "(or method='pipeoptim', which has rules for sgd, momentum, adam, adamw)")


def train(ctx: WorkerContext, task: Task) -> dict[str, Any]:
    def rule(n_stages: int, stage: int) -> WeightRule:
        forward, backward = spectrain_steps(n_stages, stage)
        return WeightRule("spectrain", forward_ahead=forward, backward_ahead=backward,
                          sgdm_delta=ctx.options.sgdm_delta)

    return train_async(ctx, task, rule)


SPEC = register(MethodSpec(
    name="spectrain", summary="asynchronous 1F1B, both passes on SGD-momentum-predicted weights (SpecTrain)",
    options=SpecTrainOptions, dims=dims, default_nproc=default_nproc, train=train, world_rule=WORLD_RULE))
