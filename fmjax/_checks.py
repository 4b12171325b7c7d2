"""Input validation shared by every public function.

Rule: a property that is known at trace time (shape, rank, dtype, or the value of a
concrete array) is checked eagerly and raises ``ValueError`` naming the argument. A
property of a traced value (inside ``jit``/``vmap``/``grad``) is checked with
``equinox.error_if``, whose return value must be used downstream so the check is kept.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._errors import input_message

__all__: list[str] = []  # private module

# Relative tolerance for "weights sum to one" and "matrix is symmetric" checks.
_SUM_TOL = {np.dtype(np.float16): 1e-2, np.dtype(jnp.bfloat16): 1e-2, np.dtype(np.float32): 1e-5}
_DEFAULT_TOL = 1e-9


def _tol(dtype) -> float:
    return _SUM_TOL.get(np.dtype(dtype), _DEFAULT_TOL)


def error_if(x: Any, pred: Any, msg: str) -> Any:
    """``equinox.error_if`` for a check on an input value: under ``jit`` it is reported as a
    ``ValueError`` by fmjax's entry points and :func:`fmjax.jit`."""
    return eqx.error_if(x, pred, input_message(msg))


def concrete(x: Any) -> np.ndarray | None:
    """Return ``x`` as a NumPy array if its value is known now, else ``None``."""
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def require(ok: Any, msg: str, carrier: Any) -> Any:
    """Raise ``ValueError(msg)`` now if ``ok`` is concretely False anywhere; if ``ok`` is
    traced, thread an ``eqx.error_if`` check through ``carrier`` (use the return value)."""
    c = concrete(ok)
    if c is not None:
        if not bool(np.all(c)):
            raise ValueError(msg)
        return carrier
    return error_if(carrier, ~jnp.all(ok), msg)


def _describe(x: Any) -> str:
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", type(x).__name__)
    return f"shape {tuple(shape) if shape is not None else ()} and dtype {dtype}"


def as_float_array(x: Any, name: str, *, ndim: int | tuple[int, ...] | None = None,
                   dtype: Any = None, finite: bool = True) -> jax.Array:
    """Convert ``x`` to a floating JAX array, checking rank, dtype and finiteness.

    Integer and boolean inputs are rejected (``ValueError``) rather than silently cast.
    If ``dtype`` is given the array is cast to it (used to align ``t`` with ``x``).
    """
    if isinstance(x, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be a floating-point array, got a bool")
    # Concrete values are checked in NumPy before any JAX op touches them, so a NaN is
    # reported as a ValueError naming the argument even under jax_debug_nans.
    c = concrete(x) if finite else None
    if c is not None and c.dtype.kind == "f" and c.size:
        if not np.all(np.isfinite(c.astype(np.float64))):
            bad = int(np.sum(~np.isfinite(c.astype(np.float64))))
            raise ValueError(f"`{name}` has {bad} non-finite (NaN or inf) entries, {_describe(x)}")
    if isinstance(x, int | float) and not isinstance(x, bool):
        arr = jnp.asarray(x, dtype=dtype if dtype is not None else None)
        if dtype is None and not isinstance(x, float):
            raise ValueError(f"`{name}` must be floating point, got the integer {x!r}")
    else:
        if not hasattr(x, "dtype"):
            try:
                x = np.asarray(x)
            except Exception as e:  # pragma: no cover - exotic inputs
                raise ValueError(f"`{name}` must be an array, got {type(x).__name__}") from e
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(
                f"`{name}` must have a floating-point dtype, got {_describe(x)}; "
                f"cast it explicitly, e.g. `{name}.astype(jnp.float32)`"
            )
        arr = jnp.asarray(x) if dtype is None else jnp.asarray(x).astype(dtype)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if arr.ndim not in allowed:
            want = " or ".join(str(k) for k in allowed)
            raise ValueError(f"`{name}` must have rank {want}, got {_describe(arr)}")
    if finite:
        arr = check_finite(arr, name)
    return arr


def check_finite(x: jax.Array, name: str) -> jax.Array:
    """Raise if ``x`` has a NaN or inf entry (eagerly, or via ``error_if`` when traced)."""
    c = concrete(x)
    if c is not None:
        if c.size and not np.all(np.isfinite(c.astype(np.float64))):
            bad = int(np.sum(~np.isfinite(c.astype(np.float64))))
            raise ValueError(f"`{name}` has {bad} non-finite (NaN or inf) entries, {_describe(x)}")
        return x
    return error_if(x, ~jnp.all(jnp.isfinite(x)), f"`{name}` has NaN or inf entries")


def as_time(t: Any, name: str = "t", *, dtype: Any = None, low: float = 0.0,
            high: float = 1.0) -> jax.Array:
    """A scalar time in ``[low, high]`` as an array of ``dtype``."""
    if isinstance(t, int) and not isinstance(t, bool):
        t = float(t)
    c = concrete(t)
    if c is not None and c.ndim == 0 and c.dtype.kind == "f" and not (low <= float(c) <= high):
        raise ValueError(f"`{name}` must lie in [{low}, {high}], got {name}={float(c)!r}")
    arr = as_float_array(t, name, dtype=dtype, finite=False)
    if arr.ndim != 0:
        raise ValueError(f"`{name}` must be a scalar time, got {_describe(arr)}; "
                         f"use jax.vmap over points/times")
    c = concrete(arr)
    if c is not None:
        v = float(c)
        if not (low <= v <= high):
            raise ValueError(f"`{name}` must lie in [{low}, {high}], got {name}={v!r}")
        return arr
    return error_if(arr, ~((arr >= low) & (arr <= high)),
                        f"`{name}` must lie in [{low}, {high}] (or is NaN)")


def _dim_clash(name: str, got: int, ref: str | None, d: int, letter: str = "d") -> str:
    """The second half of a size-mismatch message: both arguments and their sizes."""
    return f" (`{name}` has {letter} = {got} but `{ref}` has {letter} = {d})" if ref else ""


def check_vector(x: Any, name: str, d: int | None = None, *, dtype: Any = None,
                 ref: str | None = None) -> jax.Array:
    """One point of shape ``(d,)``; ``ref`` names the argument ``d`` was read from."""
    arr = as_float_array(x, name, ndim=1, dtype=dtype)
    if d is not None and arr.shape[0] != d:
        raise ValueError(f"`{name}` must have shape ({d},), got shape {arr.shape}"
                         + _dim_clash(name, arr.shape[0], ref, d))
    return arr


def check_batch(x: Any, name: str, d: int | None = None, *, dtype: Any = None,
                allow_empty: bool = False, ref: str | None = None) -> jax.Array:
    """A batch of points of shape ``(n, d)``; ``ref`` names the argument ``d`` was read from."""
    arr = as_float_array(x, name, ndim=2, dtype=dtype)
    if not allow_empty and arr.shape[0] == 0:
        raise ValueError(f"`{name}` is an empty batch, shape {arr.shape}")
    if d is not None and arr.shape[1] != d:
        raise ValueError(f"`{name}` must have shape (n, {d}), got shape {arr.shape}"
                         + _dim_clash(name, arr.shape[1], ref, d))
    return arr


def check_same_shape(a: jax.Array, a_name: str, b: jax.Array, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"`{a_name}` has shape {a.shape} but `{b_name}` has shape {b.shape}; "
                         f"they must match")


def check_cov(S: Any, name: str, d: int | None = None, *, dtype: Any = None,
              batch: bool = False, ref: str | None = None) -> jax.Array:
    """A symmetric positive-definite matrix ``(d, d)`` (or ``(K, d, d)`` if ``batch``);
    ``ref`` names the argument ``d`` was read from."""
    arr = as_float_array(S, name, ndim=3 if batch else 2, dtype=dtype)
    if arr.shape[-1] != arr.shape[-2]:
        raise ValueError(f"`{name}` must be square, got shape {arr.shape}")
    if d is not None and arr.shape[-1] != d:
        want = f"(K, {d}, {d})" if batch else f"({d}, {d})"
        raise ValueError(f"`{name}` must have shape {want}, got shape {arr.shape}"
                         + _dim_clash(name, arr.shape[-1], ref, d))
    c = concrete(arr)
    if c is not None:
        c64 = c.astype(np.float64)
        scale = max(float(np.max(np.abs(c64))) if c64.size else 0.0, 1e-300)
        asym = float(np.max(np.abs(c64 - np.swapaxes(c64, -1, -2)))) if c64.size else 0.0
        if asym > 100 * _tol(arr.dtype) * scale:
            raise ValueError(f"`{name}` must be symmetric, max |S - S^T| = {asym:.3g}")
        if c64.size:
            eig = np.linalg.eigvalsh(0.5 * (c64 + np.swapaxes(c64, -1, -2)))
            lo = float(eig.min())
            if lo <= 0.0:
                raise ValueError(f"`{name}` must be positive definite, smallest eigenvalue {lo:.3g}")
        return arr
    # Traced: Cholesky of a non-PD matrix is NaN; the caller's own Cholesky would also
    # catch it, but checking here names the argument.
    L = jnp.linalg.cholesky(arr)
    return error_if(arr, ~jnp.all(jnp.isfinite(L)), f"`{name}` is not positive definite")


def check_weights(w: Any, name: str, k: int | None = None, *, dtype: Any = None,
                  ref: str | None = None) -> jax.Array:
    """Probability weights: shape ``(K,)``, non-negative, summing to one; ``ref`` names the
    argument ``K`` was read from."""
    arr = as_float_array(w, name, ndim=1, dtype=dtype)
    if k is not None and arr.shape[0] != k:
        raise ValueError(f"`{name}` must have shape ({k},), got shape {arr.shape}"
                         + _dim_clash(name, arr.shape[0], ref, k, "K"))
    if arr.shape[0] == 0:
        raise ValueError(f"`{name}` is empty")
    c = concrete(arr)
    tol = max(_tol(arr.dtype), 1e-6) * max(1, arr.shape[0]) ** 0.5
    if c is not None:
        c64 = c.astype(np.float64)
        if np.any(c64 < 0):
            raise ValueError(f"`{name}` must be non-negative, min is {c64.min():.3g}")
        s = float(c64.sum())
        if abs(s - 1.0) > tol:
            raise ValueError(f"`{name}` must sum to 1, sums to {s:.6g}")
        return arr
    bad = jnp.any(arr < 0) | (jnp.abs(jnp.sum(arr) - 1) > tol)
    return error_if(arr, bad, f"`{name}` must be non-negative and sum to 1")


def positive_int(value: Any, name: str, *, minimum: int = 1, allow_none: bool = False
                 ) -> int | None:
    """``value`` as a Python ``int >= minimum`` (``None`` passes if ``allow_none``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer) \
            or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"`{name}` must be {kind}{' or None' if allow_none else ''}, "
                         f"got {value!r}")
    return int(value)


def finite_number(value: Any, name: str, *, minimum: float = 0.0) -> float:
    """``value`` as a finite Python float ``>= minimum`` (a static option, not an array)."""
    ok = (not isinstance(value, bool | np.bool_)
          and isinstance(value, int | float | np.integer | np.floating)
          and np.isfinite(value) and value >= minimum)
    if not ok:
        raise ValueError(f"`{name}` must be a finite number >= {minimum:g}, got {value!r}")
    return float(value)


def check_key(key: Any, name: str = "key") -> jax.Array:
    """A JAX PRNG key: a typed key array of shape ``()`` (``jax.random.key``) or a legacy
    ``uint32[2]`` raw key (``jax.random.PRNGKey``); anything else is a ``ValueError``."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"`{name}` must be a single PRNG key (shape ()), got a key array "
                             f"of shape {key.shape}; split it and pass one key")
        return key
    if dtype is not None and np.dtype(dtype) == np.uint32 and tuple(key.shape) == (2,):
        return key  # legacy raw key
    got = (f"{type(key).__name__} {key!r}" if dtype is None else f"an array with "
           f"{_describe(key)}")
    raise ValueError(f"`{name}` must be a JAX PRNG key such as jax.random.key(0), got {got}")


def check_points(x: Any, name: str, *, point_shape: tuple[int, ...] | None = None,
                 allow_empty: bool = False, finite: bool = True) -> jax.Array:
    """A batch of points of any shape ``(n, *point_shape)`` (flat ``(n, d)`` or images
    ``(n, H, W, C)``), floating; ``point_shape`` fixes the shape of one point."""
    arr = as_float_array(x, name, finite=finite)
    if arr.ndim < 2:
        raise ValueError(f"`{name}` must be a batch of points, shape (n, d) or "
                         f"(n, *point_shape), got {_describe(arr)}")
    if not allow_empty and arr.shape[0] == 0:
        raise ValueError(f"`{name}` is an empty batch, shape {arr.shape}")
    if point_shape is not None and tuple(arr.shape[1:]) != tuple(point_shape):
        raise ValueError(f"`{name}` has points of shape {tuple(arr.shape[1:])} but "
                         f"{tuple(point_shape)} was expected")
    return arr
