"""Bad input on every public name of fmjax (issue 7).

A table maps each public callable (discovered from ``fmjax.__all__``, ``fmjax.nn.__all__``
and ``fmjax.datasets.__all__``) to one valid call and a list of bad calls: wrong rank,
mismatched ``d``, NaN/inf entries, ``t`` outside ``[0, 1]``, non-PD covariances, negative or
non-normalised weights, empty batches, integer dtypes, bad option values. Each bad call must
raise ``ValueError``/``TypeError`` whose message names the offending argument (the
reference: the argument we corrupted); the valid call must return finite values. A name
without an entry and without a justified exemption fails ``test_every_public_name_is_covered``.
Everything is eager on tiny inputs, so the whole file runs in seconds.
"""

from __future__ import annotations

import os
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import fmjax as fm
from fmjax import couplings as fcp
from fmjax import datasets as fds
from fmjax import nn as fnn

# ----------------------------------------------------------------------------------------
# Tiny inputs (float64; the conftest enables x64)
# ----------------------------------------------------------------------------------------
NAN = float("nan")
INF = float("inf")
D = 2
X = np.array([0.3, -0.2])
M0, M1 = np.zeros(D), np.array([1.0, -0.5])
S0 = np.array([[1.0, 0.2], [0.2, 0.5]])
S1 = np.array([[0.7, -0.1], [-0.1, 1.3]])
NONPD = np.array([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues -1, 3
NONSYM = np.array([[1.0, 0.5], [0.0, 1.0]])
X3 = np.zeros(3)
XINT = np.array([1, 2])
XNAN = np.array([NAN, 0.0])
XINF = np.array([0.0, INF])
B0 = np.array([[0.0, 0.0], [1.0, 0.5], [-0.3, 0.2], [0.4, -1.0]])  # (4, 2) batch
B1 = B0[::-1] + 1.0
BINT = np.arange(8).reshape(4, 2)
BNAN = B0.copy()
BNAN[1, 0] = NAN
BINF = B0.copy()
BINF[2, 1] = -INF
EMPTY = np.zeros((0, D))
KEY = jax.random.key(0)
K = 2
W = np.array([0.3, 0.7])
MS0, MS1 = np.zeros((K, D)), np.array([[1.0, 0.0], [-1.0, 0.5]])
CS0, CS1 = np.stack([S0, S1]), np.stack([S1, S0])
ATOMS = np.array([[1.0, 0.0], [-1.0, 0.5], [0.0, 2.0]])
_NOT_A_DIR = os.path.abspath(__file__)  # an existing file: not a usable directory
_MISSING_DIR = os.path.join(tempfile.gettempdir(), "fmjax-no-such-dir-3f92", "ckpt")


def vel(t, x):
    return -x


def logp(t, x):
    return -0.5 * jnp.dot(x, x)


def logp0(x):
    return -0.5 * jnp.dot(x, x)


def _with(base: dict, **over) -> dict:
    out = dict(base)
    out.update(over)
    return out


# ----------------------------------------------------------------------------------------
# The table: VALID[name] = thunk; BAD[name] = [(label, accepted argument names, thunk)]
# ----------------------------------------------------------------------------------------
VALID: dict[str, object] = {}
BAD: dict[str, list] = {}


def bad(name: str, label: str, args, thunk) -> None:
    BAD.setdefault(name, []).append((label, (args,) if isinstance(args, str) else tuple(args),
                                     thunk))


def _time_cases(name, call):
    """`call(t)` with bad times."""
    bad(name, "t > 1", "t", lambda: call(1.5))
    bad(name, "t < 0", "t", lambda: call(-0.1))
    bad(name, "t NaN", "t", lambda: call(NAN))
    bad(name, "t rank 1", "t", lambda: call(np.array([0.5])))
    bad(name, "t integer dtype", "t", lambda: call(np.array(0, np.int32)))


def _point_cases(name, call, *, dim_names=("x",)):
    """`call(x)` with a bad point x."""
    bad(name, "x rank 2", "x", lambda: call(X[None, :]))
    bad(name, "x integer dtype", "x", lambda: call(XINT))
    bad(name, "x NaN", "x", lambda: call(XNAN))
    bad(name, "x inf", "x", lambda: call(XINF))
    bad(name, "x mismatched d", dim_names, lambda: call(X3))


# --- paths --------------------------------------------------------------------------------
def _path_cases(name, make):
    p = make()
    VALID[name] = lambda: (p.interpolate(0.3, X, M1), p.target_velocity(0.3, X, M1))
    for meth in ("interpolate", "target_velocity"):
        f = getattr(p, meth)
        _time_cases(name, lambda t, f=f: f(t, X, M1))
        bad(name, f"{meth}: x0 integer dtype", "x0", lambda f=f: f(0.3, XINT, M1))
        bad(name, f"{meth}: x1 NaN", "x1", lambda f=f: f(0.3, X, XNAN))
        bad(name, f"{meth}: x0 inf", "x0", lambda f=f: f(0.3, XINF, M1))
        bad(name, f"{meth}: mismatched shapes", ("x0", "x1"), lambda f=f: f(0.3, X, X3))
        bad(name, f"{meth}: mismatched dtypes", ("x0", "x1"),
            lambda f=f: f(0.3, X.astype(np.float32), M1))


_path_cases("Linear", fm.Linear)
_path_cases("Trigonometric", fm.Trigonometric)
_path_cases("AffinePath", lambda: fm.AffinePath(lambda t: 1 - t**2, lambda t: t**2))
_path_cases("affine_path", lambda: fm.affine_path(lambda t: 1 - t**2, lambda t: t**2))
for _n in ("AffinePath", "affine_path"):
    _ctor = getattr(fm, _n)
    bad(_n, "a not callable", "a", lambda c=_ctor: c(3.0, lambda t: t))
    bad(_n, "b not callable", "b", lambda c=_ctor: c(lambda t: 1 - t, None))


# --- closed forms: Gaussian -----------------------------------------------------------------
GAUSS = dict(t=0.4, x=X, mean0=M0, cov0=S0, mean1=M1, cov1=S1)


def _gauss_call(fn, kw):
    kw = dict(kw)
    return fn(kw.pop("t"), kw.pop("x"), **kw)


def _module_fn(cls):
    """``fn(t, x, **params)`` through the closed-form module ``cls``: parameters are checked
    when it is built, ``t`` and ``x`` when it (and its ``log_density``) is called."""
    def fn(t, x, **kw):
        v = cls(**kw)
        return v(t, x), v.log_density(t, x)

    return fn


def _gaussian_cases(name, fn=None):
    fn = fn or getattr(fm, name)

    def call(**over):
        return _gauss_call(fn, _with(GAUSS, **over))

    VALID[name] = lambda: (call(), call(cross_cov=0.3 * np.eye(D)), call(t=1.0),
                           call(path=fm.Trigonometric()))
    _time_cases(name, lambda t: call(t=t))
    _point_cases(name, lambda x: call(x=x), dim_names=("x", "mean0", "mean1", "cov0", "cov1"))
    for m in ("mean0", "mean1"):
        bad(name, f"{m} rank 2", m, lambda m=m: call(**{m: M0[None]}))
        bad(name, f"{m} mismatched d", m, lambda m=m: call(**{m: X3}))
        bad(name, f"{m} NaN", m, lambda m=m: call(**{m: XNAN}))
        bad(name, f"{m} integer dtype", m, lambda m=m: call(**{m: XINT}))
    for c in ("cov0", "cov1"):
        bad(name, f"{c} not PD", c, lambda c=c: call(**{c: NONPD}))
        bad(name, f"{c} not symmetric", c, lambda c=c: call(**{c: NONSYM}))
        bad(name, f"{c} rank 1", c, lambda c=c: call(**{c: M1}))
        bad(name, f"{c} mismatched d", c, lambda c=c: call(**{c: np.eye(3)}))
        bad(name, f"{c} not square", c, lambda c=c: call(**{c: np.ones((2, 3))}))
        bad(name, f"{c} NaN", c, lambda c=c: call(**{c: np.array([[NAN, 0], [0, 1.0]])}))
        bad(name, f"{c} inf", c, lambda c=c: call(**{c: np.array([[INF, 0], [0, 1.0]])}))
        bad(name, f"{c} integer dtype", c, lambda c=c: call(**{c: np.eye(D, dtype=np.int32)}))
    bad(name, "cross_cov mismatched d", "cross_cov", lambda: call(cross_cov=np.eye(3)))
    bad(name, "cross_cov joint not PSD", "cross_cov", lambda: call(cross_cov=5.0 * np.eye(D)))
    bad(name, "cross_cov NaN", "cross_cov", lambda: call(cross_cov=np.full((D, D), NAN)))
    bad(name, "cross_cov integer dtype", "cross_cov",
        lambda: call(cross_cov=np.zeros((D, D), np.int32)))
    bad(name, "path not a path", "path", lambda: call(path="linear"))


_gaussian_cases("gaussian_velocity")
_gaussian_cases("gaussian_log_density")
_gaussian_cases("GaussianVelocity", _module_fn(fm.GaussianVelocity))


# --- closed forms: mixtures -------------------------------------------------------------------
MIX = dict(t=0.4, x=X, weights=W, means0=MS0, covs0=CS0, means1=MS1, covs1=CS1)


def _mixture_cases(name, fn=None):
    fn = fn or getattr(fm, name)

    def call(**over):
        return _gauss_call(fn, _with(MIX, **over))

    VALID[name] = lambda: (call(), call(cross_covs=np.stack([0.2 * np.eye(D)] * K)))
    _time_cases(name, lambda t: call(t=t))
    _point_cases(name, lambda x: call(x=x), dim_names=("x", "means0", "means1", "covs0", "covs1"))
    bad(name, "weights negative", "weights", lambda: call(weights=np.array([-0.2, 1.2])))
    bad(name, "weights not normalised", "weights", lambda: call(weights=np.array([0.3, 0.3])))
    bad(name, "weights wrong K", "weights", lambda: call(weights=np.array([0.2, 0.3, 0.5])))
    bad(name, "weights NaN", "weights", lambda: call(weights=np.array([NAN, 0.5])))
    bad(name, "weights integer dtype", "weights", lambda: call(weights=np.array([0, 1])))
    bad(name, "weights rank 2", "weights", lambda: call(weights=W[None]))
    bad(name, "empty mixture (K = 0)", ("weights", "means0", "means1", "covs0", "covs1"),
        lambda: call(weights=np.zeros(0), means0=np.zeros((0, D)), means1=np.zeros((0, D)),
                     covs0=np.zeros((0, D, D)), covs1=np.zeros((0, D, D))))
    for m in ("means0", "means1"):
        bad(name, f"{m} rank 1", m, lambda m=m: call(**{m: M0}))
        bad(name, f"{m} wrong K", m, lambda m=m: call(**{m: np.zeros((3, D))}))
        bad(name, f"{m} mismatched d", m, lambda m=m: call(**{m: np.zeros((K, 3))}))
        bad(name, f"{m} NaN", m, lambda m=m: call(**{m: np.full((K, D), NAN)}))
        bad(name, f"{m} integer dtype", m, lambda m=m: call(**{m: np.zeros((K, D), np.int32)}))
    for c in ("covs0", "covs1"):
        bad(name, f"{c} one component not PD", c, lambda c=c: call(**{c: np.stack([S0, NONPD])}))
        bad(name, f"{c} rank 2", c, lambda c=c: call(**{c: S0}))
        bad(name, f"{c} wrong K", c, lambda c=c: call(**{c: np.stack([S0] * 3)}))
        bad(name, f"{c} NaN", c, lambda c=c: call(**{c: np.full((K, D, D), NAN)}))
        bad(name, f"{c} integer dtype", c,
            lambda c=c: call(**{c: np.stack([np.eye(D, dtype=np.int32)] * K)}))
    bad(name, "cross_covs wrong shape", "cross_covs", lambda: call(cross_covs=np.eye(D)))
    bad(name, "cross_covs joint not PSD", "cross_covs",
        lambda: call(cross_covs=np.stack([5.0 * np.eye(D)] * K)))
    bad(name, "path not a path", "path", lambda: call(path=None))


_mixture_cases("mixture_velocity")
_mixture_cases("mixture_log_density")
_mixture_cases("MixtureVelocity", _module_fn(fm.MixtureVelocity))


# --- closed forms: Dirac target -----------------------------------------------------------
DIRAC = dict(t=0.4, x=X, atoms=ATOMS)


def _dirac_cases(name, fn=None):
    fn = fn or getattr(fm, name)

    def call(**over):
        return _gauss_call(fn, _with(DIRAC, **over))

    VALID[name] = lambda: (call(), call(weights=np.array([0.2, 0.3, 0.5])))
    _time_cases(name, lambda t: call(t=t))
    bad(name, "t = 1 (a(t) = 0)", "t", lambda: call(t=1.0))
    _point_cases(name, lambda x: call(x=x), dim_names=("x", "atoms"))
    bad(name, "atoms empty", "atoms", lambda: call(atoms=EMPTY))
    bad(name, "atoms rank 1", "atoms", lambda: call(atoms=M1))
    bad(name, "atoms mismatched d", "atoms", lambda: call(atoms=np.zeros((3, 3))))
    bad(name, "atoms NaN", "atoms", lambda: call(atoms=np.full((3, D), NAN)))
    bad(name, "atoms integer dtype", "atoms", lambda: call(atoms=np.zeros((3, D), np.int32)))
    bad(name, "weights negative", "weights", lambda: call(weights=np.array([-0.5, 0.5, 1.0])))
    bad(name, "weights not normalised", "weights", lambda: call(weights=np.array([0.5, 0.5, 0.5])))
    bad(name, "weights wrong K", "weights", lambda: call(weights=W))
    bad(name, "path not a path", "path", lambda: call(path=1.0))


_dirac_cases("dirac_velocity")
_dirac_cases("dirac_log_density")
_dirac_cases("DiracVelocity", _module_fn(fm.DiracVelocity))


# --- changing the path of a velocity ---------------------------------------------------------
QUAD_PATH = fm.affine_path(lambda t: 1 - t**2, lambda t: t**2)  # b'(0) = 0: not invertible
_gv_lin = fm.GaussianVelocity(M0, S0, M1, S1)
_cp = fm.change_path(_gv_lin, trained_on=fm.Linear(), to=fm.Trigonometric())
VALID["change_path"] = lambda: (_cp(0.0, X), _cp(0.4, X), _cp(1.0, X))
bad("change_path", "velocity not callable", "velocity",
    lambda: fm.change_path(S0, trained_on=fm.Linear(), to=fm.Trigonometric()))
bad("change_path", "trained_on not a path", "trained_on",
    lambda: fm.change_path(vel, trained_on="linear", to=fm.Trigonometric()))
bad("change_path", "to not a path", "to",
    lambda: fm.change_path(vel, trained_on=fm.Linear(), to=None))
bad("change_path", "trained_on with b'(0) = 0", "trained_on",
    lambda: fm.change_path(vel, trained_on=QUAD_PATH, to=fm.Linear()))
bad("change_path", "trained_on not ending at X1", "trained_on",
    lambda: fm.change_path(vel, trained_on=fm.affine_path(lambda t: 1 - t / 2, lambda t: t),
                           to=fm.Linear()))
bad("change_path", "to with a(t) < 0", "to",
    lambda: fm.change_path(vel, trained_on=fm.Linear(),
                           to=fm.affine_path(lambda t: 1 - 2 * t, lambda t: t)))
_time_cases("change_path", lambda t: _cp(t, X))
_point_cases("change_path", lambda x: _cp(0.3, x), dim_names=("x", "mean0"))


# --- Exercise 1 combinators and the continuity residual -----------------------------------
A2 = np.array([[2.0, 0.5], [0.0, 1.0]])
VALID["affine_velocity"] = lambda: fm.affine_velocity(vel, A2, M1)(0.3, X)
_av = fm.affine_velocity(vel, A2, M1)
bad("affine_velocity", "v not callable", "v", lambda: fm.affine_velocity(3.0, A2, M1))
bad("affine_velocity", "A singular", "A", lambda: fm.affine_velocity(vel, np.ones((D, D)), M1))
bad("affine_velocity", "A rank 1", "A", lambda: fm.affine_velocity(vel, M1, M1))
bad("affine_velocity", "A mismatched d", ("A", "b"), lambda: fm.affine_velocity(vel, np.eye(3), M1))
bad("affine_velocity", "A NaN", "A", lambda: fm.affine_velocity(vel, np.full((D, D), NAN), M1))
bad("affine_velocity", "A integer dtype", "A",
    lambda: fm.affine_velocity(vel, np.eye(D, dtype=np.int32), M1))
bad("affine_velocity", "b integer dtype", "b", lambda: fm.affine_velocity(vel, A2, XINT))
bad("affine_velocity", "b inf", "b", lambda: fm.affine_velocity(vel, A2, XINF))
bad("affine_velocity", "path not a path", "path", lambda: fm.affine_velocity(vel, A2, M1, path=0))
_time_cases("affine_velocity", lambda t: _av(t, X))
_point_cases("affine_velocity", lambda x: _av(0.3, x), dim_names=("x", "b"))

VALID["shift_target_velocity"] = lambda: fm.shift_target_velocity(vel, M1)(0.3, X)
_sv = fm.shift_target_velocity(vel, M1)
bad("shift_target_velocity", "v not callable", "v", lambda: fm.shift_target_velocity(None, M1))
bad("shift_target_velocity", "b rank 2", "b", lambda: fm.shift_target_velocity(vel, B0))
bad("shift_target_velocity", "b NaN", "b", lambda: fm.shift_target_velocity(vel, XNAN))
bad("shift_target_velocity", "b integer dtype", "b", lambda: fm.shift_target_velocity(vel, XINT))
bad("shift_target_velocity", "path not a path", "path",
    lambda: fm.shift_target_velocity(vel, M1, path="trig"))
_time_cases("shift_target_velocity", lambda t: _sv(t, X))
_point_cases("shift_target_velocity", lambda x: _sv(0.3, x), dim_names=("x", "b"))

VALID["scale_target_velocity"] = lambda: fm.scale_target_velocity(vel, 2.0)(0.3, X)
_cv = fm.scale_target_velocity(vel, 2.0)
bad("scale_target_velocity", "v not callable", "v", lambda: fm.scale_target_velocity(1, 2.0))
bad("scale_target_velocity", "c = 0", "c", lambda: fm.scale_target_velocity(vel, 0.0))
bad("scale_target_velocity", "c < 0", "c", lambda: fm.scale_target_velocity(vel, -1.0))
bad("scale_target_velocity", "c NaN", "c", lambda: fm.scale_target_velocity(vel, NAN))
bad("scale_target_velocity", "c inf", "c", lambda: fm.scale_target_velocity(vel, INF))
bad("scale_target_velocity", "c rank 1", "c", lambda: fm.scale_target_velocity(vel, M1))
bad("scale_target_velocity", "c integer dtype", "c",
    lambda: fm.scale_target_velocity(vel, np.array(2, np.int32)))
bad("scale_target_velocity", "path not a path", "path",
    lambda: fm.scale_target_velocity(vel, 2.0, path=vel))
_time_cases("scale_target_velocity", lambda t: _cv(t, X))
# the scale field is dimension-agnostic: no "mismatched d" case
bad("scale_target_velocity", "x rank 2", "x", lambda: _cv(0.3, B0))
bad("scale_target_velocity", "x integer dtype", "x", lambda: _cv(0.3, XINT))
bad("scale_target_velocity", "x NaN", "x", lambda: _cv(0.3, XNAN))

VALID["continuity_residual"] = lambda: fm.continuity_residual(logp, vel, 0.3, X)
bad("continuity_residual", "log_density not callable", "log_density",
    lambda: fm.continuity_residual(0.0, vel, 0.3, X))
bad("continuity_residual", "velocity not callable", "velocity",
    lambda: fm.continuity_residual(logp, None, 0.3, X))
bad("continuity_residual", "velocity wrong output shape", "velocity",
    lambda: fm.continuity_residual(logp, lambda t, x: jnp.concatenate([x, x]), 0.3, X))
_time_cases("continuity_residual", lambda t: fm.continuity_residual(logp, vel, t, X))
bad("continuity_residual", "x rank 2", "x", lambda: fm.continuity_residual(logp, vel, 0.3, B0))
bad("continuity_residual", "x integer dtype", "x",
    lambda: fm.continuity_residual(logp, vel, 0.3, XINT))
bad("continuity_residual", "x NaN", "x", lambda: fm.continuity_residual(logp, vel, 0.3, XNAN))


# --- ot: maps ------------------------------------------------------------------------------
VALID["AffineMap"] = lambda: fm.AffineMap(A2, M1)(X)
_T = fm.AffineMap(A2, M1)
bad("AffineMap", "A not square", "A", lambda: fm.AffineMap(np.ones((2, 3)), M1))
bad("AffineMap", "A rank 1", "A", lambda: fm.AffineMap(M1, M1))
bad("AffineMap", "b mismatched d", ("A", "b"), lambda: fm.AffineMap(A2, X3))
bad("AffineMap", "A integer dtype", "A", lambda: fm.AffineMap(np.eye(D, dtype=np.int32), M1))
bad("AffineMap", "b integer dtype", "b", lambda: fm.AffineMap(A2, XINT))
bad("AffineMap", "A NaN", "A", lambda: fm.AffineMap(np.full((D, D), NAN), M1))
bad("AffineMap", "b inf", "b", lambda: fm.AffineMap(A2, XINF))
bad("AffineMap", "call: x mismatched d", "x", lambda: _T(X3))
bad("AffineMap", "call: x rank 2", "x", lambda: _T(B0))
bad("AffineMap", "call: x integer dtype", "x", lambda: _T(XINT))
bad("AffineMap", "call: x NaN", "x", lambda: _T(XNAN))
bad("AffineMap", "compose: other not a map", "other", lambda: _T.compose(A2))
bad("AffineMap", "inverse: singular A", "A", lambda: fm.AffineMap(np.ones((D, D)), M1).inverse())

GOT = dict(mean0=M0, cov0=S0, mean1=M1, cov1=S1)
for _n in ("gaussian_ot_map", "gaussian_w2", "gaussian_w2_squared"):
    _f = getattr(fm, _n)
    VALID[_n] = lambda f=_f: f(**GOT)
    for m in ("mean0", "mean1"):
        bad(_n, f"{m} rank 2", m, lambda f=_f, m=m: f(**_with(GOT, **{m: M0[None]})))
        bad(_n, f"{m} mismatched d", ("mean0", "mean1", "cov0", "cov1"),
            lambda f=_f, m=m: f(**_with(GOT, **{m: X3})))
        bad(_n, f"{m} NaN", m, lambda f=_f, m=m: f(**_with(GOT, **{m: XNAN})))
        bad(_n, f"{m} integer dtype", m, lambda f=_f, m=m: f(**_with(GOT, **{m: XINT})))
    for c in ("cov0", "cov1"):
        bad(_n, f"{c} not PD", c, lambda f=_f, c=c: f(**_with(GOT, **{c: NONPD})))
        bad(_n, f"{c} not symmetric", c, lambda f=_f, c=c: f(**_with(GOT, **{c: NONSYM})))
        bad(_n, f"{c} mismatched d", c, lambda f=_f, c=c: f(**_with(GOT, **{c: np.eye(3)})))
        bad(_n, f"{c} inf", c,
            lambda f=_f, c=c: f(**_with(GOT, **{c: np.array([[INF, 0], [0, 1.0]])})))
        bad(_n, f"{c} integer dtype", c,
            lambda f=_f, c=c: f(**_with(GOT, **{c: np.eye(D, dtype=np.int32)})))
    bad(_n, "empty (d = 0)", ("mean0", "mean1", "cov0", "cov1"),
        lambda f=_f: f(np.zeros(0), np.zeros((0, 0)), np.zeros(0), np.zeros((0, 0))))

_xs = np.array([0.1, -1.0, 0.5, 2.0, 0.0])
VALID["monotone_map_1d"] = lambda: fm.monotone_map_1d(_xs, 2 * _xs + 1)(np.array([0.2]))
VALID["MonotoneMap1D"] = VALID["monotone_map_1d"]
_mm = fm.monotone_map_1d(_xs, 2 * _xs + 1)
bad("monotone_map_1d", "x_samples empty", "x_samples", lambda: fm.monotone_map_1d(np.zeros(0), _xs))
bad("monotone_map_1d", "y_samples empty", "y_samples",
    lambda: fm.monotone_map_1d(_xs, np.zeros((0, 1))))
bad("monotone_map_1d", "x_samples shape (n, 2)", "x_samples", lambda: fm.monotone_map_1d(B0, _xs))
bad("monotone_map_1d", "x_samples rank 3", "x_samples",
    lambda: fm.monotone_map_1d(np.zeros((2, 2, 1)), _xs))
bad("monotone_map_1d", "y_samples NaN", "y_samples",
    lambda: fm.monotone_map_1d(_xs, np.array([0.0, NAN])))
bad("monotone_map_1d", "x_samples inf", "x_samples",
    lambda: fm.monotone_map_1d(np.array([0.0, INF]), _xs))
bad("monotone_map_1d", "x_samples integer dtype", "x_samples",
    lambda: fm.monotone_map_1d(np.arange(4), _xs))
bad("monotone_map_1d", "neither x_samples nor cdf0", ("x_samples", "cdf0"),
    lambda: fm.monotone_map_1d(None, _xs))
bad("monotone_map_1d", "both y_samples and quantile1", ("y_samples", "quantile1"),
    lambda: fm.monotone_map_1d(_xs, _xs, quantile1=lambda u: u))
bad("monotone_map_1d", "cdf0 not callable", "cdf0", lambda: fm.monotone_map_1d(None, _xs, cdf0=1.0))
bad("monotone_map_1d", "quantile1 not callable", "quantile1",
    lambda: fm.monotone_map_1d(_xs, None, quantile1="ppf"))
bad("MonotoneMap1D", "call: x integer dtype", "x", lambda: _mm(np.array([1, 2])))
bad("MonotoneMap1D", "call: x NaN", "x", lambda: _mm(np.array([NAN])))

VALID["mccann_interpolation"] = lambda: (fm.mccann_interpolation(_T, 0.3)(X),
                                         fm.mccann_interpolation(lambda x: 2 * x, 0.3)(X))
bad("mccann_interpolation", "T not callable", "T", lambda: fm.mccann_interpolation(3.0, 0.5))
_time_cases("mccann_interpolation", lambda t: fm.mccann_interpolation(_T, t))
bad("mccann_interpolation", "callable T, t > 1", "t",
    lambda: fm.mccann_interpolation(lambda x: x, 1.5))
bad("mccann_interpolation", "callable T, x integer dtype", "x",
    lambda: fm.mccann_interpolation(lambda x: x, 0.5)(XINT))

VALID["mccann_velocity"] = lambda: fm.mccann_velocity(A2 @ A2.T, M1)(0.3, X)
VALID["McCannVelocity"] = VALID["mccann_velocity"]
_mv = fm.mccann_velocity(A2 @ A2.T, M1)
bad("mccann_velocity", "A with a negative eigenvalue", "A",
    lambda: fm.mccann_velocity(np.diag([-1.0, 1.0]), M1))
bad("mccann_velocity", "A NaN", "A", lambda: fm.mccann_velocity(np.full((D, D), NAN), M1))
bad("mccann_velocity", "A integer dtype", "A",
    lambda: fm.mccann_velocity(np.eye(D, dtype=np.int32), M1))
bad("mccann_velocity", "A rank 1", "A", lambda: fm.mccann_velocity(M1, M1))
bad("mccann_velocity", "b missing", "b", lambda: fm.mccann_velocity(S0))
bad("mccann_velocity", "b mismatched d", ("A", "b"), lambda: fm.mccann_velocity(S0, X3))
bad("mccann_velocity", "b inf", "b", lambda: fm.mccann_velocity(S0, XINF))
_time_cases("McCannVelocity", lambda t: _mv(t, X))
_point_cases("McCannVelocity", lambda x: _mv(0.3, x))


# --- metrics: empirical W2 ------------------------------------------------------------------------
for _n in ("w2", "w2_result", "w2_squared"):
    _f = getattr(fm, _n)
    VALID[_n] = lambda f=_f: f(B0, B1)
    bad(_n, "x rank 1", "x", lambda f=_f: f(M1, B1))
    bad(_n, "y rank 3", "y", lambda f=_f: f(B0, B1[None]))
    bad(_n, "mismatched d", ("x", "y"), lambda f=_f: f(B0, np.zeros((4, 3))))
    bad(_n, "x empty", "x", lambda f=_f: f(EMPTY, B1))
    bad(_n, "y empty", "y", lambda f=_f: f(B0, EMPTY))
    bad(_n, "x NaN", "x", lambda f=_f: f(BNAN, B1))
    bad(_n, "y inf", "y", lambda f=_f: f(B0, BINF))
    bad(_n, "x integer dtype", "x", lambda f=_f: f(BINT, B1))
    bad(_n, "unknown method", "method", lambda f=_f: f(B0, B1, method="emd"))
    bad(_n, "epsilon < 0", "epsilon", lambda f=_f: f(B0, B1, method="sinkhorn", epsilon=-1.0))
    bad(_n, "epsilon NaN", "epsilon", lambda f=_f: f(B0, B1, method="sinkhorn", epsilon=NAN))
    bad(_n, "weights_x negative", "weights_x",
        lambda f=_f: f(B0, B1, method="sinkhorn", weights_x=np.array([-0.5, 0.5, 0.5, 0.5])))
    bad(_n, "weights_y not normalised", "weights_y",
        lambda f=_f: f(B0, B1, method="sinkhorn", weights_y=np.full(4, 0.5)))
    bad(_n, "weights_x wrong n", "weights_x",
        lambda f=_f: f(B0, B1, method="sinkhorn", weights_x=W))
    bad(_n, "weights_x negative (exact)", "weights_x",
        lambda f=_f: f(B0, B1, method="exact", weights_x=np.array([-0.5, 0.5, 0.5, 0.5])))
    bad(_n, "exact_max_size = 0", "exact_max_size", lambda f=_f: f(B0, B1, exact_max_size=0))
    bad(_n, "max_iterations = 0", "max_iterations",
        lambda f=_f: f(B0, B1, method="sinkhorn", max_iterations=0))
    bad(_n, "threshold < 0", "threshold", lambda f=_f: f(B0, B1, method="sinkhorn", threshold=-1.0))
    bad(_n, "relative_epsilon = 0", "relative_epsilon",
        lambda f=_f: f(B0, B1, method="sinkhorn", relative_epsilon=0.0))
bad("w2", "unknown on_failure", "on_failure", lambda: fm.w2(B0, B1, on_failure="ignore"))


# --- flows ---------------------------------------------------------------------------------
_FAST = dict(solver="euler", steps=4)


def _flow_cases(name, call):
    VALID[name] = lambda: call(vel, B0, **_FAST)
    bad(name, "velocity not callable", "velocity", lambda: call(3.0, B0, **_FAST))
    bad(name, "velocity wrong output shape", "velocity",
        lambda: call(lambda t, x: x[:1], B0, **_FAST))
    bad(name, "velocity wrong output dtype", "velocity",
        lambda: call(lambda t, x: x.astype(jnp.float32), B0, **_FAST))
    x_name = "x1" if name == "log_likelihood" else "x0"
    bad(name, f"{x_name} rank 1", x_name, lambda: call(vel, X, **_FAST))
    bad(name, f"{x_name} empty", x_name, lambda: call(vel, EMPTY, **_FAST))
    bad(name, f"{x_name} NaN", x_name, lambda: call(vel, BNAN, **_FAST))
    bad(name, f"{x_name} inf", x_name, lambda: call(vel, BINF, **_FAST))
    bad(name, f"{x_name} integer dtype", x_name, lambda: call(vel, BINT, **_FAST))
    bad(name, "t0 == t1", ("t0", "t1"), lambda: call(vel, B0, t1=0.0, **_FAST))
    bad(name, "t0 NaN", "t0", lambda: call(vel, B0, t0=NAN, **_FAST))
    bad(name, "t1 rank 1", "t1", lambda: call(vel, B0, t1=np.ones(1), **_FAST))
    bad(name, "unknown solver", "solver", lambda: call(vel, B0, solver="rk45"))
    bad(name, "steps = 0", "steps", lambda: call(vel, B0, solver="euler", steps=0))
    bad(name, "fixed-step solver without steps", "steps", lambda: call(vel, B0, solver="euler"))
    bad(name, "max_steps = 0", "max_steps", lambda: call(vel, B0, max_steps=0))


_flow_cases("integrate", fm.integrate)
_flow_cases("straightness", fm.straightness)
_flow_cases("kinetic_energy", fm.kinetic_energy)
_flow_cases("log_likelihood", lambda v, x, **kw: fm.log_likelihood(v, x, logp0, **kw))
bad("integrate", "saveat count 1", "saveat", lambda: fm.integrate(vel, B0, saveat=1, **_FAST))
bad("integrate", "saveat outside [t0, t1]", "saveat",
    lambda: fm.integrate(vel, B0, saveat=np.array([0.0, 2.0]), **_FAST))
bad("integrate", "saveat not ordered", "saveat",
    lambda: fm.integrate(vel, B0, saveat=np.array([0.5, 0.1]), **_FAST))
bad("log_likelihood", "log_density0 not callable", "log_density0",
    lambda: fm.log_likelihood(vel, B0, 3.0, **_FAST))
bad("log_likelihood", "log_density0 missing and no source", "log_density0",
    lambda: fm.log_likelihood(vel, B0, **_FAST))
bad("log_likelihood", "log_density0 returns a vector", "log_density0",
    lambda: fm.log_likelihood(vel, B0, lambda x: x, **_FAST))
bad("log_likelihood", "unknown divergence", "divergence",
    lambda: fm.log_likelihood(vel, B0, logp0, divergence="trace", **_FAST))
bad("log_likelihood", "hutchinson without key", "key",
    lambda: fm.log_likelihood(vel, B0, logp0, divergence="hutchinson", **_FAST))
bad("log_likelihood", "n_probes = 0", "n_probes",
    lambda: fm.log_likelihood(vel, B0, logp0, divergence="hutchinson", key=KEY, n_probes=0,
                              **_FAST))
bad("log_likelihood", "unknown probe", "probe",
    lambda: fm.log_likelihood(vel, B0, logp0, divergence="hutchinson", key=KEY, probe="sphere",
                              **_FAST))

VALID["normalized_path_energy"] = lambda: fm.normalized_path_energy(1.0, 0.5)
bad("normalized_path_energy", "w2_squared = 0", "w2_squared",
    lambda: fm.normalized_path_energy(1.0, 0.0))
bad("normalized_path_energy", "w2_squared < 0", "w2_squared",
    lambda: fm.normalized_path_energy(1.0, -1.0))
bad("normalized_path_energy", "w2_squared NaN", "w2_squared",
    lambda: fm.normalized_path_energy(1.0, NAN))
bad("normalized_path_energy", "energy rank 1", "energy",
    lambda: fm.normalized_path_energy(np.ones(2), 1.0))
bad("normalized_path_energy", "energy inf", "energy", lambda: fm.normalized_path_energy(INF, 1.0))
bad("normalized_path_energy", "energy integer dtype", "energy",
    lambda: fm.normalized_path_energy(np.array(1, np.int32), 1.0))


# --- couplings -----------------------------------------------------------------------------
def _pair_cases(name, call):
    bad(name, "x0 rank 1", "x0", lambda: call(X, B1))
    bad(name, "x1 rank 3", "x1", lambda: call(B0, B1[None]))
    bad(name, "mismatched n", ("x0", "x1"), lambda: call(B0, B1[:3]))
    bad(name, "mismatched d", ("x0", "x1"), lambda: call(B0, np.zeros((4, 3))))
    bad(name, "mismatched dtype", ("x0", "x1"), lambda: call(B0.astype(np.float32), B1))
    bad(name, "x0 empty", "x0", lambda: call(EMPTY, EMPTY))
    bad(name, "x0 NaN", "x0", lambda: call(BNAN, B1))
    bad(name, "x1 inf", "x1", lambda: call(B0, BINF))
    bad(name, "x1 integer dtype", "x1", lambda: call(B0, BINT))


VALID["exact_ot_permutation"] = lambda: fm.exact_ot_permutation(B0, B1)
_pair_cases("exact_ot_permutation", fm.exact_ot_permutation)
bad("exact_ot_permutation", "unknown solver", "solver",
    lambda: fm.exact_ot_permutation(B0, B1, solver="lp"))
bad("exact_ot_permutation", "options for scipy", ("solver", "scipy"),
    lambda: fm.exact_ot_permutation(B0, B1, solver="scipy", eps_final=0.1))

for _cname, _make in (("couplings.Independent", fcp.Independent),
                      ("couplings.ExactOT", fcp.ExactOT), ("couplings.Sinkhorn", fcp.Sinkhorn),
                      ("couplings.Paired", fcp.Paired)):
    VALID[_cname] = lambda m=_make: m()(KEY, B0, B1)
    bad(_cname, "key not a key", "key", lambda m=_make: m()(0, B0, B1))
    bad(_cname, "x0 rank 1", "x0", lambda m=_make: m()(KEY, X, B1))
    bad(_cname, "mismatched n", ("x0", "x1"), lambda m=_make: m()(KEY, B0, B1[:3]))
    bad(_cname, "labels float", "labels", lambda m=_make: m()(KEY, B0, B1, labels=W))
_pair_cases("couplings.ExactOT", lambda a, b: fcp.ExactOT()(KEY, a, b))
bad("couplings.ExactOT", "unknown solver", "solver", lambda: fcp.ExactOT("x"))
bad("couplings.ExactOT", "unknown shard", "shard", lambda: fcp.ExactOT(shard="both"))
bad("couplings.ExactOT", "host_workers < 0", "host_workers", lambda: fcp.ExactOT(host_workers=-1))
bad("couplings.ExactOT", "options for pot", ("solver", "pot"),
    lambda: fcp.ExactOT("pot", eps_final=0.1))
bad("couplings.ExactOT", "labels wrong shape", "labels",
    lambda: fcp.ExactOT()(KEY, B0, B1, labels=np.zeros(3, np.int32)))
bad("couplings.Sinkhorn", "epsilon < 0", "epsilon", lambda: fcp.Sinkhorn(-0.1))
bad("couplings.Sinkhorn", "epsilon NaN", "epsilon", lambda: fcp.Sinkhorn(NAN))
bad("couplings.Sinkhorn", "unknown relative_epsilon", "relative_epsilon",
    lambda: fcp.Sinkhorn(relative_epsilon="max"))
bad("couplings.Sinkhorn", "max_iterations = 0", "max_iterations",
    lambda: fcp.Sinkhorn(max_iterations=0))
bad("couplings.Sinkhorn", "x1 NaN", "x1", lambda: fcp.Sinkhorn()(KEY, B0, BNAN))
_BEN = -np.sum((B0[:, None, :] - B1[None, :, :]) ** 2, axis=-1)
VALID["auction_assignment"] = lambda: fm.auction_assignment(_BEN)
bad("auction_assignment", "not square", "benefit", lambda: fm.auction_assignment(_BEN[:3]))
bad("auction_assignment", "empty", "benefit", lambda: fm.auction_assignment(np.zeros((0, 0))))
bad("auction_assignment", "rank 1", "benefit", lambda: fm.auction_assignment(M1))
bad("auction_assignment", "integer dtype", "benefit",
    lambda: fm.auction_assignment(np.zeros((3, 3), np.int32)))
bad("auction_assignment", "NaN entry", "benefit",
    lambda: fm.auction_assignment(np.where(np.eye(4) > 0, NAN, _BEN)))
bad("auction_assignment", "scaling <= 1", "scaling",
    lambda: fm.auction_assignment(_BEN, scaling=1.0))
bad("auction_assignment", "eps_final < 0", "eps_final",
    lambda: fm.auction_assignment(_BEN, eps_final=-1.0))
bad("auction_assignment", "max_iterations = 0", "max_iterations",
    lambda: fm.auction_assignment(_BEN, max_iterations=0))


# --- loss, train step, metrics ------------------------------------------------------------
_T4 = np.array([0.1, 0.4, 0.6, 0.9])
VALID["flow_matching_loss"] = lambda: fm.flow_matching_loss(vel, _T4, B0, B1)
bad("flow_matching_loss", "velocity not callable", "velocity",
    lambda: fm.flow_matching_loss(3.0, _T4, B0, B1))
bad("flow_matching_loss", "t wrong length", "t", lambda: fm.flow_matching_loss(vel, _T4[:3], B0, B1))
bad("flow_matching_loss", "t integer dtype", "t",
    lambda: fm.flow_matching_loss(vel, np.arange(4), B0, B1))
bad("flow_matching_loss", "x1 mismatched shape", ("x0", "x1"),
    lambda: fm.flow_matching_loss(vel, _T4, B0, B1[:3]))
bad("flow_matching_loss", "x0 rank 1", "x0", lambda: fm.flow_matching_loss(vel, _T4[:2], X, X))
bad("flow_matching_loss", "sigma > 0 without noise", "noise",
    lambda: fm.flow_matching_loss(vel, _T4, B0, B1, sigma=0.1))
bad("flow_matching_loss", "noise without sigma", "noise",
    lambda: fm.flow_matching_loss(vel, _T4, B0, B1, noise=B0))
bad("flow_matching_loss", "noise wrong shape", "noise",
    lambda: fm.flow_matching_loss(vel, _T4, B0, B1, sigma=0.1, noise=B0[:2]))
bad("flow_matching_loss", "sigma < 0", "sigma",
    lambda: fm.flow_matching_loss(vel, _T4, B0, B1, sigma=-1.0))
bad("flow_matching_loss", "path not a path", "path",
    lambda: fm.flow_matching_loss(vel, _T4, B0, B1, path="linear"))
bad("flow_matching_loss", "velocity returns the wrong shape", "velocity",
    lambda: fm.flow_matching_loss(lambda t, x: x[:1], _T4, B0, B1))

_STEP_MODEL = fnn.VelocityMLP(D, width=4, depth=1, rngs=nnx.Rngs(0))
VALID["make_train_step"] = lambda: fm.make_train_step(_STEP_MODEL).step(
    fm.make_train_step(_STEP_MODEL).init(_STEP_MODEL), KEY, B0, B1)[1]["loss"]
bad("make_train_step", "model not a module", "model", lambda: fm.make_train_step(vel))
bad("make_train_step", "optimizer not optax", "optimizer",
    lambda: fm.make_train_step(_STEP_MODEL, "adam"))
bad("make_train_step", "ema_decay = 1", "ema_decay",
    lambda: fm.make_train_step(_STEP_MODEL, ema_decay=1.0))
bad("make_train_step", "sigma NaN", "sigma", lambda: fm.make_train_step(_STEP_MODEL, sigma=NAN))
bad("make_train_step", "unknown coupling", "coupling",
    lambda: fm.make_train_step(_STEP_MODEL, coupling="exact"))
bad("make_train_step", "init with another model", "model",
    lambda: fm.make_train_step(_STEP_MODEL).init(fnn.VelocityMLP(3, rngs=nnx.Rngs(0))))
bad("make_train_step", "step key not a key", "key",
    lambda: fm.make_train_step(_STEP_MODEL).step(
        fm.make_train_step(_STEP_MODEL).init(_STEP_MODEL), 0, B0, B1))
bad("make_train_step", "step state not a state", "state",
    lambda: fm.make_train_step(_STEP_MODEL).step({}, KEY, B0, B1))

VALID["w2_floor"] = lambda: fm.w2_floor(fds.standard_normal(D), KEY, 8, reps=2)
bad("w2_floor", "key not a key", "key", lambda: fm.w2_floor(fds.standard_normal(D), 1, 8))
bad("w2_floor", "n = 0", "n", lambda: fm.w2_floor(fds.standard_normal(D), KEY, 0))
bad("w2_floor", "reps = 0", "reps", lambda: fm.w2_floor(fds.standard_normal(D), KEY, 8, reps=0))

VALID["jit"] = lambda: fm.jit(lambda x: x * 2.0)(B0)
bad("jit", "traced t > 1 reads as a ValueError naming t", "t",
    lambda: fm.jit(lambda t: fm.gaussian_velocity(t, X, mean0=M0, cov0=S0, mean1=M1,
                                                  cov1=S1))(jnp.asarray(1.5)))


# --- train (argument validation only: nothing here compiles or trains) ---------------------
_X0 = np.random.default_rng(0).normal(size=(8, D))
_X1 = _X0 + 2.0


def _fit(**over):
    kw = _with(dict(steps=2, batch_size=4, steps_per_call=1), **over)
    a = kw.pop("sample_x0", _X0)
    b = kw.pop("sample_x1", _X1)
    return fm.fit(KEY, a, b, **kw)


bad("fit", "steps = 0", "steps", lambda: _fit(steps=0))
bad("fit", "batch_size = 0", "batch_size", lambda: _fit(batch_size=0))
bad("fit", "batch_size float", "batch_size", lambda: _fit(batch_size=4.5))
bad("fit", "steps_per_call = 0", "steps_per_call", lambda: _fit(steps_per_call=0))
bad("fit", "unknown coupling", "coupling", lambda: _fit(coupling="exact"))
bad("fit", "path not a path", "path", lambda: _fit(path="linear"))
bad("fit", "ema_decay = 1", "ema_decay", lambda: _fit(ema_decay=1.0))
bad("fit", "sigma < 0", "sigma", lambda: _fit(sigma=-0.1))
bad("fit", "sigma NaN", "sigma", lambda: _fit(sigma=NAN))
bad("fit", "checkpoint_every = 0", "checkpoint_every", lambda: _fit(checkpoint_every=0))
bad("fit", "checkpoint_dir is a file", "checkpoint_dir", lambda: _fit(checkpoint_dir=_NOT_A_DIR))
bad("fit", "key not a key", "key", lambda: fm.fit(0, _X0, _X1, steps=2, batch_size=4))
bad("fit", "coupling not callable", "coupling", lambda: _fit(coupling=3))
bad("fit", "sample_x0 ignores its key (NumPy)", "sample_x0",
    lambda: _fit(sample_x0=lambda k, n: np.random.randn(n, D)))
bad("fit", "sample_x1 ignores its key (fixed slice)", "sample_x1",
    lambda: _fit(sample_x1=lambda k, n: jnp.asarray(_X1[:n])))
bad("fit", "labels float", "labels", lambda: _fit(labels=np.ones(8)))
bad("fit", "labels wrong length", "labels", lambda: _fit(labels=np.zeros(5, np.int32)))
bad("fit", "labels with a sampler", "labels",
    lambda: _fit(sample_x1=fds.standard_normal(D), labels=np.zeros(8, np.int32)))
bad("fit", "paired coupling on samplers", "Paired",
    lambda: _fit(sample_x0=lambda k, n: jax.random.normal(k, (n, D), jnp.float64),
                 coupling="paired"))
bad("fit", "label_dropout > 1", "label_dropout", lambda: _fit(label_dropout=1.5))
bad("fit", "label_dropout without a null label", "label_dropout",
    lambda: _fit(label_dropout=0.1))
bad("fit", "image points without a model", "model",
    lambda: _fit(sample_x0=np.zeros((8, 2, 2, 1)), sample_x1=np.ones((8, 2, 2, 1))))
bad("fit", "mismatched d", ("sample_x0", "sample_x1"), lambda: _fit(sample_x1=np.zeros((8, 3))))
bad("fit", "mismatched dtype", ("sample_x0", "sample_x1"),
    lambda: _fit(sample_x1=_X1.astype(np.float32)))
bad("fit", "sample_x0 empty", "sample_x0", lambda: _fit(sample_x0=EMPTY))
bad("fit", "sample_x0 rank 1", "sample_x0", lambda: _fit(sample_x0=X))
bad("fit", "sample_x0 NaN", "sample_x0", lambda: _fit(sample_x0=BNAN))
bad("fit", "sample_x1 integer dtype", "sample_x1", lambda: _fit(sample_x1=BINT))
bad("fit", "sample_x1 sampler wrong shape", "sample_x1",
    lambda: _fit(sample_x1=lambda k, n: jnp.zeros((n,))))
bad("fit", "sample_x1 sampler integer dtype", "sample_x1",
    lambda: _fit(sample_x1=lambda k, n: jnp.zeros((n, D), jnp.int32)))

VALID["sample"] = lambda: fm.sample(vel, KEY, 4, dim=D, steps=2)
bad("sample", "key not a key", "key", lambda: fm.sample(vel, 0, 4, dim=D, steps=2))
bad("sample", "sample_x0 sampler wrong count", ("sample_x0", "n"),
    lambda: fm.sample(vel, KEY, 4, sample_x0=lambda k, n: jnp.zeros((n - 1, D)), steps=2))
bad("sample", "n = 0", "n", lambda: fm.sample(vel, KEY, 0, dim=D, steps=2))
bad("sample", "n float", "n", lambda: fm.sample(vel, KEY, 2.5, dim=D, steps=2))
bad("sample", "dim missing", "dim", lambda: fm.sample(vel, KEY, 4, steps=2))
bad("sample", "dim = 0", "dim", lambda: fm.sample(vel, KEY, 4, dim=0, steps=2))
bad("sample", "sample_x0 wrong count", ("sample_x0", "n"),
    lambda: fm.sample(vel, KEY, 3, sample_x0=B0, steps=2))
bad("sample", "sample_x0 NaN", "sample_x0", lambda: fm.sample(vel, KEY, 4, sample_x0=BNAN, steps=2))
bad("sample", "sample_x0 integer dtype", "sample_x0",
    lambda: fm.sample(vel, KEY, 4, sample_x0=BINT, steps=2))
bad("sample", "steps = 0", "steps", lambda: fm.sample(vel, KEY, 4, dim=D, steps=0))
bad("sample", "model not callable", ("model", "velocity"),
    lambda: fm.sample(None, KEY, 4, dim=D, steps=2))
bad("sample", "dtype integer", ("dtype", "x0"),
    lambda: fm.sample(vel, KEY, 4, dim=D, steps=2, dtype=jnp.int32))

_RM = fnn.VelocityMLP(D, width=4, depth=1, rngs=nnx.Rngs(0))
bad("reflow", "key not a key", "key", lambda: fm.reflow(0, _RM, _X0, n_pairs=8, steps=2,
                                                       batch_size=4))
bad("reflow", "model not a module", "model",
    lambda: fm.reflow(KEY, vel, _X0, n_pairs=8, steps=2, batch_size=4))
bad("reflow", "n_pairs = 0", "n_pairs",
    lambda: fm.reflow(KEY, _RM, _X0, n_pairs=0, steps=2, batch_size=4))
bad("reflow", "a coupling (reflow keeps its pairs)", "coupling",
    lambda: fm.reflow(KEY, _RM, _X0, n_pairs=8, steps=2, batch_size=4, coupling="ot"))
bad("reflow", "sample_x0 wrong count", ("sample_x0", "n"),
    lambda: fm.reflow(KEY, _RM, _X0, n_pairs=5, steps=2, batch_size=4))

bad("restore", "checkpoint_dir missing", "checkpoint_dir", lambda: fm.restore(_MISSING_DIR))
bad("restore", "checkpoint_dir is a file", "checkpoint_dir", lambda: fm.restore(_NOT_A_DIR))

VALID["make_mesh"] = lambda: fm.make_mesh()
bad("make_mesh", "devices empty", "devices", lambda: fm.make_mesh([]))

VALID["global_batch"] = lambda: fm.global_batch(B0)
bad("global_batch", "local is a scalar (no batch axis)", "local",
    lambda: fm.global_batch(np.float64(1.0)))


# --- nn ------------------------------------------------------------------------------------
def _mlp(**over):
    return fnn.VelocityMLP(**_with(dict(dim=D, width=4, depth=1, rngs=nnx.Rngs(0)), **over))


_model = _mlp()
VALID["nn.VelocityMLP"] = lambda: _mlp()(0.3, X)
for _arg, _val in (("dim", 0), ("width", -1), ("depth", 1.5), ("num_frequencies", 0),
                   ("activation", "swish2"), ("activation", 3), ("init", "xavier"),
                   ("param_dtype", jnp.int32), ("time_embedding", "sinusoid")):
    bad("nn.VelocityMLP", f"{_arg}={_val!r}", _arg, lambda a=_arg, v=_val: _mlp(**{a: v}))
bad("nn.VelocityMLP", "call: x integer dtype", "x", lambda: _model(0.3, XINT))
bad("nn.VelocityMLP", "call: x mismatched d", "x", lambda: _model(0.3, X3))
bad("nn.VelocityMLP", "call: x rank 3", "x", lambda: _model(0.3, B0[None]))
bad("nn.VelocityMLP", "call: t integer dtype", "t", lambda: _model(np.array(0, np.int32), X))
bad("nn.VelocityMLP", "call: t rank 1 for one point", "t", lambda: _model(np.ones(2), X))
bad("nn.VelocityMLP", "call: t wrong batch shape", "t", lambda: _model(np.ones(3), B0))

VALID["nn.velocity_field"] = lambda: fnn.velocity_field(*nnx.split(_model))(0.3, X)
bad("nn.velocity_field", "graphdef not a graphdef", "graphdef",
    lambda: fnn.velocity_field(None, nnx.split(_model)[1]))
bad("nn.velocity_field", "call: x mismatched d", "x",
    lambda: fnn.velocity_field(*nnx.split(_model))(0.3, X3))

VALID["nn.num_params"] = lambda: fnn.num_params(_model)
bad("nn.num_params", "model not a module", "model", lambda: fnn.num_params(3))

VALID["nn.time_features"] = lambda: fnn.time_features(np.array(0.5), "fourier", 2)
bad("nn.time_features", "unknown embedding", "embedding",
    lambda: fnn.time_features(np.array(0.5), "sinusoid"))
bad("nn.time_features", "num_frequencies = 0", "num_frequencies",
    lambda: fnn.time_features(np.array(0.5), "fourier", 0))
bad("nn.time_features", "t integer dtype", "t", lambda: fnn.time_features(np.array(1), "concat"))


def _unet(**over):
    return fnn.UNet(**_with(dict(image_size=8, channels=8, channel_mult=(1,), num_groups=4,
                                 mid_attention=False, num_classes=3, rngs=nnx.Rngs(0)), **over))


_unet_model = _unet()
_IMG, _IMGS = np.zeros((8, 8, 1)), np.zeros((2, 8, 8, 1))
VALID["nn.UNet"] = lambda: (_unet_model(0.3, _IMG, 1), _unet_model(0.3, _IMG))
for _arg, _val in (("image_size", 0), ("in_channels", 0), ("channels", 7), ("channels", 2.5),
                   ("channel_mult", ()), ("channel_mult", (1, 0)), ("num_res_blocks", 0),
                   ("attention_resolutions", (3,)), ("num_heads", 0), ("num_groups", 3),
                   ("num_classes", 0), ("num_classes", 2.0), ("embed_dim", 0), ("dropout", 1.5),
                   ("mid_attention", "yes"), ("param_dtype", jnp.int32), ("dtype", jnp.int32)):
    bad("nn.UNet", f"{_arg}={_val!r}", _arg, lambda a=_arg, v=_val: _unet(**{a: v}))
bad("nn.UNet", "num_heads does not divide the attention width", "num_heads",
    lambda: _unet(num_heads=3, mid_attention=True))
bad("nn.UNet", "image_size too odd for the levels", ("image_size", "channel_mult"),
    lambda: _unet(image_size=28, channel_mult=(1, 2, 2, 2)))
bad("nn.UNet", "call: x integer dtype", "x", lambda: _unet_model(0.3, _IMG.astype(np.int32)))
bad("nn.UNet", "call: x wrong image size", "x", lambda: _unet_model(0.3, np.zeros((7, 7, 1))))
bad("nn.UNet", "call: x wrong channels", "x", lambda: _unet_model(0.3, np.zeros((8, 8, 3))))
bad("nn.UNet", "call: x rank 2", "x", lambda: _unet_model(0.3, np.zeros((8, 8))))
bad("nn.UNet", "call: t integer dtype", "t", lambda: _unet_model(np.array(0, np.int32), _IMG))
bad("nn.UNet", "call: t rank 1 for one image", "t", lambda: _unet_model(np.ones(2), _IMG))
bad("nn.UNet", "call: t wrong batch shape", "t", lambda: _unet_model(np.ones(3), _IMGS))
bad("nn.UNet", "call: y float", "y", lambda: _unet_model(0.3, _IMG, 1.0))
bad("nn.UNet", "call: y float array", "y", lambda: _unet_model(0.3, _IMGS, np.array([0.0, 1.0])))
bad("nn.UNet", "call: y out of range", "y", lambda: _unet_model(0.3, _IMG, 4))
bad("nn.UNet", "call: y negative", "y", lambda: _unet_model(0.3, _IMGS, np.array([0, -1])))
bad("nn.UNet", "call: y wrong batch shape", "y", lambda: _unet_model(0.3, _IMGS, np.zeros(3, int)))
bad("nn.UNet", "call: y to an unconditional net", "y",
    lambda: _unet(num_classes=None)(0.3, _IMG, 1))

VALID["nn.sinusoidal_embedding"] = lambda: fnn.sinusoidal_embedding(np.array([0.0, 1.0]), 4)
bad("nn.sinusoidal_embedding", "dim odd", "dim",
    lambda: fnn.sinusoidal_embedding(np.array(0.5), 3))
bad("nn.sinusoidal_embedding", "dim = 0", "dim",
    lambda: fnn.sinusoidal_embedding(np.array(0.5), 0))
bad("nn.sinusoidal_embedding", "t integer dtype", "t",
    lambda: fnn.sinusoidal_embedding(np.array(1), 4))


# --- datasets ------------------------------------------------------------------------------
for _n in ("eight_gaussians", "moons", "scurve", "circles", "checkerboard", "spirals"):
    _f = getattr(fds, _n)
    VALID["datasets." + _n] = lambda f=_f: f(KEY, 4)
    bad("datasets." + _n, "n = 0", "n", lambda f=_f: f(KEY, 0))
    bad("datasets." + _n, "n < 0", "n", lambda f=_f: f(KEY, -3))
    bad("datasets." + _n, "n float", "n", lambda f=_f: f(KEY, 2.5))
    bad("datasets." + _n, "dtype integer", "dtype", lambda f=_f: f(KEY, 4, jnp.int32))
    bad("datasets." + _n, "key not a key", "key", lambda f=_f: f(0, 4))
VALID["datasets.standard_normal"] = lambda: fds.standard_normal(3)(KEY, 4)
bad("datasets.standard_normal", "d = 0", "d", lambda: fds.standard_normal(0))
bad("datasets.standard_normal", "sampler: n = 0", "n", lambda: fds.standard_normal(2)(KEY, 0))
bad("datasets.standard_normal", "sampler: dtype integer", "dtype",
    lambda: fds.standard_normal(2)(KEY, 3, jnp.int32))
VALID["datasets.digits"] = lambda: fds.digits()
bad("datasets.digits", "dtype integer", "dtype", lambda: fds.digits(jnp.int32))
for _n in ("digits_images", "mnist5k"):
    _f = getattr(fds, _n)
    VALID["datasets." + _n] = lambda f=_f: f("test")
    bad("datasets." + _n, "unknown split", "split", lambda f=_f: f("validation"))
    bad("datasets." + _n, "split not a string", "split", lambda f=_f: f(0))
    bad("datasets." + _n, "dtype integer", "dtype", lambda f=_f: f("train", jnp.int32))
VALID["datasets.split"] = lambda: fds.split(B0, 0.25)
bad("datasets.split", "test_fraction = 0", "test_fraction", lambda: fds.split(B0, 0.0))
bad("datasets.split", "test_fraction > 1", "test_fraction", lambda: fds.split(B0, 1.5))
bad("datasets.split", "test_fraction leaves an empty split", "test_fraction",
    lambda: fds.split(B0, 0.05))
bad("datasets.split", "data empty", "data", lambda: fds.split(EMPTY, 0.5))
bad("datasets.split", "data scalar", "data", lambda: fds.split(np.float64(1.0), 0.5))
VALID["datasets.get"] = lambda: fds.get("N->moons")[1](KEY, 3)
bad("datasets.get", "unknown name", "name", lambda: fds.get("swissroll"))


# ----------------------------------------------------------------------------------------
# Exemptions: public names that take no user data (types, constants) or cannot run here
# ----------------------------------------------------------------------------------------
EXEMPT = {
    # constants
    "couplings.COUPLINGS": "constant tuple of coupling names",
    "couplings.OT_SOLVERS": "constant tuple of solver names",
    "couplings.Coupling": "abstract base class (its subclasses have entries)",
    "EXACT_MAX_SIZE": "integer constant",
    "nn.ACTIVATIONS": "constant dict",
    "datasets.TASKS": "constant dict",
    "datasets.SAMPLERS": "constant dict",
    # result / state containers: built by the library, not from user input
    "FlowSolution": "NamedTuple returned by integrate",
    "Straightness": "NamedTuple returned by straightness",
    "FlowResults": "diffrax's result enum, extended",
    "FlowError": "exception type",
    "TrainStep": "NamedTuple (init, step) returned by make_train_step",
    "ReflowHistory": "NamedTuple returned by reflow",
    "datasets.StandardNormal": "sampler class; covered through datasets.standard_normal",
    "W2Result": "result container returned by w2_result",
    "History": "NamedTuple returned by fit",
    "TrainState": "NamedTuple of training state",
    "NonFiniteLossError": "exception type",
    "Preempted": "exception type",
    "RK4": "a diffrax solver class (Butcher tableau, no user data); exercised by test_flows",
    # cannot be called inside the test process
    "initialize_distributed": "joins a multi-process job (global, irreversible state); "
                              "covered by tests/test_sharding.py",
}
# valid calls we do not make here (they train or need a checkpoint; test_train.py does)
NO_VALID_CALL = {"fit": "trains (compiles); tests/test_train.py",
                 "restore": "needs a checkpoint; tests/test_train.py",
                 "reflow": "trains (compiles); tests/test_reflow.py"}

MIN_CASES = 400


def _public_names() -> list[str]:
    names = list(fm.__all__)
    names += ["nn." + n for n in fnn.__all__]
    names += ["datasets." + n for n in fds.__all__]
    names += ["couplings." + n for n in fcp.__all__ if n not in fm.__all__]
    return names


CASES = [(name, label, args, thunk) for name, rows in BAD.items() for label, args, thunk in rows]


def _names_argument(msg: str, arg: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(arg)}(?![A-Za-z0-9_])", msg) is not None


def _leaves_finite(out) -> bool:
    for leaf in jax.tree_util.tree_leaves(out):
        if isinstance(leaf, jax.Array | np.ndarray) and jnp.issubdtype(leaf.dtype, jnp.inexact):
            if not bool(np.all(np.isfinite(np.asarray(leaf)))):
                return False
    return True


# ----------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------
def test_every_public_name_is_covered():
    """A new public name cannot escape: it needs a table entry or a justified exemption."""
    missing = [n for n in _public_names()
               if n not in EXEMPT and n not in BAD and n not in VALID]
    assert not missing, f"public names without bad-input cases or exemption: {missing}"
    stale = [n for n in list(BAD) + list(VALID) + list(EXEMPT) if n not in _public_names()]
    assert not stale, f"table entries for names that are no longer public: {stale}"
    callables = [n for n in _public_names() if n not in EXEMPT]
    no_bad = [n for n in callables if n not in BAD]
    assert not no_bad, f"public callables without a bad-input case: {no_bad}"
    no_valid = [n for n in callables if n not in VALID and n not in NO_VALID_CALL]
    assert not no_valid, f"public callables without a valid call: {no_valid}"


def test_case_count(capsys):
    n_fun = len({c[0] for c in CASES})
    with capsys.disabled():
        print(f"\n[test_bad_inputs] {len(CASES)} (function, bad input) pairs over {n_fun} "
              f"public callables; {len(VALID)} valid calls; {len(EXEMPT)} exempt names")
    assert len(CASES) >= MIN_CASES
    assert n_fun >= 50


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_call(name):
    """The valid call of each entry succeeds and returns finite numbers (so the bad
    variants below fail because of the corruption, not because the base call is broken)."""
    out = VALID[name]()
    assert _leaves_finite(out), f"{name}: valid call returned non-finite values"


@pytest.mark.parametrize("name,label,args,thunk", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_bad_input_raises_naming_argument(name, label, args, thunk):
    try:
        out = thunk()
    except (ValueError, TypeError) as e:
        msg = str(e)
        assert any(_names_argument(msg, a) for a in args), (
            f"{name} [{label}]: {type(e).__name__} does not name any of {args}: {msg!r}")
        return
    except Exception as e:  # noqa: BLE001 - we report which exception type leaked
        pytest.fail(f"{name} [{label}]: raised {type(e).__name__} instead of ValueError naming "
                    f"{args}: {str(e)[:300]!r}")
    finite = _leaves_finite(out)
    pytest.fail(f"{name} [{label}]: no exception; returned "
                f"{'finite values' if finite else 'NON-FINITE values'} "
                f"({jax.tree_util.tree_map(lambda a: getattr(a, 'shape', a), out)!r})"[:400])


# --- the same checks on traced values: inside jit they surface as runtime errors ------------
def _jit_cases():
    g = dict(mean0=M0, cov0=S0, mean1=M1, cov1=S1)
    gv = jax.jit(lambda t, x: fm.gaussian_velocity(t, x, **g))
    mv = jax.jit(lambda w: fm.mixture_velocity(0.4, X, weights=w, means0=MS0, covs0=CS0,
                                               means1=MS1, covs1=CS1))
    dv = jax.jit(lambda t: fm.dirac_velocity(t, X, atoms=ATOMS))
    gc = jax.jit(lambda c: fm.gaussian_velocity(0.4, X, mean0=M0, cov0=c, mean1=M1, cov1=S1))
    mc = jax.jit(lambda t: _mv(t, X))
    gm = jax.jit(lambda t, S: fm.GaussianVelocity(M0, S, M1, S1)(t, X))
    cp = jax.jit(lambda t: _cp(t, X))
    return [
        ("gaussian_velocity", "traced t > 1", "t", lambda: gv(1.5, X)),
        ("gaussian_velocity", "traced t NaN", "t", lambda: gv(NAN, X)),
        ("gaussian_velocity", "traced x NaN", "x", lambda: gv(0.3, XNAN)),
        ("gaussian_velocity", "traced cov0 not PD", "cov0", lambda: gc(NONPD)),
        ("mixture_velocity", "traced weights not normalised", "weights",
         lambda: mv(np.array([0.3, 0.3]))),
        ("dirac_velocity", "traced t = 1", "t", lambda: dv(1.0)),
        ("McCannVelocity", "traced t < 0", "t", lambda: mc(-0.5)),
        ("GaussianVelocity", "traced t > 1", "t", lambda: gm(1.5, S0)),
        ("GaussianVelocity", "traced cov0 not PD", "cov0", lambda: gm(0.4, NONPD)),
        ("change_path", "traced t < 0", "t", lambda: cp(-0.5)),
    ]


JIT_CASES = _jit_cases()


@pytest.mark.parametrize("name,label,arg,thunk", JIT_CASES, ids=[c[1] for c in JIT_CASES])
def test_bad_traced_input_raises_under_jit(name, label, arg, thunk):
    with pytest.raises(Exception) as info:  # noqa: PT011 - equinox's runtime error type
        jax.block_until_ready(thunk())
    assert _names_argument(str(info.value), arg), f"{name} [{label}]: {str(info.value)[:300]!r}"
