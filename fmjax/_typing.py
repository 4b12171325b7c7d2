"""Shape-annotated array types of the public API (jaxtyping; annotations only).

Named dimensions: ``d`` the dimension of one point, ``n`` the number of points in a batch,
``K`` the number of mixture components or atoms. ``...Like`` aliases accept anything
``jnp.asarray`` takes (Python floats, NumPy arrays); the others are ``jax.Array``. The shape
strings live here, in ordinary expressions, so that linters do not parse them as forward
references. No runtime checker is installed: validation is done by ``fmjax._checks``.

Example:
    >>> from fmjax._typing import Vector
    >>> Vector.dim_str
    'd'
"""

from __future__ import annotations

from collections.abc import Callable

from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

__all__ = [
    "Batch",
    "BatchLike",
    "Key",
    "LogDensity",
    "Matrix",
    "MatrixLike",
    "MatrixStackLike",
    "OtherBatchLike",
    "Permutation",
    "Points",
    "PointsLike",
    "RatiosLike",
    "Sampler",
    "Scalar",
    "ScalarLike",
    "StackLike",
    "Times",
    "Values",
    "ValuesLike",
    "Vector",
    "VectorLike",
    "VelocityField",
    "WeightsLike",
]

#: a scalar (time ``t``, a log-density value, a ratio), as an argument
ScalarLike = Float[ArrayLike, ""]
#: a 0-d floating ``jax.Array``
Scalar = Float[Array, ""]
#: one point, shape ``(d,)``
VectorLike = Float[ArrayLike, "d"]
Vector = Float[Array, "d"]
#: a ``(d, d)`` matrix (a covariance, a linear map)
MatrixLike = Float[ArrayLike, "d d"]
Matrix = Float[Array, "d d"]
#: a batch of ``n`` points, shape ``(n, d)``
BatchLike = Float[ArrayLike, "n d"]
Batch = Float[Array, "n d"]
#: a second cloud of ``m`` points (``w2(x, y)`` with ``n != m``)
OtherBatchLike = Float[ArrayLike, "m d"]
#: one number per point of a batch (log-likelihoods, 1-D samples), shape ``(n,)``
ValuesLike = Float[ArrayLike, "n"]
Values = Float[Array, "n"]
#: an assignment: point ``i`` of ``x0`` is paired with point ``perm[i]`` of ``x1``
Permutation = Int[Array, "n"]
#: a typed PRNG key (``jax.random.key``) or a legacy ``uint32[2]`` key
Key = PRNGKeyArray
#: ``K`` vectors (component means, atoms), shape ``(K, d)``
StackLike = Float[ArrayLike, "K d"]
#: ``K`` matrices (component covariances), shape ``(K, d, d)``
MatrixStackLike = Float[ArrayLike, "K d d"]
#: any shape, the same for ``x0``, ``x1`` and the result of a path's ``interpolate``
PointsLike = Float[ArrayLike, "*shape"]
Points = Float[Array, "*shape"]
#: signal-to-noise ratios and the matching times (``snr_inverse``), any shape
RatiosLike = Float[ArrayLike, "*r"]
Times = Float[Array, "*r"]
#: ``K`` probability weights, shape ``(K,)``
WeightsLike = Float[ArrayLike, "K"]

#: a pure sampler ``(key, n) -> (n, d)``
Sampler = Callable[[PRNGKeyArray, int], Batch]
#: a velocity field on one point: ``v(t, x) -> (d,)``
VelocityField = Callable[[ScalarLike, Vector], Vector]
#: a time-dependent log-density on one point: ``log p_t(x) -> scalar``
LogDensity = Callable[[ScalarLike, Vector], Scalar]
