r"""The flow-matching loss for any affine path, points of any shape, with optional labels.

.. math::

    L = \frac1n \sum_{i=1}^n \big\| v(t_i, x_{t_i}^{(i)} + \sigma \varepsilon_i)
        - a'(t_i) x_0^{(i)} - b'(t_i) x_1^{(i)} \big\|^2,
    \qquad x_t = a(t) x_0 + b(t) x_1,

the regression of the notes ("Flow matching"): its minimiser over all velocity fields is the
conditional expectation :math:`v_t(x) = \mathbb{E}[a'(t) X_0 + b'(t) X_1 \mid X_t = x]`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ._checks import _describe, finite_number
from .paths import AffinePath, Linear, _require_path

__all__ = ["flow_matching_loss"]

_LINEAR = Linear()


def _check_loss_inputs(t, x0, x1, sigma, noise, labels):
    for name, arr in (("t", t), ("x0", x0), ("x1", x1)):
        if not hasattr(arr, "dtype") or not jnp.issubdtype(arr.dtype, jnp.floating):
            raise ValueError(f"`{name}` must be a floating-point array, got {_describe(arr)}")
    if x0.ndim < 2:
        raise ValueError(f"`x0` must be a batch (n, *point_shape), got shape {x0.shape}")
    if x1.shape != x0.shape or x1.dtype != x0.dtype:
        raise ValueError(f"`x0` has {_describe(x0)} but `x1` has {_describe(x1)}; they must "
                         f"match")
    if t.shape != x0.shape[:1]:
        raise ValueError(f"`t` must have shape ({x0.shape[0]},), one time per point of `x0` "
                         f"(shape {x0.shape}), got shape {t.shape}")
    sigma = finite_number(sigma, "sigma")
    if sigma > 0:
        if noise is None:
            raise ValueError(f"`noise` is required when sigma = {sigma} > 0 (standard normal "
                             f"draws of the shape of `x0`, {x0.shape})")
        if getattr(noise, "shape", None) != x0.shape:
            raise ValueError(f"`noise` must have the shape of `x0`, {x0.shape}, got "
                             f"{getattr(noise, 'shape', type(noise).__name__)}")
    elif noise is not None:
        raise ValueError("`noise` is given but sigma = 0: pass sigma > 0 or drop `noise`")
    if labels is not None and getattr(labels, "shape", None) != x0.shape[:1]:
        raise ValueError(f"`labels` must have shape ({x0.shape[0]},), got "
                         f"{getattr(labels, 'shape', type(labels).__name__)}")


def flow_matching_loss(velocity: Callable, t: jax.Array, x0: jax.Array, x1: jax.Array, *,
                       path: AffinePath | None = None, sigma: float = 0.0,
                       noise: jax.Array | None = None,
                       labels: jax.Array | None = None) -> jax.Array:
    r"""Mean squared error of ``velocity`` against the conditional target velocity.

    .. math::

        L = \frac1n \sum_{i=1}^n \big\| v(t_i, a(t_i) x_0^{(i)} + b(t_i) x_1^{(i)}
            + \sigma \varepsilon_i) - a'(t_i) x_0^{(i)} - b'(t_i) x_1^{(i)} \big\|^2

    (the squared norm sums over every axis of one point). Pure and differentiable in the
    velocity's parameters: ``jax.grad`` of it (through ``nnx.split``/``nnx.merge`` or
    ``equinox.filter_grad``) is the flow-matching gradient.

    Args:
        velocity: a per-point velocity ``v(t, x)`` (``x`` one point of shape
            ``point_shape``), or ``v(t, x, y)`` when ``labels`` are given: an NNX module,
            a closed form (:class:`fmjax.GaussianVelocity`), any callable. It is
            ``jax.vmap``-ed over the batch.
        t: ``(n,)`` times in ``[0, 1]``.
        x0, x1: ``(n, *point_shape)`` coupled pairs, flat ``(n, d)`` or images
            ``(n, H, W, C)``, same shape and floating dtype.
        path: the affine path (default :class:`fmjax.Linear`).
        sigma: standard deviation of the Gaussian noise added to :math:`x_t` (a Python
            number; 0 for plain flow matching).
        noise: ``(n, *point_shape)`` standard normal draws, required iff ``sigma > 0``.
        labels: optional ``(n,)`` labels passed as ``v(t, x, y)`` (conditional flow
            matching).

    Returns:
        The scalar loss in ``x0``'s dtype.

    Raises:
        ValueError: mismatched shapes or dtypes, ``noise`` missing with ``sigma > 0`` (or
            given with ``sigma = 0``), a negative ``sigma``.

    Example:
        The target of the linear path is :math:`x_1 - x_0`; the constant velocity
        :math:`x_1 - x_0` of a single pair has zero loss:

        >>> import jax.numpy as jnp, fmjax as fm
        >>> x0, x1 = jnp.zeros((3, 2)), jnp.ones((3, 2))
        >>> t = jnp.array([0.1, 0.5, 0.9])
        >>> float(fm.flow_matching_loss(lambda t, x: jnp.ones(2), t, x0, x1))
        0.0
        >>> float(fm.flow_matching_loss(lambda t, x: jnp.zeros(2), t, x0, x1))
        2.0
    """
    if not callable(velocity):
        raise ValueError(f"`velocity` must be a callable v(t, x), got {type(velocity).__name__}")
    path = _LINEAR if path is None else _require_path(path)
    _check_loss_inputs(t, x0, x1, sigma, noise, labels)
    dtype = x0.dtype
    expand = (lambda c: c.reshape(c.shape + (1,) * (x0.ndim - 1)))
    a, b = path.coefficients(t)
    da, db = path.derivatives(t)
    xt = expand(a) * x0 + expand(b) * x1
    if sigma > 0:
        xt = xt + sigma * noise
    target = expand(da) * x0 + expand(db) * x1
    if labels is None:
        v = jax.vmap(lambda ti, xi: velocity(ti, xi))(t, xt)
    else:
        v = jax.vmap(lambda ti, xi, yi: velocity(ti, xi, yi))(t, xt, labels)
    if getattr(v, "shape", None) != x0.shape:
        raise ValueError(f"`velocity` must return one velocity of shape {x0.shape[1:]} per "
                         f"point, got {getattr(v, 'shape', None)} for the batch {x0.shape}")
    sq = (v.astype(dtype) - target) ** 2
    return jnp.mean(jnp.sum(sq, axis=tuple(range(1, x0.ndim))))
