"""PASO's decision rules as pure functions, and the relay rollout for coupled weight decay."""

from __future__ import annotations

import math

import pytest
import torch

import paso_core
from paso_core.config import ConfigError, RunConfig
from paso_core.launch import launch_all
from paso_core.methods.paso import Window, accepted_steps, updated_threshold, window_statistic

from test_paso_exact import assert_equals_serial, reference_parameters


def test_accepted_steps_stops_at_first_large_error() -> None:
    assert accepted_steps([0.1, 0.2, 5.0, 0.1], threshold=1.0, window=5) == 3
    assert accepted_steps([2.0, 0.0], threshold=1.0, window=3) == 1
    assert accepted_steps([0.5, 0.5], threshold=1.0, window=3) == 3
    assert accepted_steps([], threshold=1.0, window=1) == 1
    assert accepted_steps([0.0, 0.0], threshold=0.0, window=3) == 3


def test_nan_error_is_never_accepted() -> None:
    assert accepted_steps([0.1, math.nan, 0.1], threshold=1.0, window=4) == 2


def test_threshold_ema_mean_and_median() -> None:
    errors = [1.0, 2.0, 9.0]
    assert updated_threshold(1.0, errors, 0.5, "mean") == pytest.approx(0.5 + 0.5 * 4.0)
    assert updated_threshold(1.0, errors, 0.5, "median") == pytest.approx(0.5 + 0.5 * 2.0)
    # the seed's "median" is the middle entry in window order, not the sorted median
    assert window_statistic([9.0, 1.0, 2.0], "median") == 1.0
    assert window_statistic([5.0, 4.0, 3.0, 2.0], "median") == 3.0
    assert updated_threshold(1.0, errors, 1.0, "mean") == 1.0
    assert updated_threshold(1.0, [], 0.5, "mean") == 1.0
    assert updated_threshold(1.0, [math.inf, 3.0], 0.5, "mean") == pytest.approx(2.0)


def test_window_positions_rotate() -> None:
    win = Window(start_slot=2)
    assert [win.position(r, 4) for r in range(4)] == [2, 3, 0, 1]
    assert [win.slot_of(p, 4) for p in range(4)] == [2, 3, 0, 1]


def test_scan_with_coupled_weight_decay_is_rejected_before_launch() -> None:
    with pytest.raises(ConfigError, match="rollout='scan'.*relay"):
        paso_core.run(method="paso", P=2, steps=4, optimizer="adam", weight_decay=0.1, rollout="scan")


@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_relay_rollout_is_exact_with_coupled_weight_decay(optimizer: str) -> None:
    options = dict(task="synthetic", function="rosenbrock", dim=100, steps=12, lr=1e-3, optimizer=optimizer,
                   weight_decay=0.05, lr_schedule="cosine", seed=2, progress=False)
    result = paso_core.run(method="paso", P=3, threshold=0.0, ema_decay=1.0, **options)
    assert result.summary["rollout"] == "relay"
    final = torch.load(result.path / "final.pt", weights_only=True)
    assert_equals_serial(reference_parameters(options), final, result.summary)


def _one_launch(*runs: dict) -> list:
    """Runs of the same world in one torchrun launch (start-up paid once)."""
    return launch_all([RunConfig.from_dict(options) for options in runs])


def test_threshold_trades_accuracy_for_fewer_iterations() -> None:
    options = dict(task="synthetic", function="ackley", dim=500, steps=60, lr=1e-2, optimizer="adam",
                   seed=0, progress=False)
    exact, loose = _one_launch(dict(method="paso", P=4, threshold=0.0, ema_decay=1.0, **options),
                               dict(method="paso", P=4, threshold=1e-2, ema_decay=0.99, **options))
    assert loose.summary["iterations"] < exact.summary["iterations"]
    assert loose.summary["grad_evals"] <= 4 * loose.summary["iterations"]
    metrics = loose.metrics
    assert (metrics["accepted"] >= 1).all() and metrics["accepted"].sum() == 60
    assert {"window_start", "threshold", "err_mean", "time_compute_s", "time_comm_s", "time_rollout_s",
            "bytes_measured", "bytes_iter_max"} <= set(metrics.columns)
    gap_exact, gap_loose = exact.summary["final_gap"], loose.summary["final_gap"]
    assert abs(gap_exact - gap_loose) < 0.05 * abs(gap_exact) + 1e-3


def test_extrapolated_init_keeps_exactness() -> None:
    options = dict(task="synthetic", function="ackley", dim=200, steps=15, lr=1e-2, optimizer="momentum",
                   seed=4, progress=False)
    result, loose = _one_launch(dict(method="paso", P=3, init="extrapolate", threshold=0.0, ema_decay=1.0, **options),
                                dict(method="paso", P=3, init="extrapolate", threshold=1e-2, ema_decay=0.99, **options))
    final = torch.load(result.path / "final.pt", weights_only=True)
    assert_equals_serial(reference_parameters(options), final, result.summary)
    assert loose.summary["iterations"] < 15


def test_a_placement_that_does_not_fit_the_device_is_named_with_one_that_does() -> None:
    from paso_core.methods.paso import PlacementTooLarge, check_placement_memory

    gib = 2**30
    check_placement_memory(8 * gib, 9 * gib, P=8, per_rank=8, device="cuda:0")
    with pytest.raises(PlacementTooLarge, match=r"positions_per_rank=8 needs about 8.00 GiB on cuda:0.*"
                                                r"3.00 GiB is free; use nproc >= 4 so each worker holds at most 2"):
        check_placement_memory(8 * gib, 3 * gib, P=8, per_rank=8, device="cuda:0")
    with pytest.raises(PlacementTooLarge, match="no placement fits"):
        check_placement_memory(8 * gib, gib // 2, P=8, per_rank=8, device="cuda:0")
