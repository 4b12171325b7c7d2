"""fmjax: dynamic optimal transport and flow matching in JAX.

Every public name is re-exported here: ``import fmjax as fm`` then ``fm.gaussian_velocity``,
``fm.integrate``, ``fm.fit``... Velocity fields are callables ``v(t, x)`` on one point
``x`` of shape ``(d,)`` and a scalar ``t``; use ``jax.vmap`` for batches.
"""

from . import closed_form, couplings, datasets, flows, nn, ot, paths, train  # noqa: F401
from .closed_form import *  # noqa: F403
from .couplings import *  # noqa: F403
from .flows import *  # noqa: F403
from .ot import *  # noqa: F403
from .paths import *  # noqa: F403
from .train import *  # noqa: F403

__version__ = "0.1.0"

__all__ = sorted(
    set(paths.__all__)
    | set(closed_form.__all__)
    | set(ot.__all__)
    | set(flows.__all__)
    | set(couplings.__all__)
    | set(train.__all__)
)
