"""Neural velocity fields: a Flax NNX MLP ``v_theta(t, x)`` and its functional adapter.

The network is itself a per-point velocity callable ``model(t, x)`` (``x`` of shape ``(d,)``,
scalar ``t``), so it plugs into :func:`fmjax.integrate`, ``fm.kinetic_energy`` and
``fm.log_likelihood`` like any closed-form velocity. It also accepts a batch ``x`` of shape
``(n, d)`` directly (one matrix product per layer instead of a ``vmap``), which is what the
training loop uses.

With the defaults, :class:`VelocityMLP` is exactly the network of the torchcfm 2-D
benchmarks (Tong et al., TMLR 2024 and AISTATS 2024; ``torchcfm.models.models.MLP(dim,
w=64, time_varying=True)``): input ``concat(x, t)`` of size ``d + 1``, three hidden layers
``Linear(64) + SELU``, output ``Linear(d)``; PyTorch's default ``nn.Linear`` initialisation
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weights and biases.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Float

from . import _checks
from ._typing import Batch, BatchLike, ScalarLike, ValuesLike, Vector, VectorLike, VelocityField

__all__ = ["VelocityMLP", "UNet", "velocity_field", "num_params", "time_features",
           "sinusoidal_embedding", "ACTIVATIONS"]

# Times of any shape ``(...)`` and their ``F`` time features ``(..., F)`` (annotations only;
# ordinary expressions so that linters do not parse the shape strings).
_TimesLike = Float[ArrayLike, "*t"]
_TimeFeatures = Float[Array, "*t F"]

#: Activations selectable by name in :class:`VelocityMLP`.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "selu": jax.nn.selu,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "elu": jax.nn.elu,
    "tanh": jnp.tanh,
    "softplus": jax.nn.softplus,
    "leaky_relu": jax.nn.leaky_relu,
}

_EMBEDDINGS = ("concat", "fourier")


def _torch_uniform(fan_in: int):
    """PyTorch's default ``nn.Linear`` init: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def time_features(t: _TimesLike, embedding: str = "concat",
                  num_frequencies: int = 4) -> _TimeFeatures:
    """Time features appended to ``x`` at the network input.

    ``"concat"``: ``[t]`` (one feature, torchcfm). ``"fourier"``: ``[t, sin(w_k t), cos(w_k t)]``
    with ``w_k = pi * 2**k``, ``k = 0..num_frequencies-1``: the lowest frequency ``pi`` has
    half a period on ``[0, 1]`` so ``t = 0`` and ``t = 1`` get different features (a
    ``2 pi t``-only embedding maps both to the same point).

    Args:
        t: times of shape ``(...)``, floating.
        embedding: ``"concat"`` or ``"fourier"``.
        num_frequencies: number of frequencies for ``"fourier"``.

    Returns:
        Array of shape ``(..., F)`` with ``F = 1`` or ``1 + 2 * num_frequencies``.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> phi = fm.nn.time_features(jnp.array(1 / 6), "fourier", 2)  # t, sin, sin, cos, cos
        >>> [round(float(f), 4) for f in phi]
        [0.1667, 0.5, 0.866, 0.866, 0.5]
        >>> fm.nn.time_features(jnp.zeros(3)).shape
        (3, 1)
    """
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.floating):
        raise ValueError(f"`t` must have a floating-point dtype, got dtype {t.dtype}")
    if embedding == "concat":
        return t[..., None]
    if embedding == "fourier":
        num_frequencies = _positive_int("num_frequencies", num_frequencies)
        w = jnp.asarray(np.pi * 2.0 ** np.arange(num_frequencies), dtype=t.dtype)
        wt = t[..., None] * w.reshape((1,) * t.ndim + w.shape)
        return jnp.concatenate([t[..., None], jnp.sin(wt), jnp.cos(wt)], axis=-1)
    raise ValueError(f"`embedding` (a model's `time_embedding`) must be one of {_EMBEDDINGS}, "
                     f"got {embedding!r}")


def _num_time_features(embedding: str, num_frequencies: int) -> int:
    if embedding == "concat":
        return 1
    if embedding == "fourier":
        return 1 + 2 * num_frequencies
    raise ValueError(f"`time_embedding` must be one of {_EMBEDDINGS}, got {embedding!r}")


class VelocityMLP(nnx.Module):
    """MLP velocity field ``v_theta(t, x)``.

    ``h_0 = concat(x, phi(t))``, ``h_{l} = act(W_l h_{l-1} + b_l)`` for ``l = 1..depth``
    (each of width ``width``), output ``W_out h_depth + b_out`` of size ``dim``. ``phi`` is
    :func:`time_features`. With the defaults this is torchcfm's ``MLP(dim, w=64,
    time_varying=True)``; its parameter count is
    ``(dim + F) * width + width + (depth - 1) * (width**2 + width) + width * dim + dim``
    (``F`` time features; 8,706 for ``dim = 2``).

    Args:
        dim: dimension ``d`` of the data (input and output).
        width: hidden width.
        depth: number of hidden layers (each ``Linear(width)`` + activation), ``>= 1``.
        activation: a name in :data:`ACTIVATIONS` or a callable ``f(array) -> array``.
        time_embedding: ``"concat"`` (``t`` as one input feature) or ``"fourier"``.
        num_frequencies: frequencies of the Fourier embedding.
        init: ``"torch"`` (PyTorch default ``U(+-1/sqrt(fan_in))``, as in the benchmarks)
            or ``"lecun"`` (Flax default: LeCun-normal kernels, zero biases).
        rngs: ``flax.nnx.Rngs`` for the initialisation.
        param_dtype: dtype of the parameters.

    Calling ``model(t, x)``: ``x`` of shape ``(d,)`` and scalar ``t`` gives ``(d,)``;
    ``x`` of shape ``(n, d)`` with ``t`` scalar or ``(n,)`` gives ``(n, d)``. Parameters are
    cast to ``x.dtype``, so the output dtype is that of ``x``. No range or finiteness check
    is done on ``t`` (the net is evaluated in the training hot loop).

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> from flax import nnx
        >>> model = fm.nn.VelocityMLP(2, rngs=nnx.Rngs(0))
        >>> model(0.5, jnp.zeros(2)).shape, model(0.5, jnp.zeros((4, 2))).shape
        ((2,), (4, 2))
        >>> fm.nn.num_params(model)  # (2 + 1) * 64 + 64 + 2 * (64**2 + 64) + 64 * 2 + 2
        8706
    """

    def __init__(self, dim: int, *, width: int = 64, depth: int = 3,
                 activation: str | Callable[[jax.Array], jax.Array] = "selu",
                 time_embedding: str = "concat", num_frequencies: int = 4,
                 init: str = "torch", rngs: nnx.Rngs, param_dtype: Any = jnp.float32):
        for name, val in (("dim", dim), ("width", width), ("depth", depth),
                          ("num_frequencies", num_frequencies)):
            _positive_int(name, val)
        if isinstance(activation, str):
            if activation not in ACTIVATIONS:
                raise ValueError(f"`activation` must be one of {sorted(ACTIVATIONS)} or a "
                                 f"callable, got {activation!r}")
        elif not callable(activation):
            raise ValueError(f"`activation` must be a name or a callable, got {activation!r}")
        if init not in ("torch", "lecun"):
            raise ValueError(f"`init` must be 'torch' or 'lecun', got {init!r}")
        if not jnp.issubdtype(param_dtype, jnp.floating):
            raise ValueError(f"`param_dtype` must be a floating dtype, got {param_dtype!r}")
        n_time = _num_time_features(time_embedding, num_frequencies)
        self.dim = int(dim)
        self.width = int(width)
        self.depth = int(depth)
        self.activation = activation
        self.time_embedding = time_embedding
        self.num_frequencies = int(num_frequencies)

        def linear(n_in, n_out):
            if init == "torch":
                kw = dict(kernel_init=_torch_uniform(n_in), bias_init=_torch_uniform(n_in))
            else:
                kw = {}
            return nnx.Linear(n_in, n_out, param_dtype=param_dtype, rngs=rngs, **kw)

        sizes = [self.dim + n_time] + [self.width] * self.depth
        self.hidden = nnx.List([linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)])
        self.out = linear(self.width, self.dim)

    def _act(self, h):
        f = ACTIVATIONS[self.activation] if isinstance(self.activation, str) else self.activation
        return f(h)

    def __call__(self, t: ScalarLike | ValuesLike, x: VectorLike | BatchLike) -> Vector | Batch:
        if not hasattr(x, "dtype"):
            x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"`x` must have a floating-point dtype, got shape {x.shape} and "
                             f"dtype {x.dtype}; cast it, e.g. `x.astype(jnp.float32)`")
        if x.ndim not in (1, 2) or x.shape[-1] != self.dim:
            raise ValueError(f"`x` must have shape ({self.dim},) or (n, {self.dim}), got shape "
                             f"{tuple(x.shape)}")
        if isinstance(t, bool):
            raise ValueError("`t` must be a float time, got a bool")
        if hasattr(t, "dtype") and not jnp.issubdtype(t.dtype, jnp.floating):
            raise ValueError(f"`t` must have a floating-point dtype, got dtype {t.dtype}")
        t = jnp.asarray(t).astype(x.dtype)
        if x.ndim == 1:
            if t.ndim != 0:
                raise ValueError(f"`t` must be a scalar when `x` has shape {tuple(x.shape)}, got "
                                 f"shape {tuple(t.shape)}")
        else:
            n = x.shape[0]
            if t.ndim == 0:
                t = jnp.broadcast_to(t, (n,))
            elif t.shape != (n,):
                raise ValueError(f"`t` must be a scalar or have shape ({n},) when `x` has shape "
                                 f"{tuple(x.shape)}, got shape {tuple(t.shape)}")
        h = jnp.concatenate([x, time_features(t, self.time_embedding, self.num_frequencies)],
                            axis=-1)
        lead = (1,) * (x.ndim - 1)  # explicit broadcast of the bias over the batch axis

        def affine(layer, h):
            b = layer.bias[...].astype(x.dtype)
            return h @ layer.kernel[...].astype(x.dtype) + b.reshape(lead + b.shape)

        for layer in self.hidden:
            h = self._act(affine(layer, h))
        return affine(self.out, h)


def velocity_field(graphdef: nnx.GraphDef, state: nnx.State) -> VelocityField:
    """Per-point velocity ``v(t, x)`` from the functional split of a model.

    ``graphdef, state = nnx.split(model)``; ``velocity_field(graphdef, state)(t, x)`` equals
    ``model(t, x)``. Merging happens at trace time, so this is free inside ``jax.jit``; pass
    ``state`` (a pytree) through ``jit``/``scan`` and rebuild the callable inside.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> from flax import nnx
        >>> model = fm.nn.VelocityMLP(2, rngs=nnx.Rngs(0))
        >>> v = fm.nn.velocity_field(*nnx.split(model))
        >>> bool(jnp.array_equal(v(0.3, jnp.ones(2)), model(0.3, jnp.ones(2))))
        True
    """

    if not isinstance(graphdef, nnx.GraphDef):
        raise ValueError(f"`graphdef` must be the GraphDef of `nnx.split(model)`, got "
                         f"{type(graphdef).__name__}")

    def v(t, x):
        return nnx.merge(graphdef, state)(t, x)

    return v


def num_params(model: nnx.Module) -> int:
    """Number of scalar parameters (``nnx.Param`` leaves) of a model.

    Example:
        >>> import fmjax as fm
        >>> from flax import nnx
        >>> fm.nn.num_params(fm.nn.VelocityMLP(2, rngs=nnx.Rngs(0)))  # torchcfm's 3 x 64 MLP
        8706
    """
    if not isinstance(model, nnx.Module):
        raise ValueError(f"`model` must be an nnx.Module, got {type(model).__name__}")
    state = nnx.state(model, nnx.Param)
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(state)))


# ----------------------------------------------------------------------------------------
# U-Net velocity field for images
# ----------------------------------------------------------------------------------------
_GN_EPS = 1e-5


def _stat_dtype(dtype: Any) -> Any:
    """Accumulation dtype of norms and softmax: at least float32."""
    return jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype


def _zeros(shape: tuple[int, ...], dtype: Any, fill: float = 0.0) -> jax.Array:
    """A constant parameter built in NumPy and copied to the device: no per-shape XLA
    compilation (``jnp.zeros`` compiles one fill per new shape when called eagerly)."""
    return jax.device_put(np.full(shape, fill, dtype=dtype))


# Kernels of _Dense and _Conv are created as zeros and drawn afterwards by
# _init_unet_params from one random stream: drawing each shape separately compiles the
# random-number generator once per distinct shape, which made an eager construction slow.
class _Dense(nnx.Module):
    """``h @ W + b`` over the last axis; parameters cast to ``h.dtype`` at the call."""

    def __init__(self, n_in: int, n_out: int, *, param_dtype: Any):
        self.kernel = nnx.Param(_zeros((n_in, n_out), param_dtype))
        self.bias = nnx.Param(_zeros((n_out,), param_dtype))
        self.zero = False

    def __call__(self, h: jax.Array) -> jax.Array:
        b = self.bias[...].astype(h.dtype)
        return h @ self.kernel[...].astype(h.dtype) + b.reshape((1,) * (h.ndim - 1) + b.shape)


class _Conv(nnx.Module):
    """``k x k`` convolution of ``(n, H, W, C)`` images, padding ``k // 2``, stride 1 or 2."""

    def __init__(self, c_in: int, c_out: int, *, kernel: int = 3, stride: int = 1,
                 zero: bool = False, param_dtype: Any):
        self.kernel = nnx.Param(_zeros((kernel, kernel, c_in, c_out), param_dtype))
        self.bias = nnx.Param(_zeros((c_out,), param_dtype))
        self.stride = stride
        self.zero = zero  # stays zero (the output conv)

    def __call__(self, h: jax.Array) -> jax.Array:
        k = self.kernel[...].astype(h.dtype)
        p = k.shape[0] // 2
        out = jax.lax.conv_general_dilated(h, k, (self.stride, self.stride), ((p, p), (p, p)),
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return out + self.bias[...].astype(h.dtype).reshape(1, 1, 1, -1)


class _GroupNorm(nnx.Module):
    """Group normalisation of ``(n, H, W, C)``: statistics over ``H, W`` and ``C / groups``
    channels, then a per-channel scale and shift."""

    def __init__(self, channels: int, groups: int, *, param_dtype: Any):
        self.scale = nnx.Param(_zeros((channels,), param_dtype, 1.0))
        self.bias = nnx.Param(_zeros((channels,), param_dtype))
        self.groups = groups

    def __call__(self, h: jax.Array) -> jax.Array:
        n, H, W, C = h.shape
        g = h.astype(_stat_dtype(h.dtype)).reshape(n, H, W, self.groups, C // self.groups)
        mean = jnp.mean(g, axis=(1, 2, 4), keepdims=True)
        var = jnp.mean(jnp.square(g - mean), axis=(1, 2, 4), keepdims=True)
        g = ((g - mean) * jax.lax.rsqrt(var + _GN_EPS)).reshape(h.shape).astype(h.dtype)
        return (g * self.scale[...].astype(h.dtype).reshape(1, 1, 1, C)
                + self.bias[...].astype(h.dtype).reshape(1, 1, 1, C))


class _Attention(nnx.Module):
    """Residual multi-head self-attention over the ``H * W`` pixels of ``(n, H, W, C)``:
    ``h + W_o attn(q, k, v)`` with ``q, k, v`` a linear map of ``GroupNorm(h)``."""

    def __init__(self, channels: int, heads: int, groups: int, *, param_dtype: Any):
        self.norm = _GroupNorm(channels, groups, param_dtype=param_dtype)
        self.qkv = _Dense(channels, 3 * channels, param_dtype=param_dtype)
        self.out = _Dense(channels, channels, param_dtype=param_dtype)
        self.heads = heads

    def __call__(self, h: jax.Array) -> jax.Array:
        n, H, W, C = h.shape
        dh = C // self.heads
        q, k, v = jnp.split(self.qkv(self.norm(h).reshape(n, H * W, C)), 3, axis=-1)
        q, k, v = (a.reshape(n, H * W, self.heads, dh) for a in (q, k, v))
        logits = jnp.einsum("nqhd,nkhd->nhqk", q, k).astype(_stat_dtype(h.dtype))
        w = jax.nn.softmax(logits * (1.0 / math.sqrt(dh)), axis=-1).astype(h.dtype)
        o = jnp.einsum("nhqk,nkhd->nqhd", w, v).reshape(n, H * W, C)
        return h + self.out(o).reshape(h.shape)


class _ResBlock(nnx.Module):
    """``skip(h) + conv(drop(SiLU(GN(conv(SiLU(GN(h))) + shift(emb)))))``, then optional
    attention; ``shift`` is a linear map of the (SiLU-activated) time/label embedding to one
    value per output channel, and ``skip`` a 1 x 1 conv when the channel count changes."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, *, groups: int, dropout: float,
                 attention_heads: int | None, param_dtype: Any, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype)
        self.norm1 = _GroupNorm(c_in, groups, param_dtype=param_dtype)
        self.conv1 = _Conv(c_in, c_out, **kw)
        self.shift = _Dense(emb_dim, c_out, **kw)
        self.norm2 = _GroupNorm(c_out, groups, param_dtype=param_dtype)
        self.drop = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.conv2 = _Conv(c_out, c_out, **kw)
        self.skip = _Conv(c_in, c_out, kernel=1, **kw) if c_in != c_out else None
        self.attn = (_Attention(c_out, attention_heads, groups, **kw)
                     if attention_heads is not None else None)

    def __call__(self, h: jax.Array, emb: jax.Array) -> jax.Array:
        r = self.conv1(jax.nn.silu(self.norm1(h)))
        r = r + self.shift(emb)[:, None, None, :]
        r = jax.nn.silu(self.norm2(r))
        if self.drop is not None:
            r = self.drop(r)
        out = (h if self.skip is None else self.skip(h)) + self.conv2(r)
        return out if self.attn is None else self.attn(out)


class _Down(nnx.Module):
    """Halve ``H`` and ``W`` (even sizes): a 3 x 3 conv of stride 2."""

    def __init__(self, channels: int, *, param_dtype: Any):
        self.conv = _Conv(channels, channels, stride=2, param_dtype=param_dtype)

    def __call__(self, h: jax.Array) -> jax.Array:
        return self.conv(h)


class _Up(nnx.Module):
    """Double ``H`` and ``W``: nearest-neighbour repetition, then a 3 x 3 conv."""

    def __init__(self, channels: int, *, param_dtype: Any):
        self.conv = _Conv(channels, channels, param_dtype=param_dtype)

    def __call__(self, h: jax.Array) -> jax.Array:
        return self.conv(jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2))


def sinusoidal_embedding(t: _TimesLike, dim: int, *, time_scale: float = 1000.0,
                         max_period: float = 10000.0) -> _TimeFeatures:
    """Sinusoidal time embedding ``[cos(w_k s t), sin(w_k s t)]`` of :class:`UNet`.

    ``s = time_scale`` and ``w_k = max_period ** (-k / (dim // 2))``, ``k = 0..dim//2 - 1``:
    the diffusion convention with ``t in [0, 1]`` scaled to ``[0, 1000]``, so the angular
    frequencies in ``t`` range from ``s`` down to about ``s / max_period``.

    Args:
        t: times of shape ``(...)``, floating.
        dim: number of features, even and ``>= 2``.
        time_scale: ``s``.
        max_period: ratio of the slowest to the fastest period.

    Returns:
        Array of shape ``(..., dim)`` (cosines first), dtype of ``t``.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> e = fm.nn.sinusoidal_embedding(jnp.array([0.0, 1.0]), 4)  # w = (1, 0.01)
        >>> e.shape, [round(float(v), 4) for v in e[1]]  # cos(1000), cos(10), sin(1000), sin(10)
        ((2, 4), [0.5624, -0.8391, 0.8269, -0.544])
    """
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 2 or dim % 2:
        raise ValueError(f"`dim` must be an even integer >= 2, got {dim!r}")
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.floating):
        raise ValueError(f"`t` must have a floating-point dtype, got dtype {t.dtype}")
    half = int(dim) // 2
    w = np.float64(time_scale) * np.float64(max_period) ** (-np.arange(half) / half)
    wt = t[..., None] * jnp.asarray(w, t.dtype).reshape((1,) * t.ndim + (half,))
    return jnp.concatenate([jnp.cos(wt), jnp.sin(wt)], axis=-1)


def _positive_int(name: str, val: Any, lo: int = 1) -> int:
    return _checks.positive_int(val, name, minimum=lo)


def _int_tuple(name: str, val: Any, lo: int, *, empty: bool) -> tuple[int, ...]:
    if isinstance(val, int | np.integer) and not isinstance(val, bool):
        val = (val,)
    if not isinstance(val, tuple | list) or (not val and not empty):
        raise ValueError(f"`{name}` must be a {'' if empty else 'non-empty '}tuple of integers "
                         f">= {lo}, got {val!r}")
    return tuple(_positive_int(name, v, lo) for v in val)


def _unet_levels(image_size: int, n_levels: int) -> tuple[int, ...]:
    """Side length of each level: halved between levels, which needs even sides."""
    sides = [image_size]
    for _ in range(n_levels - 1):
        if sides[-1] % 2:
            chain = " -> ".join(map(str, sides))
            raise ValueError(f"`image_size`={image_size} cannot be halved {n_levels - 1} times "
                             f"for the {n_levels} levels of `channel_mult`: {chain} is odd "
                             f"and cannot be downsampled; use at most {len(sides)} levels")
        sides.append(sides[-1] // 2)
    return tuple(sides)


def _check_unet_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Validate and normalise the :class:`UNet` options (a ``ValueError`` naming the option)."""
    out = dict(cfg)
    for name in ("image_size", "in_channels", "channels", "num_res_blocks", "num_heads",
                 "num_groups"):
        out[name] = _positive_int(name, cfg[name])
    out["channel_mult"] = _int_tuple("channel_mult", cfg["channel_mult"], 1, empty=False)
    out["attention_resolutions"] = _int_tuple("attention_resolutions",
                                              cfg["attention_resolutions"], 1, empty=True)
    if cfg["num_classes"] is not None:
        out["num_classes"] = _positive_int("num_classes", cfg["num_classes"])
    if cfg["embed_dim"] is not None:
        out["embed_dim"] = _positive_int("embed_dim", cfg["embed_dim"])
    if out["channels"] % 2:
        raise ValueError(f"`channels` must be even (the size of the sinusoidal time "
                         f"embedding), got {out['channels']}")
    if not (isinstance(cfg["dropout"], float | int) and 0 <= cfg["dropout"] < 1):
        raise ValueError(f"`dropout` must be a rate in [0, 1), got {cfg['dropout']!r}")
    if not isinstance(cfg["mid_attention"], bool):
        raise ValueError(f"`mid_attention` must be a bool, got {cfg['mid_attention']!r}")
    for name in ("param_dtype", "dtype"):
        if (cfg[name] is not None or name == "param_dtype") and not jnp.issubdtype(
                cfg[name], jnp.floating):
            raise ValueError(f"`{name}` must be a floating dtype, got {cfg[name]!r}")
    sides = _unet_levels(out["image_size"], len(out["channel_mult"]))
    widths = [out["channels"] * m for m in out["channel_mult"]]
    for c in [out["channels"]] + widths:
        if c % out["num_groups"]:
            raise ValueError(f"`num_groups`={out['num_groups']} must divide every channel "
                             f"count, got {c} (`channels` times `channel_mult`)")
    for r in out["attention_resolutions"]:
        if r not in sides:
            raise ValueError(f"`attention_resolutions` entry {r} is not the side of a level; "
                             f"the levels of `image_size`={out['image_size']} are {sides}")
        if widths[sides.index(r)] % out["num_heads"]:
            raise ValueError(f"`num_heads`={out['num_heads']} must divide the "
                             f"{widths[sides.index(r)]} channels of the attention level {r}")
    if out["mid_attention"] and widths[-1] % out["num_heads"]:
        raise ValueError(f"`num_heads`={out['num_heads']} must divide the {widths[-1]} channels "
                         f"of the middle attention (`mid_attention`)")
    out["sides"] = sides
    return out


_UNET_PRESETS: dict[str, dict[str, Any]] = {
    # 8 x 8 x 1 (scikit-learn digits): levels 8, 4; attention at 4 x 4.
    "digits": dict(image_size=8, in_channels=1, channels=16, channel_mult=(1, 2),
                   num_res_blocks=1, attention_resolutions=(4,), num_heads=1),
    # 28 x 28 x 1 (MNIST): levels 28, 14, 7; attention at 7 x 7.
    "mnist": dict(image_size=28, in_channels=1, channels=16, channel_mult=(1, 2, 2),
                  num_res_blocks=1, attention_resolutions=(7,), num_heads=1),
    # 28 x 28 x 1 for a GPU batch job: two residual blocks per level, attention at 14 and 7.
    "mnist_large": dict(image_size=28, in_channels=1, channels=64, channel_mult=(1, 2, 2),
                        num_res_blocks=2, attention_resolutions=(14, 7), num_heads=4),
}


# LeCun-normal initialisation (Flax's default): truncated normal on [-2, 2] standard
# deviations, rescaled to the standard deviation 1 / sqrt(fan_in); 0.8796... is the standard
# deviation of a standard normal truncated to [-2, 2]. The numbers come in chunks of a fixed
# size (one compilation per process, whatever the network) and are cut into the kernels in
# NumPy when they are concrete.
_TRUNC_STD = 0.87962566103423978
_CHUNK = 1 << 16


@jax.jit
def _truncated_normal_chunk(key: jax.Array, i: jax.Array) -> jax.Array:
    """Chunk ``i`` of the stream of ``key``."""
    return jax.random.truncated_normal(jax.random.fold_in(key, i), -2.0, 2.0, (_CHUNK,),
                                       jnp.float32)


def _lecun_slices(key: jax.Array, shapes: list[tuple[int, ...]], scales: list[float],
                  dtype: Any) -> list[jax.Array]:
    """Consecutive pieces of one truncated-normal stream, reshaped to ``shapes``, each
    times its scale over ``_TRUNC_STD``."""
    sizes = [math.prod(shape) for shape in shapes]
    n_chunks = -(-sum(sizes) // _CHUNK)
    traced = isinstance(key, jax.core.Tracer)  # built under jit or eval_shape
    if traced:  # one loop body instead of n_chunks inlined copies: a faster compilation
        flat = jax.lax.map(lambda i: _truncated_normal_chunk(key, i),
                           jnp.arange(n_chunks, dtype=jnp.uint32)).reshape(-1)
    else:
        flat = np.concatenate([np.asarray(_truncated_normal_chunk(key, np.uint32(i)))
                               for i in range(n_chunks)])
    out, start = [], 0
    for shape, size, scale in zip(shapes, sizes, scales, strict=True):
        piece = flat[start:start + size].reshape(shape) * np.float32(scale / _TRUNC_STD)
        out.append(piece.astype(dtype) if traced else jax.device_put(piece.astype(dtype)))
        start += size
    return out


def _init_unet_params(model: nnx.Module, key: jax.Array) -> None:
    """Draw the kernels of every ``_Dense`` and ``_Conv`` of ``model`` (LeCun normal, but
    the output conv stays zero) and the label table (unit-variance truncated normal)."""
    targets = [(layer, "kernel", 1.0 / math.sqrt(math.prod(layer.kernel.shape[:-1])))
               for _, layer in nnx.iter_graph(model)
               if isinstance(layer, _Dense | _Conv) and not layer.zero]
    if getattr(model, "label_embedding", None) is not None:
        targets.append((model, "label_embedding", 1.0))
    shapes = [tuple(getattr(obj, name).shape) for obj, name, _ in targets]
    dtype = jnp.dtype(getattr(targets[0][0], targets[0][1]).dtype)
    values = _lecun_slices(key, shapes, [scale for _, _, scale in targets], dtype)
    for (obj, name, _), value in zip(targets, values, strict=True):
        setattr(obj, name, nnx.Param(value))


class UNet(nnx.Module):
    """U-Net velocity field ``v_theta(t, x)`` or ``v_theta(t, x, y)`` for square images.

    Layout (channels last, ``x`` of shape ``(H, W, C)`` with ``H = W = image_size``):

    - embedding ``e = MLP(sinusoidal_embedding(t)) + E[y]``: :func:`sinusoidal_embedding` of
      size ``channels``, then ``Linear(embed_dim) + SiLU + Linear(embed_dim)``; with
      ``num_classes = K`` a learned table ``E`` of ``K + 1`` rows, row ``K``
      (:attr:`null_label`) meaning "no label" (for classifier-free guidance);
    - a 3 x 3 input conv to ``channels``; then one level per entry ``m`` of ``channel_mult``
      (width ``channels * m``), each with ``num_res_blocks`` residual blocks, the sides
      halved between levels by a stride-2 conv (28 -> 14 -> 7: every level but the last
      needs an even side); a middle of two residual blocks (self-attention between them if
      ``mid_attention``); the mirrored up path with ``num_res_blocks + 1`` blocks per level,
      each taking the skip connection of the matching down-path output (concatenated), and
      nearest-neighbour upsampling + 3 x 3 conv between levels; GroupNorm, SiLU and a 3 x 3
      output conv to ``C`` channels;
    - residual block: ``skip(h) + conv(dropout(SiLU(GN(conv(SiLU(GN(h))) + A SiLU(e)))))``,
      ``A SiLU(e)`` a per-channel shift, ``skip`` a 1 x 1 conv when the width changes;
      followed by a residual multi-head self-attention over the ``H * W`` pixels at the
      levels whose side is in ``attention_resolutions``.

    The output conv is zero-initialised, so a fresh model is the zero velocity; other
    weights are LeCun-normal, biases zero, the label table standard normal.

    Args:
        image_size: side ``H = W`` of the images.
        in_channels: channels ``C`` of the images (and of the velocity).
        channels: width of the first level (even; also the size of the time features).
        channel_mult: width multiplier of each level (its length is the number of levels).
        num_res_blocks: residual blocks per level on the down path.
        attention_resolutions: level sides (e.g. ``(7,)``) with self-attention.
        mid_attention: self-attention in the middle block.
        num_heads: attention heads (they divide the width of each attention level).
        num_groups: GroupNorm groups (they divide every width).
        num_classes: ``K`` for a label-conditional net, ``None`` for an unconditional one.
        embed_dim: size of the time/label embedding (``4 * channels`` if ``None``).
        dropout: dropout rate in the residual blocks (0: deterministic). With a rate > 0
            the model draws from ``rngs`` while in training mode (``model.eval()`` stops it).
        time_scale: ``s`` of :func:`sinusoidal_embedding`.
        rngs: ``flax.nnx.Rngs`` for the initialisation (and dropout).
        param_dtype: dtype of the parameters.
        dtype: dtype of the computation (``None``: that of ``x``); the output has ``x``'s.

    Calling ``model(t, x, y=None)``: one image ``x`` ``(H, W, C)`` with scalar ``t`` (and
    scalar ``y``) gives ``(H, W, C)``; a batch ``(n, H, W, C)`` with ``t`` scalar or ``(n,)``
    (``y`` scalar or ``(n,)``) gives ``(n, H, W, C)``, with no ``vmap``: one image is a batch of
    one. ``y`` are integer labels in ``0..K-1``, or ``K`` = :attr:`null_label`; ``y=None``
    means the null label (or no label for an unconditional net). Out-of-range concrete
    labels raise ``ValueError``; traced ones (inside ``jit``) give NaN outputs.

    Presets: :meth:`digits` (8 x 8 x 1), :meth:`mnist` (28 x 28 x 1, small enough for a CPU)
    and :meth:`mnist_large` (28 x 28 x 1, for a GPU job); :meth:`summary` prints the size.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> from flax import nnx
        >>> model = fm.nn.UNet(8, channels=8, channel_mult=(1,), num_classes=10,
        ...                    rngs=nnx.Rngs(0))
        >>> model.null_label
        10
        >>> v = model(jnp.full(4, 0.5), jnp.zeros((4, 8, 8, 1)), jnp.array([0, 1, 2, 10]))
        >>> v.shape, float(jnp.abs(v).max())  # zero-initialised output conv
        ((4, 8, 8, 1), 0.0)
        >>> model(0.5, jnp.zeros((8, 8, 1)), 3).shape  # one image: a batch of one inside
        (8, 8, 1)
    """

    def __init__(self, image_size: int, in_channels: int = 1, *, channels: int = 32,
                 channel_mult: tuple[int, ...] = (1, 2), num_res_blocks: int = 1,
                 attention_resolutions: tuple[int, ...] = (), mid_attention: bool = True,
                 num_heads: int = 1, num_groups: int = 8, num_classes: int | None = None,
                 embed_dim: int | None = None, dropout: float = 0.0,
                 time_scale: float = 1000.0, rngs: nnx.Rngs, param_dtype: Any = jnp.float32,
                 dtype: Any = None):
        cfg = _check_unet_config(dict(
            image_size=image_size, in_channels=in_channels, channels=channels,
            channel_mult=channel_mult, num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions, mid_attention=mid_attention,
            num_heads=num_heads, num_groups=num_groups, num_classes=num_classes,
            embed_dim=embed_dim, dropout=dropout, param_dtype=param_dtype, dtype=dtype))
        for name in ("image_size", "in_channels", "channels", "channel_mult", "num_res_blocks",
                     "attention_resolutions", "mid_attention", "num_heads", "num_groups",
                     "num_classes", "dropout"):
            setattr(self, name, cfg[name])
        self.embed_dim = cfg["embed_dim"] or 4 * self.channels
        self.time_scale = float(time_scale)
        self.dtype = None if dtype is None else jnp.dtype(dtype)
        kw = dict(param_dtype=param_dtype)
        self.time_in = _Dense(self.channels, self.embed_dim, **kw)
        self.time_out = _Dense(self.embed_dim, self.embed_dim, **kw)
        self.label_embedding = None if self.num_classes is None else nnx.Param(
            _zeros((self.num_classes + 1, self.embed_dim), param_dtype))
        self.conv_in = _Conv(self.in_channels, self.channels, **kw)
        self.down, self.mid, self.up, width = self._build(cfg["sides"], dict(kw, rngs=rngs))
        self.norm_out = _GroupNorm(width, self.num_groups, param_dtype=param_dtype)
        self.conv_out = _Conv(width, self.in_channels, zero=True, **kw)
        _init_unet_params(self, rngs.params())

    def _build(self, sides: tuple[int, ...], kw: dict[str, Any]):
        """Down path, middle and up path; returns them and the width of the last block."""

        def block(c_in, c_out, side):
            heads = self.num_heads if side in self.attention_resolutions else None
            return _ResBlock(c_in, c_out, self.embed_dim, groups=self.num_groups,
                             dropout=self.dropout, attention_heads=heads, **kw)

        n_levels = len(self.channel_mult)
        ch, skips, down, up = self.channels, [self.channels], [], []
        for i, (m, side) in enumerate(zip(self.channel_mult, sides, strict=True)):
            for _ in range(self.num_res_blocks):
                down.append(block(ch, self.channels * m, side))
                ch = self.channels * m
                skips.append(ch)
            if i < n_levels - 1:
                down.append(_Down(ch, param_dtype=kw["param_dtype"]))
                skips.append(ch)
        mid_heads = self.num_heads if self.mid_attention else None
        mid = [_ResBlock(ch, ch, self.embed_dim, groups=self.num_groups, dropout=self.dropout,
                         attention_heads=mid_heads, **kw),
               _ResBlock(ch, ch, self.embed_dim, groups=self.num_groups, dropout=self.dropout,
                         attention_heads=None, **kw)]
        for i in reversed(range(n_levels)):
            for _ in range(self.num_res_blocks + 1):
                up.append(block(ch + skips.pop(), self.channels * self.channel_mult[i],
                                sides[i]))
                ch = self.channels * self.channel_mult[i]
            if i > 0:
                up.append(_Up(ch, param_dtype=kw["param_dtype"]))
        return nnx.List(down), nnx.List(mid), nnx.List(up), ch

    @property
    def null_label(self) -> int | None:
        """The "no label" class ``K`` (the last row of the label table), ``None`` if the net
        is unconditional."""
        return self.num_classes

    def _check_inputs(self, t: Any, x: Any, y: Any):
        """Validated ``(t (n,), x (n, H, W, C), y (n,) int32 or None, single)``."""
        if not hasattr(x, "dtype"):
            x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"`x` must have a floating-point dtype, got shape {tuple(x.shape)} "
                             f"and dtype {x.dtype}; cast it, e.g. `x.astype(jnp.float32)`")
        img = (self.image_size, self.image_size, self.in_channels)
        if x.ndim not in (3, 4) or tuple(x.shape[-3:]) != img:
            raise ValueError(f"`x` must have shape {img} or (n, {img[0]}, {img[1]}, {img[2]}) for "
                             f"`image_size`={self.image_size} and `in_channels`="
                             f"{self.in_channels}, got shape {tuple(x.shape)}")
        single = x.ndim == 3
        n = 1 if single else x.shape[0]
        if isinstance(t, bool):
            raise ValueError("`t` must be a float time, got a bool")
        if hasattr(t, "dtype") and not jnp.issubdtype(t.dtype, jnp.floating):
            raise ValueError(f"`t` must have a floating-point dtype, got dtype {t.dtype}")
        t = jnp.asarray(t).astype(x.dtype)
        if t.ndim != 0 and (single or t.shape != (n,)):
            want = "a scalar" if single else f"a scalar or have shape ({n},)"
            raise ValueError(f"`t` must be {want} when `x` has shape {tuple(x.shape)}, got "
                             f"shape {tuple(t.shape)}")
        t = jnp.broadcast_to(t, (n,))
        if y is not None:
            y = self._check_labels(y, single, n, x.shape)
        elif self.num_classes is not None:
            y = jnp.full((n,), self.num_classes, jnp.int32)
        return t, (x[None] if single else x), y, single

    def _check_labels(self, y: Any, single: bool, n: int, x_shape: tuple[int, ...]):
        if self.num_classes is None:
            raise ValueError("`y` was given but this UNet is unconditional (`num_classes`="
                             "None); build it with `num_classes=K` to condition on labels")
        if isinstance(y, bool | np.bool_) or (hasattr(y, "dtype") and y.dtype == jnp.bool_):
            raise ValueError("`y` must be integer labels, got a bool")
        if not hasattr(y, "dtype"):
            y = np.asarray(y)
        if not jnp.issubdtype(y.dtype, jnp.integer):
            raise ValueError(f"`y` must be integer labels in 0..{self.num_classes} (the last "
                             f"is the null label), got dtype {y.dtype}")
        if y.ndim != 0 and (single or tuple(y.shape) != (n,)):
            want = "a scalar" if single else f"a scalar or have shape ({n},)"
            raise ValueError(f"`y` must be {want} when `x` has shape {tuple(x_shape)}, got "
                             f"shape {tuple(y.shape)}")
        c = _checks.concrete(y)
        if c is not None and np.any((c < 0) | (c > self.num_classes)):
            bad = np.ravel(c)[(np.ravel(c) < 0) | (np.ravel(c) > self.num_classes)]
            raise ValueError(f"`y` must be labels in 0..{self.num_classes - 1} or "
                             f"{self.num_classes} (`null_label`), got {bad.size} outside, e.g. "
                             f"{sorted(set(bad.tolist()))[:5]}")
        return jnp.broadcast_to(jnp.asarray(y).astype(jnp.int32), (n,))

    def __call__(self, t: Any, x: Any, y: Any = None) -> jax.Array:
        t, xb, y, single = self._check_inputs(t, x, y)
        if self._draws_dropout():  # the dropout state must advance in place: no inner jit
            out = self._forward(t, xb, y)
        else:
            out = _unet_apply(*nnx.split(self), t, xb, y)
        return out[0] if single else out

    def _draws_dropout(self) -> bool:
        return self.dropout > 0 and any(
            getattr(layer, "drop", None) is not None and not layer.drop.deterministic
            for layer in (*self.down, *self.mid, *self.up))

    def _forward(self, t: jax.Array, xb: jax.Array, y: jax.Array | None) -> jax.Array:
        cdt = xb.dtype if self.dtype is None else self.dtype
        emb = sinusoidal_embedding(t, self.channels, time_scale=self.time_scale).astype(cdt)
        emb = self.time_out(jax.nn.silu(self.time_in(emb)))
        if self.label_embedding is not None:
            k = self.num_classes
            idx = jnp.where((y >= 0) & (y <= k), y, k + 1)  # out of range (traced): NaN rows
            emb = emb + jnp.take(self.label_embedding[...].astype(cdt), idx, axis=0,
                                 mode="fill", fill_value=jnp.nan)
        emb = jax.nn.silu(emb)
        h = self.conv_in(xb.astype(cdt))
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, _ResBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, _ResBlock):
                h = layer(jnp.concatenate([h, hs.pop()], axis=-1), emb)
            else:
                h = layer(h)
        return self.conv_out(jax.nn.silu(self.norm_out(h))).astype(xb.dtype)

    def summary(self) -> str:
        """One line: the configuration and the parameter count (:func:`num_params`).

        Example:
            >>> import fmjax as fm
            >>> from flax import nnx
            >>> print(fm.nn.UNet(8, channels=8, channel_mult=(1,), mid_attention=False,
            ...                  rngs=nnx.Rngs(0)).summary())
            UNet(8x8x1, channels 8 x (1,), 1 res/level, attention (), no mid): 10,289 params
        """
        s = self.image_size
        cond = "" if self.num_classes is None else f", {self.num_classes} classes + null"
        heads = f", {self.num_heads} heads" if self.num_heads > 1 else ""
        return (f"UNet({s}x{s}x{self.in_channels}, channels {self.channels} x "
                f"{self.channel_mult}, {self.num_res_blocks} res/level, attention "
                f"{self.attention_resolutions}{'' if self.mid_attention else ', no mid'}{heads}"
                f"{cond}): {num_params(self):,} params")

    @classmethod
    def digits(cls, num_classes: int | None = None, *, rngs: nnx.Rngs, **overrides: Any) -> UNet:
        """Preset for 8 x 8 x 1 images (scikit-learn digits): widths 16, 32 (levels 8, 4),
        one residual block per level, attention at 4 x 4 and in the middle; ``overrides``
        replace any option. 176,849 parameters unconditional (plus ``64 (K + 1)`` with
        ``num_classes=K``).

        Example:
            >>> import fmjax as fm
            >>> from flax import nnx
            >>> fm.nn.num_params(fm.nn.UNet.digits(10, rngs=nnx.Rngs(0)))  # 176,849 + 64 * 11
            177553
        """
        return cls(**{**_UNET_PRESETS["digits"], "num_classes": num_classes, **overrides},
                   rngs=rngs)

    @classmethod
    def mnist(cls, num_classes: int | None = None, *, rngs: nnx.Rngs, **overrides: Any) -> UNet:
        """Preset for 28 x 28 x 1 images, small enough to train on a CPU: widths 16, 32, 32
        (levels 28, 14, 7), one residual block per level, attention at 7 x 7 and in the
        middle; ``overrides`` replace any option. 280,177 parameters unconditional (plus
        ``64 (K + 1)`` with ``num_classes=K``).

        Example:
            >>> import fmjax as fm
            >>> from flax import nnx
            >>> fm.nn.num_params(fm.nn.UNet.mnist(10, rngs=nnx.Rngs(0)))  # 280,177 + 64 * 11
            280881
        """
        return cls(**{**_UNET_PRESETS["mnist"], "num_classes": num_classes, **overrides},
                   rngs=rngs)

    @classmethod
    def mnist_large(cls, num_classes: int | None = None, *, rngs: nnx.Rngs,
                    **overrides: Any) -> UNet:
        """Larger 28 x 28 x 1 configuration for a GPU batch job: widths 64, 128, 128 (levels
        28, 14, 7), two residual blocks per level, 4-head attention at 14 x 14, 7 x 7 and in
        the middle. 6,801,409 parameters unconditional (plus ``256 (K + 1)``).

        Example:
            >>> import fmjax as fm
            >>> from flax import nnx
            >>> fm.nn.num_params(fm.nn.UNet.mnist_large(10, rngs=nnx.Rngs(0)))  # + 256 * 11
            6804225
        """
        return cls(**{**_UNET_PRESETS["mnist_large"], "num_classes": num_classes, **overrides},
                   rngs=rngs)


@functools.partial(jax.jit, static_argnums=0)
def _unet_apply(graphdef: nnx.GraphDef, state: nnx.State, t: jax.Array, x: jax.Array,
                y: jax.Array | None) -> jax.Array:
    """The batched forward of a validated call, compiled once per shape: called eagerly,
    the network would otherwise compile each of its operations separately. Inside an outer
    ``jit``/``grad``/``vmap`` it is inlined. (``nnx.jit`` is not used: it writes the state
    back into the module, which fails for a module closed over by ``jax.vmap``.)"""
    return nnx.merge(graphdef, state)._forward(t, x, y)
