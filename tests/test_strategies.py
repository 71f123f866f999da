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


def test_committed_notebook_is_what_the_builder_generates() -> None:
    import importlib.util

    import nbformat

    path = REPO / "notebooks" / "build_parallel_strategies.py"
    spec = importlib.util.spec_from_file_location("build_parallel_strategies", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    on_disk = nbformat.read(REPO / "notebooks" / "parallel_strategies.ipynb", as_version=4)
    assert [c.source for c in on_disk.cells] == [c.source for c in module.build().cells], \
        "run python notebooks/build_parallel_strategies.py"
