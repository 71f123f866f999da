"""Entry point of one torchrun worker: join the group, build the task, run the method.

``python -m paso_core.worker <run_dir>/config.json [<run_dir2>/config.json ...]`` is what
the launcher starts under torchrun (several configs share one launch). Failures are written to ``logs/rank<r>.failure.json`` before the process exits
so the launcher can name the rank and show its log tail instead of hanging.
"""

from __future__ import annotations

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
from .methods import get_method
from .parallel import build_mesh
from .provenance import provenance
from .runs import jsonl_to_csv
from .tasks import build_task
from .tasks.base import Task


def _logger(run_dir: Path, rank: int) -> logging.Logger:
    log = logging.getLogger(f"paso_core.rank{rank}")
    log.setLevel(logging.INFO)
    log.propagate = False
    for previous in list(log.handlers):  # the previous run of a shared launch
        log.removeHandler(previous)
        previous.close()
    handler = logging.FileHandler(run_dir / "logs" / f"rank{rank}.log", mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s rank%(rank)s %(levelname)s %(message)s".replace(
        "%(rank)s", str(rank))))
    log.addHandler(handler)
    return log


def _write_failure(run_dir: Path, rank: int, kind: str, message: str) -> None:
    record = {"rank": rank, "kind": kind, "message": message, "time": time.time()}
    (run_dir / "logs" / f"rank{rank}.failure.json").write_text(json.dumps(record))


#: Seconds added to every communication call of the rank given ``inject_fault`` kind 'slow_comm'.
SLOW_COMM_S = 0.02


def inject_fault(ctx: WorkerContext, task: Task) -> None:
    """Test hook: ``inject_fault={"rank": r, "kind": k}`` (a validated option) on rank ``r``.

    Lets the test suite prove that a crashed or stalled worker is reported with its rank and
    log tail instead of hanging the launcher (``raise``, ``exit``, ``hang``), that the engine
    canary catches an engine computing wrong gradients (``wrong_grads``: this rank's gradients
    doubled before any synchronisation) and that communication is timed apart from compute
    (``slow_comm``: every metered call of this rank takes :data:`SLOW_COMM_S` longer).
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
    if kind == "wrong_grads":
        _double_gradients(task)
    if kind == "slow_comm":
        ctx.comm.meter.delay_s = SLOW_COMM_S


def _double_gradients(task: Task) -> None:
    """Every model the task builds from now on gets twice its true gradients (a hook on each
    trainable parameter, so it acts before any engine's synchronisation)."""
    build = task.build_model

    def build_model() -> torch.nn.Module:
        model = build()
        for p in model.parameters():
            if p.requires_grad:
                p.register_hook(lambda grad: grad * 2)
        return model

    task.build_model = build_model  # type: ignore[method-assign]


def warm_up_lazy_imports() -> None:
    """Pay torch's one-off lazy imports (about 4 s on the first ``optimizer.step()``) before
    the clock starts, so wall times compare methods rather than import order."""
    param = torch.nn.Parameter(torch.zeros(1))
    param.grad = torch.zeros(1)
    torch.optim.Adam([param]).step()


def run_method(ctx: WorkerContext) -> dict[str, Any]:
    """Build the task and hand it to the registered method's ``train``."""
    task = build_task(ctx.cfg, ctx.device)
    ctx.items_per_step = task.items_per_step()
    inject_fault(ctx, task)
    ctx.log.info("task: %s", json.dumps(task.describe(), default=str))
    summary = get_method(ctx.cfg.method).train(ctx, task)
    summary["task_info"] = task.describe()
    return summary


def _finish_summary(ctx: WorkerContext, summary: dict[str, Any], status: str) -> dict[str, Any]:
    """Add the per-rank peak memory and bytes sent (measured, modelled), gathered from every rank."""
    mem = peak_memory_mb(ctx.device)
    mem["baseline_rss_mb"] = ctx.baseline_rss_mb
    keys = sorted(mem)
    meter = ctx.comm.meter
    gathered = ctx.comm.all_gather_floats([float(meter.total), float(meter.measured), float(meter.modelled)]
                                          + [mem[k] for k in keys])
    summary.update({
        "status": status,
        "method": ctx.cfg.method,
        "task": ctx.cfg.task,
        "world_size": ctx.world,
        "device": str(ctx.device),
        "torch_version": torch.__version__,
        "provenance": provenance(ctx.world, torch.get_num_threads()) if ctx.is_main else None,
        "wall_time_s": time.perf_counter() - ctx.started,
        "parallel": ctx.dims.describe(),
        "log_rank": ctx.log_rank,
        "train_time_s": ctx.train_time_s,
        "bytes_iter_max": ctx.bytes_iter_max,
        "bytes_sent_per_rank": [int(v) for v in gathered[:, 0].tolist()],
        "bytes_measured_per_rank": [int(v) for v in gathered[:, 1].tolist()],
        "bytes_modelled_per_rank": [int(v) for v in gathered[:, 2].tolist()],
    })
    for i, key in enumerate(keys):
        summary[f"{key}_per_rank"] = gathered[:, i + 3].tolist()
        summary[f"{key}_max"] = float(gathered[:, i + 3].max())
    return summary


def run_one(cfg: RunConfig, run_dir: Path, rank: int, local_rank: int, device: torch.device) -> int:
    """One run inside an initialised process group: mesh, context, method, summary.

    Returns 0 when it completed or stopped as asked, 1 after writing this rank's failure record.
    """
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    log = _logger(run_dir, rank)
    ctx: WorkerContext | None = None
    try:
        world = dist.get_world_size()
        dims = get_method(cfg.method).dims(cfg)
        dims.check_world(world)
        mesh = build_mesh(dims, device.type)
        log.info("started: world=%d device=%s threads=%d torch=%s mesh=%s", world, device,
                 torch.get_num_threads(), torch.__version__, dims.describe())
        ctx = WorkerContext(cfg=cfg, rank=rank, world=world, local_rank=local_rank, device=device,
                            comm=Comm(rank, world, device), run_dir=run_dir, log=log, dims=dims, mesh=mesh,
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
    return 1


def main(config_paths: list[str]) -> int:
    """Join the group once, then run every config in order (they share the launch); stop at
    the first failure, since a failed collective leaves the group unusable."""
    cfgs = [RunConfig.from_json(path) for path in config_paths]
    run_dirs = [Path(path).parent for path in config_paths]
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    try:
        device = pick_device(cfgs[0], local_rank)
        set_threads(cfgs[0], local_world)
        init_process_group(cfgs[0], device)
        warm_up_lazy_imports()
    except BaseException as err:  # noqa: BLE001 - reported in the first run's directory
        (run_dirs[0] / "logs").mkdir(parents=True, exist_ok=True)
        _logger(run_dirs[0], rank).error("failed to start:\n%s", traceback.format_exc())
        _write_failure(run_dirs[0], rank, type(err).__name__, f"{type(err).__name__}: {err}")
        logging.shutdown()
        return 1
    for cfg, run_dir in zip(cfgs, run_dirs):
        if run_one(cfg, run_dir, rank, local_rank, device):
            logging.shutdown()
            return 1
    dist.destroy_process_group()
    return 0


def exit_now(code: int) -> None:
    """Leave without running C++ static destructors: after the group is destroyed and every
    file is written, gloo/NCCL teardown at interpreter exit can still abort (SIGABRT) and
    would turn a completed run into a reported crash."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main(sys.argv[1:]))
