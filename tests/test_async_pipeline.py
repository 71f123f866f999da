"""The asynchronous 1F1B pipeline without processes: its schedule, the weight-prediction
rules, the closed form of PipeOptim's prediction, and the weight versions each method keeps.

The schedule tests replay the pure action lists (:mod:`paso_core.pipeline.async_schedule`);
the stage tests drive real :class:`AsyncStage` objects through :func:`replay`, the loop the
single-process simulator runs (the multi-process runtime is compared with it in
``test_async_pipeline_runtime.py``).
"""

from __future__ import annotations

import itertools
from typing import Callable

import pytest
import torch
from torch import nn

from paso_core.optim.prediction import delta_w, pipeoptim_steps, predict, spectrain_steps
from paso_core.optim.updates import OptimSpec, make_torch_optimizer
from paso_core.pipeline import async_schedule as sched
from paso_core.pipeline.async_stage import AsyncStage, WeightRule
from paso_core.pipeline.async_training import replay
from paso_core.pipeline.schedule_oracle import BACKWARD, FORWARD, Action

SHAPES = [(steps, n) for steps in (1, 2, 3, 5, 9) for n in (1, 2, 3, 4, 5)]


# --------------------------------------------------------------------------- schedule invariants
@pytest.mark.parametrize("steps,n", SHAPES)
def test_every_stage_runs_each_pass_once_forward_first(steps: int, n: int) -> None:
    for k in range(n):
        order = sched.async_1f1b_order(steps, n, k)
        assert sorted(order) == sorted(Action(kind, j, k) for kind in (FORWARD, BACKWARD) for j in range(steps))
        position = {a: i for i, a in enumerate(order)}
        assert all(position[Action(FORWARD, j, k)] < position[Action(BACKWARD, j, k)] for j in range(steps))
        leading = min(n - k, steps)  # D-k-1 warm-up forwards, then the first steady-state forward
        assert [a.kind for a in order[:leading]] == [FORWARD] * leading
        assert order[leading].kind == BACKWARD


@pytest.mark.parametrize("steps,n", SHAPES)
def test_in_flight_bound_is_stages_left_and_reached(steps: int, n: int) -> None:
    for k in range(n):
        assert sched.in_flight(sched.async_1f1b_order(steps, n, k)) == min(n - k, steps)


@pytest.mark.parametrize("steps,n", SHAPES)
def test_measured_lag_is_min_j_and_stages_after(steps: int, n: int) -> None:
    """Replaying the order: backwards done between mini-batch j's forward and backward."""
    for k in range(n):
        seen = sched.versions_seen(sched.async_1f1b_order(steps, n, k))
        lags = [seen[(BACKWARD, j)] - seen[(FORWARD, j)] for j in range(steps)]
        assert lags == [min(j, n - 1 - k) for j in range(steps)]  # the notes' min(j-1, D-1-k), 1-based
        assert lags == [sched.lag(j, n, k) for j in range(steps)]
        assert all(seen[(BACKWARD, j)] == j for j in range(steps))  # an update after every backward


@pytest.mark.parametrize("steps,n", SHAPES)
def test_dataflow_order_keeps_each_stage_order_and_every_dependency(steps: int, n: int) -> None:
    orders = {k: sched.async_1f1b_order(steps, n, k) for k in range(n)}
    flat = list(sched.dataflow_order(orders, n))
    assert len(flat) == 2 * steps * n
    for k in range(n):
        assert [a for a in flat if a.stage == k] == orders[k]
    position = {a: i for i, a in enumerate(flat)}
    for action in flat:
        assert all(position[d] < position[action] for d in sched.dependencies(action, n))


def test_dataflow_order_names_a_deadlock() -> None:
    orders = {0: [Action(BACKWARD, 0, 0), Action(FORWARD, 0, 0)], 1: sched.async_1f1b_order(1, 2, 1)}
    with pytest.raises(RuntimeError, match="deadlock.*0B0"):
        list(sched.dataflow_order(orders, 2))


# --------------------------------------------------------------------------- prediction rules
def test_look_ahead_steps_per_stage() -> None:
    assert [pipeoptim_steps(4, k) for k in range(4)] == [3, 2, 1, 0]
    assert [pipeoptim_steps(4, k, "reference") for k in range(4)] == [4, 3, 2, 1]
    assert [spectrain_steps(4, k) for k in range(4)] == [(3, 0), (2, 0), (2, 1), (1, 1)]
    with pytest.raises(ValueError, match="prediction_steps='paperr'.*paper, reference"):
        pipeoptim_steps(4, 0, "paperr")


def _stepped(name: str, steps: int = 2, **spec: float) -> tuple[torch.optim.Optimizer, nn.Parameter, torch.Tensor]:
    """An optimizer of ``name`` after ``steps`` steps on one parameter; returns the last gradient."""
    torch.manual_seed(0)
    param = nn.Parameter(torch.randn(5, dtype=torch.float64))
    optimizer = make_torch_optimizer(OptimSpec(name=name, lr=0.1, steps=10, **spec), [param])
    grad = None
    for _ in range(steps):
        grad = torch.randn(5, dtype=torch.float64)
        param.grad = grad.clone()
        optimizer.step()
    return optimizer, param, grad


def test_delta_w_is_none_before_the_first_step() -> None:
    for name in ("sgd", "momentum", "adam", "adamw"):
        optimizer, param, _ = _stepped(name, steps=0)
        assert delta_w(optimizer, param, None) is None


def test_delta_w_sgd_is_the_last_direction_with_coupled_decay() -> None:
    optimizer, param, grad = _stepped("sgd", weight_decay=0.5)
    torch.testing.assert_close(delta_w(optimizer, param, grad), grad + 0.5 * param.detach(), rtol=0, atol=0)


def test_delta_w_momentum_is_the_buffer_or_the_look_ahead() -> None:
    optimizer, param, grad = _stepped("momentum", momentum=0.9)
    buffer = optimizer.state[param]["momentum_buffer"]
    assert delta_w(optimizer, param, grad) is buffer
    torch.testing.assert_close(delta_w(optimizer, param, grad, "lookahead"), 0.9 * buffer + grad, rtol=0, atol=0)
    with pytest.raises(ValueError, match="sgdm_delta='m'.*momentum, lookahead"):
        delta_w(optimizer, param, grad, "m")


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_delta_w_adam_is_the_bias_corrected_direction(name: str) -> None:
    optimizer, param, _ = _stepped(name, steps=3, beta1=0.8, beta2=0.9, eps=1e-3)
    state = optimizer.state[param]
    m_hat = state["exp_avg"] / (1 - 0.8 ** 3)
    v_hat = state["exp_avg_sq"] / (1 - 0.9 ** 3)
    torch.testing.assert_close(delta_w(optimizer, param, None), m_hat / (v_hat.sqrt() + 1e-3))


def test_predict_extrapolates_s_steps_and_copies_otherwise() -> None:
    weight, delta = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -1.0])
    torch.testing.assert_close(predict(weight, delta, 0.25, 2), torch.tensor([0.75, 2.5]), rtol=0, atol=0)
    same = predict(weight, None, 0.25, 2)
    assert torch.equal(same, weight) and same is not weight


# --------------------------------------------------------------------------- stages driven by replay
class Shift(nn.Module):
    """``x + b``: the gradient of a linear loss w.r.t. ``b`` is the same on every stage and step."""

    def __init__(self, start: float, width: int = 3) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.full((width,), start, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b


class Bend(Shift):
    """``tanh(x * (1 + b))``: a nonlinear stage, so weight versions matter."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x * (1 + self.b))


#: Dyadic coefficients: with lr 1/4 and integer weights every update is exact in float64.
LINEAR = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)


def linear_loss(out: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    return (out * LINEAR).sum()


def squared_loss(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return ((out - targets) ** 2).mean()


def make_stages(n: int, rule_of: Callable[[int, int], WeightRule], *, optimizer: str = "sgd", lr: float = 0.25,
                steps: int = 12, module: type[Shift] = Shift, loss=linear_loss) -> list[AsyncStage]:
    spec = OptimSpec(name=optimizer, lr=lr, steps=steps)
    stages = []
    for k in range(n):
        block = module(float(k + 1))
        stages.append(AsyncStage(k, n, block, block, make_torch_optimizer(spec, block.parameters()), spec,
                                 rule_of(n, k), loss, snapshot_every=0, total_steps=steps, quality_every=1))
    return stages


def batches(j: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(j)
    return torch.randn(3, dtype=torch.float64, generator=gen), torch.randn(3, dtype=torch.float64, generator=gen)


def pipeoptim_rule(variant: str = "paper") -> Callable[[int, int], WeightRule]:
    return lambda n, k: WeightRule("pipeoptim", forward_ahead=pipeoptim_steps(n, k, variant))


@pytest.mark.parametrize("n", [2, 3, 4])
def test_closed_form_predicted_forward_weights_are_the_backward_weights(n: int) -> None:
    """Plain SGD on a linear loss has a constant ΔW, so ``W - lr (D-k-1) ΔW`` is exactly the
    weights ``D-k-1`` updates later, when the backward of the same mini-batch runs."""
    steps = 12
    stages = make_stages(n, pipeoptim_rule(), steps=steps)
    replay(stages, steps, batches)
    for k, stage in enumerate(stages):
        ahead = n - k - 1
        # mini-batches whose forward ran on a stepped stage (a version > 0), so a prediction was made
        predicted = [j for j in range(steps) if sched.forward_version(j, n, k) > 0 and ahead > 0]
        assert [j for j, _ in stage.quality] == predicted
        assert all(gap == 0.0 for _, gap in stage.quality), (k, stage.quality)


def test_closed_form_fails_with_one_step_too_many() -> None:
    """The reference code's ``s = D - k`` overshoots by one update: the check above must see it."""
    stages = make_stages(3, pipeoptim_rule("reference"))
    replay(stages, 12, batches)
    assert all(gap > 0.4 for stage in stages[:-1] for _, gap in stage.quality)


def test_replay_makes_one_update_per_mini_batch_on_every_stage() -> None:
    stages = make_stages(3, lambda n, k: WeightRule("async_nostash"), steps=7)
    losses = replay(stages, 7, batches)
    assert len(losses) == 7 and [s.version for s in stages] == [7, 7, 7]


RULES: dict[str, Callable[[int, int], WeightRule]] = {
    "pipeoptim": lambda n, k: WeightRule("pipeoptim", forward_ahead=pipeoptim_steps(n, k)),
    "pipedream": lambda n, k: WeightRule("pipedream", stash=True),
    "async_nostash": lambda n, k: WeightRule("async_nostash"),
    "spectrain": lambda n, k: WeightRule("spectrain", *spectrain_steps(n, k), sgdm_delta="lookahead"),
}


@pytest.mark.parametrize("method,n", list(itertools.product(RULES, [2, 4])))
def test_weight_versions_per_stage(method: str, n: int) -> None:
    """PipeOptim and SpecTrain: current weights plus one transient prediction; PipeDream
    stashes one version per mini-batch in flight, ``D - k``; no stashing keeps one."""
    stages = make_stages(n, RULES[method], optimizer="momentum", lr=0.1, module=Bend, loss=squared_loss)
    replay(stages, 12, batches)
    versions = [s.max_versions for s in stages]
    expected = {"pipeoptim": [2] * (n - 1) + [1], "pipedream": [n - k for k in range(n)],
                "async_nostash": [1] * n,
                "spectrain": [1 + int(k < n - 1 or spectrain_steps(n, k)[1] > 0) for k in range(n)]}[method]
    assert versions == expected


def test_methods_differ_only_after_the_first_update() -> None:
    """Mini-batch 0 runs on the initial weights everywhere, so every rule gives the same first
    loss; later losses differ between stashing, no stashing and prediction."""
    first, later = set(), set()
    for rule in RULES.values():
        losses = replay(make_stages(3, rule, optimizer="momentum", lr=0.1, module=Bend, loss=squared_loss), 8,
                        batches)
        first.add(losses[0])
        later.add(round(losses[-1], 12))
    assert len(first) == 1 and len(later) == len(RULES)
