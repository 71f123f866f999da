"""The ``mirror`` option: TensorBoard / offline W&B copies of metrics rows.

Why these tests: a mirror is only useful if it shows the numbers of metrics.csv, and a
missing package must fail before any worker starts, saying what to install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import paso_core
from paso_core import ConfigError
from paso_core.__main__ import build_parser

SMALL = dict(method="serial", task="synthetic", function="ackley", dim=32, steps=5, progress=False,
             threads_per_worker=1)


def _forbid_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_process(*args, **kwargs):
        raise AssertionError("validation must happen before any process starts")

    monkeypatch.setattr("subprocess.Popen", no_process)


def test_tensorboard_scalars_equal_metrics_csv(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = paso_core.run(**SMALL, eval_every=2, mirror="tensorboard", out_dir=str(tmp_path / "run"))
    metrics = result.metrics
    assert set(metrics["kind"]) == {"train", "eval"}
    events = EventAccumulator(str(result.path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    expected: dict[str, tuple[list[int], list[float]]] = {}
    for kind, rows in metrics.groupby("kind"):
        for column in rows.columns.drop("kind"):
            values = rows[column].dropna()
            if len(values):
                expected[f"{kind}/{column}"] = (rows.loc[values.index, "iteration"].astype(int).tolist(),
                                                values.astype(np.float32).tolist())
    assert sorted(events.Tags()["scalars"]) == sorted(expected)
    for tag, (steps, values) in expected.items():
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == steps, tag
        assert [s.value for s in scalars] == values, tag  # TensorBoard keeps float32


def _scalars_by_tag(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(s.step, s.value) for s in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_resumed_run_drops_events_past_the_checkpoint(tmp_path: Path) -> None:
    """A crash after the checkpoint leaves events the resumed run writes again; TensorBoard
    must then show each iteration once, as metrics.csv does."""
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    out = str(tmp_path / "run")
    paso_core.run(**SMALL, mirror="tensorboard", out_dir=out, checkpoint_every=2, stop_after=3)
    stale = SummaryWriter(str(Path(out) / "tensorboard"))  # what a crashed attempt logged after iteration 3
    for step in (4, 5):
        stale.add_scalar("train/train_loss", 99.0, step)
    stale.close()
    result = paso_core.run(**SMALL, mirror="tensorboard", out_dir=out, checkpoint_every=2, resume=True)
    train = result.metrics[result.metrics["kind"] == "train"]
    losses = _scalars_by_tag(result.path / "tensorboard")["train/train_loss"]
    assert [step for step, _ in losses] == train["iteration"].tolist() == [1, 2, 3, 4, 5]
    assert [v for _, v in losses] == train["train_loss"].astype(np.float32).tolist()


def test_missing_tensorboard_is_named_before_any_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a))
    _forbid_processes(monkeypatch)
    with pytest.raises(ConfigError, match=r"mirror='tensorboard' needs the tensorboard package.*"
                                          r"pip install tensorboard.*paso-artifact\[logging\]"):
        paso_core.run(**SMALL, mirror="tensorboard")


def test_wandb_offline_or_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("wandb") is None:
        _forbid_processes(monkeypatch)
        with pytest.raises(ConfigError, match="mirror='wandb' needs the wandb package.*pip install wandb"):
            paso_core.run(**SMALL, mirror="wandb", out_dir=str(tmp_path / "run"))
        assert not (tmp_path / "run").exists()
        return
    monkeypatch.setenv("WANDB_MODE", "offline")
    result = paso_core.run(**SMALL, mirror="wandb", out_dir=str(tmp_path / "run"))
    assert list((result.path / "wandb").glob("offline-run-*")), "no offline W&B run in the run directory"


def test_unknown_mirror_and_cli_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid_processes(monkeypatch)
    with pytest.raises(ConfigError, match="mirror='mlflow' is not valid; choose one of: tensorboard, wandb"):
        paso_core.run(**SMALL, mirror="mlflow")
    args = vars(build_parser().parse_args(["run", "--mirror", "tensorboard"]))
    assert args["mirror"] == "tensorboard"


def test_mirror_leaves_the_default_run_name_alone() -> None:
    """Where the numbers are copied to does not change them, so it must not change the run's name."""
    from paso_core.config import RunConfig
    from paso_core.runs import default_run_name

    plain = RunConfig.from_dict(dict(SMALL))
    mirrored = RunConfig.from_dict({**SMALL, "mirror": "tensorboard"})
    assert default_run_name(plain) == default_run_name(mirrored)
