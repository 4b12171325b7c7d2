"""Tests for fmjax.couplings against SciPy's linear_sum_assignment (independent exact solver)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from fmjax import couplings as cp


def sq_cost(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def batches(seed, n, d, dtype):
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal((n, d)).astype(dtype)
    x1 = (rng.standard_normal((n, d)) * 0.7 + 1.5).astype(dtype)
    return x0, x1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_permutation_equals_scipy(seed, dtype):
    x0, x1 = batches(seed, 24, 2, dtype)
    perm = np.asarray(jax.jit(cp.exact_ot_permutation)(x0, x1))
    assert perm.dtype == np.int32
    C = sq_cost(x0, x1)
    rows, cols = linear_sum_assignment(C)
    np.testing.assert_allclose(C[np.arange(24), perm].sum(), C[rows, cols].sum(), rtol=1e-12)
    np.testing.assert_array_equal(perm, cols)  # unique optimum for continuous random data


@pytest.mark.parametrize("solver", ["auction", "hungarian", "pot"])
def test_other_solvers_equal_scipy(solver):
    if solver == "pot":
        pytest.importorskip("ot")
    fn = jax.jit(lambda a, b: cp.exact_ot_permutation(a, b, solver=solver))
    for seed in range(3):
        x0, x1 = batches(10 + seed, 16, 3, np.float64)
        perm = np.asarray(fn(x0, x1))
        assert sorted(perm.tolist()) == list(range(16))
        C = sq_cost(x0, x1)
        rows, cols = linear_sum_assignment(C)
        np.testing.assert_allclose(C[np.arange(16), perm].sum(), C[rows, cols].sum(), rtol=1e-9)


def test_auction_near_optimality_bound_float32():
    # Bertsekas: the auction's total benefit is within n * eps_final of the optimum.
    x0, x1 = batches(5, 32, 2, np.float32)
    A = np.asarray(x0, np.float64) @ np.asarray(x1, np.float64).T
    eps = 1e-3
    perm, conv = jax.jit(lambda a: cp.auction_assignment(a, eps_final=eps))(jnp.asarray(A, jnp.float32))
    perm = np.asarray(perm)
    assert bool(conv) and sorted(perm.tolist()) == list(range(32))
    r, c = linear_sum_assignment(-A)
    assert A[r, c].sum() - A[np.arange(32), perm].sum() <= 32 * eps * 1.01 + 1e-4


def test_ot_coupling_reduces_pair_cost_and_is_permutation(dtype):
    key = jax.random.key(0)
    k0, k1 = jax.random.split(key)
    x0 = jax.random.normal(k0, (64, 2), dtype)
    x1 = jax.random.normal(k1, (64, 2), dtype) + 2.0
    a, b = jax.jit(lambda k, u, v: cp.ExactOT()(k, u, v))(key, x0, x1)
    assert a.dtype == dtype and b.dtype == dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(x0))
    # the paired x1 is a permutation of x1 (no duplicates)
    np.testing.assert_array_equal(np.sort(np.asarray(b), axis=0), np.sort(np.asarray(x1), axis=0))
    C = sq_cost(x0, x1)
    r, c = linear_sum_assignment(C)
    ot_cost = float(np.mean(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2, 1)))
    np.testing.assert_allclose(ot_cost, C[r, c].mean(), rtol=1e-5)
    assert ot_cost < 0.8 * float(np.mean(np.diag(C)))


def test_independent_is_identity():
    x0, x1 = batches(0, 8, 2, np.float32)
    a, b = cp.Independent()(jax.random.key(0), x0, x1)
    np.testing.assert_array_equal(np.asarray(a), x0)
    np.testing.assert_array_equal(np.asarray(b), x1)


def test_couple_inside_scan_and_vmap():
    x0, x1 = batches(3, 16, 2, np.float32)
    C = sq_cost(x0, x1)
    r, c = linear_sum_assignment(C)

    def body(carry, k):
        a, b = cp.ExactOT()(k, x0, x1)
        return carry + jnp.sum((a - b) ** 2), None

    total, _ = jax.jit(lambda ks: jax.lax.scan(body, jnp.float32(0), ks))(
        jax.random.split(jax.random.key(0), 3))
    np.testing.assert_allclose(float(total), 3 * C[r, c].sum(), rtol=1e-5)
    perms = jax.vmap(cp.exact_ot_permutation)(jnp.stack([x0, x1]), jnp.stack([x1, x0]))
    np.testing.assert_array_equal(np.asarray(perms[0]), c)
    _, c2 = linear_sum_assignment(C.T)
    np.testing.assert_array_equal(np.asarray(perms[1]), c2)


def test_sinkhorn_small_epsilon_close_to_exact(dtype):
    x0, x1 = batches(7, 16, 2, dtype)
    C = sq_cost(x0, x1)
    r, c = linear_sum_assignment(C)
    exact = C[r, c].mean()
    indep = C.mean()
    f = jax.jit(lambda k, u, v: cp.Sinkhorn(1e-3, max_iterations=10_000, threshold=1e-4)(
        k, u, v))
    a, b = f(jax.random.key(1), x0, x1)
    assert a.dtype == dtype and b.shape == (16, 2)
    cost = float(np.mean(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2, 1)))
    # epsilon = 1e-3 x mean cost: the entropic plan is within a few % of the exact cost
    assert cost <= exact * 1.05 + 1e-6
    assert cost < indep
    # large epsilon: pairs are close to independent draws
    g = jax.jit(lambda k, u, v: cp.Sinkhorn(100.0)(k, u, v))
    costs = [float(np.mean(np.sum((np.asarray(u, np.float64) - np.asarray(v, np.float64)) ** 2, 1)))
             for u, v in (g(k, x0, x1) for k in jax.random.split(jax.random.key(2), 20))]
    se = C.std() / np.sqrt(16 * 20)
    assert abs(np.mean(costs) - indep) < 6 * se + 0.02 * indep


def test_errors():
    x0, x1 = batches(0, 8, 2, np.float32)
    with pytest.raises(ValueError, match="x1"):
        cp.ExactOT()(jax.random.key(0), x0, x1[:5])
    with pytest.raises(ValueError, match="dtype"):
        cp.ExactOT()(jax.random.key(0), x0, x1.astype(np.float64))
    with pytest.raises(ValueError, match="floating"):
        cp.exact_ot_permutation(np.ones((3, 2), np.int32), np.ones((3, 2), np.int32))
    with pytest.raises(ValueError, match="coupling"):
        cp._resolve("nope")
    with pytest.raises(ValueError, match="solver"):
        cp.exact_ot_permutation(x0, x1, solver="nope")


def test_auction_iteration_cap_terminates_and_falls_back_to_exact():
    # Regression (fit with solver="auction" seemed to hang): the auction is bounded by
    # `max_iterations`; if it hits the cap it reports converged=False and still returns a
    # permutation, and the "ot" coupling then solves that batch exactly on the host
    # (checked against SciPy).  Heavy ties (duplicated target points) are the slow case.
    rng = np.random.default_rng(4)
    x0 = rng.standard_normal((32, 2)).astype(np.float32)
    x1 = np.repeat(rng.standard_normal((4, 2)).astype(np.float32), 8, axis=0)
    A = jnp.asarray(x0 @ x1.T)
    perm, conv = jax.jit(lambda a: cp.auction_assignment(a, max_iterations=3))(A)
    assert not bool(conv)
    assert sorted(np.asarray(perm).tolist()) == list(range(32))
    f = jax.jit(lambda u, v: cp.exact_ot_permutation(u, v, solver="auction", max_iterations=3))
    C = sq_cost(x0, x1)
    r, c = linear_sum_assignment(C)
    got = C[np.arange(32), np.asarray(f(x0, x1))].sum()
    np.testing.assert_allclose(got, C[r, c].sum(), rtol=1e-6)
    # all-zero benefit: eps stays > 0, so the price war ends (any permutation is optimal)
    perm, conv = jax.jit(lambda a: cp.auction_assignment(a, eps_final=0.0))(jnp.zeros((16, 16)))
    assert bool(conv) and sorted(np.asarray(perm).tolist()) == list(range(16))


def test_sinkhorn_non_convergence_is_reported_not_used():
    """A Sinkhorn plan stopped far from convergence raises instead of pairing the batch."""
    k0, k1 = jax.random.split(jax.random.key(3))
    x0 = jax.random.normal(k0, (32, 2))
    x1 = jax.random.normal(k1, (32, 2)) * 3.0 + 1.0
    # Reference: ott-jax itself reports converged=False for this setting.
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        geom = pointcloud.PointCloud(x0, x1, epsilon=1e-4, relative_epsilon="mean")
        out = sinkhorn.Sinkhorn(max_iterations=5)(linear_problem.LinearProblem(geom))
    assert not bool(out.converged)
    with pytest.raises(Exception, match="did not converge"):
        jax.block_until_ready(cp.Sinkhorn(1e-4, max_iterations=5)(k0, x0, x1))
    # ... and the same batch with the default epsilon converges and pairs every x0.
    a, b = cp.Sinkhorn()(k0, x0, x1)
    assert a.shape == b.shape == x0.shape and bool(jnp.all(jnp.isfinite(b)))
