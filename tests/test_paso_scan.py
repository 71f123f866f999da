"""PASO's distributed rollout (the real ``PasoWorker`` on gloo) equals a sequential rollout.

Given the same P gradients, every position's rolled-out parameters and optimizer state must
equal what stepping the optimizer one step after another gives, for every optimizer, with
warm-up + cosine, with and without clipping, from a fresh and from a mid-training state, with
the window rotated over ranks and cut short at the end of training, for P in {2, 3, 5, 8},
and with several positions per rank (P = 4 on 2 ranks and on 1: the results must not depend
on the placement, so the bounds are the same).
The same launch checks the error each position reports, the slide (kept iterates, the tail
seeded from the last one down the tree) and the bytes each rank sent against the
``O(d log P)`` bound. One launch per P keeps this to four process groups; P = 8 (8 processes,
half a minute on 2 cores) is in the slow suite (``make test-all``): P = 5 already has a
3-level tree and a window that is not a power of two.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from paso_core.config import RunConfig, validate
from paso_core.methods.paso import busiest_rank_vectors
from paso_core.optim.paso_reference import reference_paso
from paso_core.optim.scan import reference_rollout
from paso_core.optim.updates import OptimSpec
from paso_core.tasks.synthetic import FUNCTIONS

from paso_scan_harness import Case, as_dicts, case_inputs, main, start_point, train_main

#: float64: the scan's reassociation costs a few ulps; 1e-12 absolute on O(1) values.
FLOAT64_ATOL = 1e-12
#: float32: measured at most ~4e-7 of each tensor's largest entry here (P = 8); bounded at 1e-5.
FLOAT32_RTOL = 1e-5
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")


def cases_for(P: int) -> list[Case]:
    cases = []
    for i, (optimizer, dtype) in enumerate((o, d) for o in OPTIMIZERS for d in ("float32", "float64")):
        cases += [
            Case(optimizer, dtype, start=0, start_slot=0, window=P, accepted=P, grad_clip=1.0, seed=i),
            Case(optimizer, dtype, start=7, start_slot=P - 1, window=P, accepted=max(1, P // 2),
                 grad_clip=None, seed=i),
        ]
        if P > 2:  # end of training: fewer active positions than ranks
            cases.append(Case(optimizer, dtype, start=11, start_slot=1, window=P - 1, accepted=1,
                              grad_clip=5.0, seed=i))
    # coupled weight decay goes through the relay rollout
    cases.append(Case("adam", "float64", start=4, start_slot=P // 2, window=P, accepted=P, grad_clip=None,
                      weight_decay=0.1))
    cases.append(Case("momentum", "float64", start=4, start_slot=P - 1, window=P, accepted=P - 1, grad_clip=None,
                      weight_decay=0.1))
    return cases


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(P: int, world: int, cases: list[Case], out_dir) -> list[list[dict]]:
    mp.start_processes(main, args=(world, _free_port(), as_dicts(cases), str(out_dir), P), nprocs=world,
                       join=True, start_method="spawn")
    per_rank = [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]
    return [[pos for r in range(world) for pos in per_rank[r][c]] for c in range(len(cases))]  # [case][position]


def clipped(grad: torch.Tensor, max_norm: float | None) -> torch.Tensor:
    param = torch.nn.Parameter(torch.zeros_like(grad))
    param.grad = grad.clone()
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_([param], max_norm)
    return param.grad


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: str, what: str) -> None:
    diff = float((actual - expected).abs().max())
    if dtype == "float64":
        assert diff <= FLOAT64_ATOL, f"{what}: |scan - sequential| = {diff:.3g}"
    else:
        scale = float(expected.abs().max())
        assert diff <= FLOAT32_RTOL * scale, f"{what}: |scan - sequential| = {diff:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("P,world", [(2, 2), (3, 3), (5, 5), (4, 2), (4, 1), pytest.param(8, 8, marks=pytest.mark.slow)])
def test_distributed_rollout_equals_sequential(P: int, world: int, tmp_path) -> None:
    cases = cases_for(P)
    outputs = launch(P, world, cases, tmp_path)
    for case, ranks in zip(cases, outputs):
        label = f"P={P} on {world} ranks {case}"
        cfg = case.config(P)
        spec = OptimSpec.from_config(cfg)
        inputs = case_inputs(case, P)
        by_pos = {r["pos"]: r for r in ranks}
        grads = [clipped(inputs["grads"][case.start + p], case.grad_clip) for p in range(case.window)]
        sequential = reference_rollout(spec, case.start, inputs["guesses"][0], inputs["state"], grads)
        assert by_pos[0]["rollout"] == ("relay" if spec.coupled_weight_decay else "scan"), label
        for p, (x_seq, state_seq) in enumerate(sequential):
            assert_close(by_pos[p]["x"], x_seq, case.dtype, f"{label} pos {p} parameters")
            for name, value in state_seq.items():
                assert_close(by_pos[p]["state"][name], value, case.dtype, f"{label} pos {p} {name}")
            next_guess = inputs["guesses"][p + 1] if p + 1 < case.window else inputs["guesses"][p]
            err = float((x_seq.double() - next_guess.double()).square().mean()) * 1e6
            assert by_pos[p]["err"] == pytest.approx(err, rel=1e-4), f"{label} pos {p} error"
        last = by_pos[case.window - 1]["x"]
        for p, result in by_pos.items():
            kept = result["x"] if p >= case.accepted - 1 else last  # new tail positions start at the last iterate
            assert torch.equal(result["x_after"], kept), f"{label} pos {p} after the slide"
            assert result["start_slot_after"] == (case.start_slot + case.accepted - 1) % P, label
        vector_bytes = by_pos[0]["padded_numel"] * by_pos[0]["element_size"]
        busiest = max(r["bytes_sent"] for r in ranks)
        bound = busiest_rank_vectors(len(spec.state_names), P, by_pos[0]["rollout"], per_rank=P // world)
        assert busiest <= bound * vector_bytes, label
        if world == 1:
            assert busiest == 0, f"{label}: one rank holds every position, nothing to send"


@pytest.mark.parametrize("adaptivity,threshold_errors", [("mean", "seed"), ("median", "seed"),
                                                          ("mean", "next_guess")])
def test_engine_makes_the_seed_reference_decisions(adaptivity: str, threshold_errors: str, tmp_path) -> None:
    """The whole distributed loop against the seed's algorithm run in one process
    (``optim/paso_reference.py``), in float64 so that rounding cannot flip a decision:
    the same accepted steps every iteration, the same thresholds, the same final point."""
    P = 4
    options = dict(function="ackley", dim=300, seed=0, optimizer="adam", lr=1e-2, steps=120,
                   threshold=1e-5, ema_decay=0.99, adaptivity=adaptivity, threshold_errors=threshold_errors)
    mp.start_processes(train_main, args=(P, _free_port(), options, str(tmp_path)), nprocs=P, join=True,
                       start_method="spawn")
    engine = torch.load(tmp_path / "engine.pt", weights_only=False)
    cfg = validate(RunConfig.from_dict(dict(method="paso", P=P, **{k: v for k, v in options.items()
                                                     if k not in ("function", "dim", "seed")})))
    f = FUNCTIONS[options["function"]]

    def grad(x: torch.Tensor, step: int) -> torch.Tensor:
        p = x.clone().requires_grad_(True)
        f(p).backward()
        return p.grad

    oracle = reference_paso(OptimSpec.from_config(cfg), start_point(options["dim"], options["seed"]), grad,
                            cfg.steps, P, cfg.threshold, cfg.ema_decay, adaptivity, threshold_errors)
    assert 1 < len(set(oracle.accepted)), "the setting should accept varying numbers of steps"
    assert engine["accepted"] == oracle.accepted
    assert engine["thresholds"] == pytest.approx(oracle.thresholds, rel=1e-9)
    assert engine["grad_evals"] == oracle.grad_evals
    assert float((engine["x"] - oracle.x).abs().max()) <= 1e-10
