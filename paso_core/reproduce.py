"""The main job: execute every notebook and benchmark, and index what they produced.

``python -m paso_core.reproduce --scale default`` (what ``make artifacts`` runs) executes
each notebook with papermill into ``artifacts/notebooks/`` (rendered to HTML without input
cells under ``artifacts/html/``), runs the benchmarks, and writes ``artifacts/INDEX.md``
listing every figure and table with the time each job took. One failing job does not stop
the others; the exit code says whether all succeeded.

Runs are keyed by their config: unless ``--force``, a finished run with the same options is
reused (:func:`paso_core.runs.reusable_run`), so a second invocation, or one resumed after an
interruption, only redoes what is missing; the index says how many runs each job reused.
Paths recorded in the executed notebooks are written relative to the repository.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .claims import claims_markdown
from .provenance import repo_relative
from .runs import REUSE_ENV, REUSE_LOG_ENV, REUSE_SINCE_ENV, artifacts_root

REPO = Path(__file__).resolve().parent.parent
#: ``explore`` last: it shows the runs the others recorded (a static view when executed here)
NOTEBOOKS = ("optex_comparison", "optex_ablation", "cifar_paso", "wikitext_paso", "parallel_strategies",
             "pipeoptim_curves", "qsr_local_sgd", "explore")
SCALES = ("smoke", "default", "paper")

# benchmark command lines per scale (paper scale uses the scripts' own defaults)
BENCHMARKS: dict[str, dict[str, list[str]]] = {
    # run first: it checks every engine against serial training before any experiment
    "engine_canary": {"smoke": ["--task", "synthetic"], "default": [], "paper": []},
    "paso_scaling": {
        "smoke": ["--dim", "20000", "--steps", "20", "--P", "2", "4"],
        "default": ["--dim", "4000000", "--steps", "60", "--relay"],
        "paper": ["--dim", "10000000", "--steps", "1000", "--relay"],
    },
    "vision_pipeline": {"smoke": ["--seconds", "0.5"], "default": [], "paper": []},
    # PASO on P, 2 and 1 workers: the same trajectory, state / bytes / time per worker
    "paso_placement": {"smoke": ["--P", "2", "4", "--dim", "2000", "--steps", "16", "--vision-steps", "8"],
                       "default": [], "paper": ["--dim", "1000000", "--steps", "500", "--vision-steps", "500"]},
    # the script's defaults are the seed's OptEx benchmark (about a minute on 2 cores)
    "paso_seed_reference": {"smoke": ["--dim", "2000", "--steps", "100", "--P", "4"], "default": [], "paper": []},
    # every intra-step method side by side on one model, FSDP2 memory per rank vs world size
    "strategies": {"smoke": ["--scale", "smoke"], "default": ["--scale", "default", "--world-sizes", "1", "2", "4"],
                   "paper": ["--scale", "paper"]},
    "paso_threshold_rule": {"smoke": ["--scale", "smoke"], "default": ["--scale", "default", "--seeds", "0", "1", "2"],
                            "paper": ["--scale", "paper"]},
}


@dataclass
class JobResult:
    name: str
    ok: bool
    seconds: float
    detail: str
    reused: int = 0  # finished runs of the same config it reused instead of running
    reused_earlier: int = 0  # of those, runs that finished before this reproduce-all started


def _finished_before(run_dir: Path, since: float) -> bool:
    summary = run_dir / "summary.json"
    return not summary.exists() or summary.stat().st_mtime < since


def counting_reuse(job: Callable[[], JobResult], log: Path, since: float | None = None) -> JobResult:
    """Run ``job`` with the launches' reuse log pointed at ``log``, and record how many runs it
    reused, and how many of them finished before ``since`` (a run an earlier job of the same
    reproduce-all made, e.g. the OptEx comparison's run that the ablation shares, is as fresh
    as running it again: its time was measured in this invocation)."""
    log.unlink(missing_ok=True)
    os.environ[REUSE_LOG_ENV] = str(log)
    try:
        result = job()
    finally:
        os.environ.pop(REUSE_LOG_ENV, None)
    paths = [Path(line) for line in log.read_text().splitlines()] if log.exists() else []
    result.reused = len(paths)
    result.reused_earlier = len(paths) if since is None else sum(_finished_before(p, since) for p in paths)
    log.unlink(missing_ok=True)
    return result


def relative_notebook(path: Path, root: Path) -> None:
    """Rewrite an executed notebook's absolute paths of this checkout relative to it."""
    path.write_text(repo_relative(path.read_text(), root))


def render_html(notebook: Path, html_dir: Path) -> Path:
    """The executed notebook as HTML without its input cells (what a reader opens in a browser)."""
    import nbformat
    from nbconvert import HTMLExporter

    html_dir.mkdir(parents=True, exist_ok=True)
    body, _ = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True).from_notebook_node(
        nbformat.read(notebook, as_version=4))
    target = html_dir / f"{notebook.stem}.html"
    target.write_text(body)
    return target


def run_notebook(name: str, scale: str, out_dir: Path) -> JobResult:
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    try:
        papermill.execute_notebook(str(REPO / "notebooks" / f"{name}.ipynb"), str(out_dir / f"{name}.ipynb"),
                                   parameters={"scale": scale}, cwd=str(REPO / "notebooks"),
                                   progress_bar=False, log_output=False)
        relative_notebook(out_dir / f"{name}.ipynb", out_dir.parent)
        render_html(out_dir / f"{name}.ipynb", out_dir.parent / "html")
        return JobResult(name, True, time.perf_counter() - tic, f"notebooks/{name}.ipynb")
    except Exception as err:  # noqa: BLE001 - report and continue with the other jobs
        return JobResult(name, False, time.perf_counter() - tic, f"{type(err).__name__}: {err}"[:2000])


def run_benchmark(name: str, scale: str, root: Path) -> JobResult:
    cmd = [sys.executable, str(REPO / "benchmarks" / f"{name}.py"), "--out", str(root),
           *BENCHMARKS[name][scale]]
    tic = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    ok = proc.returncode == 0
    detail = "benchmarks/" + f"{name}.py" if ok else (proc.stderr or proc.stdout)[-2000:]
    return JobResult(name, ok, time.perf_counter() - tic, detail)


def previous_jobs(root: Path, scale: str) -> list[JobResult]:
    """The job rows of an existing ``INDEX.md`` of the same scale (what a partial run keeps)."""
    path = root / "INDEX.md"
    if not path.exists() or path.read_text().splitlines()[:1] != [f"# Artifacts (scale: {scale})"]:
        return []
    jobs = []
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) in (4, 5) and cells[0] in NOTEBOOKS + tuple(BENCHMARKS) and cells[2].isdigit():
            reused = int(cells[3]) if len(cells) == 5 and cells[3].isdigit() else 0
            jobs.append(JobResult(cells[0], cells[1] == "ok", float(cells[2]), cells[-1], reused))
    return jobs


def merged_jobs(previous: list[JobResult], jobs: list[JobResult]) -> list[JobResult]:
    """This invocation's jobs, and the previous ones it did not rerun, in the main job's order."""
    by_name = {j.name: j for j in previous} | {j.name: j for j in jobs}
    order = ["engine_canary", *NOTEBOOKS, *[b for b in BENCHMARKS if b != "engine_canary"]]
    return [by_name[name] for name in order if name in by_name]


def write_index(root: Path, scale: str, jobs: list[JobResult]) -> Path:
    """A Markdown index of every figure and table under ``root`` with the jobs' timings; jobs of
    an earlier run at the same scale that were not rerun (``--only``) keep their rows."""
    jobs = merged_jobs(previous_jobs(root, scale), jobs)
    lines = [f"# Artifacts (scale: {scale})", "", "| job | status | seconds | runs reused | source |",
             "|---|---|---|---|---|"]
    for job in jobs:
        detail = job.detail.splitlines()[0] if job.ok else job.detail.splitlines()[-1]
        lines.append(f"| {job.name} | {'ok' if job.ok else 'FAILED'} | {job.seconds:.0f} | {job.reused} | {detail} |")
    for kind, pattern in (("Figures", "figures/*.png"), ("Tables", "tables/*.md")):
        lines += ["", f"## {kind}", ""]
        lines += [f"- [{p.relative_to(root)}]({p.relative_to(root)})" for p in sorted(root.glob(pattern))]
    lines += ["", "## Claims map", "", claims_markdown(root).strip()]
    lines += ["", "## Executed notebooks", ""]
    lines += [f"- [{p.relative_to(root)}]({p.relative_to(root)}) (HTML, no input cells)"
              for p in sorted(root.glob("html/*.html"))]
    lines += ["", "Every figure and table has a `.json` beside it with the config and machine that made it;",
              "the runs themselves are under `runs/` (config.json, metrics.csv, summary.json, logs).",
              "`seconds` is the job's time in the invocation that last ran it; a job that reused finished",
              "runs (same config: `runs reused`) took less than a fresh one (`make artifacts FORCE=1`)."]
    path = root / "INDEX.md"
    path.write_text("\n".join(lines) + "\n")
    return path


CLAIMS_START = "<!-- claims map: generated by `make artifacts` (paso_core.claims) -->"
CLAIMS_END = "<!-- end of claims map -->"
TIMES_START = "<!-- job times: generated by `make artifacts` at default scale -->"
TIMES_END = "<!-- end of job times -->"


def replace_block(readme: Path, start: str, end: str, body: str) -> bool:
    """Replace what stands between the markers ``start`` and ``end`` in ``readme`` with ``body``;
    False when the README has no such block."""
    text = readme.read_text()
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    readme.write_text(f"{head}{start}\n\n{body.strip()}\n\n{end}{rest.split(end, 1)[1]}")
    return True


def update_readme_claims(readme: Path, root: Path) -> bool:
    """The README's claims map, computed from ``root``'s artifacts."""
    return replace_block(readme, CLAIMS_START, CLAIMS_END, claims_markdown(root))


def times_markdown(jobs: list[JobResult]) -> str:
    """Each job's measured seconds (as the index records them) and the total, for the README."""
    lines = ["| job | minutes | runs reused |", "|---|---|---|"]
    lines += [f"| {j.name} | {j.seconds / 60:.1f} | {j.reused} |" for j in jobs]
    total = sum(j.seconds for j in jobs)
    return "\n".join(lines + [f"| **all** | **{total / 60:.0f}** | |"])


def readme_times(readme: Path) -> list[JobResult]:
    """The rows of the README's job-time table (minutes back to seconds); [] without one."""
    text = readme.read_text()
    if TIMES_START not in text or TIMES_END not in text:
        return []
    jobs = []
    for line in text.split(TIMES_START, 1)[1].split(TIMES_END, 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in NOTEBOOKS + tuple(BENCHMARKS):
            jobs.append(JobResult(cells[0], True, float(cells[1]) * 60, "", int(cells[2]) if cells[2].isdigit() else 0))
    return jobs


def update_readme_times(readme: Path, jobs: list[JobResult]) -> list[str]:
    """Put into the README's job-time table the jobs of ``jobs`` that ran afresh (ok, and reusing
    no run older than this invocation); every other row keeps the time it was measured with,
    since a job that reused older runs took less than it costs. The names of the rows replaced."""
    fresh = [job for job in jobs if job.ok and job.reused_earlier == 0]
    if fresh and replace_block(readme, TIMES_START, TIMES_END, times_markdown(merged_jobs(readme_times(readme), fresh))):
        return [job.name for job in fresh]
    return []


def output_root(scale: str) -> Path:
    """Where a reproduce-all writes: ``$PASO_ARTIFACTS`` if set, else the checkout's
    ``artifacts/``, except that a smoke run goes to ``artifacts/smoke/`` (git-ignored), so a
    kick-the-tires run never overwrites the committed default-scale artifacts (several tables
    and every benchmark keep one name across scales)."""
    root = artifacts_root()
    return root / "smoke" if scale == "smoke" and not os.environ.get("PASO_ARTIFACTS") else root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=SCALES, default="default")
    parser.add_argument("--only", nargs="*", default=None,
                        help=f"jobs to run (default all): {', '.join(NOTEBOOKS + tuple(BENCHMARKS))}")
    parser.add_argument("--force", action="store_true",
                        help="rerun every run made before this invocation (default: reuse finished runs "
                             "whose config and code are the same)")
    args = parser.parse_args(argv)
    root = output_root(args.scale)
    wanted = set(args.only) if args.only else set(NOTEBOOKS) | set(BENCHMARKS)
    unknown = wanted - set(NOTEBOOKS) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown job(s) {sorted(unknown)}; choose from {', '.join(NOTEBOOKS + tuple(BENCHMARKS))}")
    os.environ["PASO_ARTIFACTS"] = str(root)  # the notebooks' kernels and the benchmarks write there too
    root.mkdir(parents=True, exist_ok=True)
    started = time.time()
    os.environ[REUSE_ENV] = "1"  # inherited by the notebooks' kernels and the benchmarks
    if args.force:  # rerun everything, but jobs still share the runs made in this invocation
        os.environ[REUSE_SINCE_ENV] = repr(started)
    else:
        os.environ.pop(REUSE_SINCE_ENV, None)
    reuse_log = root / ".reused_runs"
    jobs: list[JobResult] = []
    if "engine_canary" in wanted:
        print("[reproduce] engine canary (every method's first step vs serial) ...", flush=True)
        jobs.append(counting_reuse(lambda: run_benchmark("engine_canary", args.scale, root), reuse_log, started))
        print(f"[reproduce]   {'ok' if jobs[-1].ok else 'FAILED'} in {jobs[-1].seconds:.0f}s", flush=True)
    for name in NOTEBOOKS:
        if name in wanted:
            print(f"[reproduce] notebook {name} (scale={args.scale}) ...", flush=True)
            jobs.append(counting_reuse(lambda: run_notebook(name, args.scale, root / "notebooks"), reuse_log, started))
            print(f"[reproduce]   {'ok' if jobs[-1].ok else 'FAILED'} in {jobs[-1].seconds:.0f}s"
                  f" ({jobs[-1].reused} run(s) reused)", flush=True)
    for name in BENCHMARKS:
        if name in wanted and name != "engine_canary":
            print(f"[reproduce] benchmark {name} ...", flush=True)
            jobs.append(counting_reuse(lambda: run_benchmark(name, args.scale, root), reuse_log, started))
            print(f"[reproduce]   {'ok' if jobs[-1].ok else 'FAILED'} in {jobs[-1].seconds:.0f}s"
                  f" ({jobs[-1].reused} run(s) reused)", flush=True)
    index = write_index(root, args.scale, jobs)
    print(f"[reproduce] index: {index}")
    if root.resolve() == (REPO / "artifacts").resolve() and update_readme_claims(REPO / "README.md", root):
        print("[reproduce] README.md: claims map updated from the artifacts")
    if root.resolve() == (REPO / "artifacts").resolve() and args.scale == "default":
        updated = update_readme_times(REPO / "README.md", jobs)
        if updated:
            print(f"[reproduce] README.md: job times of {', '.join(updated)} (ran afresh) updated")
    for job in jobs:
        if not job.ok:
            print(f"[reproduce] {job.name} FAILED:\n{job.detail}", file=sys.stderr)
    return 0 if all(job.ok for job in jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
