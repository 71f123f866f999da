"""Bad input is rejected before any worker starts, with the value and the valid choices."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import paso_core
from paso_core.__main__ import main as cli_main
from paso_core.__main__ import build_parser
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
    ({"method": "paso", "P": 4, "nproc": 3}, "nproc\\*nnodes=3 does not divide P=4.*among 1, 2, 4"),
    ({"method": "paso", "P": 4, "nproc": 2, "positions_per_rank": 1}, "positions_per_rank=1 with nproc\\*nnodes=2"),
    ({"method": "paso", "P": 4, "positions_per_rank": 0}, "positions_per_rank=0"),
    ({"method": "paso", "P": 4, "nproc": 3, "data_parallel": 2}, "data_parallel=2 does not divide nproc\\*nnodes=3"),
    ({"method": "paso", "P": 4, "nproc": 6, "data_parallel": 2}, "nproc\\*nnodes/data_parallel=3 does not divide P=4"),
    ({"method": "paso", "task": "vision", "batch_size": 33, "P": 4, "nproc": 4, "data_parallel": 2},
     "batch_size=33 is not divisible"),
    ({"method": "paso", "task": "text", "P": 2, "batched": "vmap"}, "batched='vmap' cannot batch task='text'"),
    ({"method": "paso", "P": 2, "nproc": 2, "data_parallel": 2, "batched": "vmap"},
     "batched='vmap' with data_parallel=2 is not built"),
    ({"task": "vision", "dataset": "cifar10"}, "needs data_root"),
    ({"task": "vision", "dataset": "cifar10", "data_root": "/no/such/dir"}, "data_root='/no/such/dir' does not exist"),
    ({"task": "vision", "method": "ddp", "nproc": 3, "batch_size": 64}, "batch_size=64 is not divisible"),
    ({"lr_schedule": "linear"}, "lr_schedule='linear'.*constant, cosine, step"),
    ({"method": "paso", "adaptivity": "max"}, "adaptivity='max'.*mean, median"),
    ({"method": "paso", "threshold_errors": "last"}, "threshold_errors='last'.*seed, next_guess"),
    # a method only takes its own options
    ({"method": "serial", "P": 4}, "P=4 belongs to method\\(s\\) paso, optex, not to method='serial'"),
    ({"method": "ddp", "history": 5}, "history=5 belongs to method\\(s\\) optex"),
    ({"method": "grad_accum", "micro_batches": 0}, "micro_batches=0"),
    ({"method": "grad_accum", "task": "vision", "micro_batches": 5}, "batch_size=64 is not divisible by 5"),
    ({"method": "optex", "P": 2, "history": 1}, "history=1"),
    ({"method": "optex", "P": 2, "lengthscale": 0.0}, "lengthscale=0.0"),
    ({"method": "optex", "P": 2, "noise": -1e-3}, "noise=-0.001"),
    ({"method": "naive_dp", "nnodes": 2}, "rdzv_endpoint"),
    ({"lr": float("nan")}, "lr=nan"),
    # serial is one process: extra ranks would only idle
    ({"nproc": 2}, "method='serial' runs one process.*nproc=1.*naive_dp, ddp.*got nproc=2"),
    ({"method": "serial", "nnodes": 2, "rdzv_endpoint": "h:1"}, "method='serial' runs one process.*nnodes=2"),
    # text options, once unchecked extra={...} keys
    ({"task": "text", "block_size": 5000}, "block_size=5000 is larger than the context of model='gpt2-tiny' "
                                           "\\(1024 positions\\)"),
    ({"task": "text", "model": "gpt2", "n_positions": 64}, "block_size=128 .*model='gpt2' \\(64 positions\\)"),
    ({"task": "text", "n_positions": 0}, "n_positions=0"),
    ({"task": "text", "vocab_size": 100}, "vocab_size=100.*>= 257"),
    ({"attn_implementation": "flash"}, "attn_implementation='flash'.*sdpa, eager"),
    ({"dtype": "fp8"}, "dtype='fp8'.*float32, bfloat16, float16, auto"),
    ({"task": "text", "dtype": "auto"}, "dtype='auto'.*'local' or 'modelscope'.*float32, bfloat16, float16"),
    ({"eval_test": "yes"}, "eval_test='yes'.*True or False"),
    ({"keep_dropout": 1}, "keep_dropout=1.*True or False"),
    ({"modelscope_cache": 3}, "modelscope_cache=3"),
    # PASO's trajectory initialisation
    ({"method": "paso", "init": "bogus"}, "init='bogus'.*copy, extrapolate, trajectory"),
    ({"method": "paso", "init": "trajectory"}, "init='trajectory' needs init_trajectory"),
    ({"method": "paso", "init": "trajectory", "init_trajectory": "/no/such.pt"},
     "init_trajectory='/no/such.pt' is not a file"),
    ({"method": "paso", "init_trajectory": "/no/such.pt"}, "init_trajectory='/no/such.pt' is only read with "
                                                          "init='trajectory' \\(got init='copy'\\)"),
    # the worker's fault-injection hook
    ({"method": "naive_dp", "nproc": 2, "inject_fault": {"rank": 2, "kind": "raise"}}, "inject_fault rank=2.*0..1"),
    ({"inject_fault": {"rank": 0, "kind": "explode"}}, "kind='explode'.*raise, exit, hang"),
    ({"inject_fault": {"rank": 0, "when": 3}}, "inject_fault=.*is not valid"),
    ({"inject_fault": {"kind": "raise"}}, "inject_fault=.*is not valid"),
    # extra={...} only carries the options it once did, now mapped onto the declared fields
    ({"extra": {"a": 1}}, "unknown extra option.*'a'.*n_positions, vocab_size"),
    ({"extra": {"n_positions": 32}, "n_positions": 64}, "n_positions is given twice"),
]


@pytest.mark.parametrize("options,message", BAD, ids=[str(o) for o, _ in BAD])
def test_bad_input_is_rejected_before_launch(options: dict, message: str, monkeypatch) -> None:
    def no_process(*args, **kwargs):
        raise AssertionError("validation must happen before any process starts")

    monkeypatch.setattr("subprocess.Popen", no_process)
    with pytest.raises(ConfigError, match=message):
        paso_core.run(**{"method": "serial", "task": "synthetic", **options})


def _forbid_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_process(*args, **kwargs):
        raise AssertionError("validation must happen before any process starts")

    monkeypatch.setattr("subprocess.Popen", no_process)


def _write_cifar(root: Path, names: tuple[str, ...]) -> None:
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    for name in names:
        (directory / name).write_bytes(b"")  # validation checks that files exist, not their content


def _write_model_config(directory: Path, **config: object) -> str:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "gpt2", **config}))
    return str(directory)


CIFAR_ALL = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
WIKI_ALL = ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")


def _data_case(case: str, root: Path) -> tuple[dict, str]:
    """Options whose data_root or model_dir is bad in the named way, and the expected message."""
    vision = {"task": "vision", "dataset": "cifar10", "data_root": str(root)}
    text = {"task": "text", "dataset": "wikitext2", "data_root": str(root)}
    if case == "cifar empty":
        return vision, "does not hold CIFAR-10: CIFAR-10 not found.*cifar-10-batches-py.*download=True"
    if case == "cifar incomplete":
        _write_cifar(root, ("data_batch_1", "batches.meta"))
        return vision, "incomplete: missing data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch\\."
    if case == "wikitext empty":
        return text, "does not hold WikiText-2: WikiText-2 not found; looked for .*wiki.train.tokens"
    if case == "wikitext incomplete":
        for name in ("wiki.train.tokens", "wiki.test.tokens"):
            (root / name).write_text(" = A = \n")
        return text, "incomplete: .*wiki.valid.tokens missing"
    if case == "local context":
        model_dir = _write_model_config(root / "m", n_positions=32, n_ctx=32)
        return {"task": "text", "model": "local", "model_dir": model_dir, "block_size": 64}, \
            "block_size=64 is larger than the context of model='local' \\(32 positions\\)"
    if case == "local context (llama keys)":
        model_dir = _write_model_config(root / "m", max_position_embeddings=100)
        return {"task": "text", "model": "local", "model_dir": model_dir, "block_size": 128}, "100 positions"
    if case == "local without config.json":
        (root / "m").mkdir()
        return {"task": "text", "model": "local", "model_dir": str(root / "m")}, "has no config.json"
    raise AssertionError(case)


DATA_CASES = ["cifar empty", "cifar incomplete", "wikitext empty", "wikitext incomplete", "local context",
              "local context (llama keys)", "local without config.json"]


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data_or_model_dir_is_rejected_before_launch(case: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    options, message = _data_case(case, tmp_path)
    _forbid_processes(monkeypatch)
    with pytest.raises(ConfigError, match=message):
        paso_core.run(**{"method": "serial", **options})


def test_complete_data_passes_and_download_skips_the_file_check(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "full", CIFAR_ALL)
    validate(RunConfig(task="vision", dataset="cifar10", data_root=str(tmp_path / "full")))
    validate(RunConfig(task="vision", dataset="cifar10", data_root=str(tmp_path / "full" / "cifar-10-batches-py")))
    (tmp_path / "empty").mkdir()
    validate(RunConfig(task="vision", dataset="cifar10", data_root=str(tmp_path / "empty"), download=True))
    validate(RunConfig(task="text", dataset="wikitext2", data_root=str(tmp_path / "empty"), download=True))
    for name in WIKI_ALL:
        (tmp_path / "wiki" / "wikitext-2-raw").mkdir(parents=True, exist_ok=True)
        (tmp_path / "wiki" / "wikitext-2-raw" / name).write_text(" = A = \n")
    validate(RunConfig(task="text", dataset="wikitext2", data_root=str(tmp_path / "wiki")))
    model_dir = _write_model_config(tmp_path / "m", n_positions=32)
    validate(RunConfig(task="text", model="local", model_dir=model_dir, block_size=32, dtype="auto"))
    validate(RunConfig(task="text", model="gpt2-tiny", n_positions=2048, block_size=2048))


def test_trajectory_init_accepts_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "trajectory.pt"
    path.write_bytes(b"")
    cfg = validate(RunConfig.from_dict(dict(method="paso", P=2, steps=4, init="trajectory", init_trajectory=str(path))))
    assert cfg.init_trajectory == str(path)


def test_file_checks_import_no_torch(tmp_path: Path) -> None:
    """The data and model-directory checks validation runs stay torch-free (only the method
    registry needs torch), so they can be reused by tools that do not install it."""
    _write_cifar(tmp_path, CIFAR_ALL)
    code = f"""
import sys, types
sys.modules["torch"] = None  # any "import torch" now fails
package = types.ModuleType("paso_core")
package.__path__ = [{str(Path(paso_core.__file__).parent)!r}]
sys.modules["paso_core"] = package
from paso_core.tasks import layouts
assert layouts.cifar10_problem({str(tmp_path)!r}) is None
from paso_core import options, parallel, metrics
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_defaults_of_the_former_extra_options() -> None:
    """The options that used to be read from extra={...} keep the defaults they had there."""
    cfg = RunConfig.from_dict({"method": "paso"})
    assert (cfg.n_positions, cfg.vocab_size, cfg.eval_test, cfg.keep_dropout, cfg.attn_implementation,
            cfg.dtype, cfg.modelscope_cache, cfg.inject_fault, cfg.init_trajectory) == \
        (1024, 4096, True, False, "sdpa", "float32", None, None, None)


def test_legacy_extra_maps_onto_declared_options() -> None:
    fault = {"rank": 1, "kind": "exit"}
    cfg = RunConfig.from_dict({"method": "naive_dp", "extra": {"n_positions": 32, "inject_fault": fault}})
    assert cfg.n_positions == 32 and cfg.inject_fault == fault
    assert RunConfig.from_dict({"extra": {}}) == RunConfig.from_dict({"extra": None}) == RunConfig()
    assert RunConfig.from_dict({"n_positions": 32, "extra": {"n_positions": 32}}).n_positions == 32
    with pytest.raises(ConfigError, match="extra=3 is not valid"):
        RunConfig.from_dict({"extra": 3})


def test_cli_has_a_flag_for_every_new_option() -> None:
    args = vars(build_parser().parse_args([
        "run", "--n-positions", "64", "--vocab-size", "512", "--no-eval-test", "--keep-dropout",
        "--attn-implementation", "eager", "--dtype", "bfloat16", "--modelscope-cache", "/c",
        "--init", "trajectory", "--init-trajectory", "t.pt"]))
    args.pop("command")
    assert args == {"n_positions": 64, "vocab_size": 512, "eval_test": False, "keep_dropout": True,
                    "attn_implementation": "eager", "dtype": "bfloat16", "modelscope_cache": "/c",
                    "init": "trajectory", "init_trajectory": "t.pt", "json": False}


def test_unknown_option_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown option.*'tresh'.*threshold"):
        paso_core.run(method="paso", tresh=1e-3)


def test_defaults_resolve() -> None:
    cfg = validate(RunConfig.from_dict(dict(method="paso", P=3, steps=10)))
    assert cfg.nproc == 3
    cfg = validate(RunConfig(task="vision"))
    assert (cfg.dataset, cfg.model, cfg.nproc) == ("digits", "cnn", 1)
    assert validate(RunConfig(optimizer="adamw")).resolved_weight_decay == 0.01


def test_config_round_trips_through_json(tmp_path) -> None:
    cfg = validate(RunConfig.from_dict(dict(method="paso", P=2, steps=4, betas=(0.8, 0.9), n_positions=64,
                                            eval_test=False, inject_fault={"rank": 1, "kind": "exit"})))
    cfg.to_json(tmp_path / "c.json")
    assert RunConfig.from_json(tmp_path / "c.json") == cfg


def test_cli_reports_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["run", "--method", "paso", "--P", "0"]) == 2
    assert "P=0" in capsys.readouterr().err


def test_help_shows_every_option_with_default_choices_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("--threshold-errors THRESHOLD_ERRORS errors feeding the tolerance",
                     "(default: 'seed'; choices: seed, next_guess)", "options of method paso",
                     "options of method optex", "--micro-batches", "[also optex] (default: 4)",
                     "--optimizer OPTIMIZER optimizer (torch.optim) (default: 'adam'; choices: sgd, momentum, adam, adamw)"):
        assert expected in text, expected


def test_flat_and_typed_options_agree() -> None:
    cfg = RunConfig.from_dict({"method": "paso", "P": 3, "threshold": 0.0})
    assert cfg.options.P == cfg.P == 3 and cfg.to_dict()["threshold"] == 0.0
    assert "history" not in cfg.to_dict() and "P" not in RunConfig.from_dict({}).to_dict()
    with pytest.raises(AttributeError, match="no option 'P'.*serial"):
        RunConfig().P
