"""Every intra-step method on one model in one invocation, and FSDP2's memory per rank vs world size.

Usage: ``python benchmarks/strategies.py --out artifacts [--scale default] [--model qwen3next-tiny]``.
Writes ``tables/strategies.{csv,md,json}`` (one row per method: tokens/s, step phases,
training state and peak memory per rank, bytes per step, bubble, ratios to serial) and
``tables/strategies_memory.{csv,md,json}`` (training state per rank of ``--world-methods``
at each ``--world-sizes``, relative to the smallest world, beside ``1/world``). The Markdown
table ``strategies.md`` opens with a discussion generated from these runs
(:func:`paso_core.experiments.strategies.discussion`), which is also printed.

Why a benchmark beside the notebook: the ratios must come from runs made side by side in
one invocation (same machine state, same data, same initial weights), and the FSDP2 memory
claim is checked here from the runs, never typed in. The engine canary (first step of each
method vs serial ``torch.optim``) runs first; the script stops if an engine is wrong.
Exit code 1 if the canary fails or FSDP2's per-rank state is off ``1/world`` by more than
``--memory-factor`` (either way).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from paso_core import report
from paso_core.experiments import strategies as st


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="artifacts directory (default: the checkout's)")
    parser.add_argument("--scale", default="default", choices=tuple(st.PRESETS))
    parser.add_argument("--model", default=None)
    parser.add_argument("--methods", nargs="*", default=None, help=f"default: {' '.join(st.ALL_METHODS)}")
    parser.add_argument("--nproc", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lora", default=None)
    parser.add_argument("--world-sizes", type=int, nargs="*", default=None)
    parser.add_argument("--world-methods", nargs="*", default=["fsdp2", "ddp"])
    parser.add_argument("--memory-factor", type=float, default=st.FSDP2_MEMORY_FACTOR)
    args = parser.parse_args(argv)
    values = {"model": args.model, "methods": args.methods, "nproc": args.nproc, "steps": args.steps,
              "block_size": args.block_size, "batch_size": args.batch_size, "lora": args.lora,
              "world_sizes": args.world_sizes, "sweep_methods": args.world_methods, "studies": ["methods", "world"]}
    plan = st.prepare(values, args.scale)
    with tempfile.TemporaryDirectory() as tmp:
        canary = st.canary(plan, Path(tmp), studies=("methods", "world"))
    print(canary[["case", "world_size", "rel_displacement_err", "passed"]].to_string(index=False))
    results = st.run_plan(plan)
    table = st.results_table(results)
    config = {**st.artifact_config(plan, results), "canary": canary.drop(columns=["path"]).to_dict("records"),
              "argv": sys.argv[1:] if argv is None else argv}
    root = Path(args.out) / "tables" if args.out else None
    methods = st.with_ratios(st.study(table, "methods"))
    discussion = st.discussion(table)
    shown = st.md_columns(methods, "methods")  # the Markdown's columns; the CSV keeps every one
    report.save_table(methods, "strategies", config, root=root, md_columns=shown,
                      title=f"Intra-step strategies side by side: {plan.params['model']}, "
                            f"block {plan.params['block_size']}, batch {plan.params['batch_size']}",
                      notes=(discussion + "\n\ntokens/s = batch x block / median step time (first step "
                             "left out); phases are medians, maxima over ranks; `mem_state_mb` = parameters + "
                             "gradients + optimizer state this rank holds (max over ranks), counted from its "
                             "tensors; `bytes_per_step` = the busiest rank's measured + modelled bytes (max over "
                             "steps); ratios are to the serial run of this invocation. Engine canary passed for "
                             f"{len(canary)} method configurations before these runs."))
    scaling = st.memory_scaling(table)
    report.save_table(scaling, "strategies_memory", config, root=root,
                      title="Training state per rank against world size (measured)",
                      notes=("`relative_state` = this world's per-rank parameters + gradients + optimizer state "
                             "over the same method's at the smallest world; FSDP2 shards all three, so it "
                             "should follow `ideal_1_over_world`; DDP replicates them (stays at 1)."))
    print(methods[shown].to_string(index=False))
    print(scaling.to_string(index=False))
    print(discussion)
    check = st.fsdp2_memory(table, args.memory_factor)
    off = check[~check["within"]]
    if not off.empty:
        print(f"FSDP2 per-rank state does not fall as 1/world (factor {args.memory_factor}):\n{off}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
