"""Sampling a trained flow: draw the source, integrate the velocity."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from ._sources import source_of
from .flows import FlowSolution, _is_adaptive, integrate

__all__ = ["sample"]

#: Fixed steps of a fixed-step solver when ``steps`` is not given (Tong et al.'s protocol).
DEFAULT_STEPS = 100


def _source_points(model, key, n, sample_x0, dim, dtype) -> jax.Array:
    if sample_x0 is None:
        source = source_of(model)
        if source is not None:
            x0 = _checks.check_points(source(key, n), "model.source(key, n)")
            name = "model.source(key, n)"
        else:
            dim = getattr(model, "dim", None) if dim is None else dim
            if dim is None:
                raise ValueError("`dim` must be given when the model has no `source` nor "
                                 "`dim` attribute")
            dim = _checks.positive_int(dim, "dim")
            return jax.random.normal(key, (n, dim), dtype=jnp.float32 if dtype is None
                                     else dtype)
    elif callable(sample_x0):
        x0, name = _checks.check_points(sample_x0(key, n), "sample_x0(key, n)"), \
            "sample_x0(key, n)"
    else:
        x0, name = _checks.check_points(sample_x0, "sample_x0"), "sample_x0"
    if x0.shape[0] != n:
        raise ValueError(f"`{name}` gave {x0.shape[0]} points but n = {n}")
    return x0


class Guided(eqx.Module):
    r"""Classifier-free guidance of a class-conditional velocity (Ho and Salimans, 2022):
    :math:`u(t, x, y) = (1 + w)\,v(t, x, y) - w\,v(t, x, \varnothing)`, where
    :math:`\varnothing` is the model's ``null_label``. ``w = 0`` is the conditional model.
    """

    velocity: Callable
    guidance: float = eqx.field(static=True)
    null_label: int = eqx.field(static=True)

    def __call__(self, t, x, y):
        cond = self.velocity(t, x, y)
        if self.guidance == 0.0:
            return cond
        free = self.velocity(t, x, jnp.asarray(self.null_label, jnp.asarray(y).dtype))
        w = jnp.asarray(self.guidance, cond.dtype)
        return (1 + w) * cond - w * free


def _conditional(model, labels, guidance, n):
    """The velocity to integrate and the labels, checked."""
    if isinstance(guidance, bool) or not isinstance(guidance, int | float) or not np.isfinite(
            guidance):
        raise ValueError(f"`guidance` must be a finite number, got {guidance!r}")
    if labels is None:
        if guidance != 0:
            raise ValueError(f"`guidance` = {guidance} needs `labels` (the classes to guide to)")
        return model, None
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.shape != (n,):
        raise ValueError(f"`labels` must be an integer array of shape ({n},), one per sample, "
                         f"got {_checks._describe(labels)}")
    null = getattr(model, "null_label", None)
    if guidance != 0 and null is None:
        raise ValueError("`guidance` needs a model with a `null_label` (a 'no label' class "
                         "trained by label dropout), e.g. fm.nn.UNet(num_classes=...)")
    return Guided(model, float(guidance), -1 if null is None else int(null)), labels


def sample(model: Callable, key: jax.Array, n: int, *, sample_x0: Any = None,
           dim: int | None = None, solver: Any = "euler", steps: int | None = None,
           t0: float = 0.0, t1: float = 1.0, dtype: Any = None, return_info: bool = False,
           labels: Any = None, guidance: float = 0.0,
           **integrate_kwargs) -> jax.Array | tuple[jax.Array, FlowSolution]:
    r"""Draw ``n`` samples of the learned target: integrate :math:`\dot x = v(t, x)`.

    :math:`x(t_0)` is drawn from the model's source: ``sample_x0`` when given (a sampler
    ``(key, n)`` or an array of ``n`` points), else ``model.source`` (what :func:`fmjax.fit`
    trained from), else :math:`N(0, I_d)` with ``d = dim`` or ``model.dim``. The result is
    :math:`x(t_1)` computed by :func:`fmjax.integrate`.

    Args:
        model: a velocity callable ``v(t, x)`` on one point (e.g. ``fit``'s model).
        key: PRNG key of the source draw.
        n: number of samples.
        sample_x0: optional source sampler or ``(n, *point_shape)`` starting points.
        dim: dimension of the default Gaussian source (models without ``source``).
        solver: ``"euler"`` (default), ``"heun"``, ``"midpoint"``, ``"rk4"`` (fixed steps)
            or ``"tsit5"``, ``"dopri5"`` (adaptive), or a Diffrax solver.
        steps: fixed steps; default 100 for a fixed-step solver (Tong et al.'s protocol)
            and adaptive stepping for an adaptive one. ``steps`` with an adaptive solver
            runs it on a fixed grid without error control (a warning says so).
        t0, t1: integration interval.
        dtype: dtype of the default Gaussian source (default float32).
        return_info: also return the :class:`fmjax.FlowSolution` (its ``nfe`` is the
            number of velocity evaluations).
        labels: ``(n,)`` integer classes for a class-conditional model ``v(t, x, y)``.
        guidance: classifier-free guidance weight ``w``:
            :math:`(1 + w) v(t, x, y) - w v(t, x, \varnothing)` with the model's
            ``null_label``; 0 (default) samples the conditional model.
        **integrate_kwargs: passed to :func:`fmjax.integrate` (``rtol``, ``atol``, ...).

    Returns:
        ``(n, *point_shape)`` samples, or ``(samples, solution)`` with ``return_info``.

    Example:
        >>> import jax, jax.numpy as jnp, fmjax as fm
        >>> v = lambda t, x: jnp.ones_like(x)
        >>> x, info = fm.sample(v, jax.random.key(0), 5, dim=2, solver="tsit5",
        ...                     return_info=True)
        >>> x.shape, int(info.nfe) < 100
        ((5, 2), True)
    """
    key = _checks.check_key(key)
    n = _checks.positive_int(n, "n")
    adaptive = _is_adaptive(solver)
    if steps is None and not adaptive:
        steps = DEFAULT_STEPS
    elif steps is not None and adaptive:
        warnings.warn(f"fm.sample: solver {solver!r} is adaptive, but steps={steps} runs it on "
                      f"a fixed grid of {steps} steps without error control; leave steps=None "
                      f"for adaptive stepping", UserWarning, stacklevel=2)
    velocity, labels = _conditional(model, labels, guidance, n)
    x0 = _source_points(model, key, n, sample_x0, dim, dtype)
    sol = integrate(velocity, x0, t0=t0, t1=t1, solver=solver, steps=steps, labels=labels,
                    **integrate_kwargs)
    return (sol.x, sol) if return_info else sol.x
