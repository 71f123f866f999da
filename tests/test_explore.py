"""paso_core.explore: what the explorer notebook shows, without a browser, kernel or process.

Fake run directories in ``tmp_path`` stand in for recorded runs; the widget tests build the real
ipywidgets objects (no frontend needed) and drive them by setting values, as a browser would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paso_core import explore
from paso_core.explore import ANY, Selection


def write_run(path: Path, config: dict, *, losses: list[float] | None = None, summary: dict | None = None,
              jsonl: bool = False) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    losses = losses if losses is not None else [2.0, 1.0, 0.5]
    rows = [{"kind": "train", "steps_done": i + 1, "iteration": i + 1, "train_loss": v} for i, v in enumerate(losses)]
    if jsonl:
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        lines = ["kind,steps_done,iteration,train_loss,eval_test_accuracy"]
        lines += [f"{r['kind']},{r['steps_done']},{r['iteration']},{r['train_loss']}," for r in rows]
        lines.append(f"eval,{len(rows)},{len(rows)},,0.9")
        (path / "metrics.csv").write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    """PASO runs over P x threshold (one nested, as the placement benchmark writes them), a
    local SGD sweep over H_base, a serial run, a vision run and a folder that is no run."""
    root = tmp_path / "runs"
    for P in (2, 4):
        for threshold in (0.1, 1.0):
            write_run(root / f"paso-P{P}-t{threshold}", {"method": "paso", "task": "synthetic", "P": P,
                                                         "threshold": threshold, "ema_decay": 0.999, "seed": 0},
                      losses=[3.0 / P, 2.0 / P + threshold, 1.0 / P], summary={"status": "completed"})
    write_run(root / "placement" / "synthetic" / "P8_on1", {"method": "paso", "task": "synthetic", "P": 8,
                                                           "threshold": 0.1, "ema_decay": 0.99, "seed": 0},
              jsonl=True)
    for H in (2, 8):
        write_run(root / f"local-H{H}", {"method": "local_sgd", "task": "synthetic", "H_base": H, "seed": 1})
    write_run(root / "serial", {"method": "serial", "task": "synthetic", "seed": 0},
              summary={"status": "completed", "final_train_loss": 0.4})
    write_run(root / "vision-paso", {"method": "paso", "task": "vision", "P": 4, "threshold": 0.1, "seed": 0})
    (root / "not-a-run").mkdir()
    (root / "not-a-run" / "notes.txt").write_text("x")
    return root


def names(runs) -> list[str]:
    return [r.name for r in runs]


# ----------------------------------------------------------------------------- discovery
def test_runs_are_found_at_any_depth_with_their_config_and_summary(runs_root: Path) -> None:
    runs = explore.discover_runs(runs_root)
    assert len(runs) == 9 and "placement/synthetic/P8_on1" in names(runs) and "not-a-run" not in names(runs)
    serial = next(r for r in runs if r.name == "serial")
    assert serial.method == "serial" and serial.summary["final_train_loss"] == 0.4
    nested = next(r for r in runs if r.name.endswith("P8_on1"))
    assert nested.columns() == ["kind", "steps_done", "iteration", "train_loss"]  # from metrics.jsonl
    assert explore.discover_runs(runs_root / "missing") == [] and explore.discover_runs(None) == []


def test_sweeps_are_the_options_recorded_with_two_values_or_more(runs_root: Path) -> None:
    runs = explore.discover_runs(runs_root)
    found = explore.sweeps(runs)
    assert found == {"P": [2, 4, 8], "threshold": [0.1, 1.0], "ema_decay": [0.99, 0.999], "H_base": [2, 8],
                     "seed": [0, 1]}
    assert list(found) == [k for k in explore.SWEEP_KEYS if k in found]  # slider order
    assert explore.sweeps(explore.filter_runs(runs, methods=["serial"])) == {}  # one value is no sweep


def test_filtering_by_task_method_and_sweep_values(runs_root: Path) -> None:
    runs = explore.discover_runs(runs_root)
    assert names(explore.filter_runs(runs, task="synthetic", sweep={"P": 4})) == ["paso-P4-t0.1", "paso-P4-t1.0"]
    assert names(explore.filter_runs(runs, task="synthetic", sweep={"P": 4.0, "threshold": 1})) == ["paso-P4-t1.0"]
    assert len(explore.filter_runs(runs, task="synthetic", sweep={"P": ANY, "threshold": None})) == 8
    assert names(explore.filter_runs(runs, methods=["local_sgd"], sweep={"H_base": 8})) == ["local-H8"]
    assert explore.filter_runs(runs, sweep={"H_base": 2, "P": 2}) == []  # no run holds both
    assert explore.filter_runs(runs, methods=[]) == []
    assert names(explore.filter_runs(runs, task="vision")) == ["vision-paso"]


def test_default_selection_and_metrics(runs_root: Path) -> None:
    runs = explore.discover_runs(runs_root)
    sel = explore.default_selection(runs)
    assert sel.task == "synthetic" and sel.methods == ["local_sgd", "paso", "serial"] and sel.metric == "train_loss"
    assert explore.metric_names(runs)[:2] == ["train_loss", "eval_test_accuracy"]
    assert "steps_done" not in explore.metric_names(runs) and "kind" not in explore.metric_names(runs)
    assert explore.default_selection(runs, "eval_test_accuracy").metric == "eval_test_accuracy"
    assert explore.default_selection(runs, "no_such_metric").metric == "train_loss"
    empty = explore.default_selection([])
    assert empty.task is None and empty.apply([]) == []


def test_runs_table_has_the_swept_options_and_the_summary(runs_root: Path) -> None:
    runs = explore.discover_runs(runs_root)
    table = explore.runs_table(runs)
    assert {"run", "task", "method", "P", "threshold", "H_base", "status", "final_train_loss"} <= set(table.columns)
    assert table.set_index("run").loc["paso-P4-t1.0", "threshold"] == 1.0
    assert explore.runs_table([]).empty


def test_labels_name_what_differs_and_stay_distinct(runs_root: Path) -> None:
    runs = explore.filter_runs(explore.discover_runs(runs_root), task="synthetic", methods=["paso"])
    labels = explore.labels(runs)
    assert "paso P=4 threshold=1" in " | ".join(labels) and len(set(labels)) == len(labels)
    twins = [explore.Run(path=r.path, name=r.name, config={"method": "paso"}, summary={}) for r in runs[:2]]
    assert explore.labels(twins) == ["paso (paso-P2-t0.1)", "paso (paso-P2-t1.0)"]


# ----------------------------------------------------------------------------- figures
def test_the_figure_follows_the_selection(runs_root: Path) -> None:
    runs = explore.discover_runs(runs_root)
    every = explore.selection_png(runs, Selection(task="synthetic", methods=["paso"]))
    p2 = explore.selection_png(runs, Selection(task="synthetic", methods=["paso"], sweep={"P": 2}))
    p4 = explore.selection_png(runs, Selection(task="synthetic", methods=["paso"], sweep={"P": 4}))
    assert every.startswith(b"\x89PNG") and len({every, p2, p4}) == 3
    assert p2 == explore.selection_png(runs, Selection(task="synthetic", methods=["paso"], sweep={"P": 2}))
    fig = explore.make_figure(explore.filter_runs(runs, sweep={"P": 2}), "train_loss")
    lines = fig.axes[0].lines
    assert len(lines) == 2 and list(lines[0].get_ydata()) == [1.5, 1.1, 0.5]  # P=2, threshold 0.1
    eval_fig = explore.make_figure(explore.filter_runs(runs, sweep={"P": 2}), "eval_test_accuracy")
    assert [list(line.get_ydata()) for line in eval_fig.axes[0].lines] == [[0.9], [0.9]]


def test_an_empty_selection_draws_a_figure_that_says_so(runs_root: Path) -> None:
    fig = explore.make_figure([], "train_loss")
    assert not fig.axes[0].lines and "no recorded run" in fig.axes[0].texts[0].get_text()
    runs = explore.discover_runs(runs_root)
    fig = explore.make_figure(runs[:2], "no_such_metric")
    assert "no 'no_such_metric' values" in fig.axes[0].texts[0].get_text()
    assert explore.selection_png([], explore.default_selection([])).startswith(b"\x89PNG")


# ----------------------------------------------------------------------------- the new run
def test_launch_reports_progress_from_the_streamed_metrics(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    def fake_run(out_dir: str, steps: int, **options) -> str:  # writes rows as workers stream them
        path = Path(out_dir)
        path.mkdir(parents=True)
        with (path / "metrics.jsonl").open("w") as handle:
            for step in range(1, steps + 1):
                handle.write(json.dumps({"kind": "train", "steps_done": step}) + "\n")
                handle.flush()
                import time

                time.sleep(0.02)
        return "result"

    result = explore.launch_with_progress(tmp_path / "run", lambda d, n: seen.append((d, n)), runner=fake_run,
                                          poll_s=0.01, steps=10, method="paso")
    assert result == "result" and seen[-1] == (10, 10) and seen[0][0] < 10
    assert any(0 < d < 10 for d, _ in seen)  # the bar moved before the end
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_failing_run_raises_in_the_caller(tmp_path: Path) -> None:
    def broken(**options):
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError, match="worker died"):
        explore.launch_with_progress(tmp_path / "run", lambda d, n: None, runner=broken, poll_s=0.01, steps=5)


def test_new_run_options_follow_the_scale() -> None:
    assert explore.new_run_options("smoke")["steps"] == explore.NEW_RUN_STEPS["smoke"]
    assert explore.new_run_options(None, steps=7, P=3) == {**explore.NEW_RUN, "steps": 7, "P": 3}


# ----------------------------------------------------------------------------- widgets, without a frontend
@pytest.fixture
def widgets():
    return pytest.importorskip("ipywidgets")


def test_moving_a_slider_filters_the_runs_and_redraws(runs_root: Path, widgets) -> None:
    ex = explore.Explorer(explore.discover_runs(runs_root), widgets)
    assert ex.task.value == "synthetic" and list(ex.sliders) == ["P", "threshold", "ema_decay", "H_base", "seed"]
    assert len(ex.run_list.value) == 8
    before = ex.image.value
    ex.sliders["P"].value = 4
    assert ex.run_list.value == ("paso-P4-t0.1", "paso-P4-t1.0") and ex.image.value != before
    after_p = ex.image.value
    ex.run_list.value = ("paso-P4-t1.0",)  # picking runs by hand redraws too
    assert ex.image.value != after_p and "<b>1</b> of 9" in ex.status.value
    ex.metric.value = "eval_test_accuracy"
    assert ex.selection.metric == "eval_test_accuracy"
    ex.task.value = "vision"  # one run: no sweep, no slider, the filters of synthetic do not apply
    assert ex.sliders == {} and ex.run_list.options == ("vision-paso",)


def test_the_button_runs_and_the_new_run_joins(runs_root: Path, tmp_path: Path, widgets) -> None:
    def fake_run(out_dir: str, steps: int, **options) -> None:
        path = Path(out_dir)
        write_run(path, {"method": "paso", "task": "synthetic", "P": 3, "threshold": 0.5, "seed": 0},
                  summary={"status": "completed"})
        (path / "metrics.jsonl").write_text(json.dumps({"steps_done": steps}) + "\n")

    ex = explore.Explorer(explore.discover_runs(runs_root), widgets, new_run_dir=tmp_path / "new",
                          new_run={"steps": 4}, runner=fake_run)
    ex.sliders["P"].value = 4
    run = ex.launch()
    assert run is not None and run.path.parent == tmp_path / "new" and ex.progress.value == 4
    assert ex.progress.bar_style == "success" and not ex.button.disabled
    assert 3 in ex.sliders["P"].options and ex.sliders["P"].value == 4  # new value offered, choice kept
    ex.sliders["P"].value = 3
    assert ex.run_list.value == (run.name,)


def test_a_failed_launch_is_shown_and_the_explorer_stays_usable(runs_root: Path, tmp_path: Path, widgets) -> None:
    def broken(**options):
        raise RuntimeError("no workers")

    ex = explore.Explorer(explore.discover_runs(runs_root), widgets, new_run_dir=tmp_path, runner=broken)
    assert ex.launch() is None and ex.progress.bar_style == "danger" and "no workers" in ex.run_status.value
    assert not ex.button.disabled


def test_no_recorded_runs_still_builds(widgets) -> None:
    ex = explore.Explorer([], widgets)
    assert bytes(ex.image.value).startswith(b"\x89PNG") and "none recorded yet" in ex.status.value


def test_widgets_only_with_a_live_frontend(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PASO_WIDGETS", "JPY_SESSION_NAME", "VOILA_KERNEL_ID", "VOILA_APP_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert explore.widgets_module() is None  # papermill / nbmake
    monkeypatch.setenv("VOILA_APP_PORT", "8866")
    pytest.importorskip("ipywidgets")
    assert explore.widgets_module() is not None  # Voilà's kernel
    monkeypatch.setenv("PASO_WIDGETS", "0")
    assert explore.widgets_module() is None
