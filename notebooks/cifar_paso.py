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
# # PASO on CIFAR-10: serial vs PASO vs naive DP vs DDP
#
# **What is reproduced.** The PASO seed trains a CNN on CIFAR-10 (`cv_v2.py`: 60 000 steps,
# batch 128, Adam lr 1e-3) sequentially and with PASO (step-parallel fixed-point iteration over a
# window of `P = 7` steps, threshold 1e-5, adaptive with `ema_decay = 0.999`), on 8 GPUs, and
# states accuracy "comparable to community results" with an effective speed-up `T/K` (steps over
# parallel iterations). This notebook runs that comparison through `paso_core.run`, adds the two
# data-parallel baselines of the seed's LLM section (naive DP: one all-reduce per parameter;
# PyTorch DDP), and produces:
#
# 1. a table: final test accuracy and macro F1 (mean ± std over seeds), sequential iterations,
#    gradient evaluations, images consumed, training wall time, speed-up vs serial in iterations
#    and in wall time, peak memory per worker;
# 2. training loss and test accuracy against sequential iterations and against wall time;
# 3. PASO's accepted steps per iteration and its (adaptive) threshold over the iterations;
# 4. PASO's trade-off: speed-up `T/K` and final accuracy against `threshold` and `ema_decay`,
#    i.e. what the approximation costs;
# 5. a discussion generated from those numbers.
#
# **How to run.**
#
# ```bash
# papermill notebooks/cifar_paso.ipynb out.ipynb                 # default: offline, 2-core CPU
# papermill notebooks/cifar_paso.ipynb out.ipynb -p P 7          # the paper's window size
# papermill notebooks/cifar_paso.ipynb out.ipynb -p scale paper -p data_root /data   # the seed's setting
# PASO_SCALE=smoke pytest --nbmake notebooks/cifar_paso.ipynb    # CI smoke run
# ```
#
# | scale | what runs | needs |
# |---|---|---|
# | `smoke` | 16 steps, 1 seed, a 2-point threshold sweep (CI) | nothing |
# | `default` | bundled **digits** + CNN, 300 steps, 3 seeds, a threshold/ema sweep; a few minutes on 2 CPU cores | nothing |
# | `paper` | the seed's configuration: **CIFAR-10**, CNN, 60 000 steps, batch 128, lr 1e-3, Adam, `P = 7`, threshold 1e-5, ema 0.999, 8 data-parallel workers | CIFAR-10 under `data_root` (or a network: `download=True` is preset), 8 GPUs |
#
# Every parameter left `None` comes from the scale's preset (`paso_core.experiments.cifar.PRESETS`);
# `-p NAME VALUE` overrides it. On the CPU scales every worker gets one torch thread (the CPU
# analogue of one GPU per worker; see `PRESETS` for why). `nproc` is the devices (workers) the study
# may use: naive DP and DDP split each global batch over all of them (`batch_size` must divide by
# `nproc`), serial runs one, and PASO places its `P` window positions on the most workers not above
# `nproc` that divide `P` (`P / n` positions each; the trajectory is the same for every placement,
# only the time differs) unless `paso_nproc` says otherwise. `-p nproc 1 -p P 7` runs PASO on one
# device, the seed's `--training_mode parallel`.
#
# **Data.** With `dataset="cifar10"`, the files must be in torchvision's layout
# (`<data_root>/cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta`) or downloadable. If
# they are neither, at the `smoke` and `default` scales the notebook says so in a warning right
# below the parameters and runs on scikit-learn's bundled **digits** instead (1797 8x8 images); every
# title and table then names digits. At `paper` scale it stops there with the fix instead (`-p data_root
# <dir>`, or `-p scale default`): hours of digits training must not pass for the paper's run. It never
# presents digits results as CIFAR-10 results. An unknown parameter (`-p tresh 0.1`) also stops the cell
# below the parameters, listing the valid names.
#
# **Outputs.** Tables go to `artifacts/tables/`, figures to `artifacts/figures/` (each with a JSON
# file holding the parameters and the machine), run directories to `artifacts/runs/`; set
# `PASO_ARTIFACTS` to write elsewhere. Names carry scale, dataset, model and `P`
# (`cifar_paso_default_digits_cnn_P4_results.csv`), so `-p P 7` does not overwrite the default run.
#

# %% tags=["parameters"]
# Parameters (papermill -p NAME VALUE). None = take it from the scale's preset.
P = None                 # PASO window size (paper: 7)
threshold = None         # PASO tolerance on 1e6 x the mean squared rollout-vs-guess change (paper: 1e-5)
ema_decay = None         # threshold adaptation, tol <- tol*ema + err*(1-ema); 1.0 keeps it fixed (paper: 0.999)
adaptivity = None        # "mean" | "median" of the window's errors in that update
steps = None             # sequential training steps T
batch_size = None        # global batch per step (split across data-parallel workers)
lr = None                # learning rate
optimizer = None         # "adam" | "adamw" | "sgd" | "momentum"
model = None             # "cnn" | "vit" | "resnet18"
dataset = None           # "cifar10" | "digits" (bundled, offline)
data_root = None         # directory containing cifar-10-batches-py/ (None: $PASO_DATA or <checkout>/data)
download = None          # True: download CIFAR-10 if missing (needs a network)
nproc = None             # devices (workers): naive DP and DDP use all; PASO the most that divide P
paso_nproc = None        # PASO workers, each holding P/paso_nproc positions (None: from nproc; 1: one device)
seeds = None             # e.g. [0, 1, 2] (or "0,1,2" with papermill -p)
eval_every = None        # steps between test-set evaluations (the accuracy curves' resolution)
sweep_thresholds = None  # thresholds of the trade-off sweep (at the main ema_decay)
sweep_ema_decays = None  # ema_decays of the trade-off sweep (at the main threshold)
sweep_n_seeds = None     # the sweep runs the first n seeds
threads_per_worker = None  # torch threads per worker process (None: cores / local workers)
scale = None             # "smoke" | "default" | "paper"; None -> $PASO_SCALE, else "default"
(_names_before_papermill := set(globals()));  # not a parameter: lets unknown -p names be rejected

# %%
# papermill only warns about a -p name this notebook does not have; stop here instead, before any work.
from paso_core.notebook_files import check_parameters

check_parameters(globals())


# %%
import time

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from paso_core import report
from paso_core.experiments import cifar, common

pd.set_option("display.width", 200)
pd.set_option("display.max_columns", 40)
pd.set_option("display.float_format", "{:.4g}".format)
notebook_started = time.perf_counter()

values = dict(P=P, threshold=threshold, ema_decay=ema_decay, adaptivity=adaptivity, steps=steps,
              batch_size=batch_size, lr=lr, optimizer=optimizer, model=model, dataset=dataset,
              data_root=data_root, download=download, nproc=nproc, paso_nproc=paso_nproc, seeds=seeds,
              eval_every=eval_every,
              sweep_thresholds=sweep_thresholds, sweep_ema_decays=sweep_ema_decays,
              sweep_n_seeds=sweep_n_seeds, threads_per_worker=threads_per_worker)
# Every planned run goes through paso_core.validate here, before any training: a bad P, model,
# dataset or a batch that nproc does not divide stops this cell with the reason.
plan = cifar.prepare(values, scale)
params = plan.params
print(plan.dataset.message)
if plan.dataset.fallback:
    display(Markdown(f"> **{plan.dataset.message}**"))
print(f"scale = {params['scale']!r}; {len(plan.configs)} runs planned")
display(pd.DataFrame({"value": {k: str(v) for k, v in params.items()}}))
display(plan.describe())


# %% [markdown]
# ## Run
#
# One `torchrun` job at a time: concurrent jobs would share the cores and distort the wall-clock
# comparison. Per seed: serial, PASO at the main setting, naive DP, DDP; then the PASO sweep.
#

# %%
runs_started = time.perf_counter()
results = cifar.run_all(plan.configs)
runs_seconds = time.perf_counter() - runs_started
print(f"load average now: {report.environment().get('load_average_1_5_15_min')} (timings are "
      "only comparable on an otherwise idle machine)")
groups = cifar.main_results(results, params)
artifact_config = cifar.artifact_config(plan)
data_label = ("DIGITS (CIFAR-10 not available, fallback)" if plan.dataset.fallback
              else params["dataset"].upper())
setting = (f"{data_label}, {params['model']}, {params['steps']} steps, batch {params['batch_size']}, "
           f"{params['optimizer']} lr {params['lr']:g}")


# %% [markdown]
# ## Table: serial vs PASO vs naive DP vs DDP
#
# `test_accuracy` / `test_f1_macro`: final test accuracy and macro F1, mean ± std over the `seeds`
# runs of the row (sample std, ddof = 1; no `±` for a single seed).
# `sequential_iterations`: `K` for PASO, `T` for the others; `grad_evals`: gradient evaluations
# (PASO recomputes steps until they converge); `images_consumed`: images through forward+backward.
# `train_time_s`: training seconds measured in the workers, the sum of every iteration's time
# (torchrun start-up, data loading and every evaluation excluded; `worker_wall_time_s` has the
# whole worker lifetime). Speed-ups are serial's value over the method's, per seed, then averaged.
# `peak_rss_mb_per_worker`: the largest peak resident memory of any worker.
# Shown here and in the Markdown: the columns a reader compares; the CSV has every column (F1,
# images, memory, the std of each mean).
#

# %%
table = cifar.results_table(groups)
shown = list(cifar.RESULTS_MD_COLUMNS)  # the Markdown's columns; the CSV keeps every one
csv_path, md_path = report.save_table(
    table, cifar.artifact_name(params, "results"), artifact_config, md_columns=shown,
    title=f"Serial vs PASO vs naive DP vs DDP: {setting}",
    notes=f"{plan.dataset.message}\n\nSpread: {common.STD_NOTE}.")
print(f"saved {csv_path} and {md_path}")
display(table[shown])


# %% [markdown]
# ## Curves
#
# Mean over seeds (band: ± std, sample std over the seeds, where at least two have data).
# Left: against *sequential iterations* (PASO's parallel iterations `K`, one step per iteration
# for the others), the axis on which PASO is designed to win. Right: against training time on
# this machine (setup and evaluations excluded). PASO's training loss is that of
# the step at each iteration's window start; its test accuracy is evaluated at the window start
# whenever the accepted steps cross an `eval_every` boundary.
#

# %%
curve_data = cifar.curves(groups)
fig = cifar.plot_curves(curve_data, f"Training loss and test accuracy: {setting}")
print("saved", report.save_figure(fig, cifar.artifact_name(params, "curves"), artifact_config))
plt.show()


# %% [markdown]
# ## PASO's dynamics
#
# How many steps each iteration accepted (at most `P`, at least 1), and the threshold that decided
# it next to the window's mean error: with `ema_decay < 1` the threshold drifts towards the
# errors PASO actually sees, which is what turns a tiny initial threshold into real progress.
#

# %%
dynamics = cifar.paso_dynamics(groups.get("paso", []))
fig = cifar.plot_paso_dynamics(
    dynamics, f"PASO (P={params['P']}, threshold {params['threshold']:g}, ema {params['ema_decay']:g}): {setting}")
print("saved", report.save_figure(fig, cifar.artifact_name(params, "paso_dynamics"), artifact_config))
plt.show()
display(dynamics.groupby("seed")["accepted"].describe())


# %% [markdown]
# ## Trade-off: what the approximation costs
#
# PASO with `threshold = 0` and `ema_decay = 1` reproduces serial training exactly; larger or
# adaptive thresholds accept steps before they have converged. The sweep runs PASO at each
# threshold (at the main `ema_decay`) and each `ema_decay` (at the main threshold) on the first
# `sweep_n_seeds` seeds; `accuracy_change_vs_serial` is against serial of the same seed. The grey
# band in the plots is serial's accuracy ± its std over all seeds: differences inside it are seed
# noise, not a cost of the approximation.
#

# %%
sweep = cifar.sweep_results(results, params)
sweep_seeds = params["seeds"][:params["sweep_n_seeds"]]
serial_runs = groups.get("serial", [])
tradeoff = cifar.tradeoff_table(sweep, [r for r in serial_runs if r.config["seed"] in sweep_seeds])
csv_path, md_path = report.save_table(
    tradeoff, cifar.artifact_name(params, "tradeoff"), artifact_config, md_columns=cifar.TRADEOFF_MD_COLUMNS,
    title=f"PASO trade-off (P={params['P']}): speed-up T/K and accuracy vs threshold and ema_decay, {setting}",
    notes=f"{plan.dataset.message}\n\nSpread: {common.STD_NOTE}.")
print(f"saved {csv_path} and {md_path}")
display(tradeoff)
# the reference band uses every seed of serial: it shows how much accuracy varies by seed alone
serial_accuracy = [r.summary.get("final_test_accuracy", float("nan")) for r in serial_runs]
fig = cifar.plot_tradeoff(tradeoff, params, serial_accuracy, f"PASO trade-off (P={params['P']}): {setting}")
print("saved", report.save_figure(fig, cifar.artifact_name(params, "tradeoff"), artifact_config))
plt.show()


# %% [markdown]
# ## Explore one sweep run
#
# Pick a sweep setting to see its loss against serial's and its accepted steps per iteration.
# Executed headless (papermill, nbmake) the widget keeps the drawing of the first setting; without
# `ipywidgets` the main PASO run is drawn as a plain figure instead.
#

# %%
serial_first = next((r for r in serial_runs if r.config["seed"] == sweep_seeds[0]), None) if sweep_seeds else None
explorer = cifar.sweep_explorer(sweep, serial_first)
if explorer is not None:
    display(explorer)
else:
    print("no interactive frontend (headless run), no ipywidgets, or an empty sweep: main PASO run shown")
    main_paso = groups.get("paso", [])
    if main_paso:
        fig = cifar.plot_sweep_run(main_paso[0], serial_first)
        plt.show()


# %% [markdown]
# ## Discussion
#
# Generated from the table and the sweep above; rerunning with other parameters rewrites it.
#

# %%
display(Markdown(cifar.discussion(table, tradeoff, params, plan.dataset)))
print(f"notebook time: {time.perf_counter() - notebook_started:.0f} s, of which runs {runs_seconds:.0f} s")

