"""Local SGD / Local AdamW (``method='local_sgd'``) and the synchronization rules.

The period arithmetic is tested as pure functions (the QSR formula on a cosine schedule,
the public ViT schedule's three all-reduce counts); the runtime in ONE two-worker launch:
every-step averaging equals DDP for plain SGD, ranks are identical right after a
synchronization and not inside a round, moments are averaged only when asked, gradient
accumulation matches the whole per-rank batch, and a QSR run follows the pure plan. Resuming
inside a round is covered by ``test_resume.py``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from paso_core.config import RunConfig, validate
from paso_core.equivalence import compare
from paso_core.launch import launch_grouped
from paso_core.optim.sync_rules import SyncRule, count_syncs, rounds
from paso_core.optim.updates import OptimSpec, lr_at
from paso_core.options import ConfigError

#: The public ViT-B recipe: 300 epochs x 312 steps, 10k warm-up, cosine from 0.008 to 1e-6.
VIT = OptimSpec(name="adamw", lr=0.008, steps=300 * 312, schedule="cosine", warmup_steps=10_000,
                min_lr_ratio=1e-6 / 0.008)


# ------------------------------------------------------------------ pure period arithmetic
@pytest.mark.parametrize("rule, expected", [(SyncRule("every_step"), 93_600),
                                            (SyncRule("constant", H_base=4), 23_400),
                                            (SyncRule("qsr", H_base=4, alpha=0.0175), 9_711)])
def test_public_vit_schedule_counts(rule: SyncRule, expected: int) -> None:
    assert count_syncs(rule, VIT) == expected


def test_qsr_periods_follow_the_formula_on_a_cosine_schedule() -> None:
    spec = OptimSpec(name="momentum", lr=0.5, steps=3000, schedule="cosine", warmup_steps=200)
    rule = SyncRule("qsr", H_base=2, alpha=0.2)
    plan = list(rounds(rule, spec))
    assert plan[0].start == 0 and plan[-1].end == spec.steps
    assert all(a.end == b.start for a, b in zip(plan, plan[1:]))  # contiguous, no step twice
    for r in plan:
        remaining = spec.steps - r.start
        if r.start < spec.warmup_steps:
            expected = min(2, remaining)
        else:
            expected = min(max(2, math.floor((0.2 / lr_at(spec, r.start)) ** 2)), remaining)
        assert r.H == expected, r
        assert r.lr == lr_at(spec, r.start)
    late = [r.H for r in plan if r.start >= spec.warmup_steps]
    assert late == sorted(late[:-1]) + late[-1:]  # H grows as the lr decays (the last is capped)
    assert late[-2] > 2 * late[0]
    linear = list(rounds(SyncRule("linear", H_base=2, alpha=0.2), spec))
    assert len(linear) > len(plan)  # 1/lr grows slower than 1/lr^2


def test_step_schedule_periods_jump_at_each_decay() -> None:
    # dyadic lr and gamma: (alpha / lr)^2 is exact, 16 then 64 then 256 local steps
    spec = OptimSpec(name="momentum", lr=1.0, steps=2000, schedule="step", decay_at=(0.5, 0.75), decay_gamma=0.5)
    plan = list(rounds(SyncRule("qsr", H_base=1, alpha=4.0), spec))
    for r in plan:
        expected = 16 if r.start < 1000 else 64 if r.start < 1500 else 256
        assert r.H == min(expected, spec.steps - r.start), r
    assert plan[-1].end == 2000


def test_constant_period_ends_on_the_final_step() -> None:
    spec = OptimSpec(name="sgd", lr=0.1, steps=10)
    assert [r.H for r in rounds(SyncRule("constant", H_base=4), spec)] == [4, 4, 2]
    assert count_syncs(SyncRule("every_step"), spec) == 10


def test_label_noise_moves_exactly_that_fraction_to_other_classes() -> None:
    from paso_core.tasks.vision import noisy_labels

    labels = torch.arange(1000) % 10
    noisy = noisy_labels(labels, 10, 0.25, seed=4)
    assert int((noisy != labels).sum()) == 250 and torch.equal(noisy, noisy_labels(labels, 10, 0.25, seed=4))
    assert not torch.equal(noisy, noisy_labels(labels, 10, 0.25, seed=5)) and noisy.max() < 10


# ------------------------------------------------------------------ bad input, before launch
BASE = dict(method="local_sgd", task="vision", nproc=2, steps=8, batch_size=32)


@pytest.mark.parametrize("options, needle", [
    (dict(H_base=0), "H_base=0"),
    (dict(sync="qsr", alpha=0.0), "alpha=0.0"),
    (dict(sync="linear", alpha=-1.0), "alpha=-1.0"),
    (dict(sync="sometimes"), "every_step, constant, qsr, linear"),
    (dict(lr_schedule="exponential"), "constant, cosine, step"),
    (dict(physical_batch_size=5), "divisor of 16"),
    (dict(nproc=1), "nothing to average"),
    (dict(average_moments="some"), "none, first, all"),
    (dict(label_noise=1.5), "label_noise=1.5"),
])
def test_bad_input_is_named_before_launch(options: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        validate(RunConfig.from_dict({**BASE, **options}))


def test_alpha_is_not_checked_where_no_rule_reads_it() -> None:
    validate(RunConfig.from_dict({**BASE, "sync": "constant", "alpha": 0.0}))


def test_step_parallel_methods_refuse_batchnorm() -> None:
    with pytest.raises(ConfigError, match="BatchNorm"):
        validate(RunConfig.from_dict(dict(method="paso", task="vision", model="resnet20", P=2, steps=4)))


# ------------------------------------------------------------------ one two-worker launch
SHARED = dict(task="vision", nproc=2, batch_size=32, seed=3, progress=False)
RUNS = {
    "every_step": dict(method="local_sgd", sync="every_step", optimizer="sgd", lr=0.05, steps=4),
    "ddp": dict(method="ddp", optimizer="sgd", lr=0.05, steps=4),
    "at_sync": dict(method="local_sgd", sync="constant", H_base=3, optimizer="momentum", lr=0.05, steps=6,
                    checkpoint_every=3),
    "in_round": dict(method="local_sgd", sync="constant", H_base=3, optimizer="momentum", lr=0.05, steps=6,
                     stop_after=4),
    "moments": dict(method="local_sgd", sync="constant", H_base=3, optimizer="adamw", lr=0.01, steps=6,
                    checkpoint_every=3, average_moments="all"),
    "whole": dict(method="local_sgd", sync="constant", H_base=2, optimizer="sgd", lr=0.05, steps=4),
    "accumulated": dict(method="local_sgd", sync="constant", H_base=2, optimizer="sgd", lr=0.05, steps=4,
                        physical_batch_size=4),
    "qsr": dict(method="local_sgd", sync="qsr", H_base=2, alpha=0.06, optimizer="momentum", lr=0.05,
                lr_schedule="cosine", warmup_steps=3, steps=14, model="resnet20", eval_every=4, bn_batches=2),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("local_sgd")
    cfgs = [RunConfig.from_dict({**SHARED, **opts, "out_dir": str(root / name)}) for name, opts in RUNS.items()]
    return dict(zip(RUNS, launch_grouped(cfgs)))


def _final(run) -> dict[str, torch.Tensor]:
    return torch.load(run.path / "final.pt", weights_only=True)


def _rank_states(run) -> list[dict]:
    return [torch.load(run.path / "checkpoint" / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_every_step_plain_sgd_equals_ddp(runs: dict) -> None:
    ddp, local = _final(runs["ddp"]), _final(runs["every_step"])
    moved = sum(float((ddp[k] - local[k]).double().square().sum()) for k in ddp)
    scale = sum(float(ddp[k].double().square().sum()) for k in ddp)
    assert math.sqrt(moved / scale) < 1e-6
    assert runs["every_step"].summary["syncs"] == 4
    losses = [runs[n].metrics.query("kind == 'train'")["train_loss"].to_numpy() for n in ("ddp", "every_step")]
    assert abs(losses[0] - losses[1]).max() < 1e-5


def test_ranks_are_identical_right_after_a_sync_and_not_inside_a_round(runs: dict) -> None:
    after, inside = _rank_states(runs["at_sync"]), _rank_states(runs["in_round"])
    params = [k for k in after[0]["model"] if "weight" in k or "bias" in k]
    assert all(torch.equal(after[0]["model"][k], after[1]["model"][k]) for k in params)
    assert not all(torch.equal(inside[0]["model"][k], inside[1]["model"][k]) for k in params)
    # momentum stays local by default: the ranks' buffers differ even right after the sync
    buffers = [s["optimizer"]["state"] for s in after]
    assert any(not torch.equal(buffers[0][k]["momentum_buffer"], buffers[1][k]["momentum_buffer"])
               for k in buffers[0])


def test_average_moments_all_averages_adamw_moments(runs: dict) -> None:
    states = [s["optimizer"]["state"] for s in _rank_states(runs["moments"])]
    for key in states[0]:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(states[0][key][name], states[1][key][name]), (key, name)
    summary = runs["moments"].summary
    params = sum(v.numel() for v in _final(runs["whole"]).values())  # same cnn, 4 bytes a scalar
    assert summary["sync_payload_bytes"] == 3 * 4 * params


def test_physical_batch_accumulates_to_the_whole_per_rank_batch(runs: dict) -> None:
    whole, accumulated = _final(runs["whole"]), _final(runs["accumulated"])
    errors = compare({k: torch.zeros_like(v) for k, v in whole.items()}, whole, accumulated)
    assert errors["rel_weight_err"] < 1e-5
    assert runs["accumulated"].summary["micro_batches"] == 4


def test_qsr_run_follows_the_plan_and_records_each_round(runs: dict) -> None:
    run = runs["qsr"]
    cfg = validate(RunConfig.from_dict({**SHARED, **RUNS["qsr"]}))
    plan = list(rounds(cfg.options.rule(), OptimSpec.from_config(cfg)))
    recorded = [json.loads(line) for line in (run.path / "rounds.jsonl").read_text().splitlines()]
    assert [(r["start"], r["H"]) for r in recorded] == [(r.start, r.H) for r in plan]
    assert len({r.H for r in plan}) > 1  # the period changed during the run
    assert all(r["param_spread"] > 0 for r in recorded if r["H"] > 1)
    summary = run.summary
    assert summary["syncs"] == len(plan) and summary["batchnorm_reestimated"]
    assert summary["sync_bytes"] == len(plan) * summary["sync_payload_bytes"]  # ring of 2: 2(n-1)/n = 1
    evals = run.metrics.query("kind == 'eval'")["steps_done"].tolist()
    assert set(evals) <= {r.end for r in plan} and evals == [4, 8, 12]  # evaluated only after a sync
    assert 0.0 <= summary["final_test_accuracy"] <= 1.0
    train = run.metrics.query("kind == 'train'")
    assert train["round_H"].tolist() == [r.H for r in plan for _ in range(r.H)]
