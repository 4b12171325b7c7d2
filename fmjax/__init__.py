"""fmjax: dynamic optimal transport and flow matching in JAX.

Every public name is re-exported here with one canonical path: ``import fmjax as fm`` then
``fm.gaussian_velocity``, ``fm.integrate``, ``fm.flow_matching_loss``, ``fm.fit``...; the
coupling values live in ``fm.couplings`` (``fm.couplings.ExactOT()``), the networks in
``fm.nn`` and the data in ``fm.datasets``. Velocity fields are callables ``v(t, x)`` on one
point ``x`` (shape ``(d,)`` or an image ``(H, W, C)``) and a scalar ``t``; use ``jax.vmap``
for batches.

The way data flows: sampler or dataset -> coupling -> loss -> step -> (scan) -> ``fit`` ->
model -> ``integrate`` / ``sample`` -> metrics; each arrow is a public pure function.
"""

from . import closed_form, couplings, datasets, flows, metrics, nn, ot, paths  # noqa: F401
from ._checkpoint import restore
from ._devices import global_batch, initialize_distributed, make_mesh
from ._errors import jit
from ._fit import History, NonFiniteLossError, Preempted, fit
from ._loss import flow_matching_loss
from ._reflow import ReflowHistory, reflow
from ._sample import sample
from ._step import TrainState, TrainStep, make_train_step
from .closed_form import (
    DiracVelocity,
    GaussianVelocity,
    MixtureVelocity,
    affine_velocity,
    continuity_residual,
    dirac_log_density,
    dirac_velocity,
    gaussian_log_density,
    gaussian_velocity,
    mixture_log_density,
    mixture_velocity,
    scale_target_velocity,
    shift_target_velocity,
)
from .couplings import auction_assignment, exact_ot_permutation
from .flows import RK4, FlowError, FlowResults, FlowSolution, integrate, log_likelihood
from .metrics import (
    EXACT_MAX_SIZE,
    Straightness,
    W2Result,
    kinetic_energy,
    normalized_path_energy,
    straightness,
    w2,
    w2_floor,
    w2_result,
    w2_squared,
)
from .ot import (
    AffineMap,
    McCannVelocity,
    MonotoneMap1D,
    gaussian_ot_map,
    gaussian_w2,
    gaussian_w2_squared,
    mccann_interpolation,
    mccann_velocity,
    monotone_map_1d,
)
from .paths import AffinePath, Linear, Trigonometric, affine_path, change_path

__version__ = "0.1.0"

__all__ = [
    "EXACT_MAX_SIZE", "AffineMap", "AffinePath", "DiracVelocity", "FlowError", "FlowResults", "FlowSolution",
    "GaussianVelocity", "History", "Linear", "McCannVelocity", "MixtureVelocity", "MonotoneMap1D", "NonFiniteLossError", "Preempted",
    "RK4", "ReflowHistory", "Straightness", "TrainState", "TrainStep", "Trigonometric", "W2Result",
    "affine_path", "affine_velocity", "auction_assignment", "change_path", "continuity_residual",
    "dirac_log_density", "dirac_velocity", "exact_ot_permutation", "fit",
    "flow_matching_loss", "gaussian_log_density", "gaussian_ot_map", "gaussian_velocity",
    "gaussian_w2", "gaussian_w2_squared", "global_batch", "initialize_distributed",
    "integrate", "jit", "kinetic_energy", "log_likelihood", "make_mesh", "make_train_step",
    "mccann_interpolation", "mccann_velocity", "mixture_log_density", "mixture_velocity",
    "monotone_map_1d", "normalized_path_energy", "reflow", "restore", "sample", "scale_target_velocity",
    "shift_target_velocity", "straightness", "w2", "w2_floor", "w2_result", "w2_squared",
]
