"""PASO's batched gradients (``batched="vmap"``), without processes: one ``vmap`` call over
several parameter sets, each on its own step's batch, gives what a loop of ordinary
forward/backward passes gives, for every model family ``VMAP_MODELS`` names."""

from __future__ import annotations

import pytest
import torch

from paso_core.config import RunConfig
from paso_core.methods.common import batched_loss_and_grads, loss_and_grad
from paso_core.methods.paso import VMAP_MODELS
from paso_core.tasks import build_task

FAMILIES = [dict(task="synthetic", function="ackley", dim=64)] + [
    dict(task="vision", dataset="digits", model=model, batch_size=8) for model in VMAP_MODELS["vision"]]


def _perturbed_sets(model: torch.nn.Module, n: int) -> list[list[torch.Tensor]]:
    """``n`` different parameter sets near the model's own (as a window's guesses are)."""
    gen = torch.Generator().manual_seed(0)
    params = [p.detach() for p in model.parameters() if p.requires_grad]
    return [[p + 0.01 * torch.randn(p.shape, generator=gen) for p in params] for _ in range(n)]


@pytest.mark.parametrize("options", FAMILIES, ids=lambda o: o.get("model", o["task"]))
def test_one_vmap_call_equals_a_loop_over_positions(options: dict) -> None:
    torch.manual_seed(0)
    task = build_task(RunConfig.from_dict({"progress": False, "seed": 3, **options}), torch.device("cpu"))
    model = task.build_model()
    sets = _perturbed_sets(model, 3)
    steps = [5, 6, 7]  # each set on its own step's batch, as the positions of a window
    batches = [task.train_batch(step) for step in steps]
    grads, losses = batched_loss_and_grads(task, model, sets, batches, steps[0])
    trainable = [p for p in model.parameters() if p.requires_grad]
    for params, batch, step, grad, loss in zip(sets, batches, steps, grads, losses):
        with torch.no_grad():
            for p, value in zip(trainable, params):
                p.copy_(value)
        want = loss_and_grad(task, model, batch, step)
        assert loss == pytest.approx(want, rel=1e-5)
        for p, g in zip(trainable, grad):
            scale = float(p.grad.norm()) + 1e-12
            assert float((g - p.grad).norm()) / scale < 1e-4  # batched kernels: rounding only
