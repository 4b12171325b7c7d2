"""The source a trained model remembers, so that sampling and likelihoods use the right one.

:func:`fmjax.fit` sets ``model.source`` to what it trained from: the sampler itself, or the
array of data wrapped as :class:`DataSource`. :func:`fmjax.sample` draws its starting points
from it by default, and :func:`fmjax.log_likelihood` uses its ``log_density`` when it has one
(the standard normal of :func:`fmjax.datasets.standard_normal`). A checkpoint can rebuild a
standard normal source only; any other becomes an :class:`UnknownSource`, which refuses to
be sampled rather than falling back to N(0, I).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class DataSource:
    """An array of data as a sampler: rows drawn uniformly with replacement."""

    def __init__(self, data: np.ndarray):
        self.data = np.asarray(data)

    def __call__(self, key: jax.Array, n: int) -> jax.Array:
        idx = jax.random.randint(key, (n,), 0, self.data.shape[0])
        return jnp.asarray(self.data)[idx]

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    def __repr__(self) -> str:
        return f"DataSource(array of shape {self.data.shape})"


class UnknownSource:
    """A source a checkpoint cannot rebuild (a Python sampler, an array not stored)."""

    def __init__(self, description: str):
        self.description = description

    def __call__(self, key: jax.Array, n: int) -> jax.Array:
        raise ValueError(f"this model was trained from the source {self.description!r}, which "
                         f"a checkpoint cannot rebuild: pass `sample_x0` (the same sampler or "
                         f"data) explicitly")

    def __hash__(self) -> int:
        return hash(self.description)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnknownSource) and other.description == self.description

    def __repr__(self) -> str:
        return f"UnknownSource({self.description!r})"


def attach_source(model: Any, source: Any) -> Any:
    """Set ``model.source`` (an NNX static attribute) and return the model."""
    if source is not None:
        model.source = source
    return model


def source_from_info(info: dict | None) -> Any:
    if not info:
        return None
    if info.get("kind") == "standard_normal":
        from .datasets import standard_normal

        return standard_normal(int(info["dim"]))
    return UnknownSource(str(info.get("description", "unknown")))


def source_of(velocity: Any) -> Any:
    """The source a velocity remembers, or None."""
    return getattr(velocity, "source", None)
