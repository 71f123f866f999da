"""The Table-2 study (``paso_core.experiments.wikitext``) and its notebook.

Unit tests cover what a reader has to trust without rerunning anything: which preset
fills which parameter, that explicit values win, that a missing WikiText-2 stops the
study with the loader's message, how Table 2's numbers (speed-ups, timing, reported rows)
are made, and how evaluations map to sequential iterations. They use fake run results,
so they take milliseconds. One test executes the real notebook at smoke scale.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from paso_core.config import ConfigError
from paso_core.experiments import common
from paso_core.experiments import wikitext as wt
from paso_core.runs import RunResult

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "wikitext_paso.ipynb"


# =========================================================================== parameters
def test_presets_cover_every_parameter() -> None:
    for name, preset in wt.PRESETS.items():
        assert set(preset) == set(wt.PARAMETERS), name


def test_paper_preset_is_the_seeds_setting() -> None:
    paper = wt.PRESETS["paper"]
    assert (paper["dataset"], paper["batch_size"], paper["lr"], paper["steps"], paper["P"], paper["nproc"]) == (
        "wikitext2", 112, 6e-5, 1000, 7, 8)
    assert paper["model"] == "gpt2"


def test_scale_none_uses_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PASO_SCALE", raising=False)
    assert wt.resolve_params({})["scale"] == "default"
    monkeypatch.setenv("PASO_SCALE", "smoke")
    params = wt.resolve_params({})
    assert params["scale"] == "smoke"
    assert params["steps"] == wt.PRESETS["smoke"]["steps"]
    assert wt.resolve_params({}, "default")["scale"] == "default"  # an explicit scale beats the env


def test_explicit_values_override_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PASO_SCALE", raising=False)
    params = wt.resolve_params({"steps": 7, "P": 3, "lr": 5e-4, "seeds": "0, 2"}, "smoke")
    assert (params["steps"], params["P"], params["lr"], params["seeds"]) == (7, 3, 5e-4, [0, 2])
    assert params["block_size"] == wt.PRESETS["smoke"]["block_size"]  # None -> preset


def test_model_dir_selects_local_model() -> None:
    params = wt.resolve_params({"model_dir": "/models/gpt2"}, "paper")
    assert params["model"] == "local" and params["model_dir"] == "/models/gpt2"
    assert wt.resolve_params({"model_dir": "/m", "model": "gpt2"}, "paper")["model"] == "gpt2"


@pytest.mark.parametrize("bad, match", [
    ({"seeds": []}, "seed"), ({"seeds": [0, 0]}, "repeats"), ({"seeds": "a"}, "seeds"),
    ({"model": "gpt5"}, "model"), ({"dataset": "imagenet"}, "dataset"), ({"download": "yes"}, "download"),
    ({"nonsense": 1}, "unknown parameter"),
])
def test_bad_parameters_are_named(bad: dict[str, Any], match: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=match):
        wt.resolve_params(bad, "smoke")


def test_bad_scale_is_named() -> None:
    with pytest.raises(ValueError, match="scale"):
        wt.resolve_params({}, "huge")


def test_run_options_give_each_method_its_workers() -> None:
    params = wt.resolve_params({}, "default")
    serial, paso, dp = (wt.run_options(params, m, 0) for m in ("serial", "paso", "ddp"))
    assert serial["nproc"] == 1
    assert paso["P"] == params["P"] and paso["ema_decay"] == params["ema_decay"]
    assert paso["nproc"] == 2 == params["nproc"]  # P = 4 on the 2 devices, 2 positions each
    assert dp["nproc"] == params["nproc"]
    for options in (serial, dp):  # another method's option would be an error of RunConfig.from_dict
        assert not {"P", "threshold", "ema_decay"} & set(options)
    flat = {c.method: c.to_dict() for c in wt.plan_runs(params)}
    assert "threshold" not in flat["serial"] and "P" not in flat["ddp"] and flat["paso"]["P"] == params["P"]
    assert {o["batch_size"] for o in (serial, paso, dp)} == {params["batch_size"]}


def test_plan_validates_every_run_before_training() -> None:
    params = wt.resolve_params({"batch_size": 9, "nproc": 2}, "smoke")  # 9 does not split over 2 workers
    with pytest.raises(ConfigError, match="divisible"):
        wt.plan_runs(params)
    assert len(wt.plan_runs(wt.resolve_params({"seeds": [0, 1]}, "smoke"))) == 8


def test_wikitext_without_data_fails_with_loader_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs data_root.*-p data_root.*-p scale default"):
        wt.prepare({"dataset": "wikitext2"}, "smoke")
    with pytest.raises(ConfigError, match="WikiText-2 not found; looked for .*wiki.train.tokens.*-p data_root"):
        wt.prepare({"dataset": "wikitext2", "data_root": str(tmp_path)}, "smoke")
    (tmp_path / "wiki.train.tokens").write_text(" = A = \n")
    with pytest.raises(ConfigError, match="incomplete: .*wiki.valid.tokens missing"):
        wt.prepare({"dataset": "wikitext2", "data_root": str(tmp_path)}, "smoke")


def test_paper_scale_without_wikitext_is_an_error(tmp_path: Path) -> None:
    """The paper preset needs WikiText-2; without it the error says which flags fix it."""
    with pytest.raises(ConfigError, match="needs data_root.*-p data_root.*-p scale default"):
        wt.prepare({}, "paper")
    with pytest.raises(ConfigError, match="does not hold WikiText-2.*-p scale default"):
        wt.prepare({"data_root": str(tmp_path)}, "paper")


def test_option_typos_are_named_before_the_missing_corpus() -> None:
    with pytest.raises(ConfigError, match="P=0"):
        wt.prepare({"dataset": "wikitext2", "P": 0}, "smoke")


def test_run_all_stops_on_missing_data_before_any_run(tmp_path: Path) -> None:
    calls: list[Any] = []
    params = wt.resolve_params({"dataset": "wikitext2", "data_root": str(tmp_path)}, "smoke")
    with pytest.raises(ConfigError, match="WikiText-2 not found"):
        wt.run_all(params, runner=calls.append, log=lambda _: None)
    assert calls == []


# =========================================================================== fake runs
def _train_row(k: int, done: int, wall: float, train_s: float, it_s: float, **extra: Any) -> dict[str, Any]:
    return {"kind": "train", "wall_time_s": wall, "iteration": k, "steps_done": done, "grad_evals": done,
            "items": done * 100, "train_time_s": train_s, "train_loss": 5.0, "lr": 1e-3, "time_iteration_s": it_s,
            "time_compute_s": 0.8 * it_s, "time_comm_s": 0.1 * it_s, "bytes_measured": 0, "bytes_modelled": 0,
            "bytes_iter_max": 0, **extra}


def _eval_row(k: int, done: int, wall: float, train_s: float, eval_s: float, val: float, test: float) -> dict[str, Any]:
    return {"kind": "eval", "wall_time_s": wall, "iteration": k, "steps_done": done, "grad_evals": done,
            "items": done * 100, "train_time_s": train_s, "time_eval_s": eval_s, "eval_val_ppl": val,
            "eval_test_ppl": test}


def serial_like(seed: int, steps: int, step_s: float, ppl: float, method: str = "serial",
                eval_every: int = 5, eval_s: float = 1.0, setup_s: float = 3.0) -> RunResult:
    """Schema metrics of a one-step-per-iteration run (serial, data parallel): training rows,
    an evaluation row every ``eval_every`` steps; training time is ``steps * step_s``."""
    rows, wall, train = [], setup_s, 0.0
    for step in range(steps):
        wall += step_s
        train += step_s
        rows.append(_train_row(step + 1, step + 1, wall, train, step_s))
        if (step + 1) % eval_every == 0:
            wall += eval_s
            rows.append(_eval_row(step + 1, step + 1, wall, train, eval_s, ppl * (steps / (step + 1)),
                                  ppl * 1.1 * (steps / (step + 1))))
    summary = {"steps": steps, "iterations": steps, "grad_evals": steps, "items_consumed": steps * 100,
               "final_val_ppl": ppl, "final_test_ppl": ppl * 1.1, "final_val_tokens": 640.0,
               "wall_time_s": wall + 2.0, "world_size": 1 if method == "serial" else 2, "device": "cpu",
               "train_time_s": train, "task_info": {"dataset": "pydoc", "model": "gpt2-tiny", "parameters": 1e6}}
    config = {"method": method, "seed": seed, "model": "gpt2-tiny", "dataset": "pydoc", "batch_size": 16,
              "block_size": 64, "lr": 1e-3, "nproc": summary["world_size"]}
    return RunResult(path=Path(f"/fake/{method}-{seed}"), summary=summary, metrics=pd.DataFrame(rows), config=config)


def paso_like(seed: int, steps: int, accepted: int, it_s: float, ppl: float, eval_every: int = 5,
              eval_s: float = 1.0, setup_s: float = 3.0) -> RunResult:
    """Schema metrics of a PASO run: one training row per iteration (with PASO's columns),
    an evaluation row of the window start whenever the accepted steps cross ``eval_every``."""
    rows, wall, train, done, k = [], setup_s, 0.0, 0, 0
    while done < steps:
        before = done
        done = min(steps, done + accepted)
        k += 1
        wall += it_s
        train += it_s
        rows.append(_train_row(k, done, wall, train, it_s, window_start=before, accepted=done - before))
        if done // eval_every > before // eval_every:
            wall += eval_s
            rows.append(_eval_row(k, done, wall, train, eval_s, ppl * steps / done, ppl * 1.1 * steps / done))
    summary = {"steps": steps, "iterations": k, "grad_evals": k * 4, "items_consumed": k * 400,
               "final_val_ppl": ppl, "final_test_ppl": ppl * 1.1, "wall_time_s": wall + 2.0, "world_size": 4,
               "train_time_s": train, "device": "cpu",
               "task_info": {"dataset": "pydoc", "model": "gpt2-tiny", "parameters": 1e6}}
    config = {"method": "paso", "seed": seed, "model": "gpt2-tiny", "dataset": "pydoc", "batch_size": 16,
              "block_size": 64, "lr": 1e-3, "nproc": 4, "P": 4, "threshold": 1e-5, "ema_decay": 0.999}
    return RunResult(path=Path(f"/fake/paso-{seed}"), summary=summary, metrics=pd.DataFrame(rows), config=config)


@pytest.fixture
def fake_results() -> dict[str, list[RunResult]]:
    return {
        "serial": [serial_like(0, 20, 1.0, 100.0), serial_like(1, 20, 1.0, 110.0)],
        "paso": [paso_like(0, 20, 2, 1.0, 104.0), paso_like(1, 20, 2, 1.0, 112.0)],
        "naive_dp": [serial_like(0, 20, 0.8, 100.0, "naive_dp"), serial_like(1, 20, 0.8, 110.0, "naive_dp")],
        "ddp": [serial_like(0, 20, 0.5, 100.0, "ddp"), serial_like(1, 20, 0.5, 110.0, "ddp")],
    }


# =========================================================================== timing
def test_training_time_excludes_setup_and_evaluations() -> None:
    run = serial_like(0, 20, 1.0, 100.0, eval_s=5.0, setup_s=30.0)
    # 20 steps of 1 s; 30 s of setup and 4 evaluations of 5 s are on the worker clock only
    assert common.training_time(run) == pytest.approx(20.0)
    assert run.metrics["wall_time_s"].max() == pytest.approx(30 + 20 + 4 * 5)
    paso = paso_like(0, 20, 2, 1.0, 100.0, eval_s=5.0, setup_s=30.0)
    assert common.training_time(paso) == pytest.approx(10 * 1.0)  # 10 iterations of 1 s


# =========================================================================== table 2
def test_table2_layout_and_numbers(fake_results: dict[str, list[RunResult]]) -> None:
    table = wt.table2(fake_results, cpu_count=2)
    assert list(table.columns) == list(wt.TABLE2_COLUMNS)
    assert list(table["source"]) == [wt.MEASURED, wt.REPORTED] * 4
    labels = [wt.METHOD_LABELS[m] for m in wt.METHODS]
    assert list(table["method"]) == [label for label in labels for _ in range(2)]
    ours = table[table["source"] == wt.MEASURED].set_index("method")
    serial, paso = ours.loc[wt.METHOD_LABELS["serial"]], ours.loc[wt.METHOD_LABELS["paso"]]
    assert serial["PPL"] == pytest.approx(1.1 * 105)
    assert serial["speed-up (iterations)"] == 1 and serial["speed-up (wall time)"] == pytest.approx(1)
    assert paso["iterations"] == 10 and paso["speed-up (iterations)"] == pytest.approx(2.0)
    assert paso["speed-up (wall time)"] == pytest.approx(20.0 / 10.0)
    assert paso["total tokens"] == 4000 and paso["grad evals"] == 40
    ddp = ours.loc[wt.METHOD_LABELS["ddp"]]
    assert ddp["speed-up (iterations)"] == 1 and ddp["speed-up (wall time)"] == pytest.approx(20.0 / (20 * 0.5))
    assert serial["wall time (s)"] == pytest.approx(20.0) and serial["wall time std (s)"] == pytest.approx(0.0)
    assert serial["PPL std"] == pytest.approx(np.std([110.0, 121.0], ddof=1))  # sample std over the 2 seeds
    assert "2 CPU cores" in serial["setting"]


def test_reported_rows_hold_only_the_papers_numbers(fake_results: dict[str, list[RunResult]]) -> None:
    table = wt.table2(fake_results)
    rep = table[table["source"] == wt.REPORTED].set_index("method")
    serial, paso = rep.loc[wt.METHOD_LABELS["serial"]], rep.loc[wt.METHOD_LABELS["paso"]]
    assert (serial["PPL"], serial["iterations"], serial["wall time (s)"]) == (20.4, 1000, 614)
    assert (paso["PPL"], paso["iterations"], paso["wall time (s)"]) == (20.5, 160, 146)
    assert paso["speed-up (iterations)"] == pytest.approx(1000 / 160)
    assert paso["speed-up (wall time)"] == pytest.approx(614 / 146)
    naive, ddp = rep.loc[wt.METHOD_LABELS["naive_dp"]], rep.loc[wt.METHOD_LABELS["ddp"]]
    assert naive["wall time (s)"] == 340 and ddp["wall time (s)"] == 118
    assert ddp["speed-up (wall time)"] == pytest.approx(614 / 118)
    for row in (naive, ddp):  # unknown cells stay empty
        assert math.isnan(row["PPL"]) and math.isnan(row["iterations"]) and math.isnan(row["speed-up (iterations)"])
    assert rep["total tokens"].isna().all()


def test_table2_single_seed_has_no_fake_spread() -> None:
    table = wt.table2({"serial": [serial_like(0, 10, 1.0, 50.0)]}, include_reported=False)
    assert len(table) == 1 and math.isnan(table.loc[0, "PPL std"]) and math.isnan(table.loc[0, "wall time std (s)"])
    shown = wt.format_table2(table)
    assert "±" not in shown.loc[0, "PPL"]


def test_format_table2_leaves_unknown_cells_empty(fake_results: dict[str, list[RunResult]]) -> None:
    shown = wt.format_table2(wt.table2(fake_results))
    naive_reported = shown[(shown["method"] == wt.METHOD_LABELS["naive_dp"]) & (shown["source"] == wt.REPORTED)].iloc[0]
    assert naive_reported["PPL"] == "" and naive_reported["iterations"] == ""
    assert naive_reported["time (s)"] == "340.0"


# =========================================================================== curves + text
def test_eval_curves_use_sequential_iterations(fake_results: dict[str, list[RunResult]]) -> None:
    curves = wt.eval_curves(fake_results)
    assert list(curves.columns) == ["method", "seed", "iteration", "steps_done", "train_time_s", "val_ppl", "test_ppl"]
    serial = curves[(curves["method"] == "serial") & (curves["seed"] == 0)]
    assert list(serial["iteration"]) == [5, 10, 15, 20] and list(serial["steps_done"]) == [5, 10, 15, 20]
    paso = curves[(curves["method"] == "paso") & (curves["seed"] == 0)]
    assert list(paso["steps_done"]) == [6, 10, 16, 20] and list(paso["iteration"]) == [3, 5, 8, 10]
    assert list(paso["train_time_s"]) == pytest.approx([3.0, 5.0, 8.0, 10.0])  # training seconds, evals out
    assert serial["val_ppl"].iloc[-1] == pytest.approx(100.0)


def test_eval_curves_append_final_point() -> None:
    run = serial_like(0, 12, 1.0, 80.0, eval_every=5)  # evaluations at 5 and 10, not at 12
    curves = wt.eval_curves({"serial": [run]})
    assert list(curves["iteration"]) == [5, 10, 12] and curves["val_ppl"].iloc[-1] == 80.0


def test_plots_build(fake_results: dict[str, list[RunResult]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = wt.plot_curves(wt.eval_curves(fake_results), title="t")
    assert len(fig.axes) == 2 and fig.axes[1].get_xlabel() == wt.X_AXES["train_time_s"]
    plt.close(fig)
    with pytest.raises(ValueError, match="x="):
        wt.plot_curve(wt.eval_curves(fake_results), "epoch")


def test_paper_comparison_is_generated_from_table(fake_results: dict[str, list[RunResult]]) -> None:
    params = wt.resolve_params({"P": 4}, "default")
    text = wt.paper_comparison(wt.table2(fake_results, cpu_count=2), params, cpu_count=2)
    assert "T/K = 2.00x" in text and "6.25x" in text and "not comparable" in text
    assert "2 shared CPU core" in text and "Caution" not in text
    assert "Caution" in wt.paper_comparison(wt.table2(fake_results), params, cpu_count=2, busy=1.5)
    assert "Caution" not in wt.paper_comparison(wt.table2(fake_results), params, cpu_count=2, busy=0.1)


def test_other_runnable_is_a_count_or_nan() -> None:
    value = common.other_runnable(samples=2, interval_s=0.0)
    assert math.isnan(value) or value >= 0


def test_run_all_runs_every_method_and_seed_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a fake runner: validation first, then one run per (seed, method), grouped by method."""
    monkeypatch.setattr(common, "other_runnable", lambda: 0.25)
    params = wt.resolve_params({"seeds": [0, 1]}, "smoke")
    seen: list[tuple[str, int, int]] = []

    def runner(cfg: Any) -> RunResult:
        seen.append((cfg.method, cfg.seed, cfg.world_size))
        return serial_like(cfg.seed, 4, 1.0, 10.0, method=cfg.method)

    results = wt.run_all(params, runner=runner, log=lambda _: None)
    assert seen == [(m, s, {"serial": 1, "paso": params["P"]}.get(m, params["nproc"]))
                    for s in (0, 1) for m in wt.METHODS]
    assert {m: len(v) for m, v in results.items()} == {m: 2 for m in wt.METHODS}
    assert all("other_runnable_before" in r.summary for v in results.values() for r in v)
    assert wt.peak_busy(results) == 0.25


def test_describe_data_flags_the_stand_in_and_mixed_runs(fake_results: dict[str, list[RunResult]]) -> None:
    text, info = wt.describe_data(fake_results)
    assert "not WikiText-2" in text and info["dataset"] == "pydoc"
    other = serial_like(2, 5, 1.0, 1.0)
    other.summary["task_info"] = {**other.summary["task_info"], "dataset": "wikitext2"}
    with pytest.raises(ValueError, match="different"):
        wt.describe_data({"serial": [other], "paso": fake_results["paso"]})


# =========================================================================== the notebook
def test_notebook_has_one_parameters_cell() -> None:
    """The parameters cell papermill anchors on (the pair's sync: test_notebook_parameters)."""
    import nbformat

    on_disk = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [c for c in on_disk.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "scale = None" in tagged[0].source


@pytest.mark.slow  # nbmake executes this notebook in the default suite; this run also checks its files
def test_notebook_runs_at_smoke_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """papermill at smoke scale, artifacts into ``tmp_path``: the Table-2 file exists with its columns."""
    papermill = pytest.importorskip("papermill")
    artifacts = tmp_path / "artifacts"
    cache = os.environ.get("PASO_CACHE") or str(tmp_path / "cache")
    monkeypatch.setenv("PASO_ARTIFACTS", str(artifacts))
    monkeypatch.setenv("PASO_CACHE", cache)
    monkeypatch.setenv("PASO_SCALE", "smoke")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    out = tmp_path / "wikitext_paso_smoke.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(out), parameters={"scale": "smoke"}, cwd=str(REPO),
                               kernel_name="python3", progress_bar=False)
    params = wt.resolve_params({}, "smoke")
    table_csv = artifacts / "tables" / f"{wt.artifact_name(params, 'table2')}.csv"
    assert table_csv.is_file(), sorted(p.name for p in (artifacts / "tables").glob("*"))
    table = pd.read_csv(table_csv)
    assert list(table.columns) == list(wt.TABLE2_COLUMNS)
    assert set(table["source"]) == {wt.MEASURED, wt.REPORTED}
    assert set(table["method"]) == {wt.METHOD_LABELS[m] for m in wt.METHODS}
    measured = table[table["source"] == wt.MEASURED]
    assert np.isfinite(measured["PPL"]).all() and (measured["iterations"] <= params["steps"]).all()
    config = json.loads(table_csv.with_suffix(".json").read_text())
    assert config["config"]["params"]["scale"] == "smoke"
    assert (artifacts / "figures" / f"{wt.artifact_name(params, 'val_ppl_curves')}.png").is_file()
    assert (artifacts / "runs").is_dir()  # the runs went to the temporary artifacts too


def test_notebook_refuses_missing_wikitext(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking for WikiText-2 without its files stops in the preparation cell with the loader's
    message, before any run starts, and nothing is silently trained on the offline corpus."""
    papermill = pytest.importorskip("papermill")
    artifacts = tmp_path / "artifacts"
    monkeypatch.setenv("PASO_ARTIFACTS", str(artifacts))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = tmp_path / "no_wikitext_here"
    empty.mkdir()
    with pytest.raises(papermill.PapermillExecutionError, match="WikiText-2 not found"):
        papermill.execute_notebook(str(NOTEBOOK), str(tmp_path / "out.ipynb"), cwd=str(REPO), kernel_name="python3",
                                   parameters={"scale": "smoke", "dataset": "wikitext2", "data_root": str(empty)},
                                   progress_bar=False)
    assert not (artifacts / "runs").exists()
