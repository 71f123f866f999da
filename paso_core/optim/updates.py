"""Optimizer update rules as pure functions on flat tensors, matching ``torch.optim``.

Serial training uses ``torch.optim`` itself. Step-parallel methods (PASO, OptEx) must
apply the *same* update many times from states they build themselves, so they use these
functions, which follow torch's arithmetic (same formulas, same operation order) and are
unit-tested against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import RunConfig

STATE_NAMES: dict[str, tuple[str, ...]] = {
    "sgd": (),
    "momentum": ("buf",),
    "adam": ("m", "v"),
    "adamw": ("m", "v"),
}


@dataclass(frozen=True)
class OptimSpec:
    """The hyper-parameters of one optimizer and its learning-rate schedule."""

    name: str
    lr: float
    steps: int
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    decay_at: tuple[float, ...] = ()
    decay_gamma: float = 0.1
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float | None = None

    @classmethod
    def from_config(cls, cfg: RunConfig) -> "OptimSpec":
        return cls(
            name=cfg.optimizer, lr=cfg.lr, steps=cfg.steps, schedule=cfg.lr_schedule,
            warmup_steps=cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio,
            decay_at=tuple(cfg.lr_decay_at), decay_gamma=cfg.lr_decay_gamma,
            momentum=cfg.momentum, beta1=cfg.betas[0], beta2=cfg.betas[1], eps=cfg.eps,
            weight_decay=cfg.resolved_weight_decay, grad_clip=cfg.grad_clip,
        )

    @property
    def state_names(self) -> tuple[str, ...]:
        return STATE_NAMES[self.name]

    @property
    def coupled_weight_decay(self) -> bool:
        """True when weight decay enters the gradient (SGD/Adam), which couples x into the state."""
        return self.weight_decay > 0 and self.name != "adamw"


def lr_at(spec: OptimSpec, step: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then constant, cosine or step decay."""
    if spec.warmup_steps and step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    if spec.schedule == "constant":
        return spec.lr
    if spec.schedule == "step":  # torch's MultiStepLR at steps round(f * steps)
        return spec.lr * spec.decay_gamma ** sum(step >= round(f * spec.steps) for f in spec.decay_at)
    span = max(1, spec.steps - spec.warmup_steps)
    progress = min(1.0, (step - spec.warmup_steps) / span)
    floor = spec.lr * spec.min_lr_ratio
    return floor + (spec.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_torch_optimizer(spec: OptimSpec, params) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer equivalent to ``spec`` (single-tensor path, for exactness).

    Frozen ``nn.Parameter``s (``requires_grad=False``: the base model under LoRA) are left
    out, so they get no optimizer state and are never decayed; plain tensors (the flat views
    :class:`TorchStep` steps) are taken as given."""
    params = [p for p in params if not isinstance(p, torch.nn.Parameter) or p.requires_grad]
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, weight_decay=spec.weight_decay, foreach=False)
    if spec.name == "momentum":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                               weight_decay=spec.weight_decay, foreach=False)
    betas = (spec.beta1, spec.beta2)
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, betas=betas, eps=spec.eps,
                                weight_decay=spec.weight_decay, foreach=False)
    return torch.optim.AdamW(params, lr=spec.lr, betas=betas, eps=spec.eps,
                             weight_decay=spec.weight_decay, foreach=False)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_factor(grad_norm: float, max_norm: float | None) -> float:
    """The factor ``torch.nn.utils.clip_grad_norm_`` multiplies gradients by."""
    if max_norm is None:
        return 1.0
    return min(1.0, max_norm / (grad_norm + 1e-6))


def clip_flat_(grad: torch.Tensor, max_norm: float | None) -> torch.Tensor:
    """Clip a flat vector by its global L2 norm, in place, with ``clip_grad_norm_``'s factor.

    Equal to ``clip_grad_norm_`` up to float rounding only (the norm is taken over one
    vector, not per parameter): OptEx uses it for its proxy gradients. Methods that must be
    bitwise serial clip the model's own gradients (``methods.common.clip_model_grads_``).
    """
    if max_norm is not None:
        factor = clip_factor(float(torch.linalg.vector_norm(grad)), max_norm)
        if factor < 1.0:
            grad.mul_(factor)
    return grad


class TorchStep:
    """``torch.optim``'s own ``step()`` applied to parameters whose state lives in our buffers.

    Why: serial training steps with ``torch.optim`` on the model's parameters; a method
    that must reproduce it exactly (PASO's window start) steps the *same* optimizer class,
    with the same options, on tensors of the same shapes. The result is then bitwise the
    serial one by construction, whatever the CPU's kernels do (vector width, FMA, tails),
    instead of relying on a re-implementation rounding the same way on every machine.

    ``params`` are updated in place; ``states[name]`` are per-parameter views of the flat
    optimizer-state vectors (names as :data:`STATE_NAMES`), also updated in place.
    """

    _TORCH_KEYS = {"buf": "momentum_buffer", "m": "exp_avg", "v": "exp_avg_sq"}

    def __init__(self, spec: OptimSpec, params: list[torch.Tensor]) -> None:
        self.spec, self.params = spec, params
        self.optimizer = make_torch_optimizer(spec, params)

    def step_(self, step: int, grads: list[torch.Tensor], states: dict[str, list[torch.Tensor]]) -> None:
        """One step ``step`` (0-based) with ``grads`` (already clipped), in place."""
        spec, opt = self.spec, self.optimizer
        for i, (p, g) in enumerate(zip(self.params, grads)):
            p.grad = g
            entry: dict[str, torch.Tensor] = {}
            if spec.name in ("adam", "adamw"):
                entry["step"] = torch.tensor(float(step))  # torch's own counter: it adds 1 first
            if spec.name != "momentum" or step > 0:  # torch starts momentum as a clone of grad
                entry.update({self._TORCH_KEYS[k]: states[k][i] for k in spec.state_names})
            opt.state[p] = entry
        set_lr(opt, lr_at(spec, step))
        opt.step()
        for i, p in enumerate(self.params):
            if spec.name == "momentum" and step == 0:
                states["buf"][i].copy_(opt.state[p]["momentum_buffer"])
            p.grad = None
        opt.state.clear()


def init_state(spec: OptimSpec, like: torch.Tensor) -> dict[str, torch.Tensor]:
    """Zero optimizer state for a flat parameter vector (torch starts from zeros too)."""
    return {name: torch.zeros_like(like) for name in spec.state_names}


def _adam_denominator(spec: OptimSpec, step: int, v: torch.Tensor) -> torch.Tensor:
    bc2_sqrt = (1 - spec.beta2 ** (step + 1)) ** 0.5
    return v.sqrt().div_(bc2_sqrt).add_(spec.eps)  # torch's (sqrt(v) / bc2).add_(eps), one temporary


def adam_direction(spec: OptimSpec, step: int, m: torch.Tensor, v: torch.Tensor,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Adam's bias-corrected direction ``m̂ / (sqrt(v̂) + eps)`` scaled so ``x -= lr * u``."""
    bc1 = 1 - spec.beta1 ** (step + 1)
    out = torch.zeros_like(m) if out is None else out.zero_()
    return out.addcdiv_(m, _adam_denominator(spec, step, v), value=1 / bc1)


def functional_step(spec: OptimSpec, step: int, x: torch.Tensor, state: dict[str, torch.Tensor],
                    grad: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step ``(x, state, grad) -> (x', state')`` without touching the inputs.

    Uses the very tensor operations of torch's single-tensor SGD/Adam/AdamW, so the result
    is bitwise what ``torch.optim`` computes. ``grad`` must already be clipped; ``step`` is
    0-based (torch's step count is step+1).
    """
    lr = lr_at(spec, step)
    wd = spec.weight_decay
    if spec.name in ("sgd", "momentum"):
        d = grad.add(x, alpha=wd) if wd else grad
        if spec.name == "momentum":
            buf = d.clone() if step == 0 else state["buf"].mul(spec.momentum).add_(d)
            return x.add(buf, alpha=-lr), {"buf": buf}
        return x.add(d, alpha=-lr), {}
    if spec.name == "adam" and wd:
        grad = grad.add(x, alpha=wd)
    m = state["m"].lerp(grad, 1 - spec.beta1)
    v = state["v"].mul(spec.beta2).addcmul_(grad, grad, value=1 - spec.beta2)
    base = x.mul(1 - lr * wd) if spec.name == "adamw" else x
    step_size = lr / (1 - spec.beta1 ** (step + 1))
    return base.addcdiv(m, _adam_denominator(spec, step, v), value=-step_size), {"m": m, "v": v}
