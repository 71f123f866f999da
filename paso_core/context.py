"""What a method sees inside a worker: config, its options, the device mesh and its
coordinates, communication, logging, metrics rows, checkpoints.

Methods write metrics and checkpoints only through this object, so every method produces
the same files in the one schema of :mod:`paso_core.metrics`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch

from .config import RunConfig
from .distributed import ByteMeter, Comm
from .metrics import check_row
from .mirror import open_mirror
from .parallel import ParallelDims

PROGRESS_TAG = "PASO_PROGRESS "


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: training cannot continue meaningfully."""


class StopRequested(Exception):
    """``stop_after`` was reached: the run stops early, checkpoint written (tests resume it)."""


class Lap(NamedTuple):
    """One phase of an iteration: its wall seconds and the metered communication inside them."""

    wall: float
    comm: float

    @property
    def compute(self) -> float:
        """The phase without its communication (what ``time_compute_s`` may count)."""
        return self.wall - self.comm


class IterationClock:
    """An iteration's phases timed with the metered communication inside each.

    Why: the schema's ``time_compute_s``, ``time_comm_s`` and the optimizer's time must be
    disjoint; a phase that contains a collective (naive DP's all-reduce after backward, the
    pipeline's clip-norm all-reduce) would otherwise count it twice.
    """

    def __init__(self, meter: ByteMeter) -> None:
        self.meter = meter
        self.start = time.perf_counter()
        self._wall, self._comm = self.start, meter.seconds

    def lap(self) -> Lap:
        """The phase since the previous lap (or the start)."""
        wall, comm = time.perf_counter(), self.meter.seconds
        phase = Lap(wall - self._wall, comm - self._comm)
        self._wall, self._comm = wall, comm
        return phase

    def elapsed(self) -> float:
        """Wall seconds since the start, communication included."""
        return time.perf_counter() - self.start


@dataclass
class WorkerContext:
    cfg: RunConfig
    rank: int
    world: int
    local_rank: int
    device: torch.device
    comm: Comm                      # the whole world; ``group(name)`` gives a mesh dimension's
    run_dir: Path
    log: logging.Logger
    dims: ParallelDims = field(default_factory=ParallelDims)
    mesh: Any = None                # the named DeviceMesh of ``dims`` (None in single-process use)
    baseline_rss_mb: float = 0.0  # resident memory after imports, before the task is built
    started: float = field(default_factory=time.perf_counter)
    items_per_step: int = 1         # set from the task: ``items`` = grad_evals x this
    train_time_s: float = 0.0       # sum of every iteration's time_iteration_s (checkpointed)
    bytes_iter_max: int = 0         # the most bytes any rank sent in one iteration so far
    _metrics_file: Any = None
    _mirror: Any = None                # TensorBoard / W&B copy of the rows (``cfg.mirror``)
    _comm_mark: float = 0.0            # meter seconds when the iteration's comm time started
    _groups: dict[str, Comm] = field(default_factory=dict)

    @property
    def options(self) -> Any:
        """The method's typed options (``cfg.options``)."""
        return self.cfg.options

    @property
    def coords(self) -> dict[str, int]:
        """This rank's coordinate along every mesh dimension."""
        return self.dims.coordinates(self.rank)

    @property
    def log_rank(self) -> int:
        """The rank that writes metrics, the summary and ``final.pt``."""
        return self.dims.logging_rank()

    @property
    def is_main(self) -> bool:
        """True on the logging rank (:attr:`log_rank`)."""
        return self.rank == self.log_rank

    def group(self, name: str) -> Comm:
        """Communication inside mesh dimension ``name`` (same byte meter as :attr:`comm`)."""
        if name not in self._groups:
            if self.mesh is None or name not in (self.mesh.mesh_dim_names or ()):
                names = tuple(self.mesh.mesh_dim_names or ()) if self.mesh is not None else ()
                raise KeyError(f"mesh dimension {name!r} does not exist; this run's mesh has {names}")
            self._groups[name] = self.comm.sub(self.mesh.get_group(name), name)
        return self._groups[name]

    # ------------------------------------------------------------------ metrics
    def open_metrics(self, keep_rows: int | None = None) -> None:
        """Open ``metrics.jsonl`` for appending (logging rank); on resume keep the first ``keep_rows``."""
        if not self.is_main:
            return
        path = self.run_dir / "metrics.jsonl"
        if keep_rows is not None and path.exists():
            lines = path.read_text().splitlines()[:keep_rows]
            path.write_text("".join(line + "\n" for line in lines))
        elif keep_rows is None and path.exists():
            path.unlink()
        self._metrics_file = path.open("a")
        self._mirror = open_mirror(self.cfg.mirror, self.run_dir, self.cfg.to_dict(),
                                   resume_after=_last_iteration(path) if keep_rows is not None else None)

    def log_row(self, row: dict[str, Any]) -> None:
        """Append one metrics row (logging rank only) after checking it against the schema;
        flushed so a crash keeps what was written."""
        if self._metrics_file is None:
            return
        row = {"wall_time_s": round(time.perf_counter() - self.started, 6), **row}
        check_row(row)
        self._metrics_file.write(json.dumps(row, default=float) + "\n")
        self._metrics_file.flush()
        if self._mirror is not None:
            self._mirror.log(row)

    def start_iteration(self) -> IterationClock:
        """Start an iteration's clock; its ``time_comm_s`` then counts communication from
        here (without it: since the previous :meth:`gather_iteration`)."""
        self._comm_mark = self.comm.meter.seconds
        return IterationClock(self.comm.meter)

    def gather_iteration(self, time_compute_s: float, extra: Sequence[float] = ()
                         ) -> tuple[dict[str, float], torch.Tensor]:
        """The one all-gather of an iteration (collective: every rank calls it).

        Returns the schema's figures, maximum over ranks (compute and comm time, this
        iteration's bytes, cumulative measured and modelled bytes of the busiest rank), and
        the method's ``extra`` values of every rank (rows: ranks of the world).
        """
        meter = self.comm.meter
        comm_s, self._comm_mark = meter.seconds - self._comm_mark, meter.seconds
        local = [float(meter.since_mark()), float(meter.measured), float(meter.modelled),
                 float(time_compute_s), comm_s, *map(float, extra)]
        gathered = self.comm.all_gather_floats(local)
        stats = {"time_compute_s": float(gathered[:, 3].max()), "time_comm_s": float(gathered[:, 4].max()),
                 "bytes_measured": int(gathered[:, 1].max()), "bytes_modelled": int(gathered[:, 2].max()),
                 "bytes_iter_max": int(gathered[:, 0].max())}
        self.bytes_iter_max = max(self.bytes_iter_max, stats["bytes_iter_max"])
        return stats, gathered[:, 5:]

    def counters(self, steps_done: int, iteration: int, grad_evals: int) -> dict[str, Any]:
        """The progress columns every row carries."""
        return {"steps_done": steps_done, "iteration": iteration, "grad_evals": grad_evals,
                "items": grad_evals * self.items_per_step, "train_time_s": self.train_time_s}

    def record_train(self, row: dict[str, Any], stats: dict[str, float], time_iteration_s: float, *,
                     steps_done: int, iteration: int, grad_evals: int, last: bool) -> None:
        """Count the iteration's time, and write its training row when due (every
        ``log_every`` iterations and the last one)."""
        self.train_time_s += time_iteration_s
        if iteration % self.cfg.log_every and not last:
            return
        self.log_row({"kind": "train", **self.counters(steps_done, iteration, grad_evals),
                      "time_iteration_s": time_iteration_s, **stats, **row})

    def record_eval(self, metrics: dict[str, float], *, steps_done: int, iteration: int, grad_evals: int) -> None:
        """Write an evaluation row (``eval_*`` columns and ``time_eval_s``)."""
        self.log_row({"kind": "eval", **self.counters(steps_done, iteration, grad_evals), **metrics})

    def rows_written(self) -> int:
        path = self.run_dir / "metrics.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def close_metrics(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        if self._mirror is not None:
            self._mirror.close()
            self._mirror = None

    def progress(self, done: int, total: int, **info: Any) -> None:
        """A progress line for the launcher's bar (logging rank only)."""
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
        state = {**state, "train_time_s": self.train_time_s}
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
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.train_time_s = float(state.get("train_time_s", 0.0))
        return state

    def due_for_checkpoint(self, done: int, previous: int) -> bool:
        every = self.cfg.checkpoint_every
        if not every:
            return self.cfg.stop_after is not None and done >= self.cfg.stop_after
        hit_multiple = done // every > previous // every
        return hit_multiple or (self.cfg.stop_after is not None and done >= self.cfg.stop_after)


def _last_iteration(path: Path) -> int:
    """The iteration of the last row kept in ``metrics.jsonl`` (0 when none): a resumed run's
    mirror drops what the earlier attempt logged after it."""
    lines = path.read_text().splitlines() if path.exists() else []
    return int(json.loads(lines[-1]).get("iteration", 0)) if lines else 0


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
