"""Run directories: where a run lives, what it holds, and how to read it back.

A run directory is the unit of reproducibility: ``config.json`` (every option),
``metrics.csv`` (one row per step or PASO iteration), ``summary.json``, ``final.pt``
and ``logs/rank*.log``. Notebooks and reports only ever read these files.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import RunConfig

if TYPE_CHECKING:
    import pandas as pd

PACKAGE_ROOT = Path(__file__).resolve().parent


def artifacts_root() -> Path:
    """``$PASO_ARTIFACTS``, else the checkout's ``artifacts/``, else ``./artifacts``."""
    env = os.environ.get("PASO_ARTIFACTS")
    if env:
        return Path(env)
    checkout = PACKAGE_ROOT.parent / "artifacts"
    if (PACKAGE_ROOT.parent / "pyproject.toml").exists():
        return checkout
    return Path.cwd() / "artifacts"


def config_digest(cfg: RunConfig) -> str:
    """A short hash of the options that change results (not paths or progress display)."""
    ignored = {"out_dir", "run_name", "progress", "resume", "stop_after", "checkpoint_every", "mirror"}
    data = {k: v for k, v in cfg.to_dict().items() if k not in ignored}
    data["node_rank"] = 0  # the nodes of one run agree on it (and single-node digests stay as they were)
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:8]


def default_run_name(cfg: RunConfig) -> str:
    detail = cfg.function if cfg.task == "synthetic" else f"{cfg.dataset}-{cfg.model}"
    return f"{cfg.method}-{cfg.task}-{detail}-s{cfg.seed}-{config_digest(cfg)}"


def run_dir_for(cfg: RunConfig) -> Path:
    """``out_dir``, else ``artifacts/runs/<run_name or default name>``; node ``k > 0`` of a
    multi-node run uses ``<that>.node<k>`` beside it, so nodes sharing a filesystem (or one
    machine) never clear or overwrite each other's directory."""
    path = Path(cfg.out_dir) if cfg.out_dir else artifacts_root() / "runs" / (cfg.run_name or default_run_name(cfg))
    if not cfg.node_rank:
        return path
    path = path.resolve()  # a name to extend, even for out_dir="."
    return path.with_name(f"{path.name}.node{cfg.node_rank}")


#: Set by the reproduce-all (``python -m paso_core.reproduce`` without ``--force``): a launch
#: then reuses every finished run whose recorded config equals the requested one.
REUSE_ENV = "PASO_REUSE_RUNS"
#: A file each reuse appends the reused run directories to (how the reproduce-all counts them).
REUSE_LOG_ENV = "PASO_REUSE_LOG"
#: Epoch seconds: reuse only runs that finished after it (``--force``: runs an earlier job of
#: the same reproduce-all made are shared, older ones are run again).
REUSE_SINCE_ENV = "PASO_REUSE_SINCE"
#: Options that do not change a run's results (display, bookkeeping, where it is written).
RESULT_NEUTRAL = ("progress", "out_dir", "run_name", "checkpoint_every", "mirror")


CODE_DIGEST_FILE = "code_digest"


#: ``paso_core`` modules that only read finished runs (tables, figures, claims, the index) or
#: plan them (the configs are compared anyway): a change there leaves every run valid.
AFTER_THE_RUN = ("experiments/", "report.py", "reproduce.py", "claims.py", "explore.py", "plot_runs.py",
                 "notebook_files.py")


def code_digest() -> str:
    """A hash of the ``paso_core`` sources a run executes and the torch version: what, beside
    the config, decides a run's results (a reused run must have been made by the same code)."""
    import torch

    digest = hashlib.sha1(torch.__version__.encode())
    for source in sorted(PACKAGE_ROOT.rglob("*.py")):
        name = source.relative_to(PACKAGE_ROOT).as_posix()
        if not name.startswith(AFTER_THE_RUN):
            digest.update(name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


def reusable_run(cfg: RunConfig) -> Path | None:
    """The run directory of a finished run with exactly ``cfg``'s options, if reuse is on.

    Why: the reproduce-all reruns notebooks whose cells plan dozens of runs; with runs keyed by
    their config, a second invocation (or one resumed after an interruption) redoes only what
    is missing or changed. Runs are deterministic for a config and seed, so a reused run's
    metrics are those a new one would give (its timings are the original's). The key includes
    the code: a run made by other ``paso_core`` sources or another torch is never reused."""
    if os.environ.get(REUSE_ENV) != "1" or cfg.resume or cfg.stop_after is not None:
        return None
    path = run_dir_for(cfg).resolve()
    try:
        summary = json.loads((path / "summary.json").read_text())
        recorded = json.loads((path / "config.json").read_text())
        code = (path / CODE_DIGEST_FILE).read_text().strip()
    except (OSError, ValueError):
        return None
    if code != code_digest():  # made by other code (or another torch): not the same run
        return None
    wanted = json.loads(json.dumps(cfg.to_dict(), default=str))  # as config.json spells it

    def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
        keys = (set(a) | set(b)) - set(RESULT_NEUTRAL)
        return all(a.get(k) == b.get(k) for k in keys)

    finished = summary.get("status") == "completed" and (path / "metrics.csv").exists()
    since = float(os.environ.get(REUSE_SINCE_ENV) or "-inf")
    recent = (path / "summary.json").stat().st_mtime >= since
    return path if finished and recent and same(recorded, wanted) else None


def read_metrics(path: Path) -> "pd.DataFrame":
    """metrics.csv, or the line-by-line ``metrics.jsonl`` a crashed run leaves behind."""
    import pandas as pd

    csv = path / "metrics.csv"
    if csv.exists() and csv.stat().st_size:
        return pd.read_csv(csv)
    return read_metrics_jsonl(path)


def jsonl_to_csv(path: Path) -> None:
    """Turn the streamed ``metrics.jsonl`` into ``metrics.csv`` (also for partial runs)."""
    frame = read_metrics_jsonl(path)
    if not frame.empty:
        frame.to_csv(path / "metrics.csv", index=False)


def read_metrics_rows(path: Path) -> list[dict[str, Any]]:
    """The rows streamed to ``metrics.jsonl``; a last line cut short by a kill is dropped,
    so a crashed or interrupted run still yields every complete row."""
    jsonl = path / "metrics.jsonl"
    if not jsonl.exists():
        return []
    lines = [line for line in jsonl.read_text(errors="replace").splitlines() if line.strip()]
    rows = [json.loads(line) for line in lines[:-1]]
    if lines:
        try:
            rows.append(json.loads(lines[-1]))
        except json.JSONDecodeError:
            pass
    return rows


def read_metrics_jsonl(path: Path) -> "pd.DataFrame":
    import pandas as pd

    return pd.DataFrame(read_metrics_rows(path))


@dataclass
class RunResult:
    """What a finished (or partial) run left: its summary, per-step metrics and directory."""

    path: Path
    summary: dict[str, Any]
    metrics: "pd.DataFrame"
    config: dict[str, Any]

    def __repr__(self) -> str:
        keys = ("method", "task", "status", "steps", "iterations", "speedup", "final_train_loss")
        shown = {k: self.summary.get(k) for k in keys if k in self.summary}
        return f"RunResult(path={str(self.path)!r}, {shown})"


def load_run(path: str | Path) -> RunResult:
    """Read a run directory back (works for partial runs too)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {str(path)!r} does not exist")
    summary_file = path / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {"status": "incomplete"}
    config_file = path / "config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    return RunResult(path=path, summary=summary, metrics=read_metrics(path), config=config)
