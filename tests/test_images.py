"""Flow matching on images ``(n, H, W, C)`` and class-conditional flow matching (issue 16).

References: NumPy evaluations of the loss, closed-form flows of linear fields (the matrix
exponential), the analytic density of a Gaussian pushed by a linear field, SciPy's
``linear_sum_assignment`` per class, explicit Euler loops for guidance, the zero-output
initial U-Net (its first loss is E|x1 - x0|^2), and a 1-device run for a 2-device run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg
from flax import nnx
from scipy.optimize import linear_sum_assignment

import fmjax as fm

SHAPE = (4, 4, 2)  # small images: H, W, C
D = int(np.prod(SHAPE))


def _images(key, n, dtype=jnp.float64):
    return jax.random.normal(jax.random.key(key), (n, *SHAPE), dtype)


# --------------------------------------------------------------------------------------
# Loss, flows and likelihoods on (n, H, W, C)
# --------------------------------------------------------------------------------------
def test_loss_on_images_matches_numpy():
    """L = mean_i sum_{h,w,c} (v(t_i, x_t) - (x1 - x0))^2 with x_t = (1 - t) x0 + t x1
    (+ sigma noise), with and without labels, against NumPy."""
    n = 6
    x0, x1, noise = _images(0, n), _images(1, n), _images(2, n)
    t = jax.random.uniform(jax.random.key(3), (n,), jnp.float64)
    a = np.asarray(_images(4, 1)[0])
    b = np.asarray(_images(5, 1)[0])
    y = jnp.array([0, 1, 2, 0, 1, 2], jnp.int32)

    def v(t, x):
        return jnp.asarray(a) * x + t * jnp.asarray(b)

    def v_lab(t, x, y):
        return jnp.asarray(a) * x + (t + y.astype(x.dtype)) * jnp.asarray(b)

    X0, X1, T, E = (np.asarray(z) for z in (x0, x1, t, noise))
    Tb = T[:, None, None, None]
    for sigma in (0.0, 0.3):
        xt = (1 - Tb) * X0 + Tb * X1 + sigma * E
        ref = np.mean(np.sum((a * xt + Tb * b - (X1 - X0)) ** 2, axis=(1, 2, 3)))
        kw = dict(sigma=sigma, noise=noise if sigma else None)
        got = float(fm.flow_matching_loss(v, t, x0, x1, **kw))
        np.testing.assert_allclose(got, ref, rtol=1e-12)
        Yb = np.asarray(y, np.float64)[:, None, None, None]
        ref_lab = np.mean(np.sum((a * xt + (Tb + Yb) * b - (X1 - X0)) ** 2, axis=(1, 2, 3)))
        got_lab = float(fm.flow_matching_loss(v_lab, t, x0, x1, labels=y, **kw))
        np.testing.assert_allclose(got_lab, ref_lab, rtol=1e-12)


def test_integrate_linear_fields_on_images():
    """v(t, x) = A * x (pixelwise) flows to exp(A) * x0; v(t, x) = M vec(x) to
    expm(M) vec(x0); with labels, v(t, x, y) = (A + y) * x flows to exp(A + y) * x0."""
    n = 5
    x0 = _images(0, n)
    a = 0.5 * np.asarray(_images(1, 1)[0])
    m = 0.3 * np.asarray(jax.random.normal(jax.random.key(2), (D, D), jnp.float64)) / np.sqrt(D)
    kw = dict(solver="tsit5", rtol=1e-10, atol=1e-10)
    sol = fm.integrate(lambda t, x: jnp.asarray(a) * x, x0, **kw)
    np.testing.assert_allclose(np.asarray(sol.x), np.exp(a) * np.asarray(x0), rtol=1e-8)
    sol = fm.integrate(lambda t, x: (jnp.asarray(m) @ x.reshape(-1)).reshape(x.shape), x0,
                       **kw)
    ref = (np.asarray(x0).reshape(n, D) @ scipy.linalg.expm(m).T).reshape(n, *SHAPE)
    np.testing.assert_allclose(np.asarray(sol.x), ref, rtol=1e-8, atol=1e-10)
    y = jnp.array([0, 1, 2, 1, 0], jnp.int32)
    sol = fm.integrate(lambda t, x, y: (jnp.asarray(a) + y.astype(x.dtype)) * x, x0,
                       labels=y, **kw)
    ref = np.exp(a[None] + np.asarray(y, np.float64)[:, None, None, None]) * np.asarray(x0)
    np.testing.assert_allclose(np.asarray(sol.x), ref, rtol=1e-8)
    # Euler on the linear field: x_{k+1} = (1 + A / K) x_k exactly
    sol = fm.integrate(lambda t, x: jnp.asarray(a) * x, x0, solver="euler", steps=4)
    np.testing.assert_allclose(np.asarray(sol.x), (1 + a / 4) ** 4 * np.asarray(x0),
                               rtol=1e-12)


def _gauss_logpdf(x):
    return -0.5 * jnp.sum(x ** 2) - 0.5 * x.size * jnp.log(2 * jnp.pi)


def test_log_likelihood_of_a_gaussian_image_model():
    """v(t, x) = c * x (pixelwise c) pushes N(0, I) to N(0, diag(e^{2c})); v = M vec(x) to
    N(0, e^M e^{M^T}). Exact divergence: the analytic density to ODE accuracy. Hutchinson
    with Rademacher probes is exact for a diagonal Jacobian; for M its error is the probe
    noise of e^T M e, sd sqrt(sum_{i<j} (M_ij + M_ji)^2 / k), which bounds it."""
    n = 16
    c = 0.4 * np.asarray(_images(1, 1)[0])
    x1 = np.asarray(_images(0, n)) * np.exp(c)[None]  # points of the pushed law
    ref = (-0.5 * np.sum(x1 ** 2 * np.exp(-2 * c), axis=(1, 2, 3)) - np.sum(c)
           - 0.5 * D * np.log(2 * np.pi))
    v = lambda t, x: jnp.asarray(c) * x  # noqa: E731
    kw = dict(solver="tsit5", rtol=1e-9, atol=1e-9)
    hutch = fm.log_likelihood(v, jnp.asarray(x1), _gauss_logpdf, divergence="hutchinson",
                              key=jax.random.key(5), n_probes=2, **kw)
    np.testing.assert_allclose(np.asarray(hutch), ref, rtol=1e-7)

    m = 0.5 * np.asarray(jax.random.normal(jax.random.key(2), (D, D), jnp.float64)) / np.sqrt(D)
    em = scipy.linalg.expm(m)
    cov = em @ em.T
    x1 = (np.asarray(_images(3, n)).reshape(n, D) @ em.T).reshape(n, *SHAPE)
    _, logdet = np.linalg.slogdet(cov)
    flat = x1.reshape(n, D)
    ref = (-0.5 * np.sum(flat * np.linalg.solve(cov, flat.T).T, axis=1) - 0.5 * logdet
           - 0.5 * D * np.log(2 * np.pi))
    v = lambda t, x: (jnp.asarray(m) @ x.reshape(-1)).reshape(x.shape)  # noqa: E731
    exact = fm.log_likelihood(v, jnp.asarray(x1), _gauss_logpdf, **kw)
    np.testing.assert_allclose(np.asarray(exact), ref, rtol=1e-7)
    k = 8
    hutch = np.asarray(fm.log_likelihood(v, jnp.asarray(x1), _gauss_logpdf,
                                         divergence="hutchinson", key=jax.random.key(6),
                                         n_probes=k, **kw))
    iu = np.triu_indices(D, 1)
    sd = np.sqrt(np.sum((m + m.T)[iu] ** 2) / k)
    err = hutch - ref
    assert np.max(np.abs(err)) < 4.5 * sd, (np.max(np.abs(err)), sd)
    assert abs(np.mean(err)) < 4.0 * sd / np.sqrt(n), (np.mean(err), sd)
    assert np.std(err) > 0.2 * sd  # the estimate is noisy, not accidentally exact


# --------------------------------------------------------------------------------------
# The U-Net
# --------------------------------------------------------------------------------------
TINY = dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
            mid_attention=False, num_groups=4)


def _perturbed_unet(image_size, in_channels, num_classes, seed=0):
    """A U-Net with all parameters perturbed (a fresh one outputs exactly 0)."""
    model = fm.nn.UNet(image_size, in_channels, num_classes=num_classes, rngs=nnx.Rngs(seed),
                       **TINY)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)  # NumPy: no RNG compilation per parameter shape
    leaves = [jnp.asarray(np.asarray(p) + 0.1 * rng.standard_normal(p.shape).astype(p.dtype))
              for p in leaves]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves), rest)


def test_unet_shapes_time_label_and_null_path():
    """Output shape (n, H, W, C) for C = 3; the output moves with t and with y; the label
    enters only through its embedding row: copying row y' into row y makes v(., y) equal
    v(., y') exactly, and the "no label" call v(t, x) is the call with the null row K."""
    model = _perturbed_unet(8, 3, num_classes=4)
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 3), jnp.float32)
    y = jnp.array([0, 1, 2], jnp.int32)
    out = model(0.5, x, y)
    assert out.shape == (3, 8, 8, 3) and out.dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(out)))
    assert scale > 1e-2
    assert float(jnp.max(jnp.abs(model(0.2, x, y) - model(0.7, x, y)))) > 1e-3 * scale
    assert float(jnp.max(jnp.abs(model(0.5, x, y) - model(0.5, x, y + 1)))) > 1e-3 * scale
    assert model.null_label == 4
    np.testing.assert_array_equal(np.asarray(model(0.5, x)),
                                  np.asarray(model(0.5, x, jnp.full(3, 4, jnp.int32))))
    table = model.label_embedding[...]
    model.label_embedding[...] = table.at[2].set(table[4])  # row 2 := the null row
    np.testing.assert_array_equal(np.asarray(model(0.5, x, jnp.full(3, 2, jnp.int32))),
                                  np.asarray(model(0.5, x)))
    model.label_embedding[...] = table.at[1].set(table[3])
    np.testing.assert_array_equal(np.asarray(model(0.5, x, jnp.full(3, 1, jnp.int32))),
                                  np.asarray(model(0.5, x, jnp.full(3, 3, jnp.int32))))


# --------------------------------------------------------------------------------------
# Classifier-free guidance
# --------------------------------------------------------------------------------------
class _TableVelocity(eqx.Module):
    """v(t, x, y) = table[y] (a constant per class); ``null_label`` is the last row."""

    table: jax.Array
    null_label: int = eqx.field(static=True)

    def __call__(self, t, x, y=None):
        y = self.null_label if y is None else y
        return self.table[y]


def test_guidance_closed_form_and_w0_is_the_conditional_model():
    """With v(t, x, y) = m_y (constant), x(1) = x0 + (1 + w) m_y - w m_null exactly; w = 0
    is x0 + m_y whatever m_null is (the unconditional branch is not used)."""
    n = 6
    table = _images(7, 4)  # 3 classes + null
    x0 = _images(8, n)
    y = jnp.array([0, 1, 2, 2, 1, 0], jnp.int32)
    model = _TableVelocity(table, 3)
    T, X0, Y = np.asarray(table), np.asarray(x0), np.asarray(y)
    for w in (0.0, 0.5, 2.0):
        x = fm.sample(model, jax.random.key(0), n, sample_x0=x0, labels=y, guidance=w,
                      steps=3)
        np.testing.assert_allclose(np.asarray(x), X0 + (1 + w) * T[Y] - w * T[3], rtol=1e-12,
                                   atol=1e-12)
    other = _TableVelocity(table.at[3].set(1e3), 3)
    np.testing.assert_array_equal(
        np.asarray(fm.sample(other, jax.random.key(0), n, sample_x0=x0, labels=y, steps=3)),
        np.asarray(fm.sample(model, jax.random.key(0), n, sample_x0=x0, labels=y,
                             guidance=0.0, steps=3)))


@pytest.mark.slow
def test_guidance_on_a_unet_matches_an_euler_loop():
    """fm.sample(labels=y, guidance=w) on a U-Net equals a hand-written Euler loop of
    (1 + w) v(t, x, y) - w v(t, x, null); w = 0 is the loop of v(t, x, y)."""
    model = _perturbed_unet(8, 1, num_classes=3, seed=2)
    n, steps = 4, 3
    x0 = jax.random.normal(jax.random.key(1), (n, 8, 8, 1), jnp.float32)
    y = jnp.array([0, 1, 2, 1], jnp.int32)
    null = jnp.full(n, 3, jnp.int32)
    for w in (0.0, 1.5):
        x = x0
        for k in range(steps):
            t = jnp.float32(k / steps)
            x = x + (1.0 / steps) * ((1 + w) * model(t, x, y) - w * model(t, x, null))
        got = fm.sample(model, jax.random.key(0), n, sample_x0=x0, labels=y, guidance=w,
                        steps=steps)
        np.testing.assert_allclose(np.asarray(got), np.asarray(x), rtol=1e-5, atol=1e-5)
        if w == 0.0:
            x_w0 = np.asarray(got)
    assert np.max(np.abs(np.asarray(got) - x_w0)) > 1e-3  # guidance moves the samples


# --------------------------------------------------------------------------------------
# OT within classes
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["auto", "pot", "scipy", "hungarian", "auction"])
def test_labelwise_exact_ot_stays_in_class_and_equals_scipy_per_block(solver):
    """With labels, ExactOT pairs each x0 with an x1 of the same class, and within each
    class the pairing is SciPy's linear_sum_assignment on that class's block of the cost
    (exact solvers; the auction is eps-optimal: same classes, cost within n eps)."""
    n = 24
    x0, x1 = _images(10, n), _images(11, n)
    y = jnp.asarray(np.random.default_rng(0).integers(0, 3, n), jnp.int32)
    coupling = fm.couplings.ExactOT(solver, host_workers=0)
    a, b = coupling(jax.random.key(0), x0, x1, labels=y)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(x0))  # x0 keeps its order
    B, X1, Y = np.asarray(b).reshape(n, -1), np.asarray(x1).reshape(n, -1), np.asarray(y)
    # which row of x1 was paired with each x0
    perm = np.array([int(np.flatnonzero(np.all(X1 == row, axis=1))[0]) for row in B])
    assert sorted(perm.tolist()) == list(range(n))
    np.testing.assert_array_equal(Y[perm], Y)  # never crosses classes
    X0 = np.asarray(x0).reshape(n, -1)
    for c in np.unique(Y):
        idx = np.flatnonzero(Y == c)
        cost = ((X0[idx, None, :] - X1[None, idx, :]) ** 2).sum(-1)
        _, cols = linear_sum_assignment(cost)
        if solver == "auction":
            got = cost[np.arange(len(idx)), np.searchsorted(idx, perm[idx])].sum()
            assert got <= cost[np.arange(len(idx)), cols].sum() * (1 + 1e-3)
        else:
            np.testing.assert_array_equal(perm[idx], idx[cols])
    perm_fn = fm.exact_ot_permutation(x0, x1, solver=solver, labels=y)
    np.testing.assert_array_equal(Y[np.asarray(perm_fn)], Y)


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------
def _digits():
    x, y = fm.datasets.digits_images("train")
    return np.asarray(x, np.float32), np.asarray(y, np.int32)


def _normal8(key, n):
    return jax.random.normal(key, (n, 8, 8, 1), jnp.float32)


@pytest.mark.slow
def test_tiny_conditional_fit_lowers_the_loss():
    """A conditional U-Net (label dropout 0.2, OT within classes) trained by fm.fit on the
    8 x 8 digits: the first loss is that of the zero velocity, E|x1 - x0|^2 = 64 + E|x1|^2
    (the U-Net's output conv starts at zero), within batch noise; 120 steps (one per call, the
    CPU path for convolutions) lower it by a
    third; the model samples with guidance."""
    x, y = _digits()
    model = fm.nn.UNet(8, num_classes=10, rngs=nnx.Rngs(0), **TINY)
    batch = 32
    model, hist = fm.fit(jax.random.key(0), _normal8, x, labels=y, label_dropout=0.2,
                         coupling=fm.couplings.ExactOT(), steps=120, batch_size=batch,
                         model=model, optimizer=optax.adam(3e-3), steps_per_call=1,
                         progress=False)
    sq = np.sum(x.reshape(len(x), -1) ** 2, axis=1)
    ref = 64.0 + sq.mean()
    sd = np.sqrt((128.0 + sq.var()) / batch)  # var |x0|^2 = 2 d; the cross term is small
    assert abs(hist.loss[0] - ref) < 4 * sd, (hist.loss[0], ref, sd)
    assert hist.loss[-20:].mean() < (2 / 3) * hist.loss[:20].mean(), hist.loss
    s = fm.sample(model, jax.random.key(1), 10, labels=jnp.arange(10, dtype=jnp.int32),
                  guidance=1.0, steps=4)
    assert s.shape == (10, 8, 8, 1) and bool(jnp.all(jnp.isfinite(s)))


_TWO_DEVICES = textwrap.dedent("""
    import json, jax, jax.numpy as jnp, numpy as np, optax
    from flax import nnx
    import fmjax as fm
    x, y = fm.datasets.digits_images("train")
    tiny = dict(channels=4, channel_mult=(1,), attention_resolutions=(), mid_attention=False,
                num_groups=2)
    def src(key, n):
        return jax.random.normal(key, (n, 8, 8, 1), jnp.float32)
    out = {"n_devices": jax.device_count()}
    res = {}
    for k, devs in (("1", jax.devices()[:1]), ("2", jax.devices()[:2])):
        m, h = fm.fit(jax.random.key(3), src, x, labels=y, label_dropout=0.25,
                      coupling=fm.couplings.ExactOT(), steps=6, batch_size=16,
                      steps_per_call=3, optimizer=optax.adam(1e-2), ema_decay=0.0,
                      model=fm.nn.UNet(8, num_classes=10, rngs=nnx.Rngs(0), **tiny),
                      devices=devs, progress=False)
        res[k] = (h.loss, [np.asarray(a) for a in jax.tree.leaves(nnx.state(m, nnx.Param))])
    out["loss1"] = res["1"][0].tolist()
    out["loss2"] = res["2"][0].tolist()
    out["param_max_diff"] = max(float(np.max(np.abs(a - b)))
                                for a, b in zip(res["1"][1], res["2"][1], strict=True))
    out["param_scale"] = max(float(np.max(np.abs(a))) for a in res["1"][1])
    print("RESULT " + json.dumps(out), flush=True)
""")


@pytest.mark.slow
def test_two_device_conditional_fit_equals_one_device(tmp_path):
    """fm.fit of a conditional U-Net (labels, label dropout, OT within classes) on 2
    simulated CPU devices equals the 1-device run: the same batches, dropout draws and
    pairs; the loss curve and the parameters agree to float32 reduction order."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", _TWO_DEVICES], env=env, cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    assert res["n_devices"] == 2
    l1, l2 = np.array(res["loss1"]), np.array(res["loss2"])
    assert len(l1) == 6 and l1[-1] < l1[0]
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    assert res["param_max_diff"] < 1e-5 * max(1.0, res["param_scale"]), res
