"""Failures are reported with the failing rank and its log tail, within a bounded time."""

from __future__ import annotations

import json
import time

import pytest

import paso_core
from paso_core.config import RunConfig, validate
from paso_core.launch import NonFiniteLossError, RunError, WorkerFailed, _failure_report, torchrun_command

TINY = dict(task="synthetic", function="sphere", dim=64, steps=6, progress=False)


def test_exception_on_one_rank_names_that_rank() -> None:
    with pytest.raises(WorkerFailed) as info:
        paso_core.run(method="paso", P=2, extra={"inject_fault": {"rank": 1, "kind": "raise"}}, **TINY)
    err = info.value
    assert err.rank == 1
    assert "injected failure on rank 1" in str(err)
    assert "tail of rank1.log" in str(err) and "Traceback" in err.log_tail


def test_worker_killed_without_report_is_still_named() -> None:
    with pytest.raises(WorkerFailed) as info:
        paso_core.run(method="naive_dp", nproc=2, extra={"inject_fault": {"rank": 1, "kind": "exit"}}, **TINY)
    assert info.value.rank == 1
    assert "exited with code 3" in str(info.value)


_TORCHRUN_SUMMARY = """Failures:
[1]:
  rank      : 1 (local_rank: 1)
  exitcode  : 3 (pid: 11)
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 10)
"""


def test_silent_crash_wins_over_peer_fallout_whatever_torchrun_saw_first(tmp_path) -> None:
    """torchrun may list the peer that died of a dropped connection as the root cause."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "launcher.log").write_text(_TORCHRUN_SUMMARY)
    (logs / "rank0.failure.json").write_text(json.dumps(
        {"rank": 0, "kind": "RuntimeError", "message": "gloo pair.cc: Connection reset by peer", "time": 1.0}))
    (logs / "rank1.log").write_text("step 3\n")
    err = _failure_report(tmp_path, 1)
    assert err.rank == 1 and "exited with code 3" in str(err) and "rank1.log" in str(err)


def test_stalled_collective_ends_within_timeout() -> None:
    tic = time.perf_counter()
    with pytest.raises(RunError) as info:
        paso_core.run(method="paso", P=2, collective_timeout_s=5, stall_timeout_s=60,
                      extra={"inject_fault": {"rank": 1, "kind": "hang"}}, **TINY)
    assert time.perf_counter() - tic < 90
    assert "rank" in str(info.value)


def test_nonfinite_loss_stops_and_keeps_metrics() -> None:
    with pytest.raises(NonFiniteLossError) as info:
        paso_core.run(method="serial", task="synthetic", function="rosenbrock", dim=64, steps=200,
                      optimizer="sgd", lr=10.0, progress=False)
    assert "non-finite loss" in str(info.value)
    metrics = paso_core.load_run(info.value.path).metrics
    assert len(metrics) > 0 and (info.value.path / "metrics.csv").exists()


def test_torchrun_command_passes_multinode_arguments(tmp_path) -> None:
    cfg = validate(RunConfig(method="paso", P=4, nproc=2, nnodes=2, node_rank=1,
                             rdzv_endpoint="node0:29400", steps=10))
    cmd = torchrun_command(cfg, tmp_path / "config.json")
    assert "--nnodes=2" in cmd and "--nproc-per-node=2" in cmd
    assert "--rdzv-endpoint=node0:29400" in cmd and "--node-rank=1" in cmd
    assert "--standalone" not in cmd
    single = torchrun_command(validate(RunConfig(steps=3)), tmp_path / "config.json")
    assert "--standalone" in single


def test_run_directory_layout() -> None:
    result = paso_core.run(method="serial", **TINY)
    files = {p.name for p in result.path.iterdir()}
    assert {"config.json", "metrics.csv", "summary.json", "final.pt", "logs"} <= files
    assert (result.path / "logs" / "rank0.log").exists()
    assert json.loads((result.path / "config.json").read_text())["method"] == "serial"
    assert list(result.metrics["step"]) == list(range(6))
    assert result.summary["status"] == "completed"


def test_cli_runs_the_same_options(tmp_path) -> None:
    import subprocess
    import sys

    out = tmp_path / "cli-run"
    proc = subprocess.run([sys.executable, "-m", "paso_core", "run", "--method", "paso", "--task", "synthetic",
                           "--function", "rosenbrock", "--dim", "32", "--steps", "5", "--P", "2",
                           "--threshold", "1e-4", "--ema-decay", "0.9", "--no-progress", "--out-dir", str(out),
                           "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["method"] == "paso" and summary["steps"] == 5 and summary["P"] == 2
    assert paso_core.load_run(out).config["threshold"] == 1e-4
