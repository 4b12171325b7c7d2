"""Minibatch couplings of two batches ``x0 ~ alpha`` and ``x1 ~ beta`` for flow matching.

:func:`couple` turns two independent batches into training pairs ``(x0_i, x1_i)``:

- ``"independent"``: the batches as given (alpha ⊗ beta).
- ``"ot"``: exact minibatch optimal transport for the squared Euclidean cost
  ``c(x, y) = ||x - y||^2``: ``x1`` is permuted by the optimal assignment
  ``sigma* = argmin_sigma sum_i ||x0_i - x1_sigma(i)||^2`` (Tong et al., TMLR 2024; Pooladian et
  al., ICML 2023). A permutation, so there are no duplicate pairs (torchcfm samples pairs
  from the plan with replacement instead).
- ``"sinkhorn"``: entropic OT through ott-jax; each ``x0_i`` is kept and paired with an
  ``x1_j`` drawn from the row ``i`` of the plan, ``j ~ P_ij / sum_j P_ij`` (with replacement
  in ``x1``).

Exact assignment solvers behind ``"ot"`` (``solver=``):

- ``"scipy"``: ``scipy.optimize.linear_sum_assignment`` on the host via ``jax.pure_callback``
  (float64 cost; exact). The reference.
- ``"pot"``: POT's network simplex ``ot.emd`` on the host via ``jax.pure_callback`` (exact;
  optional dependency ``pot``). Measured 2.5-5x faster than SciPy on 2-D batches of
  256-1024 points (``benchmarks/couplings.py``).
- ``"auction"``: Bertsekas' auction algorithm with epsilon scaling, written in JAX (runs on
  the device, jit-able, no host round trip; 10-20x slower than SciPy on the CPU, meant for
  accelerators, where it has not been measured yet). Its assignment is optimal up to ``n * eps_final``
  in total cost and exactly optimal when that is below the gap between the best and the
  second-best assignment (Bertsekas, "Linear Network Optimization", 1991, Prop. 4.1).
  Bounded: at most ``max_iterations`` bidding rounds; a batch on which it does not
  converge is re-solved exactly on the host (POT, else SciPy) inside the same program.
- ``"hungarian"``: optax's on-device Hungarian algorithm (exact, slow on CPU).

``solver="auto"`` (default) picks ``"auction"`` on GPU/TPU backends, else ``"pot"`` when
POT is installed, else ``"scipy"`` (numbers in ``benchmarks/couplings.py``). The host solvers
work inside ``jit``, ``vmap`` (sequentially) and ``lax.scan``; each call blocks the
computation for the host solve (about 5 ms at n = 256 with POT on an idle 2-core CPU).
:func:`fmjax.fit` does not block: it solves the assignments of the next chunk on host
threads while the device trains (``host_workers``).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import as_float_array, check_batch, check_same_shape, concrete
from .ot import _sq_dist_matrix

__all__ = ["couple", "exact_ot_permutation", "auction_assignment", "COUPLINGS", "OT_SOLVERS"]

COUPLINGS = ("independent", "ot", "sinkhorn")
OT_SOLVERS = ("auto", "scipy", "pot", "auction", "hungarian")


def _check_pair(x0: Any, x1: Any) -> tuple[jax.Array, jax.Array]:
    x0 = check_batch(x0, "x0")
    x1 = check_batch(x1, "x1")
    check_same_shape(x0, "x0", x1, "x1")
    if x0.dtype != x1.dtype:
        raise ValueError(f"`x0` has dtype {x0.dtype} but `x1` has dtype {x1.dtype}; "
                         f"they must match")
    return x0, x1


def _sq_cost_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    c = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(c, 0.0)


def _scipy_perm_host(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment

    a = np.asarray(a)
    b = np.asarray(b)
    _, cols = linear_sum_assignment(_sq_cost_np(a, b))
    return cols.astype(np.int32)


def _pot_perm_host(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import ot  # POT, optional

    a = np.asarray(a)
    b = np.asarray(b)
    n = a.shape[0]
    w = np.ones(n)
    # Network simplex; a vertex of the Birkhoff polytope is a permutation matrix.
    plan = ot.emd(w, w, _sq_cost_np(a, b), numItermax=max(100_000, 50 * n * n))
    perm = plan.argmax(axis=1)
    if len(np.unique(perm)) != n or not np.allclose(plan[np.arange(n), perm], 1.0):
        return _scipy_perm_host(a, b)  # degenerate output or iteration cap: fall back
    return perm.astype(np.int32)


def _host_permutation(fn, x0: jax.Array, x1: jax.Array) -> jax.Array:
    n = x0.shape[0]
    out = jax.ShapeDtypeStruct((n,), jnp.int32)
    return jax.pure_callback(fn, out, x0, x1, vmap_method="sequential")


def _scipy_permutation(x0: jax.Array, x1: jax.Array) -> jax.Array:
    return _host_permutation(_scipy_perm_host, x0, x1)


def _pot_permutation(x0: jax.Array, x1: jax.Array) -> jax.Array:
    try:
        import ot  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ValueError("solver='pot' needs the POT package (`pip install pot`)") from e
    return _host_permutation(_pot_perm_host, x0, x1)


def _hungarian_permutation(x0: jax.Array, x1: jax.Array) -> jax.Array:
    from optax import assignment

    # optax creates float64 duals when x64 is on: solve in the widest float dtype.
    wide = jnp.zeros((), float).dtype
    cost = _sq_dist_matrix(x0.astype(wide), x1.astype(wide))
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        rows, cols = assignment.hungarian_algorithm(cost)
    return jnp.zeros(x0.shape[0], jnp.int32).at[rows].set(cols.astype(jnp.int32))


def _host_solver(solver: str) -> Any:
    """The NumPy function ``(x0, x1) -> perm`` behind a host solver name, or ``None`` for a
    solver that runs inside the compiled program (``"auction"``, ``"hungarian"``).

    :func:`fmjax.fit` uses it to solve the assignments of coming steps on host threads
    while the device trains (the results are the same as through :func:`couple`). There
    ``"auto"`` means a host solver on every backend (POT, else SciPy): pipelined, the host
    solve overlaps the device step instead of blocking it.
    """
    if solver == "auto":
        solver = "pot" if _have_pot() else "scipy"
    if solver == "pot":
        if not _have_pot():  # pragma: no cover - depends on the environment
            raise ValueError("solver='pot' needs the POT package (`pip install pot`)")
        return _pot_perm_host
    if solver == "scipy":
        return _scipy_perm_host
    if solver in OT_SOLVERS:
        return None
    raise ValueError(f"`solver` must be one of {OT_SOLVERS}, got {solver!r}")


def _have_pot() -> bool:
    try:
        import ot  # noqa: F401
    except ImportError:
        return False
    return True


def _auto_solver() -> str:
    """``"auction"`` on an accelerator backend (no host round trip), else POT's network
    simplex when POT is installed (fastest exact solver measured on CPU), else SciPy."""
    if jax.default_backend() != "cpu":
        return "auction"
    return "pot" if _have_pot() else "scipy"


def auction_assignment(benefit: jax.Array, *, eps_final: float | jax.Array | None = None,
                       scaling: float = 5.0, block: int | None = None,
                       max_iterations: int = 100_000) -> tuple[jax.Array, jax.Array]:
    """Maximum-benefit assignment by the auction algorithm with epsilon scaling.

    Solves ``max_sigma sum_i A[i, sigma(i)]`` over permutations (Bertsekas 1988; the
    Gauss-Seidel variant processes up to ``block`` unassigned rows per iteration, the Jacobi
    variant all of them). Each phase runs with a fixed ``eps``, keeps the prices of the
    previous one and the pairs that still satisfy eps-complementary slackness; ``eps`` starts at ``range(A) / scaling`` and is divided by ``scaling``
    until it reaches ``eps_final``. The result's total benefit is within ``n * eps_final``
    of the optimum (so exact whenever that is below the optimality gap).

    Args:
        benefit: ``(n, n)`` benefit matrix ``A`` (e.g. ``-cost``).
        eps_final: final ``eps``; default ``range(A) * 1e-3 / n`` for float64 and
            ``range(A) * 1e-2 / n`` for float32 (bounded below by 64 ulps of ``max |A|``).
        scaling: factor by which ``eps`` decreases between phases, ``> 1``.
        block: rows bidding per iteration (default ``min(n, 64)``).
        max_iterations: cap on the total number of bidding iterations (so the call always
            terminates, also under ``jit``/``scan``). If it is reached the remaining rows are
            matched to the free columns in order (still a permutation, not optimal) and
            ``converged`` is ``False``; :func:`exact_ot_permutation` then re-solves the batch
            on the host.

    Returns:
        ``(perm, converged)``: ``perm`` int32 ``(n,)`` with row ``i`` assigned to column
        ``perm[i]``, and a boolean scalar.

    >>> import jax.numpy as jnp, fmjax as fm
    >>> A = jnp.array([[4.0, 1.0], [3.0, 2.0]])
    >>> fm.auction_assignment(A)[0].tolist()
    [0, 1]
    """
    A = as_float_array(benefit, "benefit", ndim=2)
    if A.shape[0] != A.shape[1] or A.shape[0] == 0:
        raise ValueError(f"`benefit` must be a non-empty square matrix, got shape {A.shape}")
    if not scaling > 1:
        raise ValueError(f"`scaling` must be > 1, got {scaling!r}")
    if (isinstance(max_iterations, bool) or not isinstance(max_iterations, (int, np.integer))
            or max_iterations < 1):
        raise ValueError(f"`max_iterations` must be a positive integer, got {max_iterations!r}")
    if block is not None and (not isinstance(block, (int, np.integer)) or block < 1):
        raise ValueError(f"`block` must be a positive integer, got {block!r}")
    if eps_final is not None:
        c = concrete(eps_final)
        if c is not None and not (np.ndim(c) == 0 and np.isfinite(c) and c >= 0):
            raise ValueError(f"`eps_final` must be a finite number >= 0, got {eps_final!r}")
    n = A.shape[0]
    B = min(n, 64 if block is None else int(block))
    dt = A.dtype
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
    # number of phases: eps0 / scaling**k >= eps_final
    n_phases = (jnp.ceil(jnp.log(eps0 / eps_final) / jnp.log(sc))).astype(jnp.int32) + 1
    neg_inf = jnp.asarray(-jnp.inf, dt)
    ar_b = jnp.arange(B, dtype=jnp.int32)
    ar_n = jnp.arange(n, dtype=jnp.int32)

    def bid_round(state):
        prices, obj_of, person_of, eps, it = state
        free = obj_of < 0
        idx = jnp.nonzero(free, size=B, fill_value=n)[0].astype(jnp.int32)
        valid = idx < n
        rows = A[jnp.minimum(idx, n - 1)] - prices[None, :]
        # best and second-best value per row (lax.top_k is several times slower on CPU)
        j = jnp.argmax(rows, axis=1).astype(jnp.int32)
        v1 = jnp.take_along_axis(rows, j[:, None], axis=1)[:, 0]
        if n > 1:
            v2 = jnp.max(jnp.where(ar_n[None, :] == j[:, None], neg_inf, rows), axis=1)
        else:
            v2 = v1
        bid = prices[j] + (v1 - v2) + eps
        bid = jnp.where(valid, bid, neg_inf)
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

    def phase(k, carry):
        prices, obj_of, person_of, it = carry
        eps = jnp.maximum(eps0 / sc ** k.astype(dt), eps_final)
        prices = prices - jnp.min(prices)  # a common shift changes nothing; keeps them small
        # Keep the pairs that still satisfy eps-complementary slackness for the new eps
        # (A_ij - p_j >= max_k (A_ik - p_k) - eps); only the others bid again.
        vals = A - prices[None, :]
        ok = (obj_of >= 0) & (
            jnp.take_along_axis(vals, jnp.maximum(obj_of, 0)[:, None], axis=1)[:, 0]
            >= jnp.max(vals, axis=1) - eps)
        obj_of = jnp.where(ok, obj_of, -1)
        person_of = jnp.full((n,), -1, jnp.int32).at[jnp.where(ok, obj_of, n)].set(
            ar_n, mode="drop")

        def cond(s):
            return jnp.any(s[1] < 0) & (s[4] < max_iterations)

        prices, obj_of, person_of, _, it = jax.lax.while_loop(
            cond, bid_round, (prices, obj_of, person_of, eps, it))
        return prices, obj_of, person_of, it

    init = (jnp.zeros((n,), dt), jnp.full((n,), -1, jnp.int32), jnp.full((n,), -1, jnp.int32),
            jnp.asarray(0, jnp.int32))
    _, obj_of, person_of, _ = jax.lax.fori_loop(0, n_phases, phase, init)
    converged = jnp.all(obj_of >= 0)
    # Fallback (only if max_iterations was hit): match free rows to free columns in order.
    free_rows = jnp.argsort(obj_of >= 0, stable=True)
    free_cols = jnp.argsort(person_of >= 0, stable=True)
    n_free = jnp.sum(obj_of < 0)
    fill = jnp.where(jnp.arange(n) < n_free, free_cols, -1).astype(jnp.int32)
    filled = obj_of.at[jnp.where(jnp.arange(n) < n_free, free_rows, n)].set(fill, mode="drop")
    return filled, converged


def _host_fallback_fn():
    try:
        import ot  # noqa: F401
    except ImportError:
        return _scipy_perm_host
    return _pot_perm_host


def _auction_permutation(x0: jax.Array, x1: jax.Array, **kw) -> jax.Array:
    # max sum <x0_i, x1_sigma(i)> has the same optimal sigma as min sum ||x0_i - x1_sigma(i)||^2.
    perm, converged = auction_assignment(x0 @ x1.T, **kw)
    # Bounded: if the auction hit `max_iterations`, solve this batch exactly on the host
    # instead (under `vmap` the cond becomes a select and the host solve always runs).
    fallback = _host_fallback_fn()
    return jax.lax.cond(converged, lambda a, b: perm,
                        lambda a, b: _host_permutation(fallback, a, b), x0, x1)


def exact_ot_permutation(x0: Any, x1: Any, *, solver: str = "auto", **solver_kw) -> jax.Array:
    """Optimal assignment for the squared Euclidean cost: ``x1[perm]`` is matched to ``x0``.

    ``perm = argmin_sigma sum_i ||x0_i - x1_sigma(i)||^2`` over permutations of ``n``
    points: the exact OT plan between the two empirical measures ``(1/n) sum delta_{x0_i}``
    and ``(1/n) sum delta_{x1_j}`` (Birkhoff: some optimal plan is a permutation).

    Args:
        x0: ``(n, d)`` source batch.
        x1: ``(n, d)`` target batch, same shape and dtype.
        solver: ``"auto"`` (default: ``"pot"`` on CPU when POT is installed, else
            ``"scipy"``; ``"auction"`` on GPU/TPU), ``"pot"`` or ``"scipy"`` (host
            callbacks, exact), ``"auction"`` (JAX auction, see :func:`auction_assignment`,
            which receives ``solver_kw``; non-converged batches fall back to the host) or
            ``"hungarian"`` (optax).

    Returns:
        ``perm``, int32 ``(n,)``.

    >>> import jax.numpy as jnp, fmjax as fm
    >>> x0 = jnp.array([[0.0, 0.0], [1.0, 0.0]])
    >>> x1 = jnp.array([[1.1, 0.0], [0.1, 0.0]])
    >>> fm.exact_ot_permutation(x0, x1).tolist()
    [1, 0]
    """
    x0, x1 = _check_pair(x0, x1)
    if solver == "auto":
        solver = _auto_solver()
    if solver == "scipy":
        if solver_kw:
            raise ValueError(f"solver 'scipy' takes no options, got {sorted(solver_kw)}")
        return _scipy_permutation(x0, x1)
    if solver == "pot":
        if solver_kw:
            raise ValueError(f"solver 'pot' takes no options, got {sorted(solver_kw)}")
        return _pot_permutation(x0, x1)
    if solver == "auction":
        return _auction_permutation(x0, x1, **solver_kw)
    if solver == "hungarian":
        if solver_kw:
            raise ValueError(f"solver 'hungarian' takes no options, got {sorted(solver_kw)}")
        return _hungarian_permutation(x0, x1)
    raise ValueError(f"`solver` must be one of {OT_SOLVERS}, got {solver!r}")


def _sinkhorn_pairs(key, x0, x1, epsilon, relative_epsilon, solver_kw):
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    # ott-jax 0.6.0 mixes float64 constants with float32 inputs when x64 is enabled (its
    # Sinkhorn then fails on a lax.cond dtype mismatch): solve in the widest float dtype
    # available, under standard promotion, and only return indices.
    wide = jnp.zeros((), float).dtype
    a, b = x0.astype(wide), x1.astype(wide)
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        geom = pointcloud.PointCloud(a, b, epsilon=epsilon, relative_epsilon=relative_epsilon)
        out = sinkhorn.Sinkhorn(**solver_kw)(linear_problem.LinearProblem(geom))
    plan = out.matrix
    logits = jnp.log(jnp.maximum(plan, jnp.asarray(jnp.finfo(wide).tiny, wide)))
    j = jax.random.categorical(key, logits, axis=1)
    # A plan that did not converge is not a coupling of the batch: report it, never use it.
    x1_paired = eqx.error_if(
        x1[j], ~(out.converged & jnp.all(jnp.isfinite(plan))),
        "Sinkhorn coupling did not converge: raise `epsilon` or `max_iterations`, or use "
        "method='ot'")
    return x0, x1_paired


def couple(key: jax.Array, x0: Any, x1: Any, *, method: str = "independent",
           epsilon: float | None = None, relative_epsilon: str | None = "mean",
           solver: str = "auto", **solver_kw) -> tuple[jax.Array, jax.Array]:
    """Pair two batches for flow matching; pure, usable inside ``jit`` and ``lax.scan``.

    Args:
        key: PRNG key (used by ``"sinkhorn"`` to sample from the plan).
        x0: ``(n, d)`` batch from alpha.
        x1: ``(n, d)`` batch from beta, same shape and dtype.
        method: ``"independent"``, ``"ot"`` or ``"sinkhorn"`` (see the module docstring).
        epsilon: entropic regularisation for ``"sinkhorn"``. With the default
            ``relative_epsilon="mean"`` it is a fraction of the mean cost (default 0.05,
            ott-jax's convention); with ``relative_epsilon=None`` it is absolute.
        relative_epsilon: ``"mean"``, ``"std"`` or ``None`` (ott-jax ``PointCloud``).
        solver: exact solver for ``"ot"`` (see :func:`exact_ot_permutation`).
        **solver_kw: options of the ``"ot"`` solver, or of ``ott``'s ``Sinkhorn``
            (``threshold``, ``max_iterations``, ...) for ``"sinkhorn"``.

    Returns:
        ``(x0_paired, x1_paired)``, both ``(n, d)``. ``"independent"`` and ``"ot"`` keep
        ``x0`` as is and return ``x1`` (permuted for ``"ot"``); ``"sinkhorn"`` keeps ``x0``
        and draws each partner from the conditional plan (``x1`` with replacement).

    >>> import jax, jax.numpy as jnp, fmjax as fm
    >>> k0, k1 = jax.random.split(jax.random.key(0))
    >>> x0 = jax.random.normal(k0, (8, 2))
    >>> x1 = jax.random.normal(k1, (8, 2)) + 3.0
    >>> a, b = fm.couple(k0, x0, x1, method="ot")
    >>> bool(jnp.sum((a - b) ** 2) <= jnp.sum((x0 - x1) ** 2))
    True
    """
    x0, x1 = _check_pair(x0, x1)
    if method == "independent":
        return x0, x1
    if method == "ot":
        perm = exact_ot_permutation(x0, x1, solver=solver, **solver_kw)
        return x0, x1[perm]
    if method == "sinkhorn":
        if epsilon is not None and not (isinstance(epsilon, jax.Array) or epsilon > 0):
            raise ValueError(f"`epsilon` must be > 0, got {epsilon!r}")
        eps = 0.05 if (epsilon is None and relative_epsilon is not None) else epsilon
        return _sinkhorn_pairs(key, x0, x1, eps, relative_epsilon, solver_kw)
    raise ValueError(f"`method` must be one of {COUPLINGS}, got {method!r}")
