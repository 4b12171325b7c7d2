"""Tests for fmjax.ot: Gaussian (Bures) OT, 1-D monotone maps, McCann, empirical W2.

Every number is checked against an independent reference: SciPy (``sqrtm``,
``linear_sum_assignment``, ``stats``, ``brentq``), ott-jax's own Gaussian W2, a theorem
(geodesic property, cyclical monotonicity, Dvoretzky-Kiefer-Wolfowitz, the Bures gradient
formula) or central finite differences.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import scipy.stats
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

import fmjax as fm

# Compiled once per shape/dtype: much cheaper than op-by-op eager dispatch on a busy CPU.
W2SQ = jax.jit(fm.gaussian_w2_squared)
W2 = jax.jit(fm.gaussian_w2)
BOTH = jax.jit(lambda *a: (fm.gaussian_w2_squared(*a), fm.gaussian_w2(*a)))
OTMAP = jax.jit(fm.gaussian_ot_map)


def _rand_cov(rng, d, cond=10.0):
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    w = np.exp(rng.uniform(0.0, np.log(cond), size=d))
    return (Q * w) @ Q.T


def _bures_sq_scipy(m0, S0, m1, S1):
    """Independent Bures formula with scipy.linalg.sqrtm (Schur method)."""
    R = np.real(scipy.linalg.sqrtm(S0))
    cross = np.real(scipy.linalg.sqrtm(R @ S1 @ R))
    return float(np.sum((m0 - m1) ** 2) + np.trace(S0) + np.trace(S1) - 2 * np.trace(cross))


def _lsa_w2_sq(x, y):
    C = cdist(np.asarray(x, np.float64), np.asarray(y, np.float64), "sqeuclidean")
    r, c = linear_sum_assignment(C)
    return float(C[r, c].mean()), c


def _gaussian_pair(seed, d):
    rng = np.random.default_rng(seed)
    return rng.normal(size=d), _rand_cov(rng, d), rng.normal(size=d), _rand_cov(rng, d)


# ---------------------------------------------------------------------------------------
# Gaussian W2 and map
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 5, 16])
def test_gaussian_w2_matches_scipy_sqrtm_bures(d):
    m0, S0, m1, S1 = _gaussian_pair(d, d)
    ref = _bures_sq_scipy(m0, S0, m1, S1)
    got_sq, got = BOTH(m0, S0, m1, S1)
    assert got.dtype == jnp.float64 and got.shape == ()
    np.testing.assert_allclose(float(got_sq), ref, rtol=1e-10)
    # gaussian_w2 is the square root (not W2^2, not W2^2/2).
    np.testing.assert_allclose(float(got), math.sqrt(ref), rtol=1e-10)


@pytest.mark.parametrize("d", [5])
def test_gaussian_w2_matches_ott_jax(d):
    from ott.tools.gaussian_mixture.gaussian import Gaussian

    m0, S0, m1, S1 = _gaussian_pair(100 + d, d)

    @jax.jit
    def ott_w2(m0, S0, m1, S1):
        with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
            g0 = Gaussian.from_mean_and_cov(m0, S0)
            return g0.w2_dist(Gaussian.from_mean_and_cov(m1, S1))  # documented as W2^2

    ref = float(ott_w2(*(jnp.asarray(a) for a in (m0, S0, m1, S1))))
    np.testing.assert_allclose(float(W2SQ(m0, S0, m1, S1)), ref, rtol=1e-9)


def test_gaussian_w2_float32_and_jit(dtype):
    m0, S0, m1, S1 = _gaussian_pair(7, 4)
    ref = _bures_sq_scipy(m0, S0, m1, S1)
    args = [jnp.asarray(a, dtype) for a in (m0, S0, m1, S1)]
    out = W2SQ(*args)
    assert out.dtype == dtype
    np.testing.assert_allclose(float(out), ref, rtol=1e-4 if dtype == np.float32 else 1e-10)
    T = OTMAP(*args)
    assert T.A.dtype == dtype and T.b.dtype == dtype


@pytest.mark.parametrize("d", [1, 5])
def test_gaussian_ot_map_pushes_forward_and_is_a_convex_gradient(d, dtype):
    m0, S0, m1, S1 = _gaussian_pair(20 + d, d)
    T = OTMAP(*(jnp.asarray(a, dtype) for a in (m0, S0, m1, S1)))
    A = np.asarray(T.A, np.float64)
    tol = 2e-4 if dtype == np.float32 else 1e-10
    # A S0 A^T = S1 (pushforward covariance), mean maps to mean.
    np.testing.assert_allclose(A @ S0 @ A.T, S1, rtol=tol, atol=tol * np.abs(S1).max())
    np.testing.assert_allclose(T(jnp.asarray(m0, dtype)), m1, rtol=tol, atol=tol)
    # Gradient of the convex phi(x) = x^T A x / 2 + b^T x: Jacobian symmetric and PD.
    J = np.asarray(jax.jacfwd(T)(jnp.asarray(m0, dtype)), np.float64)
    np.testing.assert_allclose(J, J.T, atol=tol)
    assert np.linalg.eigvalsh(0.5 * (J + J.T)).min() > 0
    # The closed form with scipy.linalg.sqrtm, computed independently.
    R = np.real(scipy.linalg.sqrtm(S0))
    Rinv = np.linalg.inv(R)
    A_ref = Rinv @ np.real(scipy.linalg.sqrtm(R @ S1 @ R)) @ Rinv
    np.testing.assert_allclose(A, A_ref, rtol=10 * tol, atol=10 * tol * np.abs(A_ref).max())


def test_gaussian_map_is_the_discrete_optimal_matching_on_samples():
    # Cyclical monotonicity: the graph of the gradient of a convex function is an optimal
    # plan, so SciPy's assignment between x and T(x) must be the identity, and then
    # W2^2(x_hat, T#x_hat) = mean |x - T x|^2, an unbiased estimate of the Bures W2^2.
    m0, S0, m1, S1 = _gaussian_pair(3, 2)
    rng = np.random.default_rng(30)
    x = rng.multivariate_normal(m0, S0, size=400)
    T = OTMAP(m0, S0, m1, S1)
    Tx = np.asarray(jax.vmap(T)(jnp.asarray(x)))
    w2sq, perm = _lsa_w2_sq(x, Tx)
    assert np.array_equal(perm, np.arange(400))
    sq = np.sum((x - Tx) ** 2, axis=1)
    np.testing.assert_allclose(w2sq, sq.mean(), rtol=1e-12)
    se = sq.std(ddof=1) / math.sqrt(sq.size)
    assert abs(sq.mean() - float(W2SQ(m0, S0, m1, S1))) < 4 * se


def test_gaussian_w2_vs_large_independent_samples():
    # Independent samples x ~ alpha, y ~ beta, exact W2 by SciPy. Triangle inequality:
    # |W2(x, y) - W2(x, T#x)| <= W2(T#x, y), the two-sample floor of beta (also by SciPy),
    # and W2(x, T#x)^2 = mean |x - T x|^2 estimates W2(alpha, beta)^2 within its CLT error.
    m0, S0, m1, S1 = _gaussian_pair(4, 2)
    n = 1000
    rng = np.random.default_rng(40)
    x = rng.multivariate_normal(m0, S0, size=n)
    y = rng.multivariate_normal(m1, S1, size=n)
    T = OTMAP(m0, S0, m1, S1)
    Tx = np.asarray(jax.vmap(T)(jnp.asarray(x)))
    w2_emp = math.sqrt(_lsa_w2_sq(x, y)[0])
    floor = math.sqrt(_lsa_w2_sq(Tx, y)[0])
    sq = np.sum((x - Tx) ** 2, axis=1)
    D = math.sqrt(sq.mean())
    se_D = sq.std(ddof=1) / math.sqrt(n) / (2 * D)
    exact = float(W2(m0, S0, m1, S1))
    assert abs(w2_emp - exact) <= floor + 4 * se_D, (w2_emp, exact, floor, se_D)
    assert floor < 0.25 * exact  # the bound is informative


def test_gaussian_w2_squared_gradient():
    m0, S0, m1, S1 = _gaussian_pair(5, 3)
    f = W2SQ
    gm0, gS0, gm1, gS1 = jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))(m0, S0, m1, S1)
    A = np.asarray(OTMAP(m0, S0, m1, S1).A)
    # Closed-form gradients: 2 (m0 - m1), I - A, I - A^{-1} (A the Bures map matrix).
    np.testing.assert_allclose(gm0, 2 * (m0 - m1), rtol=1e-9)
    np.testing.assert_allclose(gm1, 2 * (m1 - m0), rtol=1e-9)
    np.testing.assert_allclose(gS0, np.eye(3) - A, atol=1e-9)
    np.testing.assert_allclose(gS1, np.eye(3) - np.linalg.inv(A), atol=1e-9)
    # Central differences along a random symmetric direction.
    rng = np.random.default_rng(50)
    E = rng.normal(size=(3, 3))
    E = E + E.T
    h = 1e-5
    for k, G in ((1, gS0), (3, gS1)):
        plus, minus = [m0, S0, m1, S1], [m0, S0, m1, S1]
        plus[k], minus[k] = plus[k] + h * E, minus[k] - h * E
        fd = (float(f(*plus)) - float(f(*minus))) / (2 * h)
        np.testing.assert_allclose(float(np.sum(G * E)), fd, rtol=1e-6)


def test_gradient_finite_at_repeated_eigenvalues(dtype):
    # At S0 = S1 = I (all eigenvalues equal) the generic eigh derivative divides by zero;
    # the gradient in S0 is I - A = 0 and in the means 2 (m0 - m1).
    eye = jnp.eye(3, dtype=dtype)
    m0, m1 = jnp.zeros(3, dtype), jnp.ones(3, dtype)
    g = jax.jit(jax.grad(fm.gaussian_w2_squared, argnums=(0, 1, 3)))(m0, eye, m1, 2.0 * eye)
    np.testing.assert_allclose(g[0], -2 * np.ones(3), rtol=1e-5)
    # S1 = 2 I: A = sqrt(2) I, grad_S0 = (1 - sqrt 2) I, grad_S1 = (1 - 1/sqrt 2) I.
    np.testing.assert_allclose(g[1], (1 - math.sqrt(2)) * np.eye(3), atol=1e-5)
    np.testing.assert_allclose(g[2], (1 - 1 / math.sqrt(2)) * np.eye(3), atol=1e-5)


def test_exercise2_translation_and_scaling():
    # Seed, Exercise 2 (Gaussian case): the OT map of (X0, X1 + b) is T + b and of
    # (X0, c X1) is c T.
    m0, S0, m1, S1 = _gaussian_pair(6, 3)
    T = OTMAP(m0, S0, m1, S1)
    b, c = np.array([0.5, -2.0, 1.0]), 2.5
    Tb = OTMAP(m0, S0, m1 + b, S1)
    np.testing.assert_allclose(Tb.A, T.A, atol=1e-12)
    np.testing.assert_allclose(Tb.b, T.b + b, atol=1e-12)
    Tc = OTMAP(m0, S0, c * m1, c**2 * S1)
    np.testing.assert_allclose(Tc.A, c * T.A, rtol=1e-10)
    np.testing.assert_allclose(Tc.b, c * T.b, rtol=1e-10, atol=1e-12)
    # A rotation U of both ends conjugates the map (the cost is rotation invariant).
    U, _ = np.linalg.qr(np.random.default_rng(60).normal(size=(3, 3)))
    TU = OTMAP(U @ m0, U @ S0 @ U.T, U @ m1, U @ S1 @ U.T)
    np.testing.assert_allclose(TU.A, U @ np.asarray(T.A) @ U.T, atol=1e-10)


def test_affine_map_vmap_compose_inverse():
    rng = np.random.default_rng(70)
    T = fm.AffineMap(rng.normal(size=(3, 3)) + 3 * np.eye(3), rng.normal(size=3))
    S = fm.AffineMap(rng.normal(size=(3, 3)) + 3 * np.eye(3), rng.normal(size=3))
    x = rng.normal(size=(5, 3))
    ref = (x @ np.asarray(S.A).T + np.asarray(S.b)) @ np.asarray(T.A).T + np.asarray(T.b)
    np.testing.assert_allclose(jax.vmap(T.compose(S))(jnp.asarray(x)), ref, rtol=1e-12)
    np.testing.assert_allclose(jax.vmap(T.inverse().compose(T))(jnp.asarray(x)), x, atol=1e-12)
    # Output dtype follows the point.
    assert T(jnp.ones(3, jnp.float32)).dtype == jnp.float32


# ---------------------------------------------------------------------------------------
# 1-D monotone map
# ---------------------------------------------------------------------------------------

MIX_W, MIX_M, MIX_S = np.array([0.3, 0.7]), np.array([-2.0, 1.5]), np.array([0.5, 0.7])


def _mix_cdf_np(y):
    return float(np.sum(MIX_W * scipy.stats.norm.cdf((y - MIX_M) / MIX_S)))


def _mix_ppf_np(u):
    return scipy.optimize.brentq(lambda y: _mix_cdf_np(y) - u, -20, 20, xtol=1e-13)


def _mix_sample(rng, n):
    k = rng.choice(2, size=n, p=MIX_W)
    return rng.normal(MIX_M[k], MIX_S[k])


def _dkw(n, fail=1e-6):
    return math.sqrt(math.log(2 / fail) / (2 * n))


def test_monotone_map_from_cdfs_exponential(dtype):
    # N(0,1) -> Exp(1): T = F_exp^{-1}(Phi(x)), reference from scipy.stats.
    T = fm.monotone_map_1d(cdf0=jax.scipy.stats.norm.cdf, quantile1=lambda u: -jnp.log1p(-u))
    x = np.linspace(-2.5, 2.5, 11)
    out = T(jnp.asarray(x, dtype))
    assert out.dtype == dtype and out.shape == (11,)
    ref = scipy.stats.expon.ppf(scipy.stats.norm.cdf(x))
    np.testing.assert_allclose(out, ref, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("target", ["exponential", "mixture"])
def test_monotone_map_from_samples_within_dkw_bracket(target):
    # Dvoretzky-Kiefer-Wolfowitz: with probability >= 1 - 2e-6 both empirical CDFs are within
    # eps of the truth; with the interpolation error (<= 1/n) the sample map satisfies
    # F1^{-1}(Phi(x) - delta) <= T_hat(x) <= F1^{-1}(Phi(x) + delta).
    rng = np.random.default_rng(80)
    n = m = 20_000
    xs = rng.normal(size=n)
    if target == "exponential":
        ys, ppf = rng.exponential(size=m), scipy.stats.expon.ppf
    else:
        ys, ppf = _mix_sample(rng, m), _mix_ppf_np
    T = fm.monotone_map_1d(xs, ys)
    delta = _dkw(n) + _dkw(m) + 1 / n + 1 / m
    x = np.linspace(-1.5, 1.5, 13)
    out = np.asarray(T(jnp.asarray(x)))
    u = scipy.stats.norm.cdf(x)
    lo = np.array([ppf(v - delta) for v in u])
    hi = np.array([ppf(v + delta) for v in u])
    mid = np.array([ppf(v) for v in u])
    assert np.all(lo <= out) and np.all(out <= hi)
    # Typical error is much smaller than the worst-case bracket.
    assert np.max(np.abs(out - mid)) < 0.3 * np.max(hi - lo)


def test_monotone_map_mixture_from_cdf_and_quantile_callables():
    # Seed, Exercise 3 setting: N(0,1) -> Gaussian mixture, quantile by bisection in JAX,
    # reference by SciPy's brentq on the mixture CDF.
    w, mu, s = (jnp.asarray(a) for a in (MIX_W, MIX_M, MIX_S))

    def mix_cdf(y):
        shape = (1,) * y.ndim + (2,)
        z = (y[..., None] - mu.reshape(shape)) / s.reshape(shape)
        return jnp.sum(w.reshape(shape) * jax.scipy.stats.norm.cdf(z), axis=-1)

    def quantile(u):
        def body(_, lohi):
            lo, hi = lohi
            mid = 0.5 * (lo + hi)
            below = mix_cdf(mid) < u
            return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

        lo, hi = jax.lax.fori_loop(0, 80, body, (jnp.full_like(u, -20.0), jnp.full_like(u, 20.0)))
        return 0.5 * (lo + hi)

    T = fm.monotone_map_1d(cdf0=jax.scipy.stats.norm.cdf, quantile1=quantile)
    x = np.linspace(-2.0, 2.0, 9)
    out = jax.jit(lambda T, x: T(x))(T, jnp.asarray(x))
    ref = [_mix_ppf_np(scipy.stats.norm.cdf(v)) for v in x]
    np.testing.assert_allclose(out, ref, atol=1e-9)


def test_monotone_map_equal_sizes_is_the_discrete_assignment():
    # n == m: the sample map sends the i-th smallest x to the i-th smallest y, which is
    # SciPy's optimal assignment for the squared cost in 1-D.
    rng = np.random.default_rng(90)
    x, y = rng.normal(size=50), rng.gamma(2.0, size=50)
    T = fm.monotone_map_1d(x[:, None], y)
    _, perm = _lsa_w2_sq(x[:, None], y[:, None])
    np.testing.assert_allclose(T(jnp.asarray(x)), y[perm], atol=1e-12)


def test_monotone_map_equals_gaussian_map_in_1d():
    m0, s0, m1, s1 = 0.3, 1.7, -1.0, 0.6
    T = fm.monotone_map_1d(cdf0=lambda x: jax.scipy.stats.norm.cdf(x, m0, s0),
                           quantile1=lambda u: jax.scipy.stats.norm.ppf(u, m1, s1))
    G = OTMAP(jnp.array([m0]), jnp.array([[s0**2]]), jnp.array([m1]),
                           jnp.array([[s1**2]]))
    x = jnp.linspace(-3.0, 3.0, 7)
    np.testing.assert_allclose(jax.jit(T)(x), jax.vmap(G)(x[:, None])[:, 0], rtol=1e-10,
                               atol=1e-10)
    np.testing.assert_allclose(G.A[0, 0], s1 / s0, rtol=1e-12)


# ---------------------------------------------------------------------------------------
# McCann interpolation and velocity
# ---------------------------------------------------------------------------------------


def test_mccann_geodesic_property():
    # W2(mu_s, mu_t) = |s - t| W2(alpha, beta), mu_t = (T_t)# alpha Gaussian (seed, geodesic
    # space definition), and the map mu_s -> mu_t is T_t T_s^{-1}.
    m0, S0, m1, S1 = _gaussian_pair(8, 3)
    T = OTMAP(m0, S0, m1, S1)
    W = float(W2(m0, S0, m1, S1))

    def mu(t):
        Tt = fm.mccann_interpolation(T, t)
        return np.asarray(Tt(jnp.asarray(m0))), np.asarray(Tt.A) @ S0 @ np.asarray(Tt.A).T

    for s, t in [(0.0, 1.0), (0.0, 0.5), (0.25, 0.75), (0.3, 0.9), (1.0, 0.2)]:
        (ms, Ss), (mt, St) = mu(s), mu(t)
        np.testing.assert_allclose(float(W2(ms, Ss, mt, St)), abs(s - t) * W,
                                   rtol=1e-7)
        Ast = np.asarray(fm.mccann_interpolation(T, t).A) @ np.linalg.inv(
            np.asarray(fm.mccann_interpolation(T, s).A))
        np.testing.assert_allclose(OTMAP(ms, Ss, mt, St).A, Ast, atol=1e-8)
    m_end, S_end = mu(1.0)
    np.testing.assert_allclose(S_end, S1, atol=1e-10)
    np.testing.assert_allclose(m_end, m1, atol=1e-10)


def test_mccann_interpolation_callable_agrees_with_affine():
    rng = np.random.default_rng(100)
    T = fm.AffineMap(rng.normal(size=(2, 2)), rng.normal(size=2))
    x = jnp.asarray(rng.normal(size=2))
    for t in (0.0, 0.4, 1.0):
        f = fm.mccann_interpolation(lambda z: T.A @ z + T.b, t)
        np.testing.assert_allclose(f(x), fm.mccann_interpolation(T, t)(x), rtol=1e-12)
        np.testing.assert_allclose(f(x), t * T(x) + (1 - t) * x, rtol=1e-12)


@pytest.mark.parametrize("kind", ["gaussian_map", "nonsymmetric"])
def test_mccann_velocity_transports_along_straight_lines(kind, dtype):
    # The notes' identity v_t o T_t = T - Id, and T_t is the flow of v (dT_t/dt = v_t o T_t).
    rng = np.random.default_rng(110)
    d = 3
    if kind == "gaussian_map":
        T = OTMAP(*_gaussian_pair(11, d))
    else:  # eigenvalues 0.5, 1, 2 (positive, real), not symmetric
        T = fm.AffineMap(np.triu(rng.normal(size=(d, d)), 1) + np.diag([0.5, 1.0, 2.0]),
                         rng.normal(size=d))
    v = fm.mccann_velocity(T.A.astype(dtype), T.b.astype(dtype))
    x0 = jnp.asarray(rng.normal(size=(16, d)), dtype)
    disp = jax.vmap(T)(x0) - x0
    tol = 1e-4 if dtype == np.float32 else 1e-11
    vv = jax.jit(jax.vmap(v, in_axes=(None, 0)))
    for t in (0.0, 0.35, 0.8, 1.0):
        Tt = fm.mccann_interpolation(T, t)
        out = vv(jnp.asarray(t, dtype), jax.vmap(Tt)(x0))
        assert out.dtype == dtype
        np.testing.assert_allclose(out, disp, rtol=tol, atol=tol)


def test_mccann_velocity_rejects_singular_interpolation():
    with pytest.raises(ValueError, match="real eigenvalue"):
        fm.mccann_velocity(np.diag([1.0, -0.5]), np.zeros(2))
    with pytest.raises(ValueError, match="real eigenvalue"):
        fm.mccann_velocity(np.diag([1.0, 0.0]), np.zeros(2))
    # A rotation by 90 degrees has eigenvalues +-i: (1 - t) I + t A is never singular.
    v = fm.mccann_velocity(np.array([[0.0, -1.0], [1.0, 0.0]]), np.zeros(2))
    assert np.all(np.isfinite(np.asarray(v(0.5, jnp.ones(2)))))
    with pytest.raises(ValueError, match="t"):
        v(1.5, jnp.ones(2))


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------


def test_bad_inputs_raise_value_errors():
    m, S = np.zeros(2), np.eye(2)
    with pytest.raises(ValueError, match="cov1.*positive definite"):
        fm.gaussian_w2(m, S, m, np.diag([1.0, -1.0]))
    with pytest.raises(ValueError, match="cov0.*symmetric"):
        fm.gaussian_ot_map(m, np.array([[1.0, 0.5], [0.0, 1.0]]), m, S)
    with pytest.raises(ValueError, match="mean1"):
        fm.gaussian_w2(m, S, np.zeros(3), S)
    with pytest.raises(ValueError, match="cov1"):
        fm.gaussian_w2(m, S, m, np.eye(3))
    with pytest.raises(ValueError, match="mean0.*non-finite"):
        fm.gaussian_w2(np.array([np.nan, 0.0]), S, m, S)
    with pytest.raises(ValueError, match="floating"):
        fm.gaussian_w2(np.zeros(2, int), S, m, S)
    with pytest.raises(ValueError, match="empty"):
        fm.gaussian_w2(np.zeros(0), np.zeros((0, 0)), np.zeros(0), np.zeros((0, 0)))
    # Under jit a non-PD covariance is a runtime error, not a NaN.
    # (XLA surfaces a callback error as RuntimeError or ValueError depending on timing.)
    with pytest.raises((RuntimeError, ValueError), match="cov1` is not positive definite"):
        np.asarray(jax.jit(fm.gaussian_w2)(m, S, m, np.diag([1.0, -1.0])))

    with pytest.raises(ValueError, match="exactly one"):
        fm.monotone_map_1d(np.zeros(3), np.zeros(3), cdf0=jax.scipy.stats.norm.cdf)
    with pytest.raises(ValueError, match="exactly one"):
        fm.monotone_map_1d(np.zeros(3))
    with pytest.raises(ValueError, match="x_samples.*empty"):
        fm.monotone_map_1d(np.zeros(0), np.zeros(3))
    with pytest.raises(ValueError, match=r"\(n, 1\)"):
        fm.monotone_map_1d(np.zeros((3, 2)), np.zeros(3))

    with pytest.raises(ValueError, match="`b` must have shape"):
        fm.AffineMap(np.eye(2), np.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        fm.AffineMap(np.eye(2), np.zeros(2))(jnp.zeros(3))
    with pytest.raises(ValueError, match="`t` must lie"):
        fm.mccann_interpolation(fm.AffineMap(np.eye(2), np.zeros(2)), 1.5)
