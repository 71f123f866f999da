"""The QSR study without launching: its plan (same schedule, batches and initial weights for every
rule; the communication-matched constant H found from the schedule; bad input before any worker),
and its tables, verdict and figures on hand-made runs whose numbers are known."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from paso_core.config import ConfigError
from paso_core.experiments import qsr
from paso_core.runs import RunResult

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def plan() -> qsr.Plan:
    return qsr.prepare({}, "smoke")


def test_every_rule_trains_the_same_model_on_the_same_batches(plan: qsr.Plan) -> None:
    same = {"task", "dataset", "model", "batch_size", "steps", "seed", "lr", "lr_schedule", "warmup_steps", "nproc"}
    for optimizer in ("momentum", "adamw"):
        configs = [r.config.to_dict() for r in plan.runs if r.optimizer == optimizer]
        assert {c["sync"] for c in configs} == set(qsr.RULES)
        for key in same:
            assert len({str(c[key]) for c in configs}) == 1, key
    assert {r.config.model for r in plan.runs if r.optimizer == "momentum"} == {"resnet20"}
    assert {r.config.model for r in plan.runs if r.optimizer == "adamw"} == {"vit"}


def test_matched_constant_h_comes_from_qsr_s_planned_syncs() -> None:
    plan = qsr.prepare({"optimizer": "momentum", "epochs": 20, "warmup_epochs": 1, "H_grid": "64"}, "smoke")
    by_kind = {r.variant.kind: r for r in plan.runs}
    qsr_syncs = qsr.planned_syncs(by_kind["qsr"].config)
    matched = by_kind["matched"].variant.H
    steps = by_kind["qsr"].config.steps
    assert matched in (steps // qsr_syncs, steps // qsr_syncs + 1) and matched > plan.params["H_base"]
    gap = abs(qsr.planned_syncs(by_kind["matched"].config) - qsr_syncs)
    assert all(gap <= abs(-(-steps // h) - qsr_syncs) for h in (matched - 1, matched + 1))
    assert "QSR's syncs" in by_kind["matched"].variant.label


def test_public_vit_counts_are_the_paper_s() -> None:
    counts = qsr.public_schedule_counts()
    assert counts["ours"].tolist() == [93_600, 23_400, 9_711] and counts["equal"].all()


@pytest.mark.parametrize("values,message", [
    ({"rules": "qsr,sometimes"}, r"rules='qsr,sometimes'.*every_step, constant, qsr, linear"),
    ({"alpha": "momentum=0.1"}, r"no value for optimizer\(s\) \['adamw'\]"),
    ({"model": "momentum:resnet20,adamw:transformer"}, r"'transformer'.*resnet20"),
    ({"schedule": "exponential"}, r"schedule='exponential'.*constant, cosine, step"),
    ({"H_base": 0}, r"H_base=0"),
    ({"nproc": 1}, r"nothing to average"),
    ({"alpha": 0.0}, r"alpha=0.0"),
    ({"dataset": "cifar10", "data_root": "/nonexistent"}, r"cifar10|CIFAR"),
    ({"tresh": 1}, r"unknown parameter\(s\) \['tresh'\]"),
])
def test_bad_input_stops_before_any_run(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        qsr.prepare(values, "smoke")


# --------------------------------------------------------------------------- tables on known runs
def _run(tmp: Path, rule: str, H: int, kind: str, seed: int, acc: float, syncs: int,
         rounds: list[tuple[int, int, float]] = ()) -> tuple[qsr.PlannedRun, RunResult]:
    path = tmp / f"{kind}{H}-{seed}"
    path.mkdir(parents=True, exist_ok=True)
    (path / "rounds.jsonl").write_text("".join(json.dumps({"start": s, "H": h, "lr": lr, "param_spread_rel": 0.01})
                                               + "\n" for s, h, lr in rounds))
    metrics = pd.DataFrame([{"kind": "eval", "steps_done": 10, "eval_test_accuracy": acc},
                            {"kind": "train", "steps_done": 10, "train_time_s": 2.0}])
    summary = {"final_test_accuracy": acc, "syncs": syncs, "sync_bytes": syncs * 1e6, "final_train_loss": 0.1}
    label = {"every_step": "data parallel (H=1)", "qsr": "QSR"}.get(rule, f"constant H={H}")
    planned = qsr.PlannedRun("momentum", qsr.Variant(label, rule, H, kind), seed, None)  # type: ignore[arg-type]
    return planned, RunResult(path, summary, metrics, {})


@pytest.fixture()
def known(tmp_path: Path) -> list:
    runs = []
    for seed, (dp, q, c8, c2) in enumerate([(0.90, 0.93, 0.91, 0.90), (0.92, 0.95, 0.92, 0.91),
                                             (0.91, 0.94, 0.92, 0.92)]):
        runs += [_run(tmp_path, "every_step", 2, "every_step", seed, dp, 100, [(i, 1, 0.1) for i in range(3)]),
                 _run(tmp_path, "qsr", 2, "qsr", seed, q, 14, [(0, 2, 0.1), (2, 6, 0.05), (8, 20, 0.01)]),
                 _run(tmp_path, "constant", 8, "matched", seed, c8, 13),
                 _run(tmp_path, "constant", 2, "constant", seed, c2, 50)]
    return runs


def test_final_table_and_verdict_read_the_runs(known: list) -> None:
    frame = qsr.run_frame(known)
    table = qsr.final_table(frame).set_index("variant")
    assert table.loc["QSR", "test_acc_mean"] == pytest.approx(94.0)
    assert table.loc["QSR", "test_acc"] == "94.00 ± 1.00"
    assert table.loc["QSR", "comm_vs_dp"] == pytest.approx(0.14)
    v = qsr.verdict(frame, "momentum")
    assert v["matched_H"] == 8 and v["matched_syncs"] == 13
    assert v["qsr_minus_matched"] == pytest.approx(2.333333, rel=1e-5)   # differences 2, 3, 2
    assert v["se_matched"] == pytest.approx(0.3333333, rel=1e-5)
    text = qsr.discussion(frame, qsr.public_schedule_counts())
    assert "7.1x fewer synchronizations" in text and "QSR is better beyond the noise" in text  # 2.33 > 4.30 x 0.33
    assert "identical" in text and "One test image" not in text


def test_a_difference_inside_the_paired_t_interval_is_no_verdict() -> None:
    assert "within the noise" in qsr._judge(2.0, 0.3, 2)            # t(0.975, 1) = 12.7: needs > 3.8
    assert "better beyond the noise" in qsr._judge(4.0, 0.3, 2)
    assert "within the noise" in qsr._judge(0.5, 0.3, 5)
    assert "no verdict" in qsr._judge(0.5, float("nan"), 1)
    assert "worse beyond the noise" in qsr._judge(-1.0, 0.2, 10)


def test_periods_and_figures_come_from_the_rounds_files(known: list) -> None:
    periods = qsr.period_curves(known)
    assert periods[periods["rule"] == "qsr"]["H"].tolist() == [2, 6, 20]  # first seed only, grid left out
    title = lambda optimizer: optimizer  # noqa: E731
    for fig in (qsr.plot_periods(periods, ["momentum"], title),
                qsr.accuracy_vs_syncs(qsr.run_frame(known), ["momentum"], title),
                qsr.plot_accuracy_curves(qsr.accuracy_curves(known, 10), ["momentum"], title)):
        assert fig.axes[0].get_legend() is not None and fig.axes[0].get_xlabel() and fig.axes[0].get_ylabel()
    reported = qsr.reported_table(qsr.run_frame(known))
    assert reported["source"].tolist()[:2] == ["paper (ImageNet, GPUs)"] * 2
    assert reported.iloc[-1]["top1_gain_points"] == pytest.approx(3.0)
