"""Cutting a model's ordered blocks into contiguous pipeline stages.

A split is given by its *split points*: the indices of the blocks that start stages
1..n-1 (strictly increasing, inside ``1..n_blocks-1``), so stage ``k`` holds blocks
``points[k-1]:points[k]``. Four ways to choose them: ``uniform`` (equal block counts),
``params`` (balanced parameter counts), ``time`` (balanced measured forward+backward time
per block: the seeds' hand-swept "dynamic split", automated) or explicit points.

Why an exact optimiser: a greedy cut can leave one stage far heavier, and the slowest
stage sets the pipeline's pace; :func:`balanced_split` returns a split minimising the
heaviest stage (the linear-partition dynamic programme), checked against brute force.

Pure Python, no torch.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..options import ConfigError

SPLIT_RULES = ("uniform", "params", "time")


def parse_split(value: Any) -> str | tuple[int, ...]:
    """A split option as a rule name or a tuple of split points; ``"3,5"`` (CLI form) is points."""
    if isinstance(value, str):
        text = value.strip()
        if text in SPLIT_RULES:
            return text
        try:
            return tuple(int(part) for part in text.split(","))
        except ValueError:
            pass
    elif isinstance(value, (list, tuple)) and all(isinstance(p, int) and not isinstance(p, bool) for p in value):
        return tuple(value)
    raise ConfigError(f"split={value!r} is not valid; choose one of: {', '.join(SPLIT_RULES)}, "
                      "or a list of increasing block indices where stages 1.. start (e.g. [3] or '3')")


def check_split_points(points: Sequence[int], n_blocks: int, n_stages: int) -> None:
    """Raise ConfigError unless ``points`` cut ``n_blocks`` blocks into ``n_stages`` non-empty stages."""
    check_stage_count(n_blocks, n_stages)
    if len(points) != n_stages - 1:
        raise ConfigError(f"split={list(points)} has {len(points)} split point(s); {n_stages} stages need "
                          f"{n_stages - 1} increasing block indices in 1..{n_blocks - 1}")
    previous = 0
    for point in points:
        if not 1 <= point <= n_blocks - 1:
            raise ConfigError(f"split point {point} in split={list(points)} is out of range; split points "
                              f"must lie in 1..{n_blocks - 1} (the model has {n_blocks} blocks)")
        if point <= previous:
            raise ConfigError(f"split={list(points)} is out of order; split points must be strictly "
                              f"increasing block indices in 1..{n_blocks - 1}")
        previous = point


def check_stage_count(n_blocks: int, n_stages: int) -> None:
    if n_stages > n_blocks:
        raise ConfigError(f"{n_stages} pipeline stages is more than the model's {n_blocks} blocks; "
                          f"use at most {n_blocks} stages (each stage needs one block)")


def uniform_split(n_blocks: int, n_stages: int) -> tuple[int, ...]:
    """Stages of equal block count, the earlier ones one block longer when it does not divide."""
    check_stage_count(n_blocks, n_stages)
    base, extra = divmod(n_blocks, n_stages)
    points, start = [], 0
    for k in range(n_stages - 1):
        start += base + (1 if k < extra else 0)
        points.append(start)
    return tuple(points)


def balanced_split(costs: Sequence[float], n_stages: int) -> tuple[int, ...]:
    """Split points minimising the heaviest stage's total cost (every stage non-empty).

    The linear-partition dynamic programme: ``best[k][j]`` is the smallest possible heaviest
    stage when the first ``j`` blocks form ``k`` stages. O(n_stages * n_blocks^2)."""
    n_blocks = len(costs)
    check_stage_count(n_blocks, n_stages)
    if any(c < 0 for c in costs):
        raise ValueError(f"block costs must be >= 0; got {list(costs)}")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + float(c))
    inf = float("inf")
    best = [[inf] * (n_blocks + 1) for _ in range(n_stages + 1)]
    cut = [[0] * (n_blocks + 1) for _ in range(n_stages + 1)]
    best[0][0] = 0.0
    for k in range(1, n_stages + 1):
        for j in range(k, n_blocks - (n_stages - k) + 1):
            for i in range(k - 1, j):  # stage k holds blocks i..j-1
                value = max(best[k - 1][i], prefix[j] - prefix[i])
                if value < best[k][j]:
                    best[k][j], cut[k][j] = value, i
    points, j = [], n_blocks
    for k in range(n_stages, 1, -1):
        j = cut[k][j]
        points.append(j)
    return tuple(reversed(points))


def stage_ranges(points: Sequence[int], n_blocks: int) -> list[range]:
    """The block indices of every stage."""
    edges = [0, *points, n_blocks]
    return [range(lo, hi) for lo, hi in zip(edges, edges[1:])]


def stage_costs(costs: Sequence[float], points: Sequence[int]) -> list[float]:
    """Total cost of each stage of a split."""
    return [sum(costs[i] for i in r) for r in stage_ranges(points, len(costs))]


def choose_split(rule: str | Sequence[int], n_stages: int, n_blocks: int,
                 costs: Sequence[float] | None = None) -> tuple[int, ...]:
    """The split points of ``rule``: explicit points (checked), ``uniform``, or balanced ``costs``."""
    if not isinstance(rule, str):
        check_split_points(rule, n_blocks, n_stages)
        return tuple(rule)
    if rule == "uniform":
        return uniform_split(n_blocks, n_stages)
    if rule not in SPLIT_RULES:
        raise ConfigError(f"split={rule!r} is not valid; choose one of: {', '.join(SPLIT_RULES)}")
    if costs is None or len(costs) != n_blocks:
        raise ValueError(f"split={rule!r} needs one cost per block ({n_blocks}); got {costs!r}")
    return balanced_split(costs, n_stages)
