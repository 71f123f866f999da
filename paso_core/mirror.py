"""Mirror metrics rows to TensorBoard or an offline W&B run (the ``mirror`` option).

Why: ``metrics.csv`` stays the record every report reads; users who watch runs in
TensorBoard or W&B get the same numbers there, row for row, without a second logging path
in each method. Both packages are optional: :func:`check_available` runs in validation,
before any worker starts, so a missing package is an error naming the pip command.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Mapping, Protocol

from .options import ConfigError

#: ``mirror`` choices and the package each one needs.
MIRRORS: dict[str, str] = {"tensorboard": "tensorboard", "wandb": "wandb"}
#: The pyproject extra that installs a mirror's package, where there is one.
EXTRAS: dict[str, str] = {"tensorboard": "logging"}


class MetricsMirror(Protocol):
    """Where a copy of each metrics row goes (logging rank only)."""

    def log(self, row: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def check_available(kind: str) -> None:
    """Raise :class:`ConfigError` naming the package and the pip command when ``kind``'s
    package is not installed (a find_spec, so nothing heavy is imported here)."""
    package = MIRRORS[kind]
    if importlib.util.find_spec(package) is None:
        extra = f" (or pip install 'paso-artifact[{EXTRAS[kind]}]')" if kind in EXTRAS else ""
        raise ConfigError(f"mirror={kind!r} needs the {package} package, which is not installed; "
                          f"pip install {package}{extra}, or leave mirror=None")


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The row's numbers as ``<kind>/<column>`` tags.

    Why the kind prefix: training and evaluation rows share the progress columns
    (``steps_done``, ``train_time_s``, ...), which would otherwise interleave in one chart.
    """
    kind = row.get("kind", "train")
    return {f"{kind}/{key}": float(value) for key, value in row.items()
            if isinstance(value, (int, float)) and key != "kind"}


def row_step(row: Mapping[str, Any]) -> int:
    """The x value of a row: sequential iterations K (the time axis of every method)."""
    return int(row.get("iteration", row.get("steps_done", 0)))


class TensorBoardMirror:
    """Scalars in ``<run dir>/tensorboard``, read by ``tensorboard --logdir``."""

    def __init__(self, run_dir: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: on resume, drop what an earlier attempt wrote past the checkpoint
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)

    def log(self, row: Mapping[str, Any]) -> None:
        step = row_step(row)
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # like metrics.jsonl: a crash keeps every row written

    def close(self) -> None:
        self.writer.close()


class WandbMirror:
    """An offline W&B run under ``<run dir>/wandb`` (``wandb sync`` uploads it later)."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any]) -> None:
        import wandb

        self.run = wandb.init(mode="offline", dir=str(run_dir), name=run_dir.name, config=dict(config))

    def log(self, row: Mapping[str, Any]) -> None:
        self.run.log(scalars(row), step=row_step(row))

    def close(self) -> None:
        self.run.finish()


def open_mirror(kind: str | None, run_dir: Path, config: Mapping[str, Any],
                resume_after: int | None = None) -> MetricsMirror | None:
    """The mirror named by the ``mirror`` option (None: no mirror); ``resume_after`` is the
    last iteration kept on resume, whose later TensorBoard events are purged."""
    if kind is None:
        return None
    if kind == "tensorboard":
        return TensorBoardMirror(run_dir, None if resume_after is None else resume_after + 1)
    if kind == "wandb":
        return WandbMirror(run_dir, config)
    raise ConfigError(f"mirror={kind!r} is not valid; choose one of: {', '.join(MIRRORS)}")
