"""Tests for fmjax.closed_form against independent references (seed Exercises 1, 4, 5).

References used: the notes' printed formulas evaluated literally in NumPy; Gaussian
conditioning of the joint law of (dX_t/dt, X_t) built from the 2d x 2d joint covariance
(a different route from the library's block formula); SciPy's multivariate normal;
Monte-Carlo conditional means with confidence intervals; closed-form continuity residuals;
central finite differences.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import fmjax as fm

QUAD = fm.affine_path(lambda t: 1 - t**2, lambda t: t**2, name="quadratic")
PATHS = {"linear": fm.Linear(), "trigonometric": fm.Trigonometric(), "quadratic": QUAD}


def coef(name, t):
    """(a, b, a', b') written out by hand (independent of fmjax.paths)."""
    h = math.pi / 2
    return {"linear": (1 - t, t, -1.0, 1.0),
            "trigonometric": (math.cos(h * t), math.sin(h * t), -h * math.sin(h * t),
                              h * math.cos(h * t)),
            "quadratic": (1 - t * t, t * t, -2 * t, 2 * t)}[name]


def random_joint(rng, d, ridge=0.3):
    """A valid joint covariance of (X0, X1) with non-zero cross blocks; returns the blocks
    (S0, S1, C = Cov(X1, X0) = Sigma_01) and the full matrix."""
    G = rng.normal(size=(2 * d, 2 * d))
    M = G @ G.T / (2 * d) + ridge * np.eye(2 * d)
    return M[:d, :d], M[d:, d:], M[d:, :d], M


def ref_velocity_and_logpdf(name, t, x, m0, m1, M):
    """E[dX_t | X_t = x] and log p_t(x) by conditioning the joint Gaussian of (dX_t, X_t)."""
    d = x.shape[0]
    a, b, da, db = coef(name, t)
    eye = np.eye(d)
    T = np.block([[da * eye, db * eye], [a * eye, b * eye]])
    mu = T @ np.concatenate([m0, m1])
    J = T @ M @ T.T
    J12, J22 = J[:d, d:], J[d:, d:]
    v = mu[:d] + J12 @ np.linalg.solve(J22, x - mu[d:])
    lp = multivariate_normal(mu[d:], J22).logpdf(x)
    return v, lp


def rel_err(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(got - ref) / (1 + np.linalg.norm(ref)))


TOL = {np.dtype("float32"): 2e-4, np.dtype("float64"): 1e-10}


# ----------------------------------------------------------------------------------------
# Exercise 4(a): the printed formula, literally
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [3, 16])
def test_exercise_4a_printed_formula(d, dtype):
    rng = np.random.default_rng(d)
    S0, S1, S01, M = random_joint(rng, d)
    S10 = M[:d, d:]
    assert np.abs(S01).max() > 0.05  # non-trivial cross blocks
    z = np.zeros(d)
    f = jax.jit(lambda t, x: fm.gaussian_velocity(t, x, mean0=z, cov0=S0, mean1=z, cov1=S1,
                                                  cross_cov=S01))
    for t in [0.0, 0.4, 0.95]:
        x = rng.normal(size=d)
        St = (1 - t) ** 2 * S0 + (1 - t) * t * (S01 + S10) + t**2 * S1
        ref = 1 / (1 - t) * (((1 - t) * S01 + t * S1) @ np.linalg.inv(St) - np.eye(d)) @ x
        got = f(jnp.asarray(t, dtype), jnp.asarray(x, dtype))
        assert got.dtype == dtype and got.shape == (d,)
        assert rel_err(got, ref) < 10 * TOL[dtype] * d


@pytest.mark.parametrize("name", list(PATHS))
def test_gaussian_general_path_means_and_cross(name, dtype):
    d = 3
    rng = np.random.default_rng(7)
    S0, S1, C, M = random_joint(rng, d)
    m0, m1 = rng.normal(size=d), rng.normal(size=d)
    kw = dict(mean0=m0, cov0=S0, mean1=m1, cov1=S1, cross_cov=C, path=PATHS[name])
    f = jax.jit(lambda t, x: (fm.gaussian_velocity(t, x, **kw), fm.gaussian_log_density(t, x, **kw)))
    for t in [0.0, 0.5, 1.0]:
        x = rng.normal(size=d)
        v_ref, lp_ref = ref_velocity_and_logpdf(name, t, x, m0, m1, M)
        v, lp = f(jnp.asarray(t, dtype), jnp.asarray(x, dtype))
        assert rel_err(v, v_ref) < 10 * TOL[dtype]
        assert abs(float(lp) - lp_ref) < 10 * TOL[dtype] * (1 + abs(lp_ref))


def test_gaussian_independent_default_equals_zero_cross():
    rng = np.random.default_rng(3)
    S0, S1, _, _ = random_joint(rng, 2)
    kw = dict(mean0=np.ones(2), cov0=S0, mean1=-np.ones(2), cov1=S1)
    x = jnp.array([0.3, -0.7])
    v_none = fm.gaussian_velocity(0.3, x, **kw)
    M = np.block([[S0, np.zeros((2, 2))], [np.zeros((2, 2)), S1]])
    v_ref, _ = ref_velocity_and_logpdf("linear", 0.3, np.asarray(x), np.ones(2), -np.ones(2), M)
    assert rel_err(v_none, v_ref) < 1e-12


# ----------------------------------------------------------------------------------------
# Exercise 5: mixtures
# ----------------------------------------------------------------------------------------
def make_mixture(rng, K, d):
    w = rng.uniform(0.5, 1.5, size=K)
    w = w / w.sum()
    blocks = [random_joint(rng, d, ridge=0.2) for _ in range(K)]
    return dict(weights=w, means0=rng.normal(size=(K, d)), covs0=np.stack([b[0] for b in blocks]),
                means1=2 * rng.normal(size=(K, d)), covs1=np.stack([b[1] for b in blocks]),
                cross_covs=np.stack([b[2] for b in blocks])), [b[3] for b in blocks]


def test_mixture_seed_formula_linear(dtype):
    # Exercise 5 literally: alpha^k from SciPy pdfs, w^k_t(x) = v^k_t(x - t m1 - (1-t) m0)
    # + m1 - m0 with v^k the printed Exercise 4(a) formula.
    K, d = 3, 2
    rng = np.random.default_rng(11)
    kw, _ = make_mixture(rng, K, d)
    f = jax.jit(lambda t, x: (fm.mixture_velocity(t, x, **kw), fm.mixture_log_density(t, x, **kw)))
    for t in [0.0, 0.35, 0.8]:
        x = rng.normal(size=d)
        dens, ws = [], []
        for k in range(K):
            S0, S1, S01 = kw["covs0"][k], kw["covs1"][k], kw["cross_covs"][k]
            m0, m1 = kw["means0"][k], kw["means1"][k]
            St = t**2 * S1 + (1 - t) ** 2 * S0 + t * (1 - t) * (S01.T + S01)
            mt = t * m1 + (1 - t) * m0
            dens.append(kw["weights"][k] * multivariate_normal(mt, St).pdf(x))
            y = x - mt
            vk = 1 / (1 - t) * (((1 - t) * S01 + t * S1) @ np.linalg.inv(St) - np.eye(d)) @ y
            ws.append(vk + m1 - m0)
        alpha = np.array(dens) / np.sum(dens)
        ref = alpha @ np.array(ws)
        v, lp = f(jnp.asarray(t, dtype), jnp.asarray(x, dtype))
        assert rel_err(v, ref) < 20 * TOL[dtype]
        assert abs(float(lp) - np.log(np.sum(dens))) < 20 * TOL[dtype] * 10


def test_mixture_general_path_vs_joint_conditioning():
    K, d = 3, 2
    rng = np.random.default_rng(5)
    kw, Ms = make_mixture(rng, K, d)
    for name in ["trigonometric", "quadratic"]:
        for t in [0.2, 0.7, 1.0]:
            x = rng.normal(size=d)
            vs, lps = [], []
            for k in range(K):
                v, lp = ref_velocity_and_logpdf(name, t, x, kw["means0"][k], kw["means1"][k], Ms[k])
                vs.append(v)
                lps.append(lp + np.log(kw["weights"][k]))
            r = np.exp(np.array(lps) - logsumexp(lps))
            got = fm.mixture_velocity(t, jnp.asarray(x), path=PATHS[name], **kw)
            assert rel_err(got, r @ np.array(vs)) < 1e-10
            lp = fm.mixture_log_density(t, jnp.asarray(x), path=PATHS[name], **kw)
            assert abs(float(lp) - logsumexp(lps)) < 1e-10


def test_mixture_zero_weight_component_drops_out():
    K, d = 3, 2
    kw, _ = make_mixture(np.random.default_rng(2), K, d)
    kw["weights"] = np.array([0.5, 0.5, 0.0])
    kw2 = {k: (v[:2] if k != "weights" else np.array([0.5, 0.5])) for k, v in kw.items()}
    x = jnp.array([0.1, 0.2])
    np.testing.assert_allclose(fm.mixture_velocity(0.4, x, **kw), fm.mixture_velocity(0.4, x, **kw2),
                               rtol=1e-12)


def dirac_ref(name, t, x, Y, w):
    """NumPy reference with explicit (K, d) differences (no expansion trick)."""
    a, b, da, db = coef(name, t)
    logits = np.log(w) - np.sum((x[None, :] - b * Y) ** 2, axis=1) / (2 * a * a)
    r = np.exp(logits - logsumexp(logits))
    vk = db * Y + (da / a) * (x[None, :] - b * Y)
    lp = logsumexp(logits) - 0.5 * x.shape[0] * np.log(2 * np.pi * a * a)
    return r @ vk, lp


@pytest.mark.parametrize("name", ["linear", "trigonometric"])
def test_dirac_vs_numpy_and_mixture_limit(name, dtype):
    K, d = 5, 2
    rng = np.random.default_rng(4)
    Y = rng.normal(size=(K, d)) * 2
    w = rng.uniform(0.5, 1.5, size=K)
    w /= w.sum()
    path = PATHS[name]
    t, x = 0.6, rng.normal(size=d)
    v_ref, lp_ref = dirac_ref(name, t, x, Y, w)
    tt, xx = jnp.asarray(t, dtype), jnp.asarray(x, dtype)
    v = fm.dirac_velocity(tt, xx, atoms=Y, weights=w, path=path)
    lp = fm.dirac_log_density(tt, xx, atoms=Y, weights=w, path=path)
    assert v.dtype == dtype and rel_err(v, v_ref) < 10 * TOL[dtype]
    assert abs(float(lp) - lp_ref) < 10 * TOL[dtype] * (1 + abs(lp_ref))
    # uniform weights by default
    vu_ref, _ = dirac_ref(name, t, x, Y, np.full(K, 1 / K))
    assert rel_err(fm.dirac_velocity(tt, xx, atoms=Y, path=path), vu_ref) < 10 * TOL[dtype]
    if dtype == np.float64:
        # Exercise 5's last question: Gaussian mixture with covs1 -> 0 tends to the Dirac field.
        errs = []
        for eps in [1e-2, 1e-4, 1e-6]:
            kw = dict(weights=w, means0=np.zeros((K, d)), covs0=np.stack([np.eye(d)] * K),
                      means1=Y, covs1=np.stack([eps * np.eye(d)] * K))
            errs.append(rel_err(fm.mixture_velocity(t, jnp.asarray(x), path=path, **kw), v))
            lpm = fm.mixture_log_density(t, jnp.asarray(x), path=path, **kw)
        assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-5
        assert abs(float(lpm) - float(lp)) < 1e-5 * (1 + abs(float(lp)))


def test_dirac_large_K_no_KxK():
    K, d, n = 10_000, 64, 8
    rng = np.random.default_rng(0)
    Y = rng.normal(size=(K, d)).astype(np.float32)
    X = (0.6 * Y[:n] + 0.4 * rng.normal(size=(n, d))).astype(np.float32)
    f = jax.vmap(lambda x, atoms: fm.dirac_velocity(0.6, x, atoms=atoms), in_axes=(0, None))
    jaxpr = str(jax.make_jaxpr(f)(X, Y))
    assert f"{K},{K}" not in jaxpr and f"{n},{K},{d}" not in jaxpr
    got = np.asarray(jax.jit(f)(X, Y))
    assert np.all(np.isfinite(got))
    for i in [0, n - 1]:
        ref, _ = dirac_ref("linear", 0.6, X[i].astype(np.float64), Y.astype(np.float64),
                           np.full(K, 1 / K))
        assert rel_err(got[i], ref) < 1e-3


# ----------------------------------------------------------------------------------------
# The definition itself: Monte-Carlo conditional means
# ----------------------------------------------------------------------------------------
def _mc_check(v_batch, xt, dxt, centers, h, z=4.5):
    """Within each window |X_t - c| < h: mean(dX_t - v(X_t)) is 0 in expectation iff v is
    E[dX_t | X_t] (tower property; exact for any window). Returns max |mean|/SE."""
    resid = dxt - np.asarray(v_batch(xt))
    worst = 0.0
    for c in centers:
        m = np.abs(xt[:, 0] - c) < h
        r = resid[m, 0]
        assert m.sum() > 2000
        worst = max(worst, abs(r.mean()) / (r.std(ddof=1) / math.sqrt(m.sum())))
    return worst


def test_monte_carlo_gaussian_trig():
    rng = np.random.default_rng(123)
    n, t = 300_000, 0.6
    m0, m1, s0, s1, rho = 0.5, -1.0, 1.0, 1.5, 0.6
    z0, z1 = rng.normal(size=n), rng.normal(size=n)
    x0 = m0 + s0 * z0
    x1 = m1 + s1 * (rho * z0 + math.sqrt(1 - rho**2) * z1)
    a, b, da, db = coef("trigonometric", t)
    xt, dxt = (a * x0 + b * x1)[:, None], (da * x0 + db * x1)[:, None]
    kw = dict(mean0=np.array([m0]), cov0=np.array([[s0**2]]), mean1=np.array([m1]),
              cov1=np.array([[s1**2]]), path=fm.Trigonometric())
    C = np.array([[rho * s0 * s1]])
    good = jax.jit(jax.vmap(lambda x: fm.gaussian_velocity(t, x, cross_cov=C, **kw)))
    wrong = jax.jit(jax.vmap(lambda x: fm.gaussian_velocity(t, x, **kw)))  # ignores rho
    centers = [-1.0, -0.2, 0.6]
    assert _mc_check(good, xt, dxt, centers, 0.1) < 4.5
    assert _mc_check(wrong, xt, dxt, centers, 0.1) > 10  # the test has power


def test_monte_carlo_mixture_linear():
    rng = np.random.default_rng(9)
    n, t = 300_000, 0.5
    kw = dict(weights=np.array([0.3, 0.7]), means0=np.array([[-1.0], [1.0]]),
              covs0=np.array([[[0.5]], [[0.8]]]), means1=np.array([[2.0], [-1.0]]),
              covs1=np.array([[[0.3]], [[0.6]]]), cross_covs=np.array([[[0.2]], [[-0.3]]]))
    k = rng.choice(2, p=kw["weights"], size=n)
    L = [np.linalg.cholesky(np.block([[kw["covs0"][j], kw["cross_covs"][j].T],
                                      [kw["cross_covs"][j], kw["covs1"][j]]])) for j in range(2)]
    z = rng.normal(size=(n, 2))
    pair = np.where(k[:, None] == 0, z @ L[0].T, z @ L[1].T)
    x0 = pair[:, 0] + kw["means0"][k, 0]
    x1 = pair[:, 1] + kw["means1"][k, 0]
    xt, dxt = ((1 - t) * x0 + t * x1)[:, None], (x1 - x0)[:, None]
    good = jax.jit(jax.vmap(lambda x: fm.mixture_velocity(t, x, **kw)))
    assert _mc_check(good, xt, dxt, [-0.5, 0.3, 1.0], 0.08) < 4.5
    bad_kw = dict(kw, cross_covs=None)
    wrong = jax.jit(jax.vmap(lambda x: fm.mixture_velocity(t, x, **bad_kw)))
    assert _mc_check(wrong, xt, dxt, [-0.5, 0.3, 1.0], 0.08) > 6


# ----------------------------------------------------------------------------------------
# Exercise 1: combinators vs the closed form of the transformed coupling
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,dtype", [(n, np.dtype(dt)) for n in PATHS for dt in ("float32", "float64")
                                        if not (n == "quadratic" and dt == "float32")])
def test_exercise_1_combinators(name, dtype):
    d = 3
    rng = np.random.default_rng(21)
    S0, S1, C, _ = random_joint(rng, d)
    m0, m1 = rng.normal(size=d), rng.normal(size=d)
    path = PATHS[name]
    base = dict(mean0=m0, cov0=S0, mean1=m1, cov1=S1, cross_cov=C, path=path)
    v = lambda t, x: fm.gaussian_velocity(t, x, **base)
    A = rng.normal(size=(d, d)) + 2 * np.eye(d)
    bvec, c = rng.normal(size=d), 1.7
    transformed = {
        "a": (fm.affine_velocity(v, A, bvec, path=path),
              dict(mean0=A @ m0 + bvec, cov0=A @ S0 @ A.T, mean1=A @ m1 + bvec, cov1=A @ S1 @ A.T,
                   cross_cov=A @ C @ A.T)),
        "b": (fm.shift_target_velocity(v, bvec, path=path), dict(base, mean1=m1 + bvec)),
        "c": (fm.scale_target_velocity(v, c, path=path),
              dict(base, mean1=c * m1, cov1=c * c * S1, cross_cov=c * C)),
    }
    for t in [0.0, 0.3, 0.8]:
        x = jnp.asarray(rng.normal(size=d), dtype)
        tt = jnp.asarray(t, dtype)
        for key, (vt, kw) in transformed.items():
            kw = dict(kw, path=path)
            ref = fm.gaussian_velocity(np.float64(t), jnp.asarray(x, np.float64), **kw)
            got = vt(tt, x)
            assert got.dtype == dtype
            assert rel_err(got, ref) < 50 * TOL[dtype] + (1e-7 if key == "c" else 0), (key, t)


def test_exercise_1c_seed_formula_linear():
    # The printed formula with a generic (non-Gaussian) velocity field.
    def v(t, x):
        return jnp.sin(3 * t) * x + jnp.tanh(x) * t

    c = 0.6
    vc = jax.jit(fm.scale_target_velocity(v, c))
    rng = np.random.default_rng(0)
    for t in [0.0, 0.5, 0.9, 1.0]:
        x = rng.normal(size=4)
        s = 1 - t + t * c
        r = t * c / s
        ref = c / s * np.asarray(v(r, jnp.asarray(x / s))) + (c - 1) / s * x
        np.testing.assert_allclose(vc(t, jnp.asarray(x)), ref, rtol=1e-12, atol=1e-12)


def test_exercise_1a_seed_formula_linear():
    v = lambda t, x: jnp.cos(t) * x**2
    A = jnp.array([[2.0, 1.0], [0.0, 1.0]])
    b = jnp.array([1.0, -1.0])
    va = fm.affine_velocity(v, A, b)
    x = jnp.array([0.3, 0.4])
    ref = A @ v(0.4, jnp.linalg.solve(A, x - b))
    np.testing.assert_allclose(va(0.4, x), ref, rtol=1e-12)


# ----------------------------------------------------------------------------------------
# Continuity equation
# ----------------------------------------------------------------------------------------
def _gauss_kw(path):
    rng = np.random.default_rng(8)
    S0, S1, C, _ = random_joint(rng, 2)
    return dict(mean0=np.array([0.5, -0.2]), cov0=S0, mean1=np.array([-1.0, 2.0]), cov1=S1,
                cross_cov=C, path=path)


@pytest.mark.parametrize("name", ["linear", "trigonometric"])
def test_continuity_residual_closed_forms(name):
    path = PATHS[name]
    gk = _gauss_kw(path)
    mk, _ = make_mixture(np.random.default_rng(6), 3, 2)
    atoms = np.array([[1.0, 0.0], [-1.0, 1.0], [0.0, -2.0]])
    pairs = [
        (lambda t, x: fm.gaussian_log_density(t, x, **gk), lambda t, x: fm.gaussian_velocity(t, x, **gk)),
        (lambda t, x: fm.mixture_log_density(t, x, path=path, **mk),
         lambda t, x: fm.mixture_velocity(t, x, path=path, **mk)),
        (lambda t, x: fm.dirac_log_density(t, x, atoms=atoms, path=path),
         lambda t, x: fm.dirac_velocity(t, x, atoms=atoms, path=path)),
    ]

    @jax.jit
    def residuals(ts, ts_open, xs):  # Gaussian and mixture up to t = 1; Dirac needs t < 1
        out = []
        for i, (lp, v) in enumerate(pairs):
            r = lambda t, x, lp=lp, v=v: fm.continuity_residual(lp, v, t, x)
            out.append(jax.vmap(r)(ts_open if i == 2 else ts, xs))
        return jnp.stack(out)

    xs = jnp.asarray(np.random.default_rng(1).normal(size=(4, 2)))
    res = residuals(jnp.array([0.0, 0.5, 0.9, 1.0]), jnp.array([0.0, 0.1, 0.5, 0.9]), xs)
    assert float(jnp.max(jnp.abs(res))) < 1e-9


def test_continuity_residual_rotation_and_wrong_fields():
    logp = lambda t, x: -0.5 * jnp.dot(x, x) - x.shape[0] * 0.5 * math.log(2 * math.pi)
    R = jnp.array([[0.0, -1.0, 0.5], [1.0, 0.0, 0.0], [-0.5, 0.0, 0.0]])  # skew: a rotation
    rot = lambda t, x: (1 + t) * (R @ x)
    res = jax.jit(jax.vmap(lambda x: (fm.continuity_residual(logp, rot, 0.3, x),
                                      fm.continuity_residual(logp, lambda t, y: y, 0.3, x))))
    xs = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3)))
    r_rot, r_wrong = res(xs)
    np.testing.assert_allclose(r_rot, 0.0, atol=1e-12)
    # Wrong field v = x on a static N(0, I): residual = div v + <v, -x> = d - |x|^2.
    np.testing.assert_allclose(r_wrong, 3 - np.sum(np.asarray(xs) ** 2, axis=1), atol=1e-12)
    assert float(jnp.max(jnp.abs(r_wrong))) > 1.0  # clearly non-zero: the test can fail
    # eager call (no jit) gives the same number
    assert abs(float(fm.continuity_residual(logp, rot, 0.3, xs[0]))) < 1e-12
    # A perturbed closed form is clearly detected.
    gk = _gauss_kw(fm.Linear())
    lp = lambda t, x: fm.gaussian_log_density(t, x, **gk)
    bad = lambda t, x: 1.1 * fm.gaussian_velocity(t, x, **gk)
    assert abs(float(fm.continuity_residual(lp, bad, 0.5, jnp.array([0.3, -0.4])))) > 1e-2


# ----------------------------------------------------------------------------------------
# Transformations: jit, vmap, grad
# ----------------------------------------------------------------------------------------
def _all_fields():
    gk = _gauss_kw(fm.Trigonometric())
    mk, _ = make_mixture(np.random.default_rng(6), 3, 2)
    atoms = np.array([[1.0, 0.0], [-1.0, 1.0], [0.0, -2.0]])
    return {
        "gaussian": (lambda t, x: fm.gaussian_velocity(t, x, **gk),
                     lambda t, x: fm.gaussian_log_density(t, x, **gk)),
        "mixture": (lambda t, x: fm.mixture_velocity(t, x, **mk),
                    lambda t, x: fm.mixture_log_density(t, x, **mk)),
        "dirac": (lambda t, x: fm.dirac_velocity(t, x, atoms=atoms),
                  lambda t, x: fm.dirac_log_density(t, x, atoms=atoms)),
    }


@pytest.mark.parametrize("kind", ["gaussian", "mixture", "dirac"])
def test_jit_vmap_grad(kind):
    v, lp = _all_fields()[kind]
    rng = np.random.default_rng(2)
    xs = jnp.asarray(rng.normal(size=(3, 2)))
    ts = jnp.array([0.2, 0.5, 0.7])
    loop_v = np.stack([np.asarray(v(float(t), x)) for t, x in zip(ts, xs, strict=True)])  # eager
    loop_lp = [float(lp(float(t), x)) for t, x in zip(ts, xs, strict=True)]
    jv, jlp = jax.jit(jax.vmap(lambda t, x: (v(t, x), lp(t, x))))(ts, xs)
    np.testing.assert_allclose(jv, loop_v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jlp, loop_lp, rtol=1e-12)
    u = jnp.array([0.7, -1.3])
    f = lambda t, x: jnp.dot(u, v(t, x)) + lp(t, x)
    gt, gx = jax.jit(jax.grad(f, argnums=(0, 1)))(ts[1], xs[1])
    h = 1e-6
    fj = jax.jit(f)
    fd_t = (fj(ts[1] + h, xs[1]) - fj(ts[1] - h, xs[1])) / (2 * h)
    fd_x = [(fj(ts[1], xs[1] + h * e) - fj(ts[1], xs[1] - h * e)) / (2 * h) for e in jnp.eye(2)]
    np.testing.assert_allclose(gt, fd_t, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gx, fd_x, rtol=1e-6, atol=1e-7)


def test_float32_near_and_at_one():
    f32 = np.float32
    gk = {k: v for k, v in _gauss_kw(fm.Linear()).items() if k != "path"}
    mk, _ = make_mixture(np.random.default_rng(6), 3, 2)
    rng = np.random.default_rng(0)
    atoms = rng.normal(size=(50, 2)).astype(f32)
    x = jnp.asarray(atoms[3] + 1e-3, f32)
    fields = [(fm.gaussian_velocity, fm.gaussian_log_density, gk),
              (fm.mixture_velocity, fm.mixture_log_density, mk),
              (fm.dirac_velocity, fm.dirac_log_density, dict(atoms=atoms))]
    for path in [fm.Linear(), fm.Trigonometric()]:
        def bundle(t, x, p=path):
            out = []
            for i, (vel, logd, kw) in enumerate(fields):
                if i == 2:  # the Dirac field is checked at t = 1 - 1e-7 only
                    t = jnp.minimum(t, f32(1 - 1e-7))
                f = lambda tt, xx, vel=vel, logd=logd, kw=kw: (jnp.sum(vel(tt, xx, path=p, **kw))
                                                             + logd(tt, xx, path=p, **kw))
                out.append((vel(t, x, path=p, **kw), logd(t, x, path=p, **kw),
                            jax.grad(f, argnums=(0, 1))(t, x)))
            return out

        fb = jax.jit(bundle)  # one compile, two times
        for t in [f32(1 - 1e-7), f32(1.0)]:
            for arr in jax.tree.leaves(fb(jnp.asarray(t), x)):
                assert arr.dtype == f32 and bool(jnp.all(jnp.isfinite(arr))), (path, t)
    # The Dirac field at t = 1 has no limit: it raises instead of returning inf/NaN.
    with pytest.raises(ValueError, match=r"a\(t\) > 0"):
        fm.dirac_velocity(f32(1.0), x, atoms=atoms)
    with pytest.raises(Exception, match=r"a\(t\) > 0"):
        jax.jit(lambda t: fm.dirac_velocity(t, x, atoms=atoms))(f32(1.0)).block_until_ready()
    # Gaussian at t = 1 equals the printed limit m1 - m0 + (S1 - C^T) S1^{-1}(x - m1).
    x64 = np.array([0.2, -0.3])
    ref = gk["mean1"] - gk["mean0"] + (gk["cov1"] - gk["cross_cov"].T) @ np.linalg.solve(
        gk["cov1"], x64 - gk["mean1"])
    assert rel_err(fm.gaussian_velocity(1.0, jnp.asarray(x64), **gk), ref) < 1e-12


# ----------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------
def test_bad_input():
    x = jnp.zeros(2)
    I, z = np.eye(2), np.zeros(2)
    g = dict(mean0=z, cov0=I, mean1=z, cov1=I)
    cases = [
        (dict(g, mean0=np.zeros(3)), r"`mean0` must have shape \(2,\), got shape \(3,\)"),
        (dict(g, cov0=np.array([[1.0, 0.5], [0.0, 1.0]])), r"`cov0` must be symmetric"),
        (dict(g, cov1=np.array([[1.0, 2.0], [2.0, 1.0]])), r"`cov1` must be positive definite"),
        (dict(g, cov1=np.eye(3)), r"`cov1` must have shape \(2, 2\)"),
        (dict(g, cross_cov=2 * I), r"`cross_cov` is inconsistent"),
        (dict(g, cross_cov=np.eye(3)), r"`cross_cov` has shape \(3, 3\)"),
        (dict(g, path="linear"), r"`path` must be"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            fm.gaussian_velocity(0.5, x, **kw)
    # A valid but degenerate coupling X1 = -X0: X_1/2 = 0 is a point mass, Sigma_t singular.
    with pytest.raises(ValueError, match=r"Sigma_t = Cov\(X_t\) .* not positive definite"):
        fm.gaussian_velocity(0.5, x, **dict(g, cross_cov=-I))
    with pytest.raises(ValueError, match=r"`t` must lie in \[0.0, 1.0\], got t=1.5"):
        fm.gaussian_velocity(1.5, x, **g)
    with pytest.raises(ValueError, match=r"`x` must have a floating-point dtype"):
        fm.gaussian_log_density(0.5, jnp.zeros(2, jnp.int32), **g)
    with pytest.raises(ValueError, match=r"`x` must have rank 1"):
        fm.gaussian_velocity(0.5, jnp.zeros((4, 2)), **g)
    covs = np.stack([I, I])
    m = dict(weights=np.array([0.5, 0.5]), means0=np.zeros((2, 2)), covs0=covs,
             means1=np.zeros((2, 2)), covs1=covs)
    for kw, msg in [(dict(m, weights=np.array([1.5, -0.5])), r"`weights` must be non-negative"),
                    (dict(m, weights=np.array([0.5, 0.6])), r"`weights` must sum to 1"),
                    (dict(m, weights=np.array([1.0])), r"`weights` must have shape \(2,\)"),
                    (dict(m, means1=np.zeros((3, 2))), r"`means1` has shape \(3, 2\)"),
                    (dict(m, covs1=np.stack([I, -I])), r"`covs1` must be positive definite")]:
        with pytest.raises(ValueError, match=msg):
            fm.mixture_velocity(0.5, x, **kw)
    with pytest.raises(ValueError, match=r"`atoms` must have shape \(n, 2\)"):
        fm.dirac_velocity(0.5, x, atoms=np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"`weights` must sum to 1"):
        fm.dirac_log_density(0.5, x, atoms=np.zeros((2, 2)), weights=np.array([0.2, 0.2]))
    v = lambda t, y: y
    with pytest.raises(ValueError, match=r"`A` must be invertible"):
        fm.affine_velocity(v, np.ones((2, 2)), z)
    with pytest.raises(ValueError, match=r"`A` must have shape"):
        fm.affine_velocity(v, np.eye(3), z)
    with pytest.raises(ValueError, match=r"`c` must be positive"):
        fm.scale_target_velocity(v, -1.0)
    with pytest.raises(ValueError, match=r"`v` must be a velocity callable"):
        fm.shift_target_velocity(np.ones(2), z)
    # Traced values: checked under jit with eqx.error_if.
    fj = jax.jit(lambda t, c1, w: (fm.gaussian_velocity(t, x, **dict(g, cov1=c1)),
                                   fm.mixture_velocity(t, x, **dict(m, weights=w))))
    good = (jnp.float64(0.5), jnp.asarray(I), jnp.array([0.5, 0.5]))
    jax.block_until_ready(fj(*good))
    with pytest.raises(Exception, match="must lie in"):
        jax.block_until_ready(fj(jnp.float64(-0.1), *good[1:]))
    with pytest.raises(Exception, match="not positive definite"):
        jax.block_until_ready(fj(good[0], jnp.asarray(-I), good[2]))
    with pytest.raises(Exception, match="non-negative and sum to 1"):
        jax.block_until_ready(fj(*good[:2], jnp.array([0.7, 0.7])))


def test_dtype_follows_x():
    x = jnp.zeros(2, jnp.float32)
    v = fm.gaussian_velocity(np.float64(0.5), x, mean0=np.zeros(2), cov0=np.eye(2),
                             mean1=np.ones(2), cov1=np.eye(2))
    assert v.dtype == jnp.float32
    # independent unit covariances at t = 1/2: Cov(dX_t, X_t) = (-S0 + S1)/2 = 0, so v = m1 - m0
    np.testing.assert_allclose(v, [1.0, 1.0], rtol=1e-6)


# ----------------------------------------------------------------------------------------
# The closed forms as Equinox modules (GaussianVelocity, MixtureVelocity, DiracVelocity)
# ----------------------------------------------------------------------------------------
def _modules_and_kwargs(path):
    """(module, function kwargs, velocity fn, log-density fn) for the three closed forms."""
    rng = np.random.default_rng(31)
    S0, S1, C, _ = random_joint(rng, 3)
    g = dict(mean0=rng.normal(size=3), cov0=S0, mean1=rng.normal(size=3), cov1=S1,
             cross_cov=C)
    m, _ = make_mixture(rng, 3, 3)
    dk = dict(atoms=2 * rng.normal(size=(6, 3)), weights=rng.dirichlet(np.ones(6)))
    return [
        (fm.GaussianVelocity(**g, path=path), g, fm.gaussian_velocity, fm.gaussian_log_density),
        (fm.MixtureVelocity(**m, path=path), m, fm.mixture_velocity, fm.mixture_log_density),
        (fm.DiracVelocity(**dk, path=path), dk, fm.dirac_velocity, fm.dirac_log_density),
    ]


@pytest.mark.parametrize("name", list(PATHS))
def test_modules_equal_functions(name):
    path = PATHS[name]
    rng = np.random.default_rng(32)
    for mod, kw, vel, logd in _modules_and_kwargs(path):
        assert mod.dim == 3 and mod.path == path
        for t in [0.0, 0.37, 0.81, 1.0]:
            if isinstance(mod, fm.DiracVelocity) and t == 1.0:
                continue  # no limit at t = 1 (checked in test_module_bad_parameters)
            x = jnp.asarray(rng.normal(size=3))
            v_f, lp_f = vel(t, x, path=path, **kw), logd(t, x, path=path, **kw)
            v_m, lp_m = mod(t, x), mod.log_density(t, x)
            np.testing.assert_allclose(v_m, v_f, rtol=1e-12, atol=1e-12)
            assert abs(float(lp_m) - float(lp_f)) <= 1e-12 * (1 + abs(float(lp_f)))
    # ... and the Gaussian module against the independent conditioning reference.
    rng = np.random.default_rng(33)
    S0, S1, C, M = random_joint(rng, 3)
    m0, m1 = rng.normal(size=3), rng.normal(size=3)
    mod = fm.GaussianVelocity(m0, S0, m1, S1, C, path=path)
    for t in [0.0, 0.6, 1.0]:
        x = rng.normal(size=3)
        v_ref, lp_ref = ref_velocity_and_logpdf(name, t, x, m0, m1, M)
        assert rel_err(mod(t, jnp.asarray(x)), v_ref) < 1e-10
        assert abs(float(mod.log_density(t, jnp.asarray(x))) - lp_ref) < 1e-10 * (1 + abs(lp_ref))


def test_modules_dtype_follows_x():
    for mod, _, _, _ in _modules_and_kwargs(fm.Trigonometric()):
        x32 = jnp.asarray([0.3, -0.2, 0.5], jnp.float32)
        v32, v64 = mod(0.4, x32), mod(0.4, x32.astype(jnp.float64))
        assert v32.dtype == jnp.float32 and mod.log_density(0.4, x32).dtype == jnp.float32
        assert v64.dtype == jnp.float64
        assert rel_err(v32, v64) < 1e-5


def test_modules_jit_vmap():
    rng = np.random.default_rng(34)
    ts = jnp.asarray([0.1, 0.5, 0.9])
    xs = jnp.asarray(rng.normal(size=(3, 3)))
    for mod, kw, vel, logd in _modules_and_kwargs(fm.Linear()):
        f = jax.jit(jax.vmap(lambda v, t, x: (v(t, x), v.log_density(t, x)),
                             in_axes=(None, 0, 0)))
        got_v, got_lp = f(mod, ts, xs)
        for i in range(3):
            np.testing.assert_allclose(got_v[i], vel(float(ts[i]), xs[i], **kw), rtol=1e-12,
                                       atol=1e-12)
            np.testing.assert_allclose(got_lp[i], logd(float(ts[i]), xs[i], **kw), rtol=1e-12)


def test_gaussian_module_gradients_analytic():
    """jax.grad w.r.t. x and equinox.filter_grad w.r.t. the module's arrays vs the analytic
    derivatives of v_t(x) = a'm0 + b'm1 + P S_t^{-1}(x - a m0 - b m1) and log N(x; m_t, S_t)."""
    import equinox as eqx

    rng = np.random.default_rng(35)
    S0, S1, C, _ = random_joint(rng, 3)
    m0, m1 = rng.normal(size=3), rng.normal(size=3)
    mod = fm.GaussianVelocity(m0, S0, m1, S1, C, path=fm.Trigonometric())
    t, x, u = 0.3, rng.normal(size=3), rng.normal(size=3)
    a, b, da, db = coef("trigonometric", t)
    St = a * a * S0 + b * b * S1 + a * b * (C + C.T)
    P = da * a * S0 + db * b * S1 + da * b * C.T + a * db * C
    Si = np.linalg.inv(St)
    r = x - a * m0 - b * m1

    def f(v, y):
        return jnp.dot(jnp.asarray(u), v(t, y)) + v.log_density(t, y)

    gx = jax.jit(jax.grad(f, argnums=1))(mod, jnp.asarray(x))
    np.testing.assert_allclose(gx, Si @ P.T @ u - Si @ r, rtol=1e-10, atol=1e-12)
    gm = eqx.filter_jit(eqx.filter_grad(f))(mod, jnp.asarray(x))
    assert isinstance(gm, fm.GaussianVelocity)
    np.testing.assert_allclose(gm.mean1, db * u - b * Si @ P.T @ u + b * Si @ r,
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gm.mean0, da * u - a * Si @ P.T @ u + a * Si @ r,
                               rtol=1e-10, atol=1e-12)
    # cov1: central differences of the function form (symmetric perturbations).
    E = np.zeros((3, 3))
    E[0, 1] = E[1, 0] = 1.0
    h = 1e-6
    fd = (float(f(fm.GaussianVelocity(m0, S0, m1, S1 + h * E, C, path=fm.Trigonometric()),
                  jnp.asarray(x)))
          - float(f(fm.GaussianVelocity(m0, S0, m1, S1 - h * E, C, path=fm.Trigonometric()),
                    jnp.asarray(x)))) / (2 * h)
    assert abs(float(jnp.sum(gm.cov1 * E)) - fd) < 1e-6 * (1 + abs(fd))


def test_module_bad_parameters():
    I, z = np.eye(2), np.zeros(2)
    cases = [
        (lambda: fm.GaussianVelocity(z, np.eye(3), z, I),
         r"`cov0` must have shape \(2, 2\).*`cov0` has d = 3 but `mean0` has d = 2"),
        (lambda: fm.GaussianVelocity(np.zeros(3), np.eye(3), z, I),
         r"`mean1` has d = 2 but `mean0` has d = 3"),
        (lambda: fm.GaussianVelocity(z, I, z, np.array([[1.0, 2.0], [2.0, 1.0]])),
         r"`cov1` must be positive definite"),
        (lambda: fm.GaussianVelocity(z, I, z, I, 2 * I), r"`cross_cov` is inconsistent"),
        (lambda: fm.GaussianVelocity(z, I, z, I, path="linear"), r"`path` must be"),
        (lambda: fm.MixtureVelocity(np.array([0.5, 0.6]), np.zeros((2, 2)), np.stack([I, I]),
                                    np.zeros((2, 2)), np.stack([I, I])),
         r"`weights` must sum to 1"),
        (lambda: fm.MixtureVelocity(np.array([1.0]), np.zeros((2, 2)), np.stack([I, I]),
                                    np.zeros((2, 2)), np.stack([I, I])),
         r"`weights` has K = 1 but `means0` has K = 2"),
        (lambda: fm.DiracVelocity(np.zeros((3, 2)), np.array([0.5, 0.5])),
         r"`weights` has K = 2 but `atoms` has K = 3"),
        (lambda: fm.DiracVelocity(np.zeros(2)), r"`atoms` must have rank 2"),
    ]
    for thunk, msg in cases:
        with pytest.raises(ValueError, match=msg):
            thunk()
    # calls: x of the wrong d names both arguments; t is checked eagerly and under jit
    g = fm.GaussianVelocity(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match=r"`x` has d = 4 but `mean0` has d = 3"):
        g(0.5, jnp.zeros(4))
    mix = fm.MixtureVelocity(np.ones(1), np.zeros((1, 3)), np.eye(3)[None], np.zeros((1, 3)),
                             np.eye(3)[None])
    with pytest.raises(ValueError, match=r"`x` has d = 2 but `means0` has d = 3"):
        mix(0.5, jnp.zeros(2))
    dirac = fm.DiracVelocity(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"`x` has d = 1 but `atoms` has d = 3"):
        dirac.log_density(0.5, jnp.zeros(1))
    with pytest.raises(ValueError, match=r"`t` must lie in \[0.0, 1.0\], got t=1.5"):
        g(1.5, jnp.zeros(3))
    with pytest.raises(Exception, match=r"`t` must lie in"):
        jax.block_until_ready(jax.jit(lambda t, x: g(t, x))(jnp.float64(-0.5), jnp.zeros(3)))
    with pytest.raises(ValueError, match=r"a\(t\) > 0"):
        dirac(1.0, jnp.zeros(3))
    # traced parameters: construction inside jit checks them with eqx.error_if
    bad_cov = jax.jit(lambda S: fm.GaussianVelocity(np.zeros(3), S, np.zeros(3), np.eye(3))(
        0.5, jnp.zeros(3)))
    np.testing.assert_allclose(bad_cov(jnp.eye(3)), 0.0, atol=1e-15)  # S0 = S1 = I at t = 1/2
    with pytest.raises(Exception, match=r"`cov0` is not positive definite"):
        jax.block_until_ready(bad_cov(-jnp.eye(3)))


def test_integrate_compiles_once_for_modules_of_the_same_shapes():
    """fm.integrate caches its compiled solve on the non-array part of the velocity: two
    modules with different arrays of the same shapes share it (no backend compilation on
    the second call); a closure over the function form recompiles (the check has power)."""
    import contextlib

    @contextlib.contextmanager
    def compiles():
        n = [0]

        def listener(event, duration, **kwargs):
            n[0] += event == "/jax/core/compile/backend_compile_duration"

        jax.monitoring.register_event_duration_secs_listener(listener)
        try:
            yield n
        finally:
            jax.monitoring.unregister_event_duration_listener(listener)

    rng = np.random.default_rng(36)
    x0 = jnp.asarray(rng.normal(size=(5, 3)))
    couplings = []
    for _ in range(3):
        S0, S1, C, _ = random_joint(rng, 3)
        couplings.append(dict(mean0=rng.normal(size=3), cov0=S0, mean1=rng.normal(size=3),
                              cov1=S1, cross_cov=C))
    tol = dict(rtol=1e-8, atol=1e-8)
    fm.integrate(fm.GaussianVelocity(**couplings[0]), x0, **tol)  # compiles
    with compiles() as n_module:
        outs = [fm.integrate(fm.GaussianVelocity(**kw), x0, **tol).x for kw in couplings[1:]]
    assert n_module[0] == 0
    with compiles() as n_closure:
        fm.integrate(lambda t, x: fm.gaussian_velocity(t, x, **couplings[2]), x0, **tol)
    assert n_closure[0] >= 1
    # the cached solve is not stale: each module's flow equals its own closure's flow
    for kw, out in zip(couplings[1:], outs, strict=True):
        ref = fm.integrate(lambda t, x, kw=kw: fm.gaussian_velocity(t, x, **kw), x0, **tol).x
        np.testing.assert_allclose(out, ref, atol=1e-9)
        assert float(jnp.max(jnp.abs(out - x0))) > 0.1
