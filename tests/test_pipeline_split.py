"""Stage splits (pure) and the checks of the split option before launch.

Every split is contiguous, ordered, complete, with non-empty stages; the balanced split is
the exact min-max optimum (equal to brute force over every split of small random cost
vectors); bad split points and too many stages raise ConfigError naming the value and the
valid range, from ``validate`` (before any worker starts), with the block count known
without building the model.
"""

from __future__ import annotations

import itertools
import random

import pytest

from paso_core.config import RunConfig, validate
from paso_core.options import ConfigError
from paso_core.pipeline import split as sp


def brute_force_best(costs: list[float], n_stages: int) -> float:
    """The smallest heaviest stage over every way to cut ``costs`` into ``n_stages`` stages."""
    best = float("inf")
    for points in itertools.combinations(range(1, len(costs)), n_stages - 1):
        best = min(best, max(sp.stage_costs(costs, points)))
    return best


def assert_is_a_split(points: tuple[int, ...], n_blocks: int, n_stages: int) -> None:
    ranges = sp.stage_ranges(points, n_blocks)
    assert len(ranges) == n_stages
    assert [i for r in ranges for i in r] == list(range(n_blocks))  # contiguous, ordered, complete
    assert all(len(r) > 0 for r in ranges)


@pytest.mark.parametrize("n_blocks,n_stages", [(b, s) for b in range(1, 9) for s in range(1, b + 1)])
def test_uniform_split_is_a_split_of_near_equal_counts(n_blocks: int, n_stages: int) -> None:
    points = sp.uniform_split(n_blocks, n_stages)
    assert_is_a_split(points, n_blocks, n_stages)
    sizes = [len(r) for r in sp.stage_ranges(points, n_blocks)]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("seed", range(60))
def test_balanced_split_equals_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    n_blocks = rng.randint(1, 9)
    n_stages = rng.randint(1, n_blocks)
    costs = [rng.choice([0.0, rng.random(), rng.random() * 100]) for _ in range(n_blocks)]
    points = sp.balanced_split(costs, n_stages)
    assert_is_a_split(points, n_blocks, n_stages)
    assert max(sp.stage_costs(costs, points)) == pytest.approx(brute_force_best(costs, n_stages), abs=1e-9)


def test_balanced_split_beats_uniform_on_a_heavy_head() -> None:
    """GPT-2-like: a cheap embedding, equal layers, a heavy LM head."""
    costs = [1.0, 4.0, 4.0, 4.0, 0.1, 9.0]
    points = sp.choose_split("params", 2, len(costs), costs)
    assert max(sp.stage_costs(costs, points)) < max(sp.stage_costs(costs, sp.uniform_split(6, 2)))


@pytest.mark.parametrize("value,expected", [("uniform", "uniform"), ("time", "time"), ("3", (3,)),
                                            ("2,4", (2, 4)), ([2, 4], (2, 4)), ((1,), (1,))])
def test_parse_split(value, expected) -> None:
    assert sp.parse_split(value) == expected


@pytest.mark.parametrize("value", ["balanced", "2;4", [1.5], [True], 3, None])
def test_parse_split_names_the_choices(value) -> None:
    with pytest.raises(ConfigError, match=r"split=.*uniform, params, time"):
        sp.parse_split(value)


@pytest.mark.parametrize("points,n_blocks,n_stages,message", [
    ((3, 2), 5, 3, r"split=\[3, 2\] is out of order; .*strictly increasing block indices in 1\.\.4"),
    ((2, 2), 5, 3, r"out of order"),
    ((0,), 5, 2, r"split point 0 .* out of range; .* 1\.\.4 \(the model has 5 blocks\)"),
    ((5,), 5, 2, r"split point 5 .* out of range"),
    ((2,), 5, 3, r"has 1 split point\(s\); 3 stages need 2"),
    ((1, 2), 2, 3, r"3 pipeline stages is more than the model's 2 blocks"),
])
def test_bad_split_points_are_named(points, n_blocks, n_stages, message) -> None:
    with pytest.raises(ConfigError, match=message):
        sp.check_split_points(points, n_blocks, n_stages)


def test_more_stages_than_blocks_is_an_error() -> None:
    with pytest.raises(ConfigError, match="5 pipeline stages is more than the model's 4 blocks"):
        sp.uniform_split(4, 5)
    with pytest.raises(ConfigError, match="more than"):
        sp.balanced_split([1.0, 2.0], 3)


# --------------------------------------------------------------------------- before launch
def cfg(**options) -> RunConfig:
    return validate(RunConfig.from_dict({"progress": False, **options}))


TEXT = dict(task="text", dataset="pydoc", model="gpt2-tiny", block_size=16, batch_size=8, n_positions=32)
CNN = dict(task="vision", dataset="digits", model="cnn", batch_size=16)


@pytest.mark.parametrize("options,n_blocks", [
    (TEXT, 5), (dict(TEXT, model="llama-tiny"), 5), (dict(TEXT, model="qwen3next-tiny"), 7),
    (CNN, 4), (dict(CNN, model="vit"), 6), (dict(CNN, model="resnet18"), 6), (dict(task="synthetic"), 1)])
def test_block_count_before_launch_is_the_built_models(options, n_blocks, paso_cache) -> None:
    from paso_core.pipeline.stages import count_blocks
    from paso_core.tasks import build_task

    config = cfg(**options)
    assert count_blocks(config) == n_blocks
    if options.get("task") == "vision" or options.get("model") == "gpt2-tiny":  # and the real model's blocks
        import torch

        task = build_task(config, torch.device("cpu"))
        assert len(task.model_blocks(task.build_model())) == n_blocks


@pytest.mark.parametrize("options,message", [
    (dict(TEXT, method="pp", nproc=2, split=[4, 1]), r"split=\[4, 1\] has 2 split point"),
    (dict(TEXT, method="pp", nproc=2, split=[7]), r"split point 7 .* out of range; .* 1\.\.4 \(the model has 5"),
    (dict(TEXT, method="pp", nproc=3, microbatches=3, batch_size=9, split=[3, 2]), r"out of order"),
    (dict(TEXT, method="pp", nproc=2, split="greedy"), r"split='greedy' is not valid; choose one of: uniform"),
    (dict(CNN, method="pp", nproc=5, microbatches=8), r"model='cnn': 5 pipeline stages is more than .* 4 blocks"),
    (dict(CNN, method="pp", nproc=2, pp_schedule="interleaved_1f1b", stages_per_rank=3),
     r"6 pipeline stages is more than the model's 4 blocks"),
    (dict(CNN, method="model_parallel", nproc=2, split=[0]), r"split point 0 .* out of range"),
    (dict(task="synthetic", method="model_parallel", nproc=2), r"2 pipeline stages is more than .* 1 blocks"),
])
def test_split_errors_are_raised_in_validation(options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        cfg(**options)
