r"""The continuous Wasserstein-2 benchmark pairs ``Mix3toMix10`` of Korotin et al. in JAX.

Korotin, Li, Genevay, Solomon, Filippov, Burnaev, "Do Neural Optimal Transport Solvers Work?
A Continuous Wasserstein-2 Benchmark", NeurIPS 2021 (arXiv 2106.01954); code and weights:
repository ``iamalexkorotin/Wasserstein2Benchmark`` (commit
``647a1acc85f88e207733d087cbe87987cc0dea06``, MIT licence, ``src/map_benchmark.py``
``Mix3ToMix10Benchmark``). Each pair ``(P, Q)`` in dimension ``D`` has a known OT map:

- **Source** ``P``: a mixture of ``K = 3`` Gaussians with equal weights,
  ``X = std * A_k Z + c_k``, ``k`` uniform, ``Z ~ N(0, I_D)``, ``std = 0.4``. The centres and
  maps come from NumPy's legacy generator after ``np.random.seed(0)``: per coordinate a
  random permutation of ``{0, 1, 2}`` (``np.random.choice(3, 3, replace=False)``) times
  ``dist = 1``, shifted by ``-(K - 1) dist / 2``; then ``A = np.random.normal(size=(K, D, D))``
  with unit rows; both divided by ``sqrt((mean_k ||c_k||^2 + D std^2) / D)`` (so that
  ``tr Cov(P) = D``), in float32 as in the reference.
- **Potential** ``psi = psi_1 + psi_2``: two dense input-convex networks (the state dicts
  ``{D}_v1.pt``, ``{D}_v2.pt``) with hidden sizes ``(max(2D, 64), max(2D, 64), max(D, 32))``:

  .. math::

      h_1 = q_1(x), \quad h_{l+1} = \operatorname{celu}(W_l h_l + q_{l+1}(x)), \quad
      \psi_i(x) = w^\top h_3 + \tfrac{\lambda}{2} \|x\|^2, \quad \lambda = 10^{-2},

  with the convex quadratic layers ``q(x)_j = sum_r (U_{:, r, j} . x)^2 + (V x + b)_j`` (rank
  ``r = 1``) and entrywise non-negative ``W_l`` and ``w`` (the first layer has no activation).
- **OT map** ``T*(x) = (grad psi(x) - m) / s``, the gradient of the convex
  ``(psi(x) - m . x) / s``: ``m`` and ``s^2`` are the mean and the mean per-coordinate
  variance of ``grad psi`` over ``2^14`` source samples, so ``Q = T*#P`` has mean ~0 and
  per-coordinate variance ~1. ``Q`` is sampled as ``T*(X)``, ``X ~ P``.

The reference estimates ``m`` and ``s`` once, on CUDA (``torch.randn`` on the GPU after
``torch.manual_seed(0)``), and does not store them; a CPU run cannot redraw that sample.
Here they come from ``2^14`` points of NumPy's ``RandomState(STANDARDISE_SEED)`` (see
``experiments/w2bench_convert.py``), so the pair is the reference construction up to a
Monte Carlo difference in ``(m, s)`` of relative order ``2^-7``. Everything is stored in
``experiments/data/w2bench/mix3tomix10_d{D}.npz``; :func:`load_pair` only reads it (no torch).

Metrics, as the benchmark defines them (``src/metrics.py``), on fresh source points:

.. math::

    \mathcal{L}^2\text{-UVP}(T) = 100\, \frac{\mathbb{E}_P \|T(x) - T^*(x)\|^2}{\operatorname{Var}(Q)},
    \qquad
    \cos(T) = \frac{\mathbb{E}_P \langle T(x) - x, T^*(x) - x \rangle}
                   {\sqrt{\mathbb{E}_P \|T(x) - x\|^2 \; \mathbb{E}_P \|T^*(x) - x\|^2}},

``Var(Q) = tr Cov(Q)``, the summed per-coordinate variance. The linear baseline is the Bures
(Gaussian OT) map between ``N(mean_P, Cov_P)`` and ``N(mean_Q, Cov_Q)``: ``Cov_P`` is exact
(mixture moments), ``mean_Q`` and ``Cov_Q`` are estimated on ``2^18`` source points of
``RandomState(MOMENTS_SEED)``.

The experiment (issue #15), ``python -m experiments.w2bench [--quick] [--dims=2,4]
[--methods=ifm,otfm256,otfm1024,sinkhorn4096,rf2] [--seeds=N] [--merge=DIR,...]
[--train=False]``: per dimension, the identity and linear baselines and the time-1 maps of
I-FM, OT-FM (exact, batch 256 and 1,024), Sinkhorn-FM (batch 4,096) and 2-RF, scored on the
same fresh points (L2-UVP, cosine, the NFE of the Tsit5 map, the 100-step Euler map, the
straightness S). Each finished ``(D, method, seed)`` is stored under ``WORKDIR/runs/`` with
its protocol fingerprint (:func:`run_protocol`), the run in training is checkpointed, and
``--merge`` reuses the finished runs of other workdirs: a grid split over jobs or killed
part-way is put together without training anything twice. Protocol, measured costs and the
commands of the full run: ``docs/results/w2bench/README.md``.

Example:
    >>> import jax
    >>> from experiments.w2bench import load_pair
    >>> pair = load_pair(8)
    >>> x = pair.source(jax.random.key(0), 4)
    >>> pair.ot_map(x).shape, pair.dim
    ((4, 8), 8)
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import fmjax as fm

from . import _common

__all__ = [
    "DIMS",
    "DATA_DIR",
    "PUBLISHED",
    "W2Pair",
    "load_pair",
    "mixture_parameters",
    "mixture_moments",
    "hidden_sizes",
    "icnn",
    "psi",
    "l2_uvp",
    "cosine_similarity",
    "data_path",
]

#: The dimensions of the ``Mix3toMix10`` pairs ported here (the reference also has 256, 512).
DIMS = (2, 4, 8, 16, 32, 64, 128)
#: Where the converted weights and constants live (``experiments/w2bench_convert.py``).
DATA_DIR = Path(__file__).resolve().parent / "data" / "w2bench"

NUM_COMPONENTS = 3
COMPONENT_DIST = 1.0
COMPONENT_STD = 0.4
STRONG_CONVEXITY = 1e-2
#: The NumPy legacy seed of the mixture construction (``np.random.seed(0)`` in the reference).
CONSTRUCTION_SEED = 0
#: Sample size and ``np.random.RandomState`` seed of the standardisation constants ``(m, s)``.
N_STANDARDISE = 2**14
STANDARDISE_SEED = 14
#: Sample size and ``np.random.RandomState`` seed of ``mean_Q`` and ``Cov_Q``.
N_MOMENTS = 2**18
MOMENTS_SEED = 18
#: The number of fresh source points the benchmark scores a map on.
N_EVAL = 2**14

#: Published forward-map L2-UVP (%) on these pairs: ``PUBLISHED[source][method][D]``, ``None``
#: where the number could not be read from a primary source (see
#: ``docs/results/w2bench/PUBLISHED.md`` for what was searched). Sources:
#:
#: - ``"korotin2021"``: Korotin et al., NeurIPS 2021 (arXiv 2106.01954), the table of L2-UVP of
#:   the fitted forward maps on the high-dimensional ``Mix3toMix10`` pairs, with the linear
#:   baseline. Method names as in the paper and the repository README; ``:R`` is reversed.
#: - ``"kornilov2024"``: Kornilov, Mokrov, Gasnikov, Korotin, "Optimal Flow Matching", NeurIPS
#:   2024 (arXiv 2403.13117), Table 1 (OT-CFM, rectified flow RF and c-RF, OFM on the same
#:   pairs; the rows as a NeurIPS 2024 poster summary of the table names them).
PUBLISHED: dict[str, dict[str, dict[int, float | None]]] = {
    "korotin2021": {m: dict.fromkeys(DIMS) for m in (
        "Linear", "MM", "MM:R", "MMv1", "MMv2", "MMv2:R", "MM-B", "W2", "W2:R", "QC", "LS")},
    "kornilov2024": {m: dict.fromkeys(DIMS) for m in ("OT-CFM", "RF", "c-RF", "OFM")},
}
#: Numbers quoted by others (not read in the papers), ``SECONDARY[method][D] = (L2-UVP %,
#: cosine, where)``; shown apart from :data:`PUBLISHED` and never used for a target.
SECONDARY: dict[str, dict[int, tuple[float, float, str]]] = {
    "Linear": {64: (63.9, 0.75, "an author response in a public review thread quoting the "
                                "'L' row of Korotin et al. 2021 (stored text, repository "
                                "unknown); see docs/results/w2bench/PUBLISHED.md")},
}


# --------------------------------------------------------------------------------------
# Construction of the source mixture (NumPy, float32 as in the reference)
# --------------------------------------------------------------------------------------
def _check_dim(dim: Any) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or int(dim) not in DIMS:
        raise ValueError(f"`dim` must be one of {DIMS}, got {dim!r}")
    return int(dim)


def hidden_sizes(dim: int) -> tuple[int, int, int]:
    """The hidden sizes ``(max(2D, 64), max(2D, 64), max(D, 32))`` of the benchmark ICNNs."""
    dim = _check_dim(dim)
    return (max(2 * dim, 64), max(2 * dim, 64), max(dim, 32))


def mixture_parameters(dim: int) -> tuple[np.ndarray, np.ndarray]:
    r"""The centres ``(K, D)`` and maps ``(K, D, D)`` of the source mixture (float32).

    Draws from ``np.random.RandomState(0)`` (the stream of the legacy global generator after
    ``np.random.seed(0)``): for each coordinate ``d`` a permutation ``pi_d`` of
    ``{0, ..., K - 1}`` sets ``c_{k, d} = dist * pi_d(k) - dist (K - 1) / 2``; then
    ``A ~ N(0, 1)^{K x D x D}`` with every row scaled to unit length. Both are divided by

    .. math:: \mu = \sqrt{\big(\tfrac1K \textstyle\sum_k \|c_k\|^2 + D\,\mathrm{std}^2\big) / D}.

    Args:
        dim: one of :data:`DIMS`.

    Returns:
        ``(centers, maps)``, NumPy float32 arrays of shapes ``(3, D)`` and ``(3, D, D)``.
    """
    dim = _check_dim(dim)
    rs = np.random.RandomState(CONSTRUCTION_SEED)
    k = NUM_COMPONENTS
    centers = np.zeros((k, dim), dtype=np.float32)
    for d in range(dim):
        centers[:, d] += COMPONENT_DIST * rs.choice(list(range(k)), k, replace=False)
    centers -= COMPONENT_DIST * (k - 1) / 2
    maps = rs.normal(size=(k, dim, dim)).astype(np.float32)
    maps /= np.sqrt((maps**2).sum(axis=2, keepdims=True))
    scale = np.sqrt((centers**2).sum(axis=1).mean() + dim * COMPONENT_STD**2) / np.sqrt(dim)
    centers /= scale
    maps /= scale
    return centers, maps


def mixture_moments(centers: Any, maps: Any, std: float = COMPONENT_STD
                    ) -> tuple[np.ndarray, np.ndarray]:
    r"""The exact mean and covariance of the equal-weight mixture ``std A_k Z + c_k`` (float64).

    .. math::

        \mu = \tfrac1K \textstyle\sum_k c_k, \qquad
        \Sigma = \tfrac1K \textstyle\sum_k \big(\mathrm{std}^2 A_k A_k^\top
            + c_k c_k^\top\big) - \mu \mu^\top.
    """
    c = np.asarray(centers, dtype=np.float64)
    a = np.asarray(maps, dtype=np.float64)
    mean = c.mean(axis=0)
    second = (std**2 * np.einsum("kij,klj->il", a, a) + np.einsum("ki,kl->il", c, c)) / len(c)
    cov = second - np.outer(mean, mean)
    return mean, 0.5 * (cov + cov.T)


# --------------------------------------------------------------------------------------
# The input-convex potentials (pure functions of a parameter pytree)
# --------------------------------------------------------------------------------------
def _convex_quadratic(layer: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """``q(x)_j = sum_r (U[:, r, j] . x)^2 + (V x + b)_j`` for one point ``x`` of shape ``(D,)``."""
    proj = jnp.einsum("d,drh->rh", x, layer["U"])
    return jnp.sum(proj**2, axis=0) + layer["V"] @ x + layer["b"]


def icnn(params: dict[str, Any], x: jax.Array) -> jax.Array:
    r"""One benchmark ICNN ``psi_i(x)`` at one point ``x`` of shape ``(D,)``; returns a scalar.

    .. math::

        h_1 = q_1(x), \quad h_{l+1} = \operatorname{celu}(W_l h_l + q_{l+1}(x)), \quad
        \psi_i(x) = w^\top h_L + \tfrac{\lambda}{2}\|x\|^2.

    ``params`` holds ``"quadratic"`` (a list of ``{"U": (D, r, h), "V": (h, D), "b": (h,)}``),
    ``"convex"`` (a list of ``(h_{l+1}, h_l)`` matrices) and ``"final"`` (``(h_L,)``), all in
    the dtype of ``x``.
    """
    h = _convex_quadratic(params["quadratic"][0], x)
    for layer, w in zip(params["quadratic"][1:], params["convex"], strict=True):
        h = jax.nn.celu(w @ h + _convex_quadratic(layer, x))
    return params["final"] @ h + (0.5 * STRONG_CONVEXITY) * (x @ x)


def psi(params: tuple[dict[str, Any], ...], x: jax.Array) -> jax.Array:
    """The benchmark potential ``psi = psi_1 + psi_2`` at one point ``x`` of shape ``(D,)``."""
    return sum(icnn(p, x) for p in params)


def _cast(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda a: jnp.asarray(a).astype(dtype), tree)


@jax.jit
def _psi_batch(params: Any, x: jax.Array) -> jax.Array:
    return jax.vmap(psi, in_axes=(None, 0))(_cast(params, x.dtype), x)


@jax.jit
def _grad_psi_batch(params: Any, x: jax.Array) -> jax.Array:
    return jax.vmap(jax.grad(psi, argnums=1), in_axes=(None, 0))(_cast(params, x.dtype), x)


@jax.jit
def _standardise(g: jax.Array, mean: jax.Array, scale: jax.Array) -> jax.Array:
    return (g - mean.astype(g.dtype)[None, :]) / scale.astype(g.dtype)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _sample_mixture(key: jax.Array, centers: jax.Array, maps: jax.Array, std: float, n: int,
                    dtype: Any) -> jax.Array:
    k_c, k_z = jax.random.split(key)
    idx = jax.random.randint(k_c, (n,), 0, centers.shape[0])
    z = jax.random.normal(k_z, (n, centers.shape[1]), dtype)
    per_k = jnp.einsum("kij,nj->kni", maps.astype(dtype), z)  # (K, n, D)
    chosen = jnp.take_along_axis(per_k, idx[None, :, None], axis=0)[0]
    return chosen * jnp.asarray(std, dtype) + centers.astype(dtype)[idx]


# --------------------------------------------------------------------------------------
# The metrics (pure functions)
# --------------------------------------------------------------------------------------
def _check_pair_batch(a: Any, a_name: str, b: Any, b_name: str) -> tuple[jax.Array, jax.Array]:
    for v, name in ((a, a_name), (b, b_name)):
        if not hasattr(v, "shape") or len(v.shape) != 2:
            raise ValueError(f"`{name}` must be a batch of shape (n, D), got "
                             f"{getattr(v, 'shape', type(v).__name__)}")
        if not jnp.issubdtype(v.dtype, jnp.floating):
            raise ValueError(f"`{name}` must have a floating dtype, got {v.dtype}")
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"`{a_name}` has shape {tuple(a.shape)} but `{b_name}` has shape "
                         f"{tuple(b.shape)}; they must match")
    dtype = jnp.promote_types(a.dtype, b.dtype)
    return jnp.asarray(a).astype(dtype), jnp.asarray(b).astype(dtype)


def l2_uvp(mapped: Any, reference: Any, var_q: Any) -> jax.Array:
    r"""The unexplained variance percentage ``100 E ||T(x) - T*(x)||^2 / Var(Q)``.

    Args:
        mapped: ``(n, D)``, the fitted map at the source points, ``T(x)``.
        reference: ``(n, D)``, the true map at the same points, ``T*(x)``.
        var_q: ``Var(Q)``, the summed per-coordinate variance of the target (positive).

    Returns:
        A scalar in the dtype of ``mapped`` and ``reference``.
    """
    mapped, reference = _check_pair_batch(mapped, "mapped", reference, "reference")
    if isinstance(var_q, int | float) and not var_q > 0:
        raise ValueError(f"`var_q` must be positive, got {var_q!r}")
    err = jnp.mean(jnp.sum((mapped - reference) ** 2, axis=1))
    return 100.0 * err / jnp.asarray(var_q).astype(err.dtype)


def cosine_similarity(mapped: Any, reference: Any, x: Any) -> jax.Array:
    r"""The benchmark cosine of ``T - Id`` with ``T* - Id``.

    .. math::

        \frac{\mathbb{E}\langle T(x) - x, T^*(x) - x\rangle}
             {\sqrt{\mathbb{E}\|T(x) - x\|^2\,\mathbb{E}\|T^*(x) - x\|^2}},

    all expectations over the same points (the reference code takes ``E ||T*(x) - x||^2``
    from a separate batch of 1,024). Returns 0 where a displacement is identically zero
    (the identity map), as the reference does.

    Args:
        mapped: ``(n, D)``, ``T(x)``.
        reference: ``(n, D)``, ``T*(x)``.
        x: ``(n, D)``, the source points.
    """
    mapped, reference = _check_pair_batch(mapped, "mapped", reference, "reference")
    mapped, x = _check_pair_batch(mapped, "mapped", x, "x")
    reference = reference.astype(mapped.dtype)
    u, v = mapped - x, reference - x
    num = jnp.mean(jnp.sum(u * v, axis=1))
    den = jnp.sqrt(jnp.mean(jnp.sum(u * u, axis=1)) * jnp.mean(jnp.sum(v * v, axis=1)))
    safe = jnp.where(den > 0, den, jnp.ones_like(den))
    return jnp.where(den > 0, num / safe, jnp.zeros_like(num))


# --------------------------------------------------------------------------------------
# The pair
# --------------------------------------------------------------------------------------
def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"`n` must be a positive Python int (static under jit), got {n!r}")
    return int(n)


def _check_dtype(dtype: Any) -> Any:
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"`dtype` must be a floating dtype, got {dtype}")
    return dtype


class W2Pair(eqx.Module):
    """One ``Mix3toMix10`` benchmark pair (a pytree: pass it through ``jax.jit``).

    Attributes:
        params: ``(psi_1, psi_2)`` parameter pytrees of :func:`icnn` (float32, as published).
        centers: ``(3, D)`` mixture centres ``c_k``.
        maps: ``(3, D, D)`` mixture maps ``A_k``.
        grad_mean: ``(D,)`` the standardisation mean ``m``.
        grad_scale: the standardisation scale ``s``.
        mean_p, cov_p: the exact moments of ``P``.
        mean_q, cov_q: the estimated moments of ``Q`` (``N_MOMENTS`` points).
        linear: the Bures map between ``N(mean_p, cov_p)`` and ``N(mean_q, cov_q)``.
        var_q: ``Var(Q) = tr cov_q``, the L2-UVP denominator.
        std: the component standard deviation ``0.4``.
    """

    params: tuple[dict[str, Any], dict[str, Any]]
    centers: jax.Array
    maps: jax.Array
    grad_mean: jax.Array
    grad_scale: jax.Array
    mean_p: jax.Array
    cov_p: jax.Array
    mean_q: jax.Array
    cov_q: jax.Array
    linear: fm.AffineMap
    var_q: float = eqx.field(static=True)
    std: float = eqx.field(static=True, default=COMPONENT_STD)

    @property
    def dim(self) -> int:
        """The dimension ``D``."""
        return self.centers.shape[-1]

    # ---- sampling ----
    def source(self, key: jax.Array, n: int, dtype: Any = jnp.float32) -> jax.Array:
        """``n`` i.i.d. points of ``P``: ``std * A_k Z + c_k``, ``k`` uniform, ``Z ~ N(0, I)``.

        A pure function of ``key`` (``n`` static), usable as a sampler ``(key, n) -> (n, D)``
        inside ``jax.jit`` / ``lax.scan``.
        """
        n, dtype = _check_n(n), _check_dtype(dtype)
        return _sample_mixture(key, self.centers, self.maps, self.std, n, dtype)

    def target(self, key: jax.Array, n: int, dtype: Any = jnp.float32) -> jax.Array:
        """``n`` i.i.d. points of ``Q``: ``T*(X)``, ``X = self.source(key, n, dtype)``."""
        return self.ot_map(self.source(key, n, dtype))

    # ---- maps ----
    def _check_x(self, x: Any) -> jax.Array:
        if not hasattr(x, "shape") or len(x.shape) != 2 or x.shape[1] != self.dim:
            raise ValueError(f"`x` must be a batch of shape (n, {self.dim}), got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"`x` must have a floating dtype, got {x.dtype}")
        return jnp.asarray(x)

    def psi(self, x: Any) -> jax.Array:
        """The unstandardised potential ``psi_1 + psi_2`` on a batch ``(n, D)``; returns ``(n,)``."""
        return _psi_batch(self.params, self._check_x(x))

    def grad_psi(self, x: Any) -> jax.Array:
        """``grad psi`` on a batch ``(n, D)`` (``jax.vmap(jax.grad(psi))``)."""
        return _grad_psi_batch(self.params, self._check_x(x))

    def ot_map(self, x: Any) -> jax.Array:
        """The OT map ``T*(x) = (grad psi(x) - m) / s`` on a batch ``(n, D)``, in its dtype."""
        return _standardise(self.grad_psi(x), self.grad_mean, self.grad_scale)

    def linear_map(self, x: Any) -> jax.Array:
        """The linear (Bures) baseline ``mean_q + A (x - mean_p)`` on a batch ``(n, D)``."""
        x = self._check_x(x)
        return jax.vmap(self.linear)(x)

    # ---- metrics ----
    def l2_uvp(self, mapped: Any, x: Any) -> jax.Array:
        """``100 E ||T(x) - T*(x)||^2 / Var(Q)`` for ``mapped = T(x)`` (see :func:`l2_uvp`)."""
        x = self._check_x(x)
        _check_pair_batch(mapped, "mapped", x, "x")
        return l2_uvp(mapped, self.ot_map(x), self.var_q)

    def cosine(self, mapped: Any, x: Any) -> jax.Array:
        """The cosine of ``T - Id`` with ``T* - Id`` (see :func:`cosine_similarity`)."""
        x = self._check_x(x)
        _check_pair_batch(mapped, "mapped", x, "x")
        return cosine_similarity(mapped, self.ot_map(x), x)

    def score(self, transport: Any, key: jax.Array, n: int = N_EVAL,
              dtype: Any = jnp.float32) -> dict[str, float]:
        """L2-UVP and cosine of a batch map ``transport: (n, D) -> (n, D)`` on ``n`` fresh points."""
        x = self.source(key, n, dtype)
        mapped = transport(x)
        ref = self.ot_map(x)
        return {"l2_uvp": float(l2_uvp(mapped, ref, self.var_q)),
                "cosine": float(cosine_similarity(mapped, ref, x))}


def data_path(dim: int) -> Path:
    """The ``.npz`` file of the pair of dimension ``dim``."""
    return DATA_DIR / f"mix3tomix10_d{_check_dim(dim)}.npz"


def _params_from_npz(data: Any, prefix: str, n_layers: int) -> dict[str, Any]:
    quadratic = [{"U": data[f"{prefix}.q{i}.U"], "V": data[f"{prefix}.q{i}.V"],
                  "b": data[f"{prefix}.q{i}.b"]} for i in range(n_layers)]
    convex = [data[f"{prefix}.c{i}.W"] for i in range(n_layers - 1)]
    return {"quadratic": quadratic, "convex": convex, "final": data[f"{prefix}.final"]}


@functools.cache
def _load_npz(dim: int) -> dict[str, np.ndarray]:
    path = data_path(dim)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; regenerate it with "
                                "`python -m experiments.w2bench_convert` (needs CPU torch)")
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def load_pair(dim: int) -> W2Pair:
    """Load the ``Mix3toMix10`` pair of dimension ``dim`` from its ``.npz`` (no torch needed).

    Args:
        dim: one of :data:`DIMS`.

    Returns:
        A :class:`W2Pair`; arrays are float64 when ``jax_enable_x64`` is on, else float32.

    Raises:
        ValueError: ``dim`` not in :data:`DIMS`.
    """
    dim = _check_dim(dim)
    data = _load_npz(dim)
    n_layers = len(hidden_sizes(dim))
    params = tuple(
        jax.tree.map(jnp.asarray, _params_from_npz(data, f"psi{i}", n_layers)) for i in (1, 2))
    centers, maps = data["centers"], data["maps"]
    mean_p, cov_p = mixture_moments(centers, maps, float(data["std"]))
    mean_q, cov_q = data["target_mean"], data["target_cov"]
    linear = jax.jit(fm.gaussian_ot_map)(jnp.asarray(mean_p), jnp.asarray(cov_p),
                                         jnp.asarray(mean_q), jnp.asarray(cov_q))
    return W2Pair(
        params=params,
        centers=jnp.asarray(centers),
        maps=jnp.asarray(maps),
        grad_mean=jnp.asarray(data["grad_mean"]),
        grad_scale=jnp.asarray(data["grad_scale"]),
        mean_p=jnp.asarray(mean_p),
        cov_p=jnp.asarray(cov_p),
        mean_q=jnp.asarray(mean_q),
        cov_q=jnp.asarray(cov_q),
        linear=linear,
        var_q=float(np.trace(cov_q)),
        std=float(data["std"]),
    )



# ======================================================================================
# The experiment (issue #15): flow-matching maps scored on the pairs
# ======================================================================================
NAME = "w2bench"


class Method(NamedTuple):
    """One row of flow-matching maps: its label, coupling and batch size."""

    label: str
    coupling: str  # "independent", "exact", "sinkhorn" or "reflow" (2-RF of the I-FM run)
    batch_size: int | None  # None: ``Config.batch_size``


#: The flow-matching rows; every one is the time-1 map of a trained velocity.
METHODS: dict[str, Method] = {
    "ifm": Method("I-FM", "independent", None),
    "otfm256": Method("OT-FM (exact, batch 256)", "exact", 256),
    "otfm1024": Method("OT-FM (exact, batch 1,024)", "exact", 1024),
    "sinkhorn4096": Method("Sinkhorn-FM (batch 4,096)", "sinkhorn", 4096),
    "rf2": Method("2-RF (reflow of I-FM)", "reflow", None),
}
#: The published flow-matching row set beside each of ours (``PUBLISHED["kornilov2024"]``);
#: I-FM has none (their RF row is a rectified flow after reflow, the number of rounds not
#: read in the paper).
PUBLISHED_FOR = {"ifm": None, "otfm256": "OT-CFM", "otfm1024": "OT-CFM",
                 "sinkhorn4096": "OT-CFM", "rf2": "RF"}

#: The training budget of each dimension: steps shared by every method, chosen from the
#: measured costs on the 2-core CPU so that D = 2 ... 64 fits in about three hours
#: (``docs/results/w2bench/README.md``); OT-FM at batch 1,024 (POT, ~0.35 CPU-s a step) is
#: most of it.
STEPS_BY_DIM = dict.fromkeys(DIMS, 2500)
#: Sinkhorn-FM at batch 4,096 costs ~4.5-7 CPU-s a step (a 4,096^2 plan, ~40 iterations):
#: the shared budget would take 3-5 hours per D, so it gets this many steps, stated beside
#: its row (``--sinkhorn_steps`` for a separate, longer job).
SINKHORN_STEPS = 60


def net_size(dim: int) -> tuple[int, int]:
    """The velocity MLP ``(width, depth)`` of dimension ``dim``: ``(max(128, 4 D), 3)``."""
    return max(128, 4 * int(dim)), 3


@dataclasses.dataclass(frozen=True)
class Config(_common.GridConfig):
    """w2bench configuration. Defaults: the full CPU protocol (D = 2 ... 64, hours).

    The grid options (``figure``, ``progress``, ``checkpoint_every``, ``merge``, ``train``)
    come from :class:`experiments._common.GridConfig`.
    """

    dims: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    methods: tuple[str, ...] = ("ifm", "otfm256", "otfm1024", "sinkhorn4096", "rf2")
    seeds: int = 1
    steps: int = 0  # 0: STEPS_BY_DIM[D], the budget shared by every method of that D
    width: int = 0  # 0: net_size(D)
    depth: int = 0  # 0: net_size(D)
    batch_size: int = 1024  # I-FM and 2-RF (the OT rows carry theirs in their names)
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # "cosine" (decay to 0 over the run's steps) or "constant"
    weight_decay: float = 1e-5
    ema_decay: float = 0.99  # a cosine-decayed run ends nearly still: a short average
    sinkhorn_epsilon: float = 0.05  # relative to the mean pairwise cost (ott-jax)
    sinkhorn_steps: int = 0  # 0: SINKHORN_STEPS; else that many steps for Sinkhorn-FM
    reflow_pairs: int = 2**15  # the 2-RF dataset: pairs (x0, phi_1(x0)) of the I-FM flow
    n_eval: int = N_EVAL  # fresh source points that score a map
    n_straight: int = 4096  # of them, the points of the straightness solve
    rtol: float = 1e-5  # the adaptive (Tsit5) time-1 map, the 2-RF pairs and S
    atol: float = 1e-5
    euler_steps: int = 100

    @classmethod
    def quick(cls) -> Config:
        return cls(dims=(2, 8), steps=300, width=64, depth=3, batch_size=256,
                   sinkhorn_steps=10, reflow_pairs=4096, n_eval=4096, n_straight=1024,
                   checkpoint_every=0)


#: Config fields that do not change what one (D, method, seed) run computes.
_NOT_PROTOCOL = ("dims", "methods", "seeds", *_common.GRID_FIELDS)
#: The seed of the evaluation points of dimension D: ``jax.random.fold_in(key(EVAL_SEED), D)``.
EVAL_SEED = 20_21


def _check_config(config: Config) -> None:
    for d in config.dims:
        _check_dim(d)
    for m in config.methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {sorted(METHODS)}")
    for name in ("seeds", "batch_size", "reflow_pairs", "n_eval", "n_straight", "euler_steps"):
        if getattr(config, name) < 1:
            raise ValueError(f"`{name}` must be >= 1, got {getattr(config, name)}")
    for name in ("steps", "width", "depth", "sinkhorn_steps", "checkpoint_every"):
        if getattr(config, name) < 0:
            raise ValueError(f"`{name}` must be >= 0 (0: the default), got "
                             f"{getattr(config, name)}")
    if config.lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"`lr_schedule` must be 'cosine' or 'constant', got "
                         f"{config.lr_schedule!r}")
    if config.n_straight > config.n_eval:
        raise ValueError(f"`n_straight` ({config.n_straight}) must be <= `n_eval` "
                         f"({config.n_eval})")


def run_protocol(config: Config, dim: int, method: str) -> dict:
    """What one ``(D, method)`` run computes: the fields its stored runs must match."""
    width, depth = net_size(dim)
    steps = config.steps or STEPS_BY_DIM[dim]
    m = METHODS[method]
    if m.coupling == "sinkhorn":
        steps = config.sinkhorn_steps or SINKHORN_STEPS
    proto = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_PROTOCOL}
    proto.update(dim=dim, method=method, steps=steps, width=config.width or width,
                 depth=config.depth or depth, batch_size=m.batch_size or config.batch_size,
                 coupling=m.coupling, eval_seed=EVAL_SEED)
    for k in ("sinkhorn_steps", "sinkhorn_epsilon") if m.coupling != "sinkhorn" else ():
        proto.pop(k)
    if m.coupling != "reflow":
        proto.pop("reflow_pairs")
    return proto


def _key_name(dim: int, method: str, seed: int) -> str:
    return f"d{dim}__{method}__{seed}"


def _samplers(pair: W2Pair):
    # Plain closures: a bound method of the pair (a pytree of arrays) cannot be stored as
    # the model's ``source`` by fm.fit.
    return (lambda key, n: pair.source(key, n)), (lambda key, n: pair.target(key, n))


def _new_model(proto: dict, seed: int):
    return fm.nn.VelocityMLP(proto["dim"], width=proto["width"], depth=proto["depth"],
                             activation="selu", rngs=nnx.Rngs(seed))


def _param_arrays(model) -> dict[str, np.ndarray]:
    leaves = jax.tree.leaves(nnx.split(model)[1])
    return {f"param_{i}": np.asarray(a) for i, a in enumerate(leaves)}


def _model_from_arrays(proto: dict, seed: int, arrays: dict):
    graphdef, state = nnx.split(_new_model(proto, seed))
    n = len(jax.tree.leaves(state))
    leaves = [jnp.asarray(arrays[f"param_{i}"]) for i in range(n)]
    return nnx.merge(graphdef, jax.tree.unflatten(jax.tree.structure(state), leaves))


def _coupling(proto: dict):
    if proto["coupling"] == "independent":
        return fm.couplings.Independent()
    if proto["coupling"] == "exact":
        return fm.couplings.ExactOT()
    return fm.couplings.Sinkhorn(proto["sinkhorn_epsilon"])


def _schedule(proto: dict):
    if proto["lr_schedule"] == "cosine":
        return optax.cosine_decay_schedule(proto["lr"], proto["steps"])
    return proto["lr"]


def train_one(pair: W2Pair, proto: dict, seed: int, base=None,
              checkpoint_dir: Path | None = None, checkpoint_every: int = 0,
              progress: bool = False):
    """Train the velocity of one ``(D, method, seed)``; returns ``(model, info)``.

    ``base`` is the trained I-FM model of the same ``(D, seed)`` for ``"rf2"`` (one round of
    reflow on ``reflow_pairs`` of its pairs, warm-started from it, the same ``steps``).
    """
    sample_x0, sample_x1 = _samplers(pair)
    key = jax.random.fold_in(jax.random.key(seed), proto["dim"])
    kw = dict(steps=proto["steps"], batch_size=proto["batch_size"],
              optimizer=optax.adamw(_schedule(proto), weight_decay=proto["weight_decay"]),
              optimizer_name=f"adamw(lr={proto['lr']} {proto['lr_schedule']}, "
                             f"wd={proto['weight_decay']})",
              ema_decay=proto["ema_decay"], progress=progress)
    if checkpoint_dir is not None and checkpoint_every > 0:
        kw.update(checkpoint_every=checkpoint_every, keep_checkpoints=1)
    info: dict[str, Any] = {}
    with _common.Timer() as tm:
        if proto["coupling"] == "reflow":
            if base is None:
                raise ValueError("2-RF needs the trained I-FM model of the same (D, seed)")
            model, hist = fm.reflow(
                jax.random.fold_in(key, 2), base, sample_x0, n_pairs=proto["reflow_pairs"],
                solver="tsit5", integrate_kwargs=dict(rtol=proto["rtol"], atol=proto["atol"]),
                checkpoint_dir=checkpoint_dir if "checkpoint_every" in kw else None, **kw)
            info.update(pair_nfe=int(hist.pair_nfe), pair_seconds=float(hist.pair_seconds))
        else:
            model, hist = fm.fit(
                key, sample_x0, sample_x1, coupling=_coupling(proto), model=_new_model(proto, seed),
                checkpoint_dir=checkpoint_dir if "checkpoint_every" in kw else None, **kw)
    loss = np.asarray(hist.loss)
    info.update(train_seconds=tm.seconds, steps_per_s=float(hist.steps_per_second),
                resumed_from=hist.resumed_from,
                final_loss=float(loss[-min(100, loss.size):].mean()))
    return model, info


def evaluate(pair: W2Pair, model, x: jax.Array, ref: jax.Array, proto: dict) -> dict:
    """Score the flow of ``model`` on the points ``x`` (``ref = T*(x)``).

    The map is the time-1 map by Tsit5 (``rtol``, ``atol``; its NFE counts batched velocity
    evaluations), and the ``euler_steps``-step Euler map; S is
    :func:`fmjax.straightness` on the first ``n_straight`` points (Tsit5 on the augmented
    state, so its NFE differs from the map's).
    """
    with _common.Timer() as tm:
        sol = fm.integrate(model, x, solver="tsit5", rtol=proto["rtol"], atol=proto["atol"])
        euler = fm.integrate(model, x, solver="euler", steps=proto["euler_steps"])
        st = fm.straightness(model, x[: proto["n_straight"]], solver="tsit5",
                             rtol=proto["rtol"], atol=proto["atol"])
        out = dict(l2_uvp=float(l2_uvp(sol.x, ref, pair.var_q)),
                   l2_uvp_se=_uvp_se(sol.x, ref, pair.var_q),
                   cosine=float(cosine_similarity(sol.x, ref, x)),
                   nfe=int(sol.nfe),
                   l2_uvp_euler=float(l2_uvp(euler.x, ref, pair.var_q)),
                   straightness=float(st.value), energy=float(st.energy),
                   endpoint_cost=float(st.endpoint_cost), straightness_nfe=int(st.nfe))
    out["eval_seconds"] = tm.seconds
    return out


def eval_points(pair: W2Pair, n: int) -> tuple[jax.Array, jax.Array]:
    """The ``n`` fresh source points of dimension ``D`` every map is scored on, and ``T*``."""
    x = pair.source(jax.random.fold_in(jax.random.key(EVAL_SEED), pair.dim), n)
    return x, pair.ot_map(x)


def _uvp_se(mapped: jax.Array, ref: jax.Array, var_q: float) -> float:
    """The standard error of the L2-UVP estimate over the points (per-point errors i.i.d.)."""
    err = np.asarray(jnp.sum((mapped - ref) ** 2, axis=1), np.float64)
    return float(100.0 * err.std(ddof=1) / np.sqrt(err.size) / var_q)


def baselines(pair: W2Pair, x: jax.Array, ref: jax.Array) -> dict:
    """Identity and linear (Bures) rows, and ``W2^2 = E ||T*(x) - x||^2``, on the points."""
    out = {}
    for name, mapped in (("identity", x), ("linear", pair.linear_map(x))):
        out[name] = dict(l2_uvp=float(l2_uvp(mapped, ref, pair.var_q)),
                         l2_uvp_se=_uvp_se(mapped, ref, pair.var_q),
                         cosine=float(cosine_similarity(mapped, ref, x)))
    out["w2sq"] = float(jnp.mean(jnp.sum((ref - x) ** 2, axis=1)))
    return out


def run(config: Config, workdir: Path | str) -> dict:
    """Train and score the grid (D, method, seed); write results.{json,md} and the figure.

    Finished runs are stored under ``workdir/runs`` with their protocol, so a killed grid
    restarts where it stopped; runs of the ``config.merge`` workdirs are reused; with
    ``config.train=False`` nothing is trained and missing runs are listed.
    """
    _check_config(config)
    workdir = Path(workdir)
    store = _common.KeyedRunStore(workdir, config.merge)
    runs, missing, failed, dims_info = [], [], [], {}
    with _common.Timer() as total:
        for dim in config.dims:
            pair = load_pair(dim)
            x, ref = eval_points(pair, config.n_eval)
            dims_info[dim] = dict(baselines(pair, x, ref), n_eval=config.n_eval)
            # I-FM first: 2-RF starts from it.
            order = sorted(config.methods, key=lambda m: METHODS[m].coupling == "reflow")
            for seed in range(config.seeds):
                for method in order:
                    proto = run_protocol(config, dim, method)
                    fp = _common.protocol_fingerprint(proto, ())
                    key = _key_name(dim, method, seed)
                    rec = store.load(key, fp)
                    if rec is None and config.train:
                        rec = _train_and_store(pair, x, ref, proto, seed, key, fp, store,
                                               config, failed)
                    if rec is None:
                        if not any(f["run"] == key for f in failed):
                            missing.append(key)
                        continue
                    runs.append({k: v for k, v in rec.items() if not k.startswith("param_")})
    results = dict(runs=runs, dims={str(d): v for d, v in dims_info.items()}, missing=missing,
                   failed=failed, mismatched=sorted(set(store.mismatched)),
                   seconds=total.seconds,
                   protocols={f"{d}/{m}": run_protocol(config, d, m)
                              for d in config.dims for m in config.methods},
                   ok=not failed)
    report(config, workdir, results)
    return results


def _train_and_store(pair, x, ref, proto, seed, key, fp, store, config, failed) -> dict | None:
    base = None
    if proto["coupling"] == "reflow":
        ifm = store.load(_key_name(proto["dim"], "ifm", seed),
                         _common.protocol_fingerprint(
                             run_protocol(config, proto["dim"], "ifm"), ()))
        if ifm is None:
            failed.append(dict(run=key, error="needs the I-FM run of the same (D, seed), "
                                              "which is neither stored nor in this grid"))
            return None
        base = _model_from_arrays(run_protocol(config, proto["dim"], "ifm"), seed, ifm)
    ckpt = store.checkpoint_dir(key)
    try:
        model, info = train_one(pair, proto, seed, base, ckpt, config.checkpoint_every,
                                config.progress)
    except Exception as e:  # a run that cannot train (Sinkhorn not converging) is reported
        failed.append(dict(run=key, error=f"{type(e).__name__}: {str(e).splitlines()[0]}"))
        return None
    # Score the stored parameters in a plain model of the architecture: models that differ
    # only in the sampler they remember then share one compiled solve.
    arrays = _param_arrays(model)
    model = _model_from_arrays(proto, seed, arrays)
    rec = dict(dim=proto["dim"], method=proto["method"], seed=seed, steps=proto["steps"],
               batch_size=proto["batch_size"], width=proto["width"], depth=proto["depth"],
               num_params=fm.nn.num_params(model), **info,
               **evaluate(pair, model, x, ref, proto))
    store.save(key, fp, rec, **arrays)
    shutil.rmtree(ckpt, ignore_errors=True)
    return dict(rec, **arrays)


# --------------------------------------------------------------------------------------
# Reporting (from the stored records only)
# --------------------------------------------------------------------------------------
#: The published flow-matching rows of Kornilov et al. (2024), Table 1.
PUBLISHED_FM_ROWS = ("OT-CFM", "RF", "c-RF", "OFM")


def _published(source: str, row: str, dim: int) -> float | None:
    return PUBLISHED.get(source, {}).get(row, {}).get(dim)


def best_published_fm(dim: int) -> tuple[float, str] | None:
    """The lowest flow-matching L2-UVP of Kornilov et al. (2024) in dimension ``dim``, or None."""
    found = [(v, r) for r in PUBLISHED_FM_ROWS
             if (v := _published("kornilov2024", r, dim)) is not None]
    return min(found) if found else None


def summarize(config: Config, results: dict) -> dict:
    """Per (D, method): the mean over seeds of every score, and per D the time and target."""
    out: dict[str, Any] = {}
    for dim in config.dims:
        base = results["dims"][str(dim)]
        per = {m: base[m] for m in ("identity", "linear")}
        for method in config.methods:
            rs = [r for r in results["runs"] if r["dim"] == dim and r["method"] == method]
            if rs:
                per[method] = {k: float(np.mean([r[k] for r in rs])) for k in (
                    "l2_uvp", "cosine", "l2_uvp_euler", "straightness", "nfe", "energy",
                    "train_seconds", "eval_seconds")}
                per[method]["seeds"] = len(rs)
        flows = {m: v["l2_uvp"] for m, v in per.items() if m in METHODS}
        best = min(flows.items(), key=lambda kv: kv[1]) if flows else None
        pub = best_published_fm(dim)
        seconds = sum(r["train_seconds"] + r["eval_seconds"]  # 2-RF's pairs: in training
                      for r in results["runs"] if r["dim"] == dim)
        out[str(dim)] = dict(
            scores=per, seconds=seconds,
            best_fmjax=None if best is None else dict(method=best[0], l2_uvp=best[1]),
            best_published_fm=None if pub is None else dict(method=pub[1], l2_uvp=pub[0]),
            target_met=None if (pub is None or best is None) else bool(best[1] <= pub[0]))
    return out


def report(config: Config, workdir: Path, results: dict) -> None:
    """Write results.json, results.md and the figure from ``results`` (no computation)."""
    summary = summarize(config, results)
    results["summary"] = summary
    rows = []
    for dim in config.dims:
        base = results["dims"][str(dim)]
        for name, label in (("identity", "identity"), ("linear", "linear (Bures)")):
            pub = _published("korotin2021", "Linear", dim) if name == "linear" else None
            sec = SECONDARY.get("Linear", {}).get(dim) if name == "linear" else None
            cell = (f"{pub:g} (K21)" if pub is not None else
                    f"{sec[0]:g} (quoted²)" if sec is not None else "–")
            rows.append([str(dim), label, "–", _common.fmt(base[name]["l2_uvp"]) + " ± "
                         + _common.fmt(base[name]["l2_uvp_se"], 2),
                         _common.fmt(base[name]["cosine"]), "–", "–", "–", cell, "–"])
        for method in config.methods:
            rs = [r for r in results["runs"] if r["dim"] == dim and r["method"] == method]
            row = PUBLISHED_FOR[method]
            pub = None if row is None else _published("kornilov2024", row, dim)
            rows.append([
                str(dim), METHODS[method].label, str(len(rs)),
                *(_common.fmt_pm([r[k] for r in rs], significant=True)
                  for k in ("l2_uvp", "cosine", "l2_uvp_euler", "straightness")),
                _common.fmt_pm([r["nfe"] for r in rs], 2, significant=True),
                f"{pub:g} ({row}, KMGK24)" if pub is not None else "–",
                _common.fmt_pm([r["train_seconds"] + r["eval_seconds"] for r in rs], 3,
                               significant=True)])
    table = _common.markdown_table(
        ["D", "map", "seeds", f"L2-UVP % (Tsit5; ± s.e., n={config.n_eval:,})", "cos",
         f"L2-UVP % ({config.euler_steps} Euler)", "S", "NFE (Tsit5)",
         "published L2-UVP %", "s / run"], rows)
    dim_rows = []
    for dim in config.dims:
        s = summary[str(dim)]
        proto = run_protocol(config, dim, "ifm")
        best, pub = s["best_fmjax"], s["best_published_fm"]
        dim_rows.append([
            str(dim), f"{proto['depth']} x {proto['width']}", f"{proto['steps']:,}",
            f"{run_protocol(config, dim, 'sinkhorn4096')['steps']:,}",
            f"{s['seconds'] / 60:.1f}",
            "–" if best is None else f"{best['l2_uvp']:.3g} ({METHODS[best['method']].label})",
            "not found" if pub is None else f"{pub['l2_uvp']:g} ({pub['method']})",
            "–" if s["target_met"] is None else _common.fmt(s["target_met"])])
    dim_table = _common.markdown_table(
        ["D", "MLP (depth x width)", "steps (every method)", "steps (Sinkhorn-FM)",
         "minutes (train + eval, all runs)", "best fmjax FM L2-UVP %",
         "best published FM L2-UVP %", "at or below"], dim_rows)
    figures = [_figure(config, workdir, results)] if config.figure else []
    _common.write_outputs(
        workdir, name=NAME, title="Continuous W2 benchmark (Mix3toMix10): flow-matching maps",
        config=config, results=results,
        sections=[("Setup", _setup_text(config)), ("Results", table),
                  ("Per dimension", dim_table), ("", _provenance(results))],
        figures=figures)


def _setup_text(config: Config) -> str:
    return (
        f"Pairs `load_pair(D)` (Korotin et al. 2021, Mix3toMix10). Every map is scored on the "
        f"same {config.n_eval:,} fresh source points of each D (key fold_in(key({EVAL_SEED}), "
        f"D)): L2-UVP = 100 E||T(x) - T*(x)||² / Var(Q) with its standard error over the "
        f"points, and the cosine of T - Id with T* - Id. The map of a flow is its time-1 map by "
        f"Tsit5 (rtol {config.rtol:g}, atol {config.atol:g}; NFE = batched velocity "
        f"evaluations), and the {config.euler_steps}-step Euler map; S = E - E||φ1 - Id||² "
        f"(fm.straightness, Tsit5, first {config.n_straight:,} points). Velocity: MLP SELU, "
        f"time concatenated, width/depth by D (table below); AdamW lr {config.lr:g} "
        f"({config.lr_schedule}), wd "
        f"{config.weight_decay:g}, EMA {config.ema_decay:g}, sigma 0, linear path. One budget "
        f"of steps per D shared by every method; batch: I-FM and 2-RF {config.batch_size:,}, "
        f"OT-FM 256 and 1,024 (POT network simplex on host threads), Sinkhorn-FM 4,096 "
        f"(ott-jax, epsilon {config.sinkhorn_epsilon:g} x mean cost, threshold 1e-3; it has "
        f"its own step count where stated). 2-RF: one reflow round of the I-FM run of the "
        f"same seed (its steps are shared with the I-FM row), on {config.reflow_pairs:,} "
        f"pairs (x0, φ1(x0)) by Tsit5, warm-started, the same number of steps again. "
        f"Published: K21 = Korotin et al. 2021 (linear baseline); KMGK24 = Kornilov, Mokrov, "
        f"Gasnikov, Korotin 2024, Table 1; '–' = not found (docs/results/w2bench/"
        f"PUBLISHED.md); quoted² = a secondary quotation, not read in the paper.")


def _provenance(results: dict) -> str:
    text = f"Wall-clock of this invocation {results['seconds']:.0f} s."
    runs = results["runs"]
    loaded = [r for r in runs if r.get("loaded")]
    if loaded:
        merged = sorted({r["source"] for r in loaded if r.get("source")})
        text += (f" {len(loaded)} of {len(runs)} runs were loaded, not trained"
                 + (f" ({sum(bool(r.get('source')) for r in loaded)} merged from "
                    + ", ".join(merged) + ")" if merged else "") + "; each keeps its own time.")
    mid = [r for r in runs if r.get("resumed_from")]
    if mid:
        text += f" {len(mid)} runs resumed from a checkpoint; their time counts after it only."
    if results["missing"]:
        text += " Not run (--train=False): " + ", ".join(results["missing"]) + "."
    if results["failed"]:
        text += " FAILED: " + "; ".join(f"{f['run']}: {f['error']}"
                                         for f in results["failed"]) + "."
    if results["mismatched"]:
        text += (" Stored runs of another protocol, ignored: "
                 + ", ".join(results["mismatched"]) + ".")
    return text


def _figure(config: Config, workdir: Path, results: dict) -> str:
    plt = _common.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    dims = list(config.dims)
    summary = results["summary"]
    for name, style in (("identity", dict(color="0.6", ls=":")),
                        ("linear", dict(color="k", ls="--"))):
        ax.plot(dims, [summary[str(d)]["scores"][name]["l2_uvp"] for d in dims], marker="o",
                label=name if name == "identity" else "linear (Bures)", **style)
    for method in config.methods:
        pts = [(d, summary[str(d)]["scores"][method]["l2_uvp"]) for d in dims
               if method in summary[str(d)]["scores"]]
        label = METHODS[method].label
        if METHODS[method].coupling == "sinkhorn":
            label += f" ({run_protocol(config, dims[0], method)['steps']:,} steps)"
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    markers = dict(zip(PUBLISHED_FM_ROWS, ("s", "^", "v", "D"), strict=True))
    for row, mk in markers.items():
        pts = [(d, v) for d in dims if (v := _published("kornilov2024", row, d)) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), ls="none", marker=mk, mfc="none", ms=9,
                    label=f"{row} (Kornilov et al. 2024)")
    for source, label in (("korotin2021", "linear (Korotin et al. 2021)"),):
        pts = [(d, v) for d in dims if (v := _published(source, "Linear", d)) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), ls="none", marker="x", ms=9, color="k",
                    label=label)
    pts = [(d, v[0]) for d, v in SECONDARY.get("Linear", {}).items() if d in dims]
    if pts:
        ax.plot(*zip(*pts, strict=True), ls="none", marker="+", ms=11, color="k",
                label="linear, quoted (secondary)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    plain = plt.FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.set_xlabel("dimension D")
    ax.set_ylabel(r"$\mathcal{L}^2$-UVP (%)")
    steps = sorted({run_protocol(config, d, "ifm")["steps"] for d in dims})
    ax.set_title(f"Mix3toMix10: L2-UVP of the time-1 maps (lower is better); "
                 f"{'/'.join(f'{s:,}' for s in steps)} steps", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _common.savefig(fig, workdir, "l2_uvp_vs_dim", dpi=90)


def main(argv=None) -> int:
    return _common.main(Config, run, NAME, argv)


if __name__ == "__main__":
    raise SystemExit(main())
