"""Readable errors from compiled code.

A check on a traced value (``equinox.error_if``) fires at run time inside XLA, which wraps the
message in a callback traceback. fmjax's own entry points (``integrate``, ``sample``, ``fit``,
``w2`` ...) catch that and raise a ``ValueError`` (bad input) or :class:`FlowError` /
``RuntimeError`` (a run-time fault) whose first line is the fmjax message. :func:`jit` does
the same for a user's compiled function.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax

__all__ = ["FlowError", "jit"]

#: Messages of checks on input values (reported as ``ValueError``); anything else caught
#: from compiled code is a run-time fault (``RuntimeError``).
_INPUT_MESSAGES: set[str] = set()

_PATTERN = re.compile(r"EquinoxRuntimeError: (.*?)(?:\n\s*\n|\Z)", re.S)


class FlowError(RuntimeError):
    """An ODE solve failed: step budget reached, non-finite state, or a flow that blows up
    in finite time. The message says which, where the solve stopped and what to change.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> try:
        ...     fm.integrate(lambda t, x: x * x, jnp.full((1, 1), 2.0))  # x(t) = 2/(1-2t)
        ... except fm.FlowError as e:
        ...     print(str(e).splitlines()[0][:58])
        integrate: the flow blows up before t1: the solve stopped
    """


def input_message(msg: str) -> str:
    """Register ``msg`` as the message of an input check and return it."""
    _INPUT_MESSAGES.add(msg)
    return msg


def _message(exc: BaseException) -> str | None:
    m = _PATTERN.search(str(exc))
    return m.group(1).strip() if m else None


def translated(exc: BaseException) -> BaseException | None:
    """The readable exception for a run-time error of compiled fmjax code, or None."""
    if not isinstance(exc, jax.errors.JaxRuntimeError | eqx.EquinoxRuntimeError):
        return None
    msg = _message(exc)
    if msg is None:
        return None
    return ValueError(msg) if msg in _INPUT_MESSAGES else RuntimeError(msg)


def readable(fn: Callable) -> Callable:
    """Decorator: re-raise run-time errors of compiled code with the fmjax message first."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
        try:
            return fn(*args, **kwargs)
        except (jax.errors.JaxRuntimeError, eqx.EquinoxRuntimeError) as e:
            new = translated(e)
            if new is None:
                raise
            raise new from e

    return wrapper


def jit(fun: Callable, **jit_kwargs: Any) -> Callable:
    """``jax.jit(fun, **jit_kwargs)`` whose run-time check failures read first.

    Under a plain ``jax.jit``, a check of fmjax on a traced value (``t`` outside
    ``[0, 1]``, a covariance that is not positive definite, a failed solve) raises a
    ``JaxRuntimeError`` whose fmjax message comes after XLA's callback traceback. The same
    function compiled by ``fm.jit`` raises ``ValueError`` (bad input) or ``RuntimeError``
    (a run-time fault) with the fmjax message as its first line.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> x, I = jnp.zeros(2), jnp.eye(2)
        >>> v = fm.jit(lambda t: fm.gaussian_velocity(t, x, mean0=x, cov0=I, mean1=x, cov1=I))
        >>> try:
        ...     v(jnp.asarray(-0.1))
        ... except ValueError as e:
        ...     print(e)
        `t` must lie in [0.0, 1.0] (or is NaN)
    """
    return readable(jax.jit(fun, **jit_kwargs))
