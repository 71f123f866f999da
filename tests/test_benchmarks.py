"""The PASO scaling benchmark end to end at a tiny size, and its argument checks."""

from __future__ import annotations

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
    assert "mmap threshold fixed at 1048576 B" in (tmp_path / "tables" / "paso_scaling.md").read_text()
    assert (tmp_path / "figures" / "paso_scaling.png").is_file()


def test_paso_scaling_rejects_negative_mmap_threshold(tmp_path) -> None:
    proc = run_script("--out", str(tmp_path), "--mmap-threshold", "-5")
    assert proc.returncode == 2 and "--mmap-threshold=-5 is not valid" in proc.stderr
    assert not (tmp_path / "tables").exists()
