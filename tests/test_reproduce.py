"""The main-job driver: job selection, failure isolation, and the artifact index."""

from __future__ import annotations

import os

import pytest

from paso_core import reproduce
from paso_core.config import RunConfig, validate
from paso_core.launch import launch
from paso_core.provenance import REPO, repo_relative
from paso_core.runs import CODE_DIGEST_FILE, REUSE_ENV, REUSE_LOG_ENV, REUSE_SINCE_ENV, reusable_run


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
    assert "| paso_scaling | FAILED | 4 | 0 | ValueError: boom |" in text


def test_a_partial_run_keeps_the_other_jobs_rows_of_the_same_scale(tmp_path) -> None:
    first = [reproduce.JobResult("engine_canary", True, 35, "benchmarks/engine_canary.py"),
             reproduce.JobResult("cifar_paso", True, 200, "notebooks/cifar_paso.ipynb")]
    reproduce.write_index(tmp_path, "default", first)
    rerun = [reproduce.JobResult("qsr_local_sgd", True, 400, "notebooks/qsr_local_sgd.ipynb"),
             reproduce.JobResult("cifar_paso", True, 210, "notebooks/cifar_paso.ipynb")]
    text = reproduce.write_index(tmp_path, "default", rerun).read_text()
    jobs = text.split("## Figures")[0]
    rows = [line.split("|")[1].strip() for line in jobs.splitlines() if line.startswith("| ") and "seconds" not in line]
    assert rows == ["engine_canary", "cifar_paso", "qsr_local_sgd"]  # the main job's order
    assert "| cifar_paso | ok | 210 |" in text
    other_scale = reproduce.write_index(tmp_path, "smoke", rerun[:1]).read_text()
    assert "| engine_canary |" not in other_scale


def test_unknown_job_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        reproduce.main(["--only", "cifar"])
    assert "cifar_paso" in capsys.readouterr().err


def test_failing_benchmark_is_reported_not_raised(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(reproduce.BENCHMARKS, "paso_scaling", {"smoke": ["--no-such-flag"]})
    job = reproduce.run_benchmark("paso_scaling", "smoke", tmp_path)
    assert not job.ok and "no-such-flag" in job.detail


# ------------------------------------------------------------------ reuse, HTML, relative paths
def test_a_smoke_reproduce_all_never_overwrites_the_default_artifacts(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PASO_ARTIFACTS", raising=False)
    assert reproduce.output_root("smoke") == REPO / "artifacts" / "smoke"
    assert reproduce.output_root("default") == reproduce.output_root("paper") == REPO / "artifacts"
    assert "artifacts/smoke/" in (REPO / ".gitignore").read_text().splitlines()
    monkeypatch.setenv("PASO_ARTIFACTS", str(tmp_path))  # an explicit root wins at every scale
    assert reproduce.output_root("smoke") == reproduce.output_root("default") == tmp_path


def test_reused_runs_are_counted_per_job_and_kept_in_the_index(tmp_path) -> None:
    def job() -> reproduce.JobResult:
        import os

        with open(os.environ[REUSE_LOG_ENV], "a") as log:
            log.write("/runs/a\n/runs/b\n")
        return reproduce.JobResult("cifar_paso", True, 3, "notebooks/cifar_paso.ipynb")

    result = reproduce.counting_reuse(job, tmp_path / "reused")
    assert result.reused == 2 and not (tmp_path / "reused").exists()
    reproduce.write_index(tmp_path, "default", [result])
    assert [(j.name, j.reused) for j in reproduce.previous_jobs(tmp_path, "default")] == [("cifar_paso", 2)]


def test_a_finished_run_of_the_same_config_and_code_is_reused(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyed by config and code: the second launch returns the first run untouched; another
    option value, other code, reuse off, or (``--force``) a run older than the invocation is
    not reused (checked on :func:`reusable_run`, the launch's own test, without relaunching)."""
    options = dict(method="serial", task="synthetic", function="sphere", dim=16, steps=4, progress=False,
                   threads_per_worker=1, out_dir=str(tmp_path / "run"))
    monkeypatch.setenv(REUSE_ENV, "1")
    monkeypatch.setenv(REUSE_LOG_ENV, str(tmp_path / "reused.log"))
    first = launch(RunConfig.from_dict(options))
    stamp = (first.path / "metrics.csv").stat().st_mtime_ns
    again = launch(RunConfig.from_dict(dict(options, progress=True)))  # display options do not matter
    assert again.path == first.path and (first.path / "metrics.csv").stat().st_mtime_ns == stamp
    assert (tmp_path / "reused.log").read_text().split() == [str(first.path)]
    assert again.metrics.equals(first.metrics)

    launch(RunConfig.from_dict(dict(options, lr=0.05)))  # another config: a new run in the same directory
    assert (first.path / "metrics.csv").stat().st_mtime_ns != stamp
    assert len((tmp_path / "reused.log").read_text().split()) == 1
    cfg = validate(RunConfig.from_dict(dict(options, lr=0.05)))  # as the launch resolves it
    assert reusable_run(cfg) == first.path
    finished = (first.path / "summary.json").stat().st_mtime
    monkeypatch.setenv(REUSE_SINCE_ENV, repr(finished - 60))  # --force: made in this invocation
    assert reusable_run(cfg) == first.path
    monkeypatch.setenv(REUSE_SINCE_ENV, repr(finished + 60))  # --force: made before it
    assert reusable_run(cfg) is None
    monkeypatch.delenv(REUSE_SINCE_ENV)
    monkeypatch.delenv(REUSE_ENV)
    assert reusable_run(cfg) is None
    monkeypatch.setenv(REUSE_ENV, "1")
    (first.path / CODE_DIGEST_FILE).write_text("made-by-other-code\n")
    assert reusable_run(cfg) is None


def test_only_runs_from_before_the_invocation_count_as_reused_earlier(tmp_path) -> None:
    """A job that reuses a run an earlier job of the same invocation made is still timed fresh."""
    old, new = tmp_path / "old", tmp_path / "new"
    for run in (old, new):
        run.mkdir()
        (run / "summary.json").write_text("{}")
    since = (old / "summary.json").stat().st_mtime + 1
    os.utime(new / "summary.json", (since + 1, since + 1))

    def job() -> reproduce.JobResult:
        with open(os.environ[REUSE_LOG_ENV], "a") as log:
            log.write(f"{old}\n{new}\n")
        return reproduce.JobResult("optex_ablation", True, 3, "notebooks/optex_ablation.ipynb")

    result = reproduce.counting_reuse(job, tmp_path / "reused", since)
    assert (result.reused, result.reused_earlier) == (2, 1)
    assert reproduce.counting_reuse(job, tmp_path / "reused").reused_earlier == 2  # no start time: all earlier


def test_executed_notebooks_are_rendered_without_input_and_with_relative_paths(tmp_path) -> None:
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbconvert")
    cell = nbformat.v4.new_code_cell("secret_source_line = 1\nprint(path)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"wrote {REPO}/artifacts/tables/x.md\n")]
    notebooks = tmp_path / "artifacts" / "notebooks"
    notebooks.mkdir(parents=True)
    path = notebooks / "demo.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), path)
    reproduce.relative_notebook(path, tmp_path / "artifacts")
    assert str(REPO) not in path.read_text() and "wrote artifacts/tables/x.md" in path.read_text()
    html = reproduce.render_html(path, tmp_path / "artifacts" / "html").read_text()
    assert "wrote artifacts/tables/x.md" in html and "secret_source_line" not in html


def test_paths_under_another_artifacts_root_become_repository_relative(tmp_path) -> None:
    root = tmp_path / "elsewhere" / "artifacts"
    text = f"{root}/runs/r1 and {REPO}/notebooks/x.ipynb and {REPO}"
    assert repo_relative(text, root) == "artifacts/runs/r1 and notebooks/x.ipynb and ."


def test_the_readme_claims_map_is_the_one_computed_from_the_artifacts(tmp_path) -> None:
    """The committed README shows what ``paso_core.claims`` computes from the committed
    artifacts (``make artifacts`` rewrites it); the block is replaced, the rest kept."""
    from paso_core.claims import claims_markdown

    artifacts = REPO / "artifacts"
    readme = (REPO / "README.md").read_text()
    block = readme.split(reproduce.CLAIMS_START, 1)[1].split(reproduce.CLAIMS_END, 1)[0]
    assert block.strip() == claims_markdown(artifacts).strip(), "run make artifacts (or reproduce.update_readme_claims)"
    copy = tmp_path / "README.md"
    copy.write_text(f"intro\n{reproduce.CLAIMS_START}\nOLD-BLOCK\n{reproduce.CLAIMS_END}\nrest\n")
    assert reproduce.update_readme_claims(copy, artifacts)
    text = copy.read_text()
    assert "OLD-BLOCK" not in text and text.startswith("intro\n") and text.endswith("rest\n") and "| seed |" in text


def test_saved_tables_record_paths_relative_to_the_checkout(tmp_path) -> None:
    import json

    import pandas as pd

    from paso_core import report

    run = REPO / "artifacts" / "runs" / "serial-x"
    tables = tmp_path / "artifacts" / "tables"
    report.save_table(pd.DataFrame({"path": [str(run), str(tmp_path / "artifacts" / "runs" / "y")]}), "t",
                      {"out_dir": str(run)}, root=tables)
    assert pd.read_csv(tables / "t.csv")["path"].tolist() == ["artifacts/runs/serial-x", "artifacts/runs/y"]
    record = json.loads((tables / "t.json").read_text())
    assert record["config"]["out_dir"] == "artifacts/runs/serial-x" and str(REPO) not in (tables / "t.json").read_text()


def test_readme_job_times_keep_each_jobs_time_of_its_last_fresh_run(tmp_path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{reproduce.TIMES_START}\n\n| job | minutes | runs reused |\n|---|---|---|\n"
                      f"| engine_canary | 0.5 | 0 |\n| cifar_paso | 2.0 | 0 |\n| **all** | **2** | |\n\n"
                      f"{reproduce.TIMES_END}\nb\n")
    jobs = [reproduce.JobResult("cifar_paso", True, 3, "notebooks/cifar_paso.ipynb", reused=17, reused_earlier=17),
            reproduce.JobResult("engine_canary", False, 5, "Traceback")]
    assert reproduce.update_readme_times(readme, jobs) == []  # reused older runs, or failed: no row changes
    assert "| cifar_paso | 2.0 | 0 |" in readme.read_text()
    jobs = [reproduce.JobResult("cifar_paso", True, 150, "notebooks/cifar_paso.ipynb", reused=2, reused_earlier=0),
            reproduce.JobResult("optex_ablation", True, 60, "notebooks/optex_ablation.ipynb")]
    assert reproduce.update_readme_times(readme, jobs) == ["cifar_paso", "optex_ablation"]
    text = readme.read_text()
    assert text.startswith("a\n") and text.endswith("b\n")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "minutes" not in line]
    assert rows == ["| engine_canary | 0.5 | 0 |", "| optex_ablation | 1.0 | 0 |", "| cifar_paso | 2.5 | 2 |",
                    "| **all** | **4** | |"]
