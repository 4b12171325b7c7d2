"""Tests for fmjax.paths: coefficients, derivatives, target velocity, variances, snr_inverse."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fmjax as fm

QUAD = fm.affine_path(lambda t: 1 - t**2, lambda t: t**2, name="quadratic")
PATHS = [fm.Linear(), fm.Trigonometric(), QUAD]
TIMES = [0.0, 0.25, 0.5, 0.9, 1.0]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_coefficients_closed_form(path, dtype):
    # Reference: the formulas printed in the seed (and the quadratic path's own a, b).
    ref = {"linear": lambda t: (1 - t, t),
           "trigonometric": lambda t: (math.cos(math.pi * t / 2), math.sin(math.pi * t / 2)),
           "quadratic": lambda t: (1 - t**2, t**2)}[path.name]
    for t in TIMES:
        a, b = path.coefficients(jnp.asarray(t, dtype))
        assert a.dtype == dtype and b.dtype == dtype
        ra, rb = ref(t)
        np.testing.assert_allclose([float(a), float(b)], [ra, rb], atol=1e-6)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_target_velocity_is_jvp_of_interpolate(path, dtype):
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.normal(size=5), dtype)
    x1 = jnp.asarray(rng.normal(size=5), dtype)
    for t in [0.0, 0.3, 0.7, 1.0]:
        t = jnp.asarray(t, dtype)
        _, jvp = jax.jvp(lambda s: path.interpolate(s, x0, x1), (t,), (jnp.ones_like(t),))
        tv = path.target_velocity(t, x0, x1)
        assert tv.dtype == dtype
        np.testing.assert_allclose(tv, jvp, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_derivatives_central_differences(path):
    # f64 central differences of the coefficients: an independent check of a', b'.
    h = 1e-6
    for t in [0.1, 0.5, 0.9]:
        da, db = path.derivatives(jnp.float64(t))
        ap, bp = path.coefficients(jnp.float64(t + h))
        am, bm = path.coefficients(jnp.float64(t - h))
        np.testing.assert_allclose([float(da), float(db)],
                                   [float(ap - am) / (2 * h), float(bp - bm) / (2 * h)],
                                   rtol=1e-7, atol=1e-8)


def test_seed_variance_example_exact():
    # Seed, "Extensions": Var(X0) = Var(X1) = 1, independent -> Var(X_t) = a^2 + b^2.
    a, b = fm.Linear().coefficients(jnp.float64(0.5))
    assert float(a**2 + b**2) == 0.5
    for t in np.linspace(0, 1, 11):
        a, b = fm.Trigonometric().coefficients(jnp.float64(t))
        assert abs(float(a**2 + b**2) - 1.0) < 1e-15


@pytest.mark.parametrize("path,t,var", [(fm.Linear(), 0.5, 0.5), (fm.Trigonometric(), 0.5, 1.0),
                                        (fm.Trigonometric(), 0.2, 1.0)])
def test_seed_variance_example_sampled(path, t, var):
    # Monte-Carlo: sample variance of interpolated pairs vs the seed's value, within a
    # 5-sigma band (Var of the sample variance of a Gaussian is 2 var^2 / (n - 1)).
    n = 200_000
    rng = np.random.default_rng(1)
    x0, x1 = rng.normal(size=n), rng.normal(size=n)
    xt = np.asarray(path.interpolate(jnp.float64(t), jnp.asarray(x0), jnp.asarray(x1)))
    se = var * math.sqrt(2 / (n - 1))
    assert abs(xt.var(ddof=1) - var) < 5 * se


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_snr_inverse(path):
    for r in [0.0, 0.2, 0.5, 0.95]:
        a, b = path.coefficients(jnp.float64(r))
        got = path.snr_inverse(b / a)
        assert abs(float(got) - r) < 1e-12


def test_endpoints():
    x0, x1 = jnp.array([1.0, -2.0]), jnp.array([3.0, 4.0])
    for path in PATHS:
        np.testing.assert_allclose(path.interpolate(0.0, x0, x1), x0, atol=1e-7)
        np.testing.assert_allclose(path.interpolate(1.0, x0, x1), x1, atol=1e-6)


def test_paths_are_static_under_jit():
    f = jax.jit(lambda p, t, x0, x1: p.interpolate(t, x0, x1), static_argnums=0)
    x0, x1 = jnp.zeros(2), jnp.ones(2)
    np.testing.assert_allclose(f(fm.Linear(), 0.25, x0, x1), [0.25, 0.25])
    assert fm.Linear() == fm.Linear() and fm.Linear() != fm.Trigonometric()


def test_bad_input():
    x = jnp.zeros(2)
    with pytest.raises(ValueError, match=r"`t` must lie in \[0.0, 1.0\].*1.5"):
        fm.Linear().interpolate(1.5, x, x)
    with pytest.raises(ValueError, match=r"`x0` has shape \(2,\) but `x1` has shape \(3,\)"):
        fm.Linear().interpolate(0.5, x, jnp.zeros(3))
    with pytest.raises(ValueError, match="floating-point"):
        fm.Linear().target_velocity(0.5, jnp.zeros(2, jnp.int32), x)
    with pytest.raises(ValueError, match="scalar time"):
        fm.Linear().interpolate(jnp.zeros(2), x, x)
    with pytest.raises(ValueError, match="callables"):
        fm.affine_path(1.0, lambda t: t)
    with pytest.raises(Exception, match="must lie in"):
        jax.jit(lambda t: fm.Linear().interpolate(t, x, x))(jnp.float32(-0.5)).block_until_ready()
