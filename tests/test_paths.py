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
    # Reference: the formulas printed in the notes (and the quadratic path's own a, b).
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
    # Monte-Carlo: sample variance of interpolated pairs vs the notes' value, within a
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


# ----------------------------------------------------------------------------------------
# change_path: the velocity of the same coupling on another path
# ----------------------------------------------------------------------------------------
# A general polynomial schedule with b'a - ba' > 0 on [0, 1] (b'(0) = 2, a'(1) = -2).
POLY = fm.affine_path(lambda t: 1 - t**2, lambda t: t * (2 - t), name="poly")
S_GRID = [0.0, 1e-9, 0.05, 0.3, 0.5, 0.77, 0.95, 1 - 1e-9, 1.0]


def _random_joint(rng, d):
    G = rng.normal(size=(2 * d, 2 * d))
    M = G @ G.T / (2 * d) + 0.3 * np.eye(2 * d)
    return M[:d, :d], M[d:, d:], M[d:, :d]  # S0, S1, C = Cov(X1, X0)


def _closed_forms(path):
    """The three closed forms of one coupling each (cross-covariances included) on `path`."""
    rng = np.random.default_rng(40)
    d, K = 3, 3
    S0, S1, C = _random_joint(rng, d)
    g = fm.GaussianVelocity(rng.normal(size=d), S0, rng.normal(size=d), S1, C, path=path)
    blocks = [_random_joint(rng, d) for _ in range(K)]
    m = fm.MixtureVelocity(rng.dirichlet(np.ones(K)), rng.normal(size=(K, d)),
                           np.stack([b[0] for b in blocks]), 2 * rng.normal(size=(K, d)),
                           np.stack([b[1] for b in blocks]), np.stack([b[2] for b in blocks]),
                           path=path)
    dirac = fm.DiracVelocity(2 * rng.normal(size=(5, d)), rng.dirichlet(np.ones(5)), path=path)
    return {"gaussian": g, "mixture": m, "dirac": dirac}


@pytest.mark.parametrize("src,dst", [(fm.Linear(), fm.Trigonometric()),
                                     (fm.Trigonometric(), fm.Linear()),
                                     (fm.Linear(), POLY), (POLY, fm.Trigonometric())],
                         ids=lambda p: p.name)
def test_change_path_closed_forms(src, dst):
    """The closed-form velocity on `src`, changed to `dst`, equals the closed form on `dst`
    (the notes' conditional expectation on the new path), at s = 0 and s = 1 too."""
    rng = np.random.default_rng(41)
    on_src, on_dst = _closed_forms(src), _closed_forms(dst)
    for kind in on_src:
        changed = fm.change_path(on_src[kind], trained_on=src, to=dst)
        u = jax.jit(lambda s, x, v=changed: v(s, x))
        worst = 0.0
        for s in S_GRID:
            if kind == "dirac" and s == 1.0:
                continue  # the Dirac field has no limit at s = 1 (on either path)
            x = jnp.asarray(2 * rng.normal(size=3))
            got, ref = u(jnp.float64(s), x), on_dst[kind](s, x)
            worst = max(worst, float(jnp.max(jnp.abs(got - ref)) / (1 + jnp.max(jnp.abs(ref)))))
        # The Dirac field at s = 1 - 1e-9 is ~ x / a(r) with a(r) ~ 1e-9: round-off in r is
        # amplified by 1/a there (the notes' "no limit at t = 1").
        assert worst < (1e-6 if kind == "dirac" else 1e-10), (kind, worst)


def test_change_path_dirac_at_one_raises():
    v = _closed_forms(fm.Linear())["dirac"]
    u = fm.change_path(v, trained_on=fm.Linear(), to=fm.Trigonometric())
    with pytest.raises(ValueError, match=r"a\(t\) > 0"):
        u(1.0, jnp.zeros(3))


def _generic(t, x):
    """A non-linear, time-dependent field (no structure the time change could exploit)."""
    return jnp.sin(3 * t) * x + jnp.tanh(x[::-1]) * (1 + t**2) - 0.3 * x**2


@pytest.mark.parametrize("path", [fm.Linear(), fm.Trigonometric(), POLY], ids=lambda p: p.name)
def test_change_path_to_same_path_is_identity(path):
    u = fm.change_path(_generic, trained_on=path, to=path)
    rng = np.random.default_rng(42)
    for s in S_GRID:
        x = jnp.asarray(rng.normal(size=4))
        np.testing.assert_allclose(u(s, x), _generic(jnp.float64(s), x), rtol=1e-12, atol=1e-12)


def test_change_path_exercise_1c_formula():
    """Exercise 1(c) is the change from the linear path to (a, c b) = (1 - t, c t); its printed
    formula, evaluated literally, is the reference."""
    c = 1.8
    u = fm.change_path(_generic, trained_on=fm.Linear(),
                       to=fm.affine_path(lambda t: 1 - t, lambda t: c * t))
    rng = np.random.default_rng(43)
    for t in [0.0, 0.4, 0.9, 1.0]:
        x = rng.normal(size=4)
        s = 1 - t + t * c
        ref = c / s * np.asarray(_generic(jnp.float64(t * c / s), jnp.asarray(x / s))) \
            + (c - 1) / s * x
        np.testing.assert_allclose(u(t, jnp.asarray(x)), ref, rtol=1e-12, atol=1e-12)


def test_change_path_jit_vmap_grad():
    u = fm.change_path(_generic, trained_on=fm.Linear(), to=fm.Trigonometric())
    rng = np.random.default_rng(44)
    ss = jnp.asarray([0.0, 0.3, 0.8, 1.0])
    xs = jnp.asarray(rng.normal(size=(4, 4)))
    batched = jax.jit(jax.vmap(u))(ss, xs)
    for i in range(4):
        np.testing.assert_allclose(batched[i], u(float(ss[i]), xs[i]), rtol=1e-13, atol=1e-13)
    # grad w.r.t. x and s vs central differences (s inside (0, 1) for the s-derivative)
    w = jnp.asarray(rng.normal(size=4))
    f = jax.jit(lambda s, x: jnp.dot(w, u(s, x)))
    gs, gx = jax.jit(jax.grad(lambda s, x: jnp.dot(w, u(s, x)), argnums=(0, 1)))(0.4, xs[1])
    h = 1e-6
    fd_s = (f(0.4 + h, xs[1]) - f(0.4 - h, xs[1])) / (2 * h)
    fd_x = [(f(0.4, xs[1] + h * e) - f(0.4, xs[1] - h * e)) / (2 * h) for e in jnp.eye(4)]
    np.testing.assert_allclose(gs, fd_s, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(gx, fd_x, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("src,dst", [(fm.Linear(), fm.Trigonometric()),
                                     (fm.Trigonometric(), fm.Linear()),
                                     (POLY, fm.Linear())], ids=lambda p: p.name)
def test_change_path_endpoints_finite(src, dst, dtype):
    """Values and gradients (w.r.t. x and s) at s = 0 and s = 1 are finite, with
    jax_debug_nans on (no NaN anywhere in the computation, not only in the result)."""
    g = _closed_forms(src)["gaussian"]
    u = fm.change_path(g, trained_on=src, to=dst)
    x = jnp.asarray([0.3, -1.2, 0.7], dtype)
    with jax.debug_nans(True):
        for s in [0.0, 1.0]:
            s = jnp.asarray(s, dtype)
            val = u(s, x)
            gx = jax.grad(lambda y, s=s: jnp.sum(u(s, y)))(x)
            gs = jax.grad(lambda r: jnp.sum(u(r, x)))(s)
            assert val.dtype == dtype and gx.dtype == dtype
            for arr in (val, gx, gs):
                assert bool(jnp.all(jnp.isfinite(arr))), (s, arr)
            ref = _closed_forms(dst)["gaussian"](s, x)
            tol = 1e-4 if dtype == np.float32 else 1e-10
            np.testing.assert_allclose(val, ref, rtol=tol, atol=tol)


def test_change_path_is_a_pytree_of_the_original():
    g = _closed_forms(fm.Linear())["gaussian"]
    u = fm.change_path(g, trained_on=fm.Linear(), to=fm.Trigonometric())
    leaves_u, leaves_g = jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(g)
    assert len(leaves_u) == len(leaves_g) == 5
    assert all(a is b for a, b in zip(leaves_u, leaves_g, strict=True))
    assert u.dim == 3 and fm.change_path(_generic, trained_on=fm.Linear(), to=POLY).dim is None


def test_change_path_flows_agree():
    """If y solves dy/dt = v_t(y), z(s) = c(s) y(r(s)) solves dz/ds = u_s(z). Linear ->
    trigonometric: r = sin/(sin + cos), c = sin + cos, so z(1/2) = sqrt(2) y(1/2) and
    z(1) = y(1). Checked on a generic field with tight solvers."""
    x0 = jnp.asarray(np.random.default_rng(45).normal(size=(6, 4)))
    u = fm.change_path(_generic, trained_on=fm.Linear(), to=fm.Trigonometric())
    tol = dict(rtol=1e-11, atol=1e-11, saveat=jnp.asarray([0.0, 0.5, 1.0]))
    y = fm.integrate(_generic, x0, **tol).xs
    z = fm.integrate(u, x0, **tol).xs
    np.testing.assert_allclose(z[1], math.sqrt(2) * y[1], atol=1e-8)
    np.testing.assert_allclose(z[2], y[2], atol=1e-8)
    assert float(jnp.max(jnp.abs(z[1] - y[1]))) > 0.1  # the times really differ


def test_change_path_trained_net_samples_the_same_points():
    """A net trained on the linear path, changed to the trigonometric path: its flow from the
    same x0 lands on the same points (the flows differ only by a change of time and scale),
    up to the solver error; at s = 1/2 it is sqrt(2) times the linear flow at t = 1/2."""
    def sample_x0(key, n):
        return jax.random.normal(key, (n, 2))

    def sample_x1(key, n):
        return 0.5 * jax.random.normal(key, (n, 2)) + jnp.asarray([[2.0, -1.0]])

    model, _ = fm.fit(jax.random.key(0), sample_x0, sample_x1, steps=300, batch_size=256,
                      steps_per_call=300)
    u = fm.change_path(model, trained_on=fm.Linear(), to=fm.Trigonometric())
    x0 = jax.random.normal(jax.random.key(1), (64, 2), jnp.float64)
    ts = jnp.asarray([0.0, 0.5, 1.0])

    def flow(v, tol):
        return fm.integrate(v, x0, rtol=tol, atol=tol, saveat=ts).xs

    y, z = flow(model, 1e-10), flow(u, 1e-10)
    solver_err = max(float(jnp.max(jnp.abs(flow(model, 1e-7)[2] - y[2]))),
                     float(jnp.max(jnp.abs(flow(u, 1e-7)[2] - z[2]))))
    assert solver_err > 0  # the loose solves really differ from the tight ones
    # Reference scale: the error of the rtol = 1e-7 solves (~1e-5 here); the tight solves
    # agree to ~1e-7 (the net computes in float32), far inside a tenth of it.
    np.testing.assert_allclose(z[2], y[2], atol=max(solver_err / 10, 1e-9))
    np.testing.assert_allclose(z[1], math.sqrt(2) * y[1], atol=max(solver_err / 10, 1e-9))
    # the net learned the transport: its samples have the target's mean
    assert float(jnp.max(jnp.abs(jnp.mean(y[2], axis=0) - jnp.asarray([2.0, -1.0])))) < 0.3


def test_change_path_bad_input():
    quad = fm.affine_path(lambda t: 1 - t**2, lambda t: t**2)  # b'(0) = 0: r'(0) infinite
    cases = [
        (lambda: fm.change_path(3.0, trained_on=fm.Linear(), to=POLY), "`velocity` must be"),
        (lambda: fm.change_path(_generic, trained_on="linear", to=POLY), "`trained_on` must be"),
        (lambda: fm.change_path(_generic, trained_on=POLY, to=None), "`to` must be"),
        (lambda: fm.change_path(_generic, trained_on=quad, to=POLY),
         r"`trained_on` must have a strictly increasing signal-to-noise ratio.*t = 0\b"),
        (lambda: fm.change_path(_generic, trained_on=fm.affine_path(lambda t: 1 - t,
                                                                    lambda t: 0.5 + t / 2),
                                to=POLY),
         r"`trained_on` must run from X0 to X1 \(b\(0\) = 0 and a\(1\) = 0\), got b\(0\) = 0.5"),
        (lambda: fm.change_path(_generic, trained_on=POLY,
                                to=fm.affine_path(lambda t: 1 - 2 * t, lambda t: t)),
         r"`to` must keep a\(t\) >= 0.*t = 0.5"),
    ]
    for thunk, msg in cases:
        with pytest.raises(ValueError, match=msg):
            thunk()
    u = fm.change_path(_generic, trained_on=fm.Linear(), to=POLY)
    with pytest.raises(ValueError, match=r"`t` must lie in \[0.0, 1.0\], got t=1.5"):
        u(1.5, jnp.zeros(2))
    with pytest.raises(ValueError, match="`x` must have rank 1"):
        u(0.5, jnp.zeros((2, 2)))
    with pytest.raises(Exception, match="`t` must lie in"):
        jax.block_until_ready(jax.jit(lambda s: u(s, jnp.zeros(2)))(jnp.float64(-0.5)))
