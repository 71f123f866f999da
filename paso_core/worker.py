"""Entry point of one torchrun worker: join the group, build the task, run the method.

``python -m paso_core.worker <run_dir>/config.json`` is what the launcher starts under
torchrun. Failures are written to ``logs/rank<r>.failure.json`` before the process exits
so the launcher can name the rank and show its log tail instead of hanging.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .config import RunConfig
from .context import NonFiniteLoss, StopRequested, WorkerContext
from .distributed import Comm, init_process_group, peak_memory_mb, pick_device, set_threads
from .provenance import provenance
from .runs import jsonl_to_csv
from .tasks import build_task


def _logger(run_dir: Path, rank: int) -> logging.Logger:
    log = logging.getLogger(f"paso_core.rank{rank}")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.FileHandler(run_dir / "logs" / f"rank{rank}.log", mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s rank%(rank)s %(levelname)s %(message)s".replace(
        "%(rank)s", str(rank))))
    log.addHandler(handler)
    return log


def _write_failure(run_dir: Path, rank: int, kind: str, message: str) -> None:
    record = {"rank": rank, "kind": kind, "message": message, "time": time.time()}
    (run_dir / "logs" / f"rank{rank}.failure.json").write_text(json.dumps(record))


def inject_fault(ctx: WorkerContext) -> None:
    """Test hook: ``inject_fault={"rank": r, "kind": "raise"|"exit"|"hang"}`` (a validated option).

    Lets the test suite prove that a crashed or stalled worker is reported with its rank
    and log tail instead of hanging the launcher.
    """
    fault = ctx.cfg.inject_fault
    if not fault or int(fault.get("rank", -1)) != ctx.rank:
        return
    kind = fault.get("kind", "raise")
    ctx.log.info("injecting fault %r", kind)
    if kind == "raise":
        raise RuntimeError(f"injected failure on rank {ctx.rank}")
    if kind == "exit":
        for handler in ctx.log.handlers:
            handler.flush()
        os._exit(3)
    if kind == "hang":
        time.sleep(3600)


def warm_up_lazy_imports() -> None:
    """Pay torch's one-off lazy imports (about 4 s on the first ``optimizer.step()``) before
    the clock starts, so wall times compare methods rather than import order."""
    param = torch.nn.Parameter(torch.zeros(1))
    param.grad = torch.zeros(1)
    torch.optim.Adam([param]).step()


def run_method(ctx: WorkerContext) -> dict[str, Any]:
    """Build the task and hand it to the method module ``paso_core.methods.<method>``."""
    task = build_task(ctx.cfg, ctx.device)
    inject_fault(ctx)
    ctx.log.info("task: %s", json.dumps(task.describe(), default=str))
    method = importlib.import_module(f"paso_core.methods.{ctx.cfg.method}")
    summary = method.train(ctx, task)
    summary["task_info"] = task.describe()
    return summary


def _finish_summary(ctx: WorkerContext, summary: dict[str, Any], status: str) -> dict[str, Any]:
    """Add the per-rank peak memory and bytes sent, gathered from every rank."""
    mem = peak_memory_mb(ctx.device)
    mem["baseline_rss_mb"] = ctx.baseline_rss_mb
    keys = sorted(mem)
    gathered = ctx.comm.all_gather_floats([float(ctx.comm.bytes_sent)] + [mem[k] for k in keys])
    summary.update({
        "status": status,
        "method": ctx.cfg.method,
        "task": ctx.cfg.task,
        "world_size": ctx.world,
        "device": str(ctx.device),
        "torch_version": torch.__version__,
        "provenance": provenance(ctx.world, torch.get_num_threads()) if ctx.is_main else None,
        "wall_time_s": time.perf_counter() - ctx.started,
        "bytes_sent_per_rank": [int(v) for v in gathered[:, 0].tolist()],
    })
    for i, key in enumerate(keys):
        summary[f"{key}_per_rank"] = gathered[:, i + 1].tolist()
        summary[f"{key}_max"] = float(gathered[:, i + 1].max())
    return summary


def main(config_path: str) -> int:
    cfg = RunConfig.from_json(config_path)
    run_dir = Path(config_path).parent
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    log = _logger(run_dir, rank)
    ctx: WorkerContext | None = None
    try:
        device = pick_device(cfg, local_rank)
        threads = set_threads(cfg, local_world)
        init_process_group(cfg, device)
        world = dist.get_world_size()
        warm_up_lazy_imports()
        log.info("started: world=%d device=%s threads=%d torch=%s", world, device, threads, torch.__version__)
        ctx = WorkerContext(cfg=cfg, rank=rank, world=world, local_rank=local_rank, device=device,
                            comm=Comm(rank, world, device), run_dir=run_dir, log=log,
                            baseline_rss_mb=peak_memory_mb(device)["peak_rss_mb"])
        try:
            summary, status = run_method(ctx), "completed"
        except StopRequested as stop:
            log.info("%s", stop)
            summary, status = {"stopped_at": str(stop)}, "stopped"
        summary = _finish_summary(ctx, summary, status)
        if ctx.is_main:
            ctx.close_metrics()
            jsonl_to_csv(run_dir)
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        log.info("finished: %s", status)
        dist.destroy_process_group()
        return 0
    except NonFiniteLoss as err:
        log.error("%s", err)
        _write_failure(run_dir, rank, "nonfinite", str(err))
    except BaseException as err:  # noqa: BLE001 - every failure must be reported, then re-raised
        log.error("failed:\n%s", traceback.format_exc())
        _write_failure(run_dir, rank, type(err).__name__, f"{type(err).__name__}: {err}")
    if ctx is not None and ctx.is_main:
        ctx.close_metrics()
        jsonl_to_csv(run_dir)
    logging.shutdown()
    return 1


def exit_now(code: int) -> None:
    """Leave without running C++ static destructors: after the group is destroyed and every
    file is written, gloo/NCCL teardown at interpreter exit can still abort (SIGABRT) and
    would turn a completed run into a reported crash."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main(sys.argv[1]))
