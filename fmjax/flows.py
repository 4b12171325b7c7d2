r"""Flows of velocity fields with Diffrax: ``integrate`` and ``log_likelihood``.

The flow of a velocity field :math:`v` (the notes, "Flow of a vector field") solves

.. math::
    \partial_t \varphi_t(x) = v(t, \varphi_t(x)), \qquad \varphi_0(x) = x.

Every function here takes a per-point velocity ``v(t, x)`` (``x`` one point of any shape,
``(d,)`` or an image ``(H, W, C)``, scalar ``t``, returns the shape of ``x``) and a batch of
points ``(n, *point_shape)``; the velocity is ``jax.vmap``-ed over the batch inside ONE
``diffrax.diffeqsolve``, so an adaptive solver takes common steps for the whole batch (its
error norm is an RMS over all particles).

Solvers (``solver=``):

* adaptive, with ``rtol``/``atol``: ``"tsit5"`` (default), ``"dopri5"``;
* fixed-step, with ``steps=N`` (uniform grid): ``"euler"`` (order 1), ``"heun"``,
  ``"midpoint"`` (order 2), ``"rk4"`` (classical 4th-order Runge--Kutta, built here from its
  Butcher tableau since Diffrax has none);
* any ``diffrax.AbstractSolver`` instance (adaptive if it supports it and ``steps`` is None).

Passing ``steps`` with an adaptive solver name uses it on the fixed grid.

Failure is never silent. A solve that reaches ``max_steps``, produces NaN/inf, or blows up
in finite time raises :class:`FlowError` when called eagerly (the message says where the
solve stopped and why), raises at run time under a user's ``jax.jit`` (the
:class:`FlowResults` message; see :func:`fmjax.jit`), or, with ``throw=False``, is reported
in ``.result``, an item of :class:`FlowResults`; compare with ``FlowResults.successful``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from ._errors import FlowError, readable
from ._typing import (
    Batch,
    BatchLike,
    Key,
    Scalar,
    ScalarLike,
    Values,
    Vector,
    VelocityField,
)

__all__ = ["FlowError", "FlowResults", "FlowSolution", "RK4", "integrate", "log_likelihood"]


# ----------------------------------------------------------------------------------------
# Result codes and solvers
# ----------------------------------------------------------------------------------------
class FlowResults(diffrax.RESULTS):  # pyright: ignore[reportGeneralTypeIssues]
    """Diffrax's result codes, plus ``blowup``.

    ``integrate`` reports ``FlowResults.nonfinite`` when the final state has a NaN/inf entry
    (Diffrax's fixed-step solvers do not notice one) and ``FlowResults.blowup`` when the
    step budget ran out while the state grew without bound (a flow that blows up in finite
    time, which no step budget can integrate). Compare with
    ``bool(sol.result == FlowResults.successful)``.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> sol = fm.integrate(lambda t, x: x * x, jnp.full((1, 1), 2.0), throw=False)
        >>> bool(sol.result == fm.FlowResults.blowup), bool(sol.ok)
        (True, False)
    """

    blowup = ("the state grew without bound before t1: the flow of this velocity blows up "
              "in finite time (the velocity grows faster than linearly); a larger step "
              "budget cannot help")

#: Growth of max |x| over the solve beyond which a solve that ran out of steps, most of them
#: rejected, is reported as a blow-up rather than as a step budget problem.
_BLOWUP_GROWTH = 100.0


_rk4_tableau = diffrax.ButcherTableau(
    a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
    b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    # Embedded midpoint method (order 2); only used if someone pairs RK4 with an adaptive
    # controller. ``integrate`` uses RK4 with a fixed step count.
    b_error=np.array([1 / 6, 1 / 3 - 1.0, 1 / 3, 1 / 6]),
    c=np.array([0.5, 0.5, 1.0]),
)


class RK4(diffrax.AbstractERK):
    r"""The classical 4th-order Runge--Kutta method (Kutta 1901), as a Diffrax solver.

    Butcher tableau: :math:`c = (0, \tfrac12, \tfrac12, 1)`, :math:`a_{21} = a_{32} =
    \tfrac12`, :math:`a_{43} = 1`, :math:`b = (\tfrac16, \tfrac13, \tfrac13, \tfrac16)`.
    4 function evaluations per step, global error :math:`O(h^4)`.

    Example:
        >>> import diffrax, jax.numpy as jnp, fmjax as fm
        >>> sol = diffrax.diffeqsolve(diffrax.ODETerm(lambda t, y, a: -y), fm.RK4(), 0.0, 1.0,
        ...                           0.1, jnp.ones(()))
        >>> print(round(float(sol.ys[-1]), 5))
        0.36788
    """

    tableau = _rk4_tableau
    interpolation_cls = diffrax.ThirdOrderHermitePolynomialInterpolation.from_k

    def order(self, terms):
        return 4


_SOLVERS: dict[str, tuple[Callable[[], diffrax.AbstractSolver], bool]] = {
    # name: (constructor, adaptive by default)
    "tsit5": (diffrax.Tsit5, True),
    "dopri5": (diffrax.Dopri5, True),
    "euler": (diffrax.Euler, False),
    "heun": (diffrax.Heun, False),
    "midpoint": (diffrax.Midpoint, False),
    "rk4": (RK4, False),
}


def _make_solver(solver: Any, steps: int | None) -> tuple[diffrax.AbstractSolver, bool]:
    """Return (solver instance, uses adaptive stepping)."""
    if isinstance(solver, str):
        key = solver.lower()
        if key not in _SOLVERS:
            raise ValueError(f"`solver` must be one of {sorted(_SOLVERS)} or a diffrax solver, "
                             f"got {solver!r}")
        ctor, adaptive = _SOLVERS[key]
        inst = ctor()
    elif isinstance(solver, diffrax.AbstractSolver):
        inst = solver
        adaptive = isinstance(solver, diffrax.AbstractAdaptiveSolver)
    else:
        raise ValueError(f"`solver` must be a name or a diffrax.AbstractSolver, got "
                         f"{type(solver).__name__}")
    if steps is not None:
        _checks.positive_int(steps, "steps")
        return inst, False
    if not adaptive:
        raise ValueError(f"solver {solver!r} is fixed-step: pass `steps=N` (number of steps)")
    return inst, True


def _is_adaptive(solver: Any) -> bool:
    """Whether ``solver`` (a name or an instance) steps adaptively when ``steps`` is None."""
    if isinstance(solver, str):
        return _SOLVERS.get(solver.lower(), (None, False))[1]
    return isinstance(solver, diffrax.AbstractAdaptiveSolver)


def _evals_per_step(solver: diffrax.AbstractSolver) -> tuple[int, int] | None:
    """(vector-field evaluations per step, extra evaluations at the start), if known."""
    if isinstance(solver, diffrax.Euler):
        return 1, 0
    tab = getattr(solver, "tableau", None)
    if isinstance(tab, diffrax.ButcherTableau):
        stages = len(tab.c) + 1
        if tab.fsal:
            return stages - 1, 1
        return stages, 0
    return None


# ----------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------
class _ById:
    """Hash-by-identity holder for an unhashable static velocity (Diffrax jit-caches on it)."""

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _ById) and other.obj is self.obj


def _pack_velocity(velocity: Callable) -> tuple[Any, Any]:
    """Split ``velocity`` into (array leaves, hashable static rest) for Diffrax's jit."""
    if not callable(velocity):
        raise ValueError(f"`velocity` must be a callable v(t, x), got {type(velocity).__name__}")
    dyn, static = eqx.partition(velocity, eqx.is_array)
    try:
        hash(static)
    except TypeError:
        static = _ById(static)
    return dyn, static


def _unpack_velocity(packed) -> Callable:
    dyn, static = packed
    if isinstance(static, _ById):
        static = static.obj
    return eqx.combine(dyn, static)


def _check_times(t0, t1, dtype) -> tuple[jax.Array, jax.Array]:
    t0 = _checks.as_float_array(float(t0) if isinstance(t0, int) else t0, "t0", ndim=0,
                                dtype=dtype)
    t1 = _checks.as_float_array(float(t1) if isinstance(t1, int) else t1, "t1", ndim=0,
                                dtype=dtype)
    c0, c1 = _checks.concrete(t0), _checks.concrete(t1)
    if c0 is not None and c1 is not None:
        if float(c0) == float(c1):
            raise ValueError(f"`t0` and `t1` must differ, got t0 = t1 = {float(c0)!r}")
    else:
        t1 = eqx.error_if(t1, t0 == t1, "`t0` and `t1` must differ")
    return t0, t1


def _check_velocity(velocity: Callable, x0: jax.Array, name: str = "x0",
                    labels: jax.Array | None = None) -> None:
    """Trace ``velocity`` once on one point (no FLOPs) and check its output."""
    t = jax.ShapeDtypeStruct((), x0.dtype)
    x = jax.ShapeDtypeStruct(x0.shape[1:], x0.dtype)
    args = (t, x) if labels is None else (t, x, jax.ShapeDtypeStruct((), labels.dtype))
    dim = getattr(velocity, "dim", None)
    if isinstance(dim, int) and x0.ndim == 2 and x0.shape[1] != dim:
        raise ValueError(f"`{name}` has points of d = {x0.shape[1]} but the velocity "
                         f"{type(velocity).__name__} has dim = {dim}")
    try:
        out = jax.eval_shape(velocity, *args)
    except Exception as e:
        call = "v(t, x)" if labels is None else "v(t, x, y) with a scalar label y"
        raise ValueError(f"the velocity {type(velocity).__name__} cannot be evaluated on the "
                         f"points of `{name}` (one point: shape {x.shape}, dtype {x.dtype}; "
                         f"called as {call} with a scalar t): {e}") from e
    shape = getattr(out, "shape", None)
    if shape != x.shape:
        raise ValueError(f"the velocity must return one velocity of the shape of a point of "
                         f"`{name}`, {x.shape}, got "
                         f"{shape if shape is not None else type(out).__name__} (the velocity "
                         f"is per point: fmjax vmaps it over the batch)")
    if out.dtype != x0.dtype:
        raise ValueError(f"the velocity must return the dtype of `{name}` ({x0.dtype}), got "
                         f"{out.dtype}; cast its parameters to {x0.dtype}")


def _time_grid(t0, t1, n, dtype):
    return t0 + (t1 - t0) * jnp.linspace(0.0, 1.0, n, dtype=dtype)


def _saveat_ts(saveat, save_trajectory, t0, t1, steps, dtype):
    """Times at which to save, or None (final point only)."""
    if saveat is None:
        if not save_trajectory:
            return None
        n = (steps + 1) if steps is not None else 101
        return _time_grid(t0, t1, n, dtype)
    if isinstance(saveat, bool):
        raise ValueError("`saveat` must be an int (number of equally spaced times) or an array")
    if isinstance(saveat, int | np.integer):
        if saveat < 2:
            raise ValueError(f"`saveat` as a count must be >= 2, got {saveat}")
        return _time_grid(t0, t1, int(saveat), dtype)
    ts = _checks.as_float_array(saveat, "saveat", ndim=1, dtype=dtype)
    c, c0, c1 = _checks.concrete(ts), _checks.concrete(t0), _checks.concrete(t1)
    if c is not None and c0 is not None and c1 is not None and c.size:
        lo, hi = min(float(c0), float(c1)), max(float(c0), float(c1))
        if c.min() < lo or c.max() > hi:
            raise ValueError(f"`saveat` times must lie between t0={float(c0)} and t1={float(c1)}")
        d = np.diff(c) * np.sign(float(c1) - float(c0))
        if np.any(d < 0):
            raise ValueError("`saveat` times must be ordered from t0 to t1")
    return ts


# ----------------------------------------------------------------------------------------
# The common solve
# ----------------------------------------------------------------------------------------
def _field(t, y, args):
    packed, rhs, extra = args
    return rhs(_unpack_velocity(packed), t, y, extra)


class _Raw(NamedTuple):
    y: Any
    ts: Any
    ys: Any
    nfe: jax.Array
    num_steps: jax.Array
    result: Any
    t_reached: jax.Array
    size: jax.Array  # (max |x| at the start, max |x| at the end) of the first state leaf
    accepted: jax.Array


def _controller(inst, adaptive, steps, rtol, atol, t0, t1, max_steps, dtype):
    _checks.positive_int(max_steps, "max_steps")
    if adaptive:
        # Tolerances as arrays: new values reuse the compiled solve.
        return (diffrax.PIDController(rtol=jnp.asarray(rtol, dtype),
                                      atol=jnp.asarray(atol, dtype)), None, max_steps)
    # Uniform grid t0 + (t1 - t0) k / steps (Diffrax computes it as a fraction, no drift, and
    # lands exactly on t1). dt0 is data, so a new step count reuses the compiled solve as
    # long as it fits in the (static) step budget.
    return (diffrax.ConstantStepSize(), (t1 - t0) / jnp.asarray(steps, dtype),
            max(max_steps, int(steps)))


def _classify(result, y0, y_final, ys, accepted, num_steps):
    """Promote Diffrax's result, flagging non-finite states and finite-time blow-up (the
    step budget ran out with most steps rejected while the state grew by orders of
    magnitude: the step size collapsed at a singularity)."""
    leaves = jax.tree.leaves(y_final if ys is None else (y_final, ys))
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in leaves]))
    x0, x1 = jax.tree.leaves(y0)[0], jax.tree.leaves(y_final)[0]
    size = jnp.stack([jnp.max(jnp.abs(x0)), jnp.max(jnp.abs(x1))])
    result = FlowResults.promote(result)
    collapsed = (num_steps - accepted > accepted) & (size[1] > _BLOWUP_GROWTH * (1 + size[0]))
    grew = ~finite | collapsed
    result = FlowResults.where((result == FlowResults.max_steps_reached) & grew,
                               FlowResults.blowup, result)
    result = FlowResults.where((result == FlowResults.successful) & ~finite,
                               FlowResults.nonfinite, result)
    return result, size


def _solve(rhs, packed, y0, t0, t1, *, extra=None, solver, steps, rtol, atol, save_ts,
           max_steps, throw, adjoint, dtype, what="integrate") -> _Raw:
    """One diffeqsolve of ``dy/dt = rhs(velocity, t, y, extra)`` on the pytree state ``y0``.

    ``rhs`` must be a module-level function (it is part of Diffrax's jit cache key); arrays
    it needs go in ``extra``. A failed solve raises :class:`FlowError` (eagerly) or at run
    time (traced) when ``throw``; ``what`` names the caller in the message.
    """
    inst, adaptive = _make_solver(solver, steps)
    controller, dt0, n_max = _controller(inst, adaptive, steps, rtol, atol, t0, t1,
                                         max_steps, dtype)
    subs = [diffrax.SubSaveAt(t1=True)]
    if save_ts is not None:
        subs.append(diffrax.SubSaveAt(ts=save_ts))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_field), inst, t0, t1, dt0, y0, args=(packed, rhs, extra),
        saveat=diffrax.SaveAt(subs=subs), stepsize_controller=controller, max_steps=n_max,
        throw=False,
        adjoint=adjoint if adjoint is not None else diffrax.RecursiveCheckpointAdjoint())
    y_final = jax.tree.map(lambda a: a[0], sol.ys[0])
    ys, ts = (sol.ys[1], sol.ts[1]) if save_ts is not None else (None, None)
    num_steps = sol.stats["num_steps"]
    per = _evals_per_step(inst)
    # Diffrax's automatic initial step (adaptive case) costs 2 more evaluations.
    nfe = (jnp.asarray(-1) if per is None
           else per[0] * num_steps + per[1] + (2 if adaptive else 0))
    result, size = _classify(sol.result, y0, y_final, ys, sol.stats["num_accepted_steps"],
                             num_steps)
    raw = _Raw(y_final, ts, ys, nfe, num_steps, result, sol.ts[0][0], size,
               sol.stats["num_accepted_steps"])
    return _raise_on_failure(raw, what, t0, t1, n_max) if throw else raw


def _failure_message(raw: _Raw, what: str, t0, t1, max_steps: int) -> str:
    t, span = float(raw.t_reached), f"[{float(t0):g}, {float(t1):g}]"
    steps, acc = int(raw.num_steps), int(raw.accepted)
    if raw.result == FlowResults.blowup:
        return (f"{what}: the flow blows up before t1: the solve stopped at t = {t:.6g} of "
                f"{span} after {steps:,} steps ({steps - acc:,} rejected) with max |x| = "
                f"{float(raw.size[1]):.3g} (max |x| = {float(raw.size[0]):.3g} at the start). "
                f"The velocity grows faster than linearly along the flow, so no step budget "
                f"can reach t1: check the model and the time interval.")
    if raw.result == FlowResults.nonfinite:
        return (f"{what}: the state became non-finite (NaN or inf) on {span} after "
                f"{steps:,} steps: the velocity returned NaN/inf, or the fixed step is too "
                f"large for this velocity (use more `steps` or an adaptive solver).")
    if raw.result == FlowResults.max_steps_reached:
        return (f"{what}: the solve stopped at t = {t:.6g} of {span}: the step budget "
                f"max_steps = {max_steps:,} was used up ({acc:,} accepted, {steps - acc:,} "
                f"rejected steps). Raise `max_steps`, loosen `rtol`/`atol`, or use a "
                f"fixed-step solver with `steps`.")
    return f"{what}: the solve failed: {FlowResults[raw.result]}"


def _raise_on_failure(raw: _Raw, what: str, t0, t1, max_steps: int) -> _Raw:
    ok = _checks.concrete(raw.result == FlowResults.successful)
    if ok is None:  # traced: a run-time error carrying the FlowResults message
        return raw._replace(y=raw.result.error_if(raw.y, raw.result != FlowResults.successful))
    if not bool(ok):
        raise FlowError(_failure_message(raw, what, t0, t1, max_steps))
    return raw


def _prepare(velocity, x, name, t0, t1, labels=None):
    x = _checks.check_points(x, name)
    t0, t1 = _check_times(t0, t1, x.dtype)
    if labels is not None:
        if not jnp.issubdtype(getattr(labels, "dtype", np.float64), jnp.integer) or \
                labels.shape != x.shape[:1]:
            raise ValueError(f"`labels` must be an integer array of shape ({x.shape[0]},), one "
                             f"per point of `{name}`, got {_checks._describe(labels)}")
    _check_velocity(velocity, x, name, labels)
    return x, t0, t1, _pack_velocity(velocity)


def _batched(velocity, t, x, extra=None):
    return jax.vmap(velocity, in_axes=(None, 0))(t.astype(x.dtype), x)


def _batched_labeled(velocity, t, x, labels):
    return jax.vmap(velocity, in_axes=(None, 0, 0))(t.astype(x.dtype), x, labels)


# ----------------------------------------------------------------------------------------
# integrate
# ----------------------------------------------------------------------------------------
class FlowSolution(NamedTuple):
    """The output of :func:`integrate`.

    Attributes:
        x: ``(n, *point_shape)`` points at ``t1``, :math:`\\varphi_{t_1}(x_0)`.
        ts: ``(T,)`` save times, or None when no trajectory was asked for.
        xs: ``(T, n, *point_shape)`` trajectory at ``ts``, or None.
        nfe: number of evaluations of the batched velocity (each one evaluates ``v`` on all
            ``n`` points); -1 for a solver whose cost per step is unknown.
        num_steps: solver steps taken (accepted and rejected).
        result: a :class:`FlowResults` item; ``FlowResults.successful`` unless the solve
            failed (only visible with ``throw=False``).

    Example:
        The McCann velocity of :math:`T(x) = 2x + 1` moves every particle in a straight
        line at constant speed, so even Euler's method lands exactly on :math:`T(x_0)`:

        >>> import jax.numpy as jnp, fmjax as fm
        >>> v = fm.mccann_velocity(2.0 * jnp.eye(2), jnp.ones(2))
        >>> sol = fm.integrate(v, jnp.ones((4, 2)), solver="euler", steps=2, saveat=3)
        >>> sol.ts.tolist(), sol.xs[:, 0, 0].tolist(), sol.x.shape
        ([0.0, 0.5, 1.0], [1.0, 2.0, 3.0], (4, 2))
        >>> int(sol.nfe), int(sol.num_steps), bool(sol.result == fm.FlowResults.successful)
        (2, 2, True)
    """

    x: Batch
    ts: jax.Array | None
    xs: jax.Array | None
    nfe: jax.Array
    num_steps: jax.Array
    result: Any

    @property
    def ok(self) -> jax.Array:
        """Boolean array: the solve succeeded."""
        return self.result == FlowResults.successful


@readable
def integrate(velocity: VelocityField, x0: BatchLike, *, t0: ScalarLike = 0.0,
              t1: ScalarLike = 1.0, solver: Any = "tsit5", steps: int | None = None,
              rtol: float = 1e-5, atol: float = 1e-5, saveat=None,
              save_trajectory: bool = False, max_steps: int = 4096, throw: bool = True,
              adjoint: diffrax.AbstractAdjoint | None = None,
              labels: jax.Array | None = None) -> FlowSolution:
    r"""Push a batch of points through the flow of ``velocity`` from ``t0`` to ``t1``.

    Solves :math:`\partial_t \varphi_t(x) = v(t, \varphi_t(x))`, :math:`\varphi_{t_0}(x) = x`
    for every point of ``x0`` in one ``diffrax.diffeqsolve`` on the whole batch.
    ``t1 < t0`` integrates backward (e.g. from data to noise).

    Args:
        velocity: per-point field ``v(t, x)``, ``x`` one point (``(d,)`` or any shape),
            scalar ``t`` (given with ``x``'s dtype), returning the shape and dtype of ``x``. A
            closure, an
            ``equinox.Module`` or any callable pytree; its array leaves are differentiable
            (``jax.grad`` through ``integrate`` reaches them).
        x0: ``(n, *point_shape)`` floating points at time ``t0``.
        t0, t1: start and end times (``t0 != t1``).
        solver: ``"tsit5"``, ``"dopri5"`` (adaptive), ``"euler"``, ``"heun"``,
            ``"midpoint"``, ``"rk4"`` (need ``steps``) or a diffrax solver instance.
        steps: number of uniform steps (fixed-step mode).
        rtol, atol: tolerances of the adaptive step-size controller.
        saveat: None, a count ``T >= 2`` of equally spaced times from ``t0`` to ``t1``, or a
            ``(T,)`` array of times ordered from ``t0`` to ``t1``.
        save_trajectory: with ``saveat=None``, save the trajectory on the step grid
            (``steps + 1`` times) or at 101 equally spaced times (adaptive).
        max_steps: step budget (static: it sizes Diffrax's loop); raised to ``steps`` if smaller.
        throw: raise :class:`FlowError` when the solve fails (step budget reached, NaN/inf,
            blow-up; under a user's ``jax.jit`` a run-time error with the
            :class:`FlowResults` message). With ``throw=False`` the failure is only reported
            in ``.result``: check ``sol.ok`` before using ``.x``.
        adjoint: Diffrax adjoint for reverse-mode autodiff (default
            ``RecursiveCheckpointAdjoint``: differentiate-through-the-solver).
        labels: optional ``(n,)`` integer labels, one per point: the velocity is then called
            as ``v(t, x, y)`` (a class-conditional model).

    Returns:
        A :class:`FlowSolution` ``(x, ts, xs, nfe, num_steps, result)``.

    Raises:
        ValueError: bad shapes/dtypes, ``t0 == t1``, a velocity that does not return
            the shape and dtype of a point of ``x0``, a fixed-step solver without ``steps``.
        FlowError: the solve failed (with ``throw=True``).

    Example:
        The flow of the McCann velocity of :math:`T(x) = 2x + 1` is :math:`T` at ``t1 = 1``
        (straight trajectories: Euler is exact); any callable ``v(t, x)`` works the same way.

        >>> import jax.numpy as jnp, fmjax as fm
        >>> v = fm.mccann_velocity(2.0 * jnp.eye(2), jnp.ones(2))
        >>> sol = fm.integrate(v, jnp.ones((4, 2)), solver="euler", steps=2, saveat=3)
        >>> sol.x[0].tolist(), sol.xs.shape, int(sol.nfe)
        ([3.0, 3.0], (3, 4, 2), 2)
    """
    x0, t0, t1, packed = _prepare(velocity, x0, "x0", t0, t1, labels)
    save_ts = _saveat_ts(saveat, save_trajectory, t0, t1, steps, x0.dtype)
    raw = _solve(_batched if labels is None else _batched_labeled, packed, x0, t0, t1,
                 extra=labels, solver=solver, steps=steps, rtol=rtol, atol=atol,
                 save_ts=save_ts, max_steps=max_steps, throw=throw, adjoint=adjoint,
                 dtype=x0.dtype, what="integrate")
    return FlowSolution(raw.y, raw.ts, raw.ys, raw.nfe, raw.num_steps, raw.result)


# ----------------------------------------------------------------------------------------
# Likelihood
# ----------------------------------------------------------------------------------------
def _value_and_divergence(velocity, t, x, eps):
    """``v(t, x)`` and its divergence for one point ``x`` of any shape: exact if ``eps`` is
    None (one JVP per coordinate), else Hutchinson's estimate with the ``(k, *shape)``
    probes ``eps``."""
    v, lin = jax.linearize(lambda z: velocity(t, z), x)
    if eps is None:
        size = x.size
        basis = jnp.eye(size, dtype=x.dtype).reshape((size, *x.shape))
        jac = jax.vmap(lin)(basis).reshape(size, size)  # rows J e_i (flattened)
        return v, jnp.trace(jac)
    jv = jax.vmap(lin)(eps)
    return v, jnp.mean(jnp.sum((eps * jv).reshape(eps.shape[0], -1), axis=-1))


def _div_exact_rhs(velocity, t, y, extra):
    x, _ = y
    t = t.astype(x.dtype)
    return jax.vmap(lambda xi: _value_and_divergence(velocity, t, xi, None))(x)


def _div_hutchinson_rhs(velocity, t, y, probes):
    x, _ = y
    t = t.astype(x.dtype)
    return jax.vmap(lambda xi, ei: _value_and_divergence(velocity, t, xi, ei),
                    in_axes=(0, 1))(x, probes)


def _base_density(velocity, log_density0, x1):
    if log_density0 is None:
        log_density0 = getattr(getattr(velocity, "source", None), "log_density", None)
        if log_density0 is None:
            raise ValueError("`log_density0` is required: the velocity does not remember a "
                             "source with a known density (a model fit from "
                             "fm.datasets.standard_normal(d) does); pass the base "
                             "log-density x -> scalar")
    if not callable(log_density0):
        raise ValueError(f"`log_density0` must be a callable x -> scalar, got "
                         f"{type(log_density0).__name__}")
    out = jax.eval_shape(log_density0, jax.ShapeDtypeStruct(x1.shape[1:], x1.dtype))
    if getattr(out, "shape", None) != ():
        raise ValueError(f"`log_density0` must return a scalar for one point of shape "
                         f"{x1.shape[1:]}, got shape {getattr(out, 'shape', None)}")
    return log_density0


def _probes(divergence, key, n_probes, probe, x1):
    if divergence == "exact":
        return None
    if divergence != "hutchinson":
        raise ValueError(f"`divergence` must be 'exact' or 'hutchinson', got {divergence!r}")
    if key is None:
        raise ValueError("`key` is required for divergence='hutchinson'")
    key = _checks.check_key(key)
    shape = (_checks.positive_int(n_probes, "n_probes"), *x1.shape)
    if probe == "rademacher":
        return jax.random.rademacher(key, shape, dtype=x1.dtype)
    if probe == "gaussian":
        return jax.random.normal(key, shape, dtype=x1.dtype)
    raise ValueError(f"`probe` must be 'rademacher' or 'gaussian', got {probe!r}")


@readable
def log_likelihood(velocity: VelocityField, x1: BatchLike,
                   log_density0: Callable[[Vector], Scalar] | None = None, *,
                   divergence: str = "exact", key: Key | None = None, n_probes: int = 8,
                   probe: str = "rademacher", t0: ScalarLike = 0.0, t1: ScalarLike = 1.0,
                   solver: Any = "tsit5", steps: int | None = None, rtol: float = 1e-6,
                   atol: float = 1e-6, max_steps: int = 4096, throw: bool = True) -> Values:
    r"""Log-density at ``x1`` of the pushforward of the base by the flow of ``velocity``.

    Instantaneous change of variables (Chen et al., 2018): integrating backward from
    ``t1`` to ``t0`` the state :math:`(x, \ell)` with :math:`\dot x = v(t, x)`,
    :math:`\dot\ell = \operatorname{div} v(t, x)`, :math:`x(t_1) = x_1`, :math:`\ell(t_1) = 0`,

    .. math::
        \log p_{t_1}(x_1) = \log p_{t_0}(x(t_0)) + \ell(t_0)
        = \log p_{t_0}(x(t_0)) - \int_{t_0}^{t_1} \operatorname{div} v(t, x(t))\,dt.

    The divergence is exact (one Jacobian-vector product per coordinate of a point: small
    points) or Hutchinson's estimate :math:`\frac1k\sum_j \epsilon_j^\top J \epsilon_j`
    with ``n_probes`` Rademacher or Gaussian probes per point drawn once and fixed for the
    whole solve (so the ODE is smooth; use it for images); the result is then unbiased only
    up to the ODE error. Differentiable w.r.t. ``x1`` and the velocity's parameters.

    Args:
        velocity: per-point field ``v(t, x)`` as in :func:`integrate`.
        x1: ``(n, *point_shape)`` points at time ``t1``.
        log_density0: base log-density on one point, ``x -> scalar``. Default: the density
            of the source the velocity remembers (a model fit from
            :func:`fmjax.datasets.standard_normal` has the standard normal one); a velocity
            without one raises ``ValueError``.
        divergence: ``"exact"`` or ``"hutchinson"``.
        key: PRNG key (required for ``"hutchinson"``).
        n_probes: probes per point (Hutchinson).
        probe: ``"rademacher"`` or ``"gaussian"``.
        t0, t1: the base lives at ``t0``, the points at ``t1``.
        solver, steps, rtol, atol, max_steps, throw: as in :func:`integrate`.

    Returns:
        ``(n,)`` log-densities, dtype of ``x1``.

    Example:
        The flow of :math:`v(t, x) = x` is :math:`x \mapsto e^t x`: it pushes
        :math:`\mathcal{N}(0, I_2)` to :math:`\mathcal{N}(0, e^2 I_2)`, whose log-density at
        :math:`(1, 0)` is :math:`-\log(2\pi) - 2 - e^{-2}/2`.

        >>> import jax.numpy as jnp, jax.scipy.stats as st, fmjax as fm
        >>> base = lambda x: jnp.sum(st.norm.logpdf(x))
        >>> x1 = jnp.array([[1.0, 0.0]])
        >>> lp = fm.log_likelihood(lambda t, x: x, x1, base, solver="rk4", steps=10)
        >>> print(lp.shape, round(float(lp[0]), 4))
        (1,) -3.9055
    """
    x1, t0, t1, packed = _prepare(velocity, x1, "x1", t0, t1)
    log_density0 = _base_density(velocity, log_density0, x1)
    probes = _probes(divergence, key, n_probes, probe, x1)
    y1 = (x1, jnp.zeros(x1.shape[:1], x1.dtype))
    rhs = _div_exact_rhs if probes is None else _div_hutchinson_rhs
    raw = _solve(rhs, packed, y1, t1, t0, extra=probes, solver=solver, steps=steps,
                 rtol=rtol, atol=atol, save_ts=None, max_steps=max_steps, throw=throw,
                 adjoint=None, dtype=x1.dtype, what="log_likelihood")
    x0, ell = raw.y
    return jax.vmap(log_density0)(x0).astype(x1.dtype) + ell
