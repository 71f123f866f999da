"""The thin launcher: validate, write the run directory, start torchrun, follow progress.

Failures come back as :class:`WorkerFailed` naming the rank and the tail of its log; a
run that prints nothing for ``stall_timeout_s`` is killed and reported as stalled, so a
notebook never hangs on a lost collective. SIGTERM, SIGHUP or SIGINT sent to the launcher
stop torchrun and every worker, keep the partial run and raise :class:`RunInterrupted`.
"""

from __future__ import annotations

import contextlib
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
from typing import Any, Callable, Iterator, Sequence

from .config import RunConfig, validate
from .options import ConfigError
from .context import PROGRESS_TAG
from .distributed import check_devices
from .provenance import provenance
from .runs import CODE_DIGEST_FILE, REUSE_ENV, REUSE_LOG_ENV, RunResult, code_digest, jsonl_to_csv, load_run, read_metrics_rows, reusable_run, run_dir_for


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


class RunInterrupted(RunError):
    """The launcher got SIGTERM/SIGHUP/SIGINT: workers are stopped, the partial run is in ``path``.

    A dedicated class so sweeps that catch :class:`RunError` to go on with the next run can
    still tell "the user or scheduler wants us to stop" apart from "this run failed".
    ``signal`` is the :class:`signal.Signals` received; ``exit_code`` is the shell's 128+signum.
    """

    def __init__(self, message: str, path: Path, sig: signal.Signals, rows: int) -> None:
        super().__init__(message, path)
        self.signal, self.rows = sig, rows

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal)


def torchrun_command(cfg: RunConfig, config_path: Path, *more: Path) -> list[str]:
    """The ``torch.distributed.run`` command line for this config (multi-node passed through);
    ``more`` configs of the same world run one after the other in the same launch."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={cfg.nproc}",
           f"--nnodes={cfg.nnodes}", "--max-restarts=0", "--monitor-interval=0.5"]
    if cfg.nnodes == 1 and not cfg.rdzv_endpoint:
        cmd.append("--standalone")
    else:
        # static, not c10d: only the static rendezvous honours --node-rank (c10d ranks nodes
        # by host name and pid), and node_rank decides where ranks and results land. The id
        # must be the same on every node (agents with different ids never meet); node 0's
        # agent hosts a fresh store on the endpoint for each launch, so a constant is enough.
        cmd += ["--rdzv-backend=static", f"--rdzv-endpoint={cfg.rdzv_endpoint}", "--rdzv-id=paso_core",
                f"--node-rank={cfg.node_rank}"]
    return cmd + ["-m", "paso_core.worker", str(config_path), *map(str, more)]


def _prepare_run_dir(cfg: RunConfig) -> Path:
    run_dir = run_dir_for(cfg).resolve()
    if run_dir.exists() and not cfg.resume:
        shutil.rmtree(run_dir)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    for stale in (run_dir / "logs").glob("rank*.failure.json"):
        stale.unlink()
    (run_dir / "summary.json").unlink(missing_ok=True)
    cfg.to_json(run_dir / "config.json")
    (run_dir / CODE_DIGEST_FILE).write_text(code_digest() + "\n")  # what reusable_run compares
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

# ----------------------------------------------------------------- stopping the process tree
_GRACE_S = 5.0  # SIGTERM -> SIGKILL; workers die on SIGTERM at once, torchrun within ~1 s
_STALL_GRACE_S = 10.0


def _proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) from ``/proc/<pid>/stat``; None when the pid is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()  # the command name may contain spaces and ')'
    return int(fields[1]), fields[0], int(fields[19])


def descendants(root: int) -> dict[int, int | None]:
    """Every live descendant of ``root`` as ``{pid: start time}`` (start time guards pid reuse).

    Walks the parent links of all processes rather than the process group: torchrun starts
    each worker in a session of its own, so the workers are not in torchrun's group.
    """
    parents: dict[int, list[int]] = {}
    starts: dict[int, int | None] = {}
    if Path("/proc/self/stat").exists():
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
                parents.setdefault(stat[0], []).append(int(entry.name))
                starts[int(entry.name)] = stat[2]
    else:  # macOS: no /proc
        out = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
        for line in out.splitlines():
            pid, ppid = (int(v) for v in line.split())
            parents.setdefault(ppid, []).append(pid)
            starts[pid] = None
    found: dict[int, int | None] = {}
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found[child] = starts.get(child)
                todo.append(child)
    return found


def alive(pid: int, start: int | None = None) -> bool:
    """Whether ``pid`` still runs (zombies count as gone; a reused pid does not match ``start``)."""
    if Path("/proc/self/stat").exists():
        stat = _proc_stat(pid)
        return stat is not None and stat[1] not in ("Z", "X") and (start is None or stat[2] == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_tree(proc: subprocess.Popen, tree: dict[int, int | None], sig: signal.Signals) -> None:
    leader = [(proc.pid, None)] if proc.poll() is None else []  # a reaped pid may be reused
    for target, start in [*leader, *tree.items()]:
        if target != proc.pid and not alive(target, start):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(target) == target:  # a group leader: also reach children it forks later
                os.killpg(target, sig)
            else:
                os.kill(target, sig)


def _stop_tree(proc: subprocess.Popen, grace_s: float, hurry: Callable[[], bool] = lambda: False) -> None:
    """SIGTERM torchrun and every worker, SIGKILL whatever is left after ``grace_s``.

    The pids are collected before anything is signalled: once torchrun is gone its workers
    are reparented and could no longer be found, and a SIGKILLed torchrun cannot stop them
    itself. ``hurry()`` (a second signal) skips the rest of the grace period.
    """
    tree = descendants(proc.pid)
    _signal_tree(proc, tree, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and not hurry():
        if proc.poll() is not None and not any(alive(p, s) for p, s in tree.items()):
            break
        time.sleep(0.05)
    tree.update(descendants(proc.pid))
    if proc.poll() is None or any(alive(p, s) for p, s in tree.items()):
        _signal_tree(proc, tree, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGINT") if hasattr(signal, name))


@contextlib.contextmanager
def _catch_stop_signals(received: list[int]) -> Iterator[bool]:
    """While launch() runs, turn SIGTERM/SIGHUP/SIGINT into a flag the launch loop checks.

    torchrun runs in its own session (so a terminal's Ctrl-C does not hit the workers
    half-way), which also means nothing stops it when the launcher dies: the launcher has
    to do it. A flag rather than an exception, so the cleanup itself cannot be cut short.
    Python only allows handlers in the main thread: elsewhere nothing is installed and the
    old behaviour stays. A signal that was ignored (``nohup``, ``cmd &``) stays ignored, and
    the previous handlers are restored afterwards. Yields whether handlers were installed.
    """
    previous: dict[int, Any] = {}

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)

    try:
        if threading.current_thread() is threading.main_thread():
            for sig in _STOP_SIGNALS:
                old = signal.getsignal(sig)
                if old is None or old == signal.SIG_IGN:  # None: set from C, could not be restored
                    continue
                previous[sig] = signal.signal(sig, on_signal)
        yield bool(previous)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _last(rows: list[dict[str, Any]], key: str) -> Any:
    return next((row[key] for row in reversed(rows) if row.get(key) is not None), None)


def _keep_partial_run(cfg: RunConfig, run_dir: Path, sig: signal.Signals, wall_s: float) -> int:
    """Write ``metrics.csv`` and an ``"interrupted"`` ``summary.json``; returns the row count.

    A summary the workers already wrote (the run finished as the signal came) is kept.
    """
    rows = read_metrics_rows(run_dir)
    if rows:
        import pandas as pd

        pd.DataFrame(rows).to_csv(run_dir / "metrics.csv", index=False)
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        summary = {
            "status": "interrupted", "signal": sig.name, "method": cfg.method, "task": cfg.task,
            "world_size": cfg.world_size, "rows": len(rows), "steps_planned": cfg.steps,
            "iterations": _last(rows, "iteration"),
            "last_step": _last(rows, "steps_done"),
            "grad_evals": _last(rows, "grad_evals"), "last_train_loss": _last(rows, "train_loss"),
            "wall_time_s": wall_s, "checkpoint_kept": (run_dir / "checkpoint").is_dir(),
            "provenance": provenance(cfg.world_size, cfg.threads_per_worker),
        }
        summary_path.write_text(json.dumps(summary, indent=2, default=str))
    return len(rows)


#: Options that configure the processes rather than the training: runs sharing one launch
#: must agree on them.
PROCESS_OPTIONS = ("nproc", "nnodes", "node_rank", "rdzv_endpoint", "device", "threads_per_worker",
                   "collective_timeout_s")


def launch(cfg: RunConfig) -> RunResult:
    """Validate ``cfg``, run it under torchrun and return its :class:`RunResult`.

    On SIGTERM/SIGHUP/SIGINT (main thread only) the process tree is stopped within a few
    seconds, the partial run is kept, one line naming it goes to stderr (printed here, not
    left to the caller, so a script or sweep that catches the error still tells the user
    where the run is) and :class:`RunInterrupted` is raised.
    """
    return launch_all([cfg])[0]


def launch_all(cfgs: Sequence[RunConfig]) -> list[RunResult]:
    """Run several configs of the same world one after the other in ONE torchrun launch.

    Why: starting torchrun and joining the group costs seconds, which dominates small
    runs such as the equivalence matrix. Failures and signals are reported as by
    :func:`launch`, for the run that was running.
    """
    started = time.monotonic()
    cfgs = [validate(c) for c in cfgs]
    reused = {i: path for i, path in enumerate(map(reusable_run, cfgs)) if path is not None}
    if reused:  # finished runs of the same config (the reproduce-all's reuse): launch only the others
        fresh = [c for i, c in enumerate(cfgs) if i not in reused]
        done = iter(launch_all(fresh)) if fresh else iter(())
        print(f"[paso_core] reusing {len(reused)} finished run(s) of the same config "
              f"(${REUSE_ENV}=1; force to rerun)", file=sys.stderr, flush=True)
        if os.environ.get(REUSE_LOG_ENV):  # the reproduce-all counts them per job
            with open(os.environ[REUSE_LOG_ENV], "a") as log:
                log.writelines(f"{path}\n" for path in reused.values())
        return [load_run(reused[i]) if i in reused else next(done) for i in range(len(cfgs))]
    if not cfgs:
        return []
    first = cfgs[0]
    for cfg in cfgs[1:]:
        differ = [k for k in PROCESS_OPTIONS if getattr(cfg, k) != getattr(first, k)]
        if differ:
            raise ConfigError(f"runs sharing one launch must agree on {', '.join(differ)}: "
                              + ", ".join(f"{k}={getattr(first, k)!r} vs {getattr(cfg, k)!r}" for k in differ))
    check_devices(first)
    run_dirs = [_prepare_run_dir(cfg) for cfg in cfgs]
    if len(set(run_dirs)) != len(run_dirs):
        raise ConfigError("runs sharing one launch need different run directories (out_dir or run_name)")
    launcher_log = run_dirs[0] / "logs" / "launcher.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    received: list[int] = []
    stalled = False
    with _catch_stop_signals(received):
        proc = subprocess.Popen(torchrun_command(first, *[d / "config.json" for d in run_dirs]),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
        progress = _Progress(first.progress, f"{first.method}/{first.task}")
        last_seen = [time.monotonic()]
        reader = threading.Thread(target=_follow, args=(proc, launcher_log, progress, last_seen), daemon=True)
        reader.start()
        try:
            while proc.poll() is None and not received:
                time.sleep(0.2)
                if time.monotonic() - last_seen[0] > first.stall_timeout_s and not received:
                    stalled = True
                    _stop_tree(proc, _STALL_GRACE_S, hurry=lambda: bool(received))
            if received:
                _stop_tree(proc, _GRACE_S, hurry=lambda: len(received) > 1)
        except BaseException:  # KeyboardInterrupt off the main thread's handler, or a bug: no orphans
            _stop_tree(proc, _GRACE_S)
            raise
        finally:
            reader.join(timeout=5)
            progress.close()
    unfinished = [(c, d) for c, d in zip(cfgs, run_dirs) if not (d / "summary.json").exists()]
    cfg, run_dir = unfinished[0] if unfinished else (first, run_dirs[0])
    if run_dir != run_dirs[0] and launcher_log.exists():
        shutil.copy(launcher_log, run_dir / "logs" / "launcher.log")
    if received:
        sig = signal.Signals(received[0])
        rows = _keep_partial_run(cfg, run_dir, sig, time.monotonic() - started)
        message = f"interrupted by {sig.name}: partial run kept in {run_dir} ({rows} metric rows)"
        print(message, file=sys.stderr, flush=True)
        raise RunInterrupted(message, run_dir, sig, rows)
    if stalled:
        jsonl_to_csv(run_dir)
        raise RunError(f"run stalled: no output for {cfg.stall_timeout_s:.0f}s; killed. "
                       f"Partial metrics in {run_dir}\n{_tail(run_dir / 'logs' / 'rank0.log')}", run_dir)
    if proc.returncode != 0:
        jsonl_to_csv(run_dir)
        raise _failure_report(run_dir, proc.returncode)
    for cfg, run_dir in zip(cfgs, run_dirs):
        if cfg.nnodes > 1 and not (run_dir / "summary.json").exists():
            _point_to_results_node(cfg, run_dir)
    return [load_run(d) for d in run_dirs]


def _point_to_results_node(cfg: RunConfig, run_dir: Path) -> None:
    """Write a summary naming the node that holds the results, on a node without them.

    Why: one rank (the method's logging rank) writes metrics, ``summary.json`` and
    ``final.pt``, on its own node; the other nodes' launches finished too, and their
    :class:`RunResult` should say so and where to look rather than "incomplete".
    """
    from .methods import get_method

    log_rank = get_method(cfg.method).dims(cfg).logging_rank()
    node = log_rank // cfg.nproc  # the static rendezvous gives node k ranks k*nproc ... k*nproc+nproc-1
    first = cfg.node_rank * cfg.nproc
    summary = {
        "status": "completed", "method": cfg.method, "task": cfg.task, "world_size": cfg.world_size,
        "nnodes": cfg.nnodes, "node_rank": cfg.node_rank, "ranks_on_this_node": list(range(first, first + cfg.nproc)),
        "log_rank": log_rank, "results_node_rank": node,
        "note": f"metrics, summary.json and final.pt are in the run directory of node_rank={node} "
                f"(written by rank {log_rank}); this one holds the logs of ranks {first}..{first + cfg.nproc - 1}",
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))


def launch_grouped(cfgs: Sequence[RunConfig]) -> list[RunResult]:
    """Run configs of any world sizes: those agreeing on :data:`PROCESS_OPTIONS` share one
    :func:`launch_all`, in order of first appearance; results come back in the input order."""
    cfgs = [validate(c) for c in cfgs]  # resolved, so nproc etc. are what the launch will use
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault(tuple(getattr(cfg, k) for k in PROCESS_OPTIONS), []).append(i)
    results: dict[int, RunResult] = {}
    for indices in groups.values():
        results.update(zip(indices, launch_all([cfgs[i] for i in indices])))
    return [results[i] for i in range(len(cfgs))]
