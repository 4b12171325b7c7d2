r"""Static and dynamic optimal transport for the quadratic cost (seed, "Dynamical Formulation").

* Gaussians: the Bures/Brenier map :func:`gaussian_ot_map` and the closed-form
  :math:`\mathbb{W}_2` (:func:`gaussian_w2`, :func:`gaussian_w2_squared`).
* 1-D: the monotone rearrangement :math:`F_\beta^{-1}\circ F_\alpha` (:func:`monotone_map_1d`).
* McCann interpolation :math:`T_t = t T + (1 - t)\,\mathrm{Id}` (:func:`mccann_interpolation`)
  and, for an affine :math:`T`, its velocity :math:`v_t = (T - \mathrm{Id})\circ T_t^{-1}`
  in closed form (:func:`mccann_velocity`).

Empirical :math:`\mathbb{W}_2` between point clouds is in :mod:`fmjax.metrics`. Naming rule:
a function whose name ends in ``_squared`` returns :math:`\mathbb{W}_2^2`; every other ``w2``
function returns :math:`\mathbb{W}_2` itself.

Matrix square roots are taken by ``eigh`` with a custom JVP (Daleckii-Krein divided
differences :math:`1/(\sqrt{\lambda_i} + \sqrt{\lambda_j})`), so gradients stay finite at
covariances with repeated eigenvalues such as the identity, where the generic ``eigh``
derivative divides by zero.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from ._typing import (
    BatchLike,
    MatrixLike,
    OtherBatchLike,
    Points,
    PointsLike,
    Scalar,
    ScalarLike,
    ValuesLike,
    Vector,
    VectorLike,
)

__all__ = [
    "AffineMap",
    "McCannVelocity",
    "MonotoneMap1D",
    "gaussian_ot_map",
    "gaussian_w2",
    "gaussian_w2_squared",
    "mccann_interpolation",
    "mccann_velocity",
    "monotone_map_1d",
]

# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def _common_float_dtype(*arrays: jax.Array):
    dtype = arrays[0].dtype
    for a in arrays[1:]:
        dtype = jnp.promote_types(dtype, a.dtype)
    return dtype


def _sym(S: jax.Array) -> jax.Array:
    return 0.5 * (S + S.T)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _spd_power(S: jax.Array, p: float) -> jax.Array:
    """``S**p`` for a symmetric positive-definite ``S`` and ``p`` in ``{1/2, -1/2}``."""
    w, V = jnp.linalg.eigh(_sym(S))
    w = jnp.maximum(w, jnp.finfo(S.dtype).tiny)
    return (V * (w**p)[None, :]) @ V.T


@_spd_power.defjvp
def _spd_power_jvp(p, primals, tangents):
    (S,), (dS,) = primals, tangents
    w, V = jnp.linalg.eigh(_sym(S))
    w = jnp.maximum(w, jnp.finfo(S.dtype).tiny)
    s = jnp.sqrt(w)
    out = (V * (w**p)[None, :]) @ V.T
    # Divided differences (f(w_i) - f(w_j)) / (w_i - w_j), written without the subtraction
    # so that they are exact (and finite) for repeated eigenvalues.
    si, sj = s[:, None], s[None, :]
    if p == 0.5:
        L = 1.0 / (si + sj)
    elif p == -0.5:
        L = -1.0 / (si * sj * (si + sj))
    else:  # pragma: no cover - internal use only
        raise ValueError(f"_spd_power supports p = 0.5 or -0.5, got p = {p}")
    dS_eig = V.T @ _sym(dS) @ V
    return out, V @ (L * dS_eig) @ V.T


def _sqrtm(S: jax.Array) -> jax.Array:
    return _spd_power(S, 0.5)


def _inv_sqrtm(S: jax.Array) -> jax.Array:
    return _spd_power(S, -0.5)


def _gaussian_inputs(mean0, cov0, mean1, cov1):
    """Validate two Gaussians and cast them to their common floating dtype."""
    mean0 = _checks.check_vector(mean0, "mean0")
    d = mean0.shape[0]
    if d == 0:
        raise ValueError("`mean0` is empty (dimension 0)")
    mean1 = _checks.check_vector(mean1, "mean1")
    if mean1.shape != mean0.shape:
        raise ValueError(f"`mean0` has shape {mean0.shape} but `mean1` has shape {mean1.shape}; "
                         f"they must match")
    cov0 = _checks.check_cov(cov0, "cov0", d)
    cov1 = _checks.check_cov(cov1, "cov1", d)
    dtype = _common_float_dtype(mean0, cov0, mean1, cov1)
    return (mean0.astype(dtype), cov0.astype(dtype), mean1.astype(dtype), cov1.astype(dtype))


# ----------------------------------------------------------------------------------------
# Affine maps and Gaussians
# ----------------------------------------------------------------------------------------


class AffineMap(eqx.Module):
    r"""The affine map :math:`T(x) = A x + b` on one point, as an immutable pytree.

    Attributes:
        A: the linear part, shape ``(d, d)``.
        b: the offset, shape ``(d,)``.

    ``T(x)`` takes one point of shape ``(d,)`` and returns ``(d,)`` in the dtype of ``x``
    (``A`` and ``b`` are cast to it); use ``jax.vmap(T)`` on a batch. Maps compose with
    ``T.compose(S)`` (:math:`T\circ S`) and invert with ``T.inverse()``. Being a pytree, an
    ``AffineMap`` passes through ``jax.jit`` / ``jax.vmap`` as an argument.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> T = fm.AffineMap(2.0 * jnp.eye(2), jnp.ones(2))
        >>> T(jnp.array([1.0, 2.0])).tolist()
        [3.0, 5.0]
    """

    A: jax.Array
    b: jax.Array

    def __init__(self, A, b):
        A = _checks.as_float_array(A, "A", ndim=2)
        b = _checks.as_float_array(b, "b", ndim=1)
        if A.shape[0] != A.shape[1]:
            raise ValueError(f"`A` must be square, got shape {A.shape}")
        if b.shape[0] != A.shape[0]:
            raise ValueError(f"`A` has shape {A.shape} but `b` has shape {b.shape}; "
                             f"`b` must have shape ({A.shape[0]},)")
        dtype = _common_float_dtype(A, b)
        self.A = A.astype(dtype)
        self.b = b.astype(dtype)

    @property
    def dim(self) -> int:
        """The dimension ``d``."""
        return self.b.shape[-1]

    def __call__(self, x: VectorLike) -> Vector:
        x = _checks.as_float_array(x, "x", ndim=1)
        if x.shape[0] != self.dim:
            raise ValueError(f"`x` must have shape ({self.dim},) for this map, got shape "
                             f"{x.shape}; use jax.vmap(T) on a batch of points")
        return self.A.astype(x.dtype) @ x + self.b.astype(x.dtype)

    def compose(self, other: AffineMap) -> AffineMap:
        r"""``self ∘ other``: :math:`x \mapsto A_1 (A_2 x + b_2) + b_1`."""
        if not isinstance(other, AffineMap):
            raise ValueError(f"`other` must be an AffineMap, got {type(other).__name__}")
        if other.dim != self.dim:
            raise ValueError(f"cannot compose maps of dimensions {self.dim} and {other.dim}")
        dtype = _common_float_dtype(self.A, other.A)
        A1, b1 = self.A.astype(dtype), self.b.astype(dtype)
        A2, b2 = other.A.astype(dtype), other.b.astype(dtype)
        return AffineMap(A1 @ A2, A1 @ b2 + b1)

    def inverse(self) -> AffineMap:
        r""":math:`T^{-1}(y) = A^{-1}(y - b)` (``A`` must be invertible)."""
        Ainv = jnp.linalg.inv(self.A)
        return AffineMap(Ainv, -(Ainv @ self.b))


def gaussian_ot_map(mean0: VectorLike, cov0: MatrixLike, mean1: VectorLike,
                    cov1: MatrixLike) -> AffineMap:
    r"""The optimal transport (Brenier) map between two Gaussians.

    For :math:`\alpha = \mathcal{N}(m_0, \Sigma_0)` and :math:`\beta = \mathcal{N}(m_1, \Sigma_1)`,

    .. math::

        T(x) = m_1 + A (x - m_0), \qquad
        A = \Sigma_0^{-1/2} \big(\Sigma_0^{1/2} \Sigma_1 \Sigma_0^{1/2}\big)^{1/2}
            \Sigma_0^{-1/2},

    the unique symmetric positive-definite :math:`A` with :math:`A \Sigma_0 A = \Sigma_1`;
    :math:`T = \nabla \varphi` with the convex :math:`\varphi(x) = \tfrac12 x^\top A x +
    (m_1 - A m_0)^\top x`. Matrix square roots come from ``eigh`` (differentiable, finite
    gradients at repeated eigenvalues).

    Args:
        mean0: ``(d,)`` mean of the source.
        cov0: ``(d, d)`` symmetric positive-definite covariance of the source.
        mean1: ``(d,)`` mean of the target.
        cov1: ``(d, d)`` symmetric positive-definite covariance of the target.

    Returns:
        ``AffineMap(A, b)`` with ``b = m1 - A m0``, in the common floating dtype of the inputs.

    Raises:
        ValueError: mismatched shapes, integer dtypes, non-finite entries, a covariance that
            is not symmetric positive definite (eagerly; under ``jit`` an
            ``equinox`` runtime error).

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> T = fm.gaussian_ot_map(jnp.zeros(2), jnp.eye(2), jnp.ones(2), 4.0 * jnp.eye(2))
        >>> T.A.round(3).tolist(), T(jnp.zeros(2)).tolist()
        ([[2.0, 0.0], [0.0, 2.0]], [1.0, 1.0])
    """
    mean0, cov0, mean1, cov1 = _gaussian_inputs(mean0, cov0, mean1, cov1)
    R = _sqrtm(cov0)
    Rinv = _inv_sqrtm(cov0)
    middle = _sqrtm(_sym(R @ cov1 @ R))
    A = _sym(Rinv @ middle @ Rinv)
    return AffineMap(A, mean1 - A @ mean0)


def gaussian_w2_squared(mean0: VectorLike, cov0: MatrixLike, mean1: VectorLike,
                        cov1: MatrixLike) -> Scalar:
    r"""The SQUARED Wasserstein-2 distance :math:`\mathbb{W}_2^2` between two Gaussians.

    The Bures formula:

    .. math::

        \mathbb{W}_2^2 = \|m_0 - m_1\|^2 + \operatorname{tr}\Sigma_0 + \operatorname{tr}\Sigma_1
        - 2 \operatorname{tr}\big(\Sigma_0^{1/2} \Sigma_1 \Sigma_0^{1/2}\big)^{1/2}.

    Differentiable in all four arguments (the gradient in :math:`\Sigma_0` is
    :math:`I - A`, with :math:`A` the matrix of :func:`gaussian_ot_map`). Rounding can make the
    formula a tiny negative number for (nearly) equal Gaussians; it is clipped at 0.

    Args:
        mean0, cov0, mean1, cov1: as in :func:`gaussian_ot_map`.

    Returns:
        A scalar :math:`\mathbb{W}_2^2` in the common dtype of the inputs.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> round(float(fm.gaussian_w2_squared(jnp.zeros(2), jnp.eye(2),
        ...                                    jnp.ones(2), 4.0 * jnp.eye(2))), 4)
        4.0
    """
    mean0, cov0, mean1, cov1 = _gaussian_inputs(mean0, cov0, mean1, cov1)
    R = _sqrtm(cov0)
    cross = jnp.trace(_sqrtm(_sym(R @ cov1 @ R)))
    value = jnp.sum((mean0 - mean1) ** 2) + jnp.trace(cov0) + jnp.trace(cov1) - 2.0 * cross
    return jnp.maximum(value, jnp.zeros((), value.dtype))


def gaussian_w2(mean0: VectorLike, cov0: MatrixLike, mean1: VectorLike,
                cov1: MatrixLike) -> Scalar:
    r"""The Wasserstein-2 distance :math:`\mathbb{W}_2` (NOT squared) between two Gaussians.

    :math:`\mathbb{W}_2 = \sqrt{\text{gaussian\_w2\_squared}}`, see
    :func:`gaussian_w2_squared` for the formula. Its gradient is infinite where the two
    Gaussians coincide (like :math:`|x|` at 0); differentiate :func:`gaussian_w2_squared`
    instead when that can happen.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> round(float(fm.gaussian_w2(jnp.zeros(2), jnp.eye(2),
        ...                            jnp.ones(2), 4.0 * jnp.eye(2))), 4)
        2.0
    """
    return jnp.sqrt(gaussian_w2_squared(mean0, cov0, mean1, cov1))


# ----------------------------------------------------------------------------------------
# One dimension
# ----------------------------------------------------------------------------------------


def _samples_1d(s, name: str) -> jax.Array:
    arr = _checks.as_float_array(s, name, ndim=(1, 2))
    if arr.ndim == 2:
        if arr.shape[1] != 1:
            raise ValueError(f"`{name}` must have shape (n,) or (n, 1) (1-D samples), "
                             f"got shape {arr.shape}")
        arr = arr[:, 0]
    if arr.shape[0] == 0:
        raise ValueError(f"`{name}` is empty, shape {arr.shape}")
    return jnp.sort(arr)


def _plotting_positions(n: int, dtype) -> jax.Array:
    return (jnp.arange(n, dtype=dtype) + 0.5) / n


class MonotoneMap1D(eqx.Module):
    r"""The 1-D monotone (optimal) map :math:`T = F_\beta^{-1} \circ F_\alpha`.

    Built by :func:`monotone_map_1d`; call it on an array of any shape (it acts
    elementwise, so a point of shape ``(1,)`` works as a velocity-style point and a batch of
    shape ``(n,)`` or ``(n, 1)`` works as is). The output has the dtype of the input.

    Attributes:
        x_sorted: sorted source samples, or ``None`` when ``cdf0`` is given.
        y_sorted: sorted target samples, or ``None`` when ``quantile1`` is given.
        cdf0: source CDF :math:`F_\alpha` (static), or ``None``.
        quantile1: target quantile function :math:`F_\beta^{-1}` (static), or ``None``.

    Example:
        With as many source as target samples, the map sends the ``i``-th smallest source
        sample to the ``i``-th smallest target sample (the optimal assignment in 1-D):

        >>> import jax.numpy as jnp, fmjax as fm
        >>> T = fm.monotone_map_1d(jnp.array([0.0, 2.0, 1.0]), jnp.array([30.0, 10.0, 20.0]))
        >>> T(jnp.array([0.0, 1.0, 2.0])).tolist(), T.y_sorted.tolist()
        ([10.0, 20.0, 30.0], [10.0, 20.0, 30.0])
        >>> float(T.cdf(jnp.array(1.0))), float(T.quantile(jnp.array(0.5)))
        (0.5, 20.0)
    """

    x_sorted: jax.Array | None
    y_sorted: jax.Array | None
    cdf0: Callable | None = eqx.field(static=True)
    quantile1: Callable | None = eqx.field(static=True)

    def cdf(self, x: Points) -> Points:
        r""":math:`F_\alpha(x)`: the given CDF, or the piecewise-linear empirical CDF."""
        if self.cdf0 is not None:
            return jnp.clip(jnp.asarray(self.cdf0(x)).astype(x.dtype), 0.0, 1.0)
        xs = self.x_sorted.astype(x.dtype)
        return jnp.interp(x, xs, _plotting_positions(xs.shape[0], x.dtype))

    def quantile(self, u: Points) -> Points:
        r""":math:`F_\beta^{-1}(u)`: the given quantile, or the piecewise-linear empirical one."""
        if self.quantile1 is not None:
            return jnp.asarray(self.quantile1(u)).astype(u.dtype)
        ys = self.y_sorted.astype(u.dtype)
        return jnp.interp(u, _plotting_positions(ys.shape[0], u.dtype), ys)

    def __call__(self, x: PointsLike) -> Points:
        x = _checks.as_float_array(x, "x")
        return self.quantile(self.cdf(x))


def monotone_map_1d(x_samples: ValuesLike | BatchLike | None = None,
                    y_samples: ValuesLike | OtherBatchLike | None = None, *,
                    cdf0: Callable[[Points], Points] | None = None,
                    quantile1: Callable[[Points], Points] | None = None) -> MonotoneMap1D:
    r"""The 1-D optimal transport map :math:`T = F_\beta^{-1} \circ F_\alpha` (seed, Exercise 3).

    In one dimension the increasing rearrangement is optimal for every convex cost. Give the
    source either as samples (``x_samples``) or as its CDF (``cdf0``), and the target either
    as samples (``y_samples``) or as its quantile function (``quantile1``); any of the four
    combinations works.

    From samples :math:`x_{(1)} \le \dots \le x_{(n)}` the CDF is the piecewise-linear
    interpolation of :math:`F(x_{(i)}) = (i - 1/2)/n` (constant beyond the extreme samples);
    the target quantile interpolates :math:`F^{-1}((j - 1/2)/m) = y_{(j)}`. With ``n == m``
    the map therefore sends :math:`x_{(i)}` exactly to :math:`y_{(i)}`, the discrete optimal
    assignment. ``cdf0`` and ``quantile1`` must be elementwise JAX-traceable functions (e.g.
    ``jax.scipy.stats.norm.cdf``); the CDF value is clipped to ``[0, 1]``.

    Args:
        x_samples: source samples, shape ``(n,)`` or ``(n, 1)``.
        y_samples: target samples, shape ``(m,)`` or ``(m, 1)``.
        cdf0: source CDF :math:`F_\alpha` (instead of ``x_samples``).
        quantile1: target quantile function :math:`F_\beta^{-1}` (instead of ``y_samples``).

    Returns:
        A :class:`MonotoneMap1D`, an elementwise callable pytree.

    Example:
        >>> import jax.numpy as jnp, jax.scipy.stats as st, fmjax as fm
        >>> T = fm.monotone_map_1d(cdf0=st.norm.cdf, quantile1=lambda u: 2.0 * st.norm.ppf(u) + 1)
        >>> T(jnp.array([0.0, 1.0])).round(4).tolist()
        [1.0, 3.0]
    """
    if (x_samples is None) == (cdf0 is None):
        raise ValueError("give exactly one of `x_samples` (source samples) and `cdf0` "
                         "(source CDF)")
    if (y_samples is None) == (quantile1 is None):
        raise ValueError("give exactly one of `y_samples` (target samples) and `quantile1` "
                         "(target quantile function)")
    if cdf0 is not None and not callable(cdf0):
        raise ValueError(f"`cdf0` must be callable, got {type(cdf0).__name__}")
    if quantile1 is not None and not callable(quantile1):
        raise ValueError(f"`quantile1` must be callable, got {type(quantile1).__name__}")
    xs = None if x_samples is None else _samples_1d(x_samples, "x_samples")
    ys = None if y_samples is None else _samples_1d(y_samples, "y_samples")
    return MonotoneMap1D(xs, ys, cdf0, quantile1)


# ----------------------------------------------------------------------------------------
# McCann interpolation
# ----------------------------------------------------------------------------------------


def mccann_interpolation(T: AffineMap | Callable[[Vector], Vector],
                         t: ScalarLike) -> AffineMap | Callable[[VectorLike], Vector]:
    r"""The McCann interpolation :math:`T_t = t\,T + (1 - t)\,\mathrm{Id}`, :math:`t\in[0,1]`.

    :math:`\mu_t = (T_t)_\#\alpha` is the :math:`\mathbb{W}_2` geodesic from :math:`\alpha` to
    :math:`\beta = T_\#\alpha` when :math:`T` is optimal:
    :math:`\mathbb{W}_2(\mu_s, \mu_t) = |s - t|\,\mathbb{W}_2(\alpha, \beta)`.

    Args:
        T: an :class:`AffineMap` or any callable on one point ``(d,) -> (d,)``.
        t: scalar time in ``[0, 1]``.

    Returns:
        For an ``AffineMap`` ``(A, b)``: the ``AffineMap`` ``(t A + (1 - t) I, t b)``;
        otherwise the callable ``x -> t T(x) + (1 - t) x``.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> T = fm.AffineMap(3.0 * jnp.eye(1), jnp.ones(1))
        >>> fm.mccann_interpolation(T, 0.5)(jnp.array([2.0])).tolist()
        [4.5]
    """
    if isinstance(T, AffineMap):
        tt = _checks.as_time(t, "t", dtype=T.A.dtype)
        eye = jnp.eye(T.dim, dtype=T.A.dtype)
        return AffineMap(tt * T.A + (1.0 - tt) * eye, tt * T.b)
    if not callable(T):
        raise ValueError(f"`T` must be an AffineMap or a callable, got {type(T).__name__}")
    _checks.as_time(t, "t")

    def T_t(x):
        x = _checks.as_float_array(x, "x")
        tt = _checks.as_time(t, "t", dtype=x.dtype)
        return tt * jnp.asarray(T(x)).astype(x.dtype) + (1.0 - tt) * x

    return T_t


class McCannVelocity(eqx.Module):
    r"""The McCann velocity of an affine map, :math:`v_t = (T - \mathrm{Id})\circ T_t^{-1}`.

    Built by :func:`mccann_velocity`. ``v(t, x)`` takes a scalar ``t`` in ``[0, 1]`` and one
    point ``(d,)``; the output has the dtype of ``x``. A pytree, so Diffrax / ``jit`` see
    ``A`` and ``b`` as data (no recompilation for new values).

    Attributes:
        A: ``(d, d)`` linear part of the map :math:`T(x) = A x + b`.
        b: ``(d,)`` offset.

    Example:
        For :math:`T(x) = 2x + 1` the particle starting at :math:`x_0 = (1, 1)` is at
        :math:`T_{1/2}(x_0) = (2, 2)` at time 1/2, with velocity :math:`T(x_0) - x_0 = (2, 2)`:

        >>> import jax.numpy as jnp, fmjax as fm
        >>> v = fm.mccann_velocity(2.0 * jnp.eye(2), jnp.ones(2))
        >>> v(0.5, jnp.array([2.0, 2.0])).tolist(), v.map()(jnp.array([1.0, 1.0])).tolist()
        ([2.0, 2.0], [3.0, 3.0])
    """

    A: jax.Array
    b: jax.Array

    def __call__(self, t: ScalarLike, x: VectorLike) -> Vector:
        x = _checks.as_float_array(x, "x", ndim=1)
        d = self.b.shape[-1]
        if x.shape[0] != d:
            raise ValueError(f"`x` must have shape ({d},), got shape {x.shape}; "
                             f"use jax.vmap over a batch of points")
        t = _checks.as_time(t, "t", dtype=x.dtype)
        A, b = self.A.astype(x.dtype), self.b.astype(x.dtype)
        eye = jnp.eye(d, dtype=x.dtype)
        x0 = jnp.linalg.solve((1.0 - t) * eye + t * A, x - t * b)
        return (A - eye) @ x0 + b

    def map(self) -> AffineMap:
        """The transport map :math:`T(x) = A x + b`."""
        return AffineMap(self.A, self.b)


def mccann_velocity(A: MatrixLike | AffineMap, b: VectorLike | None = None) -> McCannVelocity:
    r"""Closed-form velocity of the McCann interpolation of :math:`T(x) = A x + b`.

    With :math:`T_t(x) = ((1 - t) I + t A) x + t b`, the notes'
    :math:`v_t = (T - \mathrm{Id})\circ T_t^{-1}` is

    .. math::

        v_t(x) = (A - I)\,\big((1 - t) I + t A\big)^{-1} (x - t b) + b,

    evaluated with a linear solve, and :math:`v_t\circ T_t = T - \mathrm{Id}`: particles move
    in straight lines at constant speed. For the Brenier map of :func:`gaussian_ot_map` its
    flow is the :math:`\mathbb{W}_2` geodesic and its kinetic energy is
    :math:`\mathbb{W}_2^2` (Benamou-Brenier).

    Requirement: :math:`(1 - t) I + t A` must be invertible for every :math:`t \in [0, 1]`,
    which holds exactly when :math:`A` has no real eigenvalue in :math:`(-\infty, 0]`
    (for instance :math:`A` symmetric positive definite, or with a positive-definite symmetric
    part). It is checked eagerly when ``A`` is concrete; not under ``jit``.

    Args:
        A: ``(d, d)`` linear part, or an :class:`AffineMap` (then leave ``b`` out).
        b: ``(d,)`` offset.

    Returns:
        A :class:`McCannVelocity` ``v(t, x)`` on one point.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> v = fm.mccann_velocity(2.0 * jnp.eye(2), jnp.zeros(2))
        >>> v(0.5, jnp.array([1.5, 3.0])).tolist()
        [1.0, 2.0]
    """
    if isinstance(A, AffineMap):
        if b is not None:
            raise ValueError("pass either an AffineMap or `A` and `b`, not both")
        T = A
    else:
        if b is None:
            raise ValueError("`b` is required when `A` is a matrix")
        T = AffineMap(A, b)
    _checks.check_finite(T.A, "A")
    _checks.check_finite(T.b, "b")
    c = _checks.concrete(T.A)
    if c is not None and T.dim:
        eig = np.linalg.eigvals(c.astype(np.float64))
        scale = max(1.0, float(np.max(np.abs(eig))))
        real = np.abs(eig.imag) <= 1e-12 * scale
        bad = eig.real[real & (eig.real <= 0.0)]
        if bad.size:
            raise ValueError(
                f"`A` has the real eigenvalue {float(bad.min()):.3g} <= 0, so (1 - t) I + t A "
                f"is singular at t = {1.0 / (1.0 - float(bad.min())):.3g}; the McCann "
                f"velocity needs A without real eigenvalues in (-inf, 0] (e.g. A SPD)")
    return McCannVelocity(T.A, T.b)
