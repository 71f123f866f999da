"""The one metrics schema: every row is checked when written, readers need no method name."""

from __future__ import annotations

import pandas as pd
import pytest

from paso_core.metrics import (COMMON_COLUMNS, EVAL_COLUMNS, TRAIN_COLUMNS, SchemaError, check_row, eval_rows,
                               train_rows, training_time)


def _train_row(**extra: float) -> dict:
    row = {name: 1.0 for name in {**COMMON_COLUMNS, **TRAIN_COLUMNS}}
    return {**row, "kind": "train", **extra}


def test_rows_missing_a_schema_column_are_rejected() -> None:
    check_row(_train_row(accepted=2))  # a method's own columns are allowed
    bad = _train_row()
    del bad["time_compute_s"]
    with pytest.raises(SchemaError, match="train row lacks schema column.*time_compute_s"):
        check_row(bad)
    with pytest.raises(SchemaError, match="kind='step' is not valid"):
        check_row({**_train_row(), "kind": "step"})
    evaluation = {name: 1.0 for name in {**COMMON_COLUMNS, **EVAL_COLUMNS}}
    with pytest.raises(SchemaError, match="no eval_<metric> column"):
        check_row({**evaluation, "kind": "eval"})
    check_row({**evaluation, "kind": "eval", "eval_test_accuracy": 0.9})


def test_training_time_and_row_selection() -> None:
    frame = pd.DataFrame([
        {"kind": "train", "iteration": 1, "train_time_s": 0.5},
        {"kind": "eval", "iteration": 1, "train_time_s": 0.5, "eval_gap": 3.0},
        {"kind": "train", "iteration": 2, "train_time_s": 1.25},
    ])
    assert training_time(frame) == 1.25
    assert train_rows(frame)["iteration"].tolist() == [1, 2] and eval_rows(frame)["eval_gap"].tolist() == [3.0]
    assert training_time(frame.iloc[0:0]) != training_time(frame.iloc[0:0])  # NaN without rows
