"""Tests for fmjax.metrics: empirical W2 against SciPy, POT and closed forms; straightness and
kinetic energy against the notes' identities and a direct quadrature."""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest
import scipy.integrate
import scipy.optimize
from scipy.optimize import linear_sum_assignment

import fmjax as fm


def _lsa_w2_sq(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    r, c = linear_sum_assignment(C)
    return float(C[r, c].mean()), c


@pytest.fixture(scope="module")
def clouds():
    rng = np.random.default_rng(120)
    x = rng.normal(size=(128, 3))
    y = rng.normal(size=(128, 3)) * np.array([0.5, 1.0, 2.0]) + np.array([1.0, 0.0, -1.0])
    return x, y


# ---------------------------------------------------------------------------------------
# Exact W2 (POT's network simplex through a callback)
# ---------------------------------------------------------------------------------------
def test_w2_exact_matches_scipy_assignment(clouds, dtype):
    x, y = clouds
    ref = math.sqrt(_lsa_w2_sq(x.astype(dtype), y.astype(dtype))[0])
    res = fm.w2_result(jnp.asarray(x, dtype), jnp.asarray(y, dtype), method="exact")
    assert res.method == "exact" and bool(res.converged) and res.w2.dtype == dtype
    np.testing.assert_allclose(float(res.w2), ref, rtol=2e-6 if dtype == np.float32 else 1e-12)
    assert fm.w2(jnp.asarray(x, dtype), jnp.asarray(y, dtype)) == res.w2  # auto -> exact


def test_w2_exact_gradient_envelope(clouds):
    # d W2^2 / d x_i = 2 (x_i - y_sigma(i)) / n with sigma SciPy's optimal assignment.
    x, y = clouds
    _, perm = _lsa_w2_sq(x, y)
    g = jax.jit(jax.grad(lambda a: fm.w2_squared(a, jnp.asarray(y), method="exact")))(
        jnp.asarray(x))
    np.testing.assert_allclose(g, 2 * (x - y[perm]) / x.shape[0], atol=1e-12)


def test_w2_auto_is_exact_above_2048_points_and_equals_pot_emd2():
    """The trap of the old default: above 2,048 points ``"auto"`` switched to the Sinkhorn
    divergence (biased low). Now it is exact: equal to POT's ``emd2`` called directly on
    the direct-difference cost (``benchmarks/w2.py`` shows the divergence's bias)."""
    rng = np.random.default_rng(7)
    n = 2500
    x = rng.normal(size=(n, 2))
    y = rng.normal(size=(n, 2)) * np.array([2.0, 0.5]) + 1.0
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    w = np.full(n, 1 / n)
    ref = math.sqrt(pot.emd2(w, w, C, numItermax=10**8))
    got = fm.w2_result(x, y)
    assert got.method == "exact" and bool(got.converged)
    np.testing.assert_allclose(float(got.w2), ref, rtol=1e-10)


def test_w2_exact_weighted_unequal_sizes_matches_linear_program():
    """Weighted clouds of different sizes: the transport linear program solved by SciPy's
    HiGHS (an independent LP solver) gives the same optimal cost."""
    rng = np.random.default_rng(3)
    n, m = 7, 5
    x, y = rng.normal(size=(n, 2)), rng.normal(size=(m, 2)) + 0.5
    a, b = rng.uniform(0.5, 1.5, n), rng.uniform(0.5, 1.5, m)
    a, b = a / a.sum(), b / b.sum()
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    A_eq = np.concatenate([np.kron(np.eye(n), np.ones((1, m))),
                           np.kron(np.ones((1, n)), np.eye(m))])
    lp = scipy.optimize.linprog(C.ravel(), A_eq=A_eq, b_eq=np.concatenate([a, b]),
                                bounds=(0, None), method="highs")
    got = fm.w2_squared(x, y, weights_x=a, weights_y=b)
    np.testing.assert_allclose(float(got), lp.fun, rtol=1e-9)
    # gradient with the plan held fixed: 2 sum_j P_ij (x_i - y_j)
    P = lp.x.reshape(n, m)
    g = jax.grad(lambda u: fm.w2_squared(u, y, weights_x=a, weights_y=b))(jnp.asarray(x))
    np.testing.assert_allclose(g, 2 * (x * P.sum(1)[:, None] - P @ y), atol=1e-9)


def test_w2_weighted_matches_1d_quantile_formula():
    # Weighted measures on a line: W2^2 = int_0^1 |F^{-1}(u) - G^{-1}(u)|^2 du, from the step
    # quantile functions; the exact solver agrees to round-off, Sinkhorn within 1%.
    rng = np.random.default_rng(130)
    n = 128
    x, y = np.sort(rng.normal(size=n)), np.sort(rng.normal(2.0, 0.5, size=n))
    a, b = rng.uniform(0.2, 1.8, n), rng.uniform(0.2, 1.8, n)
    a, b = a / a.sum(), b / b.sum()
    ca, cb = np.cumsum(a), np.cumsum(b)
    grid = np.unique(np.concatenate([[0.0], ca, cb]))
    grid = grid[grid < 1 - 1e-12]
    widths = np.diff(np.append(grid, 1.0))
    mids = grid + 0.5 * widths
    qx = x[np.minimum(np.searchsorted(ca, mids), n - 1)]
    qy = y[np.minimum(np.searchsorted(cb, mids), n - 1)]
    ref = math.sqrt(np.sum(widths * (qx - qy) ** 2))
    direction = np.array([2.0, -1.0, 2.0]) / 3.0
    X, Y = x[:, None] * direction[None, :], y[:, None] * direction[None, :]
    exact = fm.w2_result(X, Y, weights_x=a, weights_y=b)
    assert exact.method == "exact"
    np.testing.assert_allclose(float(exact.w2), ref, rtol=1e-9)
    sink = fm.w2_result(X, Y, weights_x=a, weights_y=b, method="sinkhorn")
    assert bool(sink.converged)
    np.testing.assert_allclose(float(sink.w2), ref, rtol=1e-2)


def test_w2_exact_under_jit_and_vmap(clouds):
    x, y = clouds
    ref = math.sqrt(_lsa_w2_sq(x, y)[0])
    np.testing.assert_allclose(float(jax.jit(fm.w2)(x, y)), ref, rtol=1e-12)
    both = jax.vmap(lambda a: fm.w2(a, jnp.asarray(y)))(jnp.stack([x, y]))
    np.testing.assert_allclose(np.asarray(both), [ref, 0.0], atol=1e-12)


# ---------------------------------------------------------------------------------------
# Sinkhorn divergence and the auto method
# ---------------------------------------------------------------------------------------
def test_w2_sinkhorn_close_to_exact(clouds, dtype):
    # Debiased Sinkhorn at the default epsilon (1% of the mean cost): within 1% of exact.
    x, y = clouds
    ref = math.sqrt(_lsa_w2_sq(x, y)[0])
    res = fm.w2_result(jnp.asarray(x, dtype), jnp.asarray(y, dtype), method="sinkhorn")
    assert res.method == "sinkhorn" and bool(res.converged)
    assert res.w2.dtype == dtype and 0 < int(res.n_iterations) < 5000
    np.testing.assert_allclose(float(res.w2), ref, rtol=1e-2)
    mean_cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1).mean()
    np.testing.assert_allclose(float(res.epsilon), 1e-2 * mean_cost, rtol=1e-4)


def test_w2_nonconvergence_is_reported():
    rng = np.random.default_rng(140)
    x, y = jnp.asarray(rng.normal(size=(128, 3))), jnp.asarray(rng.normal(size=(128, 3)) + 1.0)
    kw = {"method": "sinkhorn", "epsilon": 1e-5}
    res = fm.w2_result(x, y, **kw)
    assert not bool(res.converged) and int(res.n_iterations) == 5000
    with pytest.raises(RuntimeError, match="did not converge"):
        fm.w2(x, y, **kw)
    with pytest.raises(RuntimeError, match="^Sinkhorn did not converge"):  # first line, jit
        np.asarray(fm.jit(lambda a, b: fm.w2(a, b, **kw))(x, y))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        val = fm.w2_squared(x, y, on_failure="warn", **kw)
    assert any("did not converge" in str(r.message) for r in rec)
    assert val.shape == ()


def test_w2_auto_above_max_size_warns_that_it_approximates(clouds):
    x, y = clouds
    with pytest.warns(UserWarning, match="approximation"):
        res = fm.w2_result(x, y, exact_max_size=64)
    assert res.method == "sinkhorn"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fm.w2_result(x, y, method="sinkhorn", exact_max_size=64).method == "sinkhorn"


def test_w2_floor_matches_sorted_1d_matching():
    """In 1-D the exact W2 between two samples is the sorted matching; w2_floor must report
    the mean and std of exactly those values for the documented key usage."""
    sample = lambda k, n: jax.random.normal(k, (n, 1), jnp.float64)  # noqa: E731
    key = jax.random.key(5)
    mean, sd = fm.w2_floor(sample, key, 300, reps=4)
    vals = []
    for k in jax.random.split(key, 4):
        ka, kb = jax.random.split(k)
        a, b = np.sort(np.asarray(sample(ka, 300))[:, 0]), np.sort(np.asarray(sample(kb, 300))[:, 0])
        vals.append(math.sqrt(np.mean((a - b) ** 2)))
    np.testing.assert_allclose([mean, sd], [np.mean(vals), np.std(vals, ddof=1)], rtol=1e-9)


# ---------------------------------------------------------------------------------------
# Straightness and kinetic energy
# ---------------------------------------------------------------------------------------
TIGHT = dict(solver="tsit5", rtol=1e-10, atol=1e-10, max_steps=20_000)


def _gaussians():
    rng = np.random.default_rng(11)
    A = rng.normal(size=(3, 3))
    S1 = A @ A.T + 0.5 * np.eye(3)
    return np.zeros(3), np.eye(3), np.array([1.0, -0.5, 2.0]), S1


def test_mccann_flow_is_straight():
    """The McCann velocity (the notes: Benamou-Brenier's minimiser) has S = 0 to round-off
    and its energy equals the endpoint cost and W2^2 (Bures)."""
    m0, S0, m1, S1 = _gaussians()
    T = fm.gaussian_ot_map(m0, S0, m1, S1)
    v = fm.mccann_velocity(T)
    x0 = jax.random.normal(jax.random.key(0), (256, 3), jnp.float64)
    # Every particle keeps its velocity along its segment, so Euler's method is exact.
    out = fm.straightness(v, x0, solver="euler", steps=4)
    assert abs(float(out.value)) < 1e-10
    assert abs(float(out.length_excess)) < 1e-10
    np.testing.assert_allclose(float(out.energy), float(out.endpoint_cost), rtol=1e-12)
    np.testing.assert_allclose(float(fm.kinetic_energy(v, x0, solver="euler", steps=4)),
                               float(out.energy), rtol=1e-12)
    np.testing.assert_allclose(float(out.energy), float(fm.gaussian_w2_squared(m0, S0, m1, S1)),
                               rtol=0.2)  # sample mean of 256 points vs the Bures W2^2


def test_independent_gaussian_flow_straightness_equals_direct_quadrature():
    """Exercise 4's independent Gaussian flow is not straight: S > 0, and S = E - endpoint
    cost (expanding the square) agrees with a direct quadrature of the definition
    int_0^1 E||(phi_1 - x0) - v_t(phi_t)||^2 dt (Simpson's rule on 401 saved times)."""
    m0, S0, m1, S1 = _gaussians()

    def v(t, x):
        return fm.gaussian_velocity(t, x, mean0=m0, cov0=S0, mean1=m1, cov1=S1)

    x0 = jax.random.normal(jax.random.key(1), (32, 3), jnp.float64)
    out = fm.straightness(v, x0, **TIGHT)
    ts = np.linspace(0.0, 1.0, 401)
    sol = fm.integrate(v, x0, saveat=jnp.asarray(ts), **TIGHT)
    chord = np.asarray(sol.xs[-1]) - np.asarray(x0)
    vel = np.asarray(jax.vmap(lambda t, xs: jax.vmap(lambda x: v(t, x))(xs))(
        jnp.asarray(ts), sol.xs))
    integrand = np.mean(np.sum((chord[None] - vel) ** 2, axis=-1), axis=1)
    direct = scipy.integrate.simpson(integrand, x=ts)
    assert float(out.value) > 1e-3 * float(out.energy)
    np.testing.assert_allclose(float(out.value), direct, rtol=1e-7)
    np.testing.assert_allclose(float(out.energy) - float(out.endpoint_cost), direct, rtol=1e-7)
    assert float(out.length_excess) > 0


def test_straightness_under_time_reparametrisation_of_a_straight_path():
    """u(s, x) = g'(s) v(g(s), x) with g(s) = s^2 follows the same straight segments as the
    McCann velocity v at a varying speed: the geometric length excess stays 0 (invariant),
    while Liu et al.'s S = int (g'(s) - 1)^2 ds E||Delta||^2 = E||Delta||^2 / 3 (closed form)
    measures the change of speed."""
    m0, S0, m1, S1 = _gaussians()
    v = fm.mccann_velocity(fm.gaussian_ot_map(m0, S0, m1, S1))
    u = lambda s, x: 2.0 * s * v(s * s, x)  # noqa: E731
    x0 = jax.random.normal(jax.random.key(2), (32, 3), jnp.float64)
    straight = fm.straightness(v, x0, **TIGHT)
    warped = fm.straightness(u, x0, **TIGHT)
    np.testing.assert_allclose(np.asarray(warped.x1), np.asarray(straight.x1), atol=1e-8)
    assert abs(float(warped.length_excess)) < 1e-8
    np.testing.assert_allclose(float(warped.value), float(straight.endpoint_cost) / 3,
                               rtol=1e-7)


def test_normalized_path_energy_formula():
    assert float(fm.normalized_path_energy(1.25, 1.0)) == pytest.approx(0.25, rel=1e-12)
