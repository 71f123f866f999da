"""GPU check: every method once on the visible GPUs, PASO's exactness, one canary per engine.

Usage: ``python benchmarks/gpu_check.py --out artifacts`` (``make gpu-check``) on a CUDA machine;
a few minutes. Writes ``tables/gpu_check.{csv,md,json}`` with the device names and timings.

Why: the test suite runs on CPU/gloo only; the CUDA/NCCL path (one GPU per rank, NCCL
collectives, cuDNN kernels) must be checked on the hardware it claims. Every case of the
engine canary (``benchmarks/engine_canary.py``: one SGD step with lr 1, so the weights move by
exactly the first gradient) runs with its world size when that many GPUs are visible, and PASO
with the window's positions placed on the GPUs there are (one GPU: the seed's single-device
mode, all positions on one worker). The reference is serial training launched on the same
device (CPU-vs-GPU kernels round differently), and PASO with threshold 0 over several windows
must end bit for bit where serial does (deterministic cuDNN, no TF32:
``paso_core.distributed.exact_cuda_kernels``). ``--allow-cpu`` runs the same script on
CPU/gloo, which is how it is tested without a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_canary  # noqa: E402  (the canary's cases, shared)

from paso_core import report  # noqa: E402
from paso_core.config import RunConfig, validate  # noqa: E402
from paso_core.equivalence import CANARY_RTOL, EXACT, Case, _serial_options, canary_case, compare, passes  # noqa: E402
from paso_core.launch import launch_grouped  # noqa: E402
from paso_core.tasks import build_task  # noqa: E402

#: PASO over several windows with threshold 0: only exact iterates accepted, so it must end on
#: serial training's weights bit for bit on any device (the CUDA exactness check)
EXACTNESS = dict(method="paso", task="vision", dataset="digits", model="cnn", batch_size=32, steps=12, P=4,
                 optimizer="adam", lr=1e-3, threshold=0.0, ema_decay=1.0, seed=0)


def largest_divisor(P: int, workers: int) -> int:
    """The most workers (at most ``workers``) that share ``P`` window positions evenly."""
    return max(n for n in range(1, P + 1) if P % n == 0 and n <= workers)


def plan(workers: int, methods: list[str] | None, task: str) -> tuple[list[Case], list[tuple[str, str]]]:
    """The cases that fit on ``workers`` devices, and (case, reason) for those that do not."""
    shared = {"task": task, "batch_size": 32, "seed": 0}
    text = {"task": "text", "model": "llama-tiny", "block_size": 32, "batch_size": 8, "seed": 0, "eval_test": False}
    digits = {"task": "vision", "dataset": "digits", "model": "cnn", "batch_size": 32, "seed": 0, "stages": 2,
              "nproc": 2}
    wanted = [(m, shared, dict(o)) for m, o in engine_canary.METHOD_OPTIONS.items()]
    wanted += [(m, text, dict(o)) for m, o in engine_canary.INTRA_STEP_OPTIONS.items()]
    wanted += [(m, digits, dict(o)) for m, o in engine_canary.ASYNC_OPTIONS.items()]
    cases, skipped = [], []
    for method, base, options in wanted:
        if methods and method not in methods:
            continue
        if method == "paso":  # the window on the GPUs there are: one GPU holds every position
            options = {"P": 4, "nproc": largest_divisor(4, workers)}
        world = options.get("nproc", base.get("nproc", 1))
        if world > workers:
            skipped.append((f"canary-{method}", f"needs {world} devices, {workers} visible"))
            continue
        cases.append(canary_case(method, CANARY_RTOL, **{**base, **options}))
    if not methods or "paso" in methods:
        cases.append(Case("exact-paso", {**EXACTNESS, "nproc": largest_divisor(EXACTNESS["P"], workers)}, EXACT,
                          note="threshold 0 over 3 windows: bitwise serial"))
    return cases, skipped


def serial_config(cfg: RunConfig, root: Path) -> RunConfig:
    """Serial training with ``cfg``'s task, model, data and optimizer, on the same device."""
    options = {**_serial_options(cfg), "progress": False, "threads_per_worker": 1, "log_every": 1}
    key = abs(hash(json.dumps(options, sort_keys=True, default=str)))
    return validate(RunConfig.from_dict({**options, "out_dir": str(root / f"serial-{key:x}")}))


def device_names(device: str) -> str:
    if device == "cuda":
        return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return f"CPU ({platform.processor() or platform.machine()})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="artifacts directory (default: the checkout's)")
    parser.add_argument("--allow-cpu", action="store_true", help="run on CPU/gloo when no GPU is visible (tests)")
    parser.add_argument("--workers", type=int, default=None, help="devices to use (default: every visible GPU)")
    parser.add_argument("--methods", nargs="*", default=None, help="only these methods (default: every canary)")
    parser.add_argument("--task", default="vision", choices=("synthetic", "vision"))
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers={args.workers} is not valid: give a positive number of devices (default: every "
                     "visible GPU)")
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        parser.error("no CUDA device is visible (torch.cuda.is_available() is False); run this on a GPU machine, "
                     "or pass --allow-cpu to exercise the script on CPU/gloo")
    device = "cuda" if cuda else "cpu"
    workers = args.workers or (torch.cuda.device_count() if cuda else 2)
    cases, skipped = plan(workers, args.methods, args.task)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        configs = [validate(RunConfig.from_dict({**c.config(root).to_dict(), "device": device})) for c in cases]
        serials = {c.name: serial_config(cfg, root) for c, cfg in zip(cases, configs)}
        unique = list({s.out_dir: s for s in serials.values()}.values())
        results = launch_grouped(unique + configs)  # the serial references run on the same device
        by_dir = {str(r.path): r for r in results}
        rows = []
        for case, cfg in zip(cases, configs):
            result = by_dir[str(Path(cfg.out_dir).resolve())]
            reference = by_dir[str(Path(serials[case.name].out_dir).resolve())]
            initial = build_task(cfg, torch.device("cpu")).build_model().state_dict()
            errors = compare(initial, torch.load(reference.path / "final.pt", weights_only=True),
                             torch.load(result.path / "final.pt", weights_only=True))
            rows.append({"case": case.name, "method": cfg.method, "workers": cfg.world_size,
                         "rtol": case.rtol, **errors, "passed": passes(case, errors, result.summary),
                         "seconds": result.summary.get("wall_time_s"), "device": result.summary.get("device"),
                         "note": case.note})
    import pandas as pd

    table = pd.DataFrame(rows + [{"case": name, "passed": None, "note": why} for name, why in skipped])
    config = {"script": "benchmarks/gpu_check.py", **vars(args), "device": device, "devices": device_names(device),
              "workers": workers, "torch": torch.__version__,
              "cuda": torch.version.cuda, "seconds": time.perf_counter() - started}
    root_out = Path(args.out) / "tables" if args.out else None
    report.save_table(table, "gpu_check", config, root=root_out,
                      md_columns=["case", "method", "workers", "rel_displacement_err", "max_abs_diff", "passed",
                                  "seconds", "note"],
                      title=f"GPU check on {device_names(device)} (torch {torch.__version__}, {workers} device(s))",
                      notes="Each engine's first step (lr 1) against serial training launched on the same device "
                            f"(`rel_displacement_err` <= {CANARY_RTOL:g}); `exact-paso`: threshold 0 over several "
                            "windows, bit for bit. Cases needing more devices than visible are listed, not run. "
                            f"Whole check: {config['seconds']:.0f} s.")
    print(table.to_string(index=False))
    failed = table[table["passed"].eq(False)]
    if not failed.empty:
        print(f"gpu check FAILED for: {', '.join(failed['case'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
