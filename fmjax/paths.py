r"""Affine interpolants :math:`X_t = a(t) X_0 + b(t) X_1` (the notes, "Flow Matching").

A path is a small immutable object: ``coefficients(t) -> (a, b)``,
``derivatives(t) -> (a', b')``, ``interpolate(t, x0, x1)`` and
``target_velocity(t, x0, x1) = a'(t) x0 + b'(t) x1`` (the regression target
:math:`\mathrm{d}X_t/\mathrm{d}t` of the flow-matching loss). Paths are registered as
static pytrees, so they can be passed through ``jax.jit`` as arguments.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from ._typing import (
    Points,
    PointsLike,
    RatiosLike,
    Scalar,
    ScalarLike,
    Times,
    Vector,
    VectorLike,
    VelocityField,
)

__all__ = ["AffinePath", "Linear", "Trigonometric", "affine_path", "change_path"]


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

    # Exercise 1(c) and change_path invert the signal-to-noise ratio b/a.
    def snr_inverse(self, ratio: RatiosLike) -> Times:
        r"""The time ``r`` with :math:`b(r)/a(r) =` ``ratio`` (``ratio >= 0``; ``inf`` gives 1).

        Solved on the angle :math:`\theta(t) = \operatorname{atan2}(b(t), a(t))`:
        :math:`r = \theta^{-1}(\arctan(\text{ratio}))`, in closed form for the linear and
        trigonometric paths and by bisection in general (64 halvings: exact to float64),
        assuming :math:`b/a` increases on ``[0, 1]``. Differentiable: the derivative is
        :math:`\mathrm{d}r/\mathrm{d}\theta = (a^2 + b^2)/(b'a - ba')` at :math:`r`.

        Example:
            >>> import jax.numpy as jnp, fmjax as fm
            >>> path = fm.affine_path(lambda t: 1 - t, lambda t: t)  # general: bisection
            >>> round(float(path.snr_inverse(jnp.float32(3.0))), 6)  # t/(1 - t) = 3
            0.75
        """
        ratio = jnp.asarray(ratio)
        if not jnp.issubdtype(ratio.dtype, jnp.floating):
            ratio = ratio.astype(jnp.result_type(float))
        return self._angle_inverse(jnp.arctan(ratio))

    def _angle_inverse(self, angle: Times) -> Times:
        """The time ``r`` with ``atan2(b(r), a(r)) = angle`` (``angle`` in ``[0, pi/2]``)."""
        return _bisect_angle(self, angle)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _bisect_angle(path: AffinePath, angle: jax.Array) -> jax.Array:
    """Bisection for ``atan2(b(r), a(r)) = angle`` on ``[0, 1]``, with an implicit derivative."""
    cos_p, sin_p = jnp.cos(angle), jnp.sin(angle)

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        a, b = path.coefficients(mid)
        above = b * cos_p > a * sin_p  # rho sin(theta(mid) - angle) > 0: theta(mid) > angle
        return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

    lo, hi = jax.lax.fori_loop(0, 64, body, (jnp.zeros_like(angle), jnp.ones_like(angle)))
    return 0.5 * (lo + hi)


@_bisect_angle.defjvp
def _bisect_angle_jvp(path, primals, tangents):
    # theta(r) = angle, theta' = (b'a - ba')/(a^2 + b^2): dr = (a^2 + b^2)/(b'a - ba') dangle.
    # Where b'a - ba' = 0 (b/a stationary, e.g. b'(0) = 0) the derivative is infinite; it is
    # returned as 0 (callers that need it finite check the path, see change_path).
    (angle,), (dangle,) = primals, tangents
    r = _bisect_angle(path, angle)
    a, b = path.coefficients(r)
    da, db = path.derivatives(r)
    wr = db * a - b * da
    ok = wr > 0
    slope = jnp.where(ok, (a * a + b * b) / jnp.where(ok, wr, jnp.ones_like(wr)),
                      jnp.zeros_like(wr))
    return r, slope * dangle


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
    r"""The notes' linear path :math:`X_t = (1 - t) X_0 + t X_1`, velocity :math:`X_1 - X_0`.

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

    def _angle_inverse(self, angle: Times) -> Times:
        # b/a = r/(1 - r) = tan(angle)
        s, c = jnp.sin(angle), jnp.cos(angle)
        return s / (s + c)


def _trig_a(t):
    return jnp.cos(0.5 * math.pi * t)


def _trig_b(t):
    return jnp.sin(0.5 * math.pi * t)


class Trigonometric(AffinePath):
    r"""The variance-preserving path :math:`X_t = \cos(\pi t/2) X_0 + \sin(\pi t/2) X_1`.

    Its target velocity is :math:`\frac{\pi}{2}(\cos(\pi t/2) X_1 - \sin(\pi t/2) X_0)`
    (the notes write it without the :math:`\pi/2` factor, which only rescales time).

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

    def _angle_inverse(self, angle: Times) -> Times:
        return angle / (0.5 * math.pi)  # theta(t) = pi t / 2


jax.tree_util.register_static(Linear)
jax.tree_util.register_static(Trigonometric)


def _require_path(path: object, name: str = "path") -> AffinePath:
    """``path`` itself if it is an :class:`AffinePath`, else a ValueError naming ``name``."""
    if not isinstance(path, AffinePath):
        raise ValueError(f"`{name}` must be an fmjax path (fm.Linear(), fm.Trigonometric(), "
                         f"fm.affine_path(a, b)), got {type(path).__name__}")
    return path


# ----------------------------------------------------------------------------------------
# Changing the path of a velocity (Exercise 1(c), generalised)
# ----------------------------------------------------------------------------------------
def _time_change(path: AffinePath, target: Callable, t: jax.Array):
    r"""``(r, c, r', c')`` at ``t`` with ``target(t) = c(t) (a(r(t)), b(r(t)))``.

    ``target(t) = (alpha(t), beta(t))``; ``(a, b)`` are ``path``'s coefficients. In polar
    form, :math:`\theta_{ab}(r) = \operatorname{atan2}(\beta, \alpha)` and
    :math:`c = \sqrt{(\alpha^2 + \beta^2)/(a(r)^2 + b(r)^2)}`: no division by a coefficient
    that vanishes at an end, so values and derivatives (``jax.jvp``) are finite on
    ``[0, 1]`` as long as the radii are positive and ``b'a - ba' > 0`` at ``r``.
    """

    def rc(tt):
        alpha, beta = target(tt)
        r = path._angle_inverse(jnp.arctan2(beta, alpha))
        a, b = path.coefficients(r)
        return r, jnp.sqrt((alpha * alpha + beta * beta) / (a * a + b * b))

    (r, c), (dr, dc) = jax.jvp(rc, (t,), (jnp.ones_like(t),))
    one, zero = jnp.ones_like(r), jnp.zeros_like(r)
    r = jnp.where(r > one, one, jnp.where(r < zero, zero, r))  # round-off at the ends
    return r, c, dr, dc


def _time_changed_velocity(v: Callable, path: AffinePath, target: Callable, t: jax.Array,
                           x: jax.Array) -> jax.Array:
    r"""The velocity of :math:`X'_t = c(t) X_{r(t)}`, :math:`X_t` on ``path`` with velocity
    ``v``: :math:`(c'/c)\,x + c\,r'\,v_r(x/c)` (see :func:`change_path`)."""
    r, c, dr, dc = _time_change(path, target, t)
    return (dc / c) * x + (c * dr) * v(r, x / c)


def _schedule_on_grid(path: AffinePath, n: int = 257):
    """``(t, a, b, a', b')`` of ``path`` on ``n`` equally spaced times, as float64 NumPy."""
    dt = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    with jax.ensure_compile_time_eval():
        ts = jnp.linspace(0.0, 1.0, n, dtype=dt)
        parts = (*jax.vmap(path.coefficients)(ts), *jax.vmap(path.derivatives)(ts))
    out = [np.broadcast_to(np.asarray(u, np.float64), (n,)) for u in (ts, *parts)]
    return out, float(np.finfo(np.dtype(dt)).eps)


def _check_schedule(path: AffinePath, name: str, *, invertible: bool) -> None:
    """Check on a grid that ``path`` stays in the quadrant a, b >= 0 with a^2 + b^2 > 0, and
    (``invertible``) that it runs from X0 to X1 with b/a strictly increasing."""
    if type(path) in (Linear, Trigonometric):
        return  # known to qualify
    (ts, a, b, da, db), eps = _schedule_on_grid(path)
    if not all(np.all(np.isfinite(u)) for u in (a, b, da, db)):
        raise ValueError(f"`{name}` has non-finite coefficients or derivatives on [0, 1]")
    rho = np.hypot(a, b)
    tol = 100 * eps * max(1.0, float(rho.max()))
    bad = (a < -tol) | (b < -tol) | (rho <= tol)
    if np.any(bad):
        t0 = float(ts[np.argmax(bad)])
        raise ValueError(f"`{name}` must keep a(t) >= 0, b(t) >= 0 and a^2 + b^2 > 0 on [0, 1]; "
                         f"fails at t = {t0:.4g} (a = {a[np.argmax(bad)]:.3g}, "
                         f"b = {b[np.argmax(bad)]:.3g})")
    if not invertible:
        return
    if abs(b[0]) > tol or abs(a[-1]) > tol:
        raise ValueError(f"`{name}` must run from X0 to X1 (b(0) = 0 and a(1) = 0), got "
                         f"b(0) = {b[0]:.3g}, a(1) = {a[-1]:.3g}")
    wr = db * a - b * da  # (b/a)' a^2: the signal-to-noise ratio must strictly increase
    if np.any(wr <= tol):
        i = int(np.argmax(wr <= tol))
        raise ValueError(f"`{name}` must have a strictly increasing signal-to-noise ratio b/a, "
                         f"i.e. b'a - ba' > 0 on [0, 1] (so that its time can be solved for "
                         f"with a finite derivative); b'a - ba' = {wr[i]:.3g} at t = {ts[i]:.4g}"
                         f" (b'(0) = 0 or a'(1) = 0 is not allowed)")


class PathChangedVelocity(eqx.Module):
    r"""The velocity of a coupling on the path ``to``, from its velocity on ``trained_on``.

    Built by :func:`change_path` (which documents the formula). A pytree whose array leaves
    are those of ``velocity``; the two paths are static.

    Attributes:
        velocity: the original ``v(t, x)`` on ``trained_on``.
        trained_on: the path ``velocity`` belongs to.
        to: the new path.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> u = fm.change_path(lambda t, x: -x, trained_on=fm.Linear(), to=fm.Linear())
        >>> type(u).__name__, [float(z) for z in u(0.5, jnp.ones(2))]
        ('PathChangedVelocity', [-1.0, -1.0])
    """

    velocity: Callable
    trained_on: AffinePath = eqx.field(static=True)
    to: AffinePath = eqx.field(static=True)

    def __init__(self, velocity: Callable, trained_on: AffinePath, to: AffinePath):
        if not callable(velocity):
            raise ValueError(f"`velocity` must be a velocity callable v(t, x), got "
                             f"{type(velocity).__name__}")
        self.trained_on = _require_path(trained_on, "trained_on")
        self.to = _require_path(to, "to")
        _check_schedule(self.trained_on, "trained_on", invertible=True)
        _check_schedule(self.to, "to", invertible=False)
        self.velocity = velocity

    @property
    def dim(self) -> int | None:
        """The dimension ``d`` of the original velocity, if it has a ``dim`` attribute."""
        return getattr(self.velocity, "dim", None)

    def __call__(self, t: ScalarLike, x: VectorLike) -> Vector:
        x = _checks.check_vector(x, "x")
        t = _checks.as_time(t, "t", dtype=x.dtype)
        return _time_changed_velocity(self.velocity, self.trained_on, self.to.coefficients,
                                      t, x)


def change_path(velocity: VelocityField, *, trained_on: AffinePath,
                to: AffinePath) -> PathChangedVelocity:
    r"""The velocity of the same coupling on another affine path, without retraining.

    A velocity :math:`v_t(x) = \mathbb{E}[\dot X_t \mid X_t = x]` learned (or known in closed
    form) for :math:`X_t = a(t) X_0 + b(t) X_1` (``trained_on``) gives the velocity of the same
    coupling on :math:`X'_s = \alpha(s) X_0 + \beta(s) X_1` (``to``). Choose :math:`r(s)` with
    equal signal-to-noise ratios, :math:`b(r)/a(r) = \beta(s)/\alpha(s)`, and
    :math:`c(s) = \alpha(s)/a(r(s)) = \beta(s)/b(r(s))`; then :math:`X'_s = c(s)\,X_{r(s)}`
    exactly, so :math:`\dot X'_s = c'\,X_r + c\,r'\,\dot X_r` and, conditioning on
    :math:`X'_s = x`, i.e. on :math:`X_r = x/c`,

    .. math::
        u_s(x) = \frac{c'(s)}{c(s)}\,x + c(s)\,r'(s)\,v_{r(s)}\!\left(\frac{x}{c(s)}\right).

    Exercise 1(c) of the notes is the case :math:`(\alpha, \beta) = (a, c\,b)`
    (:func:`fmjax.scale_target_velocity`). The same substitution maps trajectories:
    if :math:`y` solves :math:`\dot y = v_t(y)` then :math:`c(s)\,y(r(s))` solves
    :math:`\dot z = u_s(z)`, so with :math:`c(0) = c(1) = 1` both flows end at the same
    point.

    Numerics. :math:`r` and :math:`c` are computed in polar form,
    :math:`\operatorname{atan2}(b(r), a(r)) = \operatorname{atan2}(\beta(s), \alpha(s))` and
    :math:`c = \sqrt{(\alpha^2 + \beta^2)/(a(r)^2 + b(r)^2)}`, which divides by neither
    :math:`a(r)` (zero at :math:`s = 1`) nor :math:`b(r)` (zero at :math:`s = 0`): at
    :math:`s = 0`, :math:`r = 0` and :math:`c = \alpha(0)/a(0)`; at :math:`s = 1`,
    :math:`r = 1` and :math:`c = \beta(1)/b(1)`. :math:`r'` and :math:`c'` come from
    ``jax.jvp``, through the closed-form inverse for :class:`Linear` and
    :class:`Trigonometric` and through a bisection with an implicit derivative,
    :math:`r' = \theta_{\alpha\beta}'(s)\,(a^2 + b^2)/(b'a - ba')`, for a general path.

    Requirements (checked on a grid of 257 times for a general path): ``trained_on`` runs
    from :math:`X_0` to :math:`X_1` (:math:`b(0) = 0`, :math:`a(1) = 0`) with a strictly
    increasing signal-to-noise ratio, :math:`b'a - ba' > 0` on ``[0, 1]`` (so
    :math:`b'(0) > 0` and :math:`a'(1) < 0`; a schedule such as :math:`b = t^2` has
    :math:`r'(0) = \infty` and is refused); ``to`` stays in :math:`\alpha, \beta \ge 0`,
    :math:`\alpha^2 + \beta^2 > 0` (its ratio need not be monotone).

    Args:
        velocity: ``v(t, x)`` on one point, the velocity on ``trained_on`` (a closure, an
            Equinox module, a Flax NNX model...).
        trained_on: the path ``velocity`` was trained on (or built for).
        to: the new path.

    Returns:
        A :class:`PathChangedVelocity` ``u(t, x)`` (``t`` is the new path's time), holding
        ``velocity`` as a pytree field: ``jit``/``vmap``/``grad``-safe, and
        :func:`fmjax.integrate` reuses its compiled solve for new arrays of the same shape.

    Raises:
        ValueError: ``velocity`` not callable, a path argument that is not an fmjax path or
            violates the requirements above.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> kw = dict(mean0=jnp.zeros(2), cov0=jnp.eye(2), mean1=jnp.ones(2), cov1=jnp.eye(2))
        >>> v_lin = fm.GaussianVelocity(**kw)  # linear path
        >>> u = fm.change_path(v_lin, trained_on=fm.Linear(), to=fm.Trigonometric())
        >>> v_trig = fm.GaussianVelocity(**kw, path=fm.Trigonometric())
        >>> x = jnp.array([0.3, -1.0])
        >>> bool(jnp.allclose(u(0.4, x), v_trig(0.4, x), atol=1e-5))
        True
    """
    return PathChangedVelocity(velocity, trained_on, to)
