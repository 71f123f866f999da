"""PASO: step-parallel training by fixed-point iteration over a sliding window of P steps.

One worker per window position. Each iteration: every worker computes the gradient of
its step at its current guess; the window is rolled out from the exact start state
(prefix scan, or a relay chain for coupled weight decay); each rollout iterate is
compared with the next position's guess; the converged prefix is accepted and the
window slides (the method is described in ``docs/paso.md``).

Exactness: the window start's step is ``torch.optim``'s own ``step()`` (:class:`TorchStep`)
on the model's parameters, after ``clip_grad_norm_`` on the model's gradients -- the very
calls serial training makes, on tensors of the same shapes and alignment. With threshold 0
(and ``K = T``) PASO therefore equals serial bit for bit on any machine, given the same
thread count.

Threshold statistic: like the seed, which keeps ``P + 1`` guesses, every iteration has one
error per position; the last position, whose next guess does not exist yet, compares its
iterate with its own guess (the seed's extra guess under copy init). ``adaptivity="median"``
takes the middle entry of the errors in window order (``errors[len // 2]``), as the seed does.
``threshold_errors="next_guess"`` leaves the last position's error out (``P - 1`` errors):
its guess is one step behind, so it inflates the tolerance, which costs quality on some tasks
(the WikiText artifact measures both).

Memory per rank: the model, its guess (a padded flat copy of the parameters, written into
the model before each gradient, see :class:`FlatParams`), one gradient
(which doubles as the parameter scan's accumulator), one optimizer state, and two
preallocated buffers (the optimizer-state scan accumulator and one receive buffer), whatever
``P`` is; a scan iteration allocates nothing parameter-sized. Positions rotate over ranks as
the window slides, so the new window start is simply the rank that already holds the
accepted state: nothing is copied except the last iterate to the new tail positions, sent
down a binomial tree, so no rank sends more than ``ceil(log2 P)`` copies of it.

Bytes per iteration on the busiest rank, in parameter vectors of ``d`` elements:
``ceil(log2 P) * (n_state + 1)`` for the scan, ``1`` for the error exchange and
``ceil(log2 P)`` (``2 ceil(log2 P)`` with ``init="extrapolate"``) for the tail seed.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch

from ..config import RunConfig, check_window
from ..context import WorkerContext
from ..distributed import Comm
from ..optim.scan import param_coeff, param_offset_into, prefix_scan_, state_coeffs, state_offsets_into
from ..optim.updates import OptimSpec, TorchStep, functional_step, init_state, lr_at as lr_of
from ..options import ConfigError, MethodOptions, check_int, check_number, check_path_or_none, option
from ..parallel import ParallelDims
from ..tasks.base import Task
from . import MethodSpec, register
from .common import FlatLayout, FlatParams, clip_model_grads_, eval_columns, final_report, loss_and_grad, should_eval

#: Every parameter starts on this boundary inside the flat vector, as a fresh allocation would.
ALIGN_BYTES = 512

ADAPTIVITY = ("mean", "median")
#: Which errors feed PASO's adaptive tolerance: the seed's P (the last position against its own
#: guess) or only the P-1 that have a next guess (this repository's earlier rule).
THRESHOLD_ERRORS = ("seed", "next_guess")
PASO_INITS = ("copy", "extrapolate", "trajectory")
PASO_ROLLOUTS = ("auto", "scan", "relay")


@dataclass
class PasoOptions(MethodOptions):
    """PASO's knobs (``docs/paso.md``)."""

    #: threshold 0 with a fixed tolerance accepts only exact iterates: serial training's steps
    EXACT_REPLAY: ClassVar[Mapping[str, Any]] = {"threshold": 0.0, "ema_decay": 1.0}

    P: int = option(4, "window size: steps solved in parallel, one worker each")
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

    def check(self, cfg: RunConfig) -> None:
        super().check(cfg)
        check_int("P", self.P)
        check_window(cfg, self.P)
        check_number("threshold", self.threshold, 0.0)
        check_number("ema_decay", self.ema_decay, 0.0, 1.0)
        _check_init_trajectory(self)
        if self.rollout == "scan" and cfg.optimizer != "adamw" and cfg.resolved_weight_decay > 0:
            raise ConfigError(
                f"rollout='scan' needs weight decay outside the gradient; optimizer={cfg.optimizer!r} with "
                f"weight_decay={cfg.resolved_weight_decay} couples it in: use rollout='relay' or 'auto', "
                "or optimizer='adamw'")


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
    """One rank per window position."""
    return ParallelDims(window=cfg.options.P)



@dataclass
class Window:
    """Bookkeeping that every rank holds identically (decided from gathered scalars)."""

    start: int = 0          # b: first step of the window (its guess is exact)
    start_rank: int = 0     # rank holding window position 0
    threshold: float = 0.0
    iterations: int = 0     # K
    grad_evals: int = 0     # G
    last_loss: float = float("nan")
    history: list[int] = field(default_factory=list)

    def position(self, rank: int, size: int) -> int:
        return (rank - self.start_rank) % size

    def rank_of(self, pos: int, size: int) -> int:
        return (self.start_rank + pos) % size


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


def tree_broadcast_(comm: Comm, tensor: torch.Tensor, ranks: list[int], me: int) -> None:
    """Broadcast ``tensor`` from ``ranks[0]`` to the other ``ranks`` down a binomial tree.

    Why not ``dist.broadcast``: it would need a process group per set of ranks, and a
    root-sends-all scheme costs the root ``(n-1)`` copies; here no rank sends more than
    ``ceil(log2 n)`` copies, which keeps PASO's busiest rank at ``O(d log P)`` bytes.
    """
    if me not in ranks:
        return
    i, n, offset = ranks.index(me), len(ranks), 1
    while offset < n:
        if i < offset and i + offset < n:
            comm.exchange(tensor, ranks[i + offset], None)
        elif offset <= i < 2 * offset:
            comm.exchange(None, None, ranks[i - offset], recv_into=tensor)
        offset *= 2


def busiest_rank_vectors(n_state: int, P: int, rollout: str = "scan", extrapolate: bool = False) -> int:
    """Parameter vectors the busiest rank may send in one iteration (the claimed bound).

    Scan: ``ceil(log2 P)`` rounds of the state and the parameter scans; relay: one packed
    state; both: one guess for the error exchange and, down the tree, ``ceil(log2 P)`` tail
    seeds (two vectors each when extrapolating). The decision gather is a few floats.
    """
    rounds = math.ceil(math.log2(P)) if P > 1 else 0
    rollout_vectors = rounds * (n_state + 1) if rollout == "scan" else n_state + 1
    return rollout_vectors + 1 + rounds * (2 if extrapolate else 1)


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


class PasoWorker:
    """One rank's part of PASO: its guess, gradient and optimizer state."""

    def __init__(self, ctx: WorkerContext, task: Task) -> None:
        self.ctx, self.task, self.cfg, self.opts = ctx, task, ctx.cfg, ctx.options
        self.P = ctx.world
        self.spec = OptimSpec.from_config(self.cfg)
        self.rollout = choose_rollout(self.opts.rollout, self.spec)
        self.model = task.build_model()
        # this rank's guess: a padded flat copy of the model's parameters
        self.flat = FlatParams(self.model, ALIGN_BYTES)
        self.x, self.layout = self.flat.new_vector(), self.flat.layout
        self.grad = torch.zeros_like(self.x)
        self.state = init_state(self.spec, self.x)
        self.exact = TorchStep(self.spec, self.layout.views(self.x))
        d, n_state = self.x.numel(), len(self.spec.state_names)
        # Reused every iteration: the phase-1 (optimizer state) scan accumulator, and one
        # receive buffer that also carries the new tail's seed when the window slides. The
        # phase-2 (parameter) accumulator is ``self.grad``: the gradient is spent by then.
        self.scan_state = self.x.new_empty(d * n_state)
        self.recv = self.x.new_empty(d * max(n_state, 2 if self.opts.init == "extrapolate" else 1))
        self.win = Window(threshold=self.opts.threshold)
        self._bytes_at_gather = 0
        # init="extrapolate": the last position's guess before the slide, to form its step
        self._guess_before_slide: torch.Tensor | None = None
        # init="trajectory": new guesses are read from a recorded trajectory (tests, warm starts)
        self.trajectory = (load_trajectory(str(self.opts.init_trajectory), self.layout, self.cfg.steps)
                           if self.opts.init == "trajectory" else None)
        self._guess_from_trajectory(self.win.position(ctx.rank, self.P))

    def _guess_from_trajectory(self, step: int) -> None:
        """Take the recorded parameters of ``step`` as this rank's guess (never for the exact start)."""
        if self.trajectory is not None and self.win.start < step <= self.cfg.steps:
            self.layout.unpack_(self.x, self.trajectory[step].to(self.x))

    # --------------------------------------------------------------- one iteration
    def gradient(self, pos: int, active: bool) -> tuple[float, float]:
        if not active:
            self.grad.zero_()
            return float("nan"), 0.0
        tic = time.perf_counter()
        step = self.win.start + pos
        self.flat.load_(self.x)
        loss = loss_and_grad(self.task, self.model, self.task.train_batch(step), step)
        clip_model_grads_(self.model, self.spec.grad_clip)
        self.flat.grad_into(self.grad)
        self.model.zero_grad(set_to_none=True)  # the flat copy is all the rollout needs
        return loss, time.perf_counter() - tic

    def exact_step_(self) -> None:
        """The window start's step, in place on this rank's guess and state: ``torch.optim``'s
        own step (see :class:`TorchStep`), so it is bitwise the serial step."""
        views = {name: self.layout.views(self.state[name]) for name in self.spec.state_names}
        self.exact.step_(self.win.start, self.layout.views(self.grad), views)

    def scan_rollout(self, pos: int, active: bool, window: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Both phases of the affine prefix scan; returns this position's rolled-out state.

        The results are views into the reused scan buffers: valid until the next gradient.
        """
        spec, b, names, d = self.spec, self.win.start, self.spec.state_names, self.x.numel()
        states = [self.scan_state[k * d:(k + 1) * d] for k in range(len(names))]
        acc_x = self.grad  # phase 2 overwrites the gradient (SGD's offset is the gradient itself)

        def exchange(tensor: torch.Tensor, offset: int) -> torch.Tensor | None:
            send = self.win.rank_of(pos + offset, self.P) if pos + offset < self.P else None
            recv = self.win.rank_of(pos - offset, self.P) if pos - offset >= 0 else None
            return self.ctx.comm.exchange(tensor, send, recv, recv_into=self.recv[:tensor.numel()])

        def coeffs1(p: int) -> list[float]:
            return [0.0] * len(names) if p == 0 else (state_coeffs(spec, b + p) if p < window else [1.0] * len(names))

        def coeffs2(p: int) -> list[float]:
            return [0.0] if p == 0 else ([param_coeff(spec, b + p)] if p < window else [1.0])

        if pos == 0:  # the exact step from the window start, folded in as a constant map
            self.exact_step_()
            for k, name in enumerate(names):
                states[k].copy_(self.state[name])
            acc_x.copy_(self.x)
        elif active:
            state_offsets_into(spec, self.grad, states)
        else:
            self.scan_state.zero_()
        prefix_scan_([coeffs1(p) for p in range(self.P)], self.scan_state, [d] * len(names), pos, exchange)
        if pos > 0 and active:
            param_offset_into(spec, b + pos, states, self.grad, out=acc_x)
        elif pos > 0:
            acc_x.zero_()
        prefix_scan_([coeffs2(p) for p in range(self.P)], acc_x, [d], pos, exchange)
        return acc_x, dict(zip(names, states))

    def relay_rollout(self, pos: int, active: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sequential chain: receive the state from position pos-1, step, pass it on (O(d) per rank)."""
        names, d = self.spec.state_names, self.x.numel()
        if pos == 0:
            if active:
                self.exact_step_()
            x, state = self.x, self.state
        else:
            like = torch.empty(d * (1 + len(names)), dtype=self.x.dtype, device=self.x.device)
            packed = self.ctx.comm.exchange(None, None, self.win.rank_of(pos - 1, self.P), recv_into=like)
            x = packed[:d]
            state = {k: packed[(i + 1) * d:(i + 2) * d] for i, k in enumerate(names)}
        if active and pos > 0:
            x, state = functional_step(self.spec, self.win.start + pos, x, state, self.grad)
        if pos + 1 < self.P:
            packed = torch.cat([x] + [state[k] for k in names])
            self.ctx.comm.exchange(packed, self.win.rank_of(pos + 1, self.P), None)
        return x.clone(), {k: v.clone() for k, v in state.items()}

    def error_with_next_guess(self, pos: int, window: int, out_x: torch.Tensor) -> float:
        """``mean((x'_{b+pos+1} - x̂_{b+pos+1})^2) * 1e6`` over the parameters.

        The next guess is the next position's; the last position has none yet and uses its
        own guess, which is the seed's extra guess under copy init (the new tail is seeded
        from the last iterate, so guess ``b+P`` always equals guess ``b+P-1``).
        """
        send = self.win.rank_of(pos - 1, self.P) if 0 < pos < window else None
        recv = self.win.rank_of(pos + 1, self.P) if pos + 1 < window else None
        buffer = self.recv[:self.x.numel()]
        next_guess = self.ctx.comm.exchange(self.x, send, recv, recv_into=buffer)
        if next_guess is None:
            if pos != window - 1:
                return float("nan")  # past the end of training
            next_guess = buffer.copy_(self.x)
        # (a-b)^2 == (b-a)^2 exactly; padding is zero in both, so the sum is over parameters
        return float(next_guess.sub_(out_x).square_().sum()) / self.layout.n_real * 1e6

    def slide(self, pos: int, window: int, accepted: int, out_x: torch.Tensor,
              out_state: dict[str, torch.Tensor]) -> None:
        """Keep rolled-out iterates, seed the new tail from the last one, rotate positions."""
        is_tail = pos < accepted - 1
        if not is_tail:
            self.x.copy_(out_x)
            for name, value in out_state.items():
                self.state[name].copy_(value)
        if accepted >= 2:
            source = self.win.rank_of(window - 1, self.P)
            tails = [self.win.rank_of(p, self.P) for p in range(accepted - 1)]
            d = self.x.numel()
            seed = self.recv[:2 * d if self.opts.init == "extrapolate" else d]
            if self.ctx.rank == source:
                seed[:d].copy_(out_x)
                if self.opts.init == "extrapolate":
                    torch.sub(out_x, self._guess_before_slide, out=seed[d:])
            tree_broadcast_(self.ctx.comm, seed, [source] + tails, self.ctx.rank)
            if is_tail:
                k = pos + 1  # this rank becomes tail position P-accepted+k
                self.x.copy_(seed[:d])
                if self.opts.init == "extrapolate":
                    self.x.add_(seed[d:], alpha=float(k))
                self._guess_from_trajectory(self.win.start + self.P + k)
        self.win.start_rank = self.win.rank_of(accepted - 1, self.P)

    def iterate(self) -> dict[str, Any]:
        ctx, win = self.ctx, self.win
        pos = win.position(ctx.rank, self.P)
        window = min(self.P, self.cfg.steps - win.start)
        active = pos < window
        comm_before, tic = ctx.comm.seconds, time.perf_counter()
        loss, t_grad = self.gradient(pos, active)
        if self.opts.init == "extrapolate":
            self._guess_before_slide = self.x.clone() if pos == window - 1 else None
        tic_roll = time.perf_counter()
        if self.rollout == "scan":
            out_x, out_state = self.scan_rollout(pos, active, window)
        else:
            out_x, out_state = self.relay_rollout(pos, active)
        err = self.error_with_next_guess(pos, window, out_x)
        t_roll = time.perf_counter() - tic_roll
        t_comm_roll = ctx.comm.seconds - comm_before
        stats, gathered = ctx.gather_iteration(t_grad, [pos, err, loss, t_roll - t_comm_roll])
        by_pos = gathered[gathered[:, 0].argsort()]
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
            "time_rollout_s": float(gathered[:, 3].max()),
        }
        ctx.check_finite(row["train_loss"], f"step {win.start} (window start)")
        win.last_loss = float(by_pos[window - 1, 2])
        adapted = errors if self.opts.threshold_errors == "seed" else errors[:window - 1]
        win.threshold = updated_threshold(win.threshold, adapted, self.opts.ema_decay, self.opts.adaptivity)
        self.slide(pos, window, accepted, out_x, out_state)
        win.start += accepted
        win.iterations += 1
        win.grad_evals += window
        ctx.record_train(row, stats, time.perf_counter() - tic, steps_done=win.start, iteration=win.iterations,
                         grad_evals=win.grad_evals, last=win.start >= self.cfg.steps)
        return row

    # ------------------------------------------------------------ checkpointing
    def checkpoint_state(self) -> dict[str, Any]:
        return {"x": self.x.clone(), "state": {k: v.clone() for k, v in self.state.items()},
                "window": vars(self.win).copy()}

    def restore(self, checkpoint: dict[str, Any]) -> None:
        self.x.copy_(checkpoint["x"])
        self.state = {k: v.to(self.x.device) for k, v in checkpoint["state"].items()}
        self.win = Window(**checkpoint["window"])

    def gather_final_model(self) -> torch.nn.Module:
        """Bring the final parameters (held by window position 0) to every rank's model."""
        self.ctx.comm.broadcast_(self.x, src=self.win.start_rank)
        return self.flat.load_(self.x)

    def evaluate_window_start(self) -> dict[str, float]:
        """Held-out metrics of the exact state (window position 0), on the logging rank."""
        holder = self.win.start_rank
        metrics = eval_columns(self.task, self.flat.load_(self.x)) if self.ctx.rank == holder else None
        return self.ctx.comm.broadcast_object(metrics, src=holder)


def train(ctx: WorkerContext, task: Task) -> dict[str, Any]:
    worker = PasoWorker(ctx, task)
    checkpoint = ctx.load_checkpoint()
    if checkpoint is not None:
        worker.restore(checkpoint)
        ctx.log.info("resumed at step %d (iteration %d)", worker.win.start, worker.win.iterations)
    ctx.open_metrics(keep_rows=checkpoint["metrics_rows"] if checkpoint and ctx.is_main else None)
    ctx.log.info("PASO: P=%d rollout=%s threshold=%g ema=%g", worker.P, worker.rollout,
                 ctx.options.threshold, ctx.options.ema_decay)
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
    summary.update({"P": worker.P, "rollout": worker.rollout, "final_threshold": win.threshold,
                    # the unit of the bytes bound: one padded flat parameter vector
                    "vector_bytes": worker.x.numel() * worker.x.element_size()})
    return summary


SPEC = register(MethodSpec(
    name="paso", summary="PASO: step-parallel fixed-point iteration over a window of P steps",
    options=PasoOptions, dims=window_dims, default_nproc=lambda options: options.P, train=train,
    world_rule="runs one worker per window step, so nproc*nnodes must equal P"))
