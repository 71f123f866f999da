"""The oracle schedules (pure Python) and torch's own ``pipeline_order`` against the same invariants.

Invariants: every (micro-batch, stage) forward and backward exactly once, on the stage's
rank, backward after forward; in a simulated timeline no stage runs twice in one tick;
GPipe takes m + n - 1 forward ticks; 1F1B's stage s holds at most n - s micro-batches'
activations; simulated bubbles equal the closed forms. torch's schedules are built for a
fake rank (no processes): their ``pipeline_order`` is only computed, never run.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from paso_core.pipeline import schedule_oracle as so
from paso_core.pipeline.schedule_oracle import BACKWARD, FORWARD, Action

SIZES = [(m, n) for m in (1, 2, 3, 4, 5, 8) for n in (1, 2, 3, 4)]
INTERLEAVED = [(m, n, v) for n in (2, 3, 4) for v in (2, 3) for m in (n, 2 * n, 3 * n)]


# --------------------------------------------------------------------------- GPipe clock cycles
@pytest.mark.parametrize("m,n", SIZES)
def test_gpipe_clock_cycles_cover_every_pair_once_on_its_diagonal(m: int, n: int) -> None:
    ticks = so.gpipe_clock_cycles(m, n)
    assert len(ticks) == m + n - 1
    pairs = [p for tick in ticks for p in tick]
    assert sorted(pairs) == sorted(itertools.product(range(m), range(n)))
    for k, tick in enumerate(ticks):
        assert all(i + j == k for i, j in tick)
        assert len({j for _, j in tick}) == len(tick)  # no stage twice in one tick
    backward = so.gpipe_backward_clock_cycles(m, n)
    assert sorted(p for t in backward for p in t) == sorted(pairs)
    assert all(i + (n - 1 - j) == k for k, t in enumerate(backward) for i, j in t)


@pytest.mark.parametrize("m,n", SIZES)
def test_simulated_gpipe_runs_the_clock_cycles(m: int, n: int) -> None:
    """The simulator, given only GPipe's per-stage order, reproduces the clock cycles: forward
    tick k runs exactly the pairs with i + j = k, the forwards end after m + n - 1 ticks."""
    timeline = so.simulate(so.schedule_orders("gpipe", m, n), n)
    forward_ticks = [sorted((a.microbatch, a.stage) for a in (row[t] for row in timeline.ticks.values())
                            if a is not None and a.kind == FORWARD) for t in range(m + n - 1)]
    assert forward_ticks == [sorted(t) for t in so.gpipe_clock_cycles(m, n)]
    assert all(a is None or a.kind == BACKWARD for row in timeline.ticks.values() for a in row[m + n - 1:])


# --------------------------------------------------------------------------- orders
def all_orders() -> list[tuple[str, dict[int, list[Action]], int, int]]:
    cases = [(f"gpipe-m{m}-n{n}", so.schedule_orders("gpipe", m, n), m, n) for m, n in SIZES]
    cases += [(f"1f1b-m{m}-n{n}", so.schedule_orders("1f1b", m, n), m, n) for m, n in SIZES]
    cases += [(f"interleaved-m{m}-n{n}-v{v}", so.schedule_orders("interleaved_1f1b", m, n, v), m, n * v)
              for m, n, v in INTERLEAVED]
    return cases


@pytest.mark.parametrize("name,orders,m,n_stages", all_orders(), ids=[c[0] for c in all_orders()])
def test_every_order_is_complete_and_causal(name: str, orders: dict, m: int, n_stages: int) -> None:
    assert so.order_problems(orders, m, n_stages) == []
    timeline = so.simulate(orders, n_stages)  # raises if the orders deadlock
    for t in range(timeline.makespan):
        stages = timeline.stages_at(t)
        assert len(stages) == len(set(stages)), (name, t, stages)


def test_order_problems_name_each_kind_of_mistake() -> None:
    good = so.schedule_orders("1f1b", 3, 2)
    assert so.order_problems(good, 3, 2) == []
    swapped = {0: [good[0][-1], *good[0][:-1]], 1: good[1]}  # a backward before its forward
    assert any("before its forward" in p for p in so.order_problems(swapped, 3, 2))
    doubled = {0: good[0] + [good[0][0]], 1: good[1]}
    assert any("runs 2 times" in p for p in so.order_problems(doubled, 3, 2))
    missing = {0: good[0][1:], 1: good[1]}
    assert any("runs 0 times" in p for p in so.order_problems(missing, 3, 2))
    misplaced = {0: good[0] + [Action(FORWARD, 0, 1)], 1: good[1]}
    assert any("belongs to rank 1" in p for p in so.order_problems(misplaced, 3, 2))


@pytest.mark.parametrize("m,n", [(m, n) for m, n in SIZES if m >= n])
def test_1f1b_stage_s_holds_at_most_n_minus_s_microbatches(m: int, n: int) -> None:
    orders = so.schedule_orders("1f1b", m, n)
    for s in range(n):
        assert so.max_in_flight(orders[s], s) == min(n - s, m)
    gpipe = so.schedule_orders("gpipe", m, n)
    assert so.max_in_flight(gpipe[0], 0) == m  # GPipe holds every micro-batch: what 1F1B saves


def test_simulator_detects_a_deadlock() -> None:
    bad = {0: [Action(BACKWARD, 0, 0), Action(FORWARD, 0, 0)], 1: [Action(FORWARD, 0, 1), Action(BACKWARD, 0, 1)]}
    with pytest.raises(ValueError, match="deadlocks"):
        so.simulate(bad, 2)


# --------------------------------------------------------------------------- bubbles
@pytest.mark.parametrize("m,n", SIZES)
@pytest.mark.parametrize("backward_cost", [1, 2])
def test_gpipe_and_1f1b_bubbles_equal_the_closed_form(m: int, n: int, backward_cost: int) -> None:
    for schedule in ("gpipe", "1f1b"):
        timeline = so.simulate(so.schedule_orders(schedule, m, n), n, 1, backward_cost)
        assert timeline.bubble_fraction == pytest.approx((n - 1) / (m + n - 1), abs=1e-12), schedule
        assert timeline.makespan == (1 + backward_cost) * (m + n - 1)
        assert all(timeline.busy(r) == (1 + backward_cost) * m for r in range(n))


@pytest.mark.parametrize("m,n,v", INTERLEAVED)
def test_interleaved_bubble_equals_the_closed_form(m: int, n: int, v: int) -> None:
    timeline = so.simulate(so.schedule_orders("interleaved_1f1b", m, n, v), n * v)
    assert timeline.bubble_fraction == pytest.approx((n - 1) / (v * m + n - 1), abs=1e-12)
    assert so.bubble_closed_form("interleaved_1f1b", m, n, v) == pytest.approx(timeline.bubble_fraction)
    assert timeline.bubble_fraction < so.bubble_of("1f1b", m, n)  # what interleaving buys


def test_bad_schedule_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="schedule='zb'.*gpipe, 1f1b, interleaved_1f1b"):
        so.schedule_orders("zb", 2, 2)
    with pytest.raises(ValueError, match="stages_per_rank=2"):
        so.schedule_orders("1f1b", 4, 2, 2)
    with pytest.raises(ValueError, match="microbatches=5.*multiple of.*2"):
        so.interleaved_rounds(5, 2)
    with pytest.raises(ValueError, match="m=0"):
        so.gpipe_clock_cycles(0, 2)


# --------------------------------------------------------------------------- torch's own orders
def torch_actions(order: list) -> list[Action]:
    """torch's compute actions (``None`` = an idle slot, REDUCE_GRAD = bookkeeping, dropped)."""
    kinds = {"FORWARD": FORWARD, "FULL_BACKWARD": BACKWARD}
    return [Action(kinds[a.computation_type.name], a.microbatch_index, a.stage_index)
            for a in order if a is not None and a.computation_type.name in kinds]


def fake_stage(n_stages: int, n_ranks: int, rank: int, stage: int) -> SimpleNamespace:
    """What a schedule's constructor reads from a ``PipelineStage``: enough to compute its order."""
    return SimpleNamespace(num_stages=n_stages, group_size=n_ranks, group_rank=rank, stage_index=stage)


@pytest.mark.parametrize("m,n,v", INTERLEAVED)
def test_torch_interleaved_order_is_the_oracle_and_keeps_the_invariants(m: int, n: int, v: int) -> None:
    from torch.distributed.pipelining import ScheduleInterleaved1F1B

    schedule = ScheduleInterleaved1F1B([fake_stage(n * v, n, 0, k * n) for k in range(v)], m)
    orders = {r: torch_actions(schedule.pipeline_order[r]) for r in range(n)}
    assert orders == so.schedule_orders("interleaved_1f1b", m, n, v)
    assert so.order_problems(orders, m, n * v) == []


@pytest.mark.parametrize("m,n", [(m, n) for m, n in SIZES if n > 1])
def test_torch_gpipe_order_is_the_oracle(m: int, n: int) -> None:
    from torch.distributed.pipelining import ScheduleGPipe

    schedule = ScheduleGPipe(fake_stage(n, n, 0, 0), m)
    orders = {r: torch_actions(schedule.pipeline_order[r]) for r in range(n)}
    assert orders == so.schedule_orders("gpipe", m, n)


@pytest.mark.parametrize("m,n", [(m, n) for m, n in SIZES if m >= n > 1])
def test_torch_1f1b_order_on_all_but_the_last_rank_is_the_oracle(m: int, n: int) -> None:
    """What torch 1F1B *runs* is the oracle's order (its loop: n - s warm-up forwards, then
    backward/forward pairs). Its ``pipeline_order`` IR, only informational, agrees on every
    rank but the last (next test)."""
    from torch.distributed.pipelining import Schedule1F1B

    schedule = Schedule1F1B(fake_stage(n, n, 0, 0), m)
    oracle = so.schedule_orders("1f1b", m, n)
    for r in range(n - 1):
        assert torch_actions(schedule.pipeline_order[r]) == oracle[r]


@pytest.mark.xfail(strict=True, reason="torch 2.14 Schedule1F1B._get_pipeline_order skips micro-batch 0's "
                                       "forward on the last rank and lists a forward of micro-batch m")
def test_torch_1f1b_pipeline_order_keeps_the_invariants() -> None:
    from torch.distributed.pipelining import Schedule1F1B

    m, n = 4, 2
    schedule = Schedule1F1B(fake_stage(n, n, 0, 0), m)
    orders = {r: torch_actions(schedule.pipeline_order[r]) for r in range(n)}
    assert so.order_problems(orders, m, n) == []
