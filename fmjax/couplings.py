r"""Minibatch couplings as values: ``coupling(key, x0, x1) -> (x0, x1)``.

A coupling turns two batches ``x0 ~ alpha`` and ``x1 ~ beta`` into training pairs
``(x0_i, x1_i)``. Each one here is a frozen, hashable Equinox module, pure and usable inside
``jax.jit`` and ``lax.scan``; :func:`fmjax.fit` and :func:`fmjax.make_train_step` take one
(the strings ``"independent"``, ``"ot"``, ``"sinkhorn"``, ``"paired"`` are shorthands for the
defaults):

- :class:`Independent`: the batches as given (:math:`\alpha \otimes \beta`).
- :class:`ExactOT`: exact minibatch optimal transport for the squared Euclidean cost,
  ``x1`` permuted by :math:`\sigma^* = \arg\min_\sigma \sum_i \|x_{0,i} - x_{1,\sigma(i)}\|^2`
  (Tong et al., TMLR 2024; Pooladian et al., ICML 2023). A permutation: no duplicate pairs.
- :class:`Sinkhorn`: entropic OT through ott-jax; each ``x0_i`` is kept and paired with an
  ``x1_j`` drawn from row ``i`` of the plan (with replacement in ``x1``).
- :class:`Paired`: keep the given pairs (a dataset of pairs, reflow). With arrays of data,
  ``fit`` draws the same indices from both.

Points may have any shape ``(n, *point_shape)``; costs are computed on flattened points.
With ``labels`` (conditional flow matching), ``ExactOT`` and ``Sinkhorn`` couple within each
class: point ``i`` of ``x0`` takes the label ``labels[i]`` and is paired only with points of
``x1`` carrying the same label, so ``labels`` stay the labels of the returned ``x1``.

Exact assignment solvers behind :class:`ExactOT` (``solver=``):

- ``"pot"``: POT's network simplex ``ot.emd`` on the host through ``jax.pure_callback``.
- ``"scipy"``: ``scipy.optimize.linear_sum_assignment`` on the host (the reference).
- ``"auction"``: Bertsekas' auction with epsilon scaling, in JAX (on the device; exact when
  ``n * eps_final`` is below the optimality gap; a batch on which it does not converge
  within ``max_iterations`` is re-solved on the host inside the same program).
- ``"hungarian"``: optax's on-device Hungarian algorithm (exact, slow on CPU).
- ``"auto"``: ``"auction"`` on GPU/TPU backends, else ``"pot"``. Inside :func:`fmjax.fit`
  ``"auto"`` solves on the host (POT) one chunk ahead on ``host_workers`` threads while the
  device trains, on every backend.

A user-defined coupling is any callable ``(key, x0, x1) -> (x0, x1)``; subclass
:class:`Coupling` and implement ``pair`` to get the argument checks and ``shard="local"``.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from ._checks import as_float_array, concrete

__all__ = ["Coupling", "Independent", "Paired", "ExactOT", "Sinkhorn", "exact_ot_permutation",
           "auction_assignment", "COUPLINGS", "OT_SOLVERS"]

#: The string shorthands accepted by ``fit`` and ``make_train_step``.
COUPLINGS = ("independent", "ot", "sinkhorn", "paired")
#: Exact assignment solvers of :class:`ExactOT`.
OT_SOLVERS = ("auto", "scipy", "pot", "auction", "hungarian")
_SHARDS = ("global", "local")


# ----------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------
def _check_pair(x0: Any, x1: Any, *, finite: bool = True) -> tuple[jax.Array, jax.Array]:
    x0 = _checks.check_points(x0, "x0", finite=finite)
    x1 = _checks.check_points(x1, "x1", finite=finite)
    _checks.check_same_shape(x0, "x0", x1, "x1")
    if x0.dtype != x1.dtype:
        raise ValueError(f"`x0` has dtype {x0.dtype} but `x1` has dtype {x1.dtype}; "
                         f"they must match")
    return x0, x1


def _check_labels(labels: Any, n: int) -> jax.Array | None:
    if labels is None:
        return None
    dtype = getattr(labels, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"`labels` must be an integer array of shape ({n},), got "
                         f"{_checks._describe(labels)}")
    if labels.shape != (n,):
        raise ValueError(f"`labels` must have shape ({n},), one per point, got shape "
                         f"{labels.shape}")
    return jnp.asarray(labels)


def _flat(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def _sq_dist_matrix(x: jax.Array, y: jax.Array) -> jax.Array:
    # Direct differences (no |x|^2 + |y|^2 - 2 x.y cancellation).
    return jax.vmap(lambda xi: jnp.sum((y - xi[None, :]) ** 2, axis=-1))(x)


# ----------------------------------------------------------------------------------------
# Host solvers (NumPy)
# ----------------------------------------------------------------------------------------
def _sq_cost_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    c = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(c, 0.0)


def _scipy_perm_host(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment

    _, cols = linear_sum_assignment(_sq_cost_np(a, b))
    return cols.astype(np.int32)


def _pot_perm_host(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import ot

    n = a.shape[0]
    w = np.ones(n)
    # Network simplex; a vertex of the Birkhoff polytope is a permutation matrix.
    plan = ot.emd(w, w, _sq_cost_np(a, b), numItermax=max(100_000, 50 * n * n))
    perm = plan.argmax(axis=1)
    if len(np.unique(perm)) != n or not np.allclose(plan[np.arange(n), perm], 1.0):
        return _scipy_perm_host(a, b)  # degenerate output or iteration cap: fall back
    return perm.astype(np.int32)


def _by_class(solve, a: np.ndarray, b: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """``solve`` on flattened points; with labels, one exact problem per class (the block
    structure of the label-constrained assignment)."""
    a = np.asarray(a).reshape(a.shape[0], -1)
    b = np.asarray(b).reshape(b.shape[0], -1)
    if labels is None:
        return solve(a, b)
    labels = np.asarray(labels)
    perm = np.empty(a.shape[0], np.int32)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        perm[idx] = idx[solve(a[idx], b[idx])]
    return perm


_HOST_SOLVERS = {"pot": _pot_perm_host, "scipy": _scipy_perm_host}


def _host_permutation(solve, x0: jax.Array, x1: jax.Array, labels=None) -> jax.Array:
    out = jax.ShapeDtypeStruct((x0.shape[0],), jnp.int32)
    if labels is None:
        return jax.pure_callback(lambda a, b: _by_class(solve, a, b, None), out, x0, x1,
                                 vmap_method="sequential")
    return jax.pure_callback(lambda a, b, y: _by_class(solve, a, b, y), out, x0, x1, labels,
                             vmap_method="sequential")


def _host_solver(solver: str) -> Any:
    """The NumPy function ``(x0, x1) -> perm`` behind a solver name for :func:`fmjax.fit`'s
    pipeline (``"auto"``: POT on every backend), or ``None`` for an on-device solver."""
    if solver == "auto":
        return _pot_perm_host
    return _HOST_SOLVERS.get(solver)


def _auto_solver() -> str:
    """``"auction"`` on an accelerator backend (no host round trip), else POT."""
    return "auction" if jax.default_backend() != "cpu" else "pot"


# ----------------------------------------------------------------------------------------
# The auction algorithm (on the device)
# ----------------------------------------------------------------------------------------
def _check_auction_options(A, scaling, block, max_iterations, eps_final):
    if A.shape[0] != A.shape[1] or A.shape[0] == 0:
        raise ValueError(f"`benefit` must be a non-empty square matrix, got shape {A.shape}")
    if not scaling > 1:
        raise ValueError(f"`scaling` must be > 1, got {scaling!r}")
    _checks.positive_int(max_iterations, "max_iterations")
    _checks.positive_int(block, "block", allow_none=True)
    if eps_final is not None:
        c = concrete(eps_final)
        if c is not None and not (np.ndim(c) == 0 and np.isfinite(c) and c >= 0):
            raise ValueError(f"`eps_final` must be a finite number >= 0, got {eps_final!r}")


def _auction_eps(A, eps_final, scaling):
    """(eps0, eps_final, number of phases) of the epsilon-scaling schedule."""
    n, dt = A.shape[0], A.dtype
    finfo = jnp.finfo(dt)
    amax, amin = jnp.max(A), jnp.min(A)
    span = jnp.maximum(amax - amin, jnp.asarray(finfo.tiny, dt))
    # eps must stay > 0 and above the float resolution of the prices (bounded by a few
    # ranges of A, prices are re-centred each phase), or a price war can cycle forever.
    floor = jnp.maximum(64 * finfo.eps * jnp.maximum(jnp.abs(amax), jnp.abs(amin)),
                        jnp.asarray(finfo.tiny, dt) * 2.0 ** 20)
    if eps_final is None:
        rel = 1e-2 if finfo.bits <= 32 else 1e-3
        eps_final = span * jnp.asarray(rel / n, dt)
    eps_final = jnp.maximum(jnp.asarray(eps_final, dt), floor)
    eps0 = jnp.maximum(span / jnp.asarray(scaling, dt), eps_final)
    sc = jnp.asarray(scaling, dt)
    n_phases = (jnp.ceil(jnp.log(eps0 / eps_final) / jnp.log(sc))).astype(jnp.int32) + 1
    return eps0, eps_final, sc, n_phases


def _bid_round(A, B, state):
    """One Gauss-Seidel bidding round of up to ``B`` unassigned rows."""
    prices, obj_of, person_of, eps, it = state
    n, dt = A.shape[0], A.dtype
    neg_inf = jnp.asarray(-jnp.inf, dt)
    ar_b, ar_n = jnp.arange(B, dtype=jnp.int32), jnp.arange(n, dtype=jnp.int32)
    idx = jnp.nonzero(obj_of < 0, size=B, fill_value=n)[0].astype(jnp.int32)
    valid = idx < n
    rows = A[jnp.minimum(idx, n - 1)] - prices[None, :]
    # best and second-best value per row (lax.top_k is several times slower on CPU)
    j = jnp.argmax(rows, axis=1).astype(jnp.int32)
    v1 = jnp.take_along_axis(rows, j[:, None], axis=1)[:, 0]
    v2 = jnp.max(jnp.where(ar_n[None, :] == j[:, None], neg_inf, rows), axis=1) if n > 1 else v1
    bid = jnp.where(valid, prices[j] + (v1 - v2) + eps, neg_inf)
    best = jnp.full((n,), neg_inf, dt).at[j].max(bid)
    cand = jnp.where(valid & (bid >= best[j]), ar_b, B)
    first = jnp.full((n,), B, jnp.int32).at[j].min(cand)
    won = valid & (first[j] == ar_b)
    j_won = jnp.where(won, j, n)
    old = jnp.where(won, person_of[jnp.minimum(j, n - 1)], -1)
    obj_of = obj_of.at[jnp.where(old >= 0, old, n)].set(-1, mode="drop")
    obj_of = obj_of.at[jnp.where(won, idx, n)].set(j, mode="drop")
    person_of = person_of.at[j_won].set(idx, mode="drop")
    prices = prices.at[j_won].set(bid, mode="drop")
    return prices, obj_of, person_of, eps, it + 1


def _auction_phase(A, B, schedule, max_iterations, k, carry):
    """One epsilon phase: keep the pairs still eps-complementary-slack, re-bid the rest."""
    eps0, eps_final, sc = schedule
    prices, obj_of, person_of, it = carry
    n = A.shape[0]
    eps = jnp.maximum(eps0 / sc ** k.astype(A.dtype), eps_final)
    prices = prices - jnp.min(prices)  # a common shift changes nothing; keeps them small
    vals = A - prices[None, :]
    ok = (obj_of >= 0) & (
        jnp.take_along_axis(vals, jnp.maximum(obj_of, 0)[:, None], axis=1)[:, 0]
        >= jnp.max(vals, axis=1) - eps)
    obj_of = jnp.where(ok, obj_of, -1)
    person_of = jnp.full((n,), -1, jnp.int32).at[jnp.where(ok, obj_of, n)].set(
        jnp.arange(n, dtype=jnp.int32), mode="drop")
    prices, obj_of, person_of, _, it = jax.lax.while_loop(
        lambda s: jnp.any(s[1] < 0) & (s[4] < max_iterations),
        lambda s: _bid_round(A, B, s), (prices, obj_of, person_of, eps, it))
    return prices, obj_of, person_of, it


def auction_assignment(benefit: jax.Array, *, eps_final: float | jax.Array | None = None,
                       scaling: float = 5.0, block: int | None = None,
                       max_iterations: int = 100_000) -> tuple[jax.Array, jax.Array]:
    """Maximum-benefit assignment by the auction algorithm with epsilon scaling.

    Solves ``max_sigma sum_i A[i, sigma(i)]`` over permutations (Bertsekas 1988; the
    Gauss-Seidel variant processes up to ``block`` unassigned rows per iteration). Each
    phase runs with a fixed ``eps``, keeps the prices of the previous one and the pairs that
    still satisfy eps-complementary slackness; ``eps`` starts at ``range(A) / scaling`` and
    is divided by ``scaling`` until it reaches ``eps_final``. The result's total benefit is
    within ``n * eps_final`` of the optimum (exact whenever that is below the optimality
    gap; Bertsekas, "Linear Network Optimization", 1991, Prop. 4.1).

    Args:
        benefit: ``(n, n)`` benefit matrix ``A`` (e.g. ``-cost``).
        eps_final: final ``eps``; default ``range(A) * 1e-3 / n`` for float64 and
            ``range(A) * 1e-2 / n`` for float32 (bounded below by 64 ulps of ``max |A|``).
        scaling: factor by which ``eps`` decreases between phases, ``> 1``.
        block: rows bidding per iteration (default ``min(n, 64)``).
        max_iterations: cap on the total number of bidding iterations (so the call always
            terminates, also under ``jit``/``scan``). If it is reached the remaining rows are
            matched to the free columns in order (still a permutation, not optimal) and
            ``converged`` is ``False``; :class:`ExactOT` then re-solves the batch on the host.

    Returns:
        ``(perm, converged)``: ``perm`` int32 ``(n,)`` with row ``i`` assigned to column
        ``perm[i]``, and a boolean scalar.

    >>> import jax.numpy as jnp, fmjax as fm
    >>> A = jnp.array([[4.0, 1.0], [3.0, 2.0]])
    >>> fm.auction_assignment(A)[0].tolist()
    [0, 1]
    """
    A = as_float_array(benefit, "benefit", ndim=2)
    _check_auction_options(A, scaling, block, max_iterations, eps_final)
    n = A.shape[0]
    B = min(n, 64 if block is None else int(block))
    eps0, eps_final, sc, n_phases = _auction_eps(A, eps_final, scaling)
    init = (jnp.zeros((n,), A.dtype), jnp.full((n,), -1, jnp.int32),
            jnp.full((n,), -1, jnp.int32), jnp.asarray(0, jnp.int32))
    _, obj_of, person_of, _ = jax.lax.fori_loop(
        0, n_phases, lambda k, c: _auction_phase(A, B, (eps0, eps_final, sc), max_iterations,
                                                 k, c), init)
    converged = jnp.all(obj_of >= 0)
    # Fallback (only if max_iterations was hit): match free rows to free columns in order.
    free_rows = jnp.argsort(obj_of >= 0, stable=True)
    free_cols = jnp.argsort(person_of >= 0, stable=True)
    first = jnp.arange(n) < jnp.sum(obj_of < 0)
    fill = jnp.where(first, free_cols, -1).astype(jnp.int32)
    filled = obj_of.at[jnp.where(first, free_rows, n)].set(fill, mode="drop")
    return filled, converged


# ----------------------------------------------------------------------------------------
# Exact OT permutation
# ----------------------------------------------------------------------------------------
def _label_penalty(cost: jax.Array, labels: jax.Array | None) -> jax.Array:
    """Add to the cost of cross-class pairs more than any within-class assignment costs,
    so an optimal assignment never crosses classes (the class blocks are square)."""
    if labels is None:
        return cost
    big = jnp.sum(jnp.max(cost, axis=1)) + 1.0
    return jnp.where(labels[:, None] == labels[None, :], cost, cost + big)


def _auction_permutation(x0, x1, labels, **kw) -> jax.Array:
    if labels is None:  # max sum <x0_i, x1_s(i)> has the argmin of sum |x0_i - x1_s(i)|^2
        benefit = x0 @ x1.T
    else:
        benefit = -_label_penalty(_sq_dist_matrix(x0, x1), labels)
    perm, converged = auction_assignment(benefit, **kw)
    # Bounded: if the auction hit `max_iterations`, solve this batch exactly on the host
    # instead (under `vmap` the cond becomes a select and the host solve always runs).
    return jax.lax.cond(converged, lambda: perm,
                        lambda: _host_permutation(_pot_perm_host, x0, x1, labels))


def _hungarian_permutation(x0, x1, labels) -> jax.Array:
    from optax import assignment

    # optax creates float64 duals when x64 is on: solve in the widest float dtype.
    wide = jnp.zeros((), float).dtype
    cost = _label_penalty(_sq_dist_matrix(x0.astype(wide), x1.astype(wide)), labels)
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        rows, cols = assignment.hungarian_algorithm(cost)
    return jnp.zeros(x0.shape[0], jnp.int32).at[rows].set(cols.astype(jnp.int32))


def exact_ot_permutation(x0: Any, x1: Any, *, solver: str = "auto", labels: Any = None,
                         **solver_kw) -> jax.Array:
    """Optimal assignment for the squared Euclidean cost: ``x1[perm]`` is matched to ``x0``.

    ``perm = argmin_sigma sum_i ||x0_i - x1_sigma(i)||^2`` over permutations of ``n``
    points: the exact OT plan between the two empirical measures ``(1/n) sum delta_{x0_i}``
    and ``(1/n) sum delta_{x1_j}`` (Birkhoff: some optimal plan is a permutation).

    Args:
        x0: ``(n, *point_shape)`` source batch (flattened for the cost).
        x1: target batch, same shape and dtype.
        solver: one of :data:`OT_SOLVERS` (see the module docstring); ``"auction"``
            receives ``solver_kw`` (see :func:`auction_assignment`).
        labels: optional ``(n,)`` integer labels: ``perm`` then maps each point to a point
            with the same label (``labels[perm] == labels``), optimal among such maps.

    Returns:
        ``perm``, int32 ``(n,)``.

    >>> import jax.numpy as jnp, fmjax as fm
    >>> x0 = jnp.array([[0.0, 0.0], [1.0, 0.0]])
    >>> x1 = jnp.array([[1.1, 0.0], [0.1, 0.0]])
    >>> fm.exact_ot_permutation(x0, x1).tolist()
    [1, 0]
    """
    x0, x1 = _check_pair(x0, x1)
    labels = _check_labels(labels, x0.shape[0])
    if solver not in OT_SOLVERS:
        raise ValueError(f"`solver` must be one of {OT_SOLVERS}, got {solver!r}")
    if solver == "auto":
        solver = _auto_solver()
    if solver != "auction" and solver_kw:
        raise ValueError(f"solver {solver!r} takes no options, got {sorted(solver_kw)}")
    a, b = _flat(x0), _flat(x1)
    if solver in _HOST_SOLVERS:
        return _host_permutation(_HOST_SOLVERS[solver], a, b, labels)
    if solver == "auction":
        return _auction_permutation(a, b, labels, **solver_kw)
    return _hungarian_permutation(a, b, labels)


# ----------------------------------------------------------------------------------------
# Coupling values
# ----------------------------------------------------------------------------------------
class Coupling(eqx.Module):
    """Base class of the couplings: ``coupling(key, x0, x1, labels=None) -> (x0, x1)``.

    Subclasses implement ``pair(key, x0, x1, labels)`` on checked inputs. A coupling whose
    ``shard`` field is ``"local"`` is solved per device shard under a mesh with a ``"data"``
    axis of several devices (``jax.shard_map``; :func:`fmjax.fit` traces under its mesh),
    and over the whole batch otherwise. ``keeps_pairs`` tells a driver that the pairs of
    the data must be kept (``fit`` then draws the same indices from two datasets).

    Example:
        A user-defined coupling: pair each point with the nearest-in-norm target.

        >>> import jax, jax.numpy as jnp, fmjax as fm
        >>> class SortByNorm(fm.couplings.Coupling):
        ...     def pair(self, key, x0, x1, labels):
        ...         r0 = jnp.argsort(jnp.linalg.norm(x0, axis=1))
        ...         r1 = jnp.argsort(jnp.linalg.norm(x1, axis=1))
        ...         return x0[r0], x1[r1]
        >>> a, b = SortByNorm()(jax.random.key(0), jnp.ones((3, 2)), jnp.zeros((3, 2)))
        >>> a.shape, b.shape
        ((3, 2), (3, 2))
    """

    keeps_pairs: ClassVar[bool] = False
    check_finite: ClassVar[bool] = False

    @abc.abstractmethod
    def pair(self, key, x0, x1, labels):
        """The coupled ``(x0, x1)`` of one batch (or of one class, given ``labels``)."""

    def __call__(self, key, x0, x1, labels=None):
        key = _checks.check_key(key)
        x0, x1 = _check_pair(x0, x1, finite=self.check_finite)
        labels = _check_labels(labels, x0.shape[0])
        mesh = jax.sharding.get_abstract_mesh()
        if (getattr(self, "shard", "global") == "global" or mesh.empty
                or mesh.shape.get("data", 1) == 1):
            return self.pair(key, x0, x1, labels)
        return _per_shard(self, key, x0, x1, labels)


def _per_shard(coupling, key, x0, x1, labels):
    from jax.sharding import PartitionSpec as P

    def local(k, a, b, y):
        return coupling.pair(jax.random.fold_in(k, jax.lax.axis_index("data")), a, b, y)

    spec = P("data")
    # check_vma=False: the couplings' run-time checks (equinox.error_if) and host
    # callbacks are not annotated for varying-manual-axes types.
    return jax.shard_map(local, in_specs=(P(), spec, spec, None if labels is None else spec),
                         out_specs=(spec, spec), check_vma=False)(key, x0, x1, labels)


class Independent(Coupling):
    """The batches as given: the independent coupling :math:`\\alpha \\otimes \\beta`.

    >>> import jax, jax.numpy as jnp, fmjax as fm
    >>> x0, x1 = jnp.zeros((2, 1)), jnp.ones((2, 1))
    >>> fm.couplings.Independent()(jax.random.key(0), x0, x1)[1].tolist()
    [[1.0], [1.0]]
    """

    def pair(self, key, x0, x1, labels):
        return x0, x1


class Paired(Coupling):
    """Keep the given pairs ``(x0_i, x1_i)``: a dataset of pairs, or reflow's
    ``(x0, phi_1(x0))``. :func:`fmjax.fit` draws the same rows from the two arrays.

    >>> import jax, jax.numpy as jnp, fmjax as fm
    >>> x0, x1 = jnp.zeros((2, 1)), jnp.arange(2.0)[:, None]
    >>> fm.couplings.Paired()(jax.random.key(0), x0, x1)[1].tolist()
    [[0.0], [1.0]]
    """

    keeps_pairs: ClassVar[bool] = True

    def pair(self, key, x0, x1, labels):
        return x0, x1


def _check_shard(shard):
    if shard not in _SHARDS:
        raise ValueError(f"`shard` must be one of {_SHARDS}, got {shard!r}")


class ExactOT(Coupling):
    """Exact minibatch OT: ``x1`` permuted by the optimal assignment (see the module).

    Args:
        solver: one of :data:`OT_SOLVERS`.
        host_workers: for :func:`fmjax.fit` with a host solver (``"auto"``, ``"pot"``,
            ``"scipy"``): host threads that solve the assignments of the next chunk while
            the device trains (default: one per CPU core, at most 8); ``0`` solves inside the
            step through a blocking callback. The pairs are the same either way.
        shard: ``"global"`` (the exact OT of the whole batch, also on several devices) or
            ``"local"`` (each device's shard coupled on its own: cheaper, but minibatch OT
            at the per-device batch size).
        **solver_options: options of the ``"auction"`` solver (``eps_final``, ``scaling``,
            ``block``, ``max_iterations``).

    >>> import jax, jax.numpy as jnp, fmjax as fm
    >>> x0 = jnp.array([[0.0], [1.0]]); x1 = jnp.array([[1.5], [0.5]])
    >>> fm.couplings.ExactOT()(jax.random.key(0), x0, x1)[1].tolist()
    [[0.5], [1.5]]
    """

    solver: str = eqx.field(static=True)
    host_workers: int | None = eqx.field(static=True)
    shard: str = eqx.field(static=True)
    solver_options: tuple = eqx.field(static=True)
    check_finite: ClassVar[bool] = True

    def __init__(self, solver: str = "auto", *, host_workers: int | None = None,
                 shard: str = "global", **solver_options):
        if solver not in OT_SOLVERS:
            raise ValueError(f"`solver` must be one of {OT_SOLVERS}, got {solver!r}")
        if solver_options and solver != "auction":
            raise ValueError(f"solver {solver!r} takes no options, got "
                             f"{sorted(solver_options)}")
        _check_shard(shard)
        self.solver = solver
        self.host_workers = _checks.positive_int(host_workers, "host_workers", minimum=0,
                                                 allow_none=True)
        self.shard = shard
        self.solver_options = tuple(sorted(solver_options.items()))

    def pair(self, key, x0, x1, labels):
        perm = exact_ot_permutation(x0, x1, solver=self.solver, labels=labels,
                                    **dict(self.solver_options))
        return x0, x1[perm]


class Sinkhorn(Coupling):
    """Entropic OT (ott-jax): ``x0`` kept, each partner drawn from its row of the plan.

    A plan that did not converge is not a coupling of the batch: it raises (through
    ``equinox.error_if``) instead of pairing the batch.

    Args:
        epsilon: entropic regularisation; with ``relative_epsilon="mean"`` (default) a
            fraction of the mean pairwise cost (ott-jax's convention), with
            ``relative_epsilon=None`` absolute.
        relative_epsilon: ``"mean"``, ``"std"`` or ``None``.
        threshold, max_iterations: ott-jax's Sinkhorn stopping rule.
        shard: ``"global"`` or ``"local"``, as for :class:`ExactOT`.

    >>> import jax, jax.numpy as jnp, fmjax as fm
    >>> x0 = jnp.array([[0.0], [1.0]]); x1 = jnp.array([[1.0], [0.0]])
    >>> fm.couplings.Sinkhorn(epsilon=1e-3)(jax.random.key(0), x0, x1)[1].tolist()
    [[0.0], [1.0]]
    """

    epsilon: float = eqx.field(static=True)
    relative_epsilon: str | None = eqx.field(static=True)
    threshold: float = eqx.field(static=True)
    max_iterations: int = eqx.field(static=True)
    shard: str = eqx.field(static=True)
    check_finite: ClassVar[bool] = True

    def __init__(self, epsilon: float = 0.05, *, relative_epsilon: str | None = "mean",
                 threshold: float = 1e-3, max_iterations: int = 2000, shard: str = "global"):
        for name, v in (("epsilon", epsilon), ("threshold", threshold)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not (
                    np.isfinite(v) and v > 0):
                raise ValueError(f"`{name}` must be a finite number > 0, got {v!r}")
        if relative_epsilon not in ("mean", "std", None):
            raise ValueError(f"`relative_epsilon` must be 'mean', 'std' or None, got "
                             f"{relative_epsilon!r}")
        _check_shard(shard)
        self.epsilon, self.relative_epsilon = float(epsilon), relative_epsilon
        self.threshold = float(threshold)
        self.max_iterations = _checks.positive_int(max_iterations, "max_iterations")
        self.shard = shard

    def pair(self, key, x0, x1, labels):
        return x0, _sinkhorn_partners(self, key, _flat(x0), _flat(x1), labels, x1)


def _sinkhorn_partners(cfg: Sinkhorn, key, a, b, labels, x1):
    from ott.geometry import geometry, pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    # ott-jax 0.6.0 mixes float64 constants with float32 inputs when x64 is enabled (its
    # Sinkhorn then fails on a lax.cond dtype mismatch): solve in the widest float dtype
    # available, under standard promotion, and only return indices.
    wide = jnp.zeros((), float).dtype
    a, b = a.astype(wide), b.astype(wide)
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        if labels is None:
            geom = pointcloud.PointCloud(a, b, epsilon=cfg.epsilon,
                                         relative_epsilon=cfg.relative_epsilon)
        else:  # relative epsilon from the plain costs; cross-class pairs penalised
            cost = _sq_dist_matrix(a, b)
            eps = cfg.epsilon
            if cfg.relative_epsilon == "mean":
                eps = eps * jnp.mean(cost)
            elif cfg.relative_epsilon == "std":
                eps = eps * jnp.std(cost)
            geom = geometry.Geometry(cost_matrix=_label_penalty(cost, labels), epsilon=eps)
        out = sinkhorn.Sinkhorn(threshold=cfg.threshold, max_iterations=cfg.max_iterations)(
            linear_problem.LinearProblem(geom))
    plan = out.matrix
    logits = jnp.log(jnp.maximum(plan, jnp.asarray(jnp.finfo(wide).tiny, wide)))
    if labels is not None:
        logits = jnp.where(labels[:, None] == labels[None, :], logits, -jnp.inf)
    j = jax.random.categorical(key, logits, axis=1)
    return eqx.error_if(
        x1[j], ~(out.converged & jnp.all(jnp.isfinite(plan))),
        "Sinkhorn coupling did not converge: raise `epsilon` or `max_iterations`, or use "
        "ExactOT()")


_SHORTHANDS = {"independent": Independent, "ot": ExactOT, "sinkhorn": Sinkhorn,
               "paired": Paired}


def _resolve(coupling: Any, name: str = "coupling") -> Any:
    """A coupling value from a value, a callable or one of the :data:`COUPLINGS` strings."""
    if coupling is None:
        return Independent()
    if isinstance(coupling, str):
        if coupling not in _SHORTHANDS:
            raise ValueError(f"`{name}` must be a coupling (e.g. fm.couplings.ExactOT()), a "
                             f"callable (key, x0, x1) -> (x0, x1) or one of {COUPLINGS}, got "
                             f"{coupling!r}")
        return _SHORTHANDS[coupling]()
    if not callable(coupling):
        raise ValueError(f"`{name}` must be a callable (key, x0, x1) -> (x0, x1), got "
                         f"{type(coupling).__name__}")
    return coupling
