"""The thin launcher: validate, write the run directory, start torchrun, follow progress.

Failures come back as :class:`WorkerFailed` naming the rank and the tail of its log; a
run that prints nothing for ``stall_timeout_s`` is killed and reported as stalled, so a
notebook never hangs on a lost collective.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .config import RunConfig, validate
from .context import PROGRESS_TAG
from .runs import RunResult, jsonl_to_csv, load_run, run_dir_for


class RunError(RuntimeError):
    """A run did not complete; ``path`` holds whatever it wrote before stopping."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


class WorkerFailed(RunError):
    def __init__(self, message: str, path: Path, rank: int | None, kind: str, log_tail: str) -> None:
        super().__init__(message, path)
        self.rank, self.kind, self.log_tail = rank, kind, log_tail


class NonFiniteLossError(WorkerFailed):
    """The loss became NaN/inf; metrics up to that point are in ``path``."""


def torchrun_command(cfg: RunConfig, config_path: Path) -> list[str]:
    """The ``torch.distributed.run`` command line for this config (multi-node passed through)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={cfg.nproc}",
           f"--nnodes={cfg.nnodes}", "--max-restarts=0", "--monitor-interval=0.5"]
    if cfg.nnodes == 1 and not cfg.rdzv_endpoint:
        cmd.append("--standalone")
    else:
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={cfg.rdzv_endpoint}",
                f"--rdzv-id={config_path.parent.name}", f"--node-rank={cfg.node_rank}"]
    return cmd + ["-m", "paso_core.worker", str(config_path)]


def _prepare_run_dir(cfg: RunConfig) -> Path:
    run_dir = run_dir_for(cfg).resolve()
    if run_dir.exists() and not cfg.resume:
        shutil.rmtree(run_dir)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    for stale in (run_dir / "logs").glob("rank*.failure.json"):
        stale.unlink()
    (run_dir / "summary.json").unlink(missing_ok=True)
    cfg.to_json(run_dir / "config.json")
    return run_dir


class _Progress:
    """tqdm bar (terminal or notebook) fed by the progress lines rank 0 prints."""

    def __init__(self, enabled: bool, desc: str) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=None, desc=desc, unit="step", dynamic_ncols=True)

    def update(self, payload: dict[str, Any]) -> None:
        if self.bar is None:
            return
        self.bar.total = payload.get("total")
        self.bar.n = payload.get("done", 0)
        info = {k: v for k, v in payload.items() if k not in ("done", "total")}
        self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in info.items()},
                             refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _follow(proc: subprocess.Popen, log_path: Path, progress: _Progress, last_seen: list[float]) -> None:
    with log_path.open("a") as log:
        assert proc.stdout is not None
        for line in proc.stdout:
            last_seen[0] = time.monotonic()
            if line.startswith(PROGRESS_TAG):
                try:
                    progress.update(json.loads(line[len(PROGRESS_TAG):]))
                except json.JSONDecodeError:
                    pass
                continue
            log.write(line)
            log.flush()


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


_COMM_FALLOUT = re.compile(r"gloo|nccl|connection (closed|reset)|timed out|timeout|DistBackendError", re.I)


def _failure_report(run_dir: Path, returncode: int | None) -> WorkerFailed:
    """Name the rank that caused the failure and show the tail of its log.

    A rank that dies takes its peers down with connection errors; those are fallout, so a
    rank with a real error wins, then the rank torchrun saw fail first, then the rest.
    """
    failures = []
    for path in (run_dir / "logs").glob("rank*.failure.json"):
        try:
            failures.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            continue
    failures.sort(key=lambda f: f["time"])
    real = [f for f in failures if not _COMM_FALLOUT.search(f"{f['kind']} {f['message']}")]
    reported = {f["rank"] for f in failures}
    exits = _torchrun_exits(run_dir / "logs" / "launcher.log")
    # A rank that exited on its own (not torchrun's SIGTERM) without writing a report
    # crashed silently: it is the cause, whatever order torchrun happened to see exits in.
    silent = [(r, code) for r, code in exits if r not in reported and code != _SIGTERM_EXIT]
    if real:
        rank, kind, message = real[0]["rank"], real[0]["kind"], real[0]["message"]
    elif silent:
        (rank, code), kind = silent[0], "crash"
        message = (f"worker exited with code {code} without reporting an error "
                   "(killed, out of memory, or os._exit?)")
    elif failures:
        rank, kind, message = failures[0]["rank"], failures[0]["kind"], failures[0]["message"]
    else:
        rank, kind = (exits[0][0] if exits else None), "crash"
        message = f"torchrun exited with code {returncode} and no worker reported an error"
    log_file = run_dir / "logs" / (f"rank{rank}.log" if rank is not None else "launcher.log")
    tail = _tail(log_file)
    cls = NonFiniteLossError if kind == "nonfinite" else WorkerFailed
    text = f"rank {rank} failed ({kind}): {message}\n--- tail of {log_file.name} ---\n{tail}"
    return cls(text, run_dir, rank, kind, tail)


_SIGTERM_EXIT = -15


def _torchrun_exits(path: Path) -> list[tuple[int, int]]:
    """(rank, exit code) of every failed worker in torchrun's summary, root cause first."""
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    if "Root Cause" in text:
        failures, root = text.rsplit("Root Cause", 1)
        text = root + failures
    pairs = re.findall(r"rank\s*:\s*(\d+).*?\n\s*exitcode\s*:\s*(-?\d+)", text)
    seen: dict[int, int] = {}
    for rank, code in pairs:
        seen.setdefault(int(rank), int(code))
    return list(seen.items())


def launch(cfg: RunConfig) -> RunResult:
    """Validate ``cfg``, run it under torchrun and return its :class:`RunResult`."""
    cfg = validate(cfg)
    run_dir = _prepare_run_dir(cfg)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen(torchrun_command(cfg, run_dir / "config.json"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    progress = _Progress(cfg.progress, f"{cfg.method}/{cfg.task}")
    last_seen = [time.monotonic()]
    reader = threading.Thread(target=_follow, args=(proc, run_dir / "logs" / "launcher.log", progress,
                                                     last_seen), daemon=True)
    reader.start()
    stalled = False
    try:
        while proc.poll() is None:
            time.sleep(0.2)
            if time.monotonic() - last_seen[0] > cfg.stall_timeout_s:
                stalled = True
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)
        raise
    finally:
        reader.join(timeout=5)
        progress.close()
    if stalled:
        jsonl_to_csv(run_dir)
        raise RunError(f"run stalled: no output for {cfg.stall_timeout_s:.0f}s; killed. "
                       f"Partial metrics in {run_dir}\n{_tail(run_dir / 'logs' / 'rank0.log')}", run_dir)
    if proc.returncode != 0:
        jsonl_to_csv(run_dir)
        raise _failure_report(run_dir, proc.returncode)
    return load_run(run_dir)
