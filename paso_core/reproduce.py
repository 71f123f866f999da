"""The main job: execute every notebook and benchmark, and index what they produced.

``python -m paso_core.reproduce --scale default`` (what ``make artifacts`` runs) executes
each notebook with papermill into ``artifacts/notebooks/``, runs the benchmarks, and
writes ``artifacts/INDEX.md`` listing every figure and table with the time each job took.
One failing job does not stop the others; the exit code says whether all succeeded.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .runs import artifacts_root

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("optex_comparison", "cifar_paso", "wikitext_paso", "parallel_strategies", "pipeoptim_curves",
             "qsr_local_sgd")
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


def run_notebook(name: str, scale: str, out_dir: Path) -> JobResult:
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    try:
        papermill.execute_notebook(str(REPO / "notebooks" / f"{name}.ipynb"), str(out_dir / f"{name}.ipynb"),
                                   parameters={"scale": scale}, cwd=str(REPO / "notebooks"),
                                   progress_bar=False, log_output=False)
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
        if len(cells) == 4 and cells[0] in NOTEBOOKS + tuple(BENCHMARKS) and cells[2].isdigit():
            jobs.append(JobResult(cells[0], cells[1] == "ok", float(cells[2]), cells[3]))
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
    lines = [f"# Artifacts (scale: {scale})", "", "| job | status | seconds | source |", "|---|---|---|---|"]
    for job in jobs:
        detail = job.detail.splitlines()[0] if job.ok else job.detail.splitlines()[-1]
        lines.append(f"| {job.name} | {'ok' if job.ok else 'FAILED'} | {job.seconds:.0f} | {detail} |")
    for kind, pattern in (("Figures", "figures/*.png"), ("Tables", "tables/*.md")):
        lines += ["", f"## {kind}", ""]
        lines += [f"- [{p.relative_to(root)}]({p.relative_to(root)})" for p in sorted(root.glob(pattern))]
    lines += ["", "Every figure and table has a `.json` beside it with the config and machine that made it;",
              "the runs themselves are under `runs/` (config.json, metrics.csv, summary.json, logs)."]
    path = root / "INDEX.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=SCALES, default="default")
    parser.add_argument("--only", nargs="*", default=None,
                        help=f"jobs to run (default all): {', '.join(NOTEBOOKS + tuple(BENCHMARKS))}")
    args = parser.parse_args(argv)
    root = artifacts_root()
    root.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only) if args.only else set(NOTEBOOKS) | set(BENCHMARKS)
    unknown = wanted - set(NOTEBOOKS) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown job(s) {sorted(unknown)}; choose from {', '.join(NOTEBOOKS + tuple(BENCHMARKS))}")
    jobs: list[JobResult] = []
    if "engine_canary" in wanted:
        print("[reproduce] engine canary (every method's first step vs serial) ...", flush=True)
        jobs.append(run_benchmark("engine_canary", args.scale, root))
        print(f"[reproduce]   {'ok' if jobs[-1].ok else 'FAILED'} in {jobs[-1].seconds:.0f}s", flush=True)
    for name in NOTEBOOKS:
        if name in wanted:
            print(f"[reproduce] notebook {name} (scale={args.scale}) ...", flush=True)
            jobs.append(run_notebook(name, args.scale, root / "notebooks"))
            print(f"[reproduce]   {'ok' if jobs[-1].ok else 'FAILED'} in {jobs[-1].seconds:.0f}s", flush=True)
    for name in BENCHMARKS:
        if name in wanted and name != "engine_canary":
            print(f"[reproduce] benchmark {name} ...", flush=True)
            jobs.append(run_benchmark(name, args.scale, root))
            print(f"[reproduce]   {'ok' if jobs[-1].ok else 'FAILED'} in {jobs[-1].seconds:.0f}s", flush=True)
    index = write_index(root, args.scale, jobs)
    print(f"[reproduce] index: {index}")
    for job in jobs:
        if not job.ok:
            print(f"[reproduce] {job.name} FAILED:\n{job.detail}", file=sys.stderr)
    return 0 if all(job.ok for job in jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
