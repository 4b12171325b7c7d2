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

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Float

from ._typing import Batch, BatchLike, ScalarLike, ValuesLike, Vector, VectorLike, VelocityField

__all__ = ["VelocityMLP", "velocity_field", "num_params", "time_features", "ACTIVATIONS"]

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
        if (isinstance(num_frequencies, bool) or not isinstance(num_frequencies, int | np.integer)
                or num_frequencies < 1):
            raise ValueError(f"`num_frequencies` must be an integer >= 1, got {num_frequencies!r}")
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
        for name, val, lo in (("dim", dim, 1), ("width", width, 1), ("depth", depth, 1),
                              ("num_frequencies", num_frequencies, 1)):
            if not isinstance(val, int | np.integer) or isinstance(val, bool) or val < lo:
                raise ValueError(f"`{name}` must be an integer >= {lo}, got {val!r}")
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
