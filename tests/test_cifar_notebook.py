"""The CIFAR-10 PASO study (``notebooks/cifar_paso.ipynb`` + ``paso_core.experiments.cifar``).

Unit tests cover what a reader must be able to trust without rerunning: which preset fills
which parameter and when explicit values win, that bad input stops in the validation step,
that a missing CIFAR-10 is replaced by digits *loudly* and never silently, and that the table
and trade-off numbers are computed correctly (on fake runs with known answers). Integration
tests check that serial, naive DP and DDP follow the same trajectory, and execute the
notebook at smoke scale with all artifacts under a temporary directory.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import pytest

from paso_core.config import ConfigError, RunConfig
from paso_core.experiments import cifar, common
from paso_core.runs import RunResult

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "cifar_paso.ipynb"


# =========================================================================== helpers
def write_cifar_layout(root: Path, per_file: int = 10, skip: tuple[str, ...] = ()) -> Path:
    """A tiny CIFAR-10 copy in torchvision's layout (pickled dicts with data/labels)."""
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        if name in skip:
            continue
        batch = {"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, per_file)]}
        with (directory / name).open("wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    with (directory / "batches.meta").open("wb") as fh:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, fh, protocol=2)
    return directory


def fake_metrics(rows: int, dt: float, t0: float = 3.0, eval_at: tuple[int, ...] = (), steps: int | None = None,
                 eval_s: float = 0.5) -> pd.DataFrame:
    """Rows of the metrics schema: ``rows`` training iterations of ``dt`` seconds each (so the
    training time is exactly ``rows * dt``), after ``t0`` seconds of setup, with evaluation
    rows (``kind='eval'``, ``eval_s`` each, excluded from training time) after the
    iterations in ``eval_at``. ``steps`` spreads that many optimizer steps over the rows."""
    steps = steps or rows
    data, wall = [], t0
    for i in range(rows):
        wall += dt
        done = round(steps * (i + 1) / rows)
        common = {"wall_time_s": wall, "iteration": i + 1, "steps_done": done, "grad_evals": done,
                  "items": done * 32, "train_time_s": dt * (i + 1)}
        data.append({"kind": "train", **common, "train_loss": 2.0 / (i + 1), "lr": 1e-3, "time_iteration_s": dt,
                     "time_compute_s": 0.8 * dt, "time_comm_s": 0.1 * dt, "bytes_measured": 0, "bytes_modelled": 0,
                     "bytes_iter_max": 0})
        if i + 1 in eval_at:
            wall += eval_s
            data.append({"kind": "eval", **common, "wall_time_s": wall, "time_eval_s": eval_s,
                         "eval_test_accuracy": (i + 1) / rows, "eval_test_f1_macro": (i + 1) / rows - 0.01})
    return pd.DataFrame(data)


def fake_run(method: str, seed: int, *, iterations: int, dt: float, accuracy: float,
             threshold: float = 1e-5, ema_decay: float = 0.999, status: str = "completed",
             rss: float = 100.0, steps: int = 100, world: int = 1, eval_at: tuple[int, ...] = ()) -> RunResult:
    """A run directory's contents as the schema writes them; PASO runs have PASO's columns
    and options, the others only the common ones."""
    metrics = fake_metrics(iterations, dt, steps=steps, eval_at=eval_at)
    config = {"method": method, "seed": seed, "nproc": world}
    if method == "paso":
        train = metrics["kind"] == "train"
        metrics.loc[train, "accepted"] = steps / iterations
        metrics.loc[train, "threshold"] = threshold
        metrics.loc[train, "err_mean"] = 0.1
        metrics.loc[train, "window_start"] = metrics.loc[train, "steps_done"] - steps / iterations
        config.update({"P": 4, "threshold": threshold, "ema_decay": ema_decay, "adaptivity": "mean"})
    summary = {"status": status, "steps": steps, "iterations": iterations,
               "grad_evals": steps * (2 if method == "paso" else 1), "speedup": steps / iterations,
               "overhead": 2.0 if method == "paso" else 1.0, "final_test_accuracy": accuracy,
               "final_test_f1": accuracy - 0.01, "items_consumed": steps * 32, "wall_time_s": 99.0,
               "peak_rss_mb_max": rss, "bytes_sent_per_rank": [2**20] * world, "world_size": world,
               "train_time_s": iterations * dt}
    if method == "paso":
        summary["final_threshold"] = threshold
    return RunResult(path=Path(f"/nonexistent/{method}-{seed}-{threshold}-{ema_decay}"), summary=summary,
                     metrics=metrics, config=config)


# =========================================================================== presets
def test_presets_define_every_parameter() -> None:
    for name, preset in cifar.PRESETS.items():
        assert set(preset) == set(cifar.PARAMETERS), name


def test_paper_preset_is_the_seeds_configuration() -> None:
    paper = cifar.PRESETS["paper"]
    expected = {"dataset": "cifar10", "model": "cnn", "steps": 60_000, "batch_size": 128, "lr": 1e-3,
                "optimizer": "adam", "P": 7, "threshold": 1e-5, "ema_decay": 0.999, "nproc": 8}
    assert {k: paper[k] for k in expected} == expected


def test_default_and_smoke_run_offline_on_digits() -> None:
    for scale in ("smoke", "default"):
        assert cifar.PRESETS[scale]["dataset"] == "digits"
        assert cifar.PRESETS[scale]["download"] is False


def test_resolve_fills_none_from_preset_and_explicit_values_win() -> None:
    params = cifar.resolve_params({"P": 7, "steps": None}, scale="smoke")
    assert params["P"] == 7
    assert params["steps"] == cifar.PRESETS["smoke"]["steps"]
    assert params["scale"] == "smoke"
    assert params["seeds"] == cifar.PRESETS["smoke"]["seeds"]


def test_scale_from_environment_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASO_SCALE", "smoke")
    assert cifar.resolve_params({})["scale"] == "smoke"
    assert cifar.resolve_params({}, scale="default")["scale"] == "default"  # explicit beats env
    monkeypatch.delenv("PASO_SCALE")
    assert cifar.resolve_params({})["scale"] == "default"


def test_unknown_scale_or_parameter_is_an_error() -> None:
    with pytest.raises(ValueError, match="scale='huge'"):
        cifar.resolve_params({}, scale="huge")
    with pytest.raises(ConfigError, match="unknown parameter"):
        cifar.resolve_params({"PP": 3}, scale="smoke")


@pytest.mark.parametrize("given, expected", [(3, [3]), ("0,1,2", [0, 1, 2]), ([4, 5], [4, 5]), ("[1, 2]", [1, 2])])
def test_seeds_accept_papermill_forms(given: Any, expected: list[int]) -> None:
    assert cifar.resolve_params({"seeds": given}, scale="smoke")["seeds"] == expected


@pytest.mark.parametrize("bad", ["a", [0.5], [1, 1], []])
def test_bad_seeds_are_rejected(bad: Any) -> None:
    with pytest.raises(ConfigError, match="seed"):
        cifar.resolve_params({"seeds": bad}, scale="smoke")


def test_sweep_lists_accept_strings() -> None:
    params = cifar.resolve_params({"sweep_thresholds": "0,1e-3", "sweep_ema_decays": 1.0}, scale="smoke")
    assert params["sweep_thresholds"] == [0.0, 1e-3]
    assert params["sweep_ema_decays"] == [1.0]


# =========================================================================== bad input
@pytest.mark.parametrize("values, match", [
    ({"P": 0}, "P=0"),
    ({"P": "7"}, "P='7'"),
    ({"P": 2.5}, "P=2.5"),
    ({"model": "alexnet"}, "model='alexnet'"),
    ({"dataset": "imagenet"}, "dataset='imagenet'"),
    ({"batch_size": 33}, "not divisible"),
    ({"nproc": 0}, "nproc=0"),
    ({"optimizer": "lion"}, "optimizer='lion'"),
    ({"threshold": -1.0}, "threshold=-1.0"),
    ({"P": 32}, "larger than steps"),
    ({"threads_per_worker": 0}, "threads_per_worker=0"),
])
def test_bad_input_fails_in_the_validation_step(values: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cifar.prepare(values, scale="smoke")


def test_bad_input_is_reported_before_a_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("validation must come before any download")

    monkeypatch.setattr("paso_core.tasks.vision_data._download_cifar10", no_download)
    with pytest.raises(ConfigError, match="P=0"):
        cifar.prepare({"P": 0}, scale="paper")


# =========================================================================== planning
def test_plan_smoke_runs_every_method_and_the_sweep() -> None:
    plan = cifar.prepare({}, scale="smoke")
    configs = plan.configs
    assert all(isinstance(c, RunConfig) for c in configs)
    methods = [c.method for c in configs]
    assert methods[:4] == ["serial", "paso", "naive_dp", "ddp"]
    assert {c.nproc for c in configs if c.method in ("naive_dp", "ddp")} == {2}
    assert all(c.nproc == 2 and c.P == 4 for c in configs if c.method == "paso")  # 2 positions on each device
    sweep = [(c.threshold, c.ema_decay) for c in configs if c.method == "paso"]
    assert sweep == [(1e-5, 0.999), (1e-1, 0.999)]  # the main point is not run twice
    assert len({cifar.describe_config(c) for c in configs}) == len(configs)
    assert all(c.threads_per_worker == 1 for c in configs)


def test_plan_passes_each_method_only_its_own_options() -> None:
    """serial / naive DP / DDP get none of PASO's knobs (another method's option is an error
    of RunConfig.from_dict), PASO gets P, threshold, ema_decay and adaptivity."""
    params = cifar.resolve_params({"adaptivity": "median"}, scale="smoke")
    for method in cifar.METHODS:
        options = cifar.run_options(params, method, 0)
        if method == "paso":
            assert {k: options[k] for k in ("P", "threshold", "ema_decay", "adaptivity")} == {
                "P": 4, "threshold": 1e-5, "ema_decay": 0.999, "adaptivity": "median"}
        else:
            assert not {"P", "threshold", "ema_decay", "adaptivity"} & set(options), method
    flat = {c.method: c.to_dict() for c in cifar.plan_runs(params)}
    assert "threshold" not in flat["serial"] and "P" not in flat["ddp"] and flat["paso"]["adaptivity"] == "median"
    with pytest.raises(ConfigError, match="threshold"):
        cifar.run_options(params, "serial", 0, threshold=0.1)


@pytest.mark.parametrize("values, paso_workers, suffix", [
    ({"P": 7, "nproc": 8}, 7, ""),  # the paper's: one device per window position
    ({"P": 7, "nproc": 1}, 1, "_on1"),  # the seed's single-device mode
    ({"P": 7}, 1, "_on1"),  # 2 devices: 7 has no divisor between 1 and 7
    ({"P": 4}, 2, "_on2"),  # 2 devices, 2 positions each
    ({"P": 4, "paso_nproc": 4}, 4, ""),  # paso_nproc decides alone
])
def test_paso_uses_the_most_devices_dividing_P(values: dict[str, Any], paso_workers: int, suffix: str) -> None:
    plan = cifar.prepare(values, scale="default")
    assert {c.world_size for c in plan.configs if c.method == "paso"} == {paso_workers}
    assert {c.world_size for c in plan.configs if c.method == "ddp"} == {values.get("nproc", 2)}
    assert cifar.artifact_name(plan.params, "results").endswith(f"_P{values['P']}{suffix}_results")


def test_paso_nproc_not_dividing_P_is_named_before_launch() -> None:
    with pytest.raises(ConfigError, match="nproc\\*nnodes=3 does not divide P=4"):
        cifar.prepare({"P": 4, "paso_nproc": 3}, scale="default")


def test_sweep_is_a_cross_over_the_first_seeds() -> None:
    params = cifar.resolve_params({"seeds": [0, 1], "sweep_thresholds": [0.0, 1e-2], "sweep_ema_decays": [1.0],
                                   "sweep_n_seeds": 1}, scale="smoke")
    assert cifar.sweep_points(params) == [(1e-5, 0.999), (0.0, 0.999), (1e-2, 0.999), (1e-5, 1.0)]
    configs = cifar.plan_runs(params)
    assert len(configs) == 2 * 4 + 3
    assert {c.seed for c in configs if c.method == "paso" and c.threshold != 1e-5} == {0}
    params["sweep_n_seeds"] = 0
    assert len(cifar.plan_runs(params)) == 2 * 4


# =========================================================================== dataset
def test_digits_is_said_to_be_digits() -> None:
    choice = cifar.resolve_dataset({"dataset": "digits", "data_root": None, "download": False})
    assert (choice.dataset, choice.fallback) == ("digits", False)
    assert "NOT CIFAR-10" in choice.message


def test_missing_cifar_falls_back_to_digits_loudly(tmp_path: Path) -> None:
    plan = cifar.prepare({"dataset": "cifar10", "data_root": str(tmp_path)}, scale="smoke")
    assert plan.dataset.fallback and plan.dataset.dataset == "digits"
    assert "CIFAR-10 IS NOT USED" in plan.dataset.message and "DIGITS" in plan.dataset.message
    assert str(tmp_path) in plan.dataset.message
    assert {c.dataset for c in plan.configs} == {"digits"}
    assert plan.params["requested_dataset"] == "cifar10" and plan.params["dataset_fallback"] is True
    assert cifar.artifact_name(plan.params, "results").startswith("cifar_paso_smoke_digits_")


def test_incomplete_cifar_falls_back_and_names_the_missing_files(tmp_path: Path) -> None:
    write_cifar_layout(tmp_path, skip=("test_batch",))
    choice = cifar.resolve_dataset({"dataset": "cifar10", "data_root": str(tmp_path), "download": False,
                                    "scale": "default"})
    assert choice.fallback and "missing test_batch" in choice.message


@pytest.mark.parametrize("download", [False, True])
def test_paper_scale_without_cifar_is_an_error(download: bool, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """At paper scale hours of digits training would pass for the paper's run: stop with the fix."""
    def offline(root: Any) -> None:
        raise RuntimeError("downloading CIFAR-10 failed (URLError: no network)")

    def no_process(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("no run may start")

    monkeypatch.setattr("paso_core.tasks.vision_data._download_cifar10", offline)
    monkeypatch.setattr("subprocess.Popen", no_process)
    write_cifar_layout(tmp_path, skip=("data_batch_3",))
    with pytest.raises(ConfigError, match="scale='paper' runs on CIFAR-10, but .*missing data_batch_3") as err:
        cifar.prepare({"data_root": str(tmp_path), "download": download}, scale="paper")
    assert "-p data_root" in str(err.value) and "-p scale default" in str(err.value)
    assert ("downloading it failed" in str(err.value)) == download
    with pytest.raises(ConfigError, match="scale=None runs on CIFAR-10"):  # only named scales may fall back
        cifar.resolve_dataset({"dataset": "cifar10", "data_root": str(tmp_path), "download": False})


def test_fallback_only_at_smoke_and_default_scale() -> None:
    assert cifar.FALLBACK_SCALES == ("smoke", "default") and set(cifar.PRESETS) == {"smoke", "default", "paper"}


def test_failed_download_falls_back_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(root: Any) -> None:
        raise RuntimeError("downloading CIFAR-10 failed (URLError: no network)")

    monkeypatch.setattr("paso_core.tasks.vision_data._download_cifar10", offline)
    choice = cifar.resolve_dataset({"dataset": "cifar10", "data_root": str(tmp_path), "download": True,
                                    "scale": "smoke"})
    assert choice.fallback and choice.dataset == "digits"
    assert "downloading it failed" in choice.message and "no network" in choice.message


def test_cifar_in_torchvision_layout_is_used(tmp_path: Path) -> None:
    write_cifar_layout(tmp_path)
    plan = cifar.prepare({"dataset": "cifar10", "data_root": str(tmp_path)}, scale="smoke")
    assert not plan.dataset.fallback
    assert {c.dataset for c in plan.configs} == {"cifar10"}
    assert {c.data_root for c in plan.configs} == {str(tmp_path)}
    assert "cifar-10-batches-py" in plan.dataset.message


def test_default_data_root_honours_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASO_DATA", str(tmp_path))
    assert cifar.default_data_root() == tmp_path
    write_cifar_layout(tmp_path)
    choice = cifar.resolve_dataset({"dataset": "cifar10", "data_root": None, "download": False})
    assert choice.dataset == "cifar10" and choice.data_root == str(tmp_path)


# =========================================================================== tables
@pytest.fixture
def fake_results() -> list[RunResult]:
    runs = []
    for seed, (acc_s, acc_p) in enumerate([(0.9, 0.88), (0.8, 0.82)]):
        runs.append(fake_run("serial", seed, iterations=100, dt=0.1, accuracy=acc_s, rss=100))
        runs.append(fake_run("paso", seed, iterations=40, dt=0.5, accuracy=acc_p, rss=150, world=4))
        runs.append(fake_run("ddp", seed, iterations=100, dt=0.04, accuracy=acc_s, rss=120, world=2))
    runs.append(fake_run("paso", 0, iterations=20, dt=0.5, accuracy=0.7, threshold=0.1, world=4))
    runs.append(fake_run("paso", 0, iterations=25, dt=0.5, accuracy=float("nan"), threshold=1.0,
                         status="nonfinite", world=4))
    return runs


PARAMS = {"threshold": 1e-5, "ema_decay": 0.999, "seeds": [0, 1], "sweep_n_seeds": 1, "P": 4}


def test_training_time_excludes_setup_and_evaluations() -> None:
    run = fake_run("serial", 0, iterations=100, dt=0.1, accuracy=0.9, eval_at=(50, 100))
    assert common.training_time(run) == pytest.approx(10.0)  # 100 iterations of 0.1 s; setup, 2 evals out
    assert run.metrics["wall_time_s"].max() == pytest.approx(3.0 + 10.0 + 2 * 0.5)  # the worker clock has them


def test_grouping_separates_main_runs_from_the_sweep(fake_results: list[RunResult]) -> None:
    groups = cifar.main_results(fake_results, PARAMS)
    assert set(groups) == {"serial", "paso", "ddp"}
    assert [r.config["threshold"] for r in groups["paso"]] == [1e-5, 1e-5]
    sweep = cifar.sweep_results(fake_results, PARAMS)
    assert sorted(r.config["threshold"] for r in sweep) == [1e-5, 0.1, 1.0]


def test_results_table_columns_and_numbers(fake_results: list[RunResult]) -> None:
    table = cifar.results_table(cifar.main_results(fake_results, PARAMS)).set_index("method")
    for column in ("test_accuracy", "test_f1_macro", "sequential_iterations", "grad_evals", "images_consumed",
                   "train_time_s_mean", "speedup_iterations", "speedup_wall", "peak_rss_mb_per_worker"):
        assert column in table.columns
    serial, paso, ddp = table.loc["serial"], table.loc["PASO"], table.loc["DDP"]
    assert serial["test_accuracy_mean"] == pytest.approx(0.85)
    assert serial["test_accuracy_std"] == pytest.approx(np.std([0.9, 0.8], ddof=1))  # sample std over 2 seeds
    assert serial["test_accuracy"] == "0.8500 ± 0.0707"
    assert paso["speedup_iterations"] == pytest.approx(2.5)          # 100 / 40
    assert paso["speedup_wall"] == pytest.approx(10.0 / 20.0)        # serial 10 s, PASO 20 s of training
    assert ddp["speedup_wall"] == pytest.approx(10.0 / 4.0)
    assert paso["grad_evals"] == 200 and paso["images_consumed"] == 3200
    assert paso["peak_rss_mb_per_worker"] == 150 and paso["workers"] == 4
    assert paso["sent_mb_per_worker_max"] == pytest.approx(1.0)
    assert serial["speedup_iterations"] == 1.0 and serial["seeds"] == 2
    one_seed = cifar.results_table({"serial": [fake_run("serial", 0, iterations=10, dt=0.1, accuracy=0.9)]})
    assert np.isnan(one_seed.loc[0, "test_accuracy_std"]) and one_seed.loc[0, "test_accuracy"] == "0.9000"


def test_results_table_without_serial_leaves_speedups_empty(fake_results: list[RunResult]) -> None:
    table = cifar.results_table([r for r in fake_results if r.config["method"] == "ddp"])
    assert np.isnan(table.loc[0, "speedup_wall"]) and np.isnan(table.loc[0, "speedup_iterations"])


def test_tradeoff_table(fake_results: list[RunResult]) -> None:
    sweep = cifar.sweep_results(fake_results, PARAMS)
    serial = [r for r in fake_results if r.config["method"] == "serial" and r.config["seed"] == 0]
    trade = cifar.tradeoff_table(sweep, serial).set_index("threshold")
    assert list(trade.index) == [1e-5, 0.1, 1.0]
    assert trade.loc[0.1, "speedup_T_over_K_mean"] == pytest.approx(5.0)
    assert trade.loc[1e-5, "accuracy_change_vs_serial"] == pytest.approx(0.88 - 0.9)
    assert trade.loc[1.0, "failed"] == 1 and np.isnan(trade.loc[1.0, "test_accuracy_mean"])
    with pytest.raises(ValueError, match="PASO runs only"):
        cifar.tradeoff_table(serial)
    assert trade.loc[1e-5, "seeds"] == 1 and np.isnan(trade.loc[1e-5, "speedup_T_over_K_std"])  # n < 2: blank


def test_accuracy_curve_reads_eval_rows_and_ends_with_the_final_evaluation() -> None:
    run = fake_run("serial", 0, iterations=10, dt=0.1, accuracy=0.95, eval_at=(5, 10))
    curves = cifar.curves({"serial": [run]})
    acc = curves["accuracy_vs_iteration"]
    assert list(acc["iteration"]) == [5, 10]  # periodic evaluations; the final one replaces the last
    assert list(acc["mean"]) == pytest.approx([0.5, 0.95])  # 0.95: the summary's final accuracy
    wall = curves["accuracy_vs_wall"]
    assert list(wall["train_time_s"]) == pytest.approx([0.5, 1.0])  # training seconds, evaluations out
    loss = curves["loss_vs_iteration"]
    assert list(loss["iteration"]) == list(range(1, 11))  # training rows only


def test_curves_and_figures_from_fake_runs(fake_results: list[RunResult], monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.pyplot as plt

    for r in fake_results:  # one evaluation half way
        half = r.summary["iterations"] // 2
        r.metrics = fake_metrics(r.summary["iterations"], 0.1, steps=r.summary["steps"], eval_at=(half,))
        if r.config["method"] == "paso":
            r.metrics.loc[r.metrics["kind"] == "train", ["accepted", "threshold", "err_mean"]] = [2.5, 1e-5, 0.1]
    groups = cifar.main_results(fake_results, PARAMS)
    data = cifar.curves(groups)
    assert set(data) == set(cifar.CURVES)
    assert set(data["loss_vs_iteration"]["label"]) == {"serial", "paso", "ddp"}
    acc = data["accuracy_vs_iteration"]
    assert set(acc.loc[acc["label"] == "serial", "iteration"]) == {50, 100}  # periodic + final evaluation
    assert set(acc.loc[acc["label"] == "paso", "iteration"]) == {20, 40}
    final = acc[(acc["label"] == "serial") & (acc["iteration"] == 100)]
    assert float(final["mean"].iloc[0]) == pytest.approx(0.85)              # mean of the seeds' final accuracy
    dyn = cifar.paso_dynamics(groups["paso"])
    assert set(dyn["seed"]) == {0, 1} and "accepted" in dyn
    trade = cifar.tradeoff_table(cifar.sweep_results(fake_results, PARAMS))
    for fig in (cifar.plot_curves(data, "t"), cifar.plot_paso_dynamics(dyn, "t"),
                cifar.plot_tradeoff(trade, PARAMS, [0.9, 0.8], "t"),
                cifar.plot_sweep_run(groups["paso"][0], groups["serial"][0])):
        assert fig.axes
        plt.close(fig)
    monkeypatch.setenv("PASO_WIDGETS", "0")  # headless: no widget, the notebook draws a static figure
    assert cifar.sweep_explorer(cifar.sweep_results(fake_results, PARAMS), groups["serial"][0]) is None
    monkeypatch.setenv("PASO_WIDGETS", "1")  # a live frontend
    explorer = cifar.sweep_explorer(cifar.sweep_results(fake_results, PARAMS), groups["serial"][0])
    dropdown, image = explorer.children
    first = image.value
    assert first[:4] == b"\x89PNG"
    dropdown.value = 1  # choosing another sweep run redraws the image
    assert image.value != first
    assert cifar.sweep_explorer([], None) is None


def test_discussion_is_generated_from_the_numbers(fake_results: list[RunResult]) -> None:
    groups = cifar.main_results(fake_results, PARAMS)
    table = cifar.results_table(groups)
    trade = cifar.tradeoff_table(cifar.sweep_results(fake_results, PARAMS), groups["serial"][:1])
    params = {**cifar.resolve_params({}, scale="smoke"), **PARAMS}
    fallback = cifar.DatasetChoice("cifar10", "digits", None, True, "WARNING")
    text = cifar.discussion(table, trade, params, fallback, cpu_count=2)
    assert "2.50x in iterations" in text                  # 100 / 40
    assert "2.00x slower" in text                         # wall speed-up 0.5: 10 s vs 20 s of training
    assert "20.0 s vs 10.0 s of training" in text
    assert "share 2 core(s)" in text
    assert "fallback" in text and "60000 steps" in text   # names the dataset and what is not reproduced
    assert "1 sweep run(s) did not finish" in text


# =========================================================================== notebook source
def test_notebook_has_one_parameters_cell_with_every_parameter() -> None:
    import nbformat

    on_disk = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [c for c in on_disk.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    translators = pytest.importorskip("papermill.translators")
    names = {p.name for p in translators.PythonTranslator.inspect(tagged[0])}  # what papermill sees
    assert names == set(cifar.PARAMETERS) | {"scale"}


# =========================================================================== integration
@pytest.mark.slow  # nbmake executes this notebook in the default suite; this run also checks its files
def test_notebook_runs_at_smoke_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole notebook at smoke scale; every artifact lands under tmp_path, not in artifacts/."""
    import papermill

    monkeypatch.setenv("PASO_ARTIFACTS", str(tmp_path))
    monkeypatch.delenv("PASO_SCALE", raising=False)
    out = tmp_path / "cifar_paso.out.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(out), parameters={"scale": "smoke"}, cwd=str(NOTEBOOK.parent),
                               progress_bar=False, kernel_name="python3", execution_timeout=300)
    stem = "cifar_paso_smoke_digits_cnn_P4"
    for name in ("results", "tradeoff"):
        for ext in ("csv", "md", "json"):
            assert (tmp_path / "tables" / f"{stem}_{name}.{ext}").is_file()
    for name in ("curves", "paso_dynamics", "tradeoff"):
        for ext in ("png", "json"):
            assert (tmp_path / "figures" / f"{stem}_{name}.{ext}").is_file()
    table = pd.read_csv(tmp_path / "tables" / f"{stem}_results.csv")
    assert list(table["method"]) == ["serial", "PASO", "naive DP", "DDP"]
    assert table["test_accuracy_mean"].notna().all()
    # every data-parallel method took serial's iterations, PASO at most as many
    assert (table["sequential_iterations"] <= table.loc[0, "sequential_iterations"]).all()
    text = out.read_text()
    assert "What this does not reproduce" in text
