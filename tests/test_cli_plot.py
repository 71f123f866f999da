"""``python -m paso_core plot``: overlaying one column of real run directories.

Why real runs: the command must read what the workers actually write (train and eval rows
mixed in one metrics.csv, method options in config.json), not a hand-made table.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import paso_core
from paso_core.__main__ import main
from paso_core.plot_runs import axis_label, draw, legend_labels, load_runs, series

SMALL = dict(task="synthetic", function="ackley", dim=32, steps=5, progress=False, threads_per_worker=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A serial run with evaluation rows between its training rows, and a PASO run."""
    root = tmp_path_factory.mktemp("plot_runs")
    serial = paso_core.run(method="serial", eval_every=2, out_dir=str(root / "serial-run"), **SMALL)
    paso = paso_core.run(method="paso", P=2, nproc=1, out_dir=str(root / "paso-run"), **SMALL)
    return {"serial": serial.path, "paso": paso.path}


def test_plot_writes_png_with_legend_labels_and_title(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "figs" / "loss.png"
    code = main(["plot", str(runs["serial"]), str(runs["paso"]), "--column", "train_loss", "--x", "iteration",
                 "--out", str(out), "--logy"])
    assert code == 0, capsys.readouterr().err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert str(out) in capsys.readouterr().out

    fig, notes = draw(load_runs([runs["serial"], runs["paso"]]), "train_loss", x="iteration", logy=True)
    ax = fig.axes[0]
    assert notes == []
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["serial-run: serial", "paso-run: paso P=2"]
    assert ax.get_title().startswith("train_loss")
    assert ax.get_xlabel() == "sequential iterations" and ax.get_yscale() == "log"


def test_rows_without_the_column_are_skipped(runs: dict[str, Path]) -> None:
    """metrics.csv mixes train and eval rows; each line holds only the rows with a value."""
    metrics = load_runs([runs["serial"]])[0].metrics
    assert set(metrics["kind"]) == {"train", "eval"}  # the property needs both kinds
    train, evals = metrics[metrics["kind"] == "train"], metrics[metrics["kind"] == "eval"]
    xs, ys = series(metrics, "train_loss", "step")
    assert xs == train["steps_done"].astype(float).tolist() and ys == train["train_loss"].tolist()
    xs, ys = series(metrics, "eval_value", "step")
    assert xs == evals["steps_done"].astype(float).tolist() and ys == evals["eval_value"].tolist()

    fig, _ = draw(load_runs([runs["serial"]]), "eval_value")
    (line,) = fig.axes[0].lines
    assert not any(math.isnan(v) for v in line.get_ydata()) and len(line.get_ydata()) == len(evals)


def test_run_without_the_column_is_left_out_with_a_note(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    code = main(["plot", str(runs["serial"]), str(runs["paso"]), "--column", "accepted",
                 "--out", str(tmp_path / "accepted.png")])
    err = capsys.readouterr().err
    assert code == 0 and (tmp_path / "accepted.png").exists()
    assert f"{runs['serial']}: no 'accepted' values" in err


def test_unknown_column_lists_the_columns_the_runs_have(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    code = main(["plot", str(runs["serial"]), str(runs["paso"]), "--column", "train_los",
                 "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "x.png").exists()
    assert "no run has column 'train_los'; the runs have:" in err
    for column in ("train_loss", "eval_value", "accepted", "steps_done"):  # serial, eval and PASO columns
        assert column in err


def test_missing_run_directory_is_named(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no-such-run"
    code = main(["plot", str(runs["serial"]), str(missing), "--column", "train_loss",
                 "--out", str(tmp_path / "x.png")])
    assert code == 2
    assert f"run directory {str(missing)!r} does not exist" in capsys.readouterr().err


def test_non_numeric_column_is_refused(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert main(["plot", str(runs["serial"]), "--column", "kind", "--out", str(tmp_path / "x.png")]) == 2
    assert "column 'kind' holds no numbers; choose one of:" in capsys.readouterr().err


def test_legend_names_options_that_differ_from_the_method_defaults(runs: dict[str, Path]) -> None:
    loaded = load_runs([runs["paso"], runs["serial"]])
    assert legend_labels(loaded) == ["paso-run: paso P=2", "serial-run: serial"]


@pytest.mark.parametrize("column,label", [
    ("train_loss", "train_loss"), ("train_time_s", "train_time_s (s)"), ("bytes_measured", "bytes_measured (bytes)"),
    ("mem_peak_mb", "mem_peak_mb (MB)"), ("tokens_per_s", "tokens_per_s (tokens/s)")])
def test_axis_labels_carry_units(column: str, label: str) -> None:
    assert axis_label(column) == label
