"""PASO: step-parallel training by fixed-point iteration over a sliding window of P steps.

Placement: each worker holds ``positions_per_rank = P / nproc`` window positions (one per
worker by default; all ``P`` on one worker is the seed's single-device ``--training_mode
parallel``). Each iteration: every position's gradient is computed at its current guess; the window is rolled out from the exact start state
(prefix scan, or a relay chain for coupled weight decay); each rollout iterate is
compared with the next position's guess; the converged prefix is accepted and the
window slides (the method is described in ``docs/paso.md``).

Exactness: the window start's step is ``torch.optim``'s own ``step()`` (:class:`TorchStep`)
on the model's parameters, after ``clip_grad_norm_`` on the model's gradients -- the very
calls serial training makes, on tensors of the same shapes and alignment. With threshold 0
(and ``K = T``) PASO therefore equals serial bit for bit on any machine, given the same
thread count. The trajectory depends on ``P``, never on the placement: a position does the
same operations wherever it lives (the scan runs every position's rounds in lock step,
:func:`~paso_core.optim.scan.prefix_scan_many_`); only where a partner's message comes from
changes (a copy between positions of one worker, a tagged message between workers).

Threshold statistic: like the seed, which keeps ``P + 1`` guesses, every iteration has one
error per position; the last position, whose next guess does not exist yet, compares its
iterate with its own guess (the seed's extra guess under copy init). ``adaptivity="median"``
takes the middle entry of the errors in window order (``errors[len // 2]``), as the seed does.
``threshold_errors="next_guess"`` leaves the last position's error out (``P - 1`` errors):
its guess is one step behind, so it inflates the tolerance, which costs quality on some tasks
(the WikiText artifact measures both).

Memory per rank: one model, and per position it holds (:class:`Position`) its guess (a
padded flat copy of the parameters, written into the model before each gradient, see
:class:`FlatParams`), one gradient (which doubles as the parameter scan's accumulator), one
optimizer state, and two preallocated buffers (the optimizer-state scan accumulator and one
receive buffer), whatever ``P`` is; a scan iteration allocates nothing parameter-sized.
Positions rotate over fixed slots as the window slides, so the new window start is simply
the slot that already holds the accepted state: nothing is copied except the last iterate to the new tail positions, sent
down a binomial tree, so no rank sends more than ``ceil(log2 P)`` copies of it.

Bytes per iteration on the busiest rank, in parameter vectors of ``d`` elements, per position
it holds: ``ceil(log2 P) * (n_state + 1)`` for the scan, ``1`` for the error exchange and
``ceil(log2 P)`` (``2 ceil(log2 P)`` with ``init="extrapolate"``) for the tail seed.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch

from ..config import RunConfig, check_batch_splits, check_window
from ..context import WorkerContext
from ..distributed import Comm
from ..optim.scan import param_coeff, param_offset_into, prefix_scan_many_, state_coeffs, state_offsets_into
from ..optim.updates import OptimSpec, TorchStep, clip_flat_, functional_step, init_state, lr_at as lr_of
from ..options import ConfigError, MethodOptions, check_int, check_number, check_path_or_none, option
from ..parallel import ParallelDims
from ..tasks.base import Task
from . import MethodSpec, register
from .common import (FlatLayout, FlatParams, batched_loss_and_grads, clip_model_grads_, eval_columns, final_report,
                     loss_and_grad, should_eval)

#: Every parameter starts on this boundary inside the flat vector, as a fresh allocation would.
ALIGN_BYTES = 512

ADAPTIVITY = ("mean", "median")
#: Which errors feed PASO's adaptive tolerance: the seed's P (the last position against its own
#: guess) or only the P-1 that have a next guess (this repository's earlier rule).
THRESHOLD_ERRORS = ("seed", "next_guess")
PASO_INITS = ("copy", "extrapolate", "trajectory")
PASO_ROLLOUTS = ("auto", "scan", "relay")
PASO_BATCHED = ("loop", "vmap")
#: Model families whose gradients ``torch.func.vmap`` batches over parameter sets (checked by
#: the tests); the others go through the loop: ``transformers`` models (attention masks and
#: caches built with data-dependent Python control flow) and BatchNorm (refused by PASO anyway).
VMAP_MODELS = {"synthetic": None, "vision": ("cnn", "vit", "resnet18")}


@dataclass
class PasoOptions(MethodOptions):
    """PASO's knobs (``docs/paso.md``)."""

    #: threshold 0 with a fixed tolerance accepts only exact iterates: serial training's steps
    EXACT_REPLAY: ClassVar[Mapping[str, Any]] = {"threshold": 0.0, "ema_decay": 1.0}

    P: int = option(4, "window size: steps solved in parallel")
    positions_per_rank: int | None = option(None, "window positions each worker holds (None: P / nproc, or 1 when "
                                            "nproc is not given); P on one worker is the seed's single-device mode")
    data_parallel: int = option(1, "ranks computing each position's gradient data-parallel (the window x data "
                                "mesh: P / positions_per_rank x data_parallel ranks in all)")
    threshold: float = option(1e-5, "initial tolerance on the per-position error (0: exact serial)")
    ema_decay: float = option(0.999, "tolerance <- tolerance*ema + window statistic*(1-ema); 1: fixed")
    adaptivity: str = option("mean", "window statistic of the errors that adapts the tolerance", ADAPTIVITY)
    threshold_errors: str = option("seed", "errors feeding the tolerance: the seed's P, or the P-1 with a "
                                   "next guess", THRESHOLD_ERRORS)
    init: str = option("copy", "guesses of new window positions: copy the last iterate, extrapolate its "
                       "step, or read a recorded trajectory", PASO_INITS)
    init_trajectory: str | None = option(None, "torch file of a recorded trajectory (init='trajectory')")
    rollout: str = option("auto", "scan: O(d log P) prefix scan; relay: sequential chain (coupled weight "
                          "decay); auto: scan when possible", PASO_ROLLOUTS)
    batched: str = option("loop", "a worker's positions' gradients: loop (one after another) or vmap (one "
                          "torch.func.vmap call; the window start's stays exact)", PASO_BATCHED)

    def check(self, cfg: RunConfig) -> None:
        super().check(cfg)
        check_int("P", self.P)
        check_window(cfg, self.P)
        check_int("data_parallel", self.data_parallel)
        if cfg.world_size % self.data_parallel:
            raise ConfigError(f"data_parallel={self.data_parallel} does not divide nproc*nnodes={cfg.world_size}: the "
                              f"world is (window ranks) x data_parallel; use nproc*nnodes = a divisor of P={self.P} "
                              f"times {self.data_parallel}")
        if self.data_parallel > 1:
            check_batch_splits(cfg, self.data_parallel, f"data_parallel={self.data_parallel} shards")
        _check_placement(self, cfg.world_size // self.data_parallel)
        _check_batched(self, cfg)
        check_number("threshold", self.threshold, 0.0)
        check_number("ema_decay", self.ema_decay, 0.0, 1.0)
        _check_init_trajectory(self)
        if self.rollout == "scan" and cfg.optimizer != "adamw" and cfg.resolved_weight_decay > 0:
            raise ConfigError(
                f"rollout='scan' needs weight decay outside the gradient; optimizer={cfg.optimizer!r} with "
                f"weight_decay={cfg.resolved_weight_decay} couples it in: use rollout='relay' or 'auto', "
                "or optimizer='adamw'")


def _check_batched(opts: PasoOptions, cfg: RunConfig) -> None:
    """vmap only where it is known to batch the model, and not across a data-parallel group."""
    if opts.batched != "vmap":
        return
    models = VMAP_MODELS.get(cfg.task, ())
    if models is not None and cfg.model not in models:
        known = "; ".join(f"task={t!r}: {'any model' if m is None else ', '.join(m)}" for t, m in VMAP_MODELS.items())
        raise ConfigError(f"batched='vmap' cannot batch task={cfg.task!r} model={cfg.model!r} (transformers' models "
                          f"and BatchNorm are not vmap-safe); it batches {known}; use batched='loop'")
    if opts.data_parallel > 1:
        raise ConfigError(f"batched='vmap' with data_parallel={opts.data_parallel} is not built (a position's "
                          "gradient is then an all-reduce of shards); use batched='loop'")


def _check_placement(opts: PasoOptions, world: int) -> None:
    """The workers must share the window evenly, and agree with ``positions_per_rank`` if given
    (``world``: the ranks of one data-parallel replica of the window)."""
    divisors = [n * opts.data_parallel for n in range(1, opts.P + 1) if opts.P % n == 0]
    if opts.P % world:
        which = "nproc*nnodes" if opts.data_parallel == 1 else "nproc*nnodes/data_parallel"
        raise ConfigError(f"{which}={world} does not divide P={opts.P}: every worker holds the same number of "
                          f"window positions; choose nproc*nnodes among {', '.join(map(str, divisors))}")
    if opts.positions_per_rank is not None:
        check_int("positions_per_rank", opts.positions_per_rank)
        if opts.positions_per_rank * world != opts.P:
            raise ConfigError(f"positions_per_rank={opts.positions_per_rank} with nproc*nnodes={world} holds "
                              f"{opts.positions_per_rank * world} positions, not P={opts.P}; use positions_per_rank="
                              f"{opts.P // world}, or nproc={opts.P // opts.positions_per_rank} if that divides P, "
                              "or leave one of them unset")


def _check_init_trajectory(cfg: PasoOptions) -> None:
    """init='trajectory' seeds PASO's guesses from a recorded trajectory file, and only it reads one."""
    check_path_or_none("init_trajectory", cfg.init_trajectory)
    if cfg.init != "trajectory":
        if cfg.init_trajectory is not None:
            raise ConfigError(f"init_trajectory={cfg.init_trajectory!r} is only read with init='trajectory' "
                              f"(got init={cfg.init!r}); set init='trajectory' or drop init_trajectory")
        return
    if not cfg.init_trajectory:
        raise ConfigError("init='trajectory' needs init_trajectory=<torch file holding the recorded "
                          "parameter trajectory>; or choose init from: copy, extrapolate")
    if not Path(cfg.init_trajectory).is_file():
        raise ConfigError(f"init_trajectory={cfg.init_trajectory!r} is not a file; give the torch file "
                          "holding the recorded parameter trajectory")



def window_dims(cfg: RunConfig) -> ParallelDims:
    """One rank per group of ``positions_per_rank`` window positions, in each of
    ``data_parallel`` replicas of the window (the window x data mesh)."""
    replicas = cfg.options.data_parallel
    return ParallelDims(dp_replicate=replicas, window=cfg.world_size // replicas)


def positions_per_rank(P: int, world: int) -> int:
    """Window positions each rank holds: ``P / world`` (the world must divide ``P``)."""
    if world < 1 or P % world:
        raise ValueError(f"{world} ranks cannot share a window of P={P} positions evenly")
    return P // world


@dataclass
class Window:
    """Bookkeeping that every rank holds identically (decided from gathered scalars).

    Window positions live in ``P`` fixed *slots*; slot ``s`` is held by rank ``s // m`` (``m``
    positions per rank). Position ``p`` of the window is slot ``(start_slot + p) % P``, so
    positions rotate over slots as the window slides and the new window start is the slot
    that already holds the accepted state.
    """

    start: int = 0          # b: first step of the window (its guess is exact)
    start_slot: int = 0     # slot holding window position 0
    threshold: float = 0.0
    iterations: int = 0     # K
    grad_evals: int = 0     # G
    last_loss: float = float("nan")
    history: list[int] = field(default_factory=list)

    def position(self, slot: int, size: int) -> int:
        return (slot - self.start_slot) % size

    def slot_of(self, pos: int, size: int) -> int:
        return (self.start_slot + pos) % size


def accepted_steps(errors: list[float], threshold: float, window: int) -> int:
    """Steps accepted this iteration: up to the first error above the threshold, at least 1.

    ``errors[i]`` compares rollout iterate ``b+i+1`` with the guess of position ``i+1``; a
    NaN error counts as not converged.
    """
    for i, err in enumerate(errors):
        if not err <= threshold:
            return i + 1
    return window


def window_statistic(errors: list[float], adaptivity: str) -> float:
    """The mean, or the middle entry in window order (the seed's "median"), of the finite errors."""
    finite = [e for e in errors if math.isfinite(e)]
    if not finite:
        return float("nan")
    return statistics.fmean(finite) if adaptivity == "mean" else finite[len(finite) // 2]


def updated_threshold(threshold: float, errors: list[float], ema_decay: float, adaptivity: str) -> float:
    """``tol <- tol*ema + e*(1-ema)`` with ``e`` the :func:`window_statistic` of the errors."""
    stat = window_statistic(errors, adaptivity)
    if not math.isfinite(stat) or ema_decay == 1.0:
        return threshold
    return threshold * ema_decay + stat * (1 - ema_decay)



class SlotRouter:
    """Moves tensors between window slots: a copy when both slots live on this rank, a
    tagged point-to-point message otherwise (tag: the receiving slot).

    Every routing call takes a batch of sends and receives of this rank's slots, posts the
    remote ones together and returns when all have arrived; local payloads are copied first,
    so a slot may overwrite what it sent as soon as the call returns.
    """

    def __init__(self, comm: Comm, window_rank: int, per_rank: int,
                 global_rank: Callable[[int], int] = lambda window_rank: window_rank) -> None:
        self.comm, self.window_rank, self.per_rank, self.global_rank = comm, window_rank, per_rank, global_rank

    def rank_of(self, slot: int) -> int:
        """The global rank holding ``slot`` (in this rank's data-parallel replica of the window)."""
        return self.global_rank(slot // self.per_rank)

    def is_local(self, slot: int) -> bool:
        return slot // self.per_rank == self.window_rank

    def route(self, sends: dict[int, tuple[int, torch.Tensor]], recvs: dict[int, tuple[int, torch.Tensor]]) -> None:
        """``sends[src] = (dst, tensor)``, ``recvs[dst] = (src, buffer)``, keyed by this rank's slots."""
        local: dict[tuple[int, int], torch.Tensor] = {}
        remote_sends = []
        for src in sorted(sends):
            dst, tensor = sends[src]
            if self.is_local(dst):
                local[(src, dst)] = tensor
            else:
                remote_sends.append((tensor.contiguous(), self.rank_of(dst), dst))
        remote_recvs = []
        for dst in sorted(recvs):
            src, buffer = recvs[dst]
            if self.is_local(src):
                buffer.copy_(local[(src, dst)])
            else:
                remote_recvs.append((buffer, self.rank_of(src), dst))
        self.comm.exchange_tagged(remote_sends, remote_recvs)


def tree_broadcast_(router: SlotRouter, buffers: dict[int, torch.Tensor], slots: list[int]) -> None:
    """Broadcast ``buffers[slots[0]]`` to the other ``slots`` down a binomial tree.

    ``buffers`` holds this rank's slots' buffers (the source's holds the payload). Why not
    ``dist.broadcast``: it would need a process group per set of ranks, and a root-sends-all
    scheme costs the root ``(n-1)`` copies; here no slot sends more than ``ceil(log2 n)``
    copies, which keeps PASO's busiest rank at ``O(d log P)`` bytes per position it holds.
    """
    n, offset = len(slots), 1
    mine = [(i, s) for i, s in enumerate(slots) if s in buffers]
    while offset < n:
        sends = {s: (slots[i + offset], buffers[s]) for i, s in mine if i < offset and i + offset < n}
        recvs = {s: (slots[i - offset], buffers[s]) for i, s in mine if offset <= i < 2 * offset}
        router.route(sends, recvs)
        offset *= 2


def busiest_rank_vectors(n_state: int, P: int, rollout: str = "scan", extrapolate: bool = False,
                         per_rank: int = 1) -> int:
    """Parameter vectors the busiest rank may send in one iteration (the claimed bound).

    Per position: scan: ``ceil(log2 P)`` rounds of the state and the parameter scans; relay:
    one packed state; both: one guess for the error exchange and, down the tree,
    ``ceil(log2 P)`` tail seeds (two vectors each when extrapolating). A rank holding
    ``per_rank`` positions sends at most that many times as much (less: messages between its
    own positions are copies). The decision gather is a few floats.
    """
    rounds = math.ceil(math.log2(P)) if P > 1 else 0
    rollout_vectors = rounds * (n_state + 1) if rollout == "scan" else n_state + 1
    return per_rank * (rollout_vectors + 1 + rounds * (2 if extrapolate else 1))


def load_trajectory(path: str, layout: FlatLayout, steps: int) -> torch.Tensor:
    """A recorded trajectory, one row of parameters (unpadded) per step ``0..steps``."""
    traj = torch.load(path, map_location="cpu", weights_only=True)
    expected = (steps + 1, layout.n_real)
    if not isinstance(traj, torch.Tensor) or tuple(traj.shape) != expected:
        shape = tuple(traj.shape) if isinstance(traj, torch.Tensor) else type(traj).__name__
        raise ValueError(f"init_trajectory={path!r} holds {shape}; expected a tensor of shape {expected} "
                         "(rows: the parameters before step 0..steps, in model.parameters() order)")
    return traj


def choose_rollout(requested: str, spec: OptimSpec) -> str:
    if requested == "scan" and spec.coupled_weight_decay:
        raise ValueError(f"rollout='scan' cannot handle optimizer={spec.name!r} with weight_decay="
                         f"{spec.weight_decay} (coupled); use rollout='relay' or 'auto'")
    if requested == "auto":
        return "relay" if spec.coupled_weight_decay else "scan"
    return requested


class PlacementTooLarge(RuntimeError):
    """A worker's window positions would not fit its device's memory."""


def check_placement_memory(needed: int, available: int, P: int, per_rank: int, device: str) -> None:
    """Raise before the first step when a worker's positions need more memory than its device
    has free, naming the estimate and the placements that would fit."""
    if needed <= available:
        return
    model = needed / per_rank  # an upper bound of one position's share
    fits = [P // n for n in range(1, P + 1) if P % n == 0 and (P // n) * model <= available]
    hint = (f"use nproc >= {P // max(fits)} so each worker holds at most {max(fits)} position(s)" if fits
            else "no placement fits one position on this device")
    raise PlacementTooLarge(f"positions_per_rank={per_rank} needs about {needed / 2**30:.2f} GiB on {device} (model + "
                            f"{per_rank} x (guess, gradient, optimizer state, buffers)) but {available / 2**30:.2f} GiB "
                            f"is free; {hint}")


class Position:
    """One window slot held by this rank: its guess, gradient, optimizer state and buffers.

    Memory per position: the guess (a padded flat copy of the parameters, written into the
    rank's one model before each gradient, see :class:`FlatParams`), one gradient (which
    doubles as the parameter scan's accumulator), one optimizer state, the optimizer-state
    scan accumulator and one receive buffer (which also carries the new tail's seed).
    """

    def __init__(self, slot: int, flat: FlatParams, spec: OptimSpec, extrapolate: bool) -> None:
        self.slot = slot
        self.x = flat.new_vector()
        self.grad = torch.zeros_like(self.x)
        self.state = init_state(spec, self.x)
        self.exact = TorchStep(spec, flat.layout.views(self.x))
        d, n_state = self.x.numel(), len(spec.state_names)
        self.scan_state = self.x.new_empty(d * n_state)
        self.recv = self.x.new_empty(d * max(n_state, 2 if extrapolate else 1))
        self.guess_before_slide: torch.Tensor | None = None  # init="extrapolate"


#: One position's rollout output: its iterate and optimizer state (views into its buffers).
Output = tuple[torch.Tensor, dict[str, torch.Tensor]]


class PasoWorker:
    """One rank's part of PASO: the window positions (slots) it holds, one model for all."""

    def __init__(self, ctx: WorkerContext, task: Task) -> None:
        self.ctx, self.task, self.cfg, self.opts = ctx, task, ctx.cfg, ctx.options
        self.P = self.opts.P
        coords = ctx.dims.coordinates(ctx.rank)
        self.replica, self.replicas = coords["dp_replicate"], ctx.dims.dp_replicate
        self.per_rank = positions_per_rank(self.P, ctx.dims.window)
        self.spec = OptimSpec.from_config(self.cfg)
        self.rollout = choose_rollout(self.opts.rollout, self.spec)
        self.model = task.build_model()
        self.flat = FlatParams(self.model, ALIGN_BYTES)
        self.layout = self.flat.layout
        extrapolate = self.opts.init == "extrapolate"
        if ctx.device.type == "cuda":  # before any position is allocated
            free, _ = torch.cuda.mem_get_info(ctx.device)
            # activations of one gradient are not estimated: a quarter of the free memory is left for them
            check_placement_memory(self.estimated_bytes(extrapolate), int(0.75 * free), self.P, self.per_rank,
                                   str(ctx.device))
        first = coords["window"] * self.per_rank
        self.positions = [Position(s, self.flat, self.spec, extrapolate) for s in range(first, first + self.per_rank)]
        self.router = SlotRouter(ctx.comm, coords["window"], self.per_rank,
                                 lambda w: ctx.dims.rank_at(window=w, dp_replicate=self.replica))

        self.win = Window(threshold=self.opts.threshold)
        # init="trajectory": new guesses are read from a recorded trajectory (tests, warm starts)
        self.trajectory = (load_trajectory(str(self.opts.init_trajectory), self.layout, self.cfg.steps)
                           if self.opts.init == "trajectory" else None)
        for position in self.positions:
            self._guess_from_trajectory(position, self.pos(position))

    @property
    def x(self) -> torch.Tensor:
        """The guess of this rank's first slot (one position per rank: its only guess)."""
        return self.positions[0].x

    def pos(self, position: Position) -> int:
        return self.win.position(position.slot, self.P)

    def holder_of(self, pos: int) -> int:
        """The rank holding window position ``pos`` in the first data-parallel replica."""
        return self.ctx.dims.rank_at(window=self.win.slot_of(pos, self.P) // self.per_rank, dp_replicate=0)

    def _guess_from_trajectory(self, position: Position, step: int) -> None:
        """Take the recorded parameters of ``step`` as a guess (never for the exact start)."""
        if self.trajectory is not None and self.win.start < step <= self.cfg.steps:
            self.layout.unpack_(position.x, self.trajectory[step].to(position.x))

    # --------------------------------------------------------------- one iteration
    def gradients(self, window: int) -> list[tuple[float, float]]:
        """Each active position's gradient at its guess, in ``grad``: ``(loss, seconds)`` per position.

        ``batched="vmap"``: the active positions other than the window start in one
        ``torch.func.vmap`` call (each on its own parameters and its own step's batch); the window
        start's gradient is computed alone, so the accepted step stays serial training's."""
        batch = [p for p in self.positions if 0 < self.pos(p) < window] if self.opts.batched == "vmap" else []
        if len(batch) < 2:
            batch = []
        done = dict(zip((p.slot for p in batch), self.vmapped_gradients(batch))) if batch else {}
        return [done[p.slot] if p.slot in done else self.gradient(p, self.pos(p) < window) for p in self.positions]

    def vmapped_gradients(self, positions: list[Position]) -> list[tuple[float, float]]:
        """Gradients of several positions in one :func:`batched_loss_and_grads` call, clipped per
        position (``clip_flat_``: the norm over one flat vector, equal to ``clip_grad_norm_`` up
        to rounding, so these are guesses' gradients, never the window start's)."""
        tic = time.perf_counter()
        steps = [self.win.start + self.pos(p) for p in positions]
        grads, losses = batched_loss_and_grads(self.task, self.model, [self.layout.views(p.x) for p in positions],
                                               [self.task.train_batch(step) for step in steps], steps[0])
        for position, grad in zip(positions, grads):
            position.grad.zero_()  # the padding between parameters stays zero
            for view, value in zip(self.layout.views(position.grad), grad):
                view.copy_(value)
            clip_flat_(position.grad, self.spec.grad_clip)
        seconds = (time.perf_counter() - tic) / len(positions)
        return [(loss, seconds) for loss in losses]

    def gradient(self, position: Position, active: bool) -> tuple[float, float]:
        if not active:
            position.grad.zero_()
            return float("nan"), 0.0
        tic = time.perf_counter()
        step = self.win.start + self.pos(position)
        self.flat.load_(position.x)
        if self.replicas == 1:
            loss = loss_and_grad(self.task, self.model, self.task.train_batch(step), step)
        else:
            loss = self._data_parallel_gradient(step)
        clip_model_grads_(self.model, self.spec.grad_clip)
        self.flat.grad_into(position.grad)
        self.model.zero_grad(set_to_none=True)  # the flat copy is all the rollout needs
        return loss, time.perf_counter() - tic

    def _data_parallel_gradient(self, step: int) -> float:
        """The window x data mesh: this replica's shard of step ``step``'s batch, gradients and
        loss averaged over the replicas (one all-reduce per parameter, as naive DP), so every
        replica of a position holds the same gradient and runs the same rollout."""
        replicas = self.ctx.group("dp_replicate")
        batch = self.task.train_shard(step, self.replica, self.replicas)
        loss = torch.tensor([loss_and_grad(self.task, self.model, batch, step)], dtype=torch.float64)
        for p in self.flat.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            replicas.all_reduce_(p.grad).div_(self.replicas)
        return float(replicas.all_reduce_(loss.to(self.x.device)).item()) / self.replicas

    def exact_step_(self, position: Position) -> None:
        """The window start's step, in place on the position's guess and state: ``torch.optim``'s
        own step (see :class:`TorchStep`), so it is bitwise the serial step."""
        views = {name: self.layout.views(position.state[name]) for name in self.spec.state_names}
        position.exact.step_(self.win.start, self.layout.views(position.grad), views)

    def rollout_(self, window: int) -> list[Output]:
        return self.scan_rollout(window) if self.rollout == "scan" else self.relay_rollout(window)

    def _exchange_all(self, tensors: Sequence[torch.Tensor], offset: int) -> list[torch.Tensor | None]:
        """One scan round for every position here: send to ``pos + offset``, receive from ``pos - offset``."""
        sends, recvs, out = {}, {}, []
        for position, tensor in zip(self.positions, tensors):
            pos = self.pos(position)
            if pos + offset < self.P:
                sends[position.slot] = (self.win.slot_of(pos + offset, self.P), tensor)
            buffer = position.recv[:tensor.numel()] if pos - offset >= 0 else None
            if buffer is not None:
                recvs[position.slot] = (self.win.slot_of(pos - offset, self.P), buffer)
            out.append(buffer)
        self.router.route(sends, recvs)
        return out

    def scan_rollout(self, window: int) -> list[Output]:
        """Both phases of the affine prefix scan; returns each position's rolled-out state.

        The results are views into the reused scan buffers: valid until the next gradient.
        """
        spec, b, names = self.spec, self.win.start, self.spec.state_names
        d = self.x.numel()
        states, accs = [], []
        for position in self.positions:
            pos = self.pos(position)
            mine = [position.scan_state[k * d:(k + 1) * d] for k in range(len(names))]
            states.append(mine)
            accs.append(position.grad)  # phase 2 overwrites the gradient (SGD's offset is the gradient)
            if pos == 0:  # the exact step from the window start, folded in as a constant map
                self.exact_step_(position)
                for k, name in enumerate(names):
                    mine[k].copy_(position.state[name])
                position.grad.copy_(position.x)
            elif pos < window:
                state_offsets_into(spec, position.grad, mine)
            else:
                position.scan_state.zero_()

        def coeffs1(p: int) -> list[float]:
            return [0.0] * len(names) if p == 0 else (state_coeffs(spec, b + p) if p < window else [1.0] * len(names))

        def coeffs2(p: int) -> list[float]:
            return [0.0] if p == 0 else ([param_coeff(spec, b + p)] if p < window else [1.0])

        positions = [self.pos(position) for position in self.positions]
        prefix_scan_many_([coeffs1(p) for p in range(self.P)], [p.scan_state for p in self.positions],
                          [d] * len(names), positions, self._exchange_all)
        for position, pos, mine in zip(self.positions, positions, states):
            if 0 < pos < window:
                param_offset_into(spec, b + pos, mine, position.grad, out=position.grad)
            elif pos > 0:
                position.grad.zero_()
        prefix_scan_many_([coeffs2(p) for p in range(self.P)], accs, [d], positions, self._exchange_all)
        return [(acc, dict(zip(names, mine))) for acc, mine in zip(accs, states)]

    def relay_rollout(self, window: int) -> list[Output]:
        """Sequential chain: take the state of position pos-1, step, pass it on (O(d) per position).

        This rank's positions go in window order, so the chain never waits on itself."""
        names, d = self.spec.state_names, self.x.numel()
        carried: dict[int, torch.Tensor] = {}  # packed states passed between this rank's own positions
        outputs: dict[int, Output] = {}
        for position in sorted(self.positions, key=self.pos):
            pos = self.pos(position)
            active = pos < window
            if pos == 0:
                if active:
                    self.exact_step_(position)
                x, state = position.x, position.state
            else:
                packed = carried.pop(position.slot, None)
                if packed is None:
                    packed = torch.empty(d * (1 + len(names)), dtype=self.x.dtype, device=self.x.device)
                    self.router.route({}, {position.slot: (self.win.slot_of(pos - 1, self.P), packed)})
                x = packed[:d]
                state = {k: packed[(i + 1) * d:(i + 2) * d] for i, k in enumerate(names)}
            if active and pos > 0:
                x, state = functional_step(self.spec, self.win.start + pos, x, state, position.grad)
            if pos + 1 < self.P:
                following = self.win.slot_of(pos + 1, self.P)
                packed = torch.cat([x] + [state[k] for k in names])
                if self.router.is_local(following):
                    carried[following] = packed
                else:
                    self.router.route({position.slot: (following, packed)}, {})
            outputs[position.slot] = (x.clone(), {k: v.clone() for k, v in state.items()})
        return [outputs[position.slot] for position in self.positions]

    def errors_with_next_guess(self, window: int, outputs: list[Output]) -> list[float]:
        """Per position: ``mean((x'_{b+pos+1} - x̂_{b+pos+1})^2) * 1e6`` over the parameters.

        The next guess is the next position's; the last position has none yet and uses its
        own guess, which is the seed's extra guess under copy init (the new tail is seeded
        from the last iterate, so guess ``b+P`` always equals guess ``b+P-1``).
        """
        sends, recvs = {}, {}
        d = self.x.numel()
        for position in self.positions:
            pos = self.pos(position)
            if 0 < pos < window:
                sends[position.slot] = (self.win.slot_of(pos - 1, self.P), position.x)
            if pos + 1 < window:
                recvs[position.slot] = (self.win.slot_of(pos + 1, self.P), position.recv[:d])
        self.router.route(sends, recvs)
        errors = []
        for position, (out_x, _) in zip(self.positions, outputs):
            pos, buffer = self.pos(position), position.recv[:d]
            if position.slot not in recvs:
                if pos != window - 1:
                    errors.append(float("nan"))  # past the end of training
                    continue
                buffer.copy_(position.x)
            # (a-b)^2 == (b-a)^2 exactly; padding is zero in both, so the sum is over parameters
            errors.append(float(buffer.sub_(out_x).square_().sum()) / self.layout.n_real * 1e6)
        return errors

    def slide(self, window: int, accepted: int, outputs: list[Output]) -> None:
        """Keep rolled-out iterates, seed the new tail from the last one, rotate positions."""
        d = self.x.numel()
        extrapolate = self.opts.init == "extrapolate"
        tails = []
        for position, (out_x, out_state) in zip(self.positions, outputs):
            if self.pos(position) < accepted - 1:
                tails.append(position)
                continue
            position.x.copy_(out_x)
            for name, value in out_state.items():
                position.state[name].copy_(value)
        if accepted >= 2:
            source = self.win.slot_of(window - 1, self.P)
            order = [source] + [self.win.slot_of(p, self.P) for p in range(accepted - 1)]
            seeds = {p.slot: p.recv[:2 * d if extrapolate else d] for p in self.positions if p.slot in order}
            for position, (out_x, _) in zip(self.positions, outputs):
                if position.slot == source:
                    seeds[source][:d].copy_(out_x)
                    if extrapolate:
                        torch.sub(out_x, position.guess_before_slide, out=seeds[source][d:])
            tree_broadcast_(self.router, seeds, order)
            for position in tails:
                k = self.pos(position) + 1  # this slot becomes tail position P-accepted+k
                seed = seeds[position.slot]
                position.x.copy_(seed[:d])
                if extrapolate:
                    position.x.add_(seed[d:], alpha=float(k))
                self._guess_from_trajectory(position, self.win.start + self.P + k)
        self.win.start_slot = self.win.slot_of(accepted - 1, self.P)

    def iterate(self) -> dict[str, Any]:
        ctx, win = self.ctx, self.win
        window = min(self.P, self.cfg.steps - win.start)
        comm_before, tic = ctx.comm.seconds, time.perf_counter()
        grads = self.gradients(window)
        if self.opts.init == "extrapolate":
            for position in self.positions:
                position.guess_before_slide = position.x.clone() if self.pos(position) == window - 1 else None
        tic_roll = time.perf_counter()
        outputs = self.rollout_(window)
        errs = self.errors_with_next_guess(window, outputs)
        t_roll = time.perf_counter() - tic_roll
        t_comm_roll = ctx.comm.seconds - comm_before
        extra = [v for position, (loss, _), err in zip(self.positions, grads, errs)
                 for v in (self.pos(position), err, loss)]
        stats, gathered = ctx.gather_iteration(sum(t for _, t in grads), [t_roll - t_comm_roll, *extra])
        first_replica = [r for r in range(ctx.world) if ctx.dims.coordinates(r)["dp_replicate"] == 0]
        per_position = gathered[first_replica, 1:].reshape(-1, 3)  # replicas of a position agree
        by_pos = per_position[per_position[:, 0].argsort()]
        errors = by_pos[:window, 1].tolist()  # one per position, the last against its own guess
        accepted = accepted_steps(errors[:window - 1], win.threshold, window)
        finite = [e for e in errors if math.isfinite(e)]
        row = {
            "train_loss": float(by_pos[0, 2]), "lr": lr_of(self.spec, win.start),
            "window_start": win.start, "window_size": window,
            "accepted": accepted, "threshold": win.threshold,
            "err_mean": window_statistic(errors, "mean"),
            "err_median": window_statistic(errors, "median"),
            "err_max": max(finite) if finite else float("nan"),
            "time_rollout_s": float(gathered[:, 0].max()),
        }
        ctx.check_finite(row["train_loss"], f"step {win.start} (window start)")
        win.last_loss = float(by_pos[window - 1, 2])
        adapted = errors if self.opts.threshold_errors == "seed" else errors[:window - 1]
        win.threshold = updated_threshold(win.threshold, adapted, self.opts.ema_decay, self.opts.adaptivity)
        self.slide(window, accepted, outputs)
        win.start += accepted
        win.iterations += 1
        win.grad_evals += window
        ctx.record_train(row, stats, time.perf_counter() - tic, steps_done=win.start, iteration=win.iterations,
                         grad_evals=win.grad_evals, last=win.start >= self.cfg.steps)
        return row

    # ------------------------------------------------------------ checkpointing
    def checkpoint_state(self) -> dict[str, Any]:
        return {"positions": [{"slot": p.slot, "x": p.x.clone(), "state": {k: v.clone() for k, v in p.state.items()}}
                              for p in self.positions], "window": vars(self.win).copy()}

    def restore(self, checkpoint: dict[str, Any]) -> None:
        for position, saved in zip(self.positions, checkpoint["positions"]):
            assert saved["slot"] == position.slot, "a checkpoint of another placement"
            position.x.copy_(saved["x"])
            position.state = {k: v.to(position.x.device) for k, v in saved["state"].items()}
        self.win = Window(**checkpoint["window"])

    def estimated_bytes(self, extrapolate: bool) -> int:
        """What :meth:`state_bytes` will count, from the parameter and optimizer-state sizes alone."""
        n_state = len(self.spec.state_names)
        vector = self.layout.total * next(self.model.parameters()).element_size()
        per_position = (2 + 2 * n_state + max(n_state, 2 if extrapolate else 1)) * vector
        return sum(p.numel() * p.element_size() for p in self.model.parameters()) + self.per_rank * per_position

    def state_bytes(self) -> int:
        """Bytes of the tensors this rank holds for training: the model's parameters and, per
        position, its guess, gradient, optimizer state and scan / receive buffers (counted)."""
        model = sum(p.numel() * p.element_size() for p in self.model.parameters())
        vectors = [t for p in self.positions for t in (p.x, p.grad, p.scan_state, p.recv, *p.state.values())]
        return model + sum(t.numel() * t.element_size() for t in vectors)

    def start_position(self) -> Position | None:
        """This rank's position holding window position 0, in the first replica (None elsewhere)."""
        if self.replica:
            return None
        return next((p for p in self.positions if self.pos(p) == 0), None)

    def gather_final_model(self) -> torch.nn.Module:
        """Bring the final parameters (held by window position 0) to every rank's model."""
        holder = self.start_position()
        final = holder.x if holder is not None else self.x.clone()
        self.ctx.comm.broadcast_(final, src=self.holder_of(0))
        return self.flat.load_(final)

    def evaluate_window_start(self) -> dict[str, float]:
        """Held-out metrics of the exact state (window position 0), on the logging rank."""
        holder = self.start_position()
        metrics = eval_columns(self.task, self.flat.load_(holder.x)) if holder is not None else None
        return self.ctx.comm.broadcast_object(metrics, src=self.holder_of(0))


def train(ctx: WorkerContext, task: Task) -> dict[str, Any]:
    worker = PasoWorker(ctx, task)
    checkpoint = ctx.load_checkpoint()
    if checkpoint is not None:
        worker.restore(checkpoint)
        ctx.log.info("resumed at step %d (iteration %d)", worker.win.start, worker.win.iterations)
    ctx.open_metrics(keep_rows=checkpoint["metrics_rows"] if checkpoint and ctx.is_main else None)
    ctx.log.info("PASO: P=%d (%d per rank) rollout=%s threshold=%g ema=%g", worker.P, worker.per_rank,
                 worker.rollout, ctx.options.threshold, ctx.options.ema_decay)
    T = ctx.cfg.steps
    while worker.win.start < T:
        before = worker.win.start
        row = worker.iterate()
        win = worker.win
        if should_eval(ctx, win.start, before):
            ctx.record_eval(worker.evaluate_window_start(), steps_done=win.start, iteration=win.iterations,
                            grad_evals=win.grad_evals)
        if win.iterations % ctx.cfg.log_every == 0 or win.start >= T:
            ctx.progress(win.start, T, iters=win.iterations, loss=row["train_loss"], accepted=row["accepted"])
        if ctx.due_for_checkpoint(worker.win.iterations, worker.win.iterations - 1):
            ctx.save_checkpoint(worker.checkpoint_state())
        ctx.maybe_stop(worker.win.iterations)
    model = worker.gather_final_model()
    win = worker.win
    summary = final_report(ctx, task, model, T, win.iterations, win.grad_evals, win.last_loss)
    summary.update({"P": worker.P, "positions_per_rank": worker.per_rank, "data_parallel": worker.replicas,
                    "rollout": worker.rollout,
                    "final_threshold": win.threshold, "state_mb_per_rank": worker.state_bytes() / 2**20,
                    # the unit of the bytes bound: one padded flat parameter vector
                    "vector_bytes": worker.x.numel() * worker.x.element_size()})
    return summary


SPEC = register(MethodSpec(
    name="paso", summary="PASO: step-parallel fixed-point iteration over a window of P steps",
    options=PasoOptions, dims=window_dims,
    default_nproc=lambda options: max(1, options.P // (options.positions_per_rank or 1)) * options.data_parallel,
    train=train, world_rule="holds positions_per_rank window steps per worker in each of data_parallel replicas, "
    "so nproc*nnodes must be a divisor of P times data_parallel"))
