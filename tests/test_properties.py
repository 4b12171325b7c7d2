"""Property-based tests (hypothesis) of the closed forms on random Gaussian couplings.

Random dimension d in {1, 2, 3, 5}, a random SPD joint covariance of (X0, X1) (so the
cross-covariance is random too), random means and times. References, all independent of
fmjax's formulas:

* v_t(x) = E[dX_t/dt | X_t = x]: Gaussian conditioning of the joint law of
  (X_t, dX_t/dt) computed in NumPy from the 2d x 2d joint covariance (notes, Exercise 4);
* Exercise 1 transformation rules: the affine / shift / scale combinators applied to the
  velocity of (X0, X1) equal the (conditioning) velocity of the transformed Gaussian
  coupling, whose moments are computed in NumPy;
* the continuity equation: its residual is ~0 for (log p_t, v_t) (notes, "Continuity
  Equation"), for a Gaussian and a two-component mixture;
* change_path: the Gaussian velocity moved from one path to the other equals the
  conditioning velocity on the new path;
* Brenier: gaussian_ot_map's A is SPD and pushes N(m0, S0) to N(m1, S1) (A S0 A = S1,
  b = m1 - A m0), and gaussian_w2_squared equals the Bures formula with SciPy's sqrtm.

Functions are jitted once per (d, path); hypothesis is derandomized for CI stability.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

import fmjax as fm

SETTINGS = settings(deadline=None, max_examples=25, derandomize=True, database=None)
DIMS = [1, 2, 3, 5]
PATHS = {"linear": fm.Linear(), "trig": fm.Trigonometric()}
RESIDUAL_DIMS = [1, 3]  # the residual is jitted (autodiff is slow eagerly): fewer shapes


def _eager(f=None, **kw):
    """Plain closed-form evaluations run eagerly: faster than compiling 8 (d, path) shapes."""
    return f if f is not None else (lambda g: g)


# ----------------------------------------------------------------------------------------
# NumPy references
# ----------------------------------------------------------------------------------------
def np_coeffs(path: str, t: float):
    """(a, b, a', b') of the path at t, by hand (not through fmjax)."""
    if path == "linear":
        return 1.0 - t, t, -1.0, 1.0
    h = 0.5 * math.pi
    return math.cos(h * t), math.sin(h * t), -h * math.sin(h * t), h * math.cos(h * t)


def random_coupling(seed: int, d: int):
    """Means and a random SPD joint covariance [[S0, C^T], [C, S1]], C = Cov(X1, X0)."""
    rng = np.random.default_rng(seed)
    L = rng.normal(size=(2 * d, 2 * d))
    J = L @ L.T / (2 * d) + 0.2 * np.eye(2 * d)
    m0, m1 = rng.normal(size=d), rng.normal(size=d)
    x = rng.normal(size=d) * 1.5
    return m0, m1, J, x


def split_joint(J, d):
    return J[:d, :d], J[d:, d:], J[d:, :d]  # S0, S1, C = Cov(X1, X0)


def np_conditional_velocity(path: str, t: float, x, m0, m1, J):
    """E[dX_t/dt | X_t = x] for (X0, X1) ~ N((m0, m1), J): NumPy Gaussian conditioning."""
    d = m0.shape[0]
    a, b, da, db = np_coeffs(path, t)
    I = np.eye(d)
    P = np.hstack([a * I, b * I])      # X_t = P (X0, X1)
    Q = np.hstack([da * I, db * I])    # dX_t/dt = Q (X0, X1)
    m = np.concatenate([m0, m1])
    cov_xx = P @ J @ P.T
    cov_vx = Q @ J @ P.T
    return Q @ m + cov_vx @ np.linalg.solve(cov_xx, x - P @ m)


def rand_matrix(seed: int, d: int):
    """A well-conditioned invertible matrix (not symmetric)."""
    rng = np.random.default_rng(seed + 1)
    return np.eye(d) * 1.5 + 0.4 * rng.normal(size=(d, d)), rng.normal(size=d)


# ----------------------------------------------------------------------------------------
# Jitted fmjax functions (one compile per d and path)
# ----------------------------------------------------------------------------------------
def _gv(path, t, x, m0, S0, m1, S1, C):
    return fm.gaussian_velocity(t, x, mean0=m0, cov0=S0, mean1=m1, cov1=S1, cross_cov=C,
                                path=path)


@_eager
def gaussian_v(path, t, x, m0, S0, m1, S1, C):
    return _gv(path, t, x, m0, S0, m1, S1, C)


@_eager
def affine_rule(path, t, x, m0, S0, m1, S1, C, A, b):
    v = functools.partial(_gv, path, m0=m0, S0=S0, m1=m1, S1=S1, C=C)
    return fm.affine_velocity(lambda tt, xx: v(tt, xx), A, b, path=path)(t, x)


@_eager
def shift_rule(path, t, x, m0, S0, m1, S1, C, b):
    v = functools.partial(_gv, path, m0=m0, S0=S0, m1=m1, S1=S1, C=C)
    return fm.shift_target_velocity(lambda tt, xx: v(tt, xx), b, path=path)(t, x)


@_eager
def scale_rule(path, t, x, m0, S0, m1, S1, C, c):
    v = functools.partial(_gv, path, m0=m0, S0=S0, m1=m1, S1=S1, C=C)
    return fm.scale_target_velocity(lambda tt, xx: v(tt, xx), c, path=path)(t, x)


@functools.partial(jax.jit, static_argnums=0)
def gaussian_residual(path, t, x, m0, S0, m1, S1, C):
    kw = dict(mean0=m0, cov0=S0, mean1=m1, cov1=S1, cross_cov=C, path=path)
    return fm.continuity_residual(lambda tt, xx: fm.gaussian_log_density(tt, xx, **kw),
                                  lambda tt, xx: fm.gaussian_velocity(tt, xx, **kw), t, x)


@functools.partial(jax.jit, static_argnums=0)
def mixture_residual(path, t, x, w, M0, C0, M1, C1, CC):
    kw = dict(weights=w, means0=M0, covs0=C0, means1=M1, covs1=C1, cross_covs=CC, path=path)
    return fm.continuity_residual(lambda tt, xx: fm.mixture_log_density(tt, xx, **kw),
                                  lambda tt, xx: fm.mixture_velocity(tt, xx, **kw), t, x)


@jax.jit
def ot_map_parts(m0, S0, m1, S1):
    T = fm.gaussian_ot_map(m0, S0, m1, S1)
    return T.A, T.b, fm.gaussian_w2_squared(m0, S0, m1, S1)


def _close(got, want, tol=1e-7):
    got, want = np.asarray(got), np.asarray(want)
    scale = 1.0 + np.max(np.abs(want))
    err = np.max(np.abs(got - want))
    assert err <= tol * scale, f"max error {err:.3g} (scale {scale:.3g})"


common = dict(
    d=st.sampled_from(DIMS),
    seed=st.integers(0, 2**31 - 1),
    t=st.floats(0.0, 1.0),
    path=st.sampled_from(sorted(PATHS)),
)


def _with_dims(dims):
    return dict(common, d=st.sampled_from(dims))


# ----------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------
@SETTINGS
@given(**common)
def test_velocity_is_conditional_expectation(d, seed, t, path):
    m0, m1, J, x = random_coupling(seed, d)
    S0, S1, C = split_joint(J, d)
    got = gaussian_v(PATHS[path], t, x, m0, S0, m1, S1, C)
    assert got.dtype == jnp.float64
    _close(got, np_conditional_velocity(path, t, x, m0, m1, J))


@SETTINGS
@given(**common)
def test_exercise1_affine_rule(d, seed, t, path):
    """v for (A X0 + b, A X1 + b) = affine_velocity(v, A, b)."""
    m0, m1, J, x = random_coupling(seed, d)
    S0, S1, C = split_joint(J, d)
    A, b = rand_matrix(seed, d)
    BA = scipy.linalg.block_diag(A, A)
    J2 = BA @ J @ BA.T
    want = np_conditional_velocity(path, t, x, A @ m0 + b, A @ m1 + b, J2)
    got = affine_rule(PATHS[path], t, x, m0, S0, m1, S1, C, A, b)
    _close(got, want, 1e-6)


@SETTINGS
@given(**common)
def test_exercise1_shift_rule(d, seed, t, path):
    """v for (X0, X1 + b) = shift_target_velocity(v, b)."""
    m0, m1, J, x = random_coupling(seed, d)
    S0, S1, C = split_joint(J, d)
    _, b = rand_matrix(seed, d)
    want = np_conditional_velocity(path, t, x, m0, m1 + b, J)
    _close(shift_rule(PATHS[path], t, x, m0, S0, m1, S1, C, b), want, 1e-6)


@SETTINGS
@given(c=st.floats(0.3, 3.0), **common)
def test_exercise1_scale_rule(c, d, seed, t, path):
    """v for (X0, c X1) = scale_target_velocity(v, c)."""
    m0, m1, J, x = random_coupling(seed, d)
    S0, S1, C = split_joint(J, d)
    Dc = scipy.linalg.block_diag(np.eye(d), c * np.eye(d))
    want = np_conditional_velocity(path, t, x, m0, c * m1, Dc @ J @ Dc)
    _close(scale_rule(PATHS[path], t, x, m0, S0, m1, S1, C, np.float64(c)), want, 1e-6)


@SETTINGS
@given(**_with_dims(RESIDUAL_DIMS))
def test_continuity_residual_gaussian(d, seed, t, path):
    m0, m1, J, x = random_coupling(seed, d)
    S0, S1, C = split_joint(J, d)
    res = float(gaussian_residual(PATHS[path], t, x, m0, S0, m1, S1, C))
    # scale of the individual terms: |d/dt log p| + |div v| + |<v, grad log p>|, O(10)
    assert abs(res) < 1e-7, res


@SETTINGS
@given(w0=st.floats(0.05, 0.95), **_with_dims(RESIDUAL_DIMS))
def test_continuity_residual_mixture(w0, d, seed, t, path):
    parts = [random_coupling(seed + k, d) for k in range(2)]
    M0 = np.stack([p[0] for p in parts])
    M1 = np.stack([p[1] + 2.0 * (-1) ** k for k, p in enumerate(parts)])
    Js = [split_joint(p[2], d) for p in parts]
    C0, C1, CC = (np.stack([j[i] for j in Js]) for i in range(3))
    w = np.array([w0, 1.0 - w0])
    res = float(mixture_residual(PATHS[path], t, parts[0][3], w, M0, C0, M1, C1, CC))
    assert abs(res) < 1e-6, res


@SETTINGS
@given(d=st.sampled_from(DIMS), seed=st.integers(0, 2**31 - 1))
def test_gaussian_ot_map_pushes_forward_and_bures(d, seed):
    m0, m1, J, _ = random_coupling(seed, d)
    # independent marginals: take the diagonal blocks of two different random joints
    S0 = J[:d, :d]
    S1 = random_coupling(seed + 7, d)[2][d:, d:]
    A, b, w2sq = (np.asarray(v) for v in ot_map_parts(m0, S0, m1, S1))
    _close(A, A.T, 1e-9)
    assert np.linalg.eigvalsh(0.5 * (A + A.T)).min() > 0  # Brenier: gradient of a convex map
    _close(A @ S0 @ A.T, S1, 1e-8)
    _close(b, m1 - A @ m0, 1e-9)
    r0 = scipy.linalg.sqrtm(S0).real
    bures = np.trace(S0 + S1 - 2 * scipy.linalg.sqrtm(r0 @ S1 @ r0).real)
    _close(w2sq, np.sum((m0 - m1) ** 2) + bures, 1e-8)


@SETTINGS
@given(d=st.sampled_from(DIMS), seed=st.integers(0, 2**31 - 1), t=st.floats(0.0, 1.0),
       to_trig=st.booleans())
def test_change_path_is_conditional_expectation_on_new_path(d, seed, t, to_trig):
    """change_path of the Gaussian module from one path to the other equals E[dX'_t | X'_t]
    on the new path (NumPy conditioning of the joint law), at any time including the ends."""
    m0, m1, J, x = random_coupling(seed, d)
    S0, S1, C = split_joint(J, d)
    src, dst = ("linear", "trig") if to_trig else ("trig", "linear")
    v = fm.GaussianVelocity(m0, S0, m1, S1, C, path=PATHS[src])
    u = fm.change_path(v, trained_on=PATHS[src], to=PATHS[dst])
    _close(u(t, jnp.asarray(x)), np_conditional_velocity(dst, t, x, m0, m1, J), 1e-9)
