"""Kernelized gradient estimation for OptEx (Shu et al., NeurIPS 2024): the pure math.

OptEx replaces the true gradient during its cheap sequential "proxy" steps by the
posterior mean of a Gaussian process fitted to the last ``T0`` true pairs
``(x_j, g_j = ∇f(x_j))``:

    μ(x) = k(x, X) (K(X, X) + σ² I)^{-1} G,      k = Matérn ν = 5/2.

Each of the ``d`` gradient coordinates is an independent output sharing one kernel, so
the cost is ``O(T0³ + T0²·d)`` to fit and ``O(T0·d)`` per predicted point, and memory is
``O(T0·d)``; no ``d × d`` matrix is ever formed (``d`` may be 1e5 or more).

Input normalisation (why and how). The Matérn kernel is stationary: it only sees
differences ``x - x'``. Subtracting a centre therefore changes nothing mathematically,
but it removes the catastrophic cancellation of ``‖a‖² + ‖b‖² - 2 a·b`` when the
history is a short optimisation trajectory far from the origin, so we always centre
(on the history mean) and compute distances in float64. Only the *scale* divisor is a
modelling choice, and it is one common factor for all rows, so the geometry of the
history is preserved (unlike the public PyTorch port, which L2-normalises each row and
thereby maps different points onto the unit sphere):

* ``"spread"`` (default): divide by ``max_j ‖x_j - x̄‖``. Translation invariant: the
  length scale is measured relative to the extent of the history, so one grid
  (1e-2 … 1e2) fits every problem whatever its distance to the origin.
* ``"max_norm"``: divide by ``max_j ‖x_j‖``, a common norm factor. The same ``ℓ`` then
  means a different raw distance depending on how far the iterates are from the origin
  (a trajectory of small steps far from 0 needs a small ℓ).
* ``"mean_sqrt_norm"``: divide by ``mean_j √‖x_j‖``, the official OptEx JAX code's
  factor (used with its fixed ``ℓ = 0.1``); like ``"max_norm"`` it depends on the
  distance to the origin, but grows only with its square root.
* ``"none"``: raw coordinates; ``ℓ`` is in the units of ``x``.

``KernelGradientEstimator.effective_lengthscale`` reports ``ℓ × scale``, the length
scale in raw units, whichever mode is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence, Union

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_LENGTHSCALE_GRID",
    "NORMALIZATIONS",
    "GradientHistory",
    "KernelGradientEstimator",
    "cosine_distance",
    "matern52",
]

Normalization = Literal["spread", "max_norm", "mean_sqrt_norm", "none"]
NORMALIZATIONS: tuple[str, ...] = ("spread", "max_norm", "mean_sqrt_norm", "none")
TuneMethod = Literal["loo", "last"]

#: 1e-2 … 1e2, four points per decade (17 values).
DEFAULT_LENGTHSCALE_GRID: tuple[float, ...] = tuple(10.0 ** (k / 4) for k in range(-8, 9))

# Jitter added to K + σ²I (relative to its mean diagonal) until Cholesky succeeds.
_JITTERS: tuple[float, ...] = (0.0, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2)
_SQRT5 = math.sqrt(5.0)


# --------------------------------------------------------------------------- helpers
def _check_positive(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise ValueError naming it if not finite and > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _as_matrix(t: Tensor, name: str) -> Tensor:
    if not isinstance(t, Tensor) or t.dim() != 2:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a 2-D tensor (n, d), got {shape}")
    return t


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances (n, m) of rows that are already centred.

    Uses the matmul expansion (O(n·m·d), no (n, m, d) intermediate) and clamps the tiny
    negative values that rounding can produce before any square root is taken.
    """
    sq = a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None, :] - 2.0 * (a @ b.T)
    return sq.clamp_min_(0.0)


def _self_sq_dists(a: Tensor) -> Tensor:
    """Squared distances of a set with itself: exactly symmetric with a zero diagonal."""
    sq = _sq_dists(a, a)
    sq = 0.5 * (sq + sq.T)
    sq.fill_diagonal_(0.0)
    return sq


def _matern52_from_sq(sq: Tensor, lengthscale: float) -> Tensor:
    """Matérn 5/2 from squared distances: (1 + z + z²/3) e^{-z}, z = √5 r / ℓ."""
    z = sq.sqrt().mul_(_SQRT5 / lengthscale)
    return (1.0 + z + z * z / 3.0) * torch.exp(-z)


def _cholesky_with_jitter(k: Tensor) -> tuple[Tensor, float]:
    """Cholesky factor of ``k``, adding growing jitter if it is not numerically PD.

    Duplicate history points make K(X, X) singular; σ² > 0 normally cures that, but a
    tiny σ² (or float32) may not, so escalate the jitter instead of crashing.
    Returns the factor and the absolute jitter that was added.
    """
    n = k.shape[0]
    eye = torch.eye(n, dtype=k.dtype, device=k.device)
    ref = float(k.diagonal().abs().mean()) or 1.0
    for rel in _JITTERS:
        jitter = rel * ref
        factor, info = torch.linalg.cholesky_ex(k + jitter * eye if jitter else k)
        if int(info) == 0 and bool(torch.isfinite(factor).all()):
            return factor, jitter
    raise RuntimeError(
        f"Cholesky failed even with jitter {_JITTERS[-1]:g} x mean diagonal; "
        "the kernel matrix is not finite or not positive semidefinite"
    )


# --------------------------------------------------------------------------- public helpers
def matern52(a: Tensor, b: Tensor, lengthscale: float) -> Tensor:
    """Matérn ν = 5/2 kernel matrix ``k(a_i, b_j)`` of shape (n, m); ``k(x, x) = 1``.

    Distances are computed in float64 after subtracting a common centre, so they stay
    accurate when the points are close to each other but far from the origin. The
    result has the promoted floating dtype of the inputs.
    """
    ell = _check_positive("lengthscale", lengthscale)
    a, b = _as_matrix(a, "a"), _as_matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same dimension, got {a.shape[1]} and {b.shape[1]}")
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    if not out_dtype.is_floating_point:
        out_dtype = torch.get_default_dtype()
    if a.shape[0] == 0 or b.shape[0] == 0:
        return torch.empty(a.shape[0], b.shape[0], dtype=out_dtype, device=a.device)
    a64 = a.detach().to(torch.float64)
    b64 = b.detach().to(device=a.device, dtype=torch.float64)
    centre = 0.5 * (a64.mean(0) + b64.mean(0))
    if a is b:
        sq = _self_sq_dists(a64 - centre)
    else:
        sq = _sq_dists(a64 - centre, b64 - centre)
    return _matern52_from_sq(sq, ell).to(out_dtype)


def cosine_distance(a: Tensor, b: Tensor) -> float:
    """``1 - cos(a, b)`` of the flattened tensors, in [0, 2], computed in float64.

    Used to report how well an estimated gradient points in the true direction.
    Convention: two zero vectors are at distance 0; one zero vector is at distance 1
    (no direction information, as if orthogonal).
    """
    a64 = a.detach().reshape(-1).to(torch.float64)
    b64 = b.detach().reshape(-1).to(device=a64.device, dtype=torch.float64)
    if a64.numel() != b64.numel():
        raise ValueError(f"a and b must have the same number of elements, got {a64.numel()} and {b64.numel()}")
    na, nb = float(a64.norm()), float(b64.norm())
    if na == 0.0 or nb == 0.0:
        return 0.0 if na == nb else 1.0
    cos = float(a64 @ b64) / (na * nb)
    return 1.0 - max(-1.0, min(1.0, cos))


# --------------------------------------------------------------------------- history
class GradientHistory:
    """Ring buffer of the last ``capacity`` (= T0) pairs ``(x_j, g_j)``.

    Two preallocated ``(capacity, d)`` tensors hold the pairs, so memory is O(T0·d) and
    adding never reallocates. ``d`` may be given up front or is taken from the first
    ``add``; inputs of any shape are flattened (a parameter tensor works as ``x``).
    """

    def __init__(
        self,
        capacity: int,
        dim: int | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 2:
            raise ValueError(f"capacity must be an integer >= 2, got {capacity!r}")
        self.capacity = capacity
        self._dtype = dtype
        self._device = torch.device(device) if device is not None else None
        self._xs: Tensor | None = None
        self._gs: Tensor | None = None
        self._next = 0  # storage row written next
        self._size = 0
        if dim is not None:
            if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
                raise ValueError(f"dim must be a positive integer, got {dim!r}")
            self._allocate(dim, dtype or torch.get_default_dtype(), self._device or torch.device("cpu"))

    # -- storage
    def _allocate(self, dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self._xs = torch.zeros(self.capacity, dim, dtype=dtype, device=device)
        self._gs = torch.zeros(self.capacity, dim, dtype=dtype, device=device)

    @property
    def dim(self) -> int | None:
        """Dimension ``d`` of the stored vectors (None before the first add)."""
        return None if self._xs is None else self._xs.shape[1]

    def __len__(self) -> int:
        return self._size

    def clear(self) -> None:
        """Forget all pairs (keeps the allocated storage)."""
        self._next = 0
        self._size = 0

    # -- writing
    def add(self, x: Tensor, g: Tensor) -> None:
        """Append one pair; the oldest pair is overwritten once the buffer is full."""
        if x.numel() != g.numel():
            raise ValueError(f"x and g must have the same number of elements, got {x.numel()} and {g.numel()}")
        self.add_many(x.reshape(1, -1), g.reshape(1, -1))

    def add_many(self, xs: Tensor, gs: Tensor) -> None:
        """Append ``k`` pairs in row order (rows of (k, d) or (k, *shape) tensors).

        If ``k > capacity`` only the last ``capacity`` rows are kept, as if they had been
        added one at a time.
        """
        if xs.dim() < 2 or gs.dim() < 2 or xs.shape[0] != gs.shape[0]:
            raise ValueError(
                f"xs and gs must be (k, d) tensors with the same k, got {tuple(xs.shape)} and {tuple(gs.shape)}"
            )
        k = xs.shape[0]
        xs, gs = xs.detach().reshape(k, -1), gs.detach().reshape(k, -1)
        if xs.shape != gs.shape:
            raise ValueError(f"xs and gs must have the same shape, got {tuple(xs.shape)} and {tuple(gs.shape)}")
        if k == 0:
            return
        if self._xs is None:
            self._allocate(xs.shape[1], self._dtype or xs.dtype, self._device or xs.device)
        assert self._xs is not None and self._gs is not None
        if xs.shape[1] != self._xs.shape[1]:
            raise ValueError(f"vectors must have dimension {self._xs.shape[1]}, got {xs.shape[1]}")
        if k > self.capacity:
            xs, gs, k = xs[-self.capacity:], gs[-self.capacity:], self.capacity
        rows = (self._next + torch.arange(k)) % self.capacity
        rows = rows.to(self._xs.device)
        self._xs.index_copy_(0, rows, xs.to(device=self._xs.device, dtype=self._xs.dtype))
        self._gs.index_copy_(0, rows, gs.to(device=self._gs.device, dtype=self._gs.dtype))
        self._next = (self._next + k) % self.capacity
        self._size = min(self._size + k, self.capacity)

    # -- reading
    def _ordered(self, store: Tensor | None) -> Tensor:
        if store is None:
            raise ValueError("the history is empty")
        if self._size < self.capacity or self._next == 0:
            return store[: self._size]  # a view: rows are already in insertion order
        return torch.cat((store[self._next:], store[: self._next]))  # wrapped: a copy

    def points(self) -> Tensor:
        """The stored ``x_j`` (n, d), oldest first (a view unless the buffer has wrapped)."""
        return self._ordered(self._xs)

    def gradients(self) -> Tensor:
        """The stored ``g_j`` (n, d), oldest first (a view unless the buffer has wrapped)."""
        return self._ordered(self._gs)

    def pairs(self) -> tuple[Tensor, Tensor]:
        """``(points(), gradients())``."""
        return self.points(), self.gradients()


HistoryLike = Union[GradientHistory, tuple[Tensor, Tensor]]


# --------------------------------------------------------------------------- estimator
@dataclass(frozen=True)
class _Fitted:
    """Everything ``predict`` needs; self-consistent even if the estimator is re-tuned."""

    centre: Tensor  # (d,) compute dtype
    scale: float
    points: Tensor  # (n, d) normalised history inputs, compute dtype
    alpha: Tensor  # (n, d) (K + σ²I)^{-1} G, compute dtype
    lengthscale: float
    jitter: float
    out_dtype: torch.dtype


class KernelGradientEstimator:
    """GP posterior mean of the gradient, ``μ(x) = k(x, X)(K + σ²I)^{-1} G`` (Matérn 5/2).

    Args:
        lengthscale: ℓ, in normalised units (see the module docstring).
        noise: σ², the observation-noise *variance* relative to the unit kernel variance
            (OptEx uses ≈ 1e-3). It regularises the solve and lets the mean smooth over
            stochastic gradients; at a history point the prediction differs from the
            stored gradient by ``σ²[(K + σ²I)^{-1}G]_j``.
        normalization: ``"spread"`` (default), ``"max_norm"``, ``"mean_sqrt_norm"``
            (official JAX code) or ``"none"``.
        compute_dtype: dtype of the stored normalised inputs and weights. float64
            (default) keeps the Cholesky solve and distances accurate; float32 halves the
            O(T0·d) memory for very large ``d``.

    The prior mean is zero, so far from every history point (distance ≫ ℓ) the estimate
    shrinks towards 0 rather than extrapolating.
    """

    def __init__(
        self,
        lengthscale: float = 1.0,
        noise: float = 1e-3,
        normalization: Normalization = "spread",
        compute_dtype: torch.dtype = torch.float64,
    ) -> None:
        self.lengthscale = _check_positive("lengthscale", lengthscale)
        self.noise = _check_positive("noise", noise)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}; got {normalization!r}")
        if compute_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"compute_dtype must be torch.float32 or torch.float64, got {compute_dtype!r}")
        self.normalization: Normalization = normalization
        self.compute_dtype = compute_dtype
        self.tuning_errors: dict[float, float] = {}
        self._fit: _Fitted | None = None

    # -- state
    @property
    def fitted(self) -> bool:
        return self._fit is not None

    def _state(self) -> _Fitted:
        if self._fit is None:
            raise RuntimeError("call fit(history) before predict")
        return self._fit

    @property
    def scale(self) -> float:
        """The common divisor applied to the (centred) inputs at the last fit."""
        return self._state().scale

    @property
    def jitter(self) -> float:
        """Extra diagonal jitter the last fit needed (0.0 when K + σ²I was PD)."""
        return self._state().jitter

    @property
    def effective_lengthscale(self) -> float:
        """ℓ of the last fit expressed in raw units of x (ℓ × scale)."""
        st = self._state()
        return st.lengthscale * st.scale

    # -- data preparation
    def _prepare(self, history: HistoryLike) -> tuple[Tensor, Tensor, Tensor, float, torch.dtype]:
        """Validated, centred, scaled inputs and targets in the compute dtype."""
        if isinstance(history, GradientHistory):
            if len(history) == 0:
                raise ValueError("cannot fit on an empty history")
            xs, gs = history.pairs()
        else:
            xs, gs = history
        xs, gs = _as_matrix(xs.detach(), "history points"), _as_matrix(gs.detach(), "history gradients")
        if xs.shape != gs.shape:
            raise ValueError(f"points and gradients must have the same shape, got {tuple(xs.shape)} and {tuple(gs.shape)}")
        if xs.shape[0] == 0:
            raise ValueError("cannot fit on an empty history")
        out_dtype = gs.dtype if gs.dtype.is_floating_point else torch.get_default_dtype()
        x = xs.to(self.compute_dtype)
        g = gs.to(device=x.device, dtype=self.compute_dtype)
        if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(g).all())):
            raise ValueError("history contains non-finite values")
        scale = self._scale_of(x)
        centre = x.mean(0)
        x = (x - centre).div_(scale)
        return x, g, centre, scale, out_dtype

    def _scale_of(self, x: Tensor) -> float:
        """The common normalisation divisor (1.0 when the history has no extent)."""
        if self.normalization == "none":
            return 1.0
        if self.normalization == "max_norm":
            s = float(x.norm(dim=1).max())
        elif self.normalization == "mean_sqrt_norm":
            s = float(x.norm(dim=1).sqrt().mean())
        else:
            s = float((x - x.mean(0)).norm(dim=1).max())
        return s if s > torch.finfo(x.dtype).tiny and math.isfinite(s) else 1.0

    def _factor(self, sq: Tensor, lengthscale: float) -> tuple[Tensor, float]:
        """Cholesky factor of K(ℓ) + σ²I (+ jitter) from squared distances."""
        k = _matern52_from_sq(sq, lengthscale)
        k.diagonal().add_(self.noise)
        return _cholesky_with_jitter(k)

    # -- fit / predict
    @torch.no_grad()
    def fit(self, history: HistoryLike) -> "KernelGradientEstimator":
        """Fit on a GradientHistory or an ``(X, G)`` pair of (n, d) tensors; O(n³ + n²d).

        Copies what it needs, so later changes to the history do not affect predictions.
        """
        x, g, centre, scale, out_dtype = self._prepare(history)
        factor, jitter = self._factor(_self_sq_dists(x), self.lengthscale)
        alpha = torch.cholesky_solve(g, factor)
        self._fit = _Fitted(centre, scale, x, alpha, self.lengthscale, jitter, out_dtype)
        return self

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Estimated gradient at ``x`` of shape (d,) or (m, d); returns the same shape.

        The result has the history gradients' dtype and ``x``'s device. O(m·n·d).
        """
        st = self._state()
        if not isinstance(x, Tensor) or x.dim() not in (1, 2):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (d,) or (m, d), got {shape}")
        d = st.points.shape[1]
        if x.shape[-1] != d:
            raise ValueError(f"x must have last dimension {d}, got {x.shape[-1]}")
        q = x.detach().reshape(-1, d).to(device=st.points.device, dtype=st.points.dtype)
        q = (q - st.centre).div_(st.scale)
        k = _matern52_from_sq(_sq_dists(q, st.points), st.lengthscale)
        mu = k @ st.alpha
        return mu.to(device=x.device, dtype=st.out_dtype).reshape(x.shape)

    # -- length-scale selection
    @torch.no_grad()
    def tune_lengthscale(
        self,
        history: HistoryLike,
        grid: Sequence[float] | None = None,
        method: TuneMethod = "loo",
        holdout: int | None = None,
    ) -> float:
        """Pick ℓ from ``grid`` (default 1e-2 … 1e2, log-spaced) by held-out error; set it.

        Criterion: relative squared error ``Σ‖g_i - μ_{-i}(x_i)‖² / Σ‖g_i‖²`` of
        predicting held-out true gradients (1.0 = no better than predicting zero).

        * ``"loo"`` (default): leave-one-out over all pairs with the closed form for GP
          LOO residuals, ``r_i = [A G]_i / A_ii`` with ``A = (K + σ²I)^{-1}``
          (Rasmussen & Williams eq. 5.12). It uses every pair and has low variance.
        * ``"last"``: fit on the older pairs and predict the most recent ``holdout``
          (default ``max(1, n // 4)``). This mirrors OptEx's use, extrapolating along
          the trajectory, but is noisier for short histories.

        Both only need the target Gram matrix ``G Gᵀ`` (computed once, O(n²d)), so each
        grid value costs O(n³) regardless of ``d``. Ties go to the first grid value.
        The chosen ℓ takes effect at the next ``fit``; errors are kept in
        ``self.tuning_errors``. Needs at least 2 pairs.
        """
        values = [_check_positive("lengthscale grid value", v) for v in (grid or DEFAULT_LENGTHSCALE_GRID)]
        if not values:
            raise ValueError("grid must contain at least one length scale")
        x, g, *_ = self._prepare(history)
        n = x.shape[0]
        if n < 2:
            raise ValueError(f"tuning needs at least 2 history pairs, got {n}")
        sq = _self_sq_dists(x)
        gram = g @ g.T
        if method == "loo":
            errors = [self._loo_error(sq, gram, ell) for ell in values]
        elif method == "last":
            k = max(1, n // 4) if holdout is None else holdout
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
                raise ValueError(f"holdout must be an integer in [1, {n - 1}], got {holdout!r}")
            errors = [self._holdout_error(sq, gram, ell, n - k) for ell in values]
        else:
            raise ValueError(f"method must be 'loo' or 'last', got {method!r}")
        self.tuning_errors = dict(zip(values, errors))
        clean = [e if math.isfinite(e) else math.inf for e in errors]
        best = min(range(len(values)), key=clean.__getitem__)
        self.lengthscale = values[best]
        return self.lengthscale

    def _loo_error(self, sq: Tensor, gram: Tensor, ell: float) -> float:
        """Relative LOO squared error: Σ_i [A M A]_ii / A_ii² / tr(M), M = G Gᵀ."""
        factor, _ = self._factor(sq, ell)
        a = torch.cholesky_inverse(factor)
        num = ((a @ gram) * a).sum(1) / a.diagonal().pow(2)  # [A M A]_ii uses A symmetric
        return _relative(float(num.sum()), float(gram.trace()))

    def _holdout_error(self, sq: Tensor, gram: Tensor, ell: float, n_train: int) -> float:
        """Relative squared error of predicting pairs n_train.. from pairs ..n_train."""
        tr, te = slice(0, n_train), slice(n_train, None)
        factor, _ = self._factor(sq[tr, tr], ell)
        k_star = _matern52_from_sq(sq[te, tr], ell)  # (k, n_train)
        w = torch.cholesky_solve(k_star.T, factor).T  # μ_test = w G_train
        m_tt, m_ts, m_ss = gram[tr, tr], gram[tr, te], gram[te, te]
        err = m_ss.trace() - 2.0 * (w * m_ts.T).sum() + ((w @ m_tt) * w).sum()
        return _relative(max(float(err), 0.0), float(m_ss.trace()))


def _relative(num: float, den: float) -> float:
    """num / den, with 0/0 = 0 (all-zero gradients are predicted perfectly by anything)."""
    if den > 0.0:
        return num / den
    return 0.0 if num == 0.0 else math.inf
