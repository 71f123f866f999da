"""Task registry: name -> constructor. Imports are lazy so a task's heavy dependencies
(torch, torchvision, transformers) load only when that task is used, and so that
:mod:`.layouts` can be imported by :func:`paso_core.config.validate` without torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ..config import RunConfig
    from .base import Task

_TASK_MODULES = {"synthetic": "SyntheticTask", "vision": "VisionTask", "text": "TextTask"}


def build_task(cfg: RunConfig, device: torch.device) -> Task:
    """Construct the task named by ``cfg.task`` on ``device``."""
    module = importlib.import_module(f"{__name__}.{cfg.task}")
    return getattr(module, _TASK_MODULES[cfg.task])(cfg, device)
