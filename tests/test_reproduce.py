"""The main-job driver: job selection, failure isolation, and the artifact index."""

from __future__ import annotations

import pytest

from paso_core import reproduce


def test_index_lists_figures_tables_and_failures(tmp_path) -> None:
    (tmp_path / "figures").mkdir()
    (tmp_path / "tables").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(b"png")
    (tmp_path / "tables" / "b.md").write_text("| x |")
    jobs = [reproduce.JobResult("cifar_paso", True, 12.3, "notebooks/cifar_paso.ipynb"),
            reproduce.JobResult("paso_scaling", False, 4.0, "Traceback\nValueError: boom")]
    text = reproduce.write_index(tmp_path, "smoke", jobs).read_text()
    assert "figures/a.png" in text and "tables/b.md" in text
    assert "| cifar_paso | ok | 12 |" in text
    assert "| paso_scaling | FAILED | 4 | ValueError: boom |" in text


def test_a_partial_run_keeps_the_other_jobs_rows_of_the_same_scale(tmp_path) -> None:
    first = [reproduce.JobResult("engine_canary", True, 35, "benchmarks/engine_canary.py"),
             reproduce.JobResult("cifar_paso", True, 200, "notebooks/cifar_paso.ipynb")]
    reproduce.write_index(tmp_path, "default", first)
    rerun = [reproduce.JobResult("qsr_local_sgd", True, 400, "notebooks/qsr_local_sgd.ipynb"),
             reproduce.JobResult("cifar_paso", True, 210, "notebooks/cifar_paso.ipynb")]
    text = reproduce.write_index(tmp_path, "default", rerun).read_text()
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "seconds" not in line]
    assert rows == ["engine_canary", "cifar_paso", "qsr_local_sgd"]  # the main job's order
    assert "| cifar_paso | ok | 210 |" in text
    other_scale = reproduce.write_index(tmp_path, "smoke", rerun[:1]).read_text()
    assert "engine_canary" not in other_scale


def test_unknown_job_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        reproduce.main(["--only", "cifar"])
    assert "cifar_paso" in capsys.readouterr().err


def test_failing_benchmark_is_reported_not_raised(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(reproduce.BENCHMARKS, "paso_scaling", {"smoke": ["--no-such-flag"]})
    job = reproduce.run_benchmark("paso_scaling", "smoke", tmp_path)
    assert not job.ok and "no-such-flag" in job.detail
