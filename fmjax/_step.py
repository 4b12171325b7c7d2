"""One optimisation step of flow matching as an optax-style pure pair ``(init, step)``.

``init, step = fm.make_train_step(model, optimizer, ...)``; ``state = init(model)``;
``state, metrics = step(state, key, x0, x1)``. Both are pure functions of arrays (the
model's structure, the optimizer, the path and the coupling are fixed when the pair is
made), usable under ``jax.jit`` and inside a ``lax.scan``; :func:`fmjax.fit` is a driver
over the same step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from . import _checks
from ._loss import flow_matching_loss
from .couplings import _resolve
from .paths import AffinePath, Linear, _require_path

__all__ = ["TrainState", "TrainStep", "make_train_step"]


class TrainState(NamedTuple):
    """Everything that evolves during training (a pytree).

    Attributes:
        step: int32 scalar, the number of optimisation steps taken so far.
        params: the model's ``nnx.Param`` state (raw, last iterate).
        ema: exponential moving average accumulator of ``params``, *not debiased*: the
            debiased average after ``k`` steps is ``ema / (1 - ema_decay**k)`` (as in
            ``optax.ema(debias=True)``); :func:`fmjax.fit` returns the debiased average.
        opt_state: the Optax optimizer state.

    Example:
        >>> import jax, jax.numpy as jnp, fmjax as fm
        >>> from flax import nnx
        >>> init, step = fm.make_train_step(fm.nn.VelocityMLP(2, rngs=nnx.Rngs(0)))
        >>> state = init(fm.nn.VelocityMLP(2, rngs=nnx.Rngs(0)))
        >>> isinstance(state, fm.TrainState), int(state.step)
        (True, 0)
    """

    step: jax.Array
    params: Any
    ema: Any
    opt_state: Any


class TrainStep(NamedTuple):
    """The pair returned by :func:`make_train_step` (unpack it: ``init, step = ...``).

    Attributes:
        init: ``init(model) -> TrainState``.
        step: ``step(state, key, x0, x1, labels=None) -> (state, metrics)``.

    Example:
        >>> import jax, fmjax as fm
        >>> from flax import nnx
        >>> pair = fm.make_train_step(fm.nn.VelocityMLP(2, rngs=nnx.Rngs(0)))
        >>> isinstance(pair, fm.TrainStep), callable(pair.init), callable(pair.step)
        (True, True, True)
    """

    init: Callable
    step: Callable


@functools.lru_cache(maxsize=1)
def _default_optimizer() -> optax.GradientTransformation:
    # One shared object, so that fit calls with the default optimizer share compilations.
    return optax.adamw(1e-3, weight_decay=1e-5)


def _split(model: nnx.Module):
    return nnx.split(model, nnx.Param, ...)


def _check_model(model: Any, name: str = "model") -> nnx.Module:
    if not isinstance(model, nnx.Module):
        raise ValueError(f"`{name}` must be a flax.nnx.Module velocity model(t, x), got "
                         f"{type(model).__name__}")
    return model


def _check_rate(value: Any, name: str, *, upper_open: bool) -> float:
    v = float(value) if isinstance(value, int | float | np.floating) and not isinstance(
        value, bool) else float("nan")
    if not (0.0 <= v < 1.0 if upper_open else 0.0 <= v <= 1.0):
        raise ValueError(f"`{name}` must lie in [0, 1{')' if upper_open else ']'}, got "
                         f"{value!r}")
    return v


class _StepSpec(NamedTuple):
    """What one step depends on besides its array arguments (hashable)."""

    graphdef: Any
    rest: Any
    optimizer: Any
    path: AffinePath
    coupling: Any
    sigma: float
    ema_decay: float
    label_dropout: float
    null_label: int | None


def _core_step(spec: _StepSpec, state: TrainState, key: jax.Array, x0, x1, labels=None,
               perm=None, constrain=None):
    """The step; ``perm`` (precomputed exact-OT pairs of the host pipeline) replaces the
    coupling, and ``constrain`` re-imposes the batch sharding after that gather."""
    _, _, key_t, key_coupling, key_noise = jax.random.split(key, 5)
    if perm is not None:
        x1 = x1[perm]
        x1 = x1 if constrain is None else constrain(x1)
    elif labels is None:
        x0, x1 = spec.coupling(key_coupling, x0, x1)
    else:
        x0, x1 = spec.coupling(key_coupling, x0, x1, labels=labels)
    if labels is not None and spec.label_dropout > 0:
        drop = jax.random.bernoulli(jax.random.fold_in(key_noise, 1), spec.label_dropout,
                                    labels.shape)
        labels = jnp.where(drop, jnp.asarray(spec.null_label, labels.dtype), labels)
    dtype = x0.dtype
    t = jax.random.uniform(key_t, x0.shape[:1], dtype=dtype)
    noise = (jax.random.normal(key_noise, x0.shape, dtype=dtype) if spec.sigma > 0.0
             else None)

    def loss_fn(params):
        net = nnx.merge(spec.graphdef, params, spec.rest)
        return flow_matching_loss(net, t, x0, x1, path=spec.path, sigma=spec.sigma,
                                  noise=noise, labels=labels)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = spec.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = spec.ema_decay
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema, params)
    return TrainState(state.step + 1, params, ema, opt_state), {"loss": loss}


def _init_state(spec: _StepSpec, model: nnx.Module) -> TrainState:
    graphdef, params, _ = _split(_check_model(model))
    if graphdef != spec.graphdef:
        raise ValueError("`model` does not have the structure of the model given to "
                         "make_train_step (another class, width or depth)")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema=jax.tree.map(jnp.zeros_like, params),
                      opt_state=spec.optimizer.init(params))


def _make_spec(model, optimizer, path, coupling, sigma, ema_decay, label_dropout
               ) -> _StepSpec:
    graphdef, _, rest = _split(_check_model(model))
    optimizer = _default_optimizer() if optimizer is None else optimizer
    if not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(f"`optimizer` must be an optax.GradientTransformation, got "
                         f"{type(optimizer).__name__}")
    sigma = _checks.finite_number(sigma, "sigma")
    label_dropout = _check_rate(label_dropout, "label_dropout", upper_open=False)
    null_label = getattr(model, "null_label", None)
    if label_dropout > 0 and null_label is None:
        raise ValueError(f"`label_dropout` = {label_dropout} needs a model with a "
                         f"`null_label` (a 'no label' class), e.g. fm.nn.UNet(num_classes=...)")
    return _StepSpec(graphdef, rest, optimizer,
                     Linear() if path is None else _require_path(path), _resolve(coupling),
                     float(sigma), _check_rate(ema_decay, "ema_decay", upper_open=True),
                     label_dropout, None if null_label is None else int(null_label))


def make_train_step(model: nnx.Module, optimizer: optax.GradientTransformation | None = None,
                    *, path: AffinePath | None = None, coupling: Any = None,
                    sigma: float = 0.0, ema_decay: float = 0.999,
                    label_dropout: float = 0.0) -> TrainStep:
    r"""A pure flow-matching step as an optax-style pair ``(init, step)``.

    ``state = init(model)`` builds a :class:`TrainState` from the model's parameters;
    ``state, metrics = step(state, key, x0, x1)`` couples the batches, draws the times
    :math:`t_i \sim U[0, 1]` (and the noise if ``sigma > 0``), takes one optimizer step on
    :func:`fmjax.flow_matching_loss` and updates the EMA of the parameters
    (:math:`e \leftarrow \gamma e + (1 - \gamma) \theta`). ``metrics["loss"]`` is the loss
    before the update. Pure: use it under ``jax.jit`` and inside ``lax.scan``.

    Randomness: ``k_x0, k_x1, k_t, k_coupling, k_noise = jax.random.split(key, 5)``; the step
    uses the last three, so a driver that draws its batches with the first two uses every
    key once (:func:`fmjax.fit` does, with ``key = jax.random.fold_in(data_key, step)``).

    Args:
        model: an NNX velocity module ``model(t, x)`` on one point (its structure is fixed
            here; ``init`` takes a model of the same structure).
        optimizer: an Optax transform (default ``optax.adamw(1e-3, weight_decay=1e-5)``).
        path: the affine path (default :class:`fmjax.Linear`).
        coupling: a coupling value (:mod:`fmjax.couplings`), any callable
            ``(key, x0, x1) -> (x0, x1)``, or a shorthand string; default independent.
        sigma: noise added to :math:`x_t` (see :func:`fmjax.flow_matching_loss`).
        ema_decay: :math:`\gamma \in [0, 1)` (0: the EMA equals the last iterate).
        label_dropout: with labels, the probability of replacing a label by the model's
            ``null_label`` (classifier-free guidance training).

    Returns:
        A :class:`TrainStep` ``(init, step)``.

    Example:
        >>> import jax, jax.numpy as jnp, fmjax as fm
        >>> from flax import nnx
        >>> model = fm.nn.VelocityMLP(2, rngs=nnx.Rngs(0))
        >>> init, step = fm.make_train_step(model, coupling=fm.couplings.ExactOT())
        >>> state = init(model)
        >>> x0 = jax.random.normal(jax.random.key(1), (64, 2))
        >>> state, metrics = jax.jit(step)(state, jax.random.key(2), x0, x0 + 3.0)
        >>> int(state.step), metrics["loss"].shape
        (1, ())
    """
    spec = _make_spec(model, optimizer, path, coupling, sigma, ema_decay, label_dropout)

    def init(model: nnx.Module) -> TrainState:
        return _init_state(spec, model)

    def step(state: TrainState, key: jax.Array, x0: jax.Array, x1: jax.Array,
             labels: jax.Array | None = None) -> tuple[TrainState, dict]:
        key = _checks.check_key(key)
        if not isinstance(state, TrainState):
            raise ValueError(f"`state` must be the TrainState made by init, got "
                             f"{type(state).__name__}")
        # Optax mixes Python floats with int32 counters: standard promotion while tracing.
        with jax.numpy_dtype_promotion("standard"):
            return _core_step(spec, state, key, x0, x1, labels)

    return TrainStep(init, step)


def _ema_debiased(ema: Any, step: int, decay: float) -> Any:
    if decay == 0.0 or step == 0:
        return ema
    scale = 1.0 / (1.0 - decay ** int(step))
    # On the host (NumPy): no small device programs to compile.
    return jax.tree.map(lambda e: jnp.asarray((np.asarray(e) * scale).astype(e.dtype)), ema)
