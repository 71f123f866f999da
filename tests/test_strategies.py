"""The strategies comparison (notebook ``parallel_strategies`` and ``benchmarks/strategies.py``):
its plan, its refusals, and the tables read from runs.

The end-to-end run is the notebook itself under nbmake (smoke scale) and the benchmark test
below; here, the plan is checked without processes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from paso_core.config import ConfigError
from paso_core.experiments import strategies as st

REPO = Path(__file__).resolve().parent.parent


def test_every_method_is_planned_once_at_its_world_size() -> None:
    plan = st.prepare({}, "smoke")
    methods = [(r.label, r.config.world_size) for r in plan.runs if r.study == "methods"]
    assert [m for m, _ in methods] == list(st.ALL_METHODS)
    worlds = dict(methods)
    assert worlds["serial"] == 1 and worlds["fsdp2_tp"] == 4 and worlds["ddp"] == 2
    interleaved = next(r for r in plan.runs if r.label == "pp:interleaved_1f1b").config
    assert interleaved.options.stages_per_rank == 2 and interleaved.options.pp_schedule == "interleaved_1f1b"


def test_split_sweep_covers_every_point_and_every_rule() -> None:
    plan = st.prepare({"studies": ["split"]}, "default")
    splits = [r.config.options.split for r in plan.runs]
    n_blocks = st._n_blocks(plan.params)
    assert splits == [[k] for k in range(1, n_blocks)] + ["uniform", "params", "time"]
    assert {r.config.world_size for r in plan.runs} == {2}


def test_refused_sweep_points_are_listed_with_the_methods_reason() -> None:
    plan = st.prepare({"studies": ["world"], "world_sizes": [1, 2], "sweep_methods": ["fsdp2", "pp:1f1b"]},
                      "default")
    assert [(r.label, r.config.world_size) for r in plan.runs] == [("fsdp2", 1), ("fsdp2", 2), ("pp:1f1b", 2)]
    (skip,) = plan.skipped
    assert skip["method"] == "pp:1f1b" and "at least 2 pipeline ranks" in skip["reason"]


@pytest.mark.parametrize("values, message", [
    ({"methods": "ddp,fdsp2"}, r"\['fdsp2'\] not valid; choose among serial, naive_dp"),
    ({"studies": "methods,bubbles"}, r"\['bubbles'\] not valid"),
    ({"nrpoc": 2}, r"unknown parameter\(s\) \['nrpoc'\]"),
    ({"model": "gpt2-tiny", "methods": "tp"}, r"tp.*gpt2"),
    ({"methods": "pp:1f1b", "microbatches": 3}, r"microbatches=3"),
    ({"model": "llama-tiny", "methods": "tp", "nproc": 3}, r"head"),
])
def test_bad_parameters_fail_before_any_launch(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        st.prepare({"studies": ["methods"], **values}, "smoke")


def test_ratios_and_memory_scaling_are_computed_from_the_rows() -> None:
    table = pd.DataFrame([
        {"study": "methods", "method": "serial", "world": 1, "tokens_per_s": 100.0, "mem_state_mb": 8.0},
        {"study": "methods", "method": "fsdp2", "world": 2, "tokens_per_s": 50.0, "mem_state_mb": 4.2},
        {"study": "world", "method": "fsdp2", "world": 1, "mem_state_mb": 8.0, "mem_params_mb": 2.0,
         "mem_optimizer_mb": 4.0, "tokens_per_s_per_rank": 10.0},
        {"study": "world", "method": "fsdp2", "world": 4, "mem_state_mb": 2.1, "mem_params_mb": 0.5,
         "mem_optimizer_mb": 1.0, "tokens_per_s_per_rank": 5.0},
    ])
    ratios = st.with_ratios(st.study(table, "methods")).set_index("method")
    assert ratios.loc["fsdp2", "speedup_vs_serial"] == 0.5
    assert ratios.loc["fsdp2", "state_vs_serial"] == pytest.approx(4.2 / 8.0)
    scaling = st.memory_scaling(table).set_index("world")
    assert scaling.loc[4, "relative_state"] == pytest.approx(2.1 / 8.0)
    assert scaling.loc[4, "ideal_1_over_world"] == 0.25


def test_benchmark_runs_methods_side_by_side_and_fsdp2_memory_falls(tmp_path: Path) -> None:
    """Methods side by side in one invocation; FSDP2's state per rank ~ 1/world (measured).

    Two methods keep the test short: every method runs side by side in the notebook, which
    nbmake executes at the same scale (and the pipeline rows are checked in
    test_pipeline_methods); two world sizes, since 4 text ranks on 2 cores cost a minute."""
    script = REPO / "benchmarks" / "strategies.py"
    methods = ["serial", "fsdp2"]
    proc = subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--scale", "smoke",
                           "--methods", *methods, "--world-sizes", "1", "2"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    table = pd.read_csv(tmp_path / "tables" / "strategies.csv")
    assert list(table["method"]) == methods
    assert table["tokens_per_s"].gt(0).all() and table["mem_state_mb"].gt(0).all()
    assert table.set_index("method").loc["fsdp2", "bytes_per_step"] > 0
    memory = pd.read_csv(tmp_path / "tables" / "strategies_memory.csv")
    fsdp2 = memory[memory["method"] == "fsdp2"].set_index("world")
    ddp = memory[memory["method"] == "ddp"].set_index("world")
    assert list(fsdp2.index) == [1, 2]  # 4 ranks: test_sharding_methods and the notebook
    assert (fsdp2["relative_state"] <= 1.25 * fsdp2["ideal_1_over_world"]).all()
    assert (fsdp2["relative_state"] >= 0.9 * fsdp2["ideal_1_over_world"]).all()
    assert ddp["relative_state"].eq(1.0).all()
    assert (tmp_path / "tables" / "strategies.json").exists()


# ------------------------------------------------------------ discussion, joined table, figures (no launches)
def _row(study: str, method: str, world: int, **values: object) -> dict:
    """One row of a results table as :func:`st.run_row` writes it, with harmless defaults."""
    row = {"study": study, "x": str(world), "method": method, "world": world, "model": "llama-tiny", "lora": "",
           "block_size": 32, "batch_size": 8, "microbatches": float("nan"), "split_points": "", "steps": 4,
           "device": "cpu", "step_s": 1.0, "tokens_per_s": 256.0, "tokens_per_s_per_rank": 256.0 / world,
           "forward_s": float("nan"), "backward_s": float("nan"), "pipeline_s": float("nan"),
           "grad_sync_s": float("nan"), "optimizer_s": float("nan"), "comm_s": 0.0, "mem_params_mb": 2.0,
           "mem_grads_mb": 2.0, "mem_optimizer_mb": 4.0, "mem_state_mb": 8.0, "mem_peak_mb": 500.0,
           "bytes_per_step": 0.0, "bubble_schedule": float("nan"), "bubble_measured": float("nan")}
    return {**row, **values}


def _synthetic_table() -> pd.DataFrame:
    mib = 2**20
    pipe = {"microbatches": 4.0, "split_points": "[2]", "bubble_schedule": 0.2, "bubble_measured": 0.5}
    return pd.DataFrame([
        _row("methods", "serial", 1, tokens_per_s=1000.0, step_s=0.256, mem_peak_mb=400.0),
        _row("methods", "ddp", 2, tokens_per_s=3000.0, forward_s=0.02, backward_s=0.05, optimizer_s=0.01,
             comm_s=0.004, step_s=0.1, bytes_per_step=2.0 * mib),
        _row("methods", "fsdp2", 2, tokens_per_s=2000.0, mem_state_mb=4.4, bytes_per_step=3.0 * mib),
        _row("methods", "pp:gpipe", 2, tokens_per_s=500.0, mem_state_mb=5.0, bytes_per_step=1.0 * mib,
             pipeline_s=0.3, grad_sync_s=0.05, optimizer_s=0.02, step_s=0.5, **pipe),
        _row("methods", "model_parallel", 2, tokens_per_s=700.0, mem_state_mb=5.0, bytes_per_step=0.5 * mib,
             split_points="[2]", bubble_schedule=0.5, bubble_measured=0.4),
        _row("world", "fsdp2", 1, mem_state_mb=8.0),
        _row("world", "fsdp2", 2, mem_state_mb=4.4),
        _row("world", "fsdp2", 4, mem_state_mb=2.4),
        _row("microbatches", "pp:gpipe", 2, **{**pipe, "microbatches": 1.0, "bubble_schedule": 0.5,
                                                "bubble_measured": 0.6}),
        _row("microbatches", "pp:gpipe", 2, **{**pipe, "microbatches": 8.0, "bubble_schedule": 1 / 9,
                                                "bubble_measured": 0.3}),
        _row("split", "pp:gpipe", 2, x="[1]", split_points="[1]", tokens_per_s=400.0),
        _row("split", "pp:gpipe", 2, x="[2]", split_points="[2]", tokens_per_s=800.0),
        _row("split", "pp:gpipe", 2, x="[3]", split_points="[3]", tokens_per_s=600.0),
        _row("split", "pp:gpipe", 2, x="uniform", split_points="[2]", tokens_per_s=790.0),
        _row("split", "pp:gpipe", 2, x="params", split_points="[3]", tokens_per_s=610.0),
        _row("split", "pp:gpipe", 2, x="time", split_points="[2]", tokens_per_s=805.0),
    ])


def test_discussion_states_the_numbers_of_the_table() -> None:
    text = st.discussion(_synthetic_table())
    assert "`fsdp2` (2 ranks) holds the least, 4.4 MiB, 1.82x less than `serial`'s 8 MiB" in text
    assert ("falls as about 1/world (measured, within a factor 1.25): at 2 ranks 0.550 of its state at 1 rank(s) "
            "(1/world: 0.500); at 4 ranks 0.300 of its state at 1 rank(s) (1/world: 0.250)") in text
    assert "most first: `fsdp2` 3 MiB, `ddp` 2 MiB, `pp:gpipe` 1 MiB, `model_parallel` 0.5 MiB, `serial` 0 MiB." in text
    assert ("`pp:gpipe` (2 ranks, 4 micro-batches) 0.200 vs 0.500; `model_parallel` (2 ranks) 0.500 vs 0.400; "
            "measured above the schedule's in 1 of 2") in text
    assert ("From 1 to 8 micro-batches, `pp:gpipe`'s schedule bubble goes 0.500 -> 0.111, "
            "measured 0.600 -> 0.300") in text
    assert "the fastest split is [2] at 800 tokens/s, the slowest [1] at 400" in text
    assert "`uniform` chose [2], the fastest point." in text and "`time` chose [2], the fastest point." in text
    assert "`params` chose [3], not the fastest (0.75x its tokens/s in the sweep)" in text
    assert ("fastest first: `ddp` 3,000 > `fsdp2` 2,000 > `serial` 1,000 > `model_parallel` 700 > `pp:gpipe` 500. "
            "`ddp` ran 3.00x "
            "`serial`'s tokens/s. These runs used CPU processes only") in text


def test_discussion_says_when_fsdp2_does_not_shard_and_leaves_out_studies_not_run() -> None:
    table = _synthetic_table()
    table.loc[(table["study"] == "world") & (table["world"] == 4), "mem_state_mb"] = 8.0
    table = table[table["study"].isin(["methods", "world"])]
    text = st.discussion(table)
    assert "does **not** fall as 1/world" in text and "at 4 ranks 1.000 of its state" in text
    assert "Split sweep" not in text and "From 1 to 8" not in text
    only_methods = st.discussion(table[table["study"] == "methods"])  # one world size: fsdp2 against serial
    assert "at 2 ranks 0.550 of serial's (1/world: 0.500)" in only_methods


def test_seed_values_sit_beside_ours_per_method() -> None:
    joined = st.compare_reported(_synthetic_table())
    columns = list(joined.columns)
    for ours, seed in (("ours: throughput, job [k tokens/s]", "seed: throughput, job [k tokens/s]"),
                       ("ours: per rank [k tokens/s]", "seed: per GPU [k tokens/s]"),
                       ("ours: peak memory per rank [MiB]", "seed: peak memory per GPU [GB]")):
        assert columns.index(seed) == columns.index(ours) + 1
    naive = joined[joined["method"] == "naive_dp"]  # seed 002's per-parameter all-reduce, not DDP
    assert list(naive["seed: per GPU [k tokens/s]"]) == pytest.approx([217.8, 218.5, 216.1])
    assert naive["seed (their GPUs)"].str.startswith("seed 002, their GPUs").all()
    assert naive["ours: throughput, job [k tokens/s]"].isna().all()  # not run here: blank, not invented
    ddp = joined[joined["method"] == "ddp"].iloc[0]
    assert ddp["ours: throughput, job [k tokens/s]"] == 3.0 and ddp["seed: per GPU [k tokens/s]"] == pytest.approx(28.3)
    assert ddp["seed: peak memory per GPU [GB]"] == 41.0 and ddp["seed (their GPUs)"].startswith("seed 003")
    gpipe = joined[joined["method"] == "pp:gpipe"]
    assert list(gpipe["seed: throughput, job [k tokens/s]"]) == pytest.approx([17.6, 38.2])
    assert (gpipe["ours: throughput, job [k tokens/s]"] == 0.5).all()
    assert joined["method"].iloc[0] == "serial" and joined.loc[0, "seed (their GPUs)"] == ""


def test_step_split_slices_add_up_to_the_step_and_communication_stays_beside() -> None:
    split = st.step_split(_synthetic_table()).set_index("method")
    slices = [c for c, _ in st.STEP_SEGMENTS]
    assert split.loc["ddp", "rest_s"] == pytest.approx(0.1 - 0.08)
    assert split.loc["pp:gpipe", slices].sum() == pytest.approx(0.5)
    assert split.loc["serial", "rest_s"] == 0.256  # no phase timed: the whole step
    assert split.loc["ddp", "comm_s"] == 0.004 and "comm_s" not in slices


def test_figures_name_the_setting_and_label_every_panel() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = _synthetic_table()
    for fig in (st.plot_methods(table), st.plot_step_split(table), st.plot_sweeps(table)):
        assert "llama-tiny, context 32 tokens, global batch 8, 4 steps, CPU" in (
            fig._suptitle.get_text() if fig._suptitle else fig.axes[0].get_title())
        for ax in fig.axes:
            if not ax.axison:  # a study that did not run: a sentence, no axes
                continue
            assert ax.get_title() and ax.get_xlabel() and ax.get_legend() is not None, ax.get_title()
            assert "[" in ax.get_xlabel(), ax.get_xlabel()  # units in brackets
            assert ax.get_ylabel() == "" or "[" in ax.get_ylabel(), ax.get_ylabel()  # bars: methods on y
        plt.close(fig)
    fig = st.plot_sweeps(table)
    world, micro, split = fig.axes[0], fig.axes[9], fig.axes[11]
    assert [t.get_text() for t in world.get_xticklabels()] == ["1", "2", "4"]
    assert [t.get_text() for t in micro.get_xticklabels()] == ["1", "8"]
    assert [t.get_text() for t in split.get_xticklabels()] == ["1", "2", "3"]
    assert {"fsdp2: 1/world", "fsdp2"} <= {t.get_text() for t in world.get_legend().get_texts()}
    plt.close(fig)


def test_equal_curves_differ_in_marker_and_line_style() -> None:
    styles = [st.method_style(m) for m in st.ALL_METHODS]
    for a, b in zip(styles, styles[1:]):
        assert a["marker"] != b["marker"] and a["linestyle"] != b["linestyle"] and a["color"] != b["color"]
