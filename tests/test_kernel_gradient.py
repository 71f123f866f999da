"""Tests for the OptEx kernelized gradient estimator (pure math, CPU, a few seconds)."""

from __future__ import annotations

import math

import pytest
import torch

from paso_core.optim.kernel_gradient import (
    DEFAULT_LENGTHSCALE_GRID,
    GradientHistory,
    KernelGradientEstimator,
    cosine_distance,
    matern52,
)

F64 = torch.float64


def _quadratic(d: int, seed: int = 0):
    """f(x) = ½xᵀAx + bᵀx with A SPD (condition number 10); returns its gradient map."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64))
    a = q @ torch.diag(torch.linspace(1.0, 10.0, d, dtype=F64)) @ q.T
    b = torch.randn(d, generator=gen, dtype=F64)
    return lambda x: x @ a.T + b


def _uniform(n: int, d: int, seed: int, half_width: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=gen, dtype=F64) * 2 - 1) * half_width


# --------------------------------------------------------------------------- kernel
def test_matern52_matches_closed_form_at_known_distances() -> None:
    ell = 0.7
    a = torch.zeros(1, 3, dtype=F64)
    r = torch.tensor([0.0, 0.1, ell, 3.0], dtype=F64)
    b = torch.zeros(4, 3, dtype=F64)
    b[:, 1] = r
    z = math.sqrt(5.0) * r / ell
    expected = (1 + z + z * z / 3) * torch.exp(-z)
    torch.testing.assert_close(matern52(a, b, ell)[0], expected, rtol=1e-12, atol=1e-12)


def test_matern52_symmetric_unit_diagonal_and_psd() -> None:
    x = _uniform(30, 4, seed=1)
    k = matern52(x, x, 0.5)
    assert k.shape == (30, 30)
    torch.testing.assert_close(k, k.T, rtol=0, atol=0)
    torch.testing.assert_close(k.diagonal(), torch.ones(30, dtype=F64), rtol=0, atol=0)
    assert float(torch.linalg.eigvalsh(k).min()) > -1e-10
    y = _uniform(7, 4, seed=2)
    torch.testing.assert_close(matern52(x, y, 0.5), matern52(y, x, 0.5).T, rtol=1e-12, atol=1e-12)


def test_matern52_accurate_for_close_points_far_from_origin() -> None:
    """Centring before the distance expansion avoids cancellation (float32 inputs)."""
    base = torch.full((1, 1000), 100.0)
    step = torch.zeros(1, 1000)
    step[0, 0] = 1e-2
    other = base + step
    k = matern52(base, other, 0.05)
    r = float(other[0, 0].double() - 100.0) / 0.05 * math.sqrt(5.0)  # true float32 gap
    expected = (1 + r + r * r / 3) * math.exp(-r)
    assert k.dtype == torch.float32
    assert abs(float(k) - expected) < 1e-6
    # the naive float32 expansion ‖a‖² + ‖b‖² - 2a·b loses the gap entirely here
    naive = (base.pow(2).sum() + other.pow(2).sum() - 2 * (base * other).sum()).clamp_min(0)
    true_sq = (r * 0.05 / math.sqrt(5.0)) ** 2
    assert abs(float(naive) - true_sq) > 0.5 * true_sq


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_matern52_rejects_bad_lengthscale(bad: float) -> None:
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=f"lengthscale.*{bad}"):
        matern52(x, x, bad)


# --------------------------------------------------------------------------- history
def test_history_keeps_last_capacity_pairs_in_order() -> None:
    h = GradientHistory(capacity=4)
    for i in range(6):
        h.add(torch.full((3,), float(i)), torch.full((3,), -float(i)))
    assert len(h) == 4
    assert h.points()[:, 0].tolist() == [2.0, 3.0, 4.0, 5.0]
    assert h.gradients()[:, 0].tolist() == [-2.0, -3.0, -4.0, -5.0]


def test_history_add_many_matches_repeated_add_and_truncates() -> None:
    xs = torch.arange(14.0).reshape(7, 2)
    one, many = GradientHistory(5), GradientHistory(5)
    for x, g in zip(xs, 2 * xs):
        one.add(x, g)
    many.add_many(xs[:1], 2 * xs[:1])
    many.add_many(xs[1:], 2 * xs[1:])  # 6 rows after 1: wraps
    big = GradientHistory(5)
    big.add_many(xs, 2 * xs)  # 7 rows > capacity: keeps the last 5
    for h in (many, big):
        assert torch.equal(h.points(), one.points())
        assert torch.equal(h.gradients(), one.gradients())
    assert one.points()[:, 0].tolist() == [4.0, 6.0, 8.0, 10.0, 12.0]


def test_history_storage_is_preallocated_and_views_when_not_wrapped() -> None:
    h = GradientHistory(capacity=3, dim=4, dtype=torch.float32)
    ptr = h._xs.data_ptr()  # noqa: SLF001 - checking the no-reallocation promise
    h.add(torch.ones(2, 2), torch.zeros(4))  # any shape with d elements is flattened
    assert h.points().data_ptr() == ptr and h.points().shape == (1, 4)
    for _ in range(5):
        h.add(torch.ones(4), torch.ones(4))
    assert h._xs.data_ptr() == ptr and h._xs.shape == (3, 4)  # noqa: SLF001


def test_history_validation() -> None:
    for bad in (1, 0, -3, 2.5):
        with pytest.raises(ValueError, match=f"capacity.*{bad}"):
            GradientHistory(bad)  # type: ignore[arg-type]
    h = GradientHistory(3)
    h.add(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="dimension 4"):
        h.add(torch.zeros(5), torch.zeros(5))
    with pytest.raises(ValueError):
        h.add(torch.zeros(4), torch.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        GradientHistory(3).points()


# --------------------------------------------------------------------------- estimator
def test_estimator_matches_dense_gp_formula() -> None:
    grad = _quadratic(4)
    x = _uniform(12, 4, seed=3)
    est = KernelGradientEstimator(lengthscale=0.8, noise=1e-3, normalization="none").fit((x, grad(x)))
    q = _uniform(5, 4, seed=4)
    k_xx = matern52(x, x, 0.8) + 1e-3 * torch.eye(12, dtype=F64)
    expected = matern52(q, x, 0.8) @ torch.linalg.solve(k_xx, grad(x))
    torch.testing.assert_close(est.predict(q), expected, rtol=1e-9, atol=1e-10)
    assert est.jitter == 0.0


@pytest.mark.parametrize("noise", [1e-3, 1e-8])
def test_prediction_at_history_points_interpolates_up_to_noise(noise: float) -> None:
    """μ(x_j) - g_j = -σ²[(K+σ²I)^{-1}G]_j, so ‖μ(X) - G‖ ≤ σ²/(λ_min(K)+σ²) ‖G‖."""
    grad = _quadratic(3, seed=5)
    x = _uniform(15, 3, seed=6)
    est = KernelGradientEstimator(lengthscale=0.3, noise=noise).fit((x, grad(x)))
    lam_min = float(torch.linalg.eigvalsh(matern52(x, x, est.effective_lengthscale)).min())
    bound = noise / (lam_min + noise) * float(grad(x).norm())
    err = float((est.predict(x) - grad(x)).norm())
    assert err <= bound * (1 + 1e-6)
    assert err / float(grad(x).norm()) < 50 * noise  # well-spread points: K well conditioned


def test_quadratic_estimate_is_accurate_and_improves_with_history() -> None:
    d = 5
    grad = _quadratic(d)
    queries = _uniform(30, d, seed=7, half_width=0.3)  # new points inside the history's hull
    mean_cos = []
    for n in (10, 20, 40):
        x = _uniform(n, d, seed=8)
        est = KernelGradientEstimator()
        est.tune_lengthscale((x, grad(x)))
        pred = est.fit((x, grad(x))).predict(queries)
        dists = [cosine_distance(p, g) for p, g in zip(pred, grad(queries))]
        mean_cos.append(sum(dists) / len(dists))
        if n == 40:
            assert max(dists) < 0.05
    assert mean_cos[0] > mean_cos[1] > mean_cos[2]


def test_predict_shapes_dtype_and_device() -> None:
    h = GradientHistory(capacity=8)
    xs = _uniform(8, 6, seed=9).float()
    h.add_many(xs, 2 * xs)
    est = KernelGradientEstimator().fit(h)
    single, batch = est.predict(xs[0]), est.predict(xs[:3])
    assert single.shape == (6,) and batch.shape == (3, 6)
    assert single.dtype == torch.float32 and batch.dtype == torch.float32
    torch.testing.assert_close(single, batch[0])
    with pytest.raises(ValueError, match="last dimension 6"):
        est.predict(torch.zeros(5))
    with pytest.raises(ValueError):
        est.predict(torch.zeros(2, 2, 6))


def test_high_dimension_never_needs_d_by_d() -> None:
    d = 100_000
    x = _uniform(20, d, seed=10).float()
    g = torch.sin(x)
    est = KernelGradientEstimator(noise=1e-3)
    ell = est.tune_lengthscale((x, g), grid=[0.1, 1.0, 10.0])
    pred = est.fit((x, g)).predict(x[-1] + 1e-3)
    assert ell in (0.1, 1.0, 10.0)
    assert pred.shape == (d,) and bool(torch.isfinite(pred).all())


@pytest.mark.parametrize("noise", [1e-3, 1e-14])
def test_duplicate_points_give_finite_predictions(noise: float) -> None:
    base = _uniform(4, 3, seed=11)
    x = torch.cat([base, base, base[:1]])  # every point at least twice
    g = torch.cat([base, base + 0.01, base[:1] - 0.01])  # noisy, conflicting gradients
    est = KernelGradientEstimator(lengthscale=1.0, noise=noise).fit((x, g))
    pred = est.predict(torch.cat([x, _uniform(3, 3, seed=12)]))
    assert bool(torch.isfinite(pred).all())
    assert float((est.predict(base[1]) - (base[1] + 0.005)).abs().max()) < 0.05
    est.tune_lengthscale((x, g))  # LOO with duplicates must not fail either
    assert all(math.isfinite(e) for e in est.tuning_errors.values())


def test_fit_copies_history_and_retuning_needs_refit() -> None:
    h = GradientHistory(capacity=4)
    xs = _uniform(4, 3, seed=13)
    h.add_many(xs, xs.clone())
    est = KernelGradientEstimator(lengthscale=0.5).fit(h)
    before = est.predict(xs[0])
    h.add(torch.ones(3), 100 * torch.ones(3))  # mutates the buffer in place
    est.lengthscale = 5.0
    torch.testing.assert_close(est.predict(xs[0]), before, rtol=0, atol=0)


def test_spread_normalisation_is_translation_and_scale_equivariant() -> None:
    """With one common centred divisor, shifting/scaling the problem changes nothing."""
    grad = _quadratic(3, seed=14)
    x, q = _uniform(10, 3, seed=15), _uniform(4, 3, seed=16, half_width=0.5)
    ref = KernelGradientEstimator(lengthscale=0.7).fit((x, grad(x))).predict(q)
    shift, factor = 1000.0, 3.0
    est = KernelGradientEstimator(lengthscale=0.7).fit((factor * x + shift, grad(x)))
    torch.testing.assert_close(est.predict(factor * q + shift), ref, rtol=1e-8, atol=1e-8)
    assert est.effective_lengthscale == pytest.approx(0.7 * est.scale)


def test_max_norm_normalisation_uses_largest_row_norm() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0]], dtype=F64)
    est = KernelGradientEstimator(normalization="max_norm").fit((x, x))
    assert est.scale == pytest.approx(5.0)
    assert KernelGradientEstimator(normalization="none").fit((x, x)).scale == 1.0


def test_mean_sqrt_norm_normalisation_is_the_official_jax_factor() -> None:
    """Row norms 5, 1, 4: the divisor is (sqrt 5 + 1 + 2) / 3, not a max or a plain mean."""
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0], [4.0, 0.0]], dtype=F64)
    est = KernelGradientEstimator(normalization="mean_sqrt_norm").fit((x, x))
    assert est.scale == pytest.approx((5.0 ** 0.5 + 1.0 + 2.0) / 3.0)


@pytest.mark.parametrize("method", ["loo", "last"])
def test_lengthscale_tuning_recovers_known_scale(method: str) -> None:
    """g(x) = cos(x / c) varies on scale c: the tuned raw length scale tracks c."""
    tuned = {}
    for c in (0.5, 1.0, 2.0):
        x = _uniform(80, 2, seed=17, half_width=3.0 * c)
        est = KernelGradientEstimator()
        ell = est.tune_lengthscale((x, torch.cos(x / c)), method=method)
        assert ell in DEFAULT_LENGTHSCALE_GRID
        est.fit((x, torch.cos(x / c)))
        tuned[c] = est.effective_lengthscale
        assert c / 10 <= tuned[c] <= 10 * c
        assert min(est.tuning_errors.values()) < 0.05
    assert tuned[0.5] < tuned[1.0] < tuned[2.0]


def test_tuning_prefers_shorter_scale_for_rougher_function() -> None:
    x = _uniform(80, 2, seed=18, half_width=3.0)
    est = KernelGradientEstimator(normalization="none")
    rough = est.tune_lengthscale((x, torch.cos(x / 0.3)))
    smooth = est.tune_lengthscale((x, torch.cos(x / 3.0)))
    assert rough < smooth


def test_estimator_validation() -> None:
    for kwargs, name in (({"lengthscale": 0.0}, "lengthscale"), ({"noise": -1e-3}, "noise")):
        with pytest.raises(ValueError, match=name):
            KernelGradientEstimator(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="normalization"):
        KernelGradientEstimator(normalization="rows")  # type: ignore[arg-type]
    est = KernelGradientEstimator()
    with pytest.raises(RuntimeError, match="fit"):
        est.predict(torch.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        est.fit(GradientHistory(3))
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="non-finite"):
        est.fit((x, torch.full((3, 2), float("nan"))))
    with pytest.raises(ValueError, match="grid value.*-1"):
        est.tune_lengthscale((_uniform(3, 2, seed=0), x), grid=[1.0, -1.0])
    with pytest.raises(ValueError, match="holdout"):
        est.tune_lengthscale((_uniform(3, 2, seed=0), x), method="last", holdout=3)
    with pytest.raises(ValueError, match="at least 2"):
        est.tune_lengthscale((torch.zeros(1, 2), torch.zeros(1, 2)))


# --------------------------------------------------------------------------- cosine
def test_cosine_distance() -> None:
    a = torch.tensor([1.0, 0.0])
    assert cosine_distance(a, a) == pytest.approx(0.0)
    assert cosine_distance(a, torch.tensor([0.0, 2.0])) == pytest.approx(1.0)
    assert cosine_distance(a, -3 * a) == pytest.approx(2.0)
    assert cosine_distance(torch.zeros(2), torch.zeros(2)) == 0.0
    assert cosine_distance(a, torch.zeros(2)) == 1.0
    assert cosine_distance(torch.ones(2, 2), torch.ones(4)) == pytest.approx(0.0)


@pytest.mark.parametrize("method", ["loo", "last"])
def test_tuning_errors_match_explicit_refits(method: str) -> None:
    """The O(n³)-per-value Gram-matrix formulas equal refitting on the held-in pairs."""
    x = _uniform(9, 3, seed=19)
    g = torch.sin(2 * x) + 0.1 * x
    est = KernelGradientEstimator(noise=1e-2, normalization="none")
    est.tune_lengthscale((x, g), grid=[0.3], method=method, holdout=3)
    held_out = list(range(9)) if method == "loo" else [6, 7, 8]
    sq_err = 0.0
    for i in held_out:
        keep = [j for j in range(9) if j != i] if method == "loo" else list(range(6))
        ref = KernelGradientEstimator(lengthscale=0.3, noise=1e-2, normalization="none")
        sq_err += float((ref.fit((x[keep], g[keep])).predict(x[i]) - g[i]).pow(2).sum())
    expected = sq_err / float(g[held_out].pow(2).sum())
    assert est.tuning_errors[0.3] == pytest.approx(expected, rel=1e-8)


def test_jitter_escalates_on_singular_matrix() -> None:
    from paso_core.optim.kernel_gradient import _cholesky_with_jitter

    factor, jitter = _cholesky_with_jitter(torch.ones(4, 4, dtype=torch.float32))
    assert jitter > 0 and bool(torch.isfinite(factor).all())
    x = torch.cat([torch.ones(3, 2), torch.zeros(3, 2)])
    est = KernelGradientEstimator(noise=1e-14, compute_dtype=torch.float32).fit((x, x))
    assert bool(torch.isfinite(est.predict(torch.rand(5, 2))).all())
