r"""Reflow (Liu, Gong, Liu, ICLR 2023): retrain on the pairs ``(x0, phi_1(x0))`` of a flow.

The flow :math:`\varphi` of a trained velocity couples :math:`X_0` with
:math:`\varphi_1(X_0)`; flow matching on *these* pairs (the :class:`~fmjax.couplings.Paired`
coupling) gives a velocity whose flow realises the same coupling with straighter paths: the
straightness :math:`S = E - \mathbb{E}\|\varphi_1(X_0) - X_0\|^2` drops, and few-step samplers
work. The transport cost never increases (Liu et al., Theorem 3.5), but need not reach the
optimal one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

from . import _checks
from ._fit import fit
from ._sample import _source_points
from ._sources import DataSource, attach_source, source_of
from ._step import _split
from .couplings import Paired
from .flows import integrate

__all__ = ["ReflowHistory", "reflow"]


class ReflowHistory(NamedTuple):
    """What :func:`reflow` reports: :class:`fmjax.History`'s fields for the new velocity's
    training, then the pairs and what generating them cost.

    Attributes:
        loss, steps, steps_per_second, wall_time, state, resumed_from: as in
            :class:`fmjax.History`.
        pair_nfe: evaluations of the trained velocity to integrate the pairs.
        pair_seconds: seconds spent integrating them (0 when they were loaded).
        x0, x1: the ``(n_pairs, ...)`` pairs the new velocity was fit on.

    Example:
        >>> import fmjax as fm
        >>> fm.ReflowHistory._fields[:2], fm.ReflowHistory._fields[-2:]
        (('loss', 'steps'), ('x0', 'x1'))
    """

    loss: np.ndarray
    steps: np.ndarray
    steps_per_second: float
    wall_time: float
    state: Any
    resumed_from: int | None
    pair_nfe: int
    pair_seconds: float
    x0: np.ndarray
    x1: np.ndarray


def _fingerprint(key, model, n_pairs, solver, steps, integrate_kwargs) -> str:
    _, params, _ = _split(model)
    leaves = [np.asarray(x) for x in jax.tree.leaves(params)]
    h = hashlib.sha1()
    for arr in leaves:
        h.update(arr.tobytes())
    key_data = jax.random.key_data(key) if jax.dtypes.issubdtype(
        key.dtype, jax.dtypes.prng_key) else key
    h.update(np.asarray(key_data).tobytes())
    h.update(json.dumps([n_pairs, repr(solver), steps, sorted(
        (k, repr(v)) for k, v in integrate_kwargs.items())]).encode())
    return h.hexdigest()[:16]


def _pairs(key, model, sample_x0, n_pairs, solver, steps, integrate_kwargs, directory):
    """Draw x0, integrate the flow; cached (atomically) in ``directory/pairs.npz``."""
    fp = _fingerprint(key, model, n_pairs, solver, steps, integrate_kwargs)
    path = None if directory is None else os.path.join(directory, "pairs.npz")
    if path is not None and os.path.exists(path):
        with np.load(path) as z:
            if str(z["fingerprint"]) != fp:
                raise ValueError(f"`checkpoint_dir` {directory!r} holds the pairs of another "
                                 f"reflow (another model, key, n_pairs or solver): use another "
                                 f"directory")
            return z["x0"], z["x1"], int(z["nfe"]), 0.0
    tic = time.perf_counter()
    x0 = _source_points(model, key, n_pairs, sample_x0, None, None)
    sol = integrate(model, x0, solver=solver, steps=steps, **integrate_kwargs)
    x0, x1, nfe = np.asarray(x0), np.asarray(sol.x), int(sol.nfe)
    seconds = time.perf_counter() - tic
    if path is not None:
        os.makedirs(directory, exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, x0=x0, x1=x1, nfe=nfe, fingerprint=fp)
        os.replace(tmp, path)  # atomic: a kill leaves the old file or none
    return x0, x1, nfe, seconds


def reflow(key: jax.Array, model: nnx.Module, sample_x0: Any = None, *, n_pairs: int,
           steps: int, batch_size: int, solver: Any = "tsit5", solver_steps: int | None = None,
           checkpoint_dir: Any = None, integrate_kwargs: dict | None = None,
           **fit_kwargs: Any) -> tuple[nnx.Module, ReflowHistory]:
    r"""One round of reflow: fit a new velocity on the pairs ``(x0, phi_1(x0))`` of ``model``.

    Draws ``n_pairs`` source points ``x0`` (``sample_x0``: a sampler or an array; default
    the source ``model`` remembers), integrates the trained flow to ``x1 = phi_1(x0)``
    (``solver``: adaptive by default; the NFE is reported), and calls :func:`fmjax.fit` on
    the finite dataset of pairs with the :class:`~fmjax.couplings.Paired` coupling (the same
    rows are drawn from ``x0`` and ``x1``). ``k`` rounds are ``k`` calls. The new velocity
    starts from ``model``'s weights (a warm start; pass ``model=`` in ``fit_kwargs`` for
    another initialisation) and remembers the source of the pairs.

    With ``checkpoint_dir``, the pairs are stored in ``checkpoint_dir/pairs.npz`` (written
    atomically) and training is checkpointed in ``checkpoint_dir/train``: a reflow killed at
    any moment resumes to the same result.

    Args:
        key: PRNG key; split into the key of the pairs and the key of ``fit``.
        model: the trained velocity (an NNX module ``model(t, x)``).
        sample_x0: the source, or ``None`` for ``model.source``.
        n_pairs: number of pairs (the size of the finite dataset).
        steps, batch_size: of the new fit (``steps`` is its total).
        solver, solver_steps: how the pairs are integrated (``solver_steps`` for a fixed-step
            solver); ``integrate_kwargs`` go to :func:`fmjax.integrate` (``rtol``...).
        checkpoint_dir: where the pairs and the training checkpoints are kept.
        **fit_kwargs: passed to :func:`fmjax.fit` (``optimizer``, ``ema_decay``, ...).

    Returns:
        ``(model, history)``: the new velocity and a :class:`ReflowHistory`.

    Example:
        >>> import jax, jax.numpy as jnp, fmjax as fm
        >>> x1 = lambda key, n: 2.0 + jax.random.normal(key, (n, 2), jnp.float32)
        >>> model, _ = fm.fit(jax.random.key(0), fm.datasets.standard_normal(2), x1,
        ...                   steps=200, batch_size=64, progress=False)
        >>> model2, hist = fm.reflow(jax.random.key(1), model, n_pairs=256, steps=100,
        ...                          batch_size=64, progress=False)
        >>> hist.x0.shape, hist.loss.shape, hist.pair_nfe > 0
        ((256, 2), (100,), True)
    """
    key = _checks.check_key(key)
    if not isinstance(model, nnx.Module):
        raise ValueError(f"`model` must be the trained NNX velocity, got {type(model).__name__}")
    n_pairs = _checks.positive_int(n_pairs, "n_pairs")
    if "coupling" in fit_kwargs:
        raise ValueError("reflow fits on its pairs with the Paired coupling: drop `coupling`")
    k_pairs, k_fit = jax.random.split(key)
    directory = None if checkpoint_dir is None else os.path.abspath(os.fspath(checkpoint_dir))
    x0, x1, nfe, seconds = _pairs(k_pairs, model, sample_x0, n_pairs, solver, solver_steps,
                                  dict(integrate_kwargs or {}), directory)
    init = fit_kwargs.pop("model", None)
    if init is None:  # warm start: a copy of the trained model
        graphdef, params, rest = _split(model)
        init = nnx.merge(graphdef, jax.tree.map(np.array, params), rest)
    new, hist = fit(k_fit, x0, x1, coupling=Paired(), steps=steps, batch_size=batch_size,
                    model=init, checkpoint_dir=None if directory is None
                    else os.path.join(directory, "train"), **fit_kwargs)
    source = source_of(model) if sample_x0 is None else (
        sample_x0 if callable(sample_x0) else DataSource(np.asarray(sample_x0)))
    attach_source(new, source)  # the law of x0, not the finite set of pairs
    return new, ReflowHistory(*hist, pair_nfe=nfe, pair_seconds=seconds, x0=x0, x1=x1)
