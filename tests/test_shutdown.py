"""SIGTERM/SIGINT/SIGHUP to the launcher stop torchrun and every worker and keep the partial run.

The launcher is started in a session of its own so the test can find the whole tree; the
pids are recorded before the signal because torchrun's workers run in sessions of their own
and would be reparented (and invisible under the launcher) once torchrun is gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from paso_core.launch import _catch_stop_signals, alive, descendants

REPO = Path(__file__).resolve().parent.parent
RUN_ARGS = ["--method", "paso", "--P", "2", "--task", "synthetic", "--function", "ackley", "--dim", "2000",
            "--steps", "100000", "--no-progress"]
#: an asynchronous pipeline: stages that are not logging sit in a point-to-point wait when stopped
ASYNC_ARGS = ["--method", "pipeoptim", "--stages", "3", "--nproc", "3", "--task", "vision", "--dataset", "digits",
              "--model", "cnn", "--batch-size", "16", "--optimizer", "momentum", "--lr", "0.01",
              "--steps", "100000", "--log-every", "1", "--no-progress"]
SCRIPT = textwrap.dedent("""
    import sys
    import paso_core
    try:
        paso_core.run(method="paso", P=2, task="synthetic", function="ackley", dim=2000, steps=100000,
                      progress=False, out_dir=sys.argv[1])
    except paso_core.RunInterrupted as err:
        assert err.path.name == "run" and err.rows > 0, err
        sys.exit(err.exit_code)
""")


def _default_signals() -> None:
    """A runner that started pytest in the background may have left SIGINT ignored; the
    launcher (like Python itself) keeps ignored signals ignored, so reset them for the child."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _session_members(sid: int) -> list[int]:
    """Live processes whose session or process group is ``sid`` (the launcher's own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            fields = raw[raw.rfind(")") + 2:].split()
            if fields[0] not in ("Z", "X") and sid in (int(fields[2]), int(fields[3])):
                found.append(int(entry.name))
    return found


def _rows(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="walks /proc to find the process tree")
@pytest.mark.parametrize("entry,sig,args", [("cli", signal.SIGTERM, RUN_ARGS), ("cli", signal.SIGINT, RUN_ARGS),
                                             ("script", signal.SIGHUP, None), ("cli", signal.SIGTERM, ASYNC_ARGS)],
                         ids=["cli-SIGTERM", "cli-SIGINT", "script-SIGHUP", "cli-SIGTERM-async-pipeline"])
def test_signal_stops_every_process_and_keeps_the_partial_run(tmp_path: Path, entry: str, sig: signal.Signals,
                                                              args: list[str] | None) -> None:
    out = tmp_path / "run"
    if entry == "cli":
        cmd = [sys.executable, "-m", "paso_core", "run", *args, "--out-dir", str(out)]
    else:
        cmd = [sys.executable, "-c", SCRIPT, str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=tmp_path, start_new_session=True, preexec_fn=_default_signals)
    tree: dict[int, int | None] = {}
    try:
        deadline = time.monotonic() + 60
        while _rows(out / "metrics.jsonl") < 3:
            assert launcher.poll() is None, launcher.communicate()
            assert time.monotonic() < deadline, "no metrics rows within 60 s"
            time.sleep(0.2)
        tree = descendants(launcher.pid)
        workers = [p for p in tree if "paso_core.worker" in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(tree) >= 3 and len(workers) >= 2, tree  # torchrun and both workers

        tic = time.monotonic()
        launcher.send_signal(sig)
        _, stderr = launcher.communicate(timeout=15)
        elapsed = time.monotonic() - tic

        assert launcher.returncode == 128 + sig, stderr
        assert elapsed < 15
        survivors = [p for p, start in tree.items() if alive(p, start)]
        assert not survivors, f"still running after {sig.name}: {survivors}"
        assert not _session_members(launcher.pid)
        assert "Traceback" not in stderr, stderr
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert lines == [line for line in lines if "interrupted by" in line] and len(lines) == 1, stderr
        assert f"interrupted by {sig.name}: partial run kept in {out.resolve()}" in lines[0]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["signal"] == sig.name
        assert summary["rows"] >= 3 and summary["iterations"] >= 3 and summary["last_train_loss"] is not None
        assert summary["last_step"] >= summary["iterations"]  # PASO accepts >= 1 step per iteration
        csv = (out / "metrics.csv").read_text().splitlines()
        assert csv[0].startswith("wall_time_s") and len(csv) - 1 == summary["rows"]
    finally:
        for pid, start in [(launcher.pid, None), *tree.items()]:
            if alive(pid, start):
                os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.wait(timeout=5)


def test_handlers_are_restored_and_ignored_signals_stay_ignored() -> None:
    def mine(signum, frame):  # noqa: ANN001
        pass

    old_term, old_hup = signal.signal(signal.SIGTERM, mine), signal.signal(signal.SIGHUP, signal.SIG_IGN)
    old_int = signal.getsignal(signal.SIGINT)
    try:
        received: list[int] = []
        with _catch_stop_signals(received) as installed:
            assert installed
            assert signal.getsignal(signal.SIGTERM) is not mine
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert received == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) == old_int
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGHUP, old_hup)


def test_no_handlers_off_the_main_thread() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    seen: list[bool] = []

    def body() -> None:
        with _catch_stop_signals([]) as installed:
            seen.append(installed)
            seen.append(all(signal.getsignal(s) is h for s, h in before.items()))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [False, True]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="walks /proc to find the process tree")
def test_stalled_run_is_killed_with_all_its_workers() -> None:
    """The stall path shares the tree kill: no worker outlives the reported stall."""
    import paso_core

    seen: dict[int, int | None] = {}
    done = threading.Event()
    # processes this test process had before (e.g. multiprocessing's resource tracker left
    # by earlier tests) are not the run's
    before = set(descendants(os.getpid()))

    def watch() -> None:
        while not done.is_set():
            seen.update({p: s for p, s in descendants(os.getpid()).items() if p not in before})
            time.sleep(0.3)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with pytest.raises(paso_core.RunError, match="run stalled: no output for 12s") as info:
            paso_core.run(method="naive_dp", nproc=2, task="synthetic", function="sphere", dim=64, steps=6,
                          progress=False, stall_timeout_s=12, collective_timeout_s=600,
                          inject_fault={"rank": 1, "kind": "hang"})
    finally:
        done.set()
        watcher.join()
    assert not isinstance(info.value, paso_core.RunInterrupted)
    assert len(seen) >= 3
    assert not [p for p, start in seen.items() if alive(p, start)]
