"""PASO's window rollout as a parallel prefix scan over affine maps.

Once the gradients of a window are known, every supported optimizer's recurrence is
affine with *scalar* coefficients: ``s_{k+1} = a_k * s_k + c_k`` for each state vector
(momentum buffer, Adam moments) and then for the parameters themselves. Affine maps
compose associatively, ``(a2, c2) ∘ (a1, c1) = (a2*a1, a2*c1 + c2)``, so the rollout of
``P`` steps takes ``ceil(log2 P)`` rounds of point-to-point exchanges (Hillis–Steele)
instead of ``P`` sequential hops, and no worker ever holds more than its own state.

Position 0 of a window folds the exact starting state into its map (``a = 0``), so the
scan's outputs *are* the rolled-out states. Positions past the end of training carry the
identity map ``(1, 0)``. Coupled weight decay (SGD/Adam with ``weight_decay > 0``) is not
affine in this sense; those runs use the sequential relay rollout instead.
"""

from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import torch

from .updates import OptimSpec, adam_direction, functional_step, lr_at

AffineMap = tuple[float, torch.Tensor]
Exchange = Callable[[torch.Tensor, int], "torch.Tensor | None"]


def compose(earlier: AffineMap, later: AffineMap) -> AffineMap:
    """The map that applies ``earlier`` then ``later``."""
    a1, c1 = earlier
    a2, c2 = later
    return a2 * a1, a2 * c1 + c2


def state_coeffs(spec: OptimSpec, step: int) -> list[float]:
    """The scalar ``a`` of each optimizer-state recurrence at step ``step``."""
    if spec.name == "momentum":
        return [spec.momentum if step > 0 else 0.0]
    if spec.name in ("adam", "adamw"):
        return [spec.beta1, spec.beta2]
    return []


def state_maps(spec: OptimSpec, step: int, grad: torch.Tensor) -> list[AffineMap]:
    """Phase 1: the optimizer-state recurrences of step ``step`` given its (clipped) gradient."""
    offsets = [torch.empty_like(grad) for _ in spec.state_names]
    state_offsets_into(spec, grad, offsets)
    return list(zip(state_coeffs(spec, step), offsets))


def state_offsets_into(spec: OptimSpec, grad: torch.Tensor, out: Sequence[torch.Tensor]) -> None:
    """Write the ``c`` of each state recurrence into ``out`` (same arithmetic as torch's Adam)."""
    if spec.coupled_weight_decay:
        raise ValueError("coupled weight decay is not affine in the gradient; use the relay rollout")
    if spec.name == "momentum":
        out[0].copy_(grad)
    elif spec.name in ("adam", "adamw"):
        torch.mul(grad, 1 - spec.beta1, out=out[0])
        torch.mul(grad, 1 - spec.beta2, out=out[1]).mul_(grad)


def param_coeff(spec: OptimSpec, step: int) -> float:
    """The scalar ``a`` of the parameter recurrence (decoupled weight decay shrinks x)."""
    return 1 - lr_at(spec, step) * spec.weight_decay if spec.name == "adamw" else 1.0


def param_map(spec: OptimSpec, step: int, state_out: Sequence[torch.Tensor],
              grad: torch.Tensor) -> AffineMap:
    """Phase 2: the parameter recurrence of step ``step`` once its new state is known."""
    offset = torch.empty_like(grad)
    param_offset_into(spec, step, state_out, grad, offset)
    return param_coeff(spec, step), offset


def param_offset_into(spec: OptimSpec, step: int, state_out: Sequence[torch.Tensor],
                      grad: torch.Tensor, out: torch.Tensor) -> None:
    """Write the ``c`` of the parameter recurrence, ``-lr * direction``, into ``out``."""
    if spec.name == "sgd":
        out.copy_(grad)
    elif spec.name == "momentum":
        out.copy_(state_out[0])
    else:
        adam_direction(spec, step, state_out[0], state_out[1], out=out)
    out.mul_(-lr_at(spec, step))


def prefix_scan(coeffs: Sequence[Sequence[float]], own: Sequence[torch.Tensor], pos: int,
                exchange: Exchange) -> list[torch.Tensor]:
    """Inclusive scan of affine maps across window positions (Hillis–Steele doubling).

    ``coeffs[p][k]`` is the scalar ``a`` of state vector ``k`` at position ``p`` (known to
    every worker, since it depends only on hyper-parameters and the step index); ``own[k]``
    is this position's ``c``. ``exchange(t, o)`` sends ``t`` to position ``pos + o`` and
    returns what position ``pos - o`` sent (``None`` when out of range). Returns the
    composed ``c`` of positions ``0..pos`` for each state vector.
    """
    if not own:
        return []
    acc = torch.cat([t.reshape(-1) for t in own])
    prefix_scan_(coeffs, acc, [t.numel() for t in own], pos, exchange)
    out, start = [], 0
    for t in own:
        out.append(acc[start:start + t.numel()].view_as(t))
        start += t.numel()
    return out


def prefix_scan_(coeffs: Sequence[Sequence[float]], acc: torch.Tensor, sizes: Sequence[int], pos: int,
                 exchange: Exchange) -> torch.Tensor:
    """:func:`prefix_scan` in place on ``acc``, the ``c`` vectors laid end to end (``sizes``).

    Workers call this on preallocated buffers so a rollout allocates nothing parameter-sized.
    """
    prefix_scan_many_(coeffs, [acc], sizes, [pos], lambda accs, offset: [exchange(accs[0], offset)])
    return acc


#: ``exchange_all(accs, offset)``: send each ``accs[i]`` to position ``positions[i] + offset``
#: and return, per ``i``, what position ``positions[i] - offset`` sent (``None`` out of range).
ExchangeAll = Callable[[Sequence[torch.Tensor], int], Sequence["torch.Tensor | None"]]


def prefix_scan_many_(coeffs: Sequence[Sequence[float]], accs: Sequence[torch.Tensor], sizes: Sequence[int],
                      positions: Sequence[int], exchange_all: ExchangeAll) -> Sequence[torch.Tensor]:
    """:func:`prefix_scan_` for several window positions held by one worker, in lock step.

    Every position does exactly the operations it would do alone (same rounds, same
    partners, same ``add_`` in the same order), so the result is bitwise the same however
    positions are placed on workers; only where a partner's message comes from changes.
    Each round's messages are all taken before any accumulator of the round is updated.
    """
    n_pos = len(coeffs)
    seg_starts, offset = list(positions), 1
    while offset < n_pos and sizes:
        received = exchange_all(accs, offset)
        for i, (acc, pos, got) in enumerate(zip(accs, positions, received)):
            if got is None:
                continue
            start = 0
            for k, size in enumerate(sizes):
                scale = _product(coeffs, seg_starts[i], pos, k)
                acc[start:start + size].add_(got[start:start + size], alpha=scale)
                start += size
            seg_starts[i] = max(0, seg_starts[i] - offset)
        offset *= 2
    return accs


def _product(coeffs: Sequence[Sequence[float]], first: int, last: int, k: int) -> float:
    result = 1.0
    for p in range(first, last + 1):
        result *= coeffs[p][k]
    return result


def reference_rollout(spec: OptimSpec, start_step: int, x: torch.Tensor,
                      state: dict[str, torch.Tensor], grads: Sequence[torch.Tensor]
                      ) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """The plain sequential rollout: apply ``functional_step`` with each gradient in turn."""
    outputs = []
    for i, grad in enumerate(grads):
        x, state = functional_step(spec, start_step + i, x, state, grad)
        outputs.append((x, state))
    return outputs


def simulated_scan_rollout(spec: OptimSpec, start_step: int, x: torch.Tensor,
                           state: dict[str, torch.Tensor], grads: Sequence[torch.Tensor]
                           ) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """The distributed scan run in one process (positions simulated), for tests and clarity.

    Mirrors what the PASO workers do: position 0 takes an exact step and folds it into a
    constant map; the others build their maps from their own gradient; both phases are
    scanned with the same ``prefix_scan`` the workers use.
    """
    n = len(grads)
    names = spec.state_names
    x0, s0 = functional_step(spec, start_step, x, state, grads[0])
    phase1 = [[0.0] * len(names)] + [
        [a for a, _ in state_maps(spec, start_step + p, grads[p])] for p in range(1, n)]
    own1 = [[s0[k] for k in names]] + [
        [c for _, c in state_maps(spec, start_step + p, grads[p])] for p in range(1, n)]
    states = _simulate(phase1, own1)
    maps2 = [(0.0, x0)] + [param_map(spec, start_step + p, states[p], grads[p]) for p in range(1, n)]
    xs = _simulate([[a] for a, _ in maps2], [[c] for _, c in maps2])
    return [(xs[p][0], dict(zip(names, states[p]))) for p in range(n)]


def _simulate(coeffs: list[list[float]], own: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    """Run the real ``prefix_scan`` for every position on its own thread, messages via queues."""
    n = len(own)
    boxes = {(src, dst): queue.Queue() for src in range(n) for dst in range(n)}

    def run(pos: int) -> list[torch.Tensor]:
        def exchange(tensor: torch.Tensor, offset: int) -> torch.Tensor | None:
            if pos + offset < n:
                boxes[(pos, pos + offset)].put(tensor.clone())
            return boxes[(pos - offset, pos)].get(timeout=60) if pos - offset >= 0 else None
        return prefix_scan(coeffs, own[pos], pos, exchange)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))
