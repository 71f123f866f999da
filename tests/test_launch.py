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
        paso_core.run(method="paso", P=2, inject_fault={"rank": 1, "kind": "raise"}, **TINY)
    err = info.value
    assert err.rank == 1
    assert "injected failure on rank 1" in str(err)
    assert "tail of rank1.log" in str(err) and "Traceback" in err.log_tail


def test_worker_killed_without_report_is_still_named() -> None:
    with pytest.raises(WorkerFailed) as info:
        paso_core.run(method="naive_dp", nproc=2, inject_fault={"rank": 1, "kind": "exit"}, **TINY)
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
                      inject_fault={"rank": 1, "kind": "hang"}, **TINY)
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
    cfg = validate(RunConfig.from_dict(dict(method="paso", P=4, nproc=2, nnodes=2, node_rank=1,
                             rdzv_endpoint="node0:29400", steps=10)))
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
    train = result.metrics[result.metrics["kind"] == "train"]
    assert list(train["steps_done"]) == list(range(1, 7)) == list(train["iteration"])
    assert result.summary["status"] == "completed"
    prov = result.summary["provenance"]
    assert prov["cpu_model"] and prov["torch"] and prov["world_size"] == 1 and prov["threads_per_worker"] >= 1
    assert len(prov["git"]["commit"]) == 40 and isinstance(prov["git"]["dirty"], bool)


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


# ------------------------------------------------------------------ one rank per GPU
def _fake_gpus(monkeypatch, count: int) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def _no_process(monkeypatch) -> None:
    def no_process(*args, **kwargs):
        raise AssertionError("the device check must happen before any process starts")

    monkeypatch.setattr("subprocess.Popen", no_process)


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_more_workers_than_gpus_is_rejected_before_launch(monkeypatch, tmp_path, device: str) -> None:
    _fake_gpus(monkeypatch, 2)
    _no_process(monkeypatch)
    out = tmp_path / "never"
    with pytest.raises(paso_core.ConfigError) as info:
        paso_core.run(method="paso", P=4, device=device, out_dir=str(out), **TINY)
    message = str(info.value)
    assert "nproc=4" in message and "device_count()=2" in message
    assert "device='cpu'" in message and "nproc <= 2" in message and "positions_per_rank" in message
    assert not out.exists()


def test_one_worker_per_gpu_passes_the_check(monkeypatch) -> None:
    from paso_core.distributed import check_devices

    _fake_gpus(monkeypatch, 2)
    check_devices(validate(RunConfig.from_dict(dict(method="paso", P=2, device="cuda", steps=10))))
    check_devices(validate(RunConfig.from_dict(dict(method="paso", P=2, device="auto", steps=10))))


def test_cpu_skips_the_device_check(monkeypatch) -> None:
    import torch

    from paso_core.distributed import check_devices

    def no_cuda_query():
        raise AssertionError("device='cpu' must not look at CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", no_cuda_query)
    monkeypatch.setattr(torch.cuda, "device_count", no_cuda_query)
    check_devices(validate(RunConfig.from_dict(dict(method="paso", P=4, device="cpu", steps=10))))


def test_cuda_without_gpus_is_rejected_before_launch(monkeypatch) -> None:
    _fake_gpus(monkeypatch, 0)
    _no_process(monkeypatch)
    with pytest.raises(paso_core.ConfigError, match="device='cuda'.*is_available\\(\\) is False.*device='cpu'"):
        paso_core.run(method="serial", device="cuda", **TINY)
    from paso_core.distributed import check_devices

    check_devices(validate(RunConfig.from_dict(dict(method="paso", P=4, device="auto", steps=10))))  # auto: falls back to CPU


def test_pick_device_never_shares_a_gpu(monkeypatch) -> None:
    import torch

    from paso_core.distributed import pick_device

    _fake_gpus(monkeypatch, 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    cfg = RunConfig(device="cuda")
    assert pick_device(cfg, 1) == torch.device("cuda", 1)
    with pytest.raises(RuntimeError, match="local rank 2 has no GPU of its own: only 2 visible"):
        pick_device(cfg, 2)
    assert pick_device(RunConfig(device="cpu"), 5) == torch.device("cpu")


def test_partial_metrics_survive_a_line_torn_by_a_kill(tmp_path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "train_loss": 1.0}\n{"step": 1, "train_loss": 0.5}\n{"step": 2, "tr')
    assert paso_core.load_run(tmp_path).metrics["step"].tolist() == [0, 1]
