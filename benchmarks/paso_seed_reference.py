"""PASO's iteration count K: this repository's engine against the seed's algorithm.

Usage: ``python benchmarks/paso_seed_reference.py --out artifacts [--dim 10000 --steps 1000]``.
Writes ``tables/paso_seed_reference.{csv,md,json}``.

Why: the engine (distributed, prefix-scan rollout, one rank per window position) must make
the decisions of the seed's algorithm, run here in one process by
``paso_core.optim.paso_reference`` (sequential rollout, ``P + 1`` guesses). Both run in
float32 on the same function, start and batches; the scan rounds differently from the
sequential rollout, so K may differ by a few iterations when an error sits at the tolerance
(the float64 comparison in the tests is exact). The ablation column runs the oracle with the
``P - 1``-error threshold statistic this repository used before adopting the seed's rule.
Defaults are the OptEx benchmark of the PASO seed (Ackley, d = 1e4, T = 1000, Adam lr 1e-3,
P = 8, threshold 1e-5, ema 0.999).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd
import torch

import paso_core
from paso_core import report
from paso_core.config import RunConfig, validate
from paso_core.optim.paso_reference import reference_paso
from paso_core.optim.updates import OptimSpec
from paso_core.tasks import build_task


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="artifacts directory (default: the checkout's)")
    parser.add_argument("--function", default="ackley", choices=("sphere", "ackley", "rosenbrock"))
    parser.add_argument("--dim", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--P", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=1e-5)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def oracle_runs(cfg: RunConfig, adaptivity: str) -> dict[str, tuple[int, int, float]]:
    """(K, G, final gap) of the seed's rule and of the P-1-error ablation, in one process."""
    task = build_task(cfg, torch.device("cpu"))
    model = task.build_model()
    point = model.x

    def grad(x: torch.Tensor, step: int) -> torch.Tensor:
        p = x.clone().requires_grad_(True)
        task.function(p).backward()
        return p.grad

    out = {}
    for label, rule in (("seed", "seed"), ("P-1", "next_guess")):
        result = reference_paso(OptimSpec.from_config(cfg), point.detach().clone(), grad, cfg.steps, cfg.P,
                                cfg.threshold, cfg.ema_decay, adaptivity, threshold_errors=rule)
        with torch.no_grad():
            point.copy_(result.x)
        out[label] = (result.iterations, result.grad_evals, task.evaluate(model)["gap"])
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out:
        os.environ["PASO_ARTIFACTS"] = str(Path(args.out).resolve())
    torch.set_num_threads(1)
    options = dict(task="synthetic", function=args.function, dim=args.dim, steps=args.steps, lr=args.lr,
                   optimizer=args.optimizer, P=args.P, threshold=args.threshold, ema_decay=args.ema_decay,
                   seed=args.seed, progress=False)
    rows = []
    for adaptivity in ("mean", "median"):
        engine = paso_core.run(method="paso", adaptivity=adaptivity, **options).summary
        oracle = oracle_runs(validate(RunConfig.from_dict(dict(method="paso", adaptivity=adaptivity, **options))), adaptivity)
        rows.append({
            "adaptivity": adaptivity, "T": args.steps,
            "K_engine": engine["iterations"], "K_seed_reference": oracle["seed"][0],
            "K_reference_P-1_errors": oracle["P-1"][0],
            "G_engine": engine["grad_evals"], "G_seed_reference": oracle["seed"][1],
            "gap_engine": engine["final_gap"], "gap_seed_reference": oracle["seed"][2],
            "gap_reference_P-1_errors": oracle["P-1"][2],
        })
        print(f"{adaptivity}: K engine={rows[-1]['K_engine']} seed reference={rows[-1]['K_seed_reference']} "
              f"P-1 errors={rows[-1]['K_reference_P-1_errors']}", file=sys.stderr)
    table = pd.DataFrame(rows)
    config = {"script": "benchmarks/paso_seed_reference.py", **vars(args)}
    report.save_table(
        table, "paso_seed_reference", config, title="PASO iterations: engine vs the seed's algorithm",
        notes=(f"{args.function}, d={args.dim}, T={args.steps}, {args.optimizer} lr={args.lr}, P={args.P}, "
               f"threshold={args.threshold}, ema={args.ema_decay}, seed {args.seed}; float32. engine = "
               "paso_core.run (distributed, prefix-scan rollout); seed_reference = the seed's algorithm in one "
               "process (paso_core/optim/paso_reference.py); P-1_errors = the same without the last position's "
               "error in the threshold statistic (threshold_errors='next_guess', this repository's earlier rule). 'median' is the middle entry "
               "of the errors in window order, as in the seed."))
    print(report.to_markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
