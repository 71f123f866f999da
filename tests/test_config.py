"""Bad input is rejected before any worker starts, with the value and the valid choices."""

from __future__ import annotations

import pytest

import paso_core
from paso_core.__main__ import main as cli_main
from paso_core.config import ConfigError, RunConfig, validate

BAD = [
    ({"method": "pasoo"}, "method='pasoo'.*serial, paso"),
    ({"task": "speech"}, "task='speech'.*synthetic, vision, text"),
    ({"task": "synthetic", "function": "griewank"}, "function='griewank'.*sphere, ackley, rosenbrock"),
    ({"task": "vision", "dataset": "mnist"}, "dataset='mnist'.*digits, cifar10"),
    ({"task": "vision", "model": "vgg"}, "model='vgg'.*cnn, vit, resnet18"),
    ({"optimizer": "lion"}, "optimizer='lion'.*sgd, momentum, adam, adamw"),
    ({"method": "paso", "P": 0}, "P=0"),
    ({"method": "paso", "P": 2.5}, "P=2.5"),
    ({"method": "paso", "P": 8, "steps": 5}, "P=8 is larger than steps=5"),
    ({"method": "paso", "threshold": -1.0}, "threshold=-1.0"),
    ({"method": "paso", "ema_decay": 1.5}, "ema_decay=1.5"),
    ({"method": "paso", "ema_decay": -0.1}, "ema_decay=-0.1"),
    ({"nproc": 0}, "nproc=0"),
    ({"method": "paso", "P": 4, "nproc": 2}, "nproc\\*nnodes must equal P"),
    ({"task": "vision", "dataset": "cifar10"}, "needs data_root"),
    ({"task": "vision", "dataset": "cifar10", "data_root": "/no/such/dir"}, "data_root='/no/such/dir' does not exist"),
    ({"task": "vision", "method": "ddp", "nproc": 3, "batch_size": 64}, "batch_size=64 is not divisible"),
    ({"lr_schedule": "step"}, "lr_schedule='step'.*constant, cosine"),
    ({"adaptivity": "max"}, "adaptivity='max'.*mean, median"),
    ({"method": "optex", "P": 2, "history": 1}, "history=1"),
    ({"method": "optex", "P": 2, "lengthscale": 0.0}, "lengthscale=0.0"),
    ({"method": "optex", "P": 2, "noise": -1e-3}, "noise=-0.001"),
    ({"nnodes": 2}, "rdzv_endpoint"),
    ({"lr": float("nan")}, "lr=nan"),
]


@pytest.mark.parametrize("options,message", BAD, ids=[str(o) for o, _ in BAD])
def test_bad_input_is_rejected_before_launch(options: dict, message: str, monkeypatch) -> None:
    def no_process(*args, **kwargs):
        raise AssertionError("validation must happen before any process starts")

    monkeypatch.setattr("subprocess.Popen", no_process)
    with pytest.raises(ConfigError, match=message):
        paso_core.run(**{"method": "serial", "task": "synthetic", **options})


def test_unknown_option_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown option.*'tresh'.*threshold"):
        paso_core.run(method="paso", tresh=1e-3)


def test_defaults_resolve() -> None:
    cfg = validate(RunConfig(method="paso", P=3, steps=10))
    assert cfg.nproc == 3
    cfg = validate(RunConfig(task="vision"))
    assert (cfg.dataset, cfg.model, cfg.nproc) == ("digits", "cnn", 1)
    assert validate(RunConfig(optimizer="adamw")).resolved_weight_decay == 0.01


def test_config_round_trips_through_json(tmp_path) -> None:
    cfg = validate(RunConfig(method="paso", P=2, steps=4, betas=(0.8, 0.9), extra={"a": 1}))
    cfg.to_json(tmp_path / "c.json")
    assert RunConfig.from_json(tmp_path / "c.json") == cfg


def test_cli_reports_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["run", "--method", "paso", "--P", "0"]) == 2
    assert "P=0" in capsys.readouterr().err
