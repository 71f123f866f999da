"""The equivalence matrix: every engine against serial training, in one launch per world size.

The table is the specification: each row is a method, its options, its world size and
how close to serial it must end (``EXACT``: bit for bit), in weights and in the last step's
loss. The serial reference is plain ``torch.optim`` computed in this process
(:func:`paso_core.equivalence.serial_reference`). The naive DP case runs with rank 1's
collectives slowed (``inject_fault`` kind ``slow_comm``), so that the metrics' time split
is checked on it too: communication must not be counted as compute.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from paso_core import equivalence, load_run
from paso_core.equivalence import EXACT, Case, Reference, run_matrix
from paso_core.metrics import train_rows

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
    Case("ddp-digits", dict(DIGITS, method="ddp", nproc=2, augment=True), SUM_RTOL,
         "augmentation on: each rank augments its shard of serial's global batch as serial does"),
    Case("naive_dp-digits", dict(DIGITS, method="naive_dp", nproc=2, augment=True,
                                 inject_fault={"rank": 1, "kind": "slow_comm"}),
         SUM_RTOL, "augmentation on; rank 1's collectives slowed: checks the time split too"),
    Case("ddp-synthetic", dict(TASKS["synthetic"], **SCHEDULE, method="ddp", nproc=2, optimizer="adam"), SUM_RTOL),
    # asynchronous pipelines: mini-batch 0 runs on the initial weights on every stage, so their
    # first update is serial's (later ones are stale or predicted by design: not serial's)
    *[Case(f"{m}-first-step-digits", dict(DIGITS, method=m, stages=2, nproc=2, steps=1, grad_clip=None), SUM_RTOL)
      for m in ("pipeoptim", "pipedream", "async_nostash", "spectrain")],
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


def assert_time_split_is_disjoint(path: str) -> None:
    """Compute, communication and optimizer times of every training row fit in its step.

    One rank of the run (not the logging rank, which therefore waits for it and has the
    longest step) slowed each collective by ``SLOW_COMM_S``, so communication is most of each
    step and a collective counted as compute too would overshoot the step by about as much.
    The allowance, a quarter of the step, covers the rows' maxima coming from different ranks
    (the stages of a pipeline differ; scheduling noise on shared cores).
    """
    rows = train_rows(load_run(path).metrics)
    step = rows["time_iteration_s"]
    assert (rows["time_comm_s"] >= step / 2).all(), rows[["time_comm_s", "time_iteration_s"]]
    excess = rows["time_compute_s"] + rows["time_comm_s"] + rows["time_optim_s"] - step
    assert (excess <= step / 4).all(), pd.DataFrame({"excess_s": excess, "step_s": step})


def test_naive_dp_all_reduce_is_communication_not_compute(matrix: pd.DataFrame) -> None:
    assert_time_split_is_disjoint(matrix.set_index("case").loc["naive_dp-digits", "path"])


def test_rows_compare_the_last_loss_with_serial(matrix: pd.DataFrame) -> None:
    ok = matrix[matrix["note"] != "expected to fail"]
    assert (ok["loss_rel_err"] <= ok["loss_rtol"]).all(), ok[["case", "train_loss", "serial_loss", "loss_rel_err"]]
    assert (ok["loss_rtol"] == ok["rtol"].clip(lower=equivalence.LOSS_RTOL)).all()
    assert ok["engine"].str.fullmatch(rf"torch {re.escape(torch.__version__)} on cpu/gloo").all()


def test_a_wrong_loss_fails_a_case_whose_weights_match(tmp_path) -> None:
    """PASO-like rows: the last row's loss is that of step 3 (the steps done before it)."""
    weights = {"w": torch.ones(3)}
    torch.save(weights, tmp_path / "final.pt")
    reference = Reference(initial={"w": torch.zeros(3)}, final=weights, losses=[4.0, 3.0, 2.0, 1.0, 0.5])
    metrics = pd.DataFrame({"kind": "train", "iteration": [1, 2], "steps_done": [3, 5], "train_loss": [4.0, 1.0]})
    result = SimpleNamespace(path=tmp_path, summary={"steps": 5, "iterations": 2, "device": "cpu"}, metrics=metrics)
    cfg = SimpleNamespace(method="paso", world_size=2)
    row = equivalence.result_row(Case("c", {}, rtol=1e-6), cfg, result, reference)
    assert row["passed"] and row["max_abs_diff"] == 0 and row["serial_loss"] == 1.0
    metrics.loc[1, "train_loss"] = 1.001
    row = equivalence.result_row(Case("c", {}, rtol=1e-6), cfg, result, reference)
    assert not row["passed"] and row["max_abs_diff"] == 0 and row["loss_rel_err"] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="a training row per iteration"):
        equivalence.last_logged_loss(metrics.iloc[1:])


def test_canary_replays_serial_with_the_options_each_method_declares() -> None:
    paso = equivalence.canary_case("paso", P=2, task="synthetic").options
    assert (paso["threshold"], paso["ema_decay"], paso["steps"]) == (0.0, 1.0, 2)
    assert equivalence.canary_case("paso", P=2, threshold=1e9).options["threshold"] == 1e9
    assert "threshold" not in equivalence.canary_case("ddp", nproc=2).options


def test_canary_passes_for_ddp_and_catches_a_wrong_engine(tmp_path) -> None:
    table = equivalence.canary("ddp", root=tmp_path / "ok", nproc=2, task="vision", batch_size=32)
    assert bool(table["passed"].iloc[0]) and table["steps"].iloc[0] == 1
    # rank 1 doubles its gradients before the all-reduce: an engine no version table refuses,
    # so the canary run itself must catch it, naming the torch and backend it ran on
    message = rf"method='naive_dp'.*relative error of the first step.*torch {re.escape(torch.__version__)} on cpu/gloo"
    with pytest.raises(equivalence.CanaryFailed, match=message):
        equivalence.canary("naive_dp", root=tmp_path / "bad", nproc=2, task="synthetic", dim=50,
                           inject_fault={"rank": 1, "kind": "wrong_grads"})
