"""Tests for fmjax.nn: the velocity MLP against an independent NumPy re-implementation of
torchcfm's ``MLP(dim, w=64, time_varying=True)`` and the parameter-count formula."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fmjax import nn

# SELU constants from Klambauer et al., "Self-Normalizing Neural Networks" (2017).
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def selu_np(x):
    return SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * (np.exp(np.minimum(x, 0)) - 1))


def torchcfm_mlp_np(params, t, x):
    """torchcfm's MLP forward in NumPy: Linear(d+1, w) SELU Linear(w, w) SELU Linear(w, w)
    SELU Linear(w, d), input cat([x, t])."""
    h = np.concatenate([x, np.full((x.shape[0], 1), t)], axis=1)
    for k in range(3):
        h = selu_np(h @ params["hidden"][k]["kernel"] + params["hidden"][k]["bias"])
    return h @ params["out"]["kernel"] + params["out"]["bias"]


def param_count_formula(d, w, depth, n_time):
    return (d + n_time) * w + w + (depth - 1) * (w * w + w) + w * d + d


def np_params(model):
    state = nnx.state(model, nnx.Param)
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(state))


@pytest.mark.parametrize("d,width,depth,emb", [(2, 64, 3, "concat"), (5, 16, 2, "fourier"),
                                               (3, 8, 1, "concat")])
def test_param_count_matches_formula(d, width, depth, emb):
    model = nn.VelocityMLP(d, width=width, depth=depth, time_embedding=emb, num_frequencies=3,
                           rngs=nnx.Rngs(0))
    n_time = 1 if emb == "concat" else 1 + 2 * 3
    assert nn.num_params(model) == param_count_formula(d, width, depth, n_time)


def test_default_is_torchcfm_mlp():
    # torchcfm MLP(2, w=64, time_varying=True): 3*64+64 + 2*(64*64+64) + 64*2+2 = 8706.
    model = nn.VelocityMLP(2, rngs=nnx.Rngs(0))
    assert nn.num_params(model) == 8706
    x = np.random.default_rng(0).standard_normal((7, 2))
    out = model(0.3, jnp.asarray(x))
    ref = torchcfm_mlp_np(np_params(model), 0.3, x)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-12, atol=1e-12)


def test_torch_default_init_distribution():
    # PyTorch nn.Linear default: weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    model = nn.VelocityMLP(2, width=256, depth=2, rngs=nnx.Rngs(1))
    p = np_params(model)
    layers = list(p["hidden"].values()) + [p["out"]]
    for layer in layers:
        fan_in = layer["kernel"].shape[0]
        bound = 1 / math.sqrt(fan_in)
        w = layer["kernel"].ravel()
        assert np.all(np.abs(w) <= bound)
        if w.size > 1000:  # variance of U(-b, b) is b^2/3; 5 standard errors
            se = bound**2 * math.sqrt(4 / 45 / w.size)
            assert abs(w.var() - bound**2 / 3) < 5 * se
        assert np.all(np.abs(layer["bias"]) <= bound)


def test_shapes_and_dtypes(dtype):
    model = nn.VelocityMLP(3, width=16, rngs=nnx.Rngs(0))
    x = jnp.ones(3, dtype)
    assert model(0.5, x).shape == (3,) and model(0.5, x).dtype == dtype
    xb = jnp.ones((4, 3), dtype)
    assert model(0.5, xb).shape == (4, 3) and model(0.5, xb).dtype == dtype
    assert model(jnp.linspace(0, 1, 4, dtype=dtype), xb).shape == (4, 3)


def test_per_point_matches_batch():
    model = nn.VelocityMLP(2, time_embedding="fourier", rngs=nnx.Rngs(3))
    key_x, key_t = jax.random.split(jax.random.key(0))
    x = jax.random.normal(key_x, (9, 2), jnp.float64)
    t = jax.random.uniform(key_t, (9,), jnp.float64)
    batched = model(t, x)
    per_point = jax.vmap(model)(t, x)
    np.testing.assert_allclose(np.asarray(batched), np.asarray(per_point), rtol=1e-12, atol=1e-12)


def test_fourier_time_features_distinguish_endpoints():
    f0 = nn.time_features(jnp.asarray(0.0), "fourier", 4)
    f1 = nn.time_features(jnp.asarray(1.0), "fourier", 4)
    # cos(pi * 0) = 1, cos(pi * 1) = -1 at the lowest frequency (half a period on [0, 1]).
    assert float(f0[5]) == pytest.approx(1.0) and float(f1[5]) == pytest.approx(-1.0)
    model = nn.VelocityMLP(2, time_embedding="fourier", rngs=nnx.Rngs(0))
    x = jnp.ones(2)
    assert float(jnp.max(jnp.abs(model(0.0, x) - model(1.0, x)))) > 1e-3


def test_velocity_field_split_merge_jit_grad():
    model = nn.VelocityMLP(2, width=8, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    x = jnp.asarray([0.3, -0.2])

    @jax.jit
    def f(state, t, x):
        return nn.velocity_field(graphdef, state)(t, x)

    np.testing.assert_allclose(np.asarray(f(state, 0.4, x)), np.asarray(model(0.4, x)),
                               rtol=1e-6)
    # grad w.r.t. the output bias of sum(v) is a vector of ones (v is affine in b_out).
    g = jax.grad(lambda s: jnp.sum(nn.velocity_field(graphdef, s)(0.4, x)))(state)
    np.testing.assert_allclose(np.asarray(g["out"]["bias"][...]), np.ones(2))


def test_callable_activation_and_names():
    m1 = nn.VelocityMLP(2, width=8, activation="tanh", rngs=nnx.Rngs(0))
    m2 = nn.VelocityMLP(2, width=8, activation=jnp.tanh, rngs=nnx.Rngs(0))
    x = jnp.ones((3, 2))
    np.testing.assert_array_equal(np.asarray(m1(0.2, x)), np.asarray(m2(0.2, x)))


def test_errors():
    model = nn.VelocityMLP(2, width=8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="floating"):
        model(0.5, jnp.ones(2, jnp.int32))
    with pytest.raises(ValueError, match=r"shape \(2,\) or \(n, 2\)"):
        model(0.5, jnp.ones(3))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        model(jnp.ones(3), jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="activation"):
        nn.VelocityMLP(2, activation="nope", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="time_embedding"):
        nn.VelocityMLP(2, time_embedding="nope", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="depth"):
        nn.VelocityMLP(2, depth=0, rngs=nnx.Rngs(0))
