"""Training data for :func:`fmjax.fit`: samplers ``(key, n) -> points`` or finite arrays.

A sampler is traced once inside the compiled training step, so it must be a pure JAX
function of its key: one that ignores the key (NumPy's global generator, a fixed slice of
data) would give the same batch at every step. That is detected from the traced program and
refused with a ``ValueError``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from . import _checks

_FROZEN = ("`{name}` does not depend on its key: fit traces the sampler once, so it would "
           "give the same points at every step (NumPy's global generator, a fixed slice of "
           "data): use jax.random with the given key, or pass an array of data.")


def _depends_on_input(closed: Any) -> list[bool]:
    """For each output of a traced function, whether it depends on the inputs."""
    jaxpr = closed.jaxpr
    dependent = set(jaxpr.invars)
    for eqn in jaxpr.eqns:
        if any(not isinstance(v, Literal) and v in dependent for v in eqn.invars):
            dependent.update(eqn.outvars)
    return [not isinstance(v, Literal) and v in dependent for v in jaxpr.outvars]


def _check_labels_array(labels: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if not np.issubdtype(arr.dtype, np.integer) or arr.shape != (n,):
        raise ValueError(f"`{name}` must be an integer array of shape ({n},), one label per "
                         f"point, got {_checks._describe(labels)}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"`{name}` must be non-negative class indices, got min {arr.min()}")
    return arr.astype(np.int32)


class Source:
    """One side of the training data: a sampler or an array (with optional labels)."""

    def __init__(self, src: Any, name: str, labels: Any = None):
        self.name, self.fn, self.data, self.labels = name, None, None, None
        if callable(src):
            if labels is not None:
                raise ValueError(f"`labels` go with an array of data; a sampler `{name}` "
                                 f"returns its labels itself: (key, n) -> (x, y)")
            self.fn = src
            self._trace_sampler()
        else:
            arr = _checks.check_points(src, name)
            self.data = np.asarray(arr)
            if labels is not None:
                self.labels = _check_labels_array(labels, arr.shape[0], "labels")
            self.point_shape, self.dtype = tuple(arr.shape[1:]), np.dtype(arr.dtype)
        self.labeled = self.labels is not None or getattr(self, "_fn_labeled", False)

    def _trace_sampler(self) -> None:
        name = self.name
        try:
            closed, out = jax.make_jaxpr(lambda k: self.fn(k, 3), return_shape=True)(
                jax.random.key(0))
        except Exception as e:
            raise ValueError(f"`{name}` must be a pure JAX function (key, n) -> points "
                             f"or an array of data; calling it failed: {e}") from e
        self._fn_labeled = isinstance(out, tuple)
        x = out[0] if self._fn_labeled else out
        if not hasattr(x, "shape") or len(x.shape) < 2 or x.shape[0] != 3:
            raise ValueError(f"`{name}`(key, n) must return points of shape (n, ...); with "
                             f"n=3 it returned {getattr(x, 'shape', type(x).__name__)}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"`{name}` must return floating-point samples, got dtype "
                             f"{x.dtype}")
        if self._fn_labeled and (len(out) != 2 or out[1].shape != (3,)
                                 or not jnp.issubdtype(out[1].dtype, jnp.integer)):
            raise ValueError(f"`{name}` returned a tuple: it must be (x, y) with integer "
                             f"labels y of shape (n,)")
        if not _depends_on_input(closed)[0]:
            raise ValueError(_FROZEN.format(name=name))
        self.point_shape, self.dtype = tuple(x.shape[1:]), np.dtype(x.dtype)

    @property
    def size(self) -> int | None:
        return None if self.data is None else int(self.data.shape[0])

    def draw(self, key: jax.Array, n: int, data: Any, labels: Any, idx: Any = None):
        """``(x, y)`` (``y`` None without labels); ``idx`` forces the rows of an array."""
        if self.fn is not None:
            out = self.fn(key, n)
            return out if self._fn_labeled else (out, None)
        if idx is None:  # uniform minibatch with replacement: depends only on (key, step)
            idx = jax.random.randint(key, (n,), 0, data.shape[0])
        return data[idx], (None if labels is None else labels[idx])

    def describe(self) -> str:
        if self.fn is not None:
            return f"fn:{getattr(self.fn, '__qualname__', type(self.fn).__name__)}"
        digest = hashlib.sha1(self.data.tobytes())
        if self.labels is not None:
            digest.update(self.labels.tobytes())
        return f"array{self.data.shape}:{digest.hexdigest()[:12]}"

    def info(self) -> dict:
        """What :func:`fmjax.restore` needs to rebuild a standard normal source."""
        dim = getattr(self.fn, "dim", None)
        if getattr(self.fn, "is_standard_normal", False) and dim is not None:
            return {"kind": "standard_normal", "dim": int(dim)}
        return {"kind": "other", "description": self.describe()}


def check_pair(src0: Source, src1: Source, paired: bool) -> None:
    if src0.point_shape != src1.point_shape:
        raise ValueError(f"`sample_x0` gives points of shape {src0.point_shape} but "
                         f"`sample_x1` of shape {src1.point_shape}")
    if src0.dtype != src1.dtype:
        raise ValueError(f"`sample_x0` gives dtype {src0.dtype} but `sample_x1` dtype "
                         f"{src1.dtype}; cast one of them")
    if src0.labeled:
        raise ValueError("labels belong to the target side (`sample_x1` / `labels`)")
    if paired and (src0.size is None or src0.size != src1.size):
        raise ValueError(f"the Paired coupling keeps the pairs of a dataset: pass two arrays "
                         f"with the same number of rows (x1[i] is the partner of x0[i]); got "
                         f"{src0.size or 'a sampler'} and {src1.size or 'a sampler'} rows")
