"""The PASO seed's algorithm in one process, written to be read: the oracle for the engine.

It keeps ``P + 1`` guesses, evaluates the window's gradients one after another, rolls the
optimizer out sequentially from the exact start state, measures one error per position
(rollout iterate ``b+i+1`` against guess ``b+i+1``, the last against the extra guess),
accepts up to the first error above the tolerance, adapts the tolerance from the mean or
the middle entry (in window order) of the errors, and seeds the new guesses from the last
rollout iterate (copy init). No scan, no ranks, no buffers: :class:`methods.paso.PasoWorker`
must make the same decisions (tested in float64) and reach the same weights.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Callable

import torch

from .scan import reference_rollout
from .updates import OptimSpec, init_state

GradFn = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass
class ReferenceResult:
    x: torch.Tensor
    iterations: int
    grad_evals: int
    accepted: list[int] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)


def reference_paso(spec: OptimSpec, x0: torch.Tensor, grad: GradFn, steps: int, P: int, threshold: float,
                   ema_decay: float, adaptivity: str = "mean", threshold_errors: str = "seed") -> ReferenceResult:
    """Run the seed's PASO on ``grad(x, t)`` (already clipped) for ``steps`` optimizer steps.

    ``threshold_errors="next_guess"`` drops the last position's error from the threshold
    statistic (the ``P - 1`` errors of the engine's option of the same name).
    """
    b, x_b, state_b = 0, x0.clone(), init_state(spec, x0)
    guesses = [x0.clone() for _ in range(P + 1)]  # guesses[i] is the guess of step b+i
    out = ReferenceResult(x=x_b, iterations=0, grad_evals=0)
    while b < steps:
        window = min(P, steps - b)
        grads = [grad(guesses[i], b + i) for i in range(window)]
        rollout = reference_rollout(spec, b, x_b, state_b, grads)
        # the seed's extra guess (step b+P) always equals guess b+P-1 under copy init: both are
        # the last rollout iterate; at the end of training (window < P) the last active
        # position compares with its own guess, as the engine does
        assert torch.equal(guesses[P], guesses[P - 1])
        targets = guesses[1:window] + [guesses[window] if window == P else guesses[window - 1]]
        errors = [float((rollout[i][0] - targets[i]).square().mean()) * 1e6 for i in range(window)]
        accepted = next((i + 1 for i, e in enumerate(errors[:window - 1]) if not e <= threshold), window)
        out.accepted.append(accepted)
        out.thresholds.append(threshold)
        finite = [e for e in (errors if threshold_errors == "seed" else errors[:window - 1]) if math.isfinite(e)]
        if finite and ema_decay != 1.0:
            stat = statistics.fmean(finite) if adaptivity == "mean" else finite[len(finite) // 2]
            threshold = threshold * ema_decay + stat * (1 - ema_decay)
        x_b, state_b = rollout[accepted - 1]
        last = rollout[window - 1][0]
        # new guesses: the rollout where it reaches, the last iterate beyond it (copy init)
        guesses = [rollout[accepted - 1 + j][0] if accepted - 1 + j < window else last for j in range(P + 1)]
        b += accepted
        out.iterations += 1
        out.grad_evals += window
    out.x = x_b
    return out
