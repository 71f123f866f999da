"""The one metrics schema: the columns every method writes to ``metrics.jsonl``/``metrics.csv``.

Why a schema: readers (reports, experiments, notebooks) compare methods side by side, so a
column must mean the same thing for serial training, data parallelism, PASO and OptEx.
Each row is either a training row (``kind == "train"``, one per sequential iteration) or
an evaluation row (``kind == "eval"``, one per held-out evaluation). Methods may add their
own columns (PASO's ``accepted``, OptEx's ``lengthscale``), never redefine these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import pandas as pd

#: Columns of every row, training or evaluation.
COMMON_COLUMNS: dict[str, str] = {
    "kind": "'train' or 'eval'",
    "wall_time_s": "seconds since the worker started (includes setup: data, model)",
    "steps_done": "optimizer steps completed (accepted, for step-parallel methods) after this row",
    "iteration": "sequential iterations completed after this row (K); equals steps_done for serial and DP",
    "grad_evals": "gradient evaluations so far (G), each on one full step's batch",
    "items": "training items consumed so far (grad_evals x items per step: images, tokens, 1 per function)",
    "train_time_s": "seconds spent training so far: the sum of every iteration's time_iteration_s "
                    "(logged or not), so without setup and evaluation",
}

#: Columns of every training row, in addition to :data:`COMMON_COLUMNS`.
TRAIN_COLUMNS: dict[str, str] = {
    "train_loss": "loss of the iteration's first step (serial: the step's loss) before its update",
    "lr": "learning rate of the iteration's first step",
    "time_iteration_s": "wall time of the whole iteration on the logging rank (compute + comm + the rest)",
    "time_compute_s": "forward + backward (+ clipping), maximum over ranks; never the metered communication "
                      "inside them (time_comm_s) nor the optimizer step",
    "time_comm_s": "time inside communication calls, maximum over ranks (0 for one process)",
    "bytes_measured": "bytes the busiest rank sent so far, counted from the tensors it sent",
    "bytes_modelled": "bytes the busiest rank sent so far by a formula (collectives: ring all-reduce ...)",
    "bytes_iter_max": "bytes (measured + modelled) the busiest rank sent in this iteration",
}

#: Columns of every evaluation row, in addition to :data:`COMMON_COLUMNS` (plus ``eval_<metric>``).
EVAL_COLUMNS: dict[str, str] = {
    "time_eval_s": "wall time of the evaluation (excluded from training time)",
}


class SchemaError(ValueError):
    """A method wrote a row without a column of the schema."""


def check_row(row: Mapping[str, Any]) -> None:
    """Raise naming the missing columns when ``row`` does not follow the schema."""
    kind = row.get("kind")
    if kind not in ("train", "eval"):
        raise SchemaError(f"metrics row kind={kind!r} is not valid; choose one of: train, eval")
    required = set(COMMON_COLUMNS) - {"wall_time_s"}
    required |= set(TRAIN_COLUMNS) if kind == "train" else set(EVAL_COLUMNS)
    missing = sorted(required - set(row))
    if missing:
        raise SchemaError(f"{kind} row lacks schema column(s) {missing}: {sorted(row)}")
    if kind == "eval" and not any(k.startswith("eval_") for k in row):
        raise SchemaError(f"eval row has no eval_<metric> column: {sorted(row)}")


def train_rows(metrics: "pd.DataFrame") -> "pd.DataFrame":
    """The training rows of a run's metrics (all rows of runs written before the schema)."""
    if "kind" not in metrics.columns:
        return metrics
    return metrics[metrics["kind"] == "train"]


def eval_rows(metrics: "pd.DataFrame") -> "pd.DataFrame":
    """The evaluation rows of a run's metrics."""
    if "kind" not in metrics.columns:
        return metrics.iloc[0:0]
    return metrics[metrics["kind"] == "eval"]


def training_time(metrics: "pd.DataFrame") -> float:
    """Seconds spent training: ``train_time_s`` of the last training row.

    Why this definition: it leaves out setup (loading data, building the model) and every
    evaluation, which cost all methods the same and would pull speed-ups towards 1.
    """
    rows = train_rows(metrics)
    if rows.empty or "train_time_s" not in rows.columns:
        return float("nan")
    return float(rows["train_time_s"].max())
