"""OptEx (Shu et al., NeurIPS 2024): approximately parallelised iterations via a kernelized
gradient estimate — the algorithm of ``docs/optex.md``, not the public PyTorch
port (which evaluates every worker at the same point and so degenerates to vanilla steps).

One iteration with ``N`` workers, starting from the kept iterate ``(x, s)`` at step ``t``:

1. fit the GP posterior mean ``μ`` (Matérn 5/2) on the last ``T0`` true pairs, re-tuning
   the length scale every ``tune_every`` iterations;
2. proxy rollout: ``x^(0) = x`` and ``x^(j+1) = U(x^(j), s^(j), μ(x^(j)))`` for ``j < N-1``
   (optimizer step index ``t+j``);
3. worker ``k`` evaluates the true gradient ``g^(k)`` at ``x^(k)`` (batch of step ``t+k``);
4. the kept iterate is worker ``N-1``'s true step ``U(x^(N-1), s^(N-1), g^(N-1))``
   (index ``t+N-1``), so one iteration advances ``N`` sequential steps; all ``N`` pairs
   ``(x^(k), g^(k))`` join the history.

Communication design (cheaper than gather-pairs-then-broadcast, same wall time): the
proxy rollout is deterministic, so *every* rank runs all ``N-1`` proxy steps. That is the
critical path anyway (worker ``N-1`` must wait for the whole rollout), so on parallel
hardware it costs no wall time, and it means every rank already holds every ``x^(k)``.
The only message per iteration is one all-gather of the ``N`` true gradients (``d`` floats
per rank); each rank then applies worker ``N-1``'s update itself and appends the same
``N`` pairs to its own replica of the history. No parameter or optimizer-state broadcast
is needed. A float64 checksum of the new iterate is compared across ranks every
iteration, so a replica that drifted (non-deterministic kernels) stops the run loudly.

Bootstrap: the very first iteration has no history to fit. Worker 0's true gradient at
``x^(0)`` (which it computes anyway) is broadcast first and used as a constant proxy
gradient ("last true gradient"); with a single history pair the same rule applies; from
two pairs on the GP mean is used. ``first_proxy="zero"`` instead starts with a zero
estimate, as the official JAX code does (no broadcast, no sequential gradient).

Ablations (``proxy``): ``stale`` holds the last true gradient for all ``N-1`` proxy
steps, ``zero`` feeds zeros (the optimizer's momentum alone moves the proxy points). With
Adam both can come close to the GP estimate, because the normalised momentum step barely
depends on the newest gradient; ``notebooks/optex_ablation`` measures where it matters.

Memory per rank: history ``2·T0·d`` (+ the fitted GP's ``2·T0·d`` float64 copy), the
``N`` rollout points and gathered gradients ``2·N·d``, and two optimizer states — the
algorithm's own ``O(T0·d + N·d)``.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Collection

import torch

from ..config import RunConfig, check_window
from ..context import WorkerContext
from ..optim.kernel_gradient import NORMALIZATIONS, GradientHistory, KernelGradientEstimator, cosine_distance
from ..optim.updates import OptimSpec, clip_flat_, functional_step, init_state, lr_at
from ..options import MethodOptions, check_int, check_number, option
from ..parallel import ParallelDims
from ..tasks.base import Task
from . import MethodSpec, register
from .common import FlatParams, eval_columns, final_report, loss_and_grad, should_eval

State = dict[str, torch.Tensor]
#: What drives the proxy steps. ``stale`` and ``zero`` are ablations: they show how much of
#: OptEx's speed-up comes from the kernel estimate rather than from the optimizer's own state.
PROXIES = ("gp", "stale", "zero")
PROXY_WORDS = {"gp": "GP-mean gradient", "stale": "last true gradient, held", "zero": "zero gradient"}
FIRST_PROXIES = ("true_grad", "zero")
#: The official OptEx JAX code's settings (``docs/optex.md``), as options of this method.
OFFICIAL_JAX = dict(history=50, lengthscale=0.1, tune_every=0, normalization="mean_sqrt_norm", first_proxy="zero")
GradientFn = Callable[[torch.Tensor, int], tuple[torch.Tensor, float]]


@dataclass
class OptexOptions(MethodOptions):
    """OptEx's knobs (``docs/optex.md``)."""

    P: int = option(4, "workers N: steps advanced per iteration")
    history: int = option(20, "T0: true (point, gradient) pairs the GP is fitted on")
    lengthscale: float = option(1.0, "initial Matern 5/2 length scale (normalised)")
    noise: float = option(1e-3, "GP observation noise")
    tune_every: int = option(10, "re-tune the length scale every this many iterations (0: never)")
    proxy: str = option("gp", "gradient driving the N-1 proxy steps: gp (the kernel estimate), stale (the last "
                        "true gradient, held), zero (an ablation: only the optimizer state moves)", PROXIES)
    first_proxy: str = option("true_grad", "proxy of the first iteration, before any history: true_grad "
                              "(worker 0's gradient, broadcast) or zero (the official JAX code)", FIRST_PROXIES)
    normalization: str = option("spread", "GP input scaling: spread (max distance to the history mean), "
                                "max_norm, mean_sqrt_norm (the official JAX code), none", NORMALIZATIONS)

    def check(self, cfg: RunConfig) -> None:
        super().check(cfg)
        check_int("P", self.P)
        check_window(cfg, self.P)
        check_int("history", self.history, 2)
        check_number("lengthscale", self.lengthscale, 0.0, low_open=True)
        check_number("noise", self.noise, 0.0, low_open=True)
        check_int("tune_every", self.tune_every, 0)


# ============================================================== pure helpers (unit-tested)
def iterations_needed(steps: int, workers: int) -> int:
    """``K = ceil(T / N)``: each iteration advances ``N`` steps, the last one possibly fewer."""
    return math.ceil(steps / workers)


def active_workers(steps_done: int, steps: int, workers: int) -> int:
    """Workers used by the iteration starting at ``steps_done`` (fewer only at the end)."""
    return max(0, min(workers, steps - steps_done))


@dataclass
class Rollout:
    """Result of a proxy rollout: every point ``x^(0..n)``, and what was asked to be kept."""

    points: list[torch.Tensor]
    states: dict[int, State] = field(default_factory=dict)     # s^(j) for j in ``keep_states``
    estimates: dict[int, torch.Tensor] = field(default_factory=dict)  # proxy grad at x^(j), j in keep_estimates


def proxy_rollout(spec: OptimSpec, start_step: int, x: torch.Tensor, state: State,
                  estimate: Callable[[torch.Tensor], torch.Tensor], n_steps: int,
                  keep_states: Collection[int] = (), keep_estimates: Collection[int] = (),
                  clip: bool = True) -> Rollout:
    """``n_steps`` optimizer steps from ``(x, state)`` driven by ``estimate`` instead of ∇f.

    The estimate is clipped exactly like a true gradient (``clip=False`` if ``estimate``
    already returns clipped gradients), so with an exact gradient oracle this *is* vanilla
    training (tested). Only the states ``s^(j)`` for ``j`` in
    ``keep_states`` and the proxy gradients used at ``x^(j)`` for ``j`` in ``keep_estimates``
    are retained, so memory is the points plus a few vectors, not ``n_steps`` states.
    """
    points, out = [x], Rollout(points=[])
    if 0 in keep_states:
        out.states[0] = state
    for j in range(n_steps):
        g = estimate(x).clone()
        if clip:
            clip_flat_(g, spec.grad_clip)
        if j in keep_estimates:
            out.estimates[j] = g
        x, state = functional_step(spec, start_step + j, x, state, g)
        points.append(x)
        if j + 1 in keep_states:
            out.states[j + 1] = state
    out.points = points
    return out


@dataclass
class Bookkeeping:
    """Counters every rank holds identically (checkpointed)."""

    steps_done: int = 0
    iterations: int = 0      # K
    grad_evals: int = 0      # G
    tunes: int = 0
    last_tune_iteration: int = -1
    last_loss: float = float("nan")


class OptexCore:
    """The replicated part of OptEx: history, GP fit, length-scale tuning, rollout, update.

    It never computes a true gradient or communicates, so the same object drives the
    distributed method and :func:`simulate` (the single-process reference used in tests).
    """

    def __init__(self, spec: OptimSpec, workers: int, x0: torch.Tensor, history: int,
                 lengthscale: float, noise: float, tune_every: int, proxy: str = "gp",
                 first_proxy: str = "true_grad", normalization: str = "spread") -> None:
        self.spec, self.N, self.tune_every = spec, workers, tune_every
        self.proxy, self.first_proxy = proxy, first_proxy
        self.x = x0.detach().clone()
        self.state = init_state(spec, self.x)
        self.history = GradientHistory(history, self.x.numel(), dtype=self.x.dtype, device=self.x.device)
        self.estimator = KernelGradientEstimator(lengthscale=lengthscale, noise=noise,
                                                 normalization=normalization)  # type: ignore[arg-type]
        self.book = Bookkeeping()
        self.proxy_kind = "none"

    # ---------------------------------------------------------------- iteration
    def prepare(self, n: int) -> None:
        """Tune ℓ (when due) and fit the GP for an iteration that uses ``n`` workers."""
        self.proxy_kind = "none"
        if n < 2:
            return  # no proxy step this iteration
        if self.proxy == "zero" or (not len(self.history) and self.first_proxy == "zero"):
            self.proxy_kind = "zero"
            return
        if not len(self.history):
            self.proxy_kind = "bootstrap"
            return
        if self.proxy == "stale" or len(self.history) == 1:
            self.proxy_kind = "stale" if self.proxy == "stale" else "last_grad"
            return
        due = self.tune_every > 0 and (self.book.tunes == 0 or
                                       self.book.iterations - self.book.last_tune_iteration >= self.tune_every)
        if due:
            self.estimator.tune_lengthscale(self.history)
            self.book.tunes += 1
            self.book.last_tune_iteration = self.book.iterations
        self.estimator.fit(self.history)
        self.proxy_kind = "gp"

    def needs_bootstrap(self) -> bool:
        return self.proxy_kind == "bootstrap"

    def rollout(self, n: int, keep_estimates: Collection[int] = (),
                bootstrap_grad: torch.Tensor | None = None,
                override: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Rollout:
        """Proxy rollout of ``n-1`` steps from the kept iterate; keeps ``s^(n-1)`` for :meth:`finish`.

        ``override`` replaces the estimate and must return clipped gradients (tests and
        ablations only).
        """
        if override is not None:
            estimate = override
        elif self.proxy_kind == "gp":
            estimate = self.estimator.predict
        elif self.proxy_kind in ("last_grad", "stale", "bootstrap"):
            const = bootstrap_grad if self.proxy_kind == "bootstrap" else self.history.gradients()[-1]
            if const is None:
                raise RuntimeError("the first OptEx iteration needs worker 0's gradient (bootstrap)")
            estimate = lambda _x: const  # noqa: E731 - constant proxy gradient
        else:
            estimate = lambda x: torch.zeros_like(x)  # noqa: E731 - "zero", or n == 1: never called
        return proxy_rollout(self.spec, self.book.steps_done, self.x, self.state, estimate, n - 1,
                             keep_states=(n - 1,), keep_estimates=keep_estimates, clip=override is None)

    def finish(self, roll: Rollout, grads: torch.Tensor, n: int) -> None:
        """Apply worker ``n-1``'s true step (its gradient already clipped) and grow the history."""
        last = n - 1
        self.x, self.state = functional_step(self.spec, self.book.steps_done + last, roll.points[last],
                                             roll.states[last], grads[last])
        self.history.add_many(torch.stack(roll.points[:n]), grads[:n])
        self.book.steps_done += n
        self.book.iterations += 1
        self.book.grad_evals += n

    @property
    def lengthscale(self) -> float:
        return self.estimator.lengthscale

    @property
    def lengthscale_raw(self) -> float:
        """ℓ in units of x (normalised ℓ × the history's spread), NaN before the first fit."""
        return self.estimator.effective_lengthscale if self.estimator.fitted else float("nan")

    def checksum(self) -> float:
        """A float64 fingerprint of the kept iterate, compared across replicas."""
        return float(self.x.double().sum()) + sum(float(v.double().sum()) for v in self.state.values())

    # ------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        xs, gs = (self.history.pairs() if len(self.history) else (None, None))
        return {"x": self.x.clone(), "state": {k: v.clone() for k, v in self.state.items()},
                "history_x": None if xs is None else xs.clone(), "history_g": None if gs is None else gs.clone(),
                "lengthscale": self.estimator.lengthscale, "book": vars(self.book).copy()}

    def load_state_dict(self, data: dict[str, Any]) -> None:
        self.x = data["x"].to(self.x.device)
        self.state = {k: v.to(self.x.device) for k, v in data["state"].items()}
        self.history.clear()
        if data["history_x"] is not None:
            self.history.add_many(data["history_x"], data["history_g"])
        self.estimator.lengthscale = float(data["lengthscale"])
        self.book = Bookkeeping(**data["book"])


def proxy_errors(estimates: dict[int, torch.Tensor], grads: torch.Tensor) -> tuple[list[float], list[float]]:
    """Cosine distance and relative error ``‖ĝ - g‖/‖g‖`` of each proxy gradient used."""
    cos, rel = [], []
    for j, est in sorted(estimates.items()):
        g = grads[j]
        cos.append(cosine_distance(est, g))
        norm = float(g.double().norm())
        rel.append(float((est.double() - g.double()).norm()) / norm if norm > 0 else float("nan"))
    return cos, rel


def simulate_iteration(core: OptexCore, grad_fn: GradientFn, steps: int,
                       exact_proxy: bool = False) -> dict[str, float]:
    """One OptEx iteration in a single process (all ``n`` workers' gradients in turn).

    ``exact_proxy=True`` replaces the GP estimate by the true gradient (an ablation: OptEx
    with a perfect estimator must reproduce vanilla training in ``ceil(T/N)`` iterations).
    """
    n = active_workers(core.book.steps_done, steps, core.N)
    core.prepare(n)
    boot = None
    if core.needs_bootstrap() and not exact_proxy:
        boot, _ = grad_fn(core.x, core.book.steps_done)
    counter = iter(range(core.book.steps_done, core.book.steps_done + n))
    oracle = (lambda x: grad_fn(x, next(counter))[0]) if exact_proxy else None
    roll = core.rollout(n, keep_estimates=range(n - 1), bootstrap_grad=boot, override=oracle)
    grads, losses = [], []
    for k in range(n):
        g, loss = grad_fn(roll.points[k], core.book.steps_done + k)
        grads.append(g)
        losses.append(loss)
    grads_t = torch.stack(grads)
    cos, rel = proxy_errors({j: roll.estimates[j] for j in range(n - 1)}, grads_t)
    record = {"iteration": core.book.iterations + 1, "window_start": core.book.steps_done, "workers": n,
              "train_loss": losses[0], "proxy": core.proxy_kind, "lengthscale": core.lengthscale,
              "grad_est_cosine": statistics.fmean(cos) if cos else float("nan"),
              "grad_est_relerr": statistics.fmean(rel) if rel else float("nan")}
    core.finish(roll, grads_t, n)
    core.book.last_loss = losses[-1]
    return record


def simulate(spec: OptimSpec, x0: torch.Tensor, grad_fn: GradientFn, steps: int, workers: int,
             history: int = 20, lengthscale: float = 1.0, noise: float = 1e-3, tune_every: int = 10,
             exact_proxy: bool = False, **proxy_options: str) -> tuple[OptexCore, list[dict[str, float]]]:
    """Single-process OptEx with the same arithmetic as the distributed method.

    ``grad_fn(x, step) -> (clipped flat gradient, loss)``; ``proxy_options`` are
    :class:`OptexCore`'s ``proxy``, ``first_proxy`` and ``normalization``. Returns the final
    core (its ``x``, ``state``, ``book``) and one record per iteration. It is the reference
    the torchrun method is tested against, and a way to study the algorithm without processes.
    """
    core = OptexCore(spec, workers, x0, history, lengthscale, noise, tune_every, **proxy_options)
    records = []
    while core.book.steps_done < steps:
        records.append(simulate_iteration(core, grad_fn, steps, exact_proxy))
    return core, records


# ==================================================================== distributed part
class OptexWorker:
    """One rank of OptEx: a replica of :class:`OptexCore` plus its own true gradients."""

    def __init__(self, ctx: WorkerContext, task: Task) -> None:
        self.ctx, self.task, self.cfg = ctx, task, ctx.cfg
        self.N = ctx.world
        self.spec = OptimSpec.from_config(self.cfg)
        self.model = task.build_model()
        self.flat = FlatParams(self.model)             # x is written into the model before a gradient
        self.params = self.flat.new_vector()
        self.grad = torch.zeros_like(self.params)
        self.grads = torch.zeros(self.N, self.params.numel(), dtype=self.params.dtype, device=self.params.device)
        opts: OptexOptions = ctx.options
        self.core = OptexCore(self.spec, self.N, self.params, opts.history, opts.lengthscale, opts.noise,
                              opts.tune_every, proxy=opts.proxy, first_proxy=opts.first_proxy,
                              normalization=opts.normalization)

    def true_gradient(self, x: torch.Tensor, step: int) -> tuple[float, float]:
        """Loss and clipped gradient (into ``self.grad``) at ``x`` on the batch of ``step``."""
        tic = time.perf_counter()
        self.flat.load_(x)
        loss = loss_and_grad(self.task, self.model, self.task.train_batch(step), step)
        self.flat.grad_into(self.grad)
        clip_flat_(self.grad, self.spec.grad_clip)
        return loss, time.perf_counter() - tic

    def iterate(self) -> dict[str, Any]:
        ctx, core, k = self.ctx, self.core, self.ctx.rank
        book = core.book
        t = book.steps_done
        n = active_workers(t, self.cfg.steps, self.N)
        active = k < n
        comm_before, tic = ctx.comm.seconds, time.perf_counter()
        loss, t_grad = float("nan"), 0.0
        history_used = len(core.history)

        tic_proxy = time.perf_counter()
        core.prepare(n)
        boot = None
        if core.needs_bootstrap():
            if k == 0:
                loss, t_grad = self.true_gradient(core.x, t)
            boot = ctx.comm.broadcast_(self.grad, src=0).clone()
        roll = core.rollout(n, keep_estimates=(k,) if k < n - 1 else (), bootstrap_grad=boot)
        t_proxy = time.perf_counter() - tic_proxy - t_grad - (ctx.comm.seconds - comm_before)

        if active and not (boot is not None and k == 0):
            loss, t_grad = self.true_gradient(roll.points[k], t + k)
        elif not active:
            self.grad.zero_()
        ctx.comm.all_gather_into_rows(self.grad, self.grads)

        own = {k: roll.estimates[k]} if active and k < n - 1 else {}
        cos, rel = proxy_errors(own, self.grads)
        core.finish(roll, self.grads, n)
        stats, gathered = ctx.gather_iteration(t_grad, [
            k, loss, t_proxy, cos[0] if cos else float("nan"), rel[0] if rel else float("nan"), core.checksum()])
        checks = gathered[:, 5]
        if not bool((checks == checks[0]).all()):
            raise RuntimeError(
                f"OptEx replicas diverged at iteration {book.iterations} (checksums {checks.tolist()}): "
                "the replicated proxy rollout must be bitwise deterministic on every rank; use the same "
                "hardware and threads_per_worker on all ranks")
        cos_all = [c for c in gathered[:n - 1, 3].tolist() if math.isfinite(c)]
        rel_all = [r for r in gathered[:n - 1, 4].tolist() if math.isfinite(r)]
        book.last_loss = float(gathered[n - 1, 1])
        row = {
            "train_loss": float(gathered[0, 1]), "lr": lr_at(self.spec, t),
            "window_start": t, "workers": n, "loss_last_worker": book.last_loss,
            "proxy": core.proxy_kind, "history_size": history_used,
            "lengthscale": core.lengthscale, "lengthscale_raw": core.lengthscale_raw,
            "grad_est_cosine": statistics.fmean(cos_all) if cos_all else float("nan"),
            "grad_est_cosine_max": max(cos_all) if cos_all else float("nan"),
            "grad_est_relerr": statistics.fmean(rel_all) if rel_all else float("nan"),
            "time_proxy_s": float(gathered[:, 2].max()),
        }
        ctx.check_finite(row["train_loss"], f"step {t} (OptEx iteration {book.iterations})")
        ctx.record_train(row, stats, time.perf_counter() - tic, steps_done=book.steps_done,
                         iteration=book.iterations, grad_evals=book.grad_evals, last=book.steps_done >= self.cfg.steps)
        return {**row, **stats}

    def final_model(self) -> torch.nn.Module:
        return self.flat.load_(self.core.x)


def train(ctx: WorkerContext, task: Task) -> dict[str, Any]:
    worker = OptexWorker(ctx, task)
    core, T = worker.core, ctx.cfg.steps
    # Every rank holds the same replica, so rank 0 alone checkpoints and every rank resumes from
    # that one file: replicas cannot come back from checkpoints of different iterations.
    checkpoint = ctx.load_checkpoint(rank=0)
    if checkpoint is not None:
        core.load_state_dict(checkpoint["core"])
        ctx.log.info("resumed at step %d (iteration %d)", core.book.steps_done, core.book.iterations)
    ctx.open_metrics(keep_rows=checkpoint["metrics_rows"] if checkpoint and ctx.is_main else None)
    opts = ctx.options
    ctx.log.info("OptEx: N=%d T0=%d lengthscale=%g noise=%g tune_every=%d proxy=%s first_proxy=%s "
                 "normalization=%s", worker.N, opts.history, opts.lengthscale, opts.noise, opts.tune_every,
                 opts.proxy, opts.first_proxy, opts.normalization)
    totals = {"time_compute_s": 0.0, "time_comm_s": 0.0, "time_proxy_s": 0.0}
    cosines: list[float] = []
    while core.book.steps_done < T:
        before = core.book.steps_done
        row = worker.iterate()
        for key in totals:
            totals[key] += row[key]
        if math.isfinite(row["grad_est_cosine"]):
            cosines.append(row["grad_est_cosine"])
        book = core.book
        if should_eval(ctx, book.steps_done, before) and ctx.is_main:  # replicas agree: one rank suffices
            ctx.record_eval(eval_columns(task, worker.final_model()), steps_done=book.steps_done,
                            iteration=book.iterations, grad_evals=book.grad_evals)
        if book.iterations % ctx.cfg.log_every == 0 or book.steps_done >= T:
            ctx.progress(book.steps_done, T, iters=book.iterations, loss=row["train_loss"],
                         cos=row["grad_est_cosine"])
        if ctx.is_main and ctx.due_for_checkpoint(core.book.iterations, core.book.iterations - 1):
            ctx.save_checkpoint({"core": core.state_dict()})
        ctx.maybe_stop(core.book.iterations)
    book = core.book
    summary = final_report(ctx, task, worker.final_model(), T, book.iterations, book.grad_evals, book.last_loss)
    summary.update({
        "N": worker.N, "history": opts.history, "noise": opts.noise, "tune_every": opts.tune_every,
        "final_lengthscale": core.lengthscale, "final_lengthscale_raw": core.lengthscale_raw,
        "lengthscale_tunes": book.tunes,
        "grad_est_cosine_mean": statistics.fmean(cosines) if cosines else float("nan"),
        **{f"{k}_total": v for k, v in totals.items()},
        "proxy": opts.proxy, "first_proxy": opts.first_proxy, "normalization": opts.normalization,
        "variant": f"algorithm (proxy rollout driven by the {PROXY_WORDS[opts.proxy]}), not the public PyTorch port",
    })
    return summary


SPEC = register(MethodSpec(
    name="optex", summary="OptEx: N steps per iteration from a kernelized (GP) gradient estimate",
    options=OptexOptions, dims=lambda cfg: ParallelDims(window=cfg.options.P),
    default_nproc=lambda options: options.P, train=train,
    world_rule="runs one worker per window step, so nproc*nnodes must equal P"))
