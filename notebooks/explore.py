# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Explore the recorded runs
#
# **What this is.** An interactive view of every run directory below `runs_dir` (default: the
# artifacts' `runs/`, i.e. `$PASO_ARTIFACTS/runs` or the checkout's `artifacts/runs`), nested folders
# included: pick a task, methods and runs, move a slider over any sweep the recorded configs hold (PASO's
# `P`, `threshold`, `ema_decay`, local SGD's `H_base`, the pipelines' micro-batches, `nproc`, `seed`, ...:
# discovered from the runs' `config.json`, never hard-coded), choose a metric and an x axis, and the
# figure redraws. A button launches a small new PASO run (synthetic Ackley, a temporary directory) with a
# progress bar fed from the metrics the run streams; when it finishes it joins the list.
#
# ```bash
# voila notebooks/explore.ipynb                     # the page alone (widgets, no code)
# jupyter lab notebooks/explore.ipynb               # the notebook
# papermill notebooks/explore.ipynb out.ipynb -p runs_dir /path/to/runs -p metric eval_test_accuracy
# ```
#
# Without a live frontend (papermill, nbmake, `make test` on an empty artifacts directory) there are no
# widgets: the notebook shows the same view of the default selection as a static table and figure, and
# says so when no run is recorded. The logic lives in `paso_core/explore.py` (unit-tested in
# `tests/test_explore.py`); `tests/test_browser.py` serves this notebook with Voilà and drives it in
# headless Chromium (`make test-browser`).
#

# %% tags=["parameters"]
# Parameters (papermill -p NAME VALUE). None = the default.
scale = None             # "smoke" | "default" | "paper": the new run's steps (200 | 300 | 1000); None -> $PASO_SCALE
runs_dir = None          # where the recorded runs are; None -> <artifacts>/runs
metric = None            # the metric shown first (None: train_loss when recorded)
new_run_dir = None       # where the button's runs go; None -> a new temporary directory
(_names_before_papermill := set(globals()));  # not a parameter: lets unknown -p names be rejected

# %%
# papermill only warns about a -p name this notebook does not have; stop here instead, before any work.
from paso_core.notebook_files import check_parameters

check_parameters(globals())


# %%
import os
from pathlib import Path

import pandas as pd
from IPython.display import Image, Markdown, display

from paso_core import explore
from paso_core.runs import artifacts_root

pd.set_option("display.width", 220)
pd.set_option("display.max_columns", 30)
scale = scale or os.environ.get("PASO_SCALE") or "default"
root = Path(runs_dir) if runs_dir else artifacts_root() / "runs"
runs = explore.discover_runs(root)
found = explore.sweeps(runs)
if runs:
    display(Markdown(f"**{len(runs)} recorded run(s)** under `{root}`; tasks: "
                     + ", ".join(f"{t} ({len(explore.filter_runs(runs, task=t))})" for t in explore.tasks(runs))
                     + "; sweeps: " + (", ".join(f"`{k}` {v}" for k, v in found.items()) or "none")))
else:
    display(Markdown(f"**No recorded runs under `{root}`.** Run `make artifacts` (or any `paso_core.run`), "
                     "or launch a small run with the button below in a live notebook."))


# %% [markdown]
# ## Explore
#
# In Jupyter or Voilà: the widgets. Headless: the default selection (the task with most runs, all its
# methods, every sweep value) as a static figure.
#

# %%
widgets = explore.widgets_module()
selection = explore.default_selection(runs, metric)
new_run = explore.new_run_options(scale)
if widgets is not None:
    explorer = explore.Explorer(runs, widgets, metric=metric, new_run_dir=new_run_dir, new_run=new_run)
    display(explorer.view())
else:
    print("no live widget frontend: the default selection, statically "
          f"(task {selection.task}, metric {selection.metric}; the button would run {new_run})")
    display(Image(explore.selection_png(runs, selection)))


# %% [markdown]
# ## The runs of the default selection
#

# %%
table = explore.runs_table(selection.apply(runs), keys=list(found))
display(table if not table.empty else Markdown("_no runs_"))
