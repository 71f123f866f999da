"""Small helpers the methods share: flat parameter copies, gradients, the collective end of
run (full state dict, evaluation, ``final.pt``) and checkpoints of torch-optimised models."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..context import WorkerContext
from ..tasks.base import Batch, Task


@dataclass(frozen=True)
class FlatLayout:
    """Where each trainable parameter lives inside a flat vector (offset, shape), plus padding.

    Why padding: with ``align_bytes`` every parameter starts on the same boundary a fresh
    allocation would (512 bytes covers the CPU and CUDA allocators), so BLAS/oneDNN kernels
    that pick code paths by address see the same alignment as in serial training, and the
    gradients computed on these views are the serial ones bit for bit.
    """

    offsets: tuple[int, ...]
    shapes: tuple[torch.Size, ...]
    total: int

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def n_real(self) -> int:
        """Elements that are parameters (the rest is padding, always zero)."""
        return sum(self.numels)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """One view per parameter, shaped like it, into ``flat``."""
        return [flat[o:o + n].view(s) for o, n, s in zip(self.offsets, self.numels, self.shapes)]

    def pack(self, flat: torch.Tensor) -> torch.Tensor:
        """The parameters without padding, concatenated (model.parameters() order)."""
        return torch.cat([v.reshape(-1) for v in self.views(flat)])

    def unpack_(self, flat: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        """Write an unpadded vector (as :meth:`pack` returns) into ``flat``."""
        start = 0
        for view in self.views(flat):
            n = view.numel()
            view.copy_(packed[start:start + n].view_as(view))
            start += n
        return flat


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a parameter: the local shard of a DTensor (FSDP2, TP), else itself."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def layout_of(model: nn.Module, align_bytes: int = 0) -> FlatLayout:
    """Where this rank's part of each trainable parameter goes in a flat vector."""
    params = [local_tensor(p) for p in trainable(model)]
    align = max(1, align_bytes // params[0].element_size()) if params and align_bytes else 1
    offsets, offset = [], 0
    for p in params:
        offsets.append(offset)
        offset += -(-p.numel() // align) * align
    return FlatLayout(tuple(offsets), tuple(p.shape for p in params), offset)


class FlatParams:
    """A flat copy of a model's trainable parameters, kept beside the model (never bound to it).

    Why not make the parameters views of the flat vector: that rebinds ``p.data``, which
    DTensor parameters (FSDP2, tensor parallel) and pipeline stages do not allow. Methods
    that move whole parameter vectors (PASO, OptEx) own a flat vector and write it into the
    model with in-place copies before a forward (:meth:`load_`); gradients come back the
    same way (:meth:`grad_into`).
    """

    def __init__(self, model: nn.Module, align_bytes: int = 0) -> None:
        self.model = model
        self.params = trainable(model)
        self.layout = layout_of(model, align_bytes)

    def new_vector(self) -> torch.Tensor:
        """A flat vector holding the model's current parameters (padding zero)."""
        like = local_tensor(self.params[0]) if self.params else torch.zeros(0)
        flat = like.new_zeros(self.layout.total)
        for p, view in zip(self.params, self.layout.views(flat)):
            view.copy_(local_tensor(p).detach())
        return flat

    @torch.no_grad()
    def load_(self, flat: torch.Tensor) -> nn.Module:
        """Write ``flat`` into the model's parameters in place; returns the model."""
        for p, view in zip(self.params, self.layout.views(flat)):
            local_tensor(p).copy_(view)
        return self.model

    def grad_into(self, out: torch.Tensor) -> torch.Tensor:
        """Copy the model's gradients into the flat buffer ``out`` (zeros where a grad is None)."""
        for p, view in zip(self.params, self.layout.views(out)):
            if p.grad is None:
                view.zero_()
            else:
                view.copy_(local_tensor(p.grad))
        return out


def clip_model_grads_(model: nn.Module, max_norm: float | None) -> float | None:
    """``torch.nn.utils.clip_grad_norm_`` on the model, the very call serial training makes,
    so clipped gradients are bitwise the serial ones; returns the pre-clip norm."""
    if max_norm is None:
        return None
    return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))


def loss_and_grad(task: Task, model: nn.Module, batch: Batch, step: int) -> float:
    """Forward + backward of step ``step``; gradients left in ``.grad``; returns the loss."""
    model.zero_grad(set_to_none=True)
    loss = task.loss(model, batch, step)
    loss.backward()
    return float(loss.detach())


def batched_loss_and_grads(task: Task, model: nn.Module, param_sets: list[list[torch.Tensor]],
                           batches: list[Batch], step: int) -> tuple[list[list[torch.Tensor]], list[float]]:
    """Gradients and losses of several parameter sets of ``model``, each on its own batch, in one
    ``torch.func.vmap(grad_and_value(...))`` call over the stacked sets (``functional_call``:
    the module stays as it is).

    Why one call: on one device the window's gradients then run as one batched kernel per
    layer instead of one small kernel per position. ``param_sets[i]`` follows the order of the
    model's trainable parameters; randomness is the one of ``step`` for every set, so only
    models that draw none (no dropout in training) give each set its own step's result."""
    from torch.func import functional_call, grad_and_value, vmap

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    stacked = {name: torch.stack([params[j] for params in param_sets]) for j, name in enumerate(names)}
    stacked_batch = None if batches[0] is None else tuple(torch.stack(parts) for parts in zip(*batches))

    def loss_of(params: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        return task.loss(lambda *args, **kw: functional_call(model, params, args, kw), batch, step)

    grads, losses = vmap(grad_and_value(loss_of), in_dims=(0, None if stacked_batch is None else 0))(
        stacked, stacked_batch)
    return ([[grads[name][i] for name in names] for i in range(len(param_sets))],
            [float(loss) for loss in losses])


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of ``model`` on CPU, gathered from shards where the
    parameters are DTensors (collective then: every rank of the mesh calls it)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    else:
        state = model.state_dict()
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def gather_full_state(ctx: WorkerContext, model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The full state dict on the logging rank (None elsewhere); collective.

    Shards (DTensor parameters) are gathered by ``get_model_state_dict``; with pipeline
    stages (``pp > 1``) each stage holds the blocks it owns under their full-model names,
    and the stages' dicts are merged on the logging rank.
    """
    state = full_model_state(model)
    if ctx.dims.pp > 1:
        last_stage = ctx.dims.rank_at(**{**ctx.coords, "pp": ctx.dims.pp - 1})
        parts = ctx.group("pp").gather_objects(state, dst=last_stage)
        state = {k: v for part in parts or [] for k, v in part.items()}
    return state if ctx.is_main else None


def final_report(ctx: WorkerContext, task: Task, model: nn.Module, steps: int, iterations: int,
                 grad_evals: int, last_loss: float) -> dict[str, Any]:
    """Collective end of run: gather the full model, evaluate it and save ``final.pt`` (a
    full, ``weights_only``-loadable state dict) on the logging rank; the summary fields
    every method shares. A rank whose model is one pipeline stage evaluates a full model
    rebuilt from the gathered state."""
    state = gather_full_state(ctx, model)
    summary: dict[str, Any] = {
        "steps": steps,
        "iterations": iterations,
        "grad_evals": grad_evals,
        "speedup": steps / max(1, iterations),
        "overhead": grad_evals / max(1, steps),
        "final_train_loss": last_loss,
        "items_consumed": grad_evals * task.items_per_step(),
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    if ctx.is_main and state is not None:
        model = full_model_on_main(ctx, task, model, state)
        if holds_part_of_model(ctx):
            # tied names (an LM head = embedding held by two pipeline stages) resolved the way
            # load_state_dict resolves them, so final.pt is the model that was evaluated
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        summary["n_params"] = sum(p.numel() for p in model.parameters())
        metrics = task.evaluate(model)
        summary.update({f"final_{k}": v for k, v in metrics.items()})
        torch.save(state, ctx.run_dir / "final.pt")
    return summary


def holds_part_of_model(ctx: WorkerContext) -> bool:
    """True when a rank's model is a stage or a shard, so a full model must be rebuilt to evaluate."""
    return ctx.dims.pp > 1 or ctx.dims.dp_shard > 1 or ctx.dims.tp > 1


def full_model_on_main(ctx: WorkerContext, task: Task, model: nn.Module, state: dict[str, torch.Tensor]
                       ) -> nn.Module:
    """The model itself when it is whole on this rank, else a fresh one loaded with ``state``."""
    if not holds_part_of_model(ctx):
        return model
    whole = task.build_model()
    whole.load_state_dict(state)
    return whole


def evaluate_collectively(ctx: WorkerContext, task: Task, model: nn.Module, *, steps_done: int,
                          iteration: int, grad_evals: int) -> None:
    """A mid-run evaluation row that works whether the model is whole, sharded or staged.

    Collective when ranks hold parts (every rank must call it): the full state is gathered
    and the logging rank evaluates a rebuilt model; otherwise only the logging rank works."""
    if holds_part_of_model(ctx):
        state = gather_full_state(ctx, model)
        if not ctx.is_main or state is None:
            return
        model = full_model_on_main(ctx, task, model, state)
    elif not ctx.is_main:
        return
    ctx.record_eval(eval_columns(task, model), steps_done=steps_done, iteration=iteration, grad_evals=grad_evals)


def eval_columns(task: Task, model: nn.Module) -> dict[str, float]:
    """Held-out metrics as ``eval_*`` columns plus ``time_eval_s``, so training-time
    comparisons can subtract evaluation cost exactly."""
    import time

    tic = time.perf_counter()
    metrics = {f"eval_{k}": v for k, v in task.evaluate(model).items()}
    metrics["time_eval_s"] = time.perf_counter() - tic
    return metrics


def should_eval(ctx: WorkerContext, done: int, previous: int) -> bool:
    every = ctx.cfg.eval_every
    return bool(every) and done // every > previous // every


def resume_torch_training(ctx: WorkerContext, model: nn.Module, optimizer: torch.optim.Optimizer
                          ) -> tuple[int, float]:
    """Restore this rank's model and optimizer (``set_state_dict``: its shards or stage, or
    the whole model when replicated) from its own checkpoint and open the metrics file;
    returns ``(first step to run, last loss)``."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    checkpoint = ctx.load_checkpoint()
    start, loss = 0, float("nan")
    if checkpoint is not None:
        set_state_dict(model, optimizer, model_state_dict=checkpoint["model"],
                       optim_state_dict=checkpoint["optimizer"])
        start, loss = checkpoint["step"], checkpoint["loss"]
        ctx.log.info("resumed at step %d", start)
    ctx.open_metrics(keep_rows=checkpoint["metrics_rows"] if checkpoint and ctx.is_main else None)
    return start, loss


def checkpoint_torch_training(ctx: WorkerContext, model: nn.Module, optimizer: torch.optim.Optimizer,
                              done: int, previous: int, loss: float) -> None:
    """When due, every rank writes its own model + optimizer state (``get_state_dict``), so
    sharded, staged and diverging replicas (local SGD) all come back exactly."""
    if not ctx.due_for_checkpoint(done, previous):
        return
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    ctx.save_checkpoint({"model": model_state, "optimizer": optim_state, "step": done, "loss": loss})
