"""Dtype preservation across the public API (issue 7).

float32 in -> float32 out and float64 in -> float64 out, for every public function that
returns floating arrays. For the per-point velocities the dtype of the point ``x`` decides,
whatever the dtype of the parameters (means, covariances, atoms, matrices are cast to it):
each case is run with parameters in the same dtype as ``x`` and in the other dtype. The
reference is the requested dtype; values are also compared with the float64 evaluation (to
float32 accuracy), so a cast that silently loses the computation would fail too. Last, a
model with bfloat16 parameters trains for 50 steps without a NaN and keeps its dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import fmjax as fm
from fmjax import datasets as fds
from fmjax import nn as fnn

OTHER = {np.dtype("float32"): np.dtype("float64"), np.dtype("float64"): np.dtype("float32")}
D = 2
X = np.array([0.3, -0.2])
M0, M1 = np.zeros(D), np.array([1.0, -0.5])
S0 = np.array([[1.0, 0.2], [0.2, 0.5]])
S1 = np.array([[0.7, -0.1], [-0.1, 1.3]])
CROSS = 0.3 * np.eye(D)
W = np.array([0.3, 0.7])
MS0, MS1 = np.zeros((2, D)), np.array([[1.0, 0.0], [-1.0, 0.5]])
CS0, CS1 = np.stack([S0, S1]), np.stack([S1, S0])
ATOMS = np.array([[1.0, 0.0], [-1.0, 0.5], [0.0, 2.0]])
A2 = np.array([[2.0, 0.5], [0.0, 1.0]])
B0 = np.array([[0.0, 0.0], [1.0, 0.5], [-0.3, 0.2], [0.4, -1.0]])
B1 = B0[::-1] + 1.0
KEY = jax.random.key(0)
FAST = dict(solver="euler", steps=2)


def vel(t, x):
    return -x


def logp(t, x):
    return -0.5 * jnp.dot(x, x)


# Each case: (x_dtype, param_dtype) -> output pytree. "point" cases take both dtypes;
# "all" cases use one dtype for every input.
def _c(a, dt):
    return np.asarray(a, dtype=dt)


POINT_CASES = {
    "gaussian_velocity": lambda xd, pd: fm.gaussian_velocity(
        0.4, _c(X, xd), mean0=_c(M0, pd), cov0=_c(S0, pd), mean1=_c(M1, pd), cov1=_c(S1, pd),
        cross_cov=_c(CROSS, pd)),
    "gaussian_log_density": lambda xd, pd: fm.gaussian_log_density(
        0.4, _c(X, xd), mean0=_c(M0, pd), cov0=_c(S0, pd), mean1=_c(M1, pd), cov1=_c(S1, pd)),
    "gaussian_velocity (trig path, t = 1)": lambda xd, pd: fm.gaussian_velocity(
        1.0, _c(X, xd), mean0=_c(M0, pd), cov0=_c(S0, pd), mean1=_c(M1, pd), cov1=_c(S1, pd),
        path=fm.Trigonometric()),
    "mixture_velocity": lambda xd, pd: fm.mixture_velocity(
        0.4, _c(X, xd), weights=_c(W, pd), means0=_c(MS0, pd), covs0=_c(CS0, pd),
        means1=_c(MS1, pd), covs1=_c(CS1, pd)),
    "mixture_log_density": lambda xd, pd: fm.mixture_log_density(
        0.4, _c(X, xd), weights=_c(W, pd), means0=_c(MS0, pd), covs0=_c(CS0, pd),
        means1=_c(MS1, pd), covs1=_c(CS1, pd)),
    "dirac_velocity": lambda xd, pd: fm.dirac_velocity(0.4, _c(X, xd), atoms=_c(ATOMS, pd)),
    "dirac_log_density": lambda xd, pd: fm.dirac_log_density(
        0.4, _c(X, xd), atoms=_c(ATOMS, pd), weights=_c([0.2, 0.3, 0.5], pd)),
    "GaussianVelocity.__call__": lambda xd, pd: fm.GaussianVelocity(
        _c(M0, pd), _c(S0, pd), _c(M1, pd), _c(S1, pd), _c(CROSS, pd))(0.4, _c(X, xd)),
    "GaussianVelocity.log_density": lambda xd, pd: fm.GaussianVelocity(
        _c(M0, pd), _c(S0, pd), _c(M1, pd), _c(S1, pd),
        path=fm.Trigonometric()).log_density(1.0, _c(X, xd)),
    "MixtureVelocity.__call__": lambda xd, pd: fm.MixtureVelocity(
        _c(W, pd), _c(MS0, pd), _c(CS0, pd), _c(MS1, pd), _c(CS1, pd))(0.4, _c(X, xd)),
    "MixtureVelocity.log_density": lambda xd, pd: fm.MixtureVelocity(
        _c(W, pd), _c(MS0, pd), _c(CS0, pd), _c(MS1, pd), _c(CS1, pd)).log_density(
        0.4, _c(X, xd)),
    "DiracVelocity.__call__": lambda xd, pd: fm.DiracVelocity(_c(ATOMS, pd))(0.4, _c(X, xd)),
    "DiracVelocity.log_density": lambda xd, pd: fm.DiracVelocity(
        _c(ATOMS, pd), _c([0.2, 0.3, 0.5], pd)).log_density(0.4, _c(X, xd)),
    "change_path (linear -> trig, s = 0.4 and 1)": lambda xd, pd: [
        fm.change_path(fm.GaussianVelocity(_c(M0, pd), _c(S0, pd), _c(M1, pd), _c(S1, pd)),
                       trained_on=fm.Linear(), to=fm.Trigonometric())(s, _c(X, xd))
        for s in (0.4, 1.0)],
    "affine_velocity": lambda xd, pd: fm.affine_velocity(vel, _c(A2, pd), _c(M1, pd))(
        0.4, _c(X, xd)),
    "shift_target_velocity": lambda xd, pd: fm.shift_target_velocity(vel, _c(M1, pd))(
        0.4, _c(X, xd)),
    "scale_target_velocity": lambda xd, pd: fm.scale_target_velocity(vel, _c(2.0, pd))(
        0.4, _c(X, xd)),
    "scale_target_velocity (trig path)": lambda xd, pd: fm.scale_target_velocity(
        vel, _c(2.0, pd), path=fm.Trigonometric())(0.4, _c(X, xd)),
    "continuity_residual": lambda xd, pd: fm.continuity_residual(logp, vel, 0.4, _c(X, xd)),
    "AffineMap.__call__": lambda xd, pd: fm.AffineMap(_c(A2, pd), _c(M1, pd))(_c(X, xd)),
    "McCannVelocity.__call__": lambda xd, pd: fm.mccann_velocity(_c(S0, pd), _c(M1, pd))(
        0.4, _c(X, xd)),
    "mccann_interpolation (callable)": lambda xd, pd: fm.mccann_interpolation(
        lambda x: 2.0 * x, 0.4)(_c(X, xd)),
    "MonotoneMap1D.__call__": lambda xd, pd: fm.monotone_map_1d(
        _c([0.1, -1.0, 0.5, 2.0], pd), _c([1.0, 2.0, 3.0, 5.0], pd))(_c([0.2, 0.7], xd)),
    "Linear.interpolate": lambda xd, pd: fm.Linear().interpolate(0.4, _c(X, xd), _c(M1, xd)),
    "Trigonometric.target_velocity": lambda xd, pd: fm.Trigonometric().target_velocity(
        0.4, _c(X, xd), _c(M1, xd)),
    "AffinePath.target_velocity": lambda xd, pd: fm.affine_path(
        lambda t: 1 - t**2, lambda t: t**2).target_velocity(0.4, _c(X, xd), _c(M1, xd)),
    "nn.VelocityMLP.__call__": lambda xd, pd: fnn.VelocityMLP(
        D, width=4, depth=1, rngs=nnx.Rngs(0), param_dtype=pd)(0.4, _c(X, xd)),
    "nn.time_features": lambda xd, pd: fnn.time_features(_c(0.4, xd), "fourier", 2),
}

ALL_CASES = {
    "gaussian_ot_map": lambda dt: fm.gaussian_ot_map(_c(M0, dt), _c(S0, dt), _c(M1, dt),
                                                     _c(S1, dt)),
    "gaussian_w2": lambda dt: fm.gaussian_w2(_c(M0, dt), _c(S0, dt), _c(M1, dt), _c(S1, dt)),
    "gaussian_w2_squared": lambda dt: fm.gaussian_w2_squared(_c(M0, dt), _c(S0, dt),
                                                             _c(M1, dt), _c(S1, dt)),
    "mccann_interpolation (AffineMap)": lambda dt: fm.mccann_interpolation(
        fm.AffineMap(_c(A2, dt), _c(M1, dt)), 0.4),
    "w2 (exact)": lambda dt: fm.w2(_c(B0, dt), _c(B1, dt)),
    "w2_squared (exact)": lambda dt: fm.w2_squared(_c(B0, dt), _c(B1, dt)),
    "w2_result (sinkhorn)": lambda dt: fm.w2_result(_c(B0, dt), _c(B1, dt), method="sinkhorn",
                                                    relative_epsilon=0.1),
    "integrate (tsit5, saveat)": lambda dt: fm.integrate(vel, _c(B0, dt), saveat=3).xs,
    "straightness": lambda dt: fm.straightness(vel, _c(B0, dt), **FAST)[:5],
    "kinetic_energy": lambda dt: fm.kinetic_energy(vel, _c(B0, dt), solver="tsit5"),
    "log_likelihood": lambda dt: fm.log_likelihood(vel, _c(B0, dt),
                                                   lambda x: -0.5 * jnp.dot(x, x), **FAST),
    "normalized_path_energy": lambda dt: fm.normalized_path_energy(_c(1.0, dt), _c(0.5, dt)),
    "Independent coupling": lambda dt: fm.couplings.Independent()(KEY, _c(B0, dt), _c(B1, dt)),
    "ExactOT coupling": lambda dt: fm.couplings.ExactOT()(KEY, _c(B0, dt), _c(B1, dt)),
    "flow_matching_loss": lambda dt: fm.flow_matching_loss(vel, _c(np.full(4, 0.5), dt),
                                                           _c(B0, dt), _c(B1, dt)),
    "sample": lambda dt: fm.sample(vel, KEY, 3, dim=D, steps=2, dtype=dt),
    "datasets.moons": lambda dt: fds.moons(KEY, 4, dt),
    "datasets.standard_normal": lambda dt: fds.standard_normal(2)(KEY, 4, dt),
}


def _float_leaves(out):
    return [leaf for leaf in jax.tree_util.tree_leaves(out)
            if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)]


# random draws differ between dtypes: only their dtype (and finiteness) is compared
RANDOM = {"sample", "datasets.moons", "datasets.standard_normal"}


def _check(out, dtype, ref):
    leaves = _float_leaves(out)
    refs = [None] * len(leaves) if ref is None else _float_leaves(ref)
    assert leaves, "no floating output"
    assert [leaf.dtype for leaf in leaves] == [dtype] * len(leaves)
    for leaf, r in zip(leaves, refs, strict=True):
        a = np.asarray(leaf, np.float64)
        assert np.all(np.isfinite(a))
        if r is None:
            continue
        b = np.asarray(r, np.float64)
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)


_REF_POINT: dict = {}
_REF_ALL: dict = {}


@pytest.mark.parametrize("name", sorted(POINT_CASES))
@pytest.mark.parametrize("same", [True, False], ids=["params-same", "params-other"])
def test_point_output_follows_x_dtype(name, same, dtype):
    f = POINT_CASES[name]
    f64 = np.dtype("float64")
    if name not in _REF_POINT:
        _REF_POINT[name] = f(f64, f64)
    pdt = dtype if same else OTHER[dtype]
    if name.startswith("nn.VelocityMLP"):
        # the initial parameters depend on param_dtype: compare with the same model on f64 x
        ref = f(f64, pdt)
    else:
        ref = _REF_POINT[name]
    _check(f(dtype, pdt), dtype, ref)


@pytest.mark.parametrize("name", sorted(ALL_CASES))
def test_output_dtype_follows_input(name, dtype):
    f = ALL_CASES[name]
    if name not in _REF_ALL:
        _REF_ALL[name] = f(np.dtype("float64"))
    ref = _REF_ALL[name]
    if name in RANDOM:
        ref = None
    _check(f(dtype), dtype, ref)


def test_integer_outputs():
    """Index outputs are integers whatever the float dtype (and the same permutation)."""
    p32 = fm.exact_ot_permutation(B0.astype(np.float32), B1.astype(np.float32))
    p64 = fm.exact_ot_permutation(B0, B1)
    assert jnp.issubdtype(p32.dtype, jnp.integer) and jnp.issubdtype(p64.dtype, jnp.integer)
    np.testing.assert_array_equal(p32, p64)


def test_bfloat16_params_train_without_nan():
    """A model with bfloat16 parameters trains 50 steps: finite loss, dtype kept, and the
    loss goes down (reference: the mean loss of the first 10 steps)."""
    model = fnn.VelocityMLP(D, width=32, depth=2, rngs=nnx.Rngs(1), param_dtype=jnp.bfloat16)

    def x0(key, n):
        return jax.random.normal(key, (n, D), jnp.float32)

    def x1(key, n):
        shift = jnp.array([[3.0, -2.0]], jnp.float32)
        return 0.5 * jax.random.normal(key, (n, D), jnp.float32) + shift

    trained, hist = fm.fit(KEY, x0, x1, model=model, steps=50, batch_size=64,
                           steps_per_call=50, ema_decay=0.0)
    loss = np.asarray(hist.loss, np.float64)
    assert loss.shape == (50,) and np.all(np.isfinite(loss))
    assert loss[-10:].mean() < 0.9 * loss[:10].mean()
    params = jax.tree_util.tree_leaves(nnx.state(trained, nnx.Param))
    assert params and all(p.dtype == jnp.bfloat16 for p in params)
    assert all(bool(jnp.all(jnp.isfinite(p.astype(jnp.float32)))) for p in params)
    out = trained(0.5, jnp.zeros(D, jnp.float32))
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
