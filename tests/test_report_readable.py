"""Tables and figures a reader can read: at most ten Markdown columns (the rest named as in
the CSV), no "± 0" from a single seed, and curves that coincide named in the legend.

Unit tests on tiny synthetic frames: no processes, no runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from paso_core import report  # noqa: E402
from paso_core.experiments import cifar, common, wikitext  # noqa: E402


def wide(n_columns: int) -> pd.DataFrame:
    return pd.DataFrame({f"c{i}": [float(i), float(i) + 0.5] for i in range(n_columns)})


# ------------------------------------------------------------------- Markdown columns
def test_save_table_refuses_more_than_ten_md_columns(tmp_path: Path) -> None:
    df = wide(12)
    with pytest.raises(ValueError, match=r"names 11 columns; the Markdown shows at most 10"):
        report.save_table(df, "t", root=tmp_path, md_columns=list(df.columns[:11]))
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_wide_table_must_choose_its_md_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"has 11 columns .* pass md_columns="):
        report.save_table(wide(11), "t", root=tmp_path)
    csv, md = report.save_table(wide(10), "t", root=tmp_path)  # ten fit without choosing
    assert "More columns" not in md.read_text()
    with pytest.raises(ValueError, match=r"not in the table: \['nope'\]"):
        report.save_table(wide(3), "t", root=tmp_path, md_columns=["c0", "nope"])


def test_markdown_names_the_columns_left_in_the_csv(tmp_path: Path) -> None:
    df = wide(12)
    csv, md = report.save_table(df, "wide_one", root=tmp_path, title="T", md_columns=["c0", "c3"])
    text = md.read_text()
    header = next(line for line in text.splitlines() if line.startswith("|"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["c0", "c3"]
    assert "More columns in wide_one.csv: c1, c2, c4, c5, c6, c7, c8, c9, c10, c11." in text
    assert list(pd.read_csv(csv).columns) == list(df.columns)  # the CSV keeps every column


# ------------------------------------------------------------------- n = 1: no std
def test_one_seed_shows_the_value_without_a_std(tmp_path: Path) -> None:
    frame = pd.DataFrame({"method": ["serial", "paso", "paso"], "acc": [0.9, 0.8, 0.7]})
    agg = common.aggregate(frame, "method", ["acc"]).set_index("method")
    assert agg.loc["serial", "acc_n"] == 1 and math.isnan(agg.loc["serial", "acc_std"])  # blank, not 0
    assert agg.loc["paso", "acc_std"] == pytest.approx(math.sqrt(0.005))
    shown = [common.format_pm(m, s, ".2f") for m, s in zip(agg["acc_mean"], agg["acc_std"])]
    assert shown == ["0.90", "0.75 ± 0.07"]
    table = agg.reset_index().assign(acc=shown)
    _, md = report.save_table(table, "one_seed", root=tmp_path, md_columns=["method", "acc", "acc_std"])
    row = next(line for line in md.read_text().splitlines() if line.startswith("| serial"))
    assert "±" not in row and [c.strip() for c in row.strip("|").split("|")] == ["serial", "0.90", ""]


def test_one_seed_draws_no_error_bar() -> None:
    assert np.isnan(report.error_bars([float("nan"), None])).all()  # blank, not a bar of length 0
    tradeoff = pd.DataFrame({"threshold": [1e-5, 0.1], "ema_decay": 0.999, "P": 4, "seeds": [1, 2], "failed": 0,
                             "speedup_T_over_K_mean": [2.0, 3.0], "test_accuracy_mean": [0.95, 0.9],
                             "test_accuracy_std": [float("nan"), 0.02]})
    fig = cifar.plot_tradeoff(tradeoff, {"threshold": 1e-5, "ema_decay": 0.999}, [0.96, 0.97], "digits")
    points = list(fig.axes[2].containers)  # the accuracy-vs-speed-up panel: one errorbar per point
    bars = [[len(seg) for seg in c.lines[2][0].get_segments()] for c in points]
    assert bars == [[0], [2]]  # the one-seed point has no bar; the two-seed one has
    labels = [t.get_text() for t in fig.axes[2].get_legend().get_texts()]
    assert "thr=1e-05, ema=0.999 (n=1)" in labels and "thr=0.1, ema=0.999 (n=2)" in labels  # seeds vary: shown
    plt.close(fig)


def test_wikitext_table_shows_no_std_for_one_seed() -> None:
    table = pd.DataFrame([{c: float("nan") for c in wikitext.TABLE2_COLUMNS} for _ in range(2)])
    table["method"], table["source"] = ["serial (Adam)", "PASO"], "measured"
    table["PPL"], table["PPL std"] = [160.7, 197.3], [float("nan"), 0.0]  # one seed; two equal seeds
    table["wall time (s)"], table["wall time std (s)"] = [7.9, 22.1], [float("nan"), 1.25]
    shown = wikitext.format_table2(table)
    assert list(shown["PPL"]) == ["160.7", "197.3 ± 0"]  # a measured zero spread is still shown
    assert list(shown["time (s)"]) == ["7.9", "22.1 ± 1.2"]


# ------------------------------------------------------------------- figures
def curve(label: str, y: list[float], n: int = 2) -> pd.DataFrame:
    x = np.arange(1, len(y) + 1, dtype=float)
    return pd.DataFrame({"label": label, "iteration": x, "mean": y, "std": 0.01, "min": y, "max": y, "n": n})


def test_overlap_note_names_identical_curves_and_only_them() -> None:
    loss = [2.0, 1.0, 0.5, 0.3]
    same = pd.concat([curve("serial", loss), curve("naive_dp", loss), curve("ddp", loss),
                      curve("paso", [2.0, 0.6, 0.2])], ignore_index=True)
    fig = cifar.plot_curves({"loss_vs_iteration": same}, "digits cnn")
    legend = fig.axes[0].get_legend()
    assert legend.get_title().get_text() == "serial, naive DP and DDP coincide"
    assert {t.get_text() for t in legend.get_texts()} == {"serial", "PASO", "naive DP", "DDP"}
    styles = {line.get_label(): (line.get_linestyle(), line.get_linewidth()) for line in fig.axes[0].get_lines()}
    assert len(set(styles.values())) == 4  # coinciding curves still drawn each its own way
    plt.close(fig)
    apart = pd.concat([curve("serial", loss), curve("ddp", [v * 1.1 for v in loss])], ignore_index=True)
    fig = cifar.plot_curves({"loss_vs_iteration": apart}, "digits cnn")
    assert fig.axes[0].get_legend().get_title().get_text() == ""
    plt.close(fig)


def test_wikitext_panels_name_coinciding_methods_per_seed() -> None:
    rows = []
    for method, ppl in (("serial", [900.0, 400.0, 200.0]), ("ddp", [900.0, 400.0, 200.0]),
                        ("paso", [800.0, 300.0, 150.0])):
        for seed in (0, 1):
            for i, value in enumerate(ppl):
                rows.append({"method": method, "seed": seed, "iteration": 10 * (i + 1), "steps_done": 10 * (i + 1),
                             "train_time_s": (1 + i) * (2.0 if method == "ddp" else 1.0) + seed,
                             "val_ppl": value + seed, "test_ppl": value})
    fig = wikitext.plot_curves(pd.DataFrame(rows, columns=wikitext.CURVE_COLUMNS), title="gpt2-tiny on pydoc")
    by_iteration, by_time = fig.axes
    assert by_iteration.get_legend().get_title().get_text() == "serial (Adam) and PyTorch DDP coincide"
    assert by_time.get_legend().get_title().get_text() == ""  # different times: the curves are apart
    assert "serial (Adam) (2 seeds, one line each)" in {t.get_text() for t in by_iteration.get_legend().get_texts()}
    plt.close(fig)


def test_finish_axes_integer_ticks_note_for_one_series_and_partial_overlap() -> None:
    fig, (one, many) = plt.subplots(1, 2)
    one.plot([1, 2, 3], [0.2, 0.5, 0.4])
    report.finish_axes(one, title="accepted", xlabel="iteration [count]", ylabel="steps [count]", integer_x=True,
                       note="PASO, seed 0")
    assert [t.get_text() for t in one.get_legend().get_texts()] == ["PASO, seed 0"]  # one series: a note
    fig.canvas.draw()
    assert all(float(t).is_integer() for t in one.get_xticks())
    many.plot([1, 2], [3.0, 6.0], label="P=2")
    many.plot([1, 2, 4], [3.0, 6.0, 12.0], label="P=4")
    many.plot([1, 2, 4], [3.0, 7.0, 12.0], label="P=8")
    assert report.finish_axes(many) == "P=2 and P=4 coincide where both have points"
    plt.close(fig)


def test_seed_counts_shown_where_they_vary() -> None:
    even = pd.concat([curve("serial", [1.0, 0.5]), curve("paso", [1.0, 0.4])], ignore_index=True)
    uneven = even.copy()
    uneven.loc[uneven.index[-1], "n"] = 1  # a PASO seed ended early
    assert report.seed_note(even) == "mean ± std over 2 seeds"
    assert "n in the legend" in report.seed_note(uneven)
    fig, (a, b) = plt.subplots(1, 2)
    report.plot_curves(a, even)
    report.plot_curves(b, uneven)
    assert [line.get_label() for line in a.get_lines()] == ["serial", "paso"]
    assert [line.get_label() for line in b.get_lines()] == ["serial (n=2)", "paso (n=1–2)"]
    plt.close(fig)
