"""What a method sees inside a worker: config, rank, device, comm, logging, metrics, checkpoints.

Methods write metrics and checkpoints only through this object, so every method produces
the same files in the same schema.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig
from .distributed import Comm

PROGRESS_TAG = "PASO_PROGRESS "


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: training cannot continue meaningfully."""


class StopRequested(Exception):
    """``stop_after`` was reached: the run stops early, checkpoint written (tests resume it)."""


@dataclass
class WorkerContext:
    cfg: RunConfig
    rank: int
    world: int
    local_rank: int
    device: torch.device
    comm: Comm
    run_dir: Path
    log: logging.Logger
    baseline_rss_mb: float = 0.0  # resident memory after imports, before the task is built
    started: float = field(default_factory=time.perf_counter)
    _metrics_file: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ metrics
    def open_metrics(self, keep_rows: int | None = None) -> None:
        """Open ``metrics.jsonl`` for appending (rank 0); on resume keep the first ``keep_rows``."""
        if not self.is_main:
            return
        path = self.run_dir / "metrics.jsonl"
        if keep_rows is not None and path.exists():
            lines = path.read_text().splitlines()[:keep_rows]
            path.write_text("".join(line + "\n" for line in lines))
        elif keep_rows is None and path.exists():
            path.unlink()
        self._metrics_file = path.open("a")

    def log_row(self, row: dict[str, Any]) -> None:
        """Append one metrics row (rank 0 only); flushed so a crash keeps what was written."""
        if self._metrics_file is None:
            return
        row = {"wall_time_s": round(time.perf_counter() - self.started, 6), **row}
        self._metrics_file.write(json.dumps(row, default=float) + "\n")
        self._metrics_file.flush()

    def rows_written(self) -> int:
        path = self.run_dir / "metrics.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def close_metrics(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None

    def progress(self, done: int, total: int, **info: Any) -> None:
        """A progress line for the launcher's bar (rank 0 only)."""
        if self.is_main and self.cfg.progress:
            payload = {"done": done, "total": total, **{k: _plain(v) for k, v in info.items()}}
            print(PROGRESS_TAG + json.dumps(payload), flush=True)

    # --------------------------------------------------------------- safeguards
    def check_finite(self, value: float, where: str) -> None:
        if not math.isfinite(value):
            raise NonFiniteLoss(f"non-finite loss {value} at {where}; stopping (metrics so far are kept)")

    def maybe_stop(self, done: int) -> None:
        if self.cfg.stop_after is not None and done >= self.cfg.stop_after:
            raise StopRequested(f"stop_after={self.cfg.stop_after} reached at {done}")

    # -------------------------------------------------------------- checkpoints
    def checkpoint_path(self, rank: int | None = None) -> Path:
        return self.run_dir / "checkpoint" / f"rank{self.rank if rank is None else rank}.pt"

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write this rank's checkpoint atomically (write then rename)."""
        path = self.checkpoint_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            state = {**state, "metrics_rows": self.rows_written()}
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def load_checkpoint(self, rank: int | None = None) -> dict[str, Any] | None:
        """This rank's checkpoint (or ``rank``'s, for methods whose ranks share one state)."""
        path = self.checkpoint_path(rank)
        if not self.cfg.resume or not path.exists():
            return None
        return torch.load(path, map_location=self.device, weights_only=False)

    def due_for_checkpoint(self, done: int, previous: int) -> bool:
        every = self.cfg.checkpoint_every
        if not every:
            return self.cfg.stop_after is not None and done >= self.cfg.stop_after
        hit_multiple = done // every > previous // every
        return hit_multiple or (self.cfg.stop_after is not None and done >= self.cfg.stop_after)


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
