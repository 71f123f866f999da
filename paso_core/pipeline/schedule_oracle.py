"""Pipeline schedules written out as plain lists of actions, and a tick simulator of them.

Why: the engines (``torch.distributed.pipelining``) run their schedules inside a loop of
point-to-point calls that cannot be inspected. These readable versions are the oracle the
tests hold the engine's own ``pipeline_order`` against, and the simulator turns any
per-rank action order into a timeline (who computes what at each tick) and a bubble
fraction, checked against the closed forms of GPipe and (interleaved) 1F1B.

No torch here: everything is integers and lists, tested without processes.

Notation: ``m`` micro-batches, ``n`` pipeline ranks, ``v`` stages per rank (interleaved);
there are ``n * v`` stages, stage ``s`` lives on rank ``s % n`` (torch's "loop" mapping).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b")
FORWARD, BACKWARD = "F", "B"


class Action(NamedTuple):
    """One unit of pipeline work: the forward or backward of micro-batch ``microbatch`` on ``stage``."""

    kind: str          # FORWARD or BACKWARD
    microbatch: int
    stage: int

    def __str__(self) -> str:  # torch's notation: "2F0" = stage 2, forward, micro-batch 0
        return f"{self.stage}{self.kind}{self.microbatch}"


# ----------------------------------------------------------------------------- GPipe
def gpipe_clock_cycles(m: int, n: int) -> list[list[tuple[int, int]]]:
    """The forward ticks of GPipe: tick ``k`` runs every (micro-batch ``i``, stage ``j``) with
    ``i + j = k``; there are ``m + n - 1`` ticks."""
    _check_positive(m=m, n=n)
    return [[(i, k - i) for i in range(m) if 0 <= k - i < n] for k in range(m + n - 1)]


def gpipe_backward_clock_cycles(m: int, n: int) -> list[list[tuple[int, int]]]:
    """The backward ticks, the forward mirrored: tick ``k`` runs (``i``, ``j``) with
    ``i + (n - 1 - j) = k``, so the last stage starts and micro-batch 0 goes first."""
    return [[(i, n - 1 - j) for i, j in tick] for tick in gpipe_clock_cycles(m, n)]


def gpipe_order(m: int, n: int, stage: int) -> list[Action]:
    """What one stage does in GPipe: every forward, then every backward (micro-batch order)."""
    _check_stage(stage, n)
    return [Action(FORWARD, i, stage) for i in range(m)] + [Action(BACKWARD, i, stage) for i in range(m)]


# ----------------------------------------------------------------------------- 1F1B
def one_f_one_b_order(m: int, n: int, stage: int) -> list[Action]:
    """What one stage does in 1F1B: ``n - 1 - stage`` warm-up forwards, then alternately
    one forward and one backward, then the remaining backwards (cool-down).

    So stage ``s`` never holds the activations of more than ``n - s`` micro-batches."""
    _check_positive(m=m, n=n)
    _check_stage(stage, n)
    warmup = min(n - 1 - stage, m)
    actions = [Action(FORWARD, i, stage) for i in range(warmup)]
    forward, backward = warmup, 0
    while forward < m:
        actions += [Action(FORWARD, forward, stage), Action(BACKWARD, backward, stage)]
        forward, backward = forward + 1, backward + 1
    actions += [Action(BACKWARD, i, stage) for i in range(backward, m)]
    return actions


# ----------------------------------------------------------------------------- interleaved 1F1B
def interleaved_rounds(m: int, n: int) -> tuple[int, int]:
    """``(rounds, micro-batches per round)`` of interleaved 1F1B as torch computes them:
    micro-batches go through a rank's ``v`` stages in groups of ``m // rounds``."""
    rounds = max(1, m // n)
    if m % rounds:
        raise ValueError(f"interleaved 1F1B needs microbatches={m} to be a multiple of "
                         f"max(1, microbatches // ranks)={rounds} (ranks={n})")
    return rounds, m // rounds


def interleaved_order(m: int, n: int, v: int, rank: int) -> list[Action]:
    """What one rank does in interleaved 1F1B with ``v`` stages ``rank, rank + n, ...``.

    Forwards go depth first in groups of ``per_round`` micro-batches: group after group
    through local stage 0, 1, ..., v-1 and round again. Warm-up runs
    ``(v - 1) * per_round + 2 * (n - 1 - rank)`` forwards (all of them at most), then one
    forward and one backward alternate (backwards walk the local stages last to first),
    then the remaining backwards. This is Megatron-LM's schedule as torch 2.14 builds it."""
    _check_positive(m=m, n=n, v=v)
    if not 0 <= rank < n:
        raise ValueError(f"rank={rank} is outside 0..{n - 1}")
    _, per_round = interleaved_rounds(m, n)
    total = v * m
    warmup = min((v - 1) * per_round + 2 * (n - 1 - rank), total)

    def forward_stage(op: int) -> int:
        return ((op // per_round) % v) * n + rank

    def backward_stage(op: int) -> int:
        return (v - 1 - ((op - warmup) // per_round) % v) * n + rank

    next_forward: dict[int, int] = {}
    next_backward: dict[int, int] = {}

    def take(counter: dict[int, int], stage: int) -> int:
        counter[stage] = counter.get(stage, 0) + 1
        return counter[stage] - 1

    actions: list[Action] = []
    for op in range(total):  # op: the op-th forward of this rank
        stage = forward_stage(op)
        actions.append(Action(FORWARD, take(next_forward, stage), stage))
        if op >= warmup:
            stage = backward_stage(op)
            actions.append(Action(BACKWARD, take(next_backward, stage), stage))
    for op in range(total, total + warmup):  # cool-down: the backwards still owed
        stage = backward_stage(op)
        actions.append(Action(BACKWARD, take(next_backward, stage), stage))
    return actions


# ----------------------------------------------------------------------------- all ranks
def stage_rank(stage: int, n: int) -> int:
    """The rank that holds ``stage`` (loop placement: stages ``r, r + n, r + 2n, ...``)."""
    return stage % n


def rank_stages(rank: int, n: int, v: int) -> list[int]:
    """The stages rank ``rank`` holds, in order."""
    return [rank + k * n for k in range(v)]


def schedule_orders(schedule: str, m: int, n: int, v: int = 1) -> dict[int, list[Action]]:
    """Every rank's action order for ``schedule`` (one of :data:`SCHEDULES`)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not valid; choose one of: {', '.join(SCHEDULES)}")
    if schedule == "interleaved_1f1b":
        return {r: interleaved_order(m, n, v, r) for r in range(n)}
    if v != 1:
        raise ValueError(f"schedule={schedule!r} holds one stage per rank; got stages_per_rank={v}")
    make = gpipe_order if schedule == "gpipe" else one_f_one_b_order
    return {r: make(m, n, r) for r in range(n)}


def bubble_closed_form(schedule: str, m: int, n: int, v: int = 1) -> float:
    """Idle fraction of a pipeline of ``n`` ranks: ``(n-1)/(m+n-1)`` for GPipe and 1F1B,
    ``(n-1)/(v*m+n-1)`` for interleaved 1F1B (equal work per stage, no communication time)."""
    _check_positive(m=m, n=n, v=v)
    chunks = v * m if schedule == "interleaved_1f1b" else m
    return (n - 1) / (chunks + n - 1)


# ----------------------------------------------------------------------------- invariants
def order_problems(orders: dict[int, Sequence[Action]], m: int, n_stages: int) -> list[str]:
    """What is wrong with per-rank action orders (empty when nothing): every (micro-batch,
    stage) forward and backward exactly once, on the stage's own rank, backward after forward."""
    n_ranks = len(orders)
    problems: list[str] = []
    seen: dict[Action, int] = {}
    for rank, order in orders.items():
        done: set[Action] = set()
        for action in order:
            if not (0 <= action.microbatch < m and 0 <= action.stage < n_stages):
                problems.append(f"rank {rank}: {action} is outside {m} micro-batches x {n_stages} stages")
                continue
            if stage_rank(action.stage, n_ranks) != rank:
                problems.append(f"rank {rank}: {action} belongs to rank {stage_rank(action.stage, n_ranks)}")
            if action.kind == BACKWARD and Action(FORWARD, action.microbatch, action.stage) not in done:
                problems.append(f"rank {rank}: {action} before its forward")
            seen[action] = seen.get(action, 0) + 1
            done.add(action)
    for kind in (FORWARD, BACKWARD):
        for i in range(m):
            for s in range(n_stages):
                count = seen.get(Action(kind, i, s), 0)
                if count != 1:
                    problems.append(f"{Action(kind, i, s)} runs {count} times, not once")
    return problems


def max_in_flight(order: Sequence[Action], stage: int) -> int:
    """Most micro-batches whose activations ``stage`` holds at once (forward done, backward not)."""
    held = most = 0
    for action in order:
        if action.stage == stage:
            held += 1 if action.kind == FORWARD else -1
            most = max(most, held)
    return most


# ----------------------------------------------------------------------------- simulator
@dataclass(frozen=True)
class Timeline:
    """Who does what at each tick: ``ticks[r][t]`` is rank ``r``'s action at tick ``t`` (None: idle)."""

    ticks: dict[int, list[Action | None]]

    @property
    def makespan(self) -> int:
        return max(len(row) for row in self.ticks.values())

    def busy(self, rank: int) -> int:
        return sum(a is not None for a in self.ticks[rank])

    def idle(self, rank: int) -> int:
        return self.makespan - self.busy(rank)

    @property
    def bubble_fraction(self) -> float:
        """Idle rank-ticks over all rank-ticks of the step."""
        total = self.makespan * len(self.ticks)
        return sum(self.idle(r) for r in self.ticks) / total

    def stages_at(self, tick: int) -> list[int]:
        """Stages computing at ``tick`` (one entry per busy rank)."""
        return [row[tick].stage for row in self.ticks.values() if tick < len(row) and row[tick] is not None]


def simulate(orders: dict[int, Sequence[Action]], n_stages: int, forward_cost: int = 1,
             backward_cost: int = 1) -> Timeline:
    """Run every rank's order as early as its dependencies allow, one action at a time per rank.

    A forward of (i, s) waits for the forward of (i, s - 1); a backward of (i, s) for the
    forward of (i, s) and the backward of (i, s + 1). Communication is free and instant.
    Raises ``ValueError`` when the orders deadlock (a rank waits on work that never comes)."""
    _check_positive(forward_cost=forward_cost, backward_cost=backward_cost)
    cost = {FORWARD: forward_cost, BACKWARD: backward_cost}
    finished: dict[Action, int] = {}
    position = {rank: 0 for rank in orders}
    free_at = {rank: 0 for rank in orders}
    ticks: dict[int, list[Action | None]] = {rank: [] for rank in orders}

    def ready_at(action: Action) -> int | None:
        deps = []
        if action.kind == FORWARD and action.stage > 0:
            deps.append(Action(FORWARD, action.microbatch, action.stage - 1))
        if action.kind == BACKWARD:
            deps.append(Action(FORWARD, action.microbatch, action.stage))
            if action.stage < n_stages - 1:
                deps.append(Action(BACKWARD, action.microbatch, action.stage + 1))
        if any(d not in finished for d in deps):
            return None
        return max((finished[d] for d in deps), default=0)

    remaining = sum(len(o) for o in orders.values())
    while remaining:
        progressed = False
        for rank, order in orders.items():
            while position[rank] < len(order):
                action = order[position[rank]]
                ready = ready_at(action)
                if ready is None:
                    break
                start = max(ready, free_at[rank])
                row = ticks[rank]
                row.extend([None] * (start - len(row)))
                row.extend([action] * cost[action.kind])
                free_at[rank] = finished[action] = start + cost[action.kind]
                position[rank] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            stuck = {r: str(o[position[r]]) for r, o in orders.items() if position[r] < len(o)}
            raise ValueError(f"the schedule deadlocks: ranks wait on {stuck}")
    span = max(len(row) for row in ticks.values())
    for row in ticks.values():
        row.extend([None] * (span - len(row)))
    return Timeline(ticks)


def bubble_of(schedule: str, m: int, n: int, v: int = 1) -> float:
    """The simulated bubble fraction of ``schedule`` with equal forward and backward cost."""
    return simulate(schedule_orders(schedule, m, n, v), n * v).bubble_fraction


# ----------------------------------------------------------------------------- helpers
def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")


def _check_stage(stage: int, n: int) -> None:
    if not 0 <= stage < n:
        raise ValueError(f"stage={stage} is outside 0..{n - 1}")
