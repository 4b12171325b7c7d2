"""Tests of the ``Mix3toMix10`` benchmark pairs (``experiments.w2bench``).

Every test checks a number against an independent reference: a PyTorch forward pass written
here from the raw state dicts (skipped without torch or without ``/work/shared/w2bench``), the
NumPy legacy construction redone with other NumPy calls, exact mixture moments against Monte
Carlo with tolerances from the standard error, finite differences, and hand-computed metrics.
Only the committed ``.npz`` files are needed otherwise.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import w2bench as wb

SHARED = Path("/work/shared/w2bench")
SMALL = 64  # one batch size for the small checks, so that each pair compiles its maps once


@pytest.fixture(scope="module")
def pairs():
    cache = {}

    def get(dim):
        if dim not in cache:
            cache[dim] = wb.load_pair(dim)
        return cache[dim]

    return get


def _legacy_construction(dim):
    """The source mixture with NumPy's *global* legacy generator, via permutation/standard_normal."""
    saved = np.random.get_state()
    try:
        np.random.seed(0)
        perms = [np.random.permutation(3) for _ in range(dim)]  # what choice(.., replace=False) draws
        gauss = np.random.standard_normal((3, dim, dim))
    finally:
        np.random.set_state(saved)
    centers = (np.stack(perms, axis=1).astype(np.float32) - np.float32(1.0))
    maps = gauss.astype(np.float32)
    maps = maps / np.linalg.norm(maps, axis=2, keepdims=True)
    mean_sq = np.mean([float(c @ c) for c in centers])
    mult = np.float32(np.sqrt((mean_sq + dim * 0.4**2) / dim))
    return centers / mult, maps / mult


def _mixture_moments_loop(centers, maps, std=0.4):
    c = centers.astype(np.float64)
    a = maps.astype(np.float64)
    mean = sum(c[k] for k in range(3)) / 3
    cov = sum(std**2 * a[k] @ a[k].T + np.outer(c[k] - mean, c[k] - mean) for k in range(3)) / 3
    return mean, cov


# --------------------------------------------------------------------------------------
# The potentials against PyTorch (independent forward pass from the raw state dicts)
# --------------------------------------------------------------------------------------
def _torch_potential(torch, state, x):
    """psi_i(x) for a batch ``x`` (float64 torch tensor), read off the state-dict keys."""
    n_layers = len({k.split(".")[1] for k in state if k.startswith("quadratic_layers.")})

    def quad(i):
        u = state[f"quadratic_layers.{i}.quadratic_decomposed"].double()  # (D, rank, h)
        w = state[f"quadratic_layers.{i}.weight"].double()
        b = state[f"quadratic_layers.{i}.bias"].double()
        proj = torch.einsum("nd,drh->nrh", x, u)
        return (proj**2).sum(dim=1) + x @ w.T + b

    h = quad(0)
    for i in range(1, n_layers):
        h = torch.nn.functional.celu(h @ state[f"convex_layers.{i - 1}.weight"].double().T
                                     + quad(i))
    out = h @ state["final_layer.weight"].double()[0]
    return out + 0.5 * 1e-2 * (x**2).sum(dim=1)


@pytest.mark.parametrize("dim", [2, 16, 128])
def test_psi_and_grad_match_torch_state_dicts(pairs, dim):
    torch = pytest.importorskip("torch")
    paths = [SHARED / f"{dim}_v{i}.pt" for i in (1, 2)]
    if not all(p.exists() for p in paths):
        pytest.skip(f"{SHARED} has no state dicts for D={dim}")
    states = [torch.load(p, map_location="cpu", weights_only=True) for p in paths]
    pair = pairs(dim)
    # points of P (drawn with NumPy from the mixture) and wider Gaussian points
    rng = np.random.RandomState(1)
    centers, maps = np.asarray(pair.centers, np.float64), np.asarray(pair.maps, np.float64)
    idx = rng.randint(0, 3, size=48)
    x_src = 0.4 * np.einsum("nij,nj->ni", maps[idx], rng.standard_normal((48, dim))) + centers[idx]
    x = np.concatenate([x_src, 2.0 * rng.standard_normal((16, dim))], axis=0)

    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    val = sum(_torch_potential(torch, s, xt) for s in states)
    (grad,) = torch.autograd.grad(val.sum(), xt)
    val_ref, grad_ref = val.detach().numpy(), grad.numpy()

    jx = jnp.asarray(x)
    np.testing.assert_allclose(np.asarray(pair.psi(jx)), val_ref, rtol=1e-5,
                               atol=1e-5 * np.abs(val_ref).max())
    np.testing.assert_allclose(np.asarray(pair.grad_psi(jx)), grad_ref, rtol=1e-5,
                               atol=1e-5 * np.abs(grad_ref).max())
    # float32 end to end (the published precision) stays within float32 rounding
    g32 = np.asarray(pair.grad_psi(jx.astype(jnp.float32)))
    assert g32.dtype == np.float32
    rel = np.linalg.norm(g32 - grad_ref) / np.linalg.norm(grad_ref)
    assert rel < 1e-5
    # and the OT map is the standardised gradient of that same potential
    m, s = np.asarray(pair.grad_mean), float(pair.grad_scale)
    np.testing.assert_allclose(np.asarray(pair.ot_map(jx)), (grad_ref - m) / s, rtol=1e-5,
                               atol=1e-5 * np.abs(grad_ref).max() / s)


# --------------------------------------------------------------------------------------
# The source mixture
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [2, 16, 128])
def test_mixture_is_the_numpy_legacy_construction(dim):
    centers, maps = _legacy_construction(dim)
    with np.load(wb.data_path(dim)) as stored:  # what load_pair reads
        np.testing.assert_allclose(stored["centers"], centers, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(stored["maps"], maps, rtol=1e-5, atol=1e-6)
    c_mod, a_mod = wb.mixture_parameters(dim)
    np.testing.assert_allclose(c_mod, centers, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a_mod, maps, rtol=1e-5, atol=1e-6)
    # per coordinate the centres are a permutation of {-1, 0, 1} / mult
    mult = 1.0 / np.abs(centers).max()
    np.testing.assert_allclose(np.sort(centers * mult, axis=0),
                               np.tile([[-1.0], [0.0], [1.0]], (1, dim)), atol=1e-5)
    # standardised: the mean per-coordinate second moment of P is 1
    mean, cov = _mixture_moments_loop(centers, maps)
    assert abs((np.trace(cov) + mean @ mean) / dim - 1.0) < 1e-5
    np.testing.assert_allclose(mean, 0.0, atol=1e-6)


@pytest.mark.parametrize("dim", [16])
def test_source_moments_match_the_exact_mixture_moments(pairs, dim):
    pair = pairs(dim)
    mean, cov = _mixture_moments_loop(np.asarray(pair.centers), np.asarray(pair.maps))
    np.testing.assert_allclose(np.asarray(pair.mean_p), mean, atol=1e-12)
    np.testing.assert_allclose(np.asarray(pair.cov_p), cov, rtol=1e-10, atol=1e-12)

    n = 2**15
    x = np.asarray(pair.source(jax.random.key(11), n, jnp.float64))
    assert x.shape == (n, dim) and x.dtype == np.float64
    z_mean = np.abs(x.mean(axis=0) - mean) / np.sqrt(np.diag(cov) / n)
    assert z_mean.max() < 5.0
    xc = x - mean
    s_hat = xc.T @ xc / n                       # unbiased for cov (the mean is known)
    fourth = (xc**2).T @ (xc**2) / n            # E[(x_i x_j)^2]
    se = np.sqrt(np.maximum(fourth - s_hat**2, 0.0) / n)
    assert (np.abs(s_hat - cov) / se).max() < 5.5


def test_source_is_a_pure_jittable_sampler(pairs):
    pair = pairs(16)
    keys = jax.random.split(jax.random.key(5), 3)
    eager = pair.source(keys[1], 16)
    assert eager.dtype == jnp.float32 and eager.shape == (16, 16)

    @jax.jit
    def scanned(p, ks):  # the pair as a pytree argument, the sampler inside lax.scan
        return jax.lax.scan(lambda c, k: (c, p.source(k, 16)), 0, ks)[1]

    batches = scanned(pair, keys)
    assert batches.shape == (3, 16, 16) and batches.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(batches[1]), np.asarray(eager))
    assert not np.allclose(np.asarray(batches[0]), np.asarray(batches[1]))


# --------------------------------------------------------------------------------------
# The OT map
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [16])
def test_ot_map_jacobian_is_symmetric_and_positive_definite(pairs, dim):
    pair = pairs(dim)
    x = pair.source(jax.random.key(7), SMALL, jnp.float64)[:3]
    jac = jax.jit(jax.vmap(jax.jacfwd(lambda v: pair.ot_map(v[None])[0])))(x)
    jac = np.asarray(jac)
    # psi_1 + psi_2 is (2 * 1e-2)-strongly convex, so J = Hess psi / s >= (2e-2 / s) I
    floor = 2e-2 / float(pair.grad_scale)
    for j in jac:
        np.testing.assert_allclose(j, j.T, atol=1e-10 * np.abs(j).max())
        assert np.linalg.eigvalsh(0.5 * (j + j.T)).min() >= floor * (1 - 1e-9)


@pytest.mark.parametrize("dim", [16])
def test_ot_map_is_the_standardised_gradient_by_finite_differences(pairs, dim):
    pair = pairs(dim)
    x = pair.source(jax.random.key(9), SMALL, jnp.float64)
    k = SMALL // (2 * dim)  # points whose central differences fill one batch of SMALL
    xk = np.asarray(x[:k])
    m, s = np.asarray(pair.grad_mean), float(pair.grad_scale)
    h = 1e-5
    steps = np.concatenate([xk[:, None, :] + h * np.eye(dim), xk[:, None, :] - h * np.eye(dim)],
                           axis=1).reshape(-1, dim)
    vals = np.asarray(pair.psi(jnp.asarray(steps))).reshape(k, 2, dim)
    fd = (vals[:, 0] - vals[:, 1]) / (2 * h)
    expected = (fd - m) / s
    got = np.asarray(pair.ot_map(x))[:k]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("dim", [16])
def test_target_is_standardised_and_matches_the_stored_moments(pairs, dim):
    pair = pairs(dim)
    n, n0 = 2**15, wb.N_STANDARDISE
    y = np.asarray(pair.target(jax.random.key(13), n, jnp.float64))
    assert y.shape == (n, dim)
    # mean ~0 and mean per-coordinate variance ~1: (m, s) come from n0 points, the test from n
    sd = y.std(axis=0)
    assert (np.abs(y.mean(axis=0)) / (sd * np.sqrt(1 / n + 1 / n0))).max() < 5.0
    v = ((y - y.mean(axis=0)) ** 2).mean(axis=1)
    assert abs(v.mean() - 1.0) < 5.0 * v.std() * np.sqrt(1 / n + 1 / n0)
    # the stored moments of Q (2^18 points) agree with this fresh sample
    n1 = wb.N_MOMENTS
    mq, cq = np.asarray(pair.mean_q), np.asarray(pair.cov_q)
    assert (np.abs(y.mean(axis=0) - mq) / (sd * np.sqrt(1 / n + 1 / n1))).max() < 5.0
    yc = y - y.mean(axis=0)
    c_hat = yc.T @ yc / (n - 1)
    fourth = (yc**2).T @ (yc**2) / n
    se = np.sqrt(np.maximum(fourth - c_hat**2, 0.0) * (1 / n + 1 / n1))
    assert (np.abs(c_hat - cq) / se).max() < 5.5
    assert pair.var_q == pytest.approx(float(np.trace(cq)), rel=1e-12)


# --------------------------------------------------------------------------------------
# The linear baseline
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [16])
def test_linear_map_is_the_bures_map(pairs, dim):
    pair = pairs(dim)
    x0 = jnp.asarray(pair.mean_p)
    a = np.asarray(jax.jit(jax.jacfwd(lambda v: pair.linear_map(v[None])[0]))(x0))
    np.testing.assert_allclose(a, a.T, atol=1e-12 * np.abs(a).max())
    assert np.linalg.eigvalsh(a).min() > 0
    cov_p, cov_q = np.asarray(pair.cov_p), np.asarray(pair.cov_q)
    np.testing.assert_allclose(a @ cov_p @ a, cov_q, rtol=1e-8, atol=1e-9 * np.abs(cov_q).max())
    np.testing.assert_allclose(np.asarray(pair.linear_map(x0[None]))[0], np.asarray(pair.mean_q),
                               atol=1e-10)
    # affine: the map of a random point follows from the Jacobian
    x = np.asarray(pair.source(jax.random.key(2), SMALL, jnp.float64))
    np.testing.assert_allclose(np.asarray(pair.linear_map(jnp.asarray(x))),
                               np.asarray(pair.mean_q) + (x - np.asarray(pair.mean_p)) @ a.T,
                               rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------
# The metrics
# --------------------------------------------------------------------------------------
def test_l2_uvp_and_cosine_by_hand():
    mapped = jnp.array([[1.0, 0.0], [0.0, 0.0]])
    reference = jnp.array([[0.0, 0.0], [0.0, 2.0]])
    # E||T - T*||^2 = (1 + 4) / 2 = 2.5; / Var(Q) = 2; * 100
    assert float(wb.l2_uvp(mapped, reference, 2.0)) == pytest.approx(125.0, rel=1e-12)
    x = jnp.zeros((2, 2))
    u = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    v = jnp.array([[1.0, 0.0], [1.0, 0.0]])
    # E<u, v> = (1 + 0) / 2; E|u|^2 = 1; E|v|^2 = 1
    assert float(wb.cosine_similarity(u, v, x)) == pytest.approx(0.5, rel=1e-12)
    assert float(wb.cosine_similarity(3.0 * v, v, x)) == pytest.approx(1.0, rel=1e-12)
    assert float(wb.cosine_similarity(x, v, x)) == 0.0  # the identity map


def test_l2_uvp_and_cosine_on_a_pair(pairs):
    pair = pairs(16)
    x = pair.source(jax.random.key(17), SMALL, jnp.float64)
    t_star = np.asarray(pair.ot_map(x))
    assert float(pair.l2_uvp(pair.ot_map(x), x)) == 0.0
    xn = np.asarray(x)
    by_hand = 100 * np.mean(np.sum((xn - t_star) ** 2, axis=1)) / np.trace(np.asarray(pair.cov_q))
    assert float(pair.l2_uvp(x, x)) == pytest.approx(by_hand, rel=1e-12)
    assert float(pair.cosine(pair.ot_map(x), x)) == pytest.approx(1.0, abs=1e-12)
    assert float(pair.cosine(x, x)) == 0.0
    scores = pair.score(lambda v: v, jax.random.key(17), SMALL, jnp.float64)
    assert scores["l2_uvp"] == pytest.approx(by_hand, rel=1e-12)
    # a map half-way from the identity to T*: L2-UVP = 100 E||(x - T*) / 2||^2 / Var(Q)
    half = 0.5 * (x + pair.ot_map(x))
    assert float(pair.l2_uvp(half, x)) == pytest.approx(by_hand / 4, rel=1e-10)
    assert float(pair.cosine(half, x)) == pytest.approx(1.0, abs=1e-12)


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------
def test_bad_input_raises_value_error_naming_the_argument(pairs):
    for bad in (3, 256, 2.0, True, "8"):
        with pytest.raises(ValueError, match="`dim`"):
            wb.load_pair(bad)
    pair = pairs(2)
    with pytest.raises(ValueError, match=r"`x` must be a batch of shape \(n, 2\), got \(4, 3\)"):
        pair.ot_map(jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="`x`"):
        pair.ot_map(jnp.zeros(2))
    with pytest.raises(ValueError, match="`x`"):
        pair.linear_map(jnp.zeros((4, 2), jnp.int32))
    key = jax.random.key(0)
    for n in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="`n`"):
            pair.source(key, n)
    with pytest.raises(ValueError, match="`dtype`"):
        pair.source(key, 4, jnp.int32)
    with pytest.raises(ValueError, match="`mapped`"):
        wb.l2_uvp(jnp.zeros((4, 2)), jnp.zeros((5, 2)), 1.0)
    with pytest.raises(ValueError, match="`var_q`"):
        wb.l2_uvp(jnp.zeros((4, 2)), jnp.zeros((4, 2)), 0.0)
    with pytest.raises(ValueError, match="`mapped`"):
        pair.l2_uvp(jnp.zeros((4, 3)), jnp.zeros((4, 2)))
