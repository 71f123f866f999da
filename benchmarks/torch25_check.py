"""Stack check: which engines are reliable on this torch, from the engine canary run case by case.

Usage: ``python benchmarks/torch25_check.py --out DIR [--task vision|synthetic]`` (``make test-torch25``
runs it in a venv with the Docker image's stack, ``constraints/torch25.txt``). Writes
``DIR/tables/torch25_check.{csv,md,json}``.

Why: the Docker image and ``environment.yml`` pin the seeds' stack (torch 2.5.1), while the CPU/gloo
path is developed on a much newer torch; some engines are known not to import, to be wrong or to hang
before a given release (``KNOWN_BROKEN``: FSDP2 before 2.6 anywhere; on CPU/gloo FSDP2 before 2.9
and pipelining before 2.10, /work/shared/notes/strategies.md's torch-version table).
``benchmarks/engine_canary.py`` stops at the first bad option and reports one table; this script
runs the same cases (one SGD step with lr 1 against serial ``torch.optim``) but keeps going past a
refusal, a crash or a hang, so every engine gets a verdict:

- ``reliable``: its first step matches serial training;
- ``known broken``: it did not, and it is listed as broken on this torch and device (expected);
- ``reliable (listed broken)``: listed, yet it matched (worth a look: the list may be stale);
- ``FAIL``: it did not, and nothing says it should not work -- a real failure.

Exit status 0 when no case is ``FAIL``, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_canary  # noqa: E402  (the canary's cases, shared)

from paso_core import report  # noqa: E402
from paso_core.equivalence import CANARY_RTOL, Case, _reference, canary_case, result_row  # noqa: E402
from paso_core.launch import RunInterrupted, launch_all  # noqa: E402
from paso_core.options import ConfigError  # noqa: E402

#: (methods, first good torch release, devices, why): below that release, on those devices, these
#: engines fail to import, error, hang or compute something else.
KNOWN_BROKEN: tuple[tuple[tuple[str, ...], tuple[int, int], tuple[str, ...], str], ...] = (
    (("fsdp2", "fsdp2_tp"), (2, 9), ("cpu",),
     "FSDP2 fully_shard on CPU/gloo before torch 2.9: stops with 'FSDP requires CUDA for streams' (2.5-2.6) "
     "or returns gradients x world size silently (2.7-2.8, pytorch issue 162338); paso_core refuses it there "
     "(sharding.fsdp2_cpu_problem). On CUDA, torch 2.5 runs it from torch.distributed._composable.fsdp"),
    (("pp", "model_parallel"), (2, 10), ("cpu",),
     "torch.distributed.pipelining on CPU/gloo before torch 2.10: micro-batch gradients summed (2.6), "
     "1F1B hangs (<2.8), gloo aborts (2.9.1); paso_core refuses it there (pipeline/stages.py)"),
)
VERDICTS = ("reliable", "known broken", "reliable (listed broken)", "FAIL")
#: What the Markdown shows (the CSV has every column).
MD_COLUMNS = ["case", "method", "world_size", "status", "rel_displacement_err", "loss_rel_err", "seconds",
              "verdict", "why"]


def release(version: str) -> tuple[int, int]:
    """``'2.5.1+cu124'`` -> ``(2, 5)``."""
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def known_broken(method: str, torch_version: str, device: str = "cpu") -> str | None:
    """Why ``method`` is not expected to work on this torch and device (None when it is)."""
    for methods, fixed_in, devices, why in KNOWN_BROKEN:
        if method in methods and device in devices and release(torch_version) < fixed_in:
            return why
    return None


def verdict(status: str, known: str | None) -> str:
    """A case's verdict from its ``status`` (pass / differs / refused / error) and whether it is listed."""
    if status not in ("pass", "differs", "refused", "error"):
        raise ValueError(f"unknown status {status!r}")
    if status == "pass":
        return "reliable (listed broken)" if known else "reliable"
    return "known broken" if known else "FAIL"


def cases_for(task: str, batch_size: int, rtol: float, stall_timeout_s: float,
              methods: Sequence[str] | None = None) -> list[Case]:
    """The engine canary's cases (``benchmarks/engine_canary.py``), each launch bounded by
    ``stall_timeout_s`` of silence so a hanging engine is reported, not waited for."""
    shared = {"task": task, "batch_size": batch_size, "seed": 0}
    text = {"task": "text", "model": "llama-tiny", "block_size": 32, "batch_size": 8, "seed": 0, "eval_test": False}
    digits = {"task": "vision", "dataset": "digits", "model": "cnn", "batch_size": batch_size, "seed": 0,
              "stages": 2, "nproc": 2}
    bound = {"stall_timeout_s": stall_timeout_s, "collective_timeout_s": stall_timeout_s}
    wanted = [(m, shared, o) for m, o in engine_canary.METHOD_OPTIONS.items()]
    wanted += [(m, text, o) for m, o in engine_canary.INTRA_STEP_OPTIONS.items()]
    wanted += [(m, digits, o) for m, o in engine_canary.ASYNC_OPTIONS.items()]
    return [canary_case(m, rtol, **base, **opts, **bound) for m, base, opts in wanted if not methods or m in methods]


def _short(error: BaseException, limit: int = 300) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return (text[:limit] + "...") if len(text) > limit else text


def run_cases(cases: Sequence[Case], root: Path) -> list[dict[str, Any]]:
    """Each case's row: refused before launch, or run (cases of one world size share a launch;
    when that launch fails, its cases run one by one so the failure is pinned on the right one)."""
    rows: dict[str, dict[str, Any]] = {}
    configs = {}
    for case in cases:
        try:
            configs[case.name] = case.config(root / "shared")
        except ConfigError as error:
            rows[case.name] = {"status": "refused", "detail": _short(error)}
    by_world: dict[int, list[Case]] = {}
    for case in cases:
        if case.name in configs:
            by_world.setdefault(configs[case.name].world_size, []).append(case)
    references: dict[str, Any] = {}

    def compared(case: Case, cfg: Any, result: Any, seconds: float) -> dict[str, Any]:
        try:
            row = result_row(case, cfg, result, _reference(cfg, references))
        except Exception as error:  # the in-process serial reference or the comparison failed
            return {"status": "error", "detail": f"comparing with serial: {_short(error)}", "seconds": seconds}
        return {**row, "status": "pass" if row["passed"] else "differs", "detail": "", "seconds": seconds}

    for world, group in sorted(by_world.items()):
        started = time.perf_counter()
        try:
            results = launch_all([configs[c.name] for c in group])
        except RunInterrupted:
            raise
        except Exception as error:
            print(f"[torch25_check] the launch of {len(group)} case(s) of world size {world} failed "
                  f"({_short(error, 120)}); running them one by one", file=sys.stderr, flush=True)
            for case in group:
                cfg = case.config(root / "single")
                started = time.perf_counter()
                try:
                    result = launch_all([cfg])[0]
                except RunInterrupted:
                    raise
                except Exception as single:
                    rows[case.name] = {"status": "error", "detail": _short(single),
                                       "seconds": time.perf_counter() - started}
                    continue
                rows[case.name] = compared(case, cfg, result, time.perf_counter() - started)
            continue
        seconds = (time.perf_counter() - started) / len(group)
        for case, result in zip(group, results):
            rows[case.name] = compared(case, configs[case.name], result, seconds)
    return [{"case": c.name, "method": c.options["method"], **rows[c.name]} for c in cases]


def classify(rows: Sequence[dict[str, Any]], torch_version: str, device: str = "cpu") -> "Any":
    """The report frame: every row with its ``known`` reason, ``verdict`` and ``why`` (the
    reason it is listed, else what went wrong)."""
    import pandas as pd

    out = []
    for row in rows:
        known = known_broken(row["method"], torch_version, device)
        detail = row.get("detail") or ""
        if row["status"] == "differs" and not detail:
            detail = (f"first step differs from serial: relative error {row['rel_displacement_err']:.3g} "
                      f"(bound {row['rtol']:g}), loss {row['loss_rel_err']:.3g}")
        why = f"{known}. Here: {detail}" if known and detail else (known or detail)
        out.append({**row, "known_broken": known or "", "verdict": verdict(row["status"], known), "why": why})
    table = pd.DataFrame(out)
    for column in ("world_size", "rel_displacement_err", "loss_rel_err", "seconds"):
        if column not in table:
            table[column] = float("nan")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None,
                        help="artifacts directory (default: a new temporary directory, printed)")
    parser.add_argument("--task", default="vision", choices=("synthetic", "vision"),
                        help="task of the data-parallel and step-parallel canaries")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rtol", type=float, default=CANARY_RTOL)
    parser.add_argument("--stall-timeout", type=float, default=180.0,
                        help="seconds of silence after which a launch is killed and its engine reported")
    parser.add_argument("--methods", nargs="*", default=None, help="only these methods (default: every canary)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="torch25_check-"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cases = cases_for(args.task, args.batch_size, args.rtol, args.stall_timeout, args.methods)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_cases(cases, Path(tmp))
    seconds = time.perf_counter() - started
    table = classify(rows, torch.__version__, device)
    counts = table["verdict"].value_counts()
    import transformers

    stack = f"torch {torch.__version__}, transformers {transformers.__version__}, {device}"
    notes = (f"Stack: {stack}. Each engine's first step (one SGD step, lr 1; PASO one window) against serial "
             f"torch.optim (`rel_displacement_err` <= {args.rtol:g}, last loss too), as in engine_canary.py, but "
             f"case by case past refusals, crashes and hangs (>{args.stall_timeout:g} s silent). `known broken`: "
             f"listed in torch25_check.KNOWN_BROKEN for this torch on {device} (expected, not a failure of the "
             "stack); `FAIL`: anything else that does not match serial. "
             + ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS) + f"; {seconds:.0f} s in all.")
    report.save_table(table.drop(columns=["path", "note"], errors="ignore"), "torch25_check",
                      {"script": "benchmarks/torch25_check.py", **vars(args), "torch": torch.__version__,
                       "transformers": transformers.__version__, "device": device, "seconds": seconds},
                      root=out / "tables", title=f"Engines on {stack}", notes=notes, md_columns=MD_COLUMNS)
    print(table[["case", "status", "rel_displacement_err", "verdict"]].to_string(index=False))
    print(f"[torch25_check] {stack}: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS)
          + f" ({seconds:.0f} s); table: {out / 'tables' / 'torch25_check.md'}")
    failed = table[table["verdict"] == "FAIL"]
    if not failed.empty:
        print(f"torch25 check FAILED for: {', '.join(failed['case'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
