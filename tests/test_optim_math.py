"""Pure-math tests: functional optimizer updates vs torch.optim, and the scan vs the sequential rollout."""

from __future__ import annotations

import pytest
import torch

from paso_core.optim.scan import compose, reference_rollout, simulated_scan_rollout
from paso_core.optim.updates import (
    OptimSpec, clip_flat_, functional_step, init_state, lr_at, make_torch_optimizer, set_lr)

SPECS = [
    OptimSpec("sgd", lr=0.05, steps=30),
    OptimSpec("momentum", lr=0.05, steps=30, momentum=0.9),
    OptimSpec("adam", lr=0.01, steps=30, schedule="cosine"),
    OptimSpec("adamw", lr=0.01, steps=30, schedule="cosine", weight_decay=0.1, warmup_steps=3),
    OptimSpec("sgd", lr=0.05, steps=30, weight_decay=0.01),
    OptimSpec("adam", lr=0.01, steps=30, weight_decay=0.01),
]


def _grad_fn(x: torch.Tensor, step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(step)
    return 2 * x + torch.sin(3 * x) + 0.1 * torch.randn(x.shape, generator=gen)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.name}-wd{s.weight_decay}-{s.schedule}")
def test_functional_step_matches_torch_optim(spec: OptimSpec) -> None:
    x0 = torch.linspace(-1, 1, 257)
    param = torch.nn.Parameter(x0.clone())
    opt = make_torch_optimizer(spec, [param])
    x, state = x0.clone(), init_state(spec, x0)
    for step in range(spec.steps):
        g = _grad_fn(x, step)
        param.grad = g.clone()
        set_lr(opt, lr_at(spec, step))
        opt.step()
        x, state = functional_step(spec, step, x, state, g)
        assert torch.equal(param.detach(), x), step  # bitwise: same ops as torch.optim


def test_lr_schedule_shape() -> None:
    spec = OptimSpec("adam", lr=1.0, steps=100, schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(spec, t) for t in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] >= 0.1
    assert lr_at(OptimSpec("sgd", lr=0.3, steps=5), 4) == 0.3


def test_clip_matches_torch() -> None:
    g = torch.arange(10.0)
    p = torch.nn.Parameter(torch.zeros(10))
    p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_([p], 2.0)
    assert torch.allclose(clip_flat_(g.clone(), 2.0), p.grad, atol=1e-7)
    assert torch.equal(clip_flat_(g.clone(), None), g)


def test_compose_is_associative() -> None:
    maps = [(0.5, torch.tensor([1.0, 2.0])), (2.0, torch.tensor([0.0, 1.0])), (0.1, torch.tensor([3.0, -1.0]))]
    left = compose(compose(maps[0], maps[1]), maps[2])
    right = compose(maps[0], compose(maps[1], maps[2]))
    assert left[0] == pytest.approx(right[0]) and torch.allclose(left[1], right[1])


@pytest.mark.parametrize("spec", SPECS[:4], ids=lambda s: s.name)
@pytest.mark.parametrize("window", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("start", [0, 7])
def test_scan_rollout_equals_sequential(spec: OptimSpec, window: int, start: int) -> None:
    gen = torch.Generator().manual_seed(window + start)
    x = torch.randn(64, generator=gen)
    state = {k: torch.rand(64, generator=gen) for k in spec.state_names} if start else init_state(spec, x)
    grads = [torch.randn(64, generator=gen) for _ in range(window)]
    seq = reference_rollout(spec, start, x, state, grads)
    par = simulated_scan_rollout(spec, start, x, state, grads)
    for (xs, ss), (xp, sp) in zip(seq, par):
        assert torch.allclose(xs, xp, atol=1e-5, rtol=1e-5)
        for k in spec.state_names:
            assert torch.allclose(ss[k], sp[k], atol=1e-5, rtol=1e-5)


def test_scan_refuses_coupled_weight_decay() -> None:
    spec = OptimSpec("adam", lr=0.01, steps=5, weight_decay=0.1)
    with pytest.raises(ValueError, match="relay"):
        simulated_scan_rollout(spec, 0, torch.zeros(3), init_state(spec, torch.zeros(3)), [torch.ones(3)] * 2)


def test_step_schedule_is_torch_multisteplr_at_fractions_of_the_steps() -> None:
    """The PipeOptim seed's ÷10 at epochs 40 and 60 of 70, as fractions of the steps."""
    from paso_core.optim.updates import OptimSpec, lr_at

    spec = OptimSpec(name="momentum", lr=0.01, steps=140, schedule="step", decay_at=(40 / 70, 60 / 70),
                     decay_gamma=0.1)
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=0.01)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[80, 120], gamma=0.1)
    for step in range(140):
        assert lr_at(spec, step) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12), step
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("points", [(0.75, 0.5), (0.0, 0.5), (0.5, 1.0), (0.5, 0.5)])
def test_step_schedule_points_must_be_increasing_fractions(points: tuple[float, ...]) -> None:
    from paso_core.config import RunConfig, validate
    from paso_core.options import ConfigError

    with pytest.raises(ConfigError, match=r"lr_decay_at=.*increasing fractions"):
        validate(RunConfig.from_dict({"method": "serial", "task": "synthetic", "lr_schedule": "step",
                                      "lr_decay_at": points}))
