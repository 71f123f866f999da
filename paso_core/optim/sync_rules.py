"""Synchronization periods of local SGD / local AdamW: data parallel, constant H, the
Quadratic Synchronization Rule (QSR) and the linear rule, as pure functions of the schedule.

Why pure: every rank derives the same period from the step and the learning-rate schedule
(no message decides it), a resumed run recomputes the rounds it was in, and the public
ViT schedule's all-reduce counts (93,600 / 23,400 / 9,711) are checked without processes.

The rule, as the QSR seed's code applies it right after each synchronization, with
``lr_next`` the learning rate of the next step and ``remaining`` the steps left::

    H = H_base                                       during warm-up (and for 'constant')
    H = max(H_base, floor((alpha / lr_next) ** p))   after it; p = 2 (qsr) or 1 (linear)
    H = max(1, min(H, remaining))                    so the last round ends on the final step
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

from .updates import OptimSpec, lr_at

SYNC_RULES = ("every_step", "constant", "qsr", "linear")
#: The exponent ``p`` of ``H = (alpha / lr) ** p`` of the learning-rate-dependent rules.
RULE_POWER = {"qsr": 2, "linear": 1}


@dataclass(frozen=True)
class SyncRule:
    """Which rule picks the period, and its constants."""

    rule: str = "qsr"
    H_base: int = 4
    alpha: float = 0.0175

    def period(self, spec: OptimSpec, step: int) -> int:
        """Local steps of the round that starts at 0-based step ``step`` (its length, at least 1)."""
        remaining = spec.steps - step
        if self.rule == "every_step":
            return 1
        h = self.H_base
        in_warmup = step < spec.warmup_steps
        if self.rule in RULE_POWER and not in_warmup:
            lr = lr_at(spec, step)
            h = remaining if lr <= 0 else max(self.H_base, int((self.alpha / lr) ** RULE_POWER[self.rule]))
        return max(1, min(h, remaining))


@dataclass(frozen=True)
class Round:
    """One round of local steps: steps ``start .. start+H-1``, then a synchronization."""

    index: int
    start: int
    H: int
    lr: float            # learning rate of the round's first step (what the rule read)

    @property
    def end(self) -> int:
        """Steps done when the round's synchronization happens."""
        return self.start + self.H


def rounds(rule: SyncRule, spec: OptimSpec) -> Iterator[Round]:
    """Every round of a run of ``spec.steps`` steps, in order; the last ends on the final step."""
    step, index = 0, 0
    while step < spec.steps:
        h = rule.period(spec, step)
        yield Round(index, step, h, lr_at(spec, step))
        step, index = step + h, index + 1


def count_syncs(rule: SyncRule, spec: OptimSpec) -> int:
    """Synchronizations (parameter all-reduces) of a whole run."""
    return sum(1 for _ in rounds(rule, spec))


def round_ends(rule: SyncRule, spec: OptimSpec) -> dict[int, Round]:
    """The rounds keyed by the number of steps done when each synchronizes."""
    return {r.end: r for r in rounds(rule, spec)}


def sde_time(H: int, lr: float) -> float:
    """``H * lr**2``: the 'SDE time' a round spans, which QSR keeps near ``alpha**2``."""
    return H * lr * lr if math.isfinite(lr) else math.nan
