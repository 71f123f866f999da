"""paso_core: step-parallel (PASO) and other parallel-training methods behind one API.

``run(method=..., task=..., **options)`` validates the options, launches the method under
torchrun and returns a :class:`RunResult` (summary, per-step metrics, run directory).
"""

from __future__ import annotations

from typing import Any

from .config import ConfigError, RunConfig, validate
from .launch import NonFiniteLossError, RunError, RunInterrupted, WorkerFailed, launch
from .runs import RunResult, load_run

__all__ = ["run", "canary", "RunConfig", "RunResult", "load_run", "validate", "ConfigError", "RunError",
           "WorkerFailed", "NonFiniteLossError", "RunInterrupted"]


def run(method: str = "serial", task: str = "synthetic", **options: Any) -> RunResult:
    """Run one training job; every keyword is a :class:`RunConfig` option."""
    cfg = RunConfig.from_dict({"method": method, "task": task, **options})
    return launch(cfg)


def canary(method: str, **options: Any) -> Any:
    """The first-step canary of ``method`` against serial ``torch.optim`` (one SGD step with
    lr 1): a one-row table, or :class:`paso_core.equivalence.CanaryFailed` naming the error."""
    from .equivalence import canary as run_canary

    return run_canary(method, **options)
