"""PASO with threshold 0 and a fixed tolerance reproduces serial training exactly.

The reference is computed here, in-process, with ``torch.optim`` and the task's own data
(not by the ``serial`` method), so the check is independent of the code under test.
"""

from __future__ import annotations

import pytest
import torch

import paso_core
from paso_core.config import RunConfig, validate
from paso_core.optim.updates import OptimSpec, lr_at, make_torch_optimizer, set_lr
from paso_core.tasks import build_task

OPTIMIZERS = ["sgd", "momentum", "adam", "adamw"]
TASKS = {
    "synthetic": dict(task="synthetic", function="ackley", dim=300, steps=14, lr=0.02),
    "digits": dict(task="vision", dataset="digits", model="cnn", steps=10, batch_size=32, lr=0.01),
}


def reference_parameters(options: dict) -> dict[str, torch.Tensor]:
    """Plain serial training with torch.optim, written independently of paso_core.methods."""
    cfg = validate(RunConfig(method="serial", **options))
    task = build_task(cfg, torch.device("cpu"))
    model = task.build_model()
    spec = OptimSpec.from_config(cfg)
    optimizer = make_torch_optimizer(spec, model.parameters())
    for step in range(cfg.steps):
        optimizer.zero_grad()
        task.loss(model, task.train_batch(step), step).backward()
        set_lr(optimizer, lr_at(spec, step))
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("task_name", list(TASKS))
def test_paso_threshold_zero_equals_serial(task_name: str, optimizer: str) -> None:
    options = dict(TASKS[task_name], optimizer=optimizer, lr_schedule="cosine", seed=3, progress=False)
    reference = reference_parameters(options)
    for workers in (2, 4):
        result = paso_core.run(method="paso", P=workers, threshold=0.0, ema_decay=1.0, **options)
        final = torch.load(result.path / "final.pt", weights_only=True)
        diff = max_abs_diff(reference, final)
        assert diff <= 1e-5, f"P={workers}: max |paso - serial| = {diff}"
        summary = result.summary
        assert summary["steps"] == options["steps"]
        assert 1 <= summary["iterations"] <= options["steps"]
        assert summary["grad_evals"] >= summary["steps"]
        assert summary["speedup"] == pytest.approx(summary["steps"] / summary["iterations"])


def test_serial_method_matches_reference() -> None:
    options = dict(TASKS["digits"], optimizer="adam", lr_schedule="cosine", seed=3, progress=False)
    result = paso_core.run(method="serial", **options)
    final = torch.load(result.path / "final.pt", weights_only=True)
    assert max_abs_diff(reference_parameters(options), final) == 0.0
