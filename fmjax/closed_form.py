r"""Closed-form flow-matching velocities and marginal densities (notes, Exercises 1, 4, 5).

For a coupling :math:`(X_0, X_1)` and an affine path :math:`X_t = a(t) X_0 + b(t) X_1`
(:mod:`fmjax.paths`), the flow-matching velocity is the conditional expectation

.. math::
    v_t(x) = \mathbb{E}\left[\tfrac{\mathrm{d}X_t}{\mathrm{d}t} \,\middle|\, X_t = x\right]
           = \mathbb{E}[a'(t) X_0 + b'(t) X_1 \mid X_t = x],

which for the linear path is the notes' :math:`\mathbb{E}[X_1 - X_0 \mid X_t = x]`.
This module gives it in closed form when :math:`(X_0, X_1)` is jointly Gaussian
(Exercise 4), a Gaussian mixture (Exercise 5), or :math:`X_0 \sim \mathcal{N}(0, I)`
independent of :math:`X_1` on finitely many atoms (end of Exercise 5); the matching
log-densities :math:`\log p_t(x)`; Exercise 1's transformations of a coupling as
combinators on a velocity callable; and the continuity-equation residual.

Every velocity is a callable ``v(t, x)`` on one point ``x`` of shape ``(d,)`` and a scalar
``t``; use ``jax.vmap`` over points. Outputs have the dtype of ``x`` (parameters are cast).
Each closed form comes twice, sharing one jitted kernel: a function of ``(t, x)`` and the
parameters (checked on every call), and an Equinox module (:class:`GaussianVelocity`,
:class:`MixtureVelocity`, :class:`DiracVelocity`) that checks its parameters once, holds them
as array leaves and has a ``log_density`` method: pass the module to ``jit``, ``grad`` or
:func:`fmjax.integrate`. :func:`fmjax.change_path` moves any of them to another path.

Notation. ``cross_cov`` is :math:`C = \mathrm{Cov}(X_1, X_0)`, the block the notes write
:math:`\Sigma_{01}` (so :math:`\mathrm{Cov}(X_0, X_1) = C^\top = \Sigma_{10}`).
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from . import _checks
from ._typing import (
    LogDensity,
    MatrixLike,
    MatrixStackLike,
    Scalar,
    ScalarLike,
    StackLike,
    Vector,
    VectorLike,
    VelocityField,
    WeightsLike,
)
from .paths import AffinePath, Linear, _require_path, _time_changed_velocity

__all__ = [
    "GaussianVelocity",
    "MixtureVelocity",
    "DiracVelocity",
    "gaussian_velocity",
    "gaussian_log_density",
    "mixture_velocity",
    "mixture_log_density",
    "dirac_velocity",
    "dirac_log_density",
    "affine_velocity",
    "shift_target_velocity",
    "scale_target_velocity",
    "continuity_residual",
]

_LOG_2PI = math.log(2.0 * math.pi)
_LINEAR = Linear()  # default path (paths are immutable, so a shared instance is safe)


# ----------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------
_check_path = _require_path


_require = _checks.require


def _point_and_time(t, x, d: int | None = None, ref: str | None = None):
    """Check one point ``x`` (against ``d``, read from the argument ``ref``) and a time."""
    x = _checks.check_vector(x, "x", d, ref=ref)
    t = _checks.as_time(t, "t", dtype=x.dtype)
    return t, x


def _check_joint(S0, S1, C, names: tuple[str, str, str]) -> None:
    """If concrete, check the joint covariance [[S0, C^T], [C, S1]] is positive semi-definite."""
    c0, c1, cc = (_checks.concrete(m) for m in (S0, S1, C))
    if c0 is None or c1 is None or cc is None:
        return  # traced: a non-PSD joint shows up as a non-PD Sigma_t, caught by Cholesky
    c0, c1, cc = (m.astype(np.float64) for m in (c0, c1, cc))
    if c0.ndim == 2:
        c0, c1, cc = c0[None], c1[None], cc[None]
    top = np.concatenate([c0, np.swapaxes(cc, -1, -2)], axis=-1)
    bottom = np.concatenate([cc, c1], axis=-1)
    joint = np.concatenate([top, bottom], axis=-2)
    lo = float(np.linalg.eigvalsh(joint).min())
    scale = float(np.abs(joint).max())
    tol = (1e-5 if S0.dtype == np.float32 else 1e-10) * scale * joint.shape[-1]
    if lo < -tol:
        raise ValueError(
            f"`{names[2]}` is inconsistent with `{names[0]}` and `{names[1]}`: the joint covariance "
            f"[[{names[0]}, {names[2]}^T], [{names[2]}, {names[1]}]] is not positive semi-definite "
            f"(smallest eigenvalue {lo:.3g})"
        )


def _gaussian_params(d, dt, ref, mean0, cov0, mean1, cov1, cross_cov, *, batch: bool):
    """Validated ``(m0, S0, m1, S1, C)`` (``C`` may be None), cast to ``dt`` unless None.

    ``d`` is the dimension the parameters must have, read from the argument ``ref`` (the
    point ``x`` of a function); with ``d = None`` it is read from the first mean.
    """
    s = "s" if batch else ""
    n_m0, n_m1, n_S0, n_S1 = f"mean{s}0", f"mean{s}1", f"cov{s}0", f"cov{s}1"
    check_m = _checks.check_batch if batch else _checks.check_vector
    m0 = check_m(mean0, n_m0, d, dtype=dt, ref=ref)
    if d is None:
        d, ref = m0.shape[-1], n_m0
    m1 = check_m(mean1, n_m1, d, dtype=dt, ref=ref)
    S0 = _checks.check_cov(cov0, n_S0, d, dtype=dt, batch=batch, ref=ref)
    S1 = _checks.check_cov(cov1, n_S1, d, dtype=dt, batch=batch, ref=ref)
    C = None
    if cross_cov is not None:
        name = f"cross_cov{s}"
        C = _checks.as_float_array(cross_cov, name, ndim=3 if batch else 2, dtype=dt)
        _checks.check_same_shape(C, name, S0, n_S0)
        _check_joint(S0, S1, C, (n_S0, n_S1, name))
    if batch:
        k = m0.shape[0]
        for arr, nm in ((m1, "means1"), (S0, "covs0"), (S1, "covs1")):
            if arr.shape[0] != k:
                raise ValueError(f"`means0` has {k} components (shape {m0.shape}) but `{nm}` has "
                                 f"shape {arr.shape}")
    return m0, S0, m1, S1, C


def _mixture_params(d, dt, ref, weights, means0, covs0, means1, covs1, cross_covs):
    """Validated ``(w, m0, S0, m1, S1, C)`` of a mixture (see :func:`_gaussian_params`)."""
    m0, S0, m1, S1, C = _gaussian_params(d, dt, ref, means0, covs0, means1, covs1, cross_covs,
                                         batch=True)
    w = _checks.check_weights(weights, "weights", m0.shape[0], dtype=dt, ref="means0")
    return w, m0, S0, m1, S1, C


def _dirac_params(d, dt, ref, atoms, weights):
    """Validated ``(Y, w)`` (``w`` None: uniform) of the Dirac target."""
    Y = _checks.check_batch(atoms, "atoms", d, dtype=dt, ref=ref)
    w = None
    if weights is not None:
        w = _checks.check_weights(weights, "weights", Y.shape[0], dtype=dt, ref="atoms")
    return Y, w


def _cast(params, dtype):
    return tuple(None if p is None else p.astype(dtype) for p in params)


# ----------------------------------------------------------------------------------------
# one Gaussian component: mean, covariance, Cholesky, log-density and velocity
# ----------------------------------------------------------------------------------------
def _gaussian_component(x, coef, m0, S0, m1, S1, C):
    r"""Return ``(log N(x; m_t, S_t), v_t(x), ok)`` for one jointly Gaussian component
    (``ok``: the Cholesky factor of S_t is finite, i.e. S_t is positive definite).

    m_t = a m0 + b m1,  S_t = a^2 S0 + b^2 S1 + a b (C + C^T),
    Cov(dX_t, X_t) = a' a S0 + b' b S1 + a' b C^T + a b' C,
    v_t(x) = a' m0 + b' m1 + Cov(dX_t, X_t) S_t^{-1} (x - m_t).
    """
    a, b, da, db = coef
    S_t = a * a * S0 + b * b * S1
    P = da * a * S0 + db * b * S1
    if C is not None:
        Ct = C.T
        S_t = S_t + (a * b) * (C + Ct)
        P = P + (da * b) * Ct + (a * db) * C
    S_t = 0.5 * (S_t + S_t.T)
    L = jnp.linalg.cholesky(S_t)
    ok = jnp.all(jnp.isfinite(L))
    r = x - (a * m0 + b * m1)
    z = solve_triangular(L, r, lower=True)
    w = solve_triangular(L.T, z, lower=False)  # S_t^{-1} (x - m_t)
    d = x.shape[0]
    logp = -0.5 * jnp.dot(z, z) - jnp.sum(jnp.log(jnp.diagonal(L))) - 0.5 * d * _LOG_2PI
    v = da * m0 + db * m1 + P @ w
    return logp, v, ok


def _coefficients(path, t):
    a, b = path.coefficients(t)
    da, db = path.derivatives(t)
    return a, b, da, db


def _log_weights(w):
    """log w_k with log 0 = -inf (a zero-weight component simply drops out), grad-safe."""
    pos = w > 0
    return jnp.where(pos, jnp.log(jnp.where(pos, w, jnp.ones_like(w))), -jnp.inf)


# The numerics live in jitted kernels (validation stays outside, eager): an eager call then
# compiles once per shape instead of op by op; inside a user's jit they are simply inlined.
@jax.jit
def _gaussian_kernel(path, t, x, m0, S0, m1, S1, C):
    return _gaussian_component(x, _coefficients(path, t), m0, S0, m1, S1, C)


@jax.jit
def _mixture_kernel(path, t, x, w, m0, S0, m1, S1, C):
    coef = _coefficients(path, t)
    if C is None:
        one = lambda m0k, S0k, m1k, S1k: _gaussian_component(x, coef, m0k, S0k, m1k, S1k, None)
        logn, vk, ok = jax.vmap(one)(m0, S0, m1, S1)
    else:
        one = lambda m0k, S0k, m1k, S1k, Ck: _gaussian_component(x, coef, m0k, S0k, m1k, S1k, Ck)
        logn, vk, ok = jax.vmap(one)(m0, S0, m1, S1, C)
    logits = _log_weights(w) + logn
    return jax.nn.logsumexp(logits), jax.nn.softmax(logits) @ vk, jnp.all(ok)


@jax.jit
def _dirac_kernel(path, t, x, Y, w):
    a_raw, b, da, db = _coefficients(path, t)
    # a(t) <= 0 (t = 1) is reported by the caller through `ok`; a safe stand-in keeps this
    # kernel free of NaN/inf there (so jax_debug_nans and gradients stay clean).
    a = jnp.where(a_raw > 0, a_raw, jnp.ones_like(a_raw))
    # ||x - b y_k||^2 = ||x||^2 - 2 b <x, y_k> + b^2 ||y_k||^2: under vmap over points the
    # middle term is one (n, d) @ (d, K) matmul; no (n, K, d) or (K, K) intermediate.
    sq = jnp.dot(x, x) - 2 * b * (Y @ x) + (b * b) * jnp.sum(Y * Y, axis=1)
    sq = jnp.maximum(sq, 0)  # round-off can make it slightly negative when x ~ b y_k
    logits = -sq / (2 * a * a)  # 1/a^2 not factored out: finite for a ~ 1e-7 in float32
    logits = logits + (_log_weights(w) if w is not None else -math.log(Y.shape[0]))
    ybar = jax.nn.softmax(logits) @ Y
    v = db * ybar + (da / a) * (x - b * ybar)
    d = x.shape[0]
    logp = jax.nn.logsumexp(logits) - 0.5 * d * (_LOG_2PI + 2 * jnp.log(a))
    return logp, v, a_raw > 0


_PD_MSG = ("Sigma_t = Cov(X_t) of {} is not positive definite at this t (degenerate coupling "
           "or non-finite parameters)")


_DIRAC_MSG = ("the Dirac-target velocity and density need a(t) > 0: at t = 1 (a = 0) X_t is "
              "discrete and v_t has no limit; use t < 1")


# Validated inputs -> (log p_t(x), v_t(x)), shared by the functions and the modules.
def _gaussian_eval(path, t, x, params):
    logp, v, ok = _gaussian_kernel(path, t, x, *params)
    return _require(ok, _PD_MSG.format("the Gaussian coupling"), (logp, v))


def _mixture_eval(path, t, x, params):
    logp, v, ok = _mixture_kernel(path, t, x, *params)
    return _require(ok, _PD_MSG.format("a mixture component"), (logp, v))


def _dirac_eval(path, t, x, params):
    logp, v, ok = _dirac_kernel(path, t, x, *params)
    return _require(ok, _DIRAC_MSG, (logp, v))


def _gaussian(t, x, mean0, cov0, mean1, cov1, cross_cov, path):
    path = _check_path(path)
    t, x = _point_and_time(t, x)
    params = _gaussian_params(x.shape[0], x.dtype, "x", mean0, cov0, mean1, cov1, cross_cov,
                              batch=False)
    return _gaussian_eval(path, t, x, params)


# ----------------------------------------------------------------------------------------
# Gaussian coupling (Exercise 4)
# ----------------------------------------------------------------------------------------
def gaussian_velocity(t: ScalarLike, x: VectorLike, *, mean0: VectorLike, cov0: MatrixLike,
                      mean1: VectorLike, cov1: MatrixLike, cross_cov: MatrixLike | None = None,
                      path: AffinePath = _LINEAR) -> Vector:
    r"""Flow-matching velocity of a jointly Gaussian coupling (the notes, Exercise 4).

    With :math:`X_t = a X_0 + b X_1`, :math:`m_t = a m_0 + b m_1`,
    :math:`\Sigma_t = a^2\Sigma_0 + b^2\Sigma_1 + ab(C + C^\top)` and
    :math:`\mathrm{Cov}(\dot X_t, X_t) = a'a\Sigma_0 + b'b\Sigma_1 + a'b\,C^\top + ab'\,C`,

    .. math::
        v_t(x) = a' m_0 + b' m_1 + \mathrm{Cov}(\dot X_t, X_t)\,\Sigma_t^{-1}(x - m_t).

    For the linear path and zero means this is Exercise 4(a),
    :math:`v_t(x) = \frac{1}{1-t}\big(((1-t)\Sigma_{01} + t\Sigma_1)\Sigma_t^{-1} - I\big)x`,
    but written without the :math:`1/(1-t)`: it is finite at :math:`t = 1`
    (:math:`v_1(x) = m_1 - m_0 + (\Sigma_1 - C^\top)\Sigma_1^{-1}(x - m_1)`).

    Args:
        t: scalar time in ``[0, 1]``.
        x: one point, shape ``(d,)``; sets the output dtype.
        mean0, mean1: means of :math:`X_0`, :math:`X_1`, shape ``(d,)``.
        cov0, cov1: symmetric positive-definite covariances, shape ``(d, d)``.
        cross_cov: :math:`C = \mathrm{Cov}(X_1, X_0)` (the notes' :math:`\Sigma_{01}`),
            shape ``(d, d)``; ``None`` for an independent coupling. The joint covariance
            must be positive semi-definite.
        path: an affine path, default ``fm.Linear()``.

    Returns:
        :math:`v_t(x)`, shape ``(d,)``.

    Raises:
        ValueError: mismatched shapes, non-SPD covariances, inconsistent ``cross_cov``,
            ``t`` outside ``[0, 1]``, or :math:`\Sigma_t` singular (e.g. a deterministic
            coupling at a time where :math:`X_t` is degenerate).

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> I = jnp.eye(2)
        >>> v = fm.gaussian_velocity(0.5, jnp.ones(2), mean0=jnp.zeros(2), cov0=I,
        ...                          mean1=jnp.zeros(2), cov1=I)
        >>> v.shape, float(v[0])  # Sigma_t = I/2, Cov(dX, X) = 0: v = 0
        ((2,), 0.0)
    """
    return _gaussian(t, x, mean0, cov0, mean1, cov1, cross_cov, path)[1]


def gaussian_log_density(t: ScalarLike, x: VectorLike, *, mean0: VectorLike, cov0: MatrixLike,
                         mean1: VectorLike, cov1: MatrixLike,
                         cross_cov: MatrixLike | None = None,
                         path: AffinePath = _LINEAR) -> Scalar:
    r"""Log-density :math:`\log p_t(x) = \log\mathcal{N}(x; m_t, \Sigma_t)` of :math:`X_t`.

    Same arguments and notation as :func:`gaussian_velocity`; returns a scalar.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> I = jnp.eye(1)
        >>> lp = fm.gaussian_log_density(0.0, jnp.zeros(1), mean0=jnp.zeros(1), cov0=I,
        ...                              mean1=jnp.zeros(1), cov1=I)
        >>> round(float(lp), 4)  # -log(2 pi)/2
        -0.9189
    """
    return _gaussian(t, x, mean0, cov0, mean1, cov1, cross_cov, path)[0]


# ----------------------------------------------------------------------------------------
# Gaussian mixture coupling (Exercise 5)
# ----------------------------------------------------------------------------------------
def _mixture_parts(t, x, weights, means0, covs0, means1, covs1, cross_covs, path):
    path = _check_path(path)
    t, x = _point_and_time(t, x)
    params = _mixture_params(x.shape[0], x.dtype, "x", weights, means0, covs0, means1, covs1,
                             cross_covs)
    return _mixture_eval(path, t, x, params)


def mixture_velocity(t: ScalarLike, x: VectorLike, *, weights: WeightsLike, means0: StackLike,
                     covs0: MatrixStackLike, means1: StackLike, covs1: MatrixStackLike,
                     cross_covs: MatrixStackLike | None = None,
                     path: AffinePath = _LINEAR) -> Vector:
    r"""Velocity of a Gaussian-mixture coupling (the notes, Exercise 5).

    :math:`(X_0, X_1) \sim \sum_k \pi_k \mathcal{N}(m^k, \Sigma^k)`. With :math:`v^k_t` the
    :func:`gaussian_velocity` of component :math:`k` (non-zero means included, i.e. the
    notes' :math:`w^k_t`) and responsibilities computed in log space,

    .. math::
        v_t(x) = \sum_k \alpha^k(x)\, v^k_t(x), \qquad
        \alpha^k(x) = \mathrm{softmax}_k\big(\log\pi_k + \log\mathcal{N}(x; m^k_t, \Sigma^k_t)\big).

    Args:
        t: scalar time in ``[0, 1]``.
        x: one point ``(d,)``.
        weights: :math:`\pi`, shape ``(K,)``, non-negative, summing to 1.
        means0, means1: shape ``(K, d)``.
        covs0, covs1: SPD, shape ``(K, d, d)``.
        cross_covs: :math:`\mathrm{Cov}(X_1, X_0 \mid k)`, shape ``(K, d, d)`` or ``None``.
        path: affine path, default ``fm.Linear()``.

    Returns:
        :math:`v_t(x)`, shape ``(d,)``.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> K, d = 2, 2
        >>> covs = jnp.stack([jnp.eye(d)] * K)
        >>> v = fm.mixture_velocity(0.5, jnp.zeros(d), weights=jnp.array([0.5, 0.5]),
        ...                         means0=jnp.zeros((K, d)), covs0=covs,
        ...                         means1=jnp.array([[1., 0.], [-1., 0.]]), covs1=covs)
        >>> round(float(v[0]), 4)  # symmetric mixture: zero at the origin
        0.0
    """
    return _mixture_parts(t, x, weights, means0, covs0, means1, covs1, cross_covs, path)[1]


def mixture_log_density(t: ScalarLike, x: VectorLike, *, weights: WeightsLike,
                        means0: StackLike, covs0: MatrixStackLike, means1: StackLike,
                        covs1: MatrixStackLike, cross_covs: MatrixStackLike | None = None,
                        path: AffinePath = _LINEAR) -> Scalar:
    r"""Log-density of :math:`X_t` for the mixture coupling:
    :math:`\log\sum_k \pi_k\mathcal{N}(x; m^k_t, \Sigma^k_t)` (log-sum-exp).

    Same arguments as :func:`mixture_velocity`; returns a scalar.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> covs = jnp.stack([jnp.eye(1)] * 2)
        >>> lp = fm.mixture_log_density(0.0, jnp.zeros(1), weights=jnp.array([0.5, 0.5]),
        ...                             means0=jnp.zeros((2, 1)), covs0=covs,
        ...                             means1=jnp.ones((2, 1)), covs1=covs)
        >>> round(float(lp), 4)
        -0.9189
    """
    return _mixture_parts(t, x, weights, means0, covs0, means1, covs1, cross_covs, path)[0]


# ----------------------------------------------------------------------------------------
# Gaussian source, atomic target (end of Exercise 5)
# ----------------------------------------------------------------------------------------
def _dirac_parts(t, x, atoms, weights, path):
    path = _check_path(path)
    t, x = _point_and_time(t, x)
    return _dirac_eval(path, t, x, _dirac_params(x.shape[0], x.dtype, "x", atoms, weights))


def dirac_velocity(t: ScalarLike, x: VectorLike, *, atoms: StackLike,
                   weights: WeightsLike | None = None, path: AffinePath = _LINEAR) -> Vector:
    r"""Velocity from :math:`X_0 \sim \mathcal{N}(0, I)` to atoms, independent coupling.

    :math:`X_1 = y_k` with probability :math:`w_k` (default uniform, the notes' "K equal
    Dirac masses"), :math:`X_0 \sim \mathcal{N}(0, I)` independent. Given :math:`k`,
    :math:`X_t \sim \mathcal{N}(b y_k, a^2 I)` and
    :math:`v^k_t(x) = b' y_k + \frac{a'}{a}(x - b y_k)`; so

    .. math::
        v_t(x) = b'\bar y(x) + \frac{a'}{a}\big(x - b\,\bar y(x)\big),\qquad
        \bar y(x) = \sum_k \mathrm{softmax}_k\Big(\log w_k - \frac{\|x - b y_k\|^2}{2a^2}\Big) y_k.

    Linear path: :math:`v_t(x) = (\bar y(x) - x)/(1 - t)`, a soft nearest-atom pull.
    At :math:`t = 1` (:math:`a = 0`) the field has **no limit** (:math:`X_1` is discrete;
    :math:`v` blows up off the atoms): ``t`` with :math:`a(t) \le 0` raises. Memory is
    :math:`O(K)` per point (the squared distance is expanded, so ``jax.vmap`` over ``n``
    points is an ``(n, d) @ (d, K)`` matmul); K = 10,000 atoms in d = 64 is fine.

    Args:
        t: scalar time in ``[0, 1)``.
        x: one point ``(d,)``.
        atoms: :math:`y`, shape ``(K, d)``.
        weights: ``(K,)`` probabilities or ``None`` (uniform).
        path: affine path, default ``fm.Linear()``.

    Returns:
        :math:`v_t(x)`, shape ``(d,)``.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> v = fm.dirac_velocity(0.5, jnp.zeros(2), atoms=jnp.array([[1., 0.], [1., 0.]]))
        >>> [round(float(u), 4) for u in v]  # (ybar - x)/(1 - t)
        [2.0, 0.0]
    """
    return _dirac_parts(t, x, atoms, weights, path)[1]


def dirac_log_density(t: ScalarLike, x: VectorLike, *, atoms: StackLike,
                      weights: WeightsLike | None = None, path: AffinePath = _LINEAR) -> Scalar:
    r"""Log-density of :math:`X_t = a X_0 + b X_1` for :func:`dirac_velocity`'s coupling:
    :math:`\log\sum_k w_k\,\mathcal{N}(x; b y_k, a^2 I)`. Requires :math:`a(t) > 0`.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> lp = fm.dirac_log_density(0.0, jnp.zeros(1), atoms=jnp.ones((3, 1)))
        >>> round(float(lp), 4)
        -0.9189
    """
    return _dirac_parts(t, x, atoms, weights, path)[0]


# ----------------------------------------------------------------------------------------
# The same closed forms as pytrees (Equinox modules): validated once, arrays as leaves
# ----------------------------------------------------------------------------------------
class _ClosedFormVelocity(eqx.Module):
    """Shared interface: ``v(t, x)`` and ``log_density(t, x)`` on one point ``x``."""

    @abc.abstractmethod
    def _eval(self, t, x):
        """``(log p_t(x), v_t(x))``; defined by each subclass."""

    def __call__(self, t: ScalarLike, x: VectorLike) -> Vector:
        """:math:`v_t(x)` for a scalar ``t`` in ``[0, 1]`` and one point ``x`` of shape
        ``(d,)``; the output has ``x``'s dtype (the parameters are cast to it)."""
        return self._eval(t, x)[1]

    def log_density(self, t: ScalarLike, x: VectorLike) -> Scalar:
        r""":math:`\log p_t(x)`, the log-density of :math:`X_t`, at one point ``x``."""
        return self._eval(t, x)[0]


class GaussianVelocity(_ClosedFormVelocity):
    r"""The velocity of a jointly Gaussian coupling as a pytree (:func:`gaussian_velocity`).

    ``GaussianVelocity(mean0, cov0, mean1, cov1, cross_cov=None, path=...)`` checks its
    parameters once (shapes, symmetric positive-definite covariances, a positive
    semi-definite joint covariance); ``v(t, x)`` then only checks ``t`` and ``x`` and equals
    ``gaussian_velocity(t, x, **params)``, ``v.log_density(t, x)`` equals
    :func:`gaussian_log_density`. The parameters are array leaves and the path is static,
    so ``jax.jit``, ``equinox.filter_grad`` and :func:`fmjax.integrate` (which reuses its
    compiled solve for new arrays of the same shapes) see them as data.

    Attributes:
        mean0, mean1: ``(d,)`` means of :math:`X_0`, :math:`X_1`.
        cov0, cov1: ``(d, d)`` covariances.
        cross_cov: ``(d, d)`` :math:`\mathrm{Cov}(X_1, X_0)`, or ``None`` (independent).
        path: the affine path (static), default ``fm.Linear()``.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> v = fm.GaussianVelocity(jnp.zeros(2), jnp.eye(2), jnp.ones(2), jnp.eye(2))
        >>> v.dim, [float(u) for u in v(0.5, jnp.zeros(2))]  # Cov(dX_t, X_t) = 0 here: v = m1 - m0
        (2, [1.0, 1.0])
    """

    mean0: jax.Array
    cov0: jax.Array
    mean1: jax.Array
    cov1: jax.Array
    cross_cov: jax.Array | None
    path: AffinePath = eqx.field(static=True)

    def __init__(self, mean0: VectorLike, cov0: MatrixLike, mean1: VectorLike, cov1: MatrixLike,
                 cross_cov: MatrixLike | None = None, *, path: AffinePath = _LINEAR):
        self.path = _check_path(path)
        (self.mean0, self.cov0, self.mean1, self.cov1,
         self.cross_cov) = _gaussian_params(None, None, None, mean0, cov0, mean1, cov1,
                                            cross_cov, batch=False)

    @property
    def dim(self) -> int:
        """The dimension ``d`` of a point."""
        return self.mean0.shape[-1]

    def _eval(self, t, x):
        t, x = _point_and_time(t, x, self.dim, "mean0")
        params = (self.mean0, self.cov0, self.mean1, self.cov1, self.cross_cov)
        return _gaussian_eval(self.path, t, x, _cast(params, x.dtype))


class MixtureVelocity(_ClosedFormVelocity):
    r"""The velocity of a Gaussian-mixture coupling as a pytree (:func:`mixture_velocity`).

    ``MixtureVelocity(weights, means0, covs0, means1, covs1, cross_covs=None, path=...)``
    validates once; ``v(t, x)`` and ``v.log_density(t, x)`` equal :func:`mixture_velocity`
    and :func:`mixture_log_density`. Arrays are leaves, the path is static (see
    :class:`GaussianVelocity`).

    Attributes:
        weights: ``(K,)`` component probabilities.
        means0, means1: ``(K, d)``.
        covs0, covs1: ``(K, d, d)``.
        cross_covs: ``(K, d, d)`` :math:`\mathrm{Cov}(X_1, X_0 \mid k)`, or ``None``.
        path: the affine path (static), default ``fm.Linear()``.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> covs = jnp.stack([jnp.eye(2)] * 2)
        >>> v = fm.MixtureVelocity(jnp.array([0.5, 0.5]), jnp.zeros((2, 2)), covs,
        ...                        jnp.array([[1., 0.], [-1., 0.]]), covs)
        >>> v.dim, round(float(v(0.5, jnp.zeros(2))[0]), 4)  # symmetric: zero at the origin
        (2, 0.0)
    """

    weights: jax.Array
    means0: jax.Array
    covs0: jax.Array
    means1: jax.Array
    covs1: jax.Array
    cross_covs: jax.Array | None
    path: AffinePath = eqx.field(static=True)

    def __init__(self, weights: WeightsLike, means0: StackLike, covs0: MatrixStackLike,
                 means1: StackLike, covs1: MatrixStackLike,
                 cross_covs: MatrixStackLike | None = None, *, path: AffinePath = _LINEAR):
        self.path = _check_path(path)
        (self.weights, self.means0, self.covs0, self.means1, self.covs1,
         self.cross_covs) = _mixture_params(None, None, None, weights, means0, covs0, means1,
                                            covs1, cross_covs)

    @property
    def dim(self) -> int:
        """The dimension ``d`` of a point."""
        return self.means0.shape[-1]

    def _eval(self, t, x):
        t, x = _point_and_time(t, x, self.dim, "means0")
        params = (self.weights, self.means0, self.covs0, self.means1, self.covs1,
                  self.cross_covs)
        return _mixture_eval(self.path, t, x, _cast(params, x.dtype))


class DiracVelocity(_ClosedFormVelocity):
    r"""The velocity from :math:`\mathcal{N}(0, I)` to atoms as a pytree (:func:`dirac_velocity`).

    ``DiracVelocity(atoms, weights=None, path=...)`` validates once; ``v(t, x)`` and
    ``v.log_density(t, x)`` equal :func:`dirac_velocity` and :func:`dirac_log_density`
    (``t`` with :math:`a(t) = 0`, i.e. ``t = 1``, raises: the field has no limit there).

    Attributes:
        atoms: ``(K, d)`` atoms :math:`y_k`.
        weights: ``(K,)`` probabilities, or ``None`` (uniform).
        path: the affine path (static), default ``fm.Linear()``.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> v = fm.DiracVelocity(jnp.array([[1., 0.], [1., 0.]]))
        >>> v.dim, [round(float(u), 4) for u in v(0.5, jnp.zeros(2))]  # (ybar - x)/(1 - t)
        (2, [2.0, 0.0])
    """

    atoms: jax.Array
    weights: jax.Array | None
    path: AffinePath = eqx.field(static=True)

    def __init__(self, atoms: StackLike, weights: WeightsLike | None = None, *,
                 path: AffinePath = _LINEAR):
        self.path = _check_path(path)
        self.atoms, self.weights = _dirac_params(None, None, None, atoms, weights)

    @property
    def dim(self) -> int:
        """The dimension ``d`` of a point."""
        return self.atoms.shape[-1]

    def _eval(self, t, x):
        t, x = _point_and_time(t, x, self.dim, "atoms")
        return _dirac_eval(self.path, t, x, _cast((self.atoms, self.weights), x.dtype))


# ----------------------------------------------------------------------------------------
# Exercise 1: transformations of the coupling as combinators
# ----------------------------------------------------------------------------------------
def _callable(v, name="v"):
    if not callable(v):
        raise ValueError(f"`{name}` must be a velocity callable v(t, x), got {type(v).__name__}")


def affine_velocity(v: VelocityField, A: MatrixLike, b: VectorLike, *,
                    path: AffinePath = _LINEAR) -> VelocityField:
    r"""Exercise 1(a): the velocity of the coupling :math:`(A X_0 + b, A X_1 + b)`.

    Then :math:`X'_t = A X_t + (a(t) + b(t))\,b`, so

    .. math::
        v^{A,b}_t(x) = A\, v_t\big(A^{-1}(x - (a + b_t)\,b)\big) + (a' + b_t')\,b,

    which for the linear path (:math:`a + b_t = 1`) is the notes'
    :math:`A v_t(A^{-1}(x - b))`. Here :math:`b_t` is the path coefficient and :math:`b`
    the shift vector.

    Args:
        v: velocity ``v(t, x)`` of :math:`(X_0, X_1)` on the same ``path``.
        A: invertible matrix ``(d, d)``.
        b: shift ``(d,)``.
        path: the path ``v`` was built on, default ``fm.Linear()``.

    Returns:
        a velocity callable ``(t, x) -> (d,)``.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> v = lambda t, x: -x
        >>> w = fm.affine_velocity(v, 2 * jnp.eye(2), jnp.ones(2))
        >>> [float(u) for u in w(0.5, jnp.ones(2))]  # 2 * -(1 - 1)/2
        [0.0, 0.0]
    """
    _callable(v)
    path = _check_path(path)
    A0 = _checks.as_float_array(A, "A", ndim=2)
    b0 = _checks.as_float_array(b, "b", ndim=1)
    if A0.shape != (b0.shape[0], b0.shape[0]):
        raise ValueError(f"`A` must have shape (d, d) with d = len(b) = {b0.shape[0]}, "
                         f"got `A` shape {A0.shape} and `b` shape {b0.shape}")
    cA = _checks.concrete(A0)
    if cA is not None and np.linalg.cond(cA.astype(np.float64)) > 1 / np.finfo(cA.dtype).eps:
        raise ValueError(f"`A` must be invertible; its condition number is "
                         f"{np.linalg.cond(cA.astype(np.float64)):.3g}")

    def v_ab(t, x):
        t, x = _point_and_time(t, x)
        if x.shape != b0.shape:
            raise ValueError(f"`x` has shape {x.shape} but the shift `b` has shape {b0.shape}")
        Ad, bd = A0.astype(x.dtype), b0.astype(x.dtype)
        a_t, b_t = path.coefficients(t)
        da, db = path.derivatives(t)
        y = jnp.linalg.solve(Ad, x - (a_t + b_t) * bd)
        y = _require(jnp.all(jnp.isfinite(y)), "`A` is singular", y)
        return Ad @ v(t, y) + (da + db) * bd

    return v_ab


def shift_target_velocity(v: VelocityField, b: VectorLike,
                          path: AffinePath = _LINEAR) -> VelocityField:
    r"""Exercise 1(b): the velocity of the coupling :math:`(X_0, X_1 + b)`.

    :math:`X'_t = X_t + b(t)\,b`, hence
    :math:`v^b_t(x) = v_t(x - b(t)\,b) + b'(t)\,b` (linear path: :math:`v_t(x - tb) + b`).

    Args:
        v: velocity ``v(t, x)`` of :math:`(X_0, X_1)` on the same ``path``.
        b: shift ``(d,)``.
        path: default ``fm.Linear()``.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> w = fm.shift_target_velocity(lambda t, x: jnp.zeros_like(x), jnp.ones(2))
        >>> [float(u) for u in w(0.3, jnp.zeros(2))]
        [1.0, 1.0]
    """
    _callable(v)
    path = _check_path(path)
    b0 = _checks.as_float_array(b, "b", ndim=1)

    def v_b(t, x):
        t, x = _point_and_time(t, x)
        if x.shape != b0.shape:
            raise ValueError(f"`x` has shape {x.shape} but the shift `b` has shape {b0.shape}")
        bd = b0.astype(x.dtype)
        _, b_t = path.coefficients(t)
        _, db = path.derivatives(t)
        return v(t, x - b_t * bd) + db * bd

    return v_b


def scale_target_velocity(v: VelocityField, c: ScalarLike,
                          path: AffinePath = _LINEAR) -> VelocityField:
    r"""Exercise 1(c): the velocity of the coupling :math:`(X_0, c X_1)`, :math:`c > 0`.

    :math:`X'_t = a(t) X_0 + c\,b(t) X_1 = s\,X_r` with :math:`b(r)/a(r) = c\,b(t)/a(t)`
    and :math:`s = a(t)/a(r) = c\,b(t)/b(r)`; differentiating,

    .. math::
        v^c_t(x) = \frac{s'}{s}\,x + s\,r'\,v_r\!\left(\frac{x}{s}\right).

    Linear path: :math:`s = 1 - t + tc`, :math:`r = tc/s`, :math:`r' = c/s^2`, i.e. the
    notes' :math:`\frac{c}{1-t+tc} v_r(\frac{x}{1-t+tc}) + \frac{c-1}{1-t+tc}x`. This is
    :func:`fmjax.change_path` to the "path" :math:`(a, c\,b)` and shares its numerics (the
    path's inverse signal-to-noise ratio: closed form for the linear and trigonometric
    paths, bisection with an implicit derivative otherwise; :math:`(r, s)` derivatives from
    ``jax.jvp``). Where the path's :math:`b'a - ba'` vanishes (e.g. :math:`b = t^2` at
    :math:`t = 0`) :math:`r'` is taken as 0, which is exact when :math:`v_r = 0` there.

    Args:
        v: velocity ``v(t, x)`` of :math:`(X_0, X_1)` on the same ``path``.
        c: scale, a positive scalar.
        path: default ``fm.Linear()``.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> w = fm.scale_target_velocity(lambda t, x: jnp.zeros_like(x), 2.0)
        >>> [round(float(u), 4) for u in w(0.0, jnp.ones(1))]  # (c - 1) x
        [1.0]
    """
    _callable(v)
    path = _check_path(path)
    c0 = _checks.as_float_array(c, "c", ndim=0)
    cc = _checks.concrete(c0)
    if cc is not None and not float(cc) > 0:
        raise ValueError(f"`c` must be positive, got c={float(cc)!r}")

    def v_c(t, x):
        t, x = _point_and_time(t, x)
        cd = c0.astype(x.dtype)
        cd = _require(cd > 0, "`c` must be positive", cd)

        def target(tt):  # X'_t = a(t) X0 + c b(t) X1
            a_t, b_t = path.coefficients(tt)
            return a_t, cd * b_t

        return _time_changed_velocity(v, path, target, t, x)

    return v_c


# ----------------------------------------------------------------------------------------
# continuity equation
# ----------------------------------------------------------------------------------------
def continuity_residual(log_density: LogDensity, velocity: VelocityField, t: ScalarLike,
                        x: VectorLike) -> Scalar:
    r"""Residual of the continuity equation (the notes, "Continuity Equation"), divided by p_t.

    .. math::
        \frac{\partial_t p_t + \mathrm{div}(p_t v_t)}{p_t}
        = \partial_t \log p_t(x) + \mathrm{div}\,v_t(x) + \langle v_t(x), \nabla_x \log p_t(x)\rangle,

    by forward/reverse autodiff (``jax.grad`` for the log-density, ``jax.jacfwd`` for the
    divergence; the full Jacobian is formed, so cost is O(d) Jacobian-vector products).

    Args:
        log_density: ``(t, x) -> scalar``, :math:`\log p_t(x)`.
        velocity: ``(t, x) -> (d,)``.
        t: scalar time.
        x: one point ``(d,)``.

    Returns:
        scalar residual, zero when :math:`(p_t, v_t)` solves the continuity equation.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> logp = lambda t, x: -0.5 * jnp.dot(x, x)  # N(0, I) up to a constant
        >>> rot = lambda t, x: jnp.array([-x[1], x[0]])  # the notes' rotation example
        >>> float(fm.continuity_residual(logp, rot, 0.5, jnp.array([1.0, 2.0])))
        0.0
    """
    _callable(log_density, "log_density")
    _callable(velocity, "velocity")
    t, x = _point_and_time(t, x)
    dlogp_dt, grad_x = jax.grad(log_density, argnums=(0, 1))(t, x)
    jac = jax.jacfwd(velocity, argnums=1)(t, x)
    if jac.shape != (x.shape[0], x.shape[0]):
        raise ValueError(f"`velocity` must map x of shape {x.shape} to the same shape; its "
                         f"Jacobian has shape {jac.shape}")
    v = velocity(t, x)
    return dlogp_dt + jnp.trace(jac) + jnp.dot(v, grad_x)
