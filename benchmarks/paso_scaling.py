"""PASO against serial, side by side in one run: K, G, bytes and peak memory per rank vs P.

Usage: ``python benchmarks/paso_scaling.py --out artifacts [--dim 1000000 --steps 100]``.
Writes ``tables/paso_scaling.{csv,md,json}`` and ``figures/paso_scaling.png``.

Why these numbers: PASO's claim is fewer *sequential* iterations (K < T) at the price of
more gradient evaluations (G > T); its memory per worker must stay one model + one
optimizer state whatever P is, and its traffic per rank must not grow like P·d (the
reference implementation funnels the whole window through one rank). Memory is reported
as peak RSS minus the RSS after imports, i.e. what training itself allocated.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import paso_core  # noqa: E402
from paso_core import report  # noqa: E402
from paso_core.metrics import train_rows, training_time  # noqa: E402
from paso_core.methods.paso import busiest_rank_vectors  # noqa: E402
from paso_core.optim.updates import STATE_NAMES  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="artifacts directory (default: the checkout's)")
    parser.add_argument("--function", default="ackley")
    parser.add_argument("--dim", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--threshold", type=float, default=1e-5)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--P", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--relay", action="store_true", help="also run the sequential relay rollout")
    parser.add_argument("--mmap-threshold", type=int, default=1 << 20,
                        help="glibc MALLOC_MMAP_THRESHOLD_ for the workers, in bytes (0: glibc's default)")
    args = parser.parse_args(argv)
    if args.mmap_threshold < 0:
        parser.error(f"--mmap-threshold={args.mmap_threshold} is not valid; give bytes >= 1, "
                     "or 0 for glibc's default")
    return args


def row_for(label: str, result: paso_core.RunResult, P: int, rollout: str, n_state: int) -> dict:
    s = result.summary
    growth = [peak - base for peak, base in zip(s["peak_rss_mb_per_rank"], s["baseline_rss_mb_per_rank"])]
    param_bytes = s["n_params"] * 4
    vector_bytes = s.get("vector_bytes", param_bytes)  # PASO pads each parameter to 512 B
    per_iter = train_rows(result.metrics).get("bytes_iter_max")  # the schema's per-iteration maximum
    return {
        "method": label, "P": P, "rollout": rollout, "T": s["steps"], "K": s["iterations"],
        "G": s["grad_evals"], "speedup_T_over_K": s["speedup"], "overhead_G_over_T": s["overhead"],
        "final_gap": s.get("final_gap"),
        "MB_sent_max_rank": max(s["bytes_sent_per_rank"]) / 2**20,
        # measured: the largest number of bytes any rank sent in any one iteration
        "iter_bytes_max_x_params": float(per_iter.max()) / vector_bytes if per_iter is not None else 0.0,
        "iter_bytes_bound_x_params": busiest_rank_vectors(n_state, P, rollout) if label == "paso" else 0,
        "train_mem_MB_max_rank": max(growth), "train_mem_x_params": max(growth) / (param_bytes / 2**20),
        "peak_rss_MB_max_rank": s["peak_rss_mb_max"],
        "param_MB": param_bytes / 2**20, "wall_s": s["wall_time_s"],
        "train_s": training_time(result.metrics),  # the schema's training time: setup and evaluations out
    }


#: What the Markdown table shows (the CSV has every column, wall_s among them: the whole
#: worker, start-up included, while train_s is the training the study compares).
MD_COLUMNS = ["method", "P", "rollout", "K", "G", "final_gap", "iter_bytes_max_x_params",
              "iter_bytes_bound_x_params", "train_mem_x_params", "train_s"]


def plot(table: pd.DataFrame, args: argparse.Namespace) -> plt.Figure:
    """K and G, the busiest rank's bytes per iteration and training memory per rank against P,
    with serial as reference lines; the setting in the title."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), layout="constrained")
    paso = table[(table.method == "paso") & (table.rollout == "scan")]
    axes[0].plot(paso.P, paso.K, "o-", label="PASO K (sequential iterations)")
    axes[0].plot(paso.P, paso.G, "s--", label="PASO G (gradient evaluations)")
    axes[0].axhline(args.steps, color="k", lw=0.8, label="serial T = G")
    axes[1].plot(paso.P, paso.iter_bytes_max_x_params, "o-", label="scan rollout, measured")
    axes[1].plot(paso.P, paso.iter_bytes_bound_x_params, "k:", marker="x", label="bound (n_state+2)·⌈log2 P⌉+1")
    relay = table[table.rollout == "relay"]
    if not relay.empty:
        axes[1].plot(relay.P, relay.iter_bytes_max_x_params, "r^", label="relay rollout, measured")
        axes[2].plot(relay.P, relay.train_mem_MB_max_rank / relay.param_MB, "r^", label="PASO (relay)")
    axes[2].plot(paso.P, paso.train_mem_MB_max_rank / paso.param_MB, "o-", label="PASO (scan)")
    serial_mem = table[table.method == "serial"].train_mem_MB_max_rank.iloc[0] / paso.param_MB.iloc[0]
    axes[2].axhline(serial_mem, color="k", lw=0.8, label="serial")
    xlabel = "P (window positions, one worker each) [count]"
    for ax, title, ylabel in zip(axes, ("sequential iterations and gradient evaluations",
                                        "busiest rank, worst iteration: bytes sent",
                                        "training memory per rank (max over ranks)"),
                                 ("iterations / evaluations [count]", "bytes sent [x parameter size]",
                                  "peak RSS growth [x parameter size]")):
        ax.set_xticks(list(paso.P))
        report.finish_axes(ax, title=title, xlabel=xlabel, ylabel=ylabel, integer_y=ax is axes[0])
    fig.suptitle(f"PASO vs serial: {args.function}, d={args.dim}, T={args.steps}, {args.optimizer} lr={args.lr:g}, "
                 f"threshold {args.threshold:g}, ema {args.ema_decay:g}; one run per point, CPU/gloo")
    return fig


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out:
        os.environ["PASO_ARTIFACTS"] = str(Path(args.out).resolve())
    if args.mmap_threshold:
        # glibc keeps freed parameter-sized blocks in its heap once its dynamic threshold
        # has grown, so peak RSS would track allocator history instead of live tensors. A
        # fixed threshold returns them to the OS; it costs page faults, hence wall time.
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    common = dict(task="synthetic", function=args.function, dim=args.dim, steps=args.steps, lr=args.lr,
                  optimizer=args.optimizer, progress=False)
    n_state = len(STATE_NAMES[args.optimizer])
    rows = [row_for("serial", paso_core.run(method="serial", **common), 1, "-", n_state)]
    variants = [(P, "scan") for P in args.P] + ([(max(args.P), "relay")] if args.relay else [])
    for P, rollout in variants:
        result = paso_core.run(method="paso", P=P, rollout=rollout, threshold=args.threshold,
                               ema_decay=args.ema_decay, **common)
        rows.append(row_for("paso", result, P, rollout, n_state))
        print(f"P={P} {rollout}: K={rows[-1]['K']} G={rows[-1]['G']}", file=sys.stderr)
    table = pd.DataFrame(rows)
    config = {"script": "benchmarks/paso_scaling.py", **vars(args)}
    report.save_table(table, "paso_scaling", config, title="PASO vs serial: iterations, work, traffic, memory",
                      notes=f"{args.function}, d={args.dim}, T={args.steps}, {args.optimizer} lr={args.lr}, "
                            f"threshold={args.threshold}, ema={args.ema_decay}; CPU/gloo, all runs in one "
                            "invocation. iter_bytes_max = the most bytes any rank sent in any one iteration "
                            "(measured, including the few-float decision gather), iter_bytes_bound = the O(d log P) "
                            "bound of methods/paso.py, both in (padded) parameter vectors. train_s = training seconds (setup "
                            "and evaluations excluded), wall_s = the whole worker. train_mem = peak RSS minus RSS after imports; "
                            + (f"glibc mmap threshold fixed at {args.mmap_threshold} B so RSS follows live "
                               "tensors (wall times then include page faults)." if args.mmap_threshold
                               else "glibc's default allocator (RSS includes blocks it retains)."),
                      md_columns=MD_COLUMNS)
    fig = plot(table, args)
    report.save_figure(fig, "paso_scaling", config)
    print(report.to_markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
