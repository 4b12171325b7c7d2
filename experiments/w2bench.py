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

Example:
    >>> import jax
    >>> from experiments.w2bench import load_pair
    >>> pair = load_pair(8)
    >>> x = pair.source(jax.random.key(0), 4)
    >>> pair.ot_map(x).shape, pair.dim
    ((4, 8), 8)
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import fmjax as fm

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
#:   2024 (arXiv 2403.13117), Table 1 (OT-CFM, rectified flow, OFM on the same pairs).
PUBLISHED: dict[str, dict[str, dict[int, float | None]]] = {
    "korotin2021": {m: dict.fromkeys(DIMS) for m in (
        "Linear", "MM", "MM:R", "MMv1", "MMv2", "MMv2:R", "MM-B", "W2", "W2:R", "QC", "LS")},
    "kornilov2024": {m: dict.fromkeys(DIMS) for m in ("OT-CFM", "RF", "OFM")},
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

