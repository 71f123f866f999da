"""Weight prediction for asynchronous pipelines: ``Ŵ = W - lr * s * ΔW`` with ΔW from the
optimizer's own update rule (PipeOptim, SpecTrain).

Why read ``torch.optim``'s state: the prediction must extrapolate the update the optimizer
will really make, so ΔW is built from the very buffers it steps with:

- SGD (no momentum): ``ΔW = g + wd * W``, the last update direction;
- SGD with momentum: ``ΔW = m_t`` (torch's ``momentum_buffer``: ``m = μ m + (1-τ)(g + wd W)``),
  or the reference code's one-step look-ahead ``μ m_t + (1-τ) g_t`` (``sgdm_delta="lookahead"``);
- Adam / AdamW: ``ΔW = m̂_t / (sqrt(v̂_t) + ε)`` with bias-corrected moments (AdamW's
  decoupled decay is not predicted, as in the reference code).

A parameter the optimizer has never stepped has no ΔW and is not predicted. Pure tensor
functions, tested without processes.
"""

from __future__ import annotations

import torch

#: optimizer name -> the ΔW rule that extrapolates it (every optimizer of the package has one).
DELTA_RULES = {"sgd": "last update direction g + wd W", "momentum": "momentum buffer m_t",
               "adam": "m̂ / (sqrt(v̂) + eps)", "adamw": "m̂ / (sqrt(v̂) + eps)"}
SGDM_DELTAS = ("momentum", "lookahead")


def delta_w(optimizer: torch.optim.Optimizer, param: torch.Tensor, last_grad: torch.Tensor | None,
            sgdm_delta: str = "momentum") -> torch.Tensor | None:
    """ΔW of ``param`` under ``optimizer`` (its state after the last step); None if never stepped.

    ``last_grad`` is the gradient of that last step (needed by plain SGD and the look-ahead)."""
    state = optimizer.state.get(param)
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        if not state:
            return None
        step = float(state["step"])
        beta1, beta2 = group["betas"]
        m_hat = state["exp_avg"] / (1 - beta1 ** step)
        v_hat = state["exp_avg_sq"] / (1 - beta2 ** step)
        return m_hat / (v_hat.sqrt() + group["eps"])
    if not isinstance(optimizer, torch.optim.SGD):
        raise ValueError(f"no ΔW rule for {type(optimizer).__name__}; rules exist for: {', '.join(DELTA_RULES)}")
    if last_grad is None:
        return None
    direction = last_grad + group["weight_decay"] * param.detach() if group["weight_decay"] else last_grad
    momentum = group["momentum"]
    buffer = state.get("momentum_buffer") if state else None
    if not momentum or buffer is None:
        return direction
    if sgdm_delta == "lookahead":
        return momentum * buffer + (1 - group["dampening"]) * direction
    if sgdm_delta != "momentum":
        raise ValueError(f"sgdm_delta={sgdm_delta!r} is not valid; choose one of: {', '.join(SGDM_DELTAS)}")
    return buffer


def predict(weight: torch.Tensor, delta: torch.Tensor | None, lr: float, steps_ahead: int) -> torch.Tensor:
    """``W - lr * s * ΔW`` (a new tensor; W itself when there is nothing to predict)."""
    if delta is None or steps_ahead == 0:
        return weight.detach().clone()
    return weight.detach() - (lr * steps_ahead) * delta


def pipeoptim_steps(n_stages: int, stage: int, variant: str = "paper") -> int:
    """PipeOptim's look-ahead on stage ``k``: ``D - k - 1`` (the paper), ``D - k`` (the reference code)."""
    if variant not in PREDICTION_VARIANTS:
        raise ValueError(f"prediction_steps={variant!r} is not valid; choose one of: {', '.join(PREDICTION_VARIANTS)}")
    return n_stages - stage - (1 if variant == "paper" else 0)


def spectrain_steps(n_stages: int, stage: int) -> tuple[int, int]:
    """SpecTrain's ``(s_fwd, s_bwd)`` on stage ``k``: ``(⌊k/2⌋ + D-k-1, ⌊k/2⌋)``."""
    return stage // 2 + n_stages - stage - 1, stage // 2


PREDICTION_VARIANTS = ("paper", "reference")
