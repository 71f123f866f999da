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
# # Intra-step parallelism side by side: DP, DDP, FSDP, FSDP2, tensor, pipeline, model parallel, LoRA
#
# **What is reproduced.** Seed 002 (a GPT-2 course assignment) compares naive data parallelism
# with GPipe-style pipeline and naive model parallelism on 2 GPUs; seed 003 trains a ~2B
# hybrid-attention model (linear attention among softmax layers, mixture-of-experts MLPs) with LoRA
# under DDP, FSDP1, FSDP2 and a 2-stage GPipe, sweeping GPUs, context length and the split layer
# by hand. This notebook runs every one of those strategies, plus tensor parallelism, FSDP2 x TP
# and the 1F1B / interleaved 1F1B schedules, through `paso_core` on one model, and measures:
#
# * **memory per rank** (parameters + gradients + optimizer state each rank holds, counted from its
#   tensors; the process peak beside it), against world size: FSDP2 must fall as `1/world`;
# * **bytes communicated per step** by the busiest rank (measured from point-to-point tensors, modelled
#   by formula for collectives; each figure says which);
# * **pipeline bubble fraction** from the schedule itself and from measured idle time, against the
#   number of micro-batches;
# * **tokens/s** per rank and in total, with the step split into forward / backward (gradient sync
#   overlapped inside) / pipeline / optimizer, against world size and context length;
# * the **split sweep**: a 2-stage GPipe at every split point, and the split rules `uniform`, `params`
#   and `time` (balanced by measured forward + backward time: the "dynamic split" seed 003 planned);
# * the **seeds' reported numbers** in one table with ours, column beside column, and a short
#   **discussion** at the end, written by `paso_core` from this run's table (no number typed in).
#
# Every engine first passes the **engine canary** (its first SGD step equals serial `torch.optim`'s),
# and every method's equivalence with serial training is a row of the test suite's matrix.
#
# | scale | what runs | needs |
# |---|---|---|
# | `smoke` | 2 steps of `llama-tiny`, every method once (CI, `PASO_SCALE=smoke`) | nothing |
# | `default` | `qwen3next-tiny` (hybrid attention + MoE) on the offline pydoc corpus, all sweeps, 2-core CPU | nothing |
# | `paper` | seed 003's setting: `qwen3next-2b`, LoRA r=32 alpha=64 on the full-attention layers, AdamW 2e-5, 4k context, 1-4 GPUs, 1k-16k sweep | GPUs, `data_root` with parquet shards |
#
# ```bash
# papermill notebooks/parallel_strategies.ipynb out.ipynb                                  # default, offline
# papermill notebooks/parallel_strategies.ipynb out.ipynb -p model llama-tiny -p microbatches 8 \
#     -p lora "r=8,alpha=16,targets=attention"                                               # one change
# papermill notebooks/parallel_strategies.ipynb out.ipynb -p scale paper -p data_root /data/parquet
# ```
#
# **On CPU.** 2 shared cores run every worker; tokens/s there shows each strategy's *overheads*
# (collectives, schedule ticks, sharding), not the GPU speed-ups of the seeds. The figures below lead
# with what does not depend on the hardware: memory per rank, bytes per step, bubble fraction.
#

# %% tags=["parameters"]
# Parameters (papermill -p NAME VALUE). None = take it from the scale's preset.
scale = None             # "smoke" | "default" | "paper"; None -> $PASO_SCALE, else "default"
methods = None           # e.g. "serial,ddp,fsdp2,tp,pp:1f1b" (pp:<schedule> is pp with that schedule)
nproc = None             # workers of the side-by-side comparison (fsdp2_tp runs at least 4)
model = None             # gpt2-tiny | llama-tiny | qwen3next-tiny | ... | qwen3next-2b
block_size = None        # tokens per sequence (context length)
microbatches = None      # pipeline micro-batches per global batch
pp_schedule = None       # schedule of a plain "pp" entry: gpipe | 1f1b | interleaved_1f1b
split = None             # uniform | params | time | split points, e.g. "3" or [2, 4]
lora = None              # LoRA adapters: rank, alpha, target modules (format: README, LoRA); None: full fine-tuning
steps = None             # optimizer steps per run
batch_size = None        # global batch (sequences per step)
lr = None
optimizer = None
dataset = None           # pydoc (offline) | wikitext2 | parquet
data_root = None
world_sizes = None       # world-size sweep, e.g. "1,2,4"
contexts = None          # context-length sweep, e.g. "64,128,256"
microbatch_counts = None # micro-batch sweep, e.g. "1,2,4,8"
sweep_methods = None     # methods of the world and context sweeps
studies = None           # methods, world, context, microbatches, split
seed = None
(_names_before_papermill := set(globals()));  # not a parameter: lets unknown -p names be rejected

# %%
# papermill only warns about a -p name this notebook does not have; stop here instead, before any work.
from paso_core.notebook_files import check_parameters

check_parameters(globals())


# %%
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from paso_core import report
from paso_core.experiments import strategies as st

pd.set_option("display.width", 220)
pd.set_option("display.max_columns", 40)
notebook_started = time.perf_counter()
values = dict(methods=methods, nproc=nproc, model=model, block_size=block_size, microbatches=microbatches,
              pp_schedule=pp_schedule, split=split, lora=lora, steps=steps, batch_size=batch_size, lr=lr,
              optimizer=optimizer, dataset=dataset, data_root=data_root, world_sizes=world_sizes,
              contexts=contexts, microbatch_counts=microbatch_counts, sweep_methods=sweep_methods,
              studies=studies, seed=seed)
# Every run is validated here, before any worker starts: a bad value stops this cell naming it.
plan = st.prepare(values, scale)
params = plan.params
display(pd.DataFrame([params]).T.rename(columns={0: "value"}))
display(plan.describe())
if plan.skipped:
    print("combinations a method refuses (left out of the sweeps, with the method's reason):")
    display(pd.DataFrame(plan.skipped))


# %% [markdown]
# ## Engine canary
#
# One SGD step with lr 1 of every (method, world size) the comparison runs, on this model and batch,
# against serial `torch.optim` computed in this process: the displacement of the weights is the first
# gradient, so an engine that computes something else (FSDP2's gradients x world on CPU/gloo in torch
# 2.7-2.8) fails here instead of producing plausible plots.
#

# %%
with tempfile.TemporaryDirectory() as tmp:
    canary = st.canary(plan, Path(tmp))
display(canary[["case", "world_size", "max_abs_diff", "rel_displacement_err", "rtol", "passed"]])


# %% [markdown]
# ## Run every study
#
# Runs of one world size share one `torchrun` launch and run one after another.
#

# %%
started = time.perf_counter()
results = st.run_plan(plan)
table = st.results_table(results)
config = st.artifact_config(plan, results)
config["canary"] = canary.drop(columns=["path"]).to_dict("records")
print(f"{len(results)} runs in {time.perf_counter() - started:.0f} s")
display(Markdown(st.cpu_caveat(table)))


# %% [markdown]
# ## Every method on one model
#
# `mem_state_mb`: parameters + gradients + optimizer state this rank holds (max over ranks);
# `mem_peak_mb`: the process peak (CUDA allocator on GPUs; on CPU the resident set, which in a shared
# launch is the running maximum of its runs); `bytes_per_step`: the busiest rank's bytes in one step;
# `bubble_*`: pipeline idle fraction (schedule / measured); phases are medians over steps, maxima over
# ranks; ratios are to this invocation's serial run.
#

# %%
methods_table = st.with_ratios(st.study(table, "methods"))
shown = st.md_columns(methods_table, "methods")  # the Markdown's columns; the CSV keeps every one
display(methods_table[shown])
report.save_table(methods_table, st.artifact_name(params, "methods"), config, md_columns=shown,
                  title=f"Intra-step strategies: {st.setting(table)}", notes=st.discussion(table))
fig = st.plot_methods(table)
report.save_figure(fig, st.artifact_name(params, "methods"), config)
plt.show()


# %% [markdown]
# ## Where a step's time goes
#
# Each bar is one method's median step, split into the intervals its loop times (data-parallel
# engines: forward, backward with their overlapped gradient sync, optimizer; pipelines: the
# schedule's forward + backward with its point-to-point sends, the gradient sync between replicas
# and tied weights, optimizer), the rest of the step last. The thin dotted bar below is the time
# inside communication calls the run meters: it overlaps the slices (naive DP's all-reduces run
# inside backward), so it is drawn beside them, not stacked.
#

# %%
step_times = st.step_split(table)
display(step_times)
report.save_table(step_times, st.artifact_name(params, "step_split"), config,
                  title=f"Step time split [s]: {st.setting(table)}",
                  notes="Slices are disjoint intervals of the step; comm_s overlaps them (see the notebook).")
fig = st.plot_step_split(table)
report.save_figure(fig, st.artifact_name(params, "step_split"), config)
plt.show()


# %% [markdown]
# ## Against world size, context length, micro-batches, and the split point
#
# One row per sweep. Top: against world size, training state per rank (with `1/world`, dashed, for
# FSDP2), peak memory per rank, bytes per step and tokens/s per rank. Middle: the same against context
# length. Bottom: the schedule's bubble fraction (`(n-1)/(m+n-1)` for GPipe and 1F1B, solid) against the
# measured idle fraction (dotted), tokens/s and bytes per step against micro-batches, and tokens/s of a
# 2-stage GPipe at every split point (the seed's hand sweep), the split rules as horizontal lines.
# A sweep with one value shows one point per method.
#

# %%
fig = st.plot_sweeps(table)
report.save_figure(fig, st.artifact_name(params, "sweeps"), config)
plt.show()
for name in ("world", "context", "microbatches", "split"):
    part = st.study(table, name)
    if not part.empty:
        report.save_table(part, st.artifact_name(params, name), config, title=f"{name} study: {st.setting(table)}",
                          md_columns=st.md_columns(part, name))
scaling = st.memory_scaling(table)
if not scaling.empty:
    display(scaling)
    report.save_table(scaling, st.artifact_name(params, "memory_scaling"), config,
                      title="Training state per rank against world size",
                      notes="relative_state: over the same method at its smallest world; FSDP2 should follow 1/world")


# %% [markdown]
# ## The seeds' reported numbers beside ours
#
# One row per method and seed figure: `ours:` columns are this run (its machine, its model), `seed:`
# columns what seed 002 (GPT-2 small on 2 RTX 4090D; its data parallelism all-reduces every parameter,
# so it is `naive_dp` here) or seed 003 (a ~2B hybrid with LoRA at 4k context) reported on *their* GPUs;
# the last column names the seed and its setting. Compare *orderings and ratios* between methods, not
# absolute values; a blank is a figure that side did not report or run.
#

# %%
comparison = st.compare_reported(table)
display(comparison)
report.save_table(comparison, st.artifact_name(params, "vs_seeds"), config, md_columns=st.COMPARISON_MD_COLUMNS,
                  title=f"Ours ({st.setting(table)}) beside seeds 002 and 003 (their GPUs, numbers as stated there)")


# %% [markdown]
# ## Discussion (generated from the table above)
#

# %%
display(Markdown(st.discussion(table)))
print(f"notebook total: {time.perf_counter() - notebook_started:.0f} s")

