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
# # Vanilla Adam vs OptEx vs PASO on synthetic functions
#
# Reproduces the OptEx comparison of the PASO seed: minimise Sphere, Ackley and Rosenbrock
# from a uniform start in $[-1, 1]^d$ with Adam and compare **sequential iterations**
# (`T` for vanilla, `K` parallel iterations for OptEx and PASO) needed to reach a given
# optimality gap. Every run goes through `paso_core.run` under `torchrun`; figures and
# tables land in `artifacts/figures/` and `artifacts/tables/` (next to a JSON file with
# the settings and the machine).
#
# * **Vanilla** — `method="serial"`, `torch.optim.Adam`.
# * **OptEx** — `method="optex"`: the *algorithm* of Shu et al. (NeurIPS 2024): per
#   iteration a proxy rollout of `N-1` Adam steps driven by the Matérn-5/2 GP posterior
#   mean of the last `T0` true gradients, `N` true gradients in parallel, last worker's step
#   kept, length scale re-tuned every `tune_every` iterations. Not the public PyTorch port,
#   which evaluates all workers at the same point and so degenerates to vanilla steps.
# * **PASO** — `method="paso"`: fixed-point iteration over a window of `P = N` steps with
#   adaptive tolerance (`threshold`, `ema_decay`).
#
# **Scales** (`scale` parameter; explicit `-p name value` always overrides the preset):
#
# | scale | functions | d | T | workers | seeds | meant for |
# |---|---|---|---|---|---|---|
# | `smoke` | ackley | 200 | 40 | 2 | 1 | CI, under a minute |
# | `default` | sphere, ackley, rosenbrock | 2 000 | 300 | 4 | 2 | a 2-core CPU (measured time: the README's job-time table) |
# | `paper` | sphere, ackley, rosenbrock | 10 000 | 1 000 | 8 | 3 | the seed's exact settings (hours on 2 cores) |
#
# All scales use Adam, lr 1e-3 (Rosenbrock: lr 1e-4 and gradient-norm clip 100), OptEx
# `T0 = 20`, `tune_every = 10` (or, with `-p optex_variant official_jax`, the official JAX
# code's history 50, fixed length scale 0.1, inputs divided by the mean of √‖x_j‖ and a zero
# first estimate), PASO `threshold = 1e-5`, `ema_decay = 0.999`
# (`paso_core.experiments.optex.PRESETS`). Each method gets only its own options: OptEx
# `P = N`, `history`, `tune_every`; PASO `P = N`, `threshold`, `ema_decay`.
# The measured time of the `default` run is in the README's job-time table (written by
# `make artifacts`); most of it is process start-up of the `torchrun` launches. The last
# cell prints this run's own time.
#
# If `scale` is left `None`, the environment variable `PASO_SCALE` decides (CI runs
# `PASO_SCALE=smoke pytest --nbmake notebooks/`), else `default`. An unknown parameter
# (`-p tresh 0.1`) stops the cell below the parameters, listing the valid names.
#
# ```bash
# papermill notebooks/optex_comparison.ipynb out.ipynb -p scale smoke
# papermill notebooks/optex_comparison.ipynb out.ipynb -p scale paper -p seeds "[0, 1, 2, 3]"
# ```
#

# %% tags=["parameters"]
# Parameters (papermill). None = take the value from the scale preset.
scale = None        # "smoke" | "default" | "paper"; None -> $PASO_SCALE, else "default"
functions = None    # subset of ["sphere", "ackley", "rosenbrock"]
dim = None          # problem dimension d
steps = None        # sequential steps T of every method
nproc = None        # workers: N for OptEx, window P for PASO
lr = None           # Adam learning rate (Sphere, Ackley)
seeds = None        # list of seeds; a seed fixes the init point shared by the three methods
threshold = None    # PASO initial tolerance
ema_decay = None    # PASO tolerance EMA
rosenbrock_lr = None
rosenbrock_clip = None
history = None      # OptEx T0
tune_every = None   # OptEx length-scale re-tuning period in iterations (0: never)
reach_rtol = None   # relative slack when checking "reached vanilla's final gap"
optex_variant = None  # "project" (default) | "official_jax": the official JAX code's GP settings
(_names_before_papermill := set(globals()));  # not a parameter: lets unknown -p names be rejected

# %%
# papermill only warns about a -p name this notebook does not have; stop here instead, before any work.
from paso_core.notebook_files import check_parameters

check_parameters(globals())


# %%
import time

import pandas as pd
from IPython.display import Markdown, display

from paso_core import report
from paso_core.experiments import optex

NOTEBOOK_START = time.perf_counter()
values = dict(functions=functions, dim=dim, steps=steps, nproc=nproc, lr=lr, seeds=seeds,
              threshold=threshold, ema_decay=ema_decay, rosenbrock_lr=rosenbrock_lr,
              rosenbrock_clip=rosenbrock_clip, history=history, tune_every=tune_every, reach_rtol=reach_rtol,
              optex_variant=optex_variant)
# Every planned run is validated here, before any training: bad input stops this cell with the reason.
plan = optex.prepare(values, scale)
settings = plan.params
display(pd.DataFrame({"value": {k: str(v) for k, v in settings.items()}}))
plan.describe()


# %% [markdown]
# ## Runs
# One run per (function, seed, method); runs with the same worker count share one `torchrun`
# launch (iterations are compared here, not wall time). Each seed fixes the initial point,
# shared by the three methods. Every run directory holds `metrics.csv`,
# `summary.json` and logs.

# %%
results = optex.run_all(plan)


# %% [markdown]
# ## log10(optimality gap) against sequential iterations
# Every training row logs the loss at the *start* of its iteration (the state after
# `iteration - 1` iterations), so curves are shifted by one and end with the final gap
# after the last iteration. Mean of `log10(gap)` over seeds; the band is ± one std
# (sample std over the seeds, drawn where at least two seeds have data).

# %%
fig = optex.plot_gaps(results, settings)
figure_path = report.save_figure(fig, optex.FIGURE_NAME, settings)
print(figure_path)


# %% [markdown]
# ## Table
# Per function and method, over seeds: final gap (mean ± std over the seeds: sample std,
# ddof = 1, blank for one seed); `K` (parallel iterations; `T` for vanilla); iterations to
# reach **vanilla's final gap of the same seed** (within a relative `reach_rtol`, default
# 0.1 %, so an approximate method that ends a hair above vanilla still counts as reaching
# it); speed-up = vanilla's iterations to that gap / the method's; gradient evaluations `G`;
# peak resident memory of the largest worker (includes the Python/torch baseline of a few
# hundred MB, which dominates at these sizes). Wall times are left out on purpose: on a
# shared 2-core CPU they measure process start-up and contention, not the methods (the
# OptEx time split is shown further down). The rows marked *reported* are the PASO paper's
# Ackley numbers (d = 1e4, T = 1000, Adam, 8 workers), placed beside ours; they are not
# measured here.

# %%
table = optex.results_table(results, settings)
csv_path, md_path = report.save_table(table, optex.TABLE_NAME, settings, title=optex.table_title(settings),
                                      notes=optex.table_notes(settings), md_columns=optex.MD_COLUMNS)
print(csv_path, md_path, sep="\n")
table


# %% [markdown]
# ## OptEx internals
# Per-iteration diagnostics of OptEx (mean over iterations, per seed): cosine distance
# between the GP estimate that drove each proxy step and the true gradient later computed
# at that point, the tuned length scale, and the time split (each iteration's maximum over
# workers, summed: forward/backward, proxy rollout, communication).

# %%
optex_diag = optex.optex_diagnostics(results)
optex_diag


# %% [markdown]
# ## Where our numbers and the paper's agree or differ
# Generated from the table above (nothing below is typed in by hand).

# %%
comparison = optex.comparison(table, optex_diag, settings)
display(Markdown(comparison))


# %% [markdown]
# ## Interactive view
# Pick a function to redraw its curves (needs a live Jupyter frontend with ipywidgets; headless
# runs such as papermill or nbmake skip it, see `paso_core.report.widgets_module`).

# %%
if optex.curve_explorer(results) is None:  # degrade gracefully: the static figure above has every function
    print("no interactive frontend (headless run) or no ipywidgets: see the static figure above")


# %%
elapsed = time.perf_counter() - NOTEBOOK_START
print(f"scale={settings['scale']}: {len(plan.configs)} runs, {elapsed:.0f} s ({elapsed / 60:.1f} min) end to end")

