"""PipeDream's asynchronous 1F1B schedule written out as plain action lists, and its version
arithmetic (which weight version each pass of each mini-batch sees).

Why pure: the runtime (one process per stage) and the single-process simulator both run
these orders, and the tests check the schedule's invariants (ops per stage, in-flight bound
``D-k``, the lag ``min(j, D-1-k)``, dependency order) without any process.

Stage ``k`` of ``D`` runs ``w_k = D-k-1`` warm-up forwards, then alternates one forward and
one backward, then drains its last ``w_k`` backwards; the optimizer steps after every
backward, so the backward of mini-batch ``j`` runs on version ``j`` (``j`` updates done)
and its forward on version ``max(0, j - w_k)``. No flush inside a run.

No torch here. Mini-batches are 0-based; the notes' ``min(j-1, D-1-k)`` is 1-based.
"""

from __future__ import annotations

from collections import deque
from typing import Iterator, Sequence

from .schedule_oracle import BACKWARD, FORWARD, Action


def warmup_forwards(n_stages: int, stage: int) -> int:
    """``D - k - 1``: forwards stage ``k`` runs before its first backward."""
    _check(n_stages, stage)
    return n_stages - stage - 1


def async_1f1b_order(n_minibatches: int, n_stages: int, stage: int) -> list[Action]:
    """Stage ``stage``'s actions for ``n_minibatches`` mini-batches (each forward and backward once)."""
    if n_minibatches < 1:
        raise ValueError(f"n_minibatches must be >= 1; got {n_minibatches}")
    warmup = min(warmup_forwards(n_stages, stage), n_minibatches)
    order = [Action(FORWARD, j, stage) for j in range(warmup)]
    for j in range(n_minibatches):
        if j + warmup < n_minibatches:
            order.append(Action(FORWARD, j + warmup, stage))
        order.append(Action(BACKWARD, j, stage))
    return order


def forward_version(j: int, n_stages: int, stage: int) -> int:
    """Updates stage ``stage`` has made when the forward of mini-batch ``j`` runs."""
    return max(0, j - warmup_forwards(n_stages, stage))


def lag(j: int, n_stages: int, stage: int) -> int:
    """Updates between the forward and the backward of mini-batch ``j``: ``min(j, D-1-k)``."""
    return j - forward_version(j, n_stages, stage)


def versions_seen(order: Sequence[Action]) -> dict[tuple[str, int], int]:
    """Replay ``order``: the version (backwards done so far) at which each action runs."""
    done, out = 0, {}
    for action in order:
        out[(action.kind, action.microbatch)] = done
        if action.kind == BACKWARD:
            done += 1
    return out


def in_flight(order: Sequence[Action]) -> int:
    """Most mini-batches forwarded but not yet backwarded at any point of ``order``."""
    now = peak = 0
    for action in order:
        now += 1 if action.kind == FORWARD else -1
        peak = max(peak, now)
    return peak


def dependencies(action: Action, n_stages: int) -> list[Action]:
    """What must have run before ``action`` (on other stages or its own forward)."""
    j, k = action.microbatch, action.stage
    if action.kind == FORWARD:
        return [Action(FORWARD, j, k - 1)] if k > 0 else []
    needed = [Action(FORWARD, j, k)]
    if k < n_stages - 1:
        needed.append(Action(BACKWARD, j, k + 1))
    return needed


def dataflow_order(orders: dict[int, Sequence[Action]], n_stages: int) -> Iterator[Action]:
    """One global order of every stage's actions that respects each stage's own order and
    every dependency (Kahn over FIFO channels): the order the simulator executes.

    Round-robin over stages, running the next action of a stage whenever its inputs exist;
    raises when the orders deadlock (no stage can move)."""
    queues = {k: deque(orders[k]) for k in range(n_stages)}
    done: set[Action] = set()
    while any(queues.values()):
        moved = False
        for k in range(n_stages):
            while queues[k] and all(d in done for d in dependencies(queues[k][0], n_stages)):
                action = queues[k].popleft()
                done.add(action)
                moved = True
                yield action
        if not moved:
            stuck = {k: str(q[0]) for k, q in queues.items() if q}
            raise RuntimeError(f"the stage orders deadlock; next actions: {stuck}")


def _check(n_stages: int, stage: int) -> None:
    if n_stages < 1 or not 0 <= stage < n_stages:
        raise ValueError(f"stage={stage} is not valid for {n_stages} stages; use 0..{n_stages - 1}")
