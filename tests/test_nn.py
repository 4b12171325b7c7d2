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


# ----------------------------------------------------------------------------------------
# UNet
# ----------------------------------------------------------------------------------------
# Small configurations. Compiling dominates the run time of these tests, so they share
# compilations: models of one configuration have equal graph definitions, and a call with
# the same shapes reuses the compiled forward.
SMALL = dict(image_size=8, channels=8, channel_mult=(1, 2), attention_resolutions=(4,),
             num_groups=4, num_classes=3)
TINY = dict(image_size=8, channels=8, channel_mult=(1,), num_groups=4, num_classes=3)
OTHER_CONFIGS = {
    "28x28x1": dict(image_size=28, channels=8, channel_mult=(1, 2, 2),
                    attention_resolutions=(7,), num_groups=4, num_classes=3),
    "16x16x3": dict(image_size=16, in_channels=3, channels=8, channel_mult=(1,),
                    attention_resolutions=(16,), mid_attention=False, num_heads=2, num_groups=4,
                    num_classes=3),
}


def perturb(model, seed=0, scale=0.05):
    """Replace the zero-initialised output conv by a random one, so that the output
    depends on everything upstream."""
    shape = model.conv_out.kernel.shape
    model.conv_out.kernel = nnx.Param(
        scale * jax.random.normal(jax.random.key(seed + 100), shape, jnp.float32))
    return model


def unet_inputs(model, n=3, dtype=jnp.float64, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    s, c = model.image_size, model.in_channels
    return (jax.random.uniform(k1, (n,), dtype), jax.random.normal(k2, (n, s, s, c), dtype))


@pytest.fixture(scope="module")
def small():
    return perturb(nn.UNet(rngs=nnx.Rngs(0), **SMALL))


Y3 = jnp.array([0, 2, 3], jnp.int32)  # 3 is the null label


def assert_per_point_equals_batch(model, t, x, y, tol):
    batched = model(t, x, y)
    assert batched.shape == x.shape and batched.dtype == x.dtype
    assert float(jnp.max(jnp.abs(batched))) > 1e-3  # not the trivial zero velocity
    per_point = jnp.stack([model(t[i], x[i], y[i]) for i in range(len(t))])
    assert per_point.shape == x.shape and per_point.dtype == x.dtype
    np.testing.assert_allclose(np.asarray(per_point), np.asarray(batched), rtol=tol, atol=tol)
    return batched


def test_unet_8x8_shapes_dtypes_and_per_point(small):
    t, x = unet_inputs(small)  # float64 here, float32 for the other two configurations
    batched = assert_per_point_equals_batch(small, t, x, Y3, 1e-12)
    # a scalar t and y are broadcast over the batch
    np.testing.assert_allclose(np.asarray(small(t[1], x, Y3[1])[1]), np.asarray(batched[1]),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(OTHER_CONFIGS))
def test_unet_shapes_and_per_point(name):
    model = perturb(nn.UNet(rngs=nnx.Rngs(1), **OTHER_CONFIGS[name]))
    t, x = unet_inputs(model, 2, jnp.float32)
    assert_per_point_equals_batch(model, t, x, Y3[1:], 1e-5)


def test_unet_fresh_output_is_zero():
    model = nn.UNet(rngs=nnx.Rngs(0), **TINY)
    np.testing.assert_array_equal(np.asarray(model.conv_out.kernel[...]), 0.0)
    t, x = unet_inputs(model)
    np.testing.assert_array_equal(np.asarray(model(t, x, Y3)), 0.0)


def test_unet_jit_vmap_and_grad():
    model = perturb(nn.UNet(rngs=nnx.Rngs(0), **TINY))  # middle attention: all layer kinds
    graphdef, state = nnx.split(model)
    t, x = unet_inputs(model)
    y = jnp.array([1, 1, 2], jnp.int32)

    def loss(state):
        return jnp.sum(nnx.merge(graphdef, state)(t, x, y))

    eager = model(t, x, y)
    np.testing.assert_allclose(np.asarray(jax.vmap(model)(t, x, y)), np.asarray(eager),
                               rtol=1e-12, atol=1e-12)
    value, g = jax.jit(jax.value_and_grad(loss))(state)
    np.testing.assert_allclose(float(value), float(jnp.sum(eager)), rtol=1e-12)
    g = nnx.to_pure_dict(g)
    leaves = jax.tree_util.tree_leaves_with_path(g)
    for path, leaf in leaves:
        assert np.all(np.isfinite(np.asarray(leaf))), path
    # sum(v) is affine in the output bias, with slope n H W per channel
    np.testing.assert_allclose(np.asarray(g["conv_out"]["bias"]), [3 * 8 * 8], rtol=1e-12)
    # the label table: only the rows looked up (1 twice, 2 once) receive a gradient
    row_norms = np.linalg.norm(np.asarray(g["label_embedding"]), axis=1)
    assert np.all(row_norms[[1, 2]] > 0) and np.all(row_norms[[0, 3]] == 0)
    # every other parameter array gets a nonzero gradient
    zero = [path for path, leaf in leaves
            if not np.any(np.asarray(leaf)) and "label_embedding" not in str(path)]
    assert not zero, zero


def test_unet_depends_on_time_and_label(small):
    _, x = unet_inputs(small)

    def diff(a, b):
        return float(jnp.max(jnp.abs(a - b)))

    assert diff(small(0.2, x[0], 1), small(0.8, x[0], 1)) > 1e-4
    v1, v2, v_null = small(0.5, x[0], 1), small(0.5, x[0], 2), small(0.5, x[0], 3)
    assert small.null_label == 3
    assert diff(v1, v2) > 1e-4 and diff(v1, v_null) > 1e-4 and diff(v2, v_null) > 1e-4
    np.testing.assert_array_equal(np.asarray(small(0.5, x[0])), np.asarray(v_null))  # y omitted
    # batched: y omitted is the null label for every row
    np.testing.assert_array_equal(np.asarray(small(0.5, x)),
                                  np.asarray(small(0.5, x, jnp.full(3, 3, jnp.int32))))


def test_unet_out_of_range_traced_label_gives_nan():
    model = perturb(nn.UNet(rngs=nnx.Rngs(0), **TINY))
    t, x = unet_inputs(model)
    f = jax.jit(lambda y: model(t, x, y))
    if jax.config.jax_debug_nans:  # the NaN is intended: jax_debug_nans traps it, and its
        # op-by-op rerun sees the concrete labels, so the eager check names `y`
        with pytest.raises((FloatingPointError, ValueError)):
            f(jnp.array([0, 4, -1], jnp.int32))
        return
    out = f(jnp.array([0, 4, -1], jnp.int32))
    assert np.all(np.isfinite(np.asarray(out[0]))) and np.all(np.isnan(np.asarray(out[1:])))


def test_unet_errors():
    model = nn.UNet(rngs=nnx.Rngs(0), **SMALL)
    uncond = nn.UNet(rngs=nnx.Rngs(0), **{**TINY, "num_classes": None})
    x1, xb = jnp.zeros((8, 8, 1)), jnp.zeros((2, 8, 8, 1))
    cases = [
        (lambda: uncond(0.5, x1, 1), "`y`.*unconditional"),
        (lambda: model(0.5, x1, 4), r"`y`.*outside"),
        (lambda: model(0.5, xb, jnp.array([-1, 0])), r"`y`.*outside"),
        (lambda: model(0.5, x1, 1.0), r"`y`.*integer"),
        (lambda: model(0.5, xb, jnp.array([0.0, 1.0])), r"`y`.*integer"),
        (lambda: model(0.5, xb, jnp.array([0, 1, 2])), r"`y`.*\(2,\)"),
        (lambda: model(0.5, x1, True), "`y`"),
        (lambda: model(0.5, jnp.zeros((8, 8, 3))), r"`x`.*\(8, 8, 1\).*\(8, 8, 3\)"),
        (lambda: model(0.5, jnp.zeros((7, 7, 1))), r"`x`.*image_size"),
        (lambda: model(0.5, jnp.zeros((8, 8))), r"`x`.*\(8, 8\)"),
        (lambda: model(0.5, jnp.zeros((8, 8, 1), jnp.int32)), "`x`.*floating"),
        (lambda: model(jnp.ones(2), x1), r"`t`.*scalar"),
        (lambda: model(jnp.ones(3), xb), r"`t`.*\(2,\).*\(3,\)"),
        (lambda: model(jnp.array(1, jnp.int32), x1), "`t`.*floating"),
        (lambda: nn.UNet(28, channel_mult=(1, 2, 2, 2), rngs=nnx.Rngs(0)),
         r"`image_size`=28.*28 -> 14 -> 7"),
        (lambda: nn.UNet(28, channel_mult=(1, 2, 2), attention_resolutions=(4,),
                         rngs=nnx.Rngs(0)), r"`attention_resolutions`.*\(28, 14, 7\)"),
        (lambda: nn.UNet(8, channels=12, rngs=nnx.Rngs(0)), "`num_groups`"),
        (lambda: nn.UNet(8, num_heads=3, attention_resolutions=(4,), rngs=nnx.Rngs(0)),
         "`num_heads`"),
        (lambda: nn.UNet(8, channels=7, num_groups=7, rngs=nnx.Rngs(0)), "`channels`.*even"),
        (lambda: nn.UNet(8, num_classes=0, rngs=nnx.Rngs(0)), "`num_classes`"),
        (lambda: nn.UNet(8, dropout=1.0, rngs=nnx.Rngs(0)), "`dropout`"),
        (lambda: nn.UNet(8, channel_mult=(), rngs=nnx.Rngs(0)), "`channel_mult`"),
        (lambda: nn.UNet(8, dtype=jnp.int32, rngs=nnx.Rngs(0)), "`dtype`"),
    ]
    for thunk, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            thunk()


def resblock_params(c_in, c_out, emb):
    """GroupNorm(c_in) + conv3x3(c_in, c_out) + shift Linear(emb, c_out) + GroupNorm(c_out)
    + conv3x3(c_out, c_out) [+ conv1x1(c_in, c_out) when c_in != c_out]."""
    n = 2 * c_in + (9 * c_in * c_out + c_out) + (emb * c_out + c_out) + 2 * c_out
    n += 9 * c_out * c_out + c_out
    return n + (c_in * c_out + c_out if c_in != c_out else 0)


def attention_params(c):
    """GroupNorm(c) + Linear(c, 3c) (q, k, v) + Linear(c, c) (output)."""
    return 2 * c + (3 * c * c + 3 * c) + (c * c + c)


def unet_param_count(image_size, in_channels, channels, channel_mult, num_res_blocks,
                     attention_resolutions, mid_attention, num_classes=None):
    """The parameter count of the architecture described in the UNet docstring."""
    c, emb = channels, 4 * channels
    n = (c * emb + emb) + (emb * emb + emb)  # time MLP on c sinusoidal features
    n += 0 if num_classes is None else (num_classes + 1) * emb  # label table with null row
    n += 9 * in_channels * c + c  # input conv
    ch, skips, side = c, [c], image_size
    sides = []
    for i, m in enumerate(channel_mult):
        sides.append(side)
        for _ in range(num_res_blocks):
            n += resblock_params(ch, c * m, emb)
            n += attention_params(c * m) if side in attention_resolutions else 0
            ch = c * m
            skips.append(ch)
        if i < len(channel_mult) - 1:
            n += 9 * ch * ch + ch  # stride-2 conv
            skips.append(ch)
            side //= 2
    n += 2 * resblock_params(ch, ch, emb) + (attention_params(ch) if mid_attention else 0)
    for i in reversed(range(len(channel_mult))):
        for _ in range(num_res_blocks + 1):
            n += resblock_params(ch + skips.pop(), c * channel_mult[i], emb)
            ch = c * channel_mult[i]
            n += attention_params(ch) if sides[i] in attention_resolutions else 0
        if i > 0:
            n += 9 * ch * ch + ch  # conv after the nearest-neighbour upsampling
    return n + 2 * ch + (9 * ch * in_channels + in_channels)  # GroupNorm + output conv


def test_unet_param_count_by_hand():
    # One level, width 8, no attention, embedding 32, by hand:
    #   time MLP 8*32+32 + 32*32+32 = 1344; input conv 9*1*8+8 = 80;
    #   res block (8 -> 8): 16 + 584 + 264 + 16 + 584 = 1464 (one down, two in the middle);
    #   res block (16 -> 8): 32 + 1160 + 264 + 16 + 584 + 136 = 2192 (two up);
    #   GroupNorm 16, output conv 9*8*1+1 = 73.
    model = nn.UNet(8, channels=8, channel_mult=(1,), mid_attention=False, rngs=nnx.Rngs(0))
    assert nn.num_params(model) == 1344 + 80 + 3 * 1464 + 2 * 2192 + 16 + 73 == 10289
    assert unet_param_count(8, 1, 8, (1,), 1, (), False) == 10289


@pytest.mark.parametrize("kw", [
    dict(image_size=8, in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1,
         attention_resolutions=(4,), mid_attention=True, num_classes=10),
    dict(image_size=16, in_channels=3, channels=8, channel_mult=(1, 2, 1), num_res_blocks=2,
         attention_resolutions=(16, 4), mid_attention=False),
])
def test_unet_param_count_formula(kw):
    model = nn.UNet(rngs=nnx.Rngs(0), num_groups=4, **kw)
    assert nn.num_params(model) == unet_param_count(**kw)
    assert f"{nn.num_params(model):,} params" in model.summary()


def test_unet_presets_param_counts():
    cases = [(nn.UNet.digits, dict(image_size=8, in_channels=1, channels=16,
                                   channel_mult=(1, 2), num_res_blocks=1,
                                   attention_resolutions=(4,), mid_attention=True)),
             (nn.UNet.mnist, dict(image_size=28, in_channels=1, channels=16,
                                  channel_mult=(1, 2, 2), num_res_blocks=1,
                                  attention_resolutions=(7,), mid_attention=True))]
    for preset, arch in cases:
        for k in (None, 10):
            model = nnx.eval_shape(lambda p=preset, k=k: p(k, rngs=nnx.Rngs(0)))
            assert nn.num_params(model) == unet_param_count(**arch, num_classes=k)
            assert 50_000 <= nn.num_params(model) <= 500_000
    large = nnx.eval_shape(lambda: nn.UNet.mnist_large(rngs=nnx.Rngs(0)))
    assert nn.num_params(large) == unet_param_count(28, 1, 64, (1, 2, 2), 2, (14, 7), True)


def test_unet_attention_parameters():
    kw = dict(image_size=8, channels=8, channel_mult=(1, 2), num_groups=4)
    with_attn = nn.UNet(attention_resolutions=(4,), mid_attention=True, rngs=nnx.Rngs(0), **kw)
    without = nn.UNet(attention_resolutions=(), mid_attention=False, rngs=nnx.Rngs(0), **kw)
    # width 16 at side 4: one down block, two up blocks and the middle carry attention,
    # each 2*16 (GroupNorm) + 3*16*16 + 3*16 (q, k, v) + 16*16 + 16 (output) = 1120.
    assert nn.num_params(with_attn) - nn.num_params(without) == 4 * 1120


def test_unet_init_is_lecun_normal():
    # LeCun normal: truncated to 2 standard deviations, variance 1 / fan_in.
    model = nn.UNet(8, channels=32, channel_mult=(1,), rngs=nnx.Rngs(0))
    w = np.asarray(model.mid[0].conv2.kernel[...], np.float64).ravel()  # (3, 3, 32, 32)
    fan_in = 9 * 32
    bound = 2 / 0.87962566103423978 / np.sqrt(fan_in)
    assert np.all(np.abs(w) <= bound) and np.max(np.abs(w)) > 0.9 * bound
    var_ratio = w.var() * fan_in  # 1 +- 5 standard errors (the 4th moment of the truncated
    assert abs(var_ratio - 1) < 5 * np.sqrt(0.7 / w.size)  # normal gives var(w^2) < 0.7)
    assert abs(w.mean()) < 5 / np.sqrt(fan_in * w.size)
    # the init does not depend on how the model is built: eager = under nnx.jit
    small = dict(image_size=8, channels=8, channel_mult=(1,), num_groups=4, num_classes=2)
    eager = nnx.state(nn.UNet(rngs=nnx.Rngs(5), **small), nnx.Param)
    traced = nnx.state(nnx.jit(lambda: nn.UNet(rngs=nnx.Rngs(5), **small))(), nnx.Param)
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(traced),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_unet_compute_dtype_and_dropout():
    model = perturb(nn.UNet(rngs=nnx.Rngs(0), **TINY))
    t, x = unet_inputs(model)
    ref = model(t, x)
    low = nn.UNet(rngs=nnx.Rngs(0), dtype=jnp.bfloat16, **TINY)
    nnx.update(low, nnx.state(model, nnx.Param))
    out = low(t, x)
    assert out.dtype == jnp.float64  # the input's dtype
    assert 0 < float(jnp.max(jnp.abs(out - ref))) < 0.05 * float(jnp.max(jnp.abs(ref)))
    drop = nn.UNet(rngs=nnx.Rngs(0), dropout=0.5, **TINY)
    nnx.update(drop, nnx.state(model, nnx.Param))
    step = nnx.jit(lambda m, t, x: m(t, x))  # nnx.jit advances the dropout random state
    a, b = step(drop, t, x), step(drop, t, x)  # training mode: a fresh mask on every call
    assert float(jnp.max(jnp.abs(a - b))) > 1e-4
    drop.eval()
    np.testing.assert_array_equal(np.asarray(drop(t, x)), np.asarray(ref))


def test_sinusoidal_embedding():
    t = jnp.asarray([0.0, 0.25, 1.0])
    e = np.asarray(nn.sinusoidal_embedding(t, 6, time_scale=10.0, max_period=100.0))
    w = 10.0 * 100.0 ** (-np.arange(3) / 3)  # 10, 10 / 100**(1/3), 10 / 100**(2/3)
    ref = np.concatenate([np.cos(np.outer([0, 0.25, 1], w)), np.sin(np.outer([0, 0.25, 1], w))],
                         axis=1)
    np.testing.assert_allclose(e, ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="`dim`"):
        nn.sinusoidal_embedding(t, 5)
    with pytest.raises(ValueError, match="`t`"):
        nn.sinusoidal_embedding(jnp.arange(3), 4)
