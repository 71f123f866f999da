"""An interrupted run resumed from its checkpoint ends exactly like an uninterrupted one.

All cases run in two rounds (uninterrupted + interrupted, then resumed), runs of one world
size sharing a launch, so the check costs 6 launches instead of 18."""

from __future__ import annotations

import pytest
import torch

from paso_core.config import RunConfig
from paso_core.launch import launch_grouped

CASES = {
    "paso": dict(method="paso", P=3, threshold=1e-3, ema_decay=0.9, task="synthetic", function="ackley",
                 dim=200, steps=40, lr=0.01),
    "serial": dict(method="serial", task="vision", steps=12, batch_size=32, lr=0.01),
    # two window positions per worker: each worker checkpoints both of its slots
    "paso_2_per_rank": dict(method="paso", P=4, nproc=2, threshold=1e-3, ema_decay=0.9, task="synthetic",
                            function="ackley", dim=200, steps=40, lr=0.01),
    "optex": dict(method="optex", P=3, task="synthetic", function="rosenbrock", dim=200, steps=30, lr=1e-3,
                  grad_clip=100.0),
    "ddp": dict(method="ddp", nproc=2, task="synthetic", function="rosenbrock", dim=100, steps=12, lr=1e-3),
    "naive_dp": dict(method="naive_dp", nproc=2, task="vision", steps=8, batch_size=32, lr=0.01),
    "grad_accum": dict(method="grad_accum", micro_batches=2, task="vision", steps=8, batch_size=32, lr=0.01),
    # stops at step 5, inside the round 3..5 of H=3; ranks' Adam moments and BatchNorm buffers differ
    "local_sgd": dict(method="local_sgd", nproc=2, sync="constant", H_base=3, task="vision", model="resnet20",
                      steps=8, batch_size=32, lr=0.01),
}
COMPARED = ["train_loss", "iteration"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """name -> (uninterrupted, stopped, resumed) results."""
    root = tmp_path_factory.mktemp("resume")

    def config(name: str, folder: str, **extra) -> RunConfig:
        return RunConfig.from_dict(dict(CASES[name], optimizer="adam", seed=5, progress=False,
                                        out_dir=str(root / name / folder), **extra))

    first = launch_grouped([cfg for name in CASES for cfg in (
        config(name, "full"), config(name, "resumed", checkpoint_every=2, stop_after=5))])
    resumed = launch_grouped([config(name, "resumed", resume=True, checkpoint_every=2) for name in CASES])
    return {name: (first[2 * i], first[2 * i + 1], resumed[i]) for i, name in enumerate(CASES)}


@pytest.mark.parametrize("name", list(CASES))
def test_resume_matches_uninterrupted(name: str, runs: dict) -> None:
    full, part, resumed = runs[name]
    assert part.summary["status"] == "stopped"
    assert len(part.metrics) < len(full.metrics)
    assert resumed.summary["status"] == "completed"
    for key in ("steps", "iterations", "grad_evals", "final_train_loss"):
        assert resumed.summary[key] == full.summary[key], key
    a = torch.load(full.path / "final.pt", weights_only=True)
    b = torch.load(resumed.path / "final.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    cols = [c for c in COMPARED + ["accepted", "threshold", "round_H", "syncs"] if c in full.metrics]
    assert full.metrics[cols].equals(resumed.metrics[cols])
    rounds = full.path / "rounds.jsonl"  # local SGD's per-round records, rewritten from the checkpoint on
    if rounds.exists():
        assert rounds.read_text() == (resumed.path / "rounds.jsonl").read_text()
