"""Engine canary: each method's first step against serial ``torch.optim``, before any experiment.

Usage: ``python benchmarks/engine_canary.py --out artifacts [--task vision --batch-size 32]``.
Writes ``tables/engine_canary.{csv,md,json}``.

Why: on some torch versions and backends an engine computes something other than what it
claims (FSDP2 and pipelining on CPU/gloo before torch 2.10) and still trains; every figure
made with it would be wrong. The canary runs one SGD step with lr 1 (so the weights move by
exactly the first, averaged gradient) of every method the notebooks use (the intra-step
engines on a small Llama, ``--text-model``) and compares the
displacement with serial training's (a window of ``P`` steps for PASO, whose smallest run
is one window; OptEx with one worker, since with more its proxy steps differ by design).
Cases of one world size share a launch (:func:`paso_core.equivalence.run_matrix`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from paso_core import report
from paso_core.equivalence import CANARY_RTOL, canary_case, run_matrix

#: method -> its own options in the canary (on ``--task``)
METHOD_OPTIONS = {"serial": {}, "grad_accum": {"micro_batches": 2}, "optex": {"P": 1},
                  "naive_dp": {"nproc": 2}, "ddp": {"nproc": 2}, "paso": {"P": 2}, "local_sgd": {"nproc": 2}}
#: the intra-step engines (sharding, tensor and pipeline parallelism), on a text model with
#: attention heads and decoder blocks to split (``--text-model``)
INTRA_STEP_OPTIONS = {"fsdp": {"nproc": 2}, "fsdp2": {"nproc": 2}, "tp": {"nproc": 2},
                      "fsdp2_tp": {"nproc": 4, "tp": 2}, "pp": {"nproc": 2, "microbatches": 2},
                      "model_parallel": {"nproc": 2}}
#: the asynchronous pipelines, on the digits CNN (untied weights: a tied LM head is one copy per
#: stage there, as in PipeDream); their first mini-batch runs on the initial weights everywhere.
#: SpecTrain predicts with the SGD-momentum velocity, so it is checked with momentum.
ASYNC_OPTIONS = {"pipeoptim": {}, "pipedream": {}, "async_nostash": {}, "spectrain": {"optimizer": "momentum"}}


#: What the Markdown table shows (the CSV has every column): the case and its ranks, the
#: errors with their tolerance, the verdict and the engine it ran on.
MD_COLUMNS = ["case", "world_size", "iterations", "max_abs_diff", "rel_displacement_err", "rel_weight_err", "rtol",
              "loss_rel_err", "passed", "engine"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="artifacts directory (default: the checkout's)")
    parser.add_argument("--task", default="vision", choices=("synthetic", "vision", "text"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--text-model", default="llama-tiny", help="model of the intra-step engines' canary")
    parser.add_argument("--block-size", type=int, default=32, help="context of the intra-step engines' canary")
    parser.add_argument("--rtol", type=float, default=CANARY_RTOL)
    args = parser.parse_args(argv)
    shared = {"task": args.task, "batch_size": args.batch_size, "seed": 0}
    text = {"task": "text", "model": args.text_model, "block_size": args.block_size, "batch_size": 8, "seed": 0,
            "eval_test": False}
    cases = [canary_case(m, args.rtol, **shared, **opts) for m, opts in METHOD_OPTIONS.items()]
    cases += [canary_case(m, args.rtol, **text, **opts) for m, opts in INTRA_STEP_OPTIONS.items()]
    digits = {"task": "vision", "dataset": "digits", "model": "cnn", "batch_size": args.batch_size, "seed": 0,
              "stages": 2, "nproc": 2}
    cases += [canary_case(m, args.rtol, **digits, **opts) for m, opts in ASYNC_OPTIONS.items()]
    with tempfile.TemporaryDirectory() as tmp:
        table = run_matrix(cases, tmp)
    root = Path(args.out) / "tables" if args.out else None
    notes = (f"One SGD step with lr 1 of each method (PASO: one window of P steps) against serial torch.optim "
             f"computed in-process; `rel_displacement_err` = ||dx_engine - dx_serial|| / ||dx_serial||, must be "
             f"<= rtol ({args.rtol:g}); PASO with threshold 0 must match bit for bit. "
             f"{int(table['launch'].nunique())} launches for {len(table)} cases.")
    report.save_table(table.drop(columns=["note", "path"]), "engine_canary", {"cases": [vars(c) for c in cases], **vars(args)},
                      root=root, title="Engine canary: first step of every method vs serial", notes=notes,
                      md_columns=MD_COLUMNS)
    print(table.drop(columns=["note", "path"]).to_string(index=False))
    failed = table[~table["passed"]]
    if not failed.empty:
        print(f"canary FAILED for: {', '.join(failed['case'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
