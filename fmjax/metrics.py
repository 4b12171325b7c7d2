r"""Metrics: empirical :math:`\mathbb{W}_2`, its sampling floor, kinetic energy, straightness.

* :func:`w2`, :func:`w2_squared`, :func:`w2_result`: :math:`\mathbb{W}_2` between point
  clouds, exact (POT's network simplex on the host, through a callback, so it also works
  under ``jit``) or by ott-jax's debiased Sinkhorn divergence.
* :func:`w2_floor`: :math:`\mathbb{W}_2` between two samples of the *same* law (not zero):
  print it beside any sample :math:`\mathbb{W}_2`.
* :func:`kinetic_energy`, :func:`straightness`, :func:`normalized_path_energy`: the notes'
  chain :math:`E \ge \mathbb{E}\|\varphi_1(X_0) - X_0\|^2 \ge \mathbb{W}_2^2`, whose first
  gap is the straightness of the flow and whose second is the optimality of the coupling
  it realises.

Naming rule: a function whose name ends in ``_squared`` returns :math:`\mathbb{W}_2^2`; every
other ``w2`` function returns :math:`\mathbb{W}_2` itself.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from ._errors import readable
from ._typing import Batch, BatchLike, OtherBatchLike, Scalar, ScalarLike, Values, ValuesLike
from .flows import _batched, _prepare, _solve

__all__ = [
    "EXACT_MAX_SIZE",
    "Straightness",
    "W2Result",
    "kinetic_energy",
    "normalized_path_energy",
    "straightness",
    "w2",
    "w2_floor",
    "w2_result",
    "w2_squared",
]

#: Largest number of points (per cloud) for which ``w2(..., method="auto")`` is exact. The
#: exact solve holds two dense float64 ``n x m`` matrices on the host (cost and plan); above
#: this size ``"auto"`` uses the Sinkhorn divergence and warns that it approximates.
EXACT_MAX_SIZE = 16_384


# ----------------------------------------------------------------------------------------
# Empirical W2
# ----------------------------------------------------------------------------------------
class W2Result(eqx.Module):
    r"""The outcome of :func:`w2_result`.

    Attributes:
        w2: :math:`\mathbb{W}_2` (not squared), scalar.
        w2_squared: :math:`\mathbb{W}_2^2`, scalar.
        converged: boolean scalar: the network simplex reached optimality (``"exact"``), or
            all three Sinkhorn solves of the divergence met ``threshold`` within
            ``max_iterations`` with a finite value (``"sinkhorn"``).
        n_iterations: Sinkhorn iterations of the cross term (``None`` for exact).
        epsilon: entropic regularization used (``None`` for exact).
        method: ``"exact"`` or ``"sinkhorn"`` (static).

    Example:
        Translating a cloud by :math:`(3, 4)` moves it by :math:`\mathbb{W}_2 = 5`:

        >>> import jax, jax.numpy as jnp, fmjax as fm
        >>> x = jax.random.normal(jax.random.key(0), (4, 2), dtype=jnp.float32)
        >>> res = fm.w2_result(x, x + jnp.array([[3.0, 4.0]], x.dtype))
        >>> res.method, round(float(res.w2), 4), round(float(res.w2_squared), 3)
        ('exact', 5.0, 25.0)
        >>> bool(res.converged), res.n_iterations, res.epsilon
        (True, None, None)
    """

    w2: jax.Array
    w2_squared: jax.Array
    converged: jax.Array
    n_iterations: jax.Array | None
    epsilon: jax.Array | None
    method: str = eqx.field(static=True)


@contextlib.contextmanager
def _ott_context():
    # ott-jax relies on implicit rank and dtype promotion: allow it inside its calls only.
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        yield


def _sq_dists_np(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """float64 squared distances: direct differences in low dimension (no cancellation:
    identical clouds give exactly 0), the BLAS expansion (POT's ``ot.dist``) above."""
    import ot

    if x.shape[1] > 16:
        return np.maximum(ot.dist(x, y, metric="sqeuclidean"), 0.0)
    out = np.empty((x.shape[0], y.shape[0]))
    for lo in range(0, x.shape[0], 256):
        diff = x[lo:lo + 256, None, :] - y[None, :, :]
        np.einsum("ijk,ijk->ij", diff, diff, out=out[lo:lo + 256])
    return out


def _emd_host(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, *, wdtype: Any):
    """POT's network simplex on the float64 squared-distance matrix: the optimal cost and the
    support of the optimal plan, padded to ``n + m - 1`` entries (a basic solution has at
    most that many)."""
    import ot

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cost = _sq_dists_np(x, y)
    n, m = cost.shape
    plan, log = ot.emd(a / a.sum(), b / b.sum(), cost, numItermax=max(100_000, 100 * n * m),
                       log=True)
    rows, cols = np.nonzero(plan)
    k = n + m - 1
    if rows.size > k:  # degenerate ties can leave more entries: keep the largest
        keep = np.argsort(plan[rows, cols])[::-1][:k]
        rows, cols = rows[keep], cols[keep]
    out_r, out_c, out_w = np.zeros(k, np.int32), np.zeros(k, np.int32), np.zeros(k, wdtype)
    out_r[:rows.size], out_c[:rows.size], out_w[:rows.size] = rows, cols, plan[rows, cols]
    return (out_r, out_c, out_w, np.asarray(max(float(log["cost"]), 0.0), wdtype),
            np.asarray(log.get("result_code", 1) == 1))


def _exact_w2_squared(x: jax.Array, y: jax.Array, a: jax.Array, b: jax.Array):
    """Exact W2^2 (POT's float64 optimal cost) and the convergence flag; differentiable in
    ``x``, ``y`` with the plan held fixed (envelope theorem)."""
    k = x.shape[0] + y.shape[0] - 1
    wdtype = np.dtype(np.float64 if jax.config.jax_enable_x64 else np.float32)
    shapes = (jax.ShapeDtypeStruct((k,), jnp.int32), jax.ShapeDtypeStruct((k,), jnp.int32),
              jax.ShapeDtypeStruct((k,), wdtype), jax.ShapeDtypeStruct((), wdtype),
              jax.ShapeDtypeStruct((), jnp.bool_))
    rows, cols, w, cost, ok = jax.pure_callback(
        functools.partial(_emd_host, wdtype=wdtype), shapes, jax.lax.stop_gradient(x),
        jax.lax.stop_gradient(y), jax.lax.stop_gradient(a), jax.lax.stop_gradient(b),
        vmap_method="sequential")
    # The value is the host's float64 cost; the gradient is that of sum_k w_k |x_r - y_c|^2
    # with the plan fixed (zero-valued correction term, live gradient).
    surrogate = jnp.sum(w.astype(x.dtype) * jnp.sum((x[rows] - y[cols]) ** 2, axis=-1))
    return cost.astype(x.dtype) + (surrogate - jax.lax.stop_gradient(surrogate)), ok


@functools.partial(jax.jit, static_argnames=("threshold", "max_iterations"))
def _sinkhorn_w2_squared(x, y, a, b, epsilon, *, threshold, max_iterations):
    from ott.tools import sinkhorn_divergence

    with _ott_context():
        div, out = sinkhorn_divergence.sinkdiv(
            x, y, a=a, b=b, epsilon=epsilon,
            solve_kwargs={"threshold": threshold, "max_iterations": max_iterations})
    div = div.astype(x.dtype)
    converged = jnp.all(jnp.stack([jnp.asarray(c) for c in out.converged]))
    converged = converged & jnp.isfinite(div)
    return jnp.maximum(div, jnp.zeros((), x.dtype)), converged, jnp.asarray(out.n_iters[0])


def _weights(w, name, n, dtype):
    if w is None:
        return jnp.full((n,), 1.0 / n, dtype=dtype)
    return _checks.check_weights(w, name, n).astype(dtype)


def _w2_inputs(x, y, weights_x, weights_y):
    x, y = _checks.check_batch(x, "x"), _checks.check_batch(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"`x` has points of d = {x.shape[1]} (shape {x.shape}) but `y` has "
                         f"d = {y.shape[1]} (shape {y.shape}); the point dimensions must match")
    dtype = jnp.promote_types(x.dtype, y.dtype)
    x, y = x.astype(dtype), y.astype(dtype)
    a, b = (_weights(weights_x, "weights_x", x.shape[0], dtype),
            _weights(weights_y, "weights_y", y.shape[0], dtype))
    # W2 is invariant under a common translation; centering limits round-off in the costs.
    center = jax.lax.stop_gradient(0.5 * (a @ x + b @ y))
    return x - center[None, :], y - center[None, :], a, b


def _sinkhorn_epsilon(x, y, a, b, epsilon, relative_epsilon):
    if epsilon is not None:
        eps = _checks.as_float_array(epsilon, "epsilon", ndim=0).astype(x.dtype)
        c = _checks.concrete(eps)
        if c is not None and not float(c) > 0:
            raise ValueError(f"`epsilon` must be positive, got {float(c)!r}")
        return eps
    if not (isinstance(relative_epsilon, float | int) and relative_epsilon > 0):
        raise ValueError(f"`relative_epsilon` must be a positive float, got "
                         f"{relative_epsilon!r}")
    # Mean cost sum_ij a_i b_j |x_i - y_j|^2 in closed form (no n x m matrix).
    mean_cost = a @ jnp.sum(x**2, axis=1) + b @ jnp.sum(y**2, axis=1) - 2.0 * ((a @ x) @ (b @ y))
    eps = relative_epsilon * jax.lax.stop_gradient(mean_cost)
    # Two identical clouds: mean cost can be 0; keep epsilon positive.
    return jnp.maximum(eps, jnp.asarray(jnp.finfo(x.dtype).tiny, x.dtype))


def _auto_method(method, n, m, exact_max_size):
    if method not in ("auto", "exact", "sinkhorn"):
        raise ValueError(f"`method` must be 'auto', 'exact' or 'sinkhorn', got {method!r}")
    if method != "auto":
        return method
    exact_max_size = _checks.positive_int(exact_max_size, "exact_max_size")
    if max(n, m) <= exact_max_size:
        return "exact"
    warnings.warn(f"fm.w2: {n} and {m} points exceed exact_max_size = {exact_max_size}: "
                  f"method='auto' uses the debiased Sinkhorn divergence, an approximation of "
                  f"W2 (biased low); pass method='exact' (memory ~ {16 * n * m / 1e9:.1f} GB) "
                  f"or method='sinkhorn' to choose", UserWarning, stacklevel=4)
    return "sinkhorn"


def w2_result(x: BatchLike, y: OtherBatchLike, *, method: str = "auto",
              epsilon: ScalarLike | None = None, relative_epsilon: float = 1e-2,
              weights_x: ValuesLike | None = None, weights_y: ValuesLike | None = None,
              threshold: float = 1e-4, max_iterations: int = 5000,
              exact_max_size: int = EXACT_MAX_SIZE) -> W2Result:
    r""":math:`\mathbb{W}_2` between two empirical measures, with solver diagnostics.

    The same computation as :func:`w2`, but never raises on non-convergence: it returns a
    :class:`W2Result` with the value, the method used, epsilon, the convergence flag and the
    iteration count. See :func:`w2` for the arguments.

    Example:
        >>> import jax, jax.numpy as jnp, fmjax as fm
        >>> x = jax.random.normal(jax.random.key(0), (4, 2), dtype=jnp.float32)
        >>> res = fm.w2_result(x, x + 1.0)
        >>> res.method, round(float(res.w2), 4), bool(res.converged)
        ('exact', 1.4142, True)
    """
    x, y, a, b = _w2_inputs(x, y, weights_x, weights_y)
    method = _auto_method(method, x.shape[0], y.shape[0], exact_max_size)
    if method == "exact":
        sq, ok = _exact_w2_squared(x, y, a, b)
        return W2Result(jnp.sqrt(sq), sq, ok, None, None, "exact")
    max_iterations = _checks.positive_int(max_iterations, "max_iterations")
    if not (isinstance(threshold, float | int) and threshold > 0):
        raise ValueError(f"`threshold` must be a positive float, got {threshold!r}")
    eps = _sinkhorn_epsilon(x, y, a, b, epsilon, relative_epsilon)
    sq, converged, iters = _sinkhorn_w2_squared(x, y, a, b, eps, threshold=float(threshold),
                                                max_iterations=max_iterations)
    return W2Result(jnp.sqrt(sq), sq, converged, iters, eps, "sinkhorn")


def _checked(res: W2Result, value: jax.Array, on_failure: str) -> jax.Array:
    msg = ("the network simplex stopped before optimality (iteration cap)" if
           res.method == "exact" else
           "Sinkhorn did not converge (epsilon too small for max_iterations, or NaN); raise "
           "max_iterations, increase epsilon/relative_epsilon or use method='exact'")
    msg += " (see fmjax.w2_result for diagnostics)"
    c = _checks.concrete(res.converged)
    if c is not None:
        if not bool(c):
            if on_failure == "raise":
                detail = ("" if res.method == "exact" else
                          f": iterations={int(np.asarray(res.n_iterations))}, "
                          f"epsilon={float(np.asarray(res.epsilon)):.3g}")
                raise RuntimeError(msg + detail)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return value
    if on_failure == "raise":
        return eqx.error_if(value, ~res.converged, msg)

    def _warn(ok):
        if not bool(ok):
            warnings.warn(msg, RuntimeWarning, stacklevel=2)

    jax.debug.callback(_warn, res.converged)
    return value


def _check_on_failure(on_failure):
    if on_failure not in ("raise", "warn"):
        raise ValueError(f"`on_failure` must be 'raise' or 'warn', got {on_failure!r}")


@readable
def w2(x: BatchLike, y: OtherBatchLike, *, method: str = "auto",
       epsilon: ScalarLike | None = None, relative_epsilon: float = 1e-2,
       weights_x: ValuesLike | None = None, weights_y: ValuesLike | None = None,
       threshold: float = 1e-4, max_iterations: int = 5000,
       exact_max_size: int = EXACT_MAX_SIZE, on_failure: str = "raise") -> Scalar:
    r"""The Wasserstein-2 distance :math:`\mathbb{W}_2` (NOT squared) between point clouds.

    For :math:`\hat\alpha = \sum_i a_i \delta_{x_i}`, :math:`\hat\beta = \sum_j b_j \delta_{y_j}`,

    .. math::

        \mathbb{W}_2(\hat\alpha, \hat\beta) = \Big(\min_{P \in U(a, b)} \sum_{ij} P_{ij}
        \|x_i - y_j\|^2\Big)^{1/2}.

    Methods:

    * ``"exact"``: the optimal plan by POT's network simplex (``ot.emd``, the evaluator of
      the published 2-D tables) on the host through ``jax.pure_callback``: any sizes and
      weights, exact, two dense float64 ``n x m`` matrices of host memory.
    * ``"sinkhorn"``: ott-jax's debiased Sinkhorn divergence
      :math:`S_\varepsilon = \mathrm{OT}_\varepsilon(\hat\alpha,\hat\beta) -
      \tfrac12\mathrm{OT}_\varepsilon(\hat\alpha,\hat\alpha) -
      \tfrac12\mathrm{OT}_\varepsilon(\hat\beta,\hat\beta)`, an approximation of
      :math:`\mathbb{W}_2^2` with an entropic bias (lower ``relative_epsilon`` for more
      accuracy, at more iterations).
    * ``"auto"`` (default): exact up to ``exact_max_size`` points per cloud; above, the
      Sinkhorn divergence with a warning that it approximates.

    Args:
        x: ``(n, d)`` points.
        y: ``(m, d)`` points (cast with ``x`` to their common floating dtype).
        method: ``"auto"``, ``"exact"`` or ``"sinkhorn"``.
        epsilon: absolute entropic regularization for Sinkhorn; default
            ``relative_epsilon`` times the mean pairwise squared distance.
        relative_epsilon: see ``epsilon``.
        weights_x, weights_y: optional probability weights ``(n,)``, ``(m,)``.
        threshold, max_iterations: Sinkhorn stopping tolerance and iteration cap.
        exact_max_size: largest cloud for which ``"auto"`` is exact.
        on_failure: ``"raise"`` (default) raises ``RuntimeError`` when the solver did not
            converge; ``"warn"`` emits a ``RuntimeWarning`` and returns the value.

    Returns:
        The scalar :math:`\mathbb{W}_2` in the common dtype of ``x`` and ``y``.
        Differentiable in ``x`` and ``y`` (envelope theorem: the plan is held fixed).

    Raises:
        ValueError: bad shapes or dtypes, empty or non-finite inputs, bad options.
        RuntimeError: the solver did not converge (with ``on_failure="raise"``).

    Example:
        >>> import jax, jax.numpy as jnp, fmjax as fm
        >>> x = jax.random.normal(jax.random.key(0), (4, 2), dtype=jnp.float32)
        >>> round(float(fm.w2(x, x + jnp.array([[3.0, 4.0]], x.dtype))), 4)
        5.0
    """
    _check_on_failure(on_failure)
    res = w2_result(x, y, method=method, epsilon=epsilon, relative_epsilon=relative_epsilon,
                    weights_x=weights_x, weights_y=weights_y, threshold=threshold,
                    max_iterations=max_iterations, exact_max_size=exact_max_size)
    return _checked(res, res.w2, on_failure)


@readable
def w2_squared(x: BatchLike, y: OtherBatchLike, **kwargs: Any) -> Scalar:
    r"""The SQUARED Wasserstein-2 distance :math:`\mathbb{W}_2^2` between point clouds.

    Same arguments as :func:`w2` (keyword-only), same checks; returns
    :math:`\mathbb{W}_2^2`, whose gradient stays finite when the clouds coincide.

    Example:
        >>> import jax, jax.numpy as jnp, fmjax as fm
        >>> x = jax.random.normal(jax.random.key(0), (4, 2), dtype=jnp.float32)
        >>> round(float(fm.w2_squared(x, x + jnp.array([[3.0, 4.0]], x.dtype))), 3)
        25.0
    """
    on_failure = kwargs.pop("on_failure", "raise")
    _check_on_failure(on_failure)
    res = w2_result(x, y, **kwargs)
    return _checked(res, res.w2_squared, on_failure)


def w2_floor(sample: Callable, key: jax.Array, n: int, reps: int = 3,
             **w2_kwargs: Any) -> tuple[float, float]:
    r"""Mean and standard deviation over ``reps`` pairs of :math:`\mathbb{W}_2` between two
    independent ``n``-point samples of the same distribution.

    :math:`\mathbb{W}_2` between finite samples of one law is not zero and varies from draw
    to draw (for mixtures, mostly through the component counts): a model's sample
    :math:`\mathbb{W}_2` cannot be expected below it. ``w2_kwargs`` go to :func:`w2`.

    Example:
        >>> import jax, fmjax as fm
        >>> mean, sd = fm.w2_floor(fm.datasets.standard_normal(2), jax.random.key(0), 200)
        >>> 0.0 < mean < 1.0
        True
    """
    key = _checks.check_key(key)
    n, reps = _checks.positive_int(n, "n"), _checks.positive_int(reps, "reps")
    vals = []
    for k in jax.random.split(key, reps):
        ka, kb = jax.random.split(k)
        vals.append(float(w2(sample(ka, n), sample(kb, n), **w2_kwargs)))
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if reps > 1 else 0.0)


# ----------------------------------------------------------------------------------------
# Kinetic energy and straightness
# ----------------------------------------------------------------------------------------
def _energy_rhs(velocity, t, y, extra):
    x, _ = y
    v = _batched(velocity, t, x)
    return v, jnp.sum((v * v).reshape(v.shape[0], -1), axis=-1)


def _safe_norm(sq: jax.Array) -> jax.Array:
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, jnp.ones_like(sq))), jnp.zeros_like(sq))


def _straightness_rhs(velocity, t, y, extra):
    x, _, _ = y
    v = _batched(velocity, t, x)
    sq = jnp.sum((v * v).reshape(v.shape[0], -1), axis=-1)
    return v, sq, _safe_norm(sq)


class Straightness(NamedTuple):
    r"""The output of :func:`straightness`: both gaps of the notes' chain
    :math:`E \ge \mathbb{E}\|\varphi_1(X_0) - X_0\|^2 \ge \mathbb{W}_2^2` start here.

    Attributes:
        value: :math:`S = E - \mathbb{E}\|\varphi_1(X_0) - X_0\|^2
            = \int \mathbb{E}\|(\varphi_1(X_0) - X_0) - v_t(\varphi_t(X_0))\|^2 dt
            \ge 0` (Liu et al., ICLR 2023), zero iff every particle moves in a straight
            line at constant speed.
        energy: the kinetic energy :math:`E` (:func:`kinetic_energy`).
        endpoint_cost: :math:`\mathbb{E}\|\varphi_1(X_0) - X_0\|^2`, the transport cost
            of the map the flow realises (at least :math:`\mathbb{W}_2^2` of its endpoints).
        length_excess: :math:`\mathbb{E}\big[\int \|v_t(\varphi_t(X_0))\| dt -
            \|\varphi_1(X_0) - X_0\|\big] \ge 0`, path length beyond the chord: zero iff
            the trajectories are straight segments, whatever the speed along them
            (invariant to a reparametrisation of time, unlike ``value``).
        per_particle_energy: ``(n,)`` values of :math:`\int \|v_t(\varphi_t(x))\|^2 dt`.
        x1: ``(n, *point_shape)`` endpoints :math:`\varphi_{t_1}(x_0)`.
        nfe, num_steps, result: as in :class:`fmjax.FlowSolution`.

    Example:
        A velocity that is constant in space but speeds up in time, :math:`v = 2t`, moves
        every particle by 1 along a straight line: :math:`E = \int 4t^2 = 4/3`, endpoint
        cost 1, so :math:`S = 1/3` while the length excess is 0.

        >>> import jax.numpy as jnp, fmjax as fm
        >>> out = fm.straightness(lambda t, x: 2 * t * jnp.ones_like(x), jnp.zeros((3, 1)),
        ...                       solver="rk4", steps=10)
        >>> round(float(out.value), 4), round(float(out.length_excess), 4)
        (0.3333, 0.0)
    """

    value: Scalar
    energy: Scalar
    endpoint_cost: Scalar
    length_excess: Scalar
    per_particle_energy: Values
    x1: Batch
    nfe: jax.Array
    num_steps: jax.Array
    result: Any


def _path_solve(rhs, n_acc, velocity, x0, t0, t1, solver, steps, rtol, atol, max_steps,
                throw, adjoint, what):
    x0, t0, t1, packed = _prepare(velocity, x0, "x0", t0, t1)
    zeros = jnp.zeros(x0.shape[:1], x0.dtype)
    raw = _solve(rhs, packed, (x0, *([zeros] * n_acc)), t0, t1, solver=solver, steps=steps,
                 rtol=rtol, atol=atol, save_ts=None, max_steps=max_steps, throw=throw,
                 adjoint=adjoint, dtype=x0.dtype, what=what)
    # abs: a backward integration (t1 < t0) accumulates minus the integral
    return x0, raw, [jnp.abs(e) for e in raw.y[1:]]


@readable
def kinetic_energy(velocity: Callable, x0: BatchLike, *, t0: ScalarLike = 0.0,
                   t1: ScalarLike = 1.0, solver: Any = "tsit5", steps: int | None = None,
                   rtol: float = 1e-7, atol: float = 1e-7, max_steps: int = 4096,
                   throw: bool = True,
                   adjoint: diffrax.AbstractAdjoint | None = None) -> Scalar:
    r"""Kinetic energy of the flow: :math:`E = \frac1n\sum_i \int_{t_0}^{t_1}
    \|v_t(\varphi_t(x_0^i))\|^2 dt`.

    One augmented solve of :math:`(x, e)`, :math:`\dot x = v(t, x)`,
    :math:`\dot e = \|v(t, x)\|^2`: the Benamou--Brenier action of :math:`(\mu_t, v_t)` with
    :math:`\mu_t = (\varphi_t)_\#\alpha` (the notes, "Benamou-Brenier"). It equals
    :math:`\mathbb{W}_2^2(\alpha, \beta)` for the McCann velocity and is larger for any other
    field transporting :math:`\alpha` to :math:`\beta`. Arguments as in
    :func:`fmjax.integrate` (tolerances 1e-7: the energy is an integral);
    :func:`straightness` returns the endpoints and the per-particle values too.

    Example:
        The McCann velocity of :math:`T(x) = 2x + 1` is straight at constant speed: its
        energy is the mean of :math:`\|T(x_0) - x_0\|^2 = \|x_0 + 1\|^2`, here 5.

        >>> import jax.numpy as jnp, fmjax as fm
        >>> v = fm.mccann_velocity(2.0 * jnp.eye(2), jnp.ones(2))
        >>> x0 = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> print(round(float(fm.kinetic_energy(v, x0, solver="euler", steps=2)), 4))
        5.0
    """
    _, _, (e,) = _path_solve(_energy_rhs, 1, velocity, x0, t0, t1, solver, steps, rtol, atol,
                             max_steps, throw, adjoint, "kinetic_energy")
    return jnp.mean(e)


@readable
def straightness(velocity: Callable, x0: BatchLike, *, t0: ScalarLike = 0.0,
                 t1: ScalarLike = 1.0, solver: Any = "tsit5", steps: int | None = None,
                 rtol: float = 1e-7, atol: float = 1e-7, max_steps: int = 4096,
                 throw: bool = True,
                 adjoint: diffrax.AbstractAdjoint | None = None) -> Straightness:
    r"""Straightness :math:`S`, energy, endpoint cost and length excess of the flow from ``x0``.

    Expanding the square of Liu et al.'s definition gives

    .. math::
        S = \int_{t_0}^{t_1} \mathbb{E}\|(\varphi_1 - \mathrm{Id}) - v_t \circ \varphi_t\|^2
        dt = E - \mathbb{E}\|\varphi_1(X_0) - X_0\|^2,

    computed from one augmented solve of :math:`(x, \int\|v\|^2, \int\|v\|)` (on
    :math:`[t_0, t_1]` of length 1; for another length :math:`L`, ``value`` is
    :math:`E - \mathbb{E}\|\varphi_{t_1} - \mathrm{Id}\|^2 / L`). Arguments as in
    :func:`kinetic_energy`.

    Returns:
        A :class:`Straightness`.

    Example:
        The McCann velocity is straight: :math:`S = 0` and the energy is the endpoint cost.

        >>> import jax.numpy as jnp, fmjax as fm
        >>> v = fm.mccann_velocity(2.0 * jnp.eye(2), jnp.ones(2))
        >>> out = fm.straightness(v, jnp.array([[0.0, 0.0], [1.0, 1.0]]), solver="euler",
        ...                       steps=4)
        >>> round(float(out.value), 6), round(float(out.energy), 4), int(out.nfe)
        (0.0, 5.0, 4)
    """
    x0, raw, (e, length) = _path_solve(_straightness_rhs, 2, velocity, x0, t0, t1, solver,
                                       steps, rtol, atol, max_steps, throw, adjoint,
                                       "straightness")
    x1 = raw.y[0]
    chord_sq = jnp.sum(((x1 - x0) ** 2).reshape(x0.shape[0], -1), axis=-1)
    span = jnp.abs(_checks.as_float_array(t1, "t1", dtype=x0.dtype)
                   - _checks.as_float_array(t0, "t0", dtype=x0.dtype))
    energy, endpoint = jnp.mean(e), jnp.mean(chord_sq)
    return Straightness(energy - endpoint / span, energy, endpoint,
                        jnp.mean(length - _safe_norm(chord_sq)), e, x1, raw.nfe,
                        raw.num_steps, raw.result)


def normalized_path_energy(energy: ScalarLike, w2_squared: ScalarLike) -> Scalar:
    r"""Normalized path energy :math:`\mathrm{NPE} = |E - W_2^2| / W_2^2` (Tong et al., 2024).

    Zero iff the flow's kinetic energy ``energy`` equals the squared Wasserstein distance
    ``w2_squared`` (pass :math:`W_2^2`, not :math:`W_2`), i.e. the flow solves dynamic OT.

    Example:
        >>> import fmjax as fm
        >>> print(round(float(fm.normalized_path_energy(1.1, 1.0)), 6))
        0.1
    """
    energy = _checks.as_float_array(energy, "energy", ndim=0)
    w2_squared = _checks.as_float_array(w2_squared, "w2_squared", ndim=0, dtype=energy.dtype)
    c = _checks.concrete(w2_squared)
    if c is not None:
        if float(c) <= 0.0:
            raise ValueError(f"`w2_squared` must be positive, got {float(c)!r}")
    else:
        w2_squared = _checks.error_if(w2_squared, w2_squared <= 0,
                                      "`w2_squared` must be positive")
    return jnp.abs(energy - w2_squared) / w2_squared
