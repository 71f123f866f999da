"""The equivalence matrix: every engine against serial training, in one launch per world size.

The table is the specification: each row is a method, its options, its world size and
how close to serial it must end (``EXACT``: bit for bit). The serial reference is plain
``torch.optim`` computed in this process (:func:`paso_core.equivalence.serial_reference`).
"""

from __future__ import annotations

import pandas as pd
import pytest

from paso_core import equivalence
from paso_core.equivalence import EXACT, Case, run_matrix

from test_paso_exact import OPTIMIZERS, TASKS  # PASO's cases: warm-up, cosine decay, clipping below the norms

SCHEDULE = dict(lr_schedule="cosine", warmup_steps=3, seed=3)
DIGITS = dict(TASKS["digits"], **SCHEDULE, optimizer="momentum")
#: Sums of per-shard (or per-micro-batch) gradients round differently from the full batch's:
#: relative L2 error of the displacement after 10 momentum steps (measured ~1e-7).
SUM_RTOL = 1e-5

CASES = [
    *[Case(f"paso-P{P}-{task}-{opt}", dict(TASKS[task], **SCHEDULE, method="paso", P=P, threshold=0.0,
                                            ema_decay=1.0, optimizer=opt), EXACT)
      for P in (2, 4) for task in TASKS for opt in OPTIMIZERS],
    Case("serial-digits", dict(DIGITS, method="serial"), EXACT, "the method vs the in-test loop"),
    Case("grad_accum-digits", dict(DIGITS, method="grad_accum", micro_batches=4), SUM_RTOL),
    Case("optex-N1-synthetic", dict(TASKS["synthetic"], **SCHEDULE, method="optex", P=1, optimizer="adam"), SUM_RTOL,
         "one worker: no proxy step, OptEx is plain training (its own functional update)"),
    Case("ddp-digits", dict(DIGITS, method="ddp", nproc=2), SUM_RTOL),
    Case("naive_dp-digits", dict(DIGITS, method="naive_dp", nproc=2), SUM_RTOL),
    Case("ddp-synthetic", dict(TASKS["synthetic"], **SCHEDULE, method="ddp", nproc=2, optimizer="adam"), SUM_RTOL),
    # must FAIL: a loose tolerance accepts guesses, so the check can tell engines apart
    Case("paso-P2-loose", dict(TASKS["synthetic"], **SCHEDULE, method="paso", P=2, threshold=1e9, ema_decay=1.0,
                               optimizer="sgd"), EXACT, "expected to fail"),
]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    table = run_matrix(CASES, tmp_path_factory.mktemp("matrix"))
    print("\n" + table.drop(columns=["note", "path"]).to_string())
    return table


@pytest.mark.parametrize("case", [c.name for c in CASES if c.note != "expected to fail"])
def test_engine_matches_serial(matrix: pd.DataFrame, case: str) -> None:
    row = matrix.set_index("case").loc[case]
    assert row["passed"], row.to_dict()


def test_cases_of_one_world_size_share_a_launch(matrix: pd.DataFrame) -> None:
    assert matrix.groupby("world_size")["launch"].nunique().eq(1).all()
    assert matrix["launch"].nunique() == matrix["world_size"].nunique() == 3


def test_every_method_writes_the_one_metrics_schema(matrix: pd.DataFrame) -> None:
    """The same columns, complete, for every method (rows are checked when written, too)."""
    import paso_core
    from paso_core.metrics import COMMON_COLUMNS, TRAIN_COLUMNS, train_rows

    for path in matrix["path"]:
        result = paso_core.load_run(path)
        rows = train_rows(result.metrics)
        assert len(rows) == result.summary["iterations"], path
        assert not rows[list({**COMMON_COLUMNS, **TRAIN_COLUMNS})].isna().any().any(), path
        assert rows["steps_done"].iloc[-1] == result.summary["steps"]
        assert rows["grad_evals"].iloc[-1] == result.summary["grad_evals"]
        assert result.summary["bytes_iter_max"] == rows["bytes_iter_max"].max()
        assert result.summary["train_time_s"] == pytest.approx(rows["train_time_s"].iloc[-1])


def test_the_comparison_can_fail(matrix: pd.DataFrame) -> None:
    row = matrix.set_index("case").loc["paso-P2-loose"]
    assert row["iterations"] < row["steps"] and not row["passed"], row.to_dict()


def test_canary_passes_for_ddp_and_names_the_failure(tmp_path) -> None:
    table = equivalence.canary("ddp", root=tmp_path / "ok", nproc=2, task="vision", batch_size=32)
    assert bool(table["passed"].iloc[0]) and table["steps"].iloc[0] == 1
    with pytest.raises(equivalence.CanaryFailed, match="method='paso'.*relative error of the first step"):
        equivalence.canary("paso", root=tmp_path / "bad", P=2, threshold=1e9, task="synthetic", dim=50)
