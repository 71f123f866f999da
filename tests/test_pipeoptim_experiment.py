"""The PipeOptim curves study without launching: its plan (same split, batches and initial
weights for every method; bad input before any worker), and its tables, figure helpers and
discussion on hand-made runs whose numbers are known."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from paso_core.config import ConfigError
from paso_core.experiments import pipeoptim as po
from paso_core.runs import RunResult



@pytest.fixture(scope="module")
def plan() -> po.Plan:
    return po.prepare({}, "smoke")


def test_every_method_trains_the_same_model_on_the_same_batches(plan: po.Plan) -> None:
    curves = [r for r in plan.runs if r.study == "curves"]
    assert {r.label for r in curves} == set(po.METHODS)
    same = {"task", "dataset", "model", "batch_size", "steps", "seed", "split", "eval_every", "lr_schedule",
            "lr_decay_at"}
    for optimizer in ("momentum", "adamw"):
        configs = [r.config.to_dict() for r in curves if r.optimizer == optimizer]
        for key in same:
            assert len({str(c[key]) for c in configs}) == 1, key
    sync = [r.config for r in curves if r.label in po.SYNC_SCHEDULES]
    assert {c.method for c in sync} == {"pp"} and {c.options.pp_schedule for c in sync} == {"gpipe", "1f1b"}
    assert all(c.options.microbatches == 4 and c.world_size == 4 for c in sync)
    asynchronous = [r.config for r in curves if r.label in po.ASYNC_METHODS]
    assert all(c.options.engine == "simulator" and c.world_size == 1 and c.options.stages == 4 for c in asynchronous)
    assert all(c.steps == plan.steps_per_epoch * plan.params["epochs"] for c in (*sync, *asynchronous))


def test_spectrain_is_left_out_with_adamw_and_says_why(plan: po.Plan) -> None:
    assert not [r for r in plan.runs if r.label == "spectrain" and r.optimizer == "adamw"]
    assert {(s["method"], s["optimizer"]) for s in plan.skipped} == {("spectrain", "adamw")}
    assert "SGD-momentum" in plan.skipped[0]["reason"]


def test_agreement_runs_both_engines_on_one_epoch(plan: po.Plan) -> None:
    runs = [r for r in plan.runs if r.study == "agreement"]
    assert sorted(r.engine for r in runs) == ["processes", "simulator"]
    assert {r.config.steps for r in runs} == {plan.steps_per_epoch}
    assert {r.config.world_size for r in runs} == {1, 4}


def test_parameters_per_optimizer() -> None:
    params = po.resolve_params({"lr": "momentum=0.1,adamw=1e-3", "optimizer": "momentum,adamw"}, "smoke")
    assert params["lr"] == {"momentum": 0.1, "adamw": 1e-3}
    assert po.resolve_params({"lr": 0.2, "optimizer": "momentum"}, "smoke")["lr"] == {"momentum": 0.2}


@pytest.mark.parametrize("values,message", [
    ({"methods": "pipeoptim,xpipe"}, r"methods='pipeoptim,xpipe'.*pipeoptim, spectrain"),
    ({"lr": "momentum=0.1"}, r"no value for optimizer\(s\) \['adamw'\]"),
    ({"stages": 9}, r"9 pipeline stages is more than the model's 4 blocks"),
    ({"dataset": "tinyimagenet", "data_root": "/nonexistent"}, r"tinyimagenet|Tiny-ImageNet"),
    ({"tresh": 1}, r"unknown parameter\(s\) \['tresh'\]"),
])
def test_bad_input_stops_before_any_run(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        po.prepare(values, "smoke")


# --------------------------------------------------------------------------- tables on known runs
def _run(method: str, optimizer: str, seed: int, accuracies: list[float], versions: list[int] | None = None,
         quality: dict[str, list] | None = None) -> tuple[po.PlannedRun, RunResult]:
    metrics = pd.DataFrame([{"kind": "eval", "steps_done": 10 * e, "eval_test_accuracy": a}
                            for e, a in enumerate(accuracies)])
    summary = {"final_train_loss": 0.5, "max_weight_versions_per_stage": versions,
               "prediction_quality": quality or {}}
    planned = po.PlannedRun("curves", method, optimizer, seed, "simulator", None)  # type: ignore[arg-type]
    return planned, RunResult(Path("."), summary, metrics, {})


KNOWN = [
    _run("pipeoptim", "momentum", 0, [0.1, 0.6, 0.8, 0.90], [2, 2, 1], {"0": [[10, 0.2], [20, 0.4]], "1": []}),
    _run("pipeoptim", "momentum", 1, [0.1, 0.5, 0.8, 0.88], [2, 2, 1]),
    _run("pipedream", "momentum", 0, [0.1, 0.4, 0.7, 0.85], [3, 2, 1]),
    _run("pipedream", "momentum", 1, [0.1, 0.4, 0.7, 0.87], [3, 2, 1]),
    _run("gpipe", "momentum", 0, [0.1, 0.5, 0.75, 0.86]),
    _run("1f1b", "momentum", 0, [0.1, 0.5, 0.75, 0.86]),
]


def test_final_table_reads_the_runs() -> None:
    acc = po.accuracy_curves(KNOWN, spe=10)
    assert list(acc["epoch"].unique()) == [0, 1, 2, 3]
    table = po.final_table(KNOWN, acc).set_index("method")
    assert table.loc["pipeoptim", "final_top1_mean"] == pytest.approx(89.0)
    assert table.loc["pipeoptim", "final_top1_std"] == pytest.approx(1.41421356, rel=1e-6)
    assert table.loc["pipeoptim", "n_seeds"] == 2 and table.loc["gpipe", "n_seeds"] == 1
    assert table.loc["pipeoptim", "final_top1"] == "89.00 ± 1.41"
    assert table.loc["pipeoptim", "top1_epoch_2_mean"] == pytest.approx(80.0)  # nearest to mid-training (1.5)
    assert table.loc["pipedream", "weight_versions_per_stage"] == "3/2/1"
    assert table.loc["gpipe", "weight_versions_per_stage"] == "1 (synchronous)"


def test_identical_curves_are_named() -> None:
    acc = po.accuracy_curves(KNOWN, spe=10)
    mean = po._mean_curve(acc, "epoch", "top1")
    assert po.coinciding(mean[mean["optimizer"] == "momentum"]) == [["gpipe", "1f1b"]]


def test_quality_and_discussion_numbers_come_from_the_tables() -> None:
    acc = po.accuracy_curves(KNOWN, spe=10)
    table = po.final_table(KNOWN, acc)
    quality = po.quality_table(KNOWN)
    assert quality["quality"].tolist() == [0.2, 0.4]
    assert po.quality_summary(quality)["median"].tolist() == [pytest.approx(0.3)]
    agreement = pd.DataFrame([{"max_abs_loss_diff": 0.0, "max_rel_param_diff": 0.0}])
    text = pd.DataFrame([{"method": "pipeoptim", "eval_val_ppl": 12.5}, {"method": "gpipe", "eval_val_ppl": 11.0}])
    words = po.discussion(table, agreement, quality, text)
    assert "pipeoptim 89.00, pipedream 86.00, gpipe 86.00, 1f1b 86.00; spread 3.00 points" in words
    assert "At epoch 2 (mid-training), PipeOptim is ahead of the best other method by 5.00 points" in words
    assert "largest loss difference 0, largest relative parameter difference 0 (identical)" in words
    assert "stage 0: 0.3" in words
    assert "lowest val_ppl 11 by gpipe" in words


def test_seed_values_sit_beside_ours() -> None:
    acc = po.accuracy_curves(KNOWN, spe=10)
    merged = po.compare_reported(po.final_table(KNOWN, acc), "inception_v3").set_index("method")
    assert merged.loc["pipeoptim", "seed_top1"] == 57.3
    assert merged.loc["pipeoptim", "ours_final_top1 (SGDM)"] == "89.00 ± 1.41"
    assert pd.isna(merged.loc["pipedream_2bw", "ours_final_top1 (SGDM)"])


def test_paper_scale_names_the_missing_tiny_imagenet() -> None:
    with pytest.raises(ConfigError, match=r"dataset='tinyimagenet' needs data_root=<directory holding it> \(or -p "
                                          r"scale default"):
        po.prepare({}, "paper")


def test_a_stage_whose_passes_share_predicted_weights_is_named_not_praised() -> None:
    """SpecTrain's last stage predicts both passes alike: its quality is 0 by construction."""
    quality = pd.DataFrame([{"method": "spectrain", "optimizer": "momentum", "seed": 0, "stage": s, "minibatch": j,
                             "quality": 0.0 if s == 1 else 0.5} for s in (0, 1) for j in (1, 2)])
    words = po.discussion(pd.DataFrame(columns=["optimizer"]), pd.DataFrame(), quality, pd.DataFrame())
    assert "stage 0: 0.5, stage 1: 0 (its backward runs on the forward's predicted weights)" in words
