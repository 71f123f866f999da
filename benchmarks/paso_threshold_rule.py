"""PASO's threshold rule, the seed's (P errors) against P-1 errors, on the notebooks' tasks.

Usage: ``python benchmarks/paso_threshold_rule.py --out artifacts [--scale default] [--seeds 0 1 2]``.
Writes ``tables/paso_threshold_rule.{csv,md,json}``.

Why: the seed adapts its tolerance from P errors, the last being the last position's
iterate against its own guess, one step behind; that error is large, so the tolerance grows
faster and PASO accepts more steps per iteration. This measures what that does to K and to
the result, on the main PASO run of the CIFAR notebook (digits CNN at default scale) and of
the WikiText notebook (GPT-2 tiny on the offline corpus), with ``threshold_errors`` the only
difference. The runs are the notebooks' own PASO runs (same plan, same seeds).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

from paso_core import report
from paso_core.config import RunConfig
from paso_core.launch import launch_grouped
from paso_core.methods.paso import THRESHOLD_ERRORS
from paso_core.experiments import cifar, wikitext

#: The metric each study reports (lower is better for perplexity).
STUDIES = {"cifar_paso": "final_test_accuracy", "wikitext_paso": "final_test_ppl"}


def paso_options(study: str, scale: str, seed: int) -> dict:
    """The notebook's main PASO run for ``seed`` (the plan the notebook would make)."""
    if study == "cifar_paso":
        params = cifar.resolve_params({"seeds": [seed]}, scale)
        params = cifar.with_dataset(params, cifar.resolve_dataset(params))
        config = next(c for c in cifar.plan_runs(params) if c.method == "paso")
    else:
        params = wikitext.resolve_params({"seeds": [seed]}, scale)
        config = next(c for c in wikitext.plan_runs(params) if c.method == "paso")
    options = config.to_dict()
    for key in ("out_dir", "run_name", "nproc"):
        options.pop(key)
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="artifacts directory (default: the checkout's)")
    parser.add_argument("--scale", default="default", choices=("smoke", "default", "paper"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args(argv)
    if args.out:
        os.environ["PASO_ARTIFACTS"] = str(Path(args.out).resolve())
    planned = [(study, metric, seed, rule) for study, metric in STUDIES.items() for seed in args.seeds
               for rule in THRESHOLD_ERRORS]
    configs = [RunConfig.from_dict({**paso_options(study, args.scale, seed), "threshold_errors": rule,
                                    "progress": False}) for study, _, seed, rule in planned]
    rows = []
    for (study, metric, seed, rule), result in zip(planned, launch_grouped(configs)):  # K and quality, not time
        summary = result.summary
        rows.append({"study": study, "seed": seed, "threshold_errors": rule, "P": summary["P"],
                     "T": summary["steps"], "K": summary["iterations"], "G": summary["grad_evals"],
                     "metric": metric.removeprefix("final_"), "value": summary[metric],
                     "final_threshold": summary["final_threshold"]})
        print(f"{study} seed {seed} {rule}: K={summary['iterations']} {metric}={summary[metric]:.4g}", file=sys.stderr)
    table = pd.DataFrame(rows)
    config = {"script": "benchmarks/paso_threshold_rule.py", **vars(args)}
    report.save_table(
        table, "paso_threshold_rule", config, title="PASO's tolerance from P errors (seed) or P-1 (next_guess)",
        notes=(f"The main PASO run of each notebook at scale={args.scale} (digits CNN for cifar_paso, GPT-2 tiny on "
               "the offline pydoc corpus for wikitext_paso), run twice: threshold_errors='seed' (the last "
               "position's error against its own guess is part of the statistic, the default) and 'next_guess' "
               "(only the P-1 errors against a next guess). Everything else is identical; value is test "
               "accuracy (higher is better) or test perplexity (lower is better)."))
    print(report.to_markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
