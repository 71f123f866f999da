"""One stage of an asynchronous pipeline: its blocks, its own optimizer, and the rule saying
which weights the forward and the backward of each mini-batch use.

Why one class for the runtime and the simulator: a stage's results depend only on the order
of its own actions and on the tensors it receives (the schedule is a network of FIFO
channels), so the multi-process runtime and the single-process simulator run the same
:class:`AsyncStage` and must agree to rounding.

The methods differ only in their :class:`WeightRule`:

========================  =====================================  ===============================
method                    forward of mini-batch j on stage k     backward
========================  =====================================  ===============================
``pipedream``             current weights, stashed               the stashed forward weights
``async_nostash``         current weights                        current weights
``spectrain``             predicted ``⌊k/2⌋+D-k-1`` steps ahead   predicted ``⌊k/2⌋`` steps ahead
``pipeoptim``             predicted ``D-k-1`` steps ahead        current weights
========================  =====================================  ===============================

A backward on weights other than its forward's recomputes the stage's forward from the saved
stage input on the backward weights, then back-propagates the received gradient (the
reference code instead restores weights in place under a recorded graph, which current
torch's autograd forbids). Predicted forwards use ``torch.func.functional_call`` with the
predicted tensors; the module's parameters are never overwritten.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call

from ..optim.prediction import delta_w, predict
from ..optim.updates import OptimSpec, lr_at, set_lr


@dataclass(frozen=True)
class WeightRule:
    """Which weights each pass uses on a stage: look-ahead steps of the forward and the
    backward (0: the current weights), or the forward's stash in the backward (PipeDream)."""

    name: str
    forward_ahead: int = 0
    backward_ahead: int = 0
    stash: bool = False
    sgdm_delta: str = "momentum"

    @property
    def predicts(self) -> bool:
        return self.forward_ahead > 0 or self.backward_ahead > 0


@dataclass
class _InFlight:
    """What a stage keeps between the forward and the backward of one mini-batch."""

    x: torch.Tensor | None              # the stage input (None on stage 0: data, recomputed from the batch)
    key: tuple                          # the forward weights' identity: ("current", v) / ("ahead", v, s)
    targets: Any
    inputs: Any                         # stage 0's data input
    tensors: dict[str, torch.Tensor] | None = None  # leaf weights of a kept graph (stash / predicted)
    x_leaf: torch.Tensor | None = None  # the input leaf of a kept graph
    output: torch.Tensor | None = None  # output (or loss) of a kept graph
    stale: torch.Tensor | None = None   # current weights at forward time (prediction quality)
    forward_weights: torch.Tensor | None = None


@dataclass
class StageTimes:
    """Seconds a stage spent computing, waiting for a neighbour, and inside send/receive calls."""

    compute: float = 0.0
    wait: float = 0.0
    comm: float = 0.0


class AsyncStage:
    """Stage ``index`` of ``n_stages``: forward/backward of single mini-batches, an optimizer
    step after every backward, and the bookkeeping the tests and figures need (weight
    versions alive, prediction quality, snapshots for evaluation)."""

    def __init__(self, index: int, n_stages: int, module: nn.Module, mirror: nn.Module,
                 optimizer: torch.optim.Optimizer, spec: OptimSpec, rule: WeightRule,
                 loss_fn: Callable[[torch.Tensor, Any], torch.Tensor], snapshot_every: int, total_steps: int,
                 quality_every: int = 0) -> None:
        self.index, self.n_stages, self.module, self.mirror = index, n_stages, module, mirror
        self.optimizer, self.spec, self.rule, self.loss_fn = optimizer, spec, rule, loss_fn
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.version = 0
        self.in_flight: dict[int, _InFlight] = {}
        self.last_grads: dict[int, torch.Tensor] = {}
        self.snapshot_every, self.total_steps, self.quality_every = snapshot_every, total_steps, quality_every
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self.quality: list[tuple[int, float]] = []
        self.max_versions = 1
        self.recomputed = 0
        self.times = StageTimes()
        self._take_snapshot()

    @property
    def is_last(self) -> bool:
        return self.index == self.n_stages - 1

    # ------------------------------------------------------------------ weights
    def _key(self, ahead: int) -> tuple:
        if ahead == 0 or self.version == 0:
            return ("current", self.version)
        return ("ahead", self.version, ahead)

    def _weights(self, key: tuple, leaf: bool) -> dict[str, torch.Tensor] | None:
        """The tensors of ``key`` by parameter name, or None for the module's own parameters."""
        if key[0] == "current" and not self.rule.stash:
            return None
        lr = lr_at(self.spec, self.version)
        with torch.no_grad():
            if key[0] == "current":
                tensors = {n: p.detach().clone() for n, p in zip(self.names, self.params)}
            else:
                tensors = {n: predict(p, delta_w(self.optimizer, p, self.last_grads.get(id(p)), self.rule.sgdm_delta),
                                      lr, key[2]) for n, p in zip(self.names, self.params)}
        if leaf:
            for t in tensors.values():
                t.requires_grad_(True)
        return tensors

    def _run(self, tensors: dict[str, torch.Tensor] | None, x: Any) -> torch.Tensor:
        return self.module(x) if tensors is None else functional_call(self.module, tensors, (x,), strict=False)

    def _flat(self, tensors: dict[str, torch.Tensor] | None) -> torch.Tensor:
        source = self.params if tensors is None else [tensors[n] for n in self.names]
        return torch.cat([t.detach().reshape(-1) for t in source])

    def _count_versions(self, transient: bool) -> None:
        kept = {f.key for f in self.in_flight.values() if f.tensors is not None and f.key != ("current", self.version)}
        self.max_versions = max(self.max_versions, 1 + len(kept) + int(transient))

    # ------------------------------------------------------------------ passes
    def forward(self, j: int, x: Any, targets: Any = None) -> torch.Tensor:
        """The forward of mini-batch ``j``: the output to send on (detached), or on the last
        stage the loss. ``x`` is the data input on stage 0, the previous stage's output else."""
        tic = time.perf_counter()
        key = self._key(self.rule.forward_ahead)
        keep_graph = self.rule.stash or self.is_last
        tensors = self._weights(key, leaf=keep_graph)
        self._count_versions(transient=tensors is not None and key[0] == "ahead")
        first = self.index == 0
        x_leaf = x if first else x.detach().requires_grad_(x.is_floating_point())
        with torch.set_grad_enabled(keep_graph):
            out = self._run(tensors, x_leaf)
            if self.is_last:
                out = self.loss_fn(out, targets)
        flight = _InFlight(x=None if first else x.detach(), key=key, targets=targets, inputs=x if first else None)
        if keep_graph:
            flight.tensors, flight.x_leaf, flight.output = tensors, x_leaf, out
        if self.quality_every and j % self.quality_every == 0 and self.rule.predicts and self.version > 0:
            flight.stale, flight.forward_weights = self._flat(None), self._flat(tensors)
        self.in_flight[j] = flight
        self.times.compute += time.perf_counter() - tic
        return out.detach()

    def backward(self, j: int, grad_output: torch.Tensor | None) -> torch.Tensor | None:
        """The backward of mini-batch ``j`` (``grad_output``: from the next stage; None on the
        last), then this stage's optimizer step; returns the gradient for the previous stage."""
        tic = time.perf_counter()
        flight = self.in_flight.pop(j)
        key = flight.key if self.rule.stash else self._key(self.rule.backward_ahead)
        if flight.output is not None and key == flight.key:
            tensors, x_leaf, out = flight.tensors, flight.x_leaf, flight.output
        else:  # the backward runs on other weights than the forward did: recompute on them
            self.recomputed += 1
            tensors = self._weights(key, leaf=True)
            self._count_versions(transient=tensors is not None)
            x = flight.inputs if flight.x is None else flight.x
            x_leaf = x if flight.x is None else x.detach().requires_grad_(x.is_floating_point())
            out = self._run(tensors, x_leaf)
            if self.is_last:
                out = self.loss_fn(out, flight.targets)
        for p in self.params:
            p.grad = None
        if self.is_last:
            out.backward()
        else:
            out.backward(grad_output)
        if tensors is not None:
            for n, p in zip(self.names, self.params):
                p.grad = tensors[n].grad
        if flight.stale is not None:
            current = self._flat(tensors)  # the weights this backward ran on (predicted for SpecTrain)
            denominator = float((flight.stale - current).norm())
            if denominator > 0:
                self.quality.append((j, float((flight.forward_weights - current).norm()) / denominator))
        grad_input = None if flight.x is None or x_leaf.grad is None else x_leaf.grad.detach()
        self._step()
        self.times.compute += time.perf_counter() - tic
        return grad_input

    def _step(self) -> None:
        set_lr(self.optimizer, lr_at(self.spec, self.version))
        self.optimizer.step()
        self.last_grads = {id(p): p.grad for p in self.params if p.grad is not None}
        self.version += 1
        self._take_snapshot()

    def _take_snapshot(self) -> None:
        """The stage's state (full-model names) after ``version`` updates, at evaluation points."""
        v = self.version
        if v == self.total_steps or (self.snapshot_every and v % self.snapshot_every == 0):
            self.snapshots[v] = {k: t.detach().cpu().clone() for k, t in self.mirror.state_dict().items()}

    def summary(self) -> dict[str, Any]:
        return {"max_weight_versions": self.max_versions, "recomputed_backwards": self.recomputed,
                "time_compute_s": self.times.compute, "time_wait_s": self.times.wait,
                "time_comm_s": self.times.comm, "updates": self.version}

