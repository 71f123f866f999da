"""The PASO scaling benchmark end to end at a tiny size, and its argument checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "paso_scaling.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_paso_scaling_writes_table_with_memory_per_parameter(tmp_path) -> None:
    proc = run_script("--out", str(tmp_path), "--dim", "2000", "--steps", "8", "--P", "2", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(tmp_path / "tables" / "paso_scaling.csv")
    assert list(table.method) == ["serial", "paso", "paso"] and list(table.P) == [1, 2, 4]
    paso = table[table.method == "paso"]
    assert (paso["K"] < paso["T"]).all() and (paso["G"] >= paso["T"]).all()
    assert (table.train_mem_x_params > 0).all()
    # measured per-iteration maximum on the busiest rank within the O(d log P) bound
    assert (paso.iter_bytes_max_x_params > 0).all()
    gather = 64 * paso.P / (2000 * 4)  # the decision gather: 8 float64 per rank, in parameter vectors
    assert (paso.iter_bytes_max_x_params <= paso.iter_bytes_bound_x_params + gather).all()
    assert "mmap threshold fixed at 1048576 B" in (tmp_path / "tables" / "paso_scaling.md").read_text()
    assert (tmp_path / "figures" / "paso_scaling.png").is_file()


def test_paso_scaling_rejects_negative_mmap_threshold(tmp_path) -> None:
    proc = run_script("--out", str(tmp_path), "--mmap-threshold", "-5")
    assert proc.returncode == 2 and "--mmap-threshold=-5 is not valid" in proc.stderr
    assert not (tmp_path / "tables").exists()


def test_paso_seed_reference_table(tmp_path) -> None:
    script = SCRIPT.parent / "paso_seed_reference.py"
    proc = subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--dim", "500", "--steps", "60",
                           "--P", "4", "--lr", "1e-2"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(tmp_path / "tables" / "paso_seed_reference.csv")
    assert list(table.adaptivity) == ["mean", "median"]
    assert ((table.K_engine >= 15) & (table.K_engine <= 60)).all()
    # float32: the scan may flip a decision that sits at the tolerance; the float64 test is exact
    assert ((table.K_engine - table.K_seed_reference).abs() <= 2).all()


def test_paso_threshold_rule_runs_the_notebooks_paso_with_both_rules(tmp_path) -> None:
    script = SCRIPT.parent / "paso_threshold_rule.py"
    proc = subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--scale", "smoke"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(tmp_path / "tables" / "paso_threshold_rule.csv")
    assert list(table.threshold_errors) == ["seed", "next_guess"] * 2
    assert list(table.study) == ["cifar_paso"] * 2 + ["wikitext_paso"] * 2
    assert ((table.K >= 1) & (table.K <= table["T"])).all()


def test_vision_pipeline_json_carries_full_provenance(tmp_path) -> None:
    """The benchmark saves through report.save_table like the others: commit, stack, CPU, world size."""
    script = SCRIPT.parent / "vision_pipeline.py"
    proc = subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--seconds", "0.1", "--repeats", "1",
                           "--warmup", "1", "--workers", "0", "--synthetic-images", "32", "--batch-size", "8"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "tables" / "vision_pipeline.json").read_text())
    env = record["environment"]
    assert env["git"] is None or len(env["git"]["commit"]) == 40
    assert env["cpu_model"] and env["torch"] and env["world_size"] == 1 and env["threads_per_worker"] == 1
    assert record["config"]["args"]["repeats"] == 1 and record["files"] == ["vision_pipeline.csv", "vision_pipeline.md"]
    assert len(pd.read_csv(tmp_path / "tables" / "vision_pipeline.csv")) == 3  # tensor x2, DataLoader w0


def test_paso_placement_compares_placements_of_one_trajectory(tmp_path) -> None:
    script = SCRIPT.parent / "paso_placement.py"
    proc = subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--P", "4", "--ranks", "0", "1",
                           "--dim", "500", "--steps", "12", "--tasks", "synthetic"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(tmp_path / "tables" / "paso_placement.csv")
    vmapped = table[table.gradients == "vmap"]  # one worker's three guesses in one vmap call: rounding only
    assert list(vmapped.workers) == [1] and vmapped.final_max_abs_diff.max() < 1e-5
    paso = table[(table.method == "paso") & (table.gradients == "loop")].set_index("workers")
    assert list(paso.index) == [4, 1] and paso["same_trajectory"].all()
    assert paso.loc[1, "positions_per_rank"] == 4 and paso.loc[1, "MB_sent_max_rank"] == 0
    assert paso.loc[1, "state_MB_per_rank"] > paso.loc[4, "state_MB_per_rank"]
    assert (tmp_path / "figures" / "paso_placement.png").is_file()


def test_gpu_check_runs_every_case_against_serial_on_the_same_device(tmp_path) -> None:
    """The GPU check's own path, on CPU/gloo (``--allow-cpu``): with one device PASO holds its
    whole window on one worker and still ends on serial's weights bit for bit; a case needing
    more devices than there are is listed as skipped, not run."""
    script = SCRIPT.parent / "gpu_check.py"
    proc = subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--allow-cpu", "--workers", "1",
                           "--methods", "serial", "paso", "ddp", "--task", "synthetic"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(tmp_path / "tables" / "gpu_check.csv").set_index("case")
    assert table.loc["exact-paso", "workers"] == 1 and table.loc["exact-paso", "max_abs_diff"] == 0
    assert table.loc[["canary-serial", "canary-paso", "exact-paso"], "passed"].all()
    assert "needs 2 devices, 1 visible" in table.loc["canary-ddp", "note"]
    import torch

    bad = subprocess.run([sys.executable, str(script), "--allow-cpu", "--workers", "0"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "--workers=0 is not valid" in bad.stderr
    if not torch.cuda.is_available():  # without --allow-cpu it says why it cannot run here
        refused = subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], capture_output=True,
                                 text=True, timeout=120)
        assert refused.returncode == 2 and "no CUDA device is visible" in refused.stderr
