"""Local SGD / Local AdamW: ranks step on their own shards and average parameters every round.

The QSR seed's method (``docs/qsr.md``). Each rank takes its share of every global batch
(as data parallelism does), but applies its own optimizer step without communicating;
after ``H`` such local steps the parameters are averaged across ranks (one flat all-reduce
by ``torch.distributed.algorithms.model_averaging``). The period comes from
:mod:`paso_core.optim.sync_rules`: every step (data-parallel semantics), constant, the
Quadratic Synchronization Rule or the linear rule, chosen right after each synchronization
from the learning rate of the next step, identically on every rank without a message.

Optimizer moments stay local unless ``average_moments`` says otherwise (the public code's
default). BatchNorm running statistics are never averaged at a synchronization; before an
evaluation each rank re-estimates them on its last ``bn_batches`` training shards and the
estimates are averaged, as the seed does. Every rank checkpoints its own model and
optimizer (their moments differ), so a run resumed inside a round continues bitwise.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping

import torch
from torch import nn
from torch.distributed.algorithms.model_averaging.averagers import ModelAverager

from ..config import RunConfig, check_batch_splits
from ..context import WorkerContext
from ..distributed import Comm
from ..optim.sync_rules import RULE_POWER, SYNC_RULES, Round, SyncRule, round_ends
from ..optim.updates import OptimSpec, lr_at, make_torch_optimizer, set_lr
from ..options import ConfigError, MethodOptions, check_int, check_number, option
from ..tasks.base import Task
from . import MethodSpec, register
from .common import (checkpoint_torch_training, clip_model_grads_, evaluate_collectively, final_report,
                     resume_torch_training, should_eval)
from .data_parallel import replica_dims

#: Which optimizer-state tensors ``average_moments`` adds to a synchronization (the seed's
#: ``--avg-m`` / ``--avg-v``): torch's names for SGD momentum and Adam/AdamW moments.
MOMENT_KEYS = {"none": (), "first": ("momentum_buffer", "exp_avg"),
               "all": ("momentum_buffer", "exp_avg", "exp_avg_sq")}
ROUNDS_FILE = "rounds.jsonl"


@dataclass
class LocalSGDOptions(MethodOptions):
    """Local SGD's knobs (``docs/qsr.md``)."""

    #: one local step per round: the parameter average after each step is data-parallel SGD
    EXACT_REPLAY: ClassVar[Mapping[str, Any]] = {"sync": "every_step"}

    sync: str = option("qsr", "when ranks average: every_step (data parallel), constant (H_base), qsr "
                       "(H = max(H_base, floor((alpha/lr)^2))), linear (H = max(H_base, floor(alpha/lr)))",
                       SYNC_RULES)
    H_base: int = option(4, "local steps per round: the constant period, and QSR's floor and warm-up period")
    alpha: float = option(0.0175, "QSR / linear growth constant (H grows as lr decays)")
    average_moments: str = option("none", "optimizer state averaged with the parameters: none (the seed's "
                                  "default), first (momentum / exp_avg), all (+ exp_avg_sq)", tuple(MOMENT_KEYS))
    physical_batch_size: int | None = option(None, "examples per backward; smaller than the per-rank batch "
                                             "accumulates gradients (None: the whole per-rank batch)")
    bn_batches: int = option(4, "training shards per rank that re-estimate BatchNorm statistics before an "
                             "evaluation (models with BatchNorm)")

    def check(self, cfg: RunConfig) -> None:
        super().check(cfg)
        if cfg.world_size < 2:
            raise ConfigError(f"method='local_sgd' with nproc*nnodes={cfg.world_size}: one worker has nothing "
                              "to average with; use nproc >= 2, or method='serial' for one process")
        check_int("H_base", self.H_base)
        if self.sync in RULE_POWER:
            check_number("alpha", self.alpha, 0.0, low_open=True)
        check_batch_splits(cfg, cfg.world_size, f"nproc*nnodes={cfg.world_size} local-SGD workers")
        check_int("bn_batches", self.bn_batches)
        if self.physical_batch_size is not None:
            check_int("physical_batch_size", self.physical_batch_size)
            per_rank = cfg.batch_size // cfg.world_size
            if per_rank % self.physical_batch_size:
                raise ConfigError(
                    f"physical_batch_size={self.physical_batch_size} does not divide the per-rank batch "
                    f"{per_rank} (batch_size={cfg.batch_size} over {cfg.world_size} workers); choose a divisor "
                    f"of {per_rank}: {', '.join(str(d) for d in range(1, per_rank + 1) if per_rank % d == 0)}")

    def rule(self) -> SyncRule:
        return SyncRule(self.sync, self.H_base, self.alpha)

    def micro_batches(self, cfg: RunConfig) -> int:
        per_rank = cfg.batch_size // cfg.world_size
        return 1 if self.physical_batch_size is None else per_rank // self.physical_batch_size


class ScheduledAverager(ModelAverager):
    """torch's ``ModelAverager`` with a time-varying period: averages after the steps at
    which a round of :mod:`~paso_core.optim.sync_rules` ends, through :meth:`Comm.average_`
    (metered), the optimizer moments too when asked."""

    def __init__(self, comm: Comm, ends: dict[int, Round], optimizer: torch.optim.Optimizer,
                 moment_keys: tuple[str, ...], step: int = 0) -> None:
        super().__init__(comm.group)
        self.comm, self.ends, self.optimizer, self.moment_keys = comm, ends, optimizer, moment_keys
        self._sorted_ends = sorted(ends)
        self.step = step
        self.syncs = bisect.bisect_right(self._sorted_ends, step)

    def round_of(self, done: int) -> Round:
        """The round that step ``done - 1`` (0-based) belongs to."""
        return self.ends[self._sorted_ends[bisect.bisect_left(self._sorted_ends, done)]]

    def payload_bytes(self) -> int:
        """Bytes one synchronization averages: the parameters, plus the averaged moments."""
        tensors = [p for group in self.optimizer.param_groups for p in group["params"]] + self.moments()
        return sum(t.numel() * t.element_size() for t in tensors)

    def bytes_sent(self) -> int:
        """Bytes this rank sent in all synchronizations so far (ring all-reduce of the payload)."""
        world = self.comm.world
        return self.syncs * int(2 * (world - 1) / world * self.payload_bytes())

    def moments(self) -> list[torch.Tensor]:
        state = self.optimizer.state
        return [state[p][k] for group in self.optimizer.param_groups for p in group["params"]
                for k in self.moment_keys if isinstance(state.get(p, {}).get(k), torch.Tensor)]

    def average_parameters(self, params: Iterable[torch.Tensor]) -> Round | None:
        """Count one local step; at a round's end average ``params`` (and moments) and return the round."""
        self.step += 1
        finished = self.ends.get(self.step)
        if finished is not None:
            self.comm.average_([*params, *self.moments()])
            self.syncs += 1
        return finished


@torch.no_grad()
def refresh_batchnorm(ctx: WorkerContext, task: Task, model: nn.Module, done: int, batches: int) -> bool:
    """Re-estimate BatchNorm statistics on this rank's last ``batches`` training shards
    (cumulative average, train mode) and average them across ranks; collective. Returns
    False for a model without BatchNorm (nothing done)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches below
    was_training = model.training
    model.train()
    for step in range(max(0, done - batches), done):
        model(task.inputs(task.train_shard(step, ctx.rank, ctx.world)))
    model.train(was_training)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    stats = [t for m in norms for t in (m.running_mean, m.running_var) if t is not None]
    ctx.group("dp_replicate").average_(stats)
    return True


def _rounds_log(ctx: WorkerContext, resumed_at: int):
    """The rounds file (logging rank), cut to the rounds finished before ``resumed_at``."""
    if not ctx.is_main:
        return None
    path = ctx.run_dir / ROUNDS_FILE
    kept = []
    if ctx.cfg.resume and path.exists():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["end"] <= resumed_at]
    path.write_text("".join(line + "\n" for line in kept))
    return path.open("a")


def train(ctx: WorkerContext, task: Task) -> dict[str, Any]:
    cfg, opts = ctx.cfg, ctx.options
    spec = OptimSpec.from_config(cfg)
    replicas = ctx.group("dp_replicate")
    rank, world = replicas.group_rank, replicas.world
    model = task.build_model()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_torch_optimizer(spec, params)
    start, loss = resume_torch_training(ctx, model, optimizer)
    averager = ScheduledAverager(replicas, round_ends(opts.rule(), spec), optimizer,
                                 MOMENT_KEYS[opts.average_moments], step=start)
    n_micro = opts.micro_batches(cfg)
    rounds_log = _rounds_log(ctx, start)
    eval_due = False
    for step in range(start, cfg.steps):
        clock = ctx.start_iteration()
        shard = task.train_shard(step, rank, world)
        optimizer.zero_grad(set_to_none=True)
        local = 0.0
        for micro in task.microbatches(shard, n_micro):
            part = task.loss(model, micro, step) / n_micro
            part.backward()
            local += float(part.detach())
        clip_model_grads_(model, spec.grad_clip)
        compute = clock.lap()
        lr = lr_at(spec, step)
        set_lr(optimizer, lr)
        optimizer.step()
        before = torch.cat([p.detach().reshape(-1) for p in params]) if (step + 1) in averager.ends else None
        finished = averager.average_parameters(params)
        spread_sq, mean_norm = 0.0, math.nan
        if finished is not None:
            after = torch.cat([p.detach().reshape(-1) for p in params])
            spread_sq = float((before - after).double().square().sum())
            mean_norm = float(after.double().norm())
        optim = clock.lap()
        done = step + 1
        stats, per_rank = ctx.gather_iteration(compute.compute, [local, spread_sq, optim.compute])
        loss = float(per_rank[:, 0].mean())
        ctx.check_finite(loss, f"step {step}")
        seconds = clock.elapsed()
        current = averager.round_of(done)
        sync_bytes = averager.bytes_sent()
        row = {"train_loss": loss, "lr": lr, "round_H": current.H, "round_start": current.start,
               "syncs": averager.syncs, "sync_bytes": sync_bytes, "time_optim_s": float(per_rank[:, 2].max())}
        ctx.record_train(row, stats, seconds, steps_done=done, iteration=done, grad_evals=done,
                         last=done == cfg.steps)
        if finished is not None and rounds_log is not None:
            spread = math.sqrt(float(per_rank[:, 1].mean()))
            rounds_log.write(json.dumps({
                "round": finished.index, "start": finished.start, "H": finished.H, "lr": finished.lr,
                "end": finished.end, "train_loss": loss, "param_spread": spread,
                "param_spread_rel": spread / mean_norm if mean_norm else math.nan, "syncs": averager.syncs,
                "sync_bytes": sync_bytes}) + "\n")
            rounds_log.flush()
        if done % cfg.log_every == 0 or done == cfg.steps:
            ctx.progress(done, cfg.steps, loss=loss, H=current.H)
        eval_due = eval_due or should_eval(ctx, done, step)
        if eval_due and finished is not None:  # only an averaged model is evaluated
            refresh_batchnorm(ctx, task, model, done, opts.bn_batches)
            evaluate_collectively(ctx, task, model, steps_done=done, iteration=done, grad_evals=done)
            eval_due = False
        checkpoint_torch_training(ctx, model, optimizer, done, step, loss)
        ctx.maybe_stop(done)
    if rounds_log is not None:
        rounds_log.close()
    refreshed = refresh_batchnorm(ctx, task, model, cfg.steps, opts.bn_batches)
    summary = final_report(ctx, task, model, cfg.steps, cfg.steps, cfg.steps, loss)
    summary.update({
        "sync_rule": opts.sync, "H_base": opts.H_base, "alpha": opts.alpha, "syncs": averager.syncs,
        "sync_payload_bytes": averager.payload_bytes(), "sync_bytes": averager.bytes_sent(),
        "micro_batches": n_micro, "batchnorm_reestimated": refreshed, "rounds_file": ROUNDS_FILE})
    return summary


SPEC = register(MethodSpec(
    name="local_sgd", summary="Local SGD / Local AdamW: average parameters every H local steps (constant, QSR, "
    "linear rule)", options=LocalSGDOptions, dims=replica_dims, default_nproc=lambda options: 2, train=train,
    world_rule="needs at least 2 processes (one worker has nothing to average)"))
