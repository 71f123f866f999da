"""The multi-process asynchronous pipeline (one torchrun rank per stage, non-blocking
point-to-point) against the exact single-process simulator, for every method and optimizer.

Two launches in all: every runtime case shares one 3-process launch, every simulator case one
1-process launch (:func:`paso_core.launch.launch_grouped`). Each case trains a few mini-batches
and must give the simulator's loss at every step and its final parameters. Also the records a
run leaves (per-stage time split, weight versions, prediction quality, evaluation rows) and
every bad input, rejected before any launch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from paso_core.config import RunConfig, validate
from paso_core.launch import launch_grouped
from paso_core.metrics import train_rows
from paso_core.options import ConfigError

pytestmark = pytest.mark.usefixtures("paso_cache")

STAGES = 3
CNN = dict(task="vision", dataset="digits", model="cnn", batch_size=16, eval_batch_size=512)
GPT = dict(task="text", dataset="pydoc", model="gpt2-tiny", block_size=16, batch_size=4, eval_batch_size=32,
           n_positions=32, eval_test=False)
COMMON = dict(steps=7, lr=0.05, eval_every=4, log_every=1, progress=False, threads_per_worker=1, seed=2,
              stages=STAGES, quality_every=2)
#: (name, method, task options, optimizer, extra options)
CASES: list[tuple[str, str, dict[str, Any], str, dict[str, Any]]] = [
    *[(f"pipeoptim-{opt}", "pipeoptim", CNN, opt, {}) for opt in ("sgd", "momentum", "adam", "adamw")],
    ("pipeoptim-reference-lookahead", "pipeoptim", CNN, "momentum",
     {"prediction_steps": "reference", "sgdm_delta": "lookahead"}),
    ("pipeoptim-gpt2-adamw", "pipeoptim", GPT, "adamw", {"split": "params"}),
    ("pipedream-momentum", "pipedream", CNN, "momentum", {}),
    ("pipedream-adamw", "pipedream", CNN, "adamw", {}),
    ("async_nostash-momentum", "async_nostash", CNN, "momentum", {}),
    ("async_nostash-adam", "async_nostash", CNN, "adam", {}),
    ("spectrain-momentum", "spectrain", CNN, "momentum", {}),
]
#: The runtime runs the simulator's operations on the same shapes, one thread per process, so
#: it should match bit for bit; the bound leaves room for a CPU whose kernels round differently
#: for differently aligned buffers (a few float32 ulps over 7 steps), and is still far below what
#: a runtime that mixes up a tensor, a version or an order produces (> 1e-3).
RTOL = 1e-4


def _config(root: Path, name: str, method: str, task: dict[str, Any], optimizer: str, extra: dict[str, Any],
            engine: str) -> RunConfig:
    lr = 1e-3 if optimizer in ("adam", "adamw") else COMMON["lr"]
    return validate(RunConfig.from_dict({**task, **COMMON, **extra, "method": method, "optimizer": optimizer,
                                         "lr": lr, "engine": engine, "nproc": STAGES if engine == "processes" else 1,
                                         "out_dir": str(root / engine / name)}))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Any]:
    root = tmp_path_factory.mktemp("async")
    keys = [(case[0], engine) for engine in ("processes", "simulator") for case in CASES]
    by_name = {case[0]: case for case in CASES}
    results = launch_grouped([_config(root, *by_name[name], engine) for name, engine in keys])
    return dict(zip(keys, results))


def _losses(result: Any) -> pd.Series:
    return train_rows(result.metrics).set_index("steps_done")["train_loss"]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / max(float(b.double().norm()), 1e-30))


@pytest.mark.parametrize("name", [case[0] for case in CASES])
def test_runtime_gives_the_simulator_losses_and_parameters(runs: dict, name: str) -> None:
    processes, simulator = runs[(name, "processes")], runs[(name, "simulator")]
    assert processes.summary["status"] == simulator.summary["status"] == "completed"
    a, b = _losses(processes), _losses(simulator)
    assert list(a.index) == list(b.index) == list(range(1, COMMON["steps"] + 1))
    assert ((a - b).abs() <= RTOL * b.abs()).all(), pd.DataFrame({"processes": a, "simulator": b})
    final_a = torch.load(processes.path / "final.pt", weights_only=True)
    final_b = torch.load(simulator.path / "final.pt", weights_only=True)
    assert final_a.keys() == final_b.keys()
    worst = max(_relative(final_a[k], final_b[k]) for k in final_b if final_b[k].is_floating_point())
    assert worst <= RTOL, worst


def test_weight_rules_change_the_trajectory(runs: dict) -> None:
    """Same batches and initial weights: the first loss agrees, later ones differ by method."""
    names = ("pipeoptim-momentum", "pipedream-momentum", "async_nostash-momentum", "spectrain-momentum")
    curves = [_losses(runs[(n, "simulator")]) for n in names]
    assert len({round(float(c.iloc[0]), 10) for c in curves}) == 1
    assert len({round(float(c.iloc[-1]), 10) for c in curves}) == len(names)


def test_a_run_records_stages_versions_quality_and_evaluations(runs: dict) -> None:
    result = runs[("pipeoptim-momentum", "processes")]
    summary = result.summary
    assert summary["pipeline"] == "async_1f1b" and summary["weight_rule"] == "pipeoptim"
    assert summary["max_weight_versions_per_stage"] == [2, 2, 1]
    assert len(summary["per_stage"]) == STAGES
    for stage in summary["per_stage"]:
        assert stage["updates"] == COMMON["steps"]
        assert stage["time_compute_s"] > 0 and stage["time_wait_s"] >= 0 and stage["time_comm_s"] >= 0
    quality = summary["prediction_quality"]
    assert set(quality) == {"0", "1", "2"} and quality["2"] == [] and quality["0"]
    assert all(q >= 0 for _, q in quality["0"])
    assert summary["bytes_iter_max"] > 0
    evals = result.metrics[result.metrics["kind"] == "eval"]
    assert list(evals["steps_done"]) == [0, 4, 7] and evals["eval_test_accuracy"].notna().all()
    stash = runs[("pipedream-adamw", "processes")].summary
    assert stash["max_weight_versions_per_stage"] == [3, 2, 1]


# --------------------------------------------------------------------------- bad input
def _validate(**options: Any) -> RunConfig:
    return validate(RunConfig.from_dict({**CNN, **COMMON, "nproc": STAGES, "optimizer": "momentum",
                                         "method": "pipeoptim", **options}))


@pytest.mark.parametrize("options,message", [
    (dict(stages=40, nproc=40), r"40 pipeline stages is more than the model's 4 blocks"),
    (dict(method="spectrain", optimizer="adam"), r"optimizer='adam'.*spectrain.*choose one of: momentum"),
    (dict(task="synthetic"), r"task='synthetic' cannot be split"),
    (dict(nproc=2), r"stages=3 does not match the pipeline degree.*nproc\*nnodes=2"),
    (dict(engine="simulator", nproc=2), r"engine='simulator'.*nproc\*nnodes=1"),
    (dict(engine="threads"), r"engine='threads'.*processes, simulator"),
    (dict(prediction_steps="code"), r"prediction_steps='code'.*paper, reference"),
    (dict(split=[2, 1]), r"split"),
    (dict(grad_clip=1.0), r"grad_clip=1.0 is not supported by method='pipeoptim'"),
    (dict(stages=1, nproc=1), r"stages"),
    (dict(quality_every=-1), r"quality_every"),
    (dict(sgdm_delta="velocity"), r"sgdm_delta='velocity'.*momentum, lookahead"),
    (dict(lr_schedule="step", lr_decay_gamma=0.0), r"lr_decay_gamma"),
    (dict(lr_schedule="step", lr_decay_gamma=2.0), r"lr_decay_gamma"),
])
def test_bad_input_is_refused_before_launch(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _validate(**options)
