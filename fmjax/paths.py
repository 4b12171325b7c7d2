r"""Affine interpolants :math:`X_t = a(t) X_0 + b(t) X_1` (seed, "Flow Matching").

A path is a small immutable object: ``coefficients(t) -> (a, b)``,
``derivatives(t) -> (a', b')``, ``interpolate(t, x0, x1)`` and
``target_velocity(t, x0, x1) = a'(t) x0 + b'(t) x1`` (the regression target
:math:`\mathrm{d}X_t/\mathrm{d}t` of the flow-matching loss). Paths are registered as
static pytrees, so they can be passed through ``jax.jit`` as arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from . import _checks
from ._typing import Points, PointsLike, RatiosLike, Scalar, ScalarLike, Times

__all__ = ["AffinePath", "Linear", "Trigonometric", "affine_path"]


class AffinePath:
    r"""The general affine path :math:`X_t = a(t) X_0 + b(t) X_1`.

    Args:
        a: differentiable scalar function of ``t`` (``a(0) = 1``, ``a(1) = 0`` for a path
            from :math:`X_0` to :math:`X_1`).
        b: differentiable scalar function of ``t`` (``b(0) = 0``, ``b(1) = 1``).
        name: optional label used in ``repr`` and in checkpoint configs.

    Derivatives come from ``jax.jvp`` unless a subclass gives them in closed form.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> path = fm.AffinePath(lambda t: 1 - t**2, lambda t: t**2, name="quadratic")
        >>> path.interpolate(0.5, jnp.zeros(2), jnp.ones(2))
        Array([0.25, 0.25], dtype=float32)
    """

    def __init__(self, a: Callable[[Scalar], Scalar], b: Callable[[Scalar], Scalar],
                 name: str | None = None):
        if not (callable(a) and callable(b)):
            raise ValueError("`a` and `b` must be callables t -> scalar")
        self._a, self._b = a, b
        self.name = name or "affine"

    # Identity: two paths are equal when their coefficient functions are the same objects.
    def _key(self):
        return (type(self), self._a, self._b)

    def __eq__(self, other):
        return isinstance(other, AffinePath) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"

    # --- coefficients -------------------------------------------------------------------
    def coefficients(self, t: ScalarLike) -> tuple[Scalar, Scalar]:
        """``(a(t), b(t))`` as arrays with the dtype of ``t``."""
        t = jnp.asarray(t)
        return jnp.asarray(self._a(t), t.dtype), jnp.asarray(self._b(t), t.dtype)

    def derivatives(self, t: ScalarLike) -> tuple[Scalar, Scalar]:
        """``(a'(t), b'(t))``, by forward-mode autodiff in the general case."""
        t = jnp.asarray(t)
        one = jnp.ones_like(t)
        _, da = jax.jvp(lambda s: jnp.asarray(self._a(s), t.dtype), (t,), (one,))
        _, db = jax.jvp(lambda s: jnp.asarray(self._b(s), t.dtype), (t,), (one,))
        return da, db

    # --- public API ---------------------------------------------------------------------
    def _prepare(self, t, x0, x1):
        x0 = _checks.as_float_array(x0, "x0")
        x1 = _checks.as_float_array(x1, "x1")
        _checks.check_same_shape(x0, "x0", x1, "x1")
        if x0.dtype != x1.dtype:
            raise ValueError(f"`x0` has dtype {x0.dtype} but `x1` has dtype {x1.dtype}")
        t = _checks.as_time(t, "t", dtype=x0.dtype)
        return t, x0, x1

    def interpolate(self, t: ScalarLike, x0: PointsLike, x1: PointsLike) -> Points:
        r""":math:`X_t = a(t) x_0 + b(t) x_1` for one pair (any matching shapes, scalar ``t``)."""
        t, x0, x1 = self._prepare(t, x0, x1)
        a, b = self.coefficients(t)
        return a * x0 + b * x1

    def target_velocity(self, t: ScalarLike, x0: PointsLike, x1: PointsLike) -> Points:
        r""":math:`\mathrm{d}X_t/\mathrm{d}t = a'(t) x_0 + b'(t) x_1`, the flow-matching target."""
        t, x0, x1 = self._prepare(t, x0, x1)
        da, db = self.derivatives(t)
        return da * x0 + db * x1

    # Exercise 1(c) needs the inverse of the signal-to-noise ratio b/a.
    def snr_inverse(self, ratio: RatiosLike) -> Times:
        r"""The time ``r`` with :math:`b(r)/a(r) =` ``ratio`` (``ratio >= 0``).

        Closed form for the linear and trigonometric paths; bisection (60 halvings, so
        exact to float64) in general, assuming :math:`b/a` increases on ``[0, 1)``.
        """
        ratio = jnp.asarray(ratio)

        def body(_, lohi):
            lo, hi = lohi
            mid = 0.5 * (lo + hi)
            a, b = self.coefficients(mid)
            above = b > ratio * a
            return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

        lo, hi = jax.lax.fori_loop(0, 60, body, (jnp.zeros_like(ratio), jnp.ones_like(ratio)))
        return 0.5 * (lo + hi)


jax.tree_util.register_static(AffinePath)


def affine_path(a: Callable[[Scalar], Scalar], b: Callable[[Scalar], Scalar],
                name: str | None = None) -> AffinePath:
    r"""Build a general affine path :math:`X_t = a(t) X_0 + b(t) X_1` from ``a`` and ``b``.

    Same as ``AffinePath(a, b, name)``; derivatives :math:`a'`, :math:`b'` come from
    ``jax.jvp``.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> path = fm.affine_path(lambda t: 1 - t, lambda t: t)  # the linear path again
        >>> [float(u) for u in path.derivatives(jnp.float32(0.3))]  # (a', b')
        [-1.0, 1.0]
    """
    return AffinePath(a, b, name)


def _lin_a(t):
    return 1 - t


def _lin_b(t):
    return t


class Linear(AffinePath):
    r"""The seed's linear path :math:`X_t = (1 - t) X_0 + t X_1`, velocity :math:`X_1 - X_0`.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> fm.Linear().target_velocity(0.3, jnp.zeros(2), jnp.ones(2))
        Array([1., 1.], dtype=float32)
    """

    def __init__(self) -> None:
        super().__init__(_lin_a, _lin_b, name="linear")

    def _key(self):  # all instances are equal
        return (Linear,)

    def derivatives(self, t: ScalarLike) -> tuple[Scalar, Scalar]:
        t = jnp.asarray(t)
        return -jnp.ones_like(t), jnp.ones_like(t)

    def snr_inverse(self, ratio: RatiosLike) -> Times:
        ratio = jnp.asarray(ratio)
        return ratio / (1 + ratio)


def _trig_a(t):
    return jnp.cos(0.5 * math.pi * t)


def _trig_b(t):
    return jnp.sin(0.5 * math.pi * t)


class Trigonometric(AffinePath):
    r"""The variance-preserving path :math:`X_t = \cos(\pi t/2) X_0 + \sin(\pi t/2) X_1`.

    Its target velocity is :math:`\frac{\pi}{2}(\cos(\pi t/2) X_1 - \sin(\pi t/2) X_0)`
    (the seed writes it without the :math:`\pi/2` factor, which only rescales time).

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> fm.Trigonometric().coefficients(jnp.float32(1.0))[1]
        Array(1., dtype=float32)
    """

    def __init__(self) -> None:
        super().__init__(_trig_a, _trig_b, name="trigonometric")

    def _key(self):  # all instances are equal
        return (Trigonometric,)

    def derivatives(self, t: ScalarLike) -> tuple[Scalar, Scalar]:
        t = jnp.asarray(t)
        h = 0.5 * math.pi
        return -h * jnp.sin(h * t), h * jnp.cos(h * t)

    def snr_inverse(self, ratio: RatiosLike) -> Times:
        ratio = jnp.asarray(ratio)
        return jnp.arctan(ratio) / (0.5 * math.pi)


jax.tree_util.register_static(Linear)
jax.tree_util.register_static(Trigonometric)


def _require_path(path: object, name: str = "path") -> AffinePath:
    """``path`` itself if it is an :class:`AffinePath`, else a ValueError naming ``name``."""
    if not isinstance(path, AffinePath):
        raise ValueError(f"`{name}` must be an fmjax path (fm.Linear(), fm.Trigonometric(), "
                         f"fm.affine_path(a, b)), got {type(path).__name__}")
    return path
