"""PASO placed on P, 2 and 1 workers against serial, side by side in one invocation.

Usage: ``python benchmarks/paso_placement.py --out artifacts [--P 2 4 8]``. Writes
``tables/paso_placement.{csv,md,json}`` and ``figures/paso_placement.png``.

Why: PASO's seed runs either one GPU per window position (``torchrun``) or the whole window
on one device (``--training_mode parallel``). Here every ``nproc`` dividing ``P`` is a
placement of the same algorithm (``positions_per_rank = P / nproc``): the trajectory (K, G,
final parameters) must not depend on it, and this script checks that bit for bit. What does
change is per rank: the state it holds grows with its positions (one model + one optimizer
state per position), its traffic shrinks (messages between its own positions are copies), and
the wall-clock per sequential iteration. On 2 shared CPU cores the last only says how the
positions' gradients share the cores; K, G, state per rank and bytes per rank transfer to GPUs,
and with CUDA the same script gives the single-GPU wall-clock speed-up.
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
import torch  # noqa: E402

from paso_core import report  # noqa: E402
from paso_core.config import RunConfig  # noqa: E402
from paso_core.experiments.common import iterations_to_reach  # noqa: E402
from paso_core.launch import launch_grouped  # noqa: E402
from paso_core.metrics import eval_rows, train_rows, training_time  # noqa: E402

TASKS = {
    "synthetic": dict(task="synthetic", function="ackley", optimizer="adam", lr=1e-3),
    "digits-cnn": dict(task="vision", dataset="digits", model="cnn", batch_size=64, optimizer="adam", lr=1e-3),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="artifacts directory (default: the checkout's)")
    parser.add_argument("--P", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--ranks", type=int, nargs="+", default=[0, 2, 1],
                        help="placements: worker counts (0 = P, one position per worker); those not dividing P are "
                             "skipped")
    parser.add_argument("--batched-ranks", type=int, nargs="*", default=[1],
                        help="placements also run with batched='vmap' (a worker's guesses' gradients in one vmap "
                             "call), where a worker holds at least 3 positions")
    parser.add_argument("--dim", type=int, default=100_000, help="synthetic dimension")
    parser.add_argument("--steps", type=int, default=120, help="synthetic steps")
    parser.add_argument("--vision-steps", type=int, default=60)
    parser.add_argument("--threshold", type=float, default=1e-5)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    args = parser.parse_args(argv)
    bad = [p for p in args.P if p < 1] + [n for n in args.ranks if n < 0]
    if bad:
        parser.error(f"--P and --ranks take positive counts (0 in --ranks: P workers); got {bad}")
    return args


def configs(args: argparse.Namespace, root: Path) -> list[tuple[str, int, int, RunConfig]]:
    """(task, P, workers, config) of every run; P = 1 stands for serial. Batched runs come after
    the loop runs of their P (the first run of a P, on P workers, is the reference)."""
    planned = []
    for task in args.tasks:
        steps = args.steps if task == "synthetic" else args.vision_steps
        shared = dict(TASKS[task], steps=steps, dim=args.dim, progress=False, threads_per_worker=1, seed=0,
                      eval_every=max(1, steps // 10) if task != "synthetic" else 0)
        planned.append((task, 1, 1, RunConfig.from_dict(dict(shared, method="serial", out_dir=str(root / task / "serial")))))
        for P in args.P:
            for n in dict.fromkeys(P if r == 0 else r for r in args.ranks):
                if P % n:
                    continue
                options = dict(shared, method="paso", P=P, nproc=n, threshold=args.threshold, ema_decay=args.ema_decay,
                               out_dir=str(root / task / f"P{P}_on{n}"))
                planned.append((task, P, n, RunConfig.from_dict(options)))
                if n in args.batched_ranks and P // n >= 3:  # the window start + at least two batched guesses
                    options = dict(options, batched="vmap", out_dir=str(root / task / f"P{P}_on{n}_vmap"))
                    planned.append((task, P, n, RunConfig.from_dict(options)))
    return planned


def time_to_quality(result, serial, task: str) -> float:
    """Training seconds until the run first matches serial's final quality (NaN: never)."""
    if task == "synthetic":  # full-batch loss: serial's last value
        target = float(train_rows(serial.metrics)["train_loss"].iloc[-1])
        return iterations_to_reach(train_rows(result.metrics), "train_loss", target, x="train_time_s")
    target = float(eval_rows(serial.metrics)["eval_test_accuracy"].iloc[-1])
    return iterations_to_reach(eval_rows(result.metrics), "eval_test_accuracy", target, x="train_time_s", mode="above")


def rows_for(planned, results) -> pd.DataFrame:
    serial = {task: r for (task, P, _, _), r in zip(planned, results) if P == 1}
    finals: dict[tuple[str, int], dict] = {}
    rows = []
    for (task, P, n, _), result in zip(planned, results):
        s = result.summary
        final = torch.load(result.path / "final.pt", weights_only=True)
        reference = finals.setdefault((task, P), final)  # the first placement of this P (P workers)
        train_s = training_time(result.metrics)
        serial_s = training_time(serial[task].metrics)
        reach = time_to_quality(result, serial[task], task)
        growth = [peak - base for peak, base in zip(s["peak_rss_mb_per_rank"], s["baseline_rss_mb_per_rank"])]
        rows.append({
            "task": task, "method": s["method"], "P": P if P > 1 else 0, "workers": n,
            "positions_per_rank": s.get("positions_per_rank", 1), "gradients": result.config.get("batched", "loop"),
            "K": s["iterations"], "G": s["grad_evals"],
            "same_trajectory": all(torch.equal(final[k], reference[k]) for k in final),
            "final_max_abs_diff": max(float((final[k] - reference[k]).abs().max()) for k in final),
            "s_per_iteration": train_s / s["iterations"], "train_s": train_s,
            "speedup_per_iteration_vs_serial": (serial_s / serial[task].summary["iterations"]) / (train_s / s["iterations"]),
            "s_to_serial_quality": reach, "quality_matched_speedup": serial_s / reach if reach == reach else float("nan"),
            "state_MB_per_rank": s.get("state_mb_per_rank", float("nan")),
            "rss_growth_MB_max_rank": max(growth),
            "MB_sent_max_rank": max(s["bytes_sent_per_rank"]) / 2**20,
        })
    return pd.DataFrame(rows)


#: What the Markdown table shows (the CSV has every column): G stays there, since a placement
#: cannot change it without changing K, and ``same_trajectory`` checks both.
MD_COLUMNS = ["task", "P", "workers", "gradients", "K", "same_trajectory", "s_per_iteration",
              "quality_matched_speedup", "state_MB_per_rank", "MB_sent_max_rank"]
#: One marker and line style per P, so placements whose points coincide (every P holds one
#: position per worker on P workers) stay visible on top of each other.
P_STYLES = (("o", "-", 9), ("s", "--", 7), ("^", ":", 5), ("D", "-.", 4))


def args_setting(args: argparse.Namespace) -> str:
    """The setting every figure title names."""
    tasks = {"synthetic": f"ackley d={args.dim}, {args.steps} steps", "digits-cnn": f"digits CNN, {args.vision_steps} steps"}
    return (", ".join(tasks[t] for t in args.tasks) + f"; adam lr 1e-3, threshold {args.threshold:g}, "
            f"ema {args.ema_decay:g}")


def plot(table: pd.DataFrame, title: str = "") -> plt.Figure:
    """Per task: time per iteration, state per worker and traffic against the placement, one
    line per P (its own marker and dashes); the legend names the lines that coincide."""
    paso = table[table["method"] == "paso"]
    tasks = list(dict.fromkeys(paso["task"]))
    fig, axes = plt.subplots(len(tasks), 3, figsize=(15, 3.9 * len(tasks)), squeeze=False, layout="constrained")
    for row, task in zip(axes, tasks):
        mine = paso[paso["task"] == task]
        style = {P: dict(color=f"C{i}", marker=P_STYLES[i % len(P_STYLES)][0], ls=P_STYLES[i % len(P_STYLES)][1],
                         ms=P_STYLES[i % len(P_STYLES)][2], mfc="none")
                 for i, P in enumerate(sorted(set(mine["P"])))}
        for P, part in mine[mine["gradients"] == "loop"].groupby("P"):
            part = part.sort_values("workers")
            row[0].plot(part["workers"], part["s_per_iteration"], label=f"P={P}", **style[P])
            row[1].plot(part["positions_per_rank"], part["state_MB_per_rank"], label=f"P={P}", **style[P])
            row[2].plot(part["workers"], part["MB_sent_max_rank"], label=f"P={P}", **style[P])
        for P, part in mine[mine["gradients"] == "vmap"].groupby("P"):
            row[0].plot(part["workers"], part["s_per_iteration"], "*", ms=12, mfc="none", color=style[P]["color"],
                        label=f"P={P}, vmap")
        serial = table[(table["task"] == task) & (table["method"] == "serial")]
        row[0].axhline(float(serial["s_per_iteration"].iloc[0]), color="k", lw=0.8, ls=":", label="serial")
        for ax, x, (panel, y) in zip(row, ("workers", "positions_per_rank", "workers"),
                                     [("time per iteration (2 shared CPU cores)", "seconds per sequential iteration [s]"),
                                      ("state per worker grows with its positions", "training state per worker [MB]"),
                                      ("traffic (0 on one worker)", "sent by the busiest worker [MB]")]):
            ax.set_xscale("log", base=2)
            ticks = sorted({int(v) for v in mine[x]})
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            xlabel = "workers [count]" if x == "workers" else "window positions per worker [count]"
            report.finish_axes(ax, title=f"{task}: {panel}", xlabel=xlabel, ylabel=y)
            ax.title.set_fontsize(9)
    fig.suptitle(title or "PASO placements: one run per point")
    return fig


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out:
        os.environ["PASO_ARTIFACTS"] = str(Path(args.out).resolve())
    root = Path(os.environ.get("PASO_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts")) / "runs" / "paso_placement"
    planned = configs(args, root)
    results = launch_grouped([cfg for *_, cfg in planned])  # one launch per worker count
    table = rows_for(planned, results)
    config = {"script": "benchmarks/paso_placement.py", **vars(args)}
    report.save_table(table, "paso_placement", config, md_columns=MD_COLUMNS,
                      title="PASO placed on P, 2 and 1 workers (loop and vmap gradients) vs serial (one invocation)",
                      notes="Every PASO row of one P must show the same K, G (CSV) and final parameters "
                            "(`same_trajectory`: bitwise equal to the P-worker run). `state_MB_per_rank` counts the "
                            "tensors a worker holds (model + per position: guess, gradient, optimizer state, scan "
                            "and receive buffers); `MB_sent_max_rank` the busiest worker's traffic. On 2 shared CPU "
                            "cores the seconds measure how positions share the cores (P workers use both cores, one "
                            "worker one thread); K, G, state and bytes transfer to GPUs. `quality_matched_speedup`: "
                            "serial's training seconds over the seconds to first reach serial's final loss "
                            "(synthetic) or test accuracy (digits). `gradients=vmap`: one worker's guesses' gradients in one "
                            "`torch.func.vmap` call (the window start's alone, exact); batched kernels round "
                            "differently, so its `same_trajectory` may be False with `final_max_abs_diff` (CSV) "
                            "at rounding level.")
    report.save_figure(plot(table, f"PASO placed on P, 2 and 1 workers: {args_setting(args)}; one run per point"),
                       "paso_placement", config)
    print(table[MD_COLUMNS].to_string(index=False), file=sys.stderr)
    looped = table[(table["method"] == "paso") & (table["gradients"] == "loop")]  # vmap: rounding of batched kernels
    return 0 if bool(looped["same_trajectory"].all()) else 1


if __name__ == "__main__":
    sys.exit(main())
