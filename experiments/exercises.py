"""Numerical check of every claim of the notes (Exercises 1-5, continuity equation, BB).

One row per claim: the quantity compared, the independent reference it is compared with
(a NumPy/SciPy re-derivation of the formula, a theorem, a Monte-Carlo estimate with its
standard error), the max error measured and the tolerance. Exits non-zero if any claim
fails. Everything runs in float64.

    python -m experiments.exercises [--quick] [--workdir DIR] [--seed=0] [--dim=3]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.special
import scipy.stats

import fmjax as fm

from . import _common
from ._common import random_spd, sigma_points

NAME = "exercises"


@dataclasses.dataclass(frozen=True)
class Config:
    """Exercises configuration (defaults: the full run; it takes seconds)."""

    seed: int = 0
    dim: int = 3  # dimension of the Gaussian claims (Ex 1, 2, 4, 5)
    n_points: int = 64  # random evaluation points per claim
    n_mc: int = 1_000_000  # Monte-Carlo samples for the variance examples
    n_dirac: int = 2_000  # samples pushed through the Dirac flow
    rtol: float = 1e-10  # adaptive solver tolerance (rtol = atol)
    claims: tuple[str, ...] = ()  # subset of CLAIM_GROUPS to run (empty: all)
    progress: bool = True

    @classmethod
    def quick(cls) -> Config:
        return cls(n_mc=200_000, n_dirac=500)


# --------------------------------------------------------------------------------------
# Independent NumPy references (re-derived from the notes, not calling fmjax)
# --------------------------------------------------------------------------------------
def random_joint(rng: np.random.Generator, d: int):
    """Blocks (S0, S1, S01) of a random joint covariance of (X0, X1); S01 = Cov(X1, X0)."""
    m = random_spd(rng, 2 * d, cond=20.0)
    return m[:d, :d], m[d:, d:], m[d:, :d]


def np_gaussian_velocity(t, x, m0, s0, m1, s1, s01):
    r"""Exercise 4(a) with means, linear path: :math:`(E[X_1|X_t=x] - x)/(1-t)`.

    :math:`E[X_1|X_t=x] = m_1 + ((1-t)\Sigma_{01} + t\Sigma_1)\Sigma_t^{-1}(x - m_t)`.
    """
    st = (1 - t) ** 2 * s0 + (1 - t) * t * (s01 + s01.T) + t**2 * s1
    mt = (1 - t) * m0 + t * m1
    c = (1 - t) * s01 + t * s1
    ex1 = m1 + c @ np.linalg.solve(st, x - mt)
    return (ex1 - x) / (1 - t)


def np_bures_w2_squared(m0, s0, m1, s1):
    """Bures-Wasserstein W2^2 with SciPy's sqrtm (independent of fmjax)."""
    r0 = scipy.linalg.sqrtm(s0).real
    cross = scipy.linalg.sqrtm(r0 @ s1 @ r0).real
    return float(np.sum((m0 - m1) ** 2) + np.trace(s0 + s1 - 2 * cross))


def np_bures_map(m0, s0, m1, s1):
    """OT map T(x) = m1 + A (x - m0), A = S0^-1/2 (S0^1/2 S1 S0^1/2)^1/2 S0^-1/2."""
    r0 = scipy.linalg.sqrtm(s0).real
    r0i = np.linalg.inv(r0)
    a = r0i @ scipy.linalg.sqrtm(r0 @ s1 @ r0).real @ r0i
    return a, m1 - a @ m0


# --------------------------------------------------------------------------------------
# Thin adapters over fmjax (one place to change if an API moves)
# --------------------------------------------------------------------------------------
def _flow(velocity: Callable, x0: np.ndarray, rtol: float, t1: float = 1.0) -> np.ndarray:
    sol = fm.integrate(velocity, jnp.asarray(x0), t0=0.0, t1=t1, solver="dopri5",
                       rtol=rtol, atol=rtol)
    return np.asarray(sol.x)


def _energy(velocity: Callable, x0: np.ndarray, rtol: float) -> float:
    return float(fm.kinetic_energy(velocity, jnp.asarray(x0), solver="dopri5",
                                   rtol=rtol, atol=rtol))


def _vfield(v: Callable) -> Callable:
    """jit(vmap) of a per-point field over (t_i, x_i) pairs."""
    return jax.jit(jax.vmap(v))


def _row(claim: str, seed_ref: str, reference: str, error: float, tol: float, *,
         sense: str = "<=", note: str = "") -> dict:
    error = float(error)
    ok = bool(np.isfinite(error) and (error <= tol if sense == "<=" else error >= tol))
    return dict(claim=claim, seed=seed_ref, reference=reference, error=error,
                tol=tol, sense=sense, ok=ok, note=note)


# --------------------------------------------------------------------------------------
# The claims
# --------------------------------------------------------------------------------------
def _claims(cfg: Config) -> list[Callable[[], list[dict]]]:
    rng = np.random.default_rng(cfg.seed)
    d, n = cfg.dim, cfg.n_points
    f64 = jnp.float64
    m0, m1 = rng.normal(size=d), rng.normal(size=d)
    s0, s1, s01 = random_joint(rng, d)
    ts = rng.uniform(0.0, 0.95, size=n)
    xs = rng.normal(size=(n, d)) * 1.5
    A = random_spd(rng, d) + rng.normal(size=(d, d)) * 0.3  # invertible (generic)
    bvec = rng.normal(size=d)
    c = 2.5
    gauss = dict(mean0=jnp.asarray(m0), cov0=jnp.asarray(s0), mean1=jnp.asarray(m1),
                 cov1=jnp.asarray(s1), cross_cov=jnp.asarray(s01))

    def v_base(t, x):
        return fm.gaussian_velocity(t, x, **gauss)

    def ref_batch(params):
        return np.stack([np_gaussian_velocity(t, x, *params) for t, x in zip(ts, xs, strict=True)])

    def compare(v, params):
        got = np.asarray(_vfield(v)(jnp.asarray(ts, f64), jnp.asarray(xs, f64)))
        ref = ref_batch(params)
        return float(np.max(np.abs(got - ref)) / max(1.0, np.max(np.abs(ref))))

    # ---- Exercise 4(a) -------------------------------------------------------------
    def ex4a():
        err = compare(v_base, (m0, s0, m1, s1, s01))
        return [_row(f"4(a): gaussian_velocity = printed formula (d={d}, cross-cov != 0, "
                     "means != 0)", "Ex 4(a)", "NumPy re-derivation", err, 1e-10)]

    # ---- Exercise 1 ------------------------------------------------------------------
    def ex1():
        va = fm.affine_velocity(v_base, jnp.asarray(A), jnp.asarray(bvec))
        ea = compare(va, (A @ m0 + bvec, A @ s0 @ A.T, A @ m1 + bvec, A @ s1 @ A.T,
                          A @ s01 @ A.T))
        vb = fm.shift_target_velocity(v_base, jnp.asarray(bvec))
        eb = compare(vb, (m0, s0, m1 + bvec, s1, s01))
        vc = fm.scale_target_velocity(v_base, c)
        ec = compare(vc, (m0, s0, c * m1, c**2 * s1, c * s01))
        ref = "closed form of the transformed Gaussian coupling (NumPy)"
        return [
            _row("1(a): (AX0+b, AX1+b) -> A v_t(A^-1(x-b))", "Ex 1(a)", ref, ea, 1e-9),
            _row("1(b): (X0, X1+b) -> v_t(x-tb) + b", "Ex 1(b)", ref, eb, 1e-9),
            _row(f"1(c): (X0, cX1), c={c} -> c/(1-t+tc) v_r(x/(1-t+tc)) + ...", "Ex 1(c)",
                 ref, ec, 1e-9),
        ]

    # ---- Exercise 2 ------------------------------------------------------------------
    def ex2():
        zs = rng.normal(size=(n, d))
        s1i = random_spd(rng, d)  # independent coupling (Ex 2 is about alpha, beta)

        def ot(mm0, ss0, mm1, ss1):
            T = fm.gaussian_ot_map(jnp.asarray(mm0), jnp.asarray(ss0), jnp.asarray(mm1),
                                   jnp.asarray(ss1))
            return lambda x: np.asarray(jax.vmap(T)(jnp.asarray(x)))

        T = ot(m0, s0, m1, s1i)
        tb = ot(m0, s0, m1 + bvec, s1i)
        tc = ot(m0, s0, c * m1, c**2 * s1i)
        eb = np.max(np.abs(tb(zs) - (T(zs) + bvec)))
        ec = np.max(np.abs(tc(zs) - c * T(zs)))
        # (a): for A = s Q (similarity) the OT map is conjugated; for a generic A it is not.
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        sq = 1.7 * q
        ta = ot(sq @ m0 + bvec, sq @ s0 @ sq.T, sq @ m1 + bvec, sq @ s1i @ sq.T)
        conj = (T((zs - bvec) @ np.linalg.inv(sq).T) @ sq.T) + bvec
        ea = np.max(np.abs(ta(zs) - conj))
        # generic A: conjugated map A T(A^-1(x-b)) + b is a pushforward but costs more
        a_ref, b_ref = np_bures_map(m0, s0, m1, s1i)
        ma, mb = A @ m0 + bvec, A @ m1 + bvec
        sa0, sa1 = A @ s0 @ A.T, A @ s1i @ A.T
        lin = A @ a_ref @ np.linalg.inv(A)  # linear part of the conjugated map
        cost_conj = float(np.sum((lin @ ma + (A @ b_ref + bvec - lin @ bvec) - ma) ** 2)
                          + np.trace((lin - np.eye(d)) @ sa0 @ (lin - np.eye(d)).T))
        w2sq = np_bures_w2_squared(ma, sa0, mb, sa1)
        gap = cost_conj / w2sq - 1
        return [
            _row("2(b): OT map of (X0, X1+b) is T + b", "Ex 2", "gaussian_ot_map(T) + b",
                 eb, 1e-9),
            _row("2(c): OT map of (X0, cX1) is c T", "Ex 2", "c gaussian_ot_map(T)", ec, 1e-9),
            _row("2(a): A = sQ (similarity): OT map is A T(A^-1(x-b)) + b", "Ex 2",
                 "conjugated Bures map", ea, 1e-9),
            _row("2(a): generic A: conjugated map is NOT optimal (cost/W2^2 - 1 > 0)", "Ex 2",
                 "Bures W2^2 (SciPy)", gap, 1e-4, sense=">=",
                 note=f"excess cost {gap:.3g}"),
        ]

    # ---- Exercise 3 (1-D: the flow of the independent-coupling velocity is monotone) -----
    def ex3():
        w = np.array([0.3, 0.5, 0.2])
        mu = np.array([-2.0, 0.5, 3.0])
        sd = np.array([0.4, 0.7, 0.3])
        kw = dict(weights=jnp.asarray(w), means0=jnp.zeros((3, 1)), covs0=jnp.ones((3, 1, 1)),
                  means1=jnp.asarray(mu[:, None]), covs1=jnp.asarray((sd**2)[:, None, None]))
        v = fm.MixtureVelocity(**kw)
        x0 = np.linspace(-3.0, 3.0, n)[:, None]
        x1 = _flow(v, x0, cfg.rtol)[:, 0]
        # F_beta^{-1}(Phi(x0)) by bisection on the mixture CDF (100 halvings)
        u = scipy.stats.norm.cdf(x0[:, 0])
        lo, hi = np.full(n, -20.0), np.full(n, 20.0)
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            cdf = np.sum(w * scipy.stats.norm.cdf((mid[:, None] - mu) / sd), axis=1)
            lo, hi = np.where(cdf < u, mid, lo), np.where(cdf < u, hi, mid)
        ref = 0.5 * (lo + hi)
        err = np.max(np.abs(x1 - ref))
        return [_row("3: 1-D flow map of independent-coupling FM = monotone map "
                     "F_beta^-1(Phi(x)) (N(0,1) -> 3-mixture)", "Ex 3",
                     "bisection of the mixture CDF (SciPy)", err, 1e-6)]

    # ---- Exercise 4(b) and the pushforward --------------------------------------------
    def flow_linear_map(v, mean0):
        pts = np.concatenate([mean0[None], mean0[None] + np.eye(d)], axis=0)
        y = _flow(v, pts, cfg.rtol)
        return (y[1:] - y[0]).T, y[0]

    def ex4b():
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        d0, d1 = np.exp(rng.uniform(-1, 1, d)), np.exp(rng.uniform(-1, 1, d))
        c0, c1 = (q * d0) @ q.T, (q * d1) @ q.T
        z = np.zeros(d)
        kw = dict(mean0=jnp.asarray(z), cov0=jnp.asarray(c0), mean1=jnp.asarray(z),
                  cov1=jnp.asarray(c1))
        a_flow, _ = flow_linear_map(fm.GaussianVelocity(**kw), z)
        a_ot, _ = np_bures_map(z, c0, z, c1)
        e_comm = np.max(np.abs(a_flow - a_ot))
        # without joint diagonalisability the flow map is not the OT map
        n0, n1 = random_spd(rng, d, cond=30.0), random_spd(rng, d, cond=30.0)
        kw2 = dict(mean0=jnp.asarray(z), cov0=jnp.asarray(n0), mean1=jnp.asarray(z),
                   cov1=jnp.asarray(n1))
        a2, _ = flow_linear_map(fm.GaussianVelocity(**kw2), z)
        a2_ot, _ = np_bures_map(z, n0, z, n1)
        gap = np.max(np.abs(a2 - a2_ot))
        # pushforward: the flow of gaussian_velocity (independent, means) sends N(m0,S0) to
        # N(m1,S1): its time-1 map is affine x -> A x + c with A S0 A^T = S1, A m0 + c = m1
        s1b = random_spd(rng, d)
        kw3 = dict(mean0=jnp.asarray(m0), cov0=jnp.asarray(s0), mean1=jnp.asarray(m1),
                   cov1=jnp.asarray(s1b))
        a3, y0 = flow_linear_map(fm.GaussianVelocity(**kw3), m0)
        e_push = max(np.max(np.abs(a3 @ s0 @ a3.T - s1b)), np.max(np.abs(y0 - m1)))
        return [
            _row("4(b): S01 = 0, S0 S1 commute: flow map phi_1 = Bures OT map", "Ex 4(b)",
                 "SciPy sqrtm Bures map", e_comm, 1e-7),
            _row("4(b) needs commuting S0, S1: otherwise phi_1 != OT map (max |A - A_ot|)",
                 "Ex 4(b)", "SciPy sqrtm Bures map", gap, 1e-3, sense=">="),
            _row("flow of gaussian_velocity pushes N(m0,S0) to N(m1,S1) (A S0 A^T = S1)",
                 "Flow matching, theorem (CE)", "target moments", e_push, 1e-7),
        ]

    # ---- Exercise 5 -------------------------------------------------------------------
    def ex5():
        K = 3
        wk = rng.dirichlet(np.ones(K) * 3)
        mk0, mk1 = rng.normal(size=(K, d)), rng.normal(size=(K, d)) * 2
        blocks = [random_joint(rng, d) for _ in range(K)]
        sk0 = np.stack([b[0] for b in blocks])
        sk1 = np.stack([b[1] for b in blocks])
        sk01 = np.stack([b[2] for b in blocks])
        kw = dict(weights=jnp.asarray(wk), means0=jnp.asarray(mk0), covs0=jnp.asarray(sk0),
                  means1=jnp.asarray(mk1), covs1=jnp.asarray(sk1), cross_covs=jnp.asarray(sk01))
        got = np.asarray(_vfield(fm.MixtureVelocity(**kw))(
            jnp.asarray(ts), jnp.asarray(xs)))
        ref = np.zeros_like(got)
        for i, (t, x) in enumerate(zip(ts, xs, strict=True)):
            logp, wt = np.zeros(K), np.zeros((K, d))
            for k in range(K):
                mt = t * mk1[k] + (1 - t) * mk0[k]
                st = (t**2 * sk1[k] + (1 - t) ** 2 * sk0[k]
                      + t * (1 - t) * (sk01[k] + sk01[k].T))
                logp[k] = math.log(wk[k]) + scipy.stats.multivariate_normal.logpdf(x, mt, st)
                vk = np_gaussian_velocity(t, x - mt, np.zeros(d), sk0[k], np.zeros(d), sk1[k],
                                          sk01[k])
                wt[k] = vk + mk1[k] - mk0[k]
            alpha = np.exp(logp - scipy.special.logsumexp(logp))
            ref[i] = alpha @ wt
        err = np.max(np.abs(got - ref)) / max(1.0, np.max(np.abs(ref)))
        rows = [_row(f"5: mixture_velocity = sum_k alpha^k(x) w_t^k(x) (K={K}, cross-cov)",
                     "Ex 5", "NumPy/SciPy responsibilities", err, 1e-9)]
        # Dirac limit: X0 ~ N(0, I), X1 on K equal atoms = mixture with covs1 -> 0
        atoms = rng.normal(size=(4, d)) * 3
        w4 = np.full(4, 0.25)
        vd = _vfield(fm.DiracVelocity(jnp.asarray(atoms)))
        tt = jnp.asarray(rng.uniform(0.05, 0.9, n))
        xx = jnp.asarray(rng.normal(size=(n, d)))
        gd = np.asarray(vd(tt, xx))
        errs = []
        epss = (1e-2, 1e-3, 1e-4)
        for eps in epss:
            kwe = dict(weights=jnp.asarray(w4), means0=jnp.zeros((4, d)),
                       covs0=jnp.broadcast_to(jnp.eye(d), (4, d, d)), means1=jnp.asarray(atoms),
                       covs1=jnp.broadcast_to(eps**2 * jnp.eye(d), (4, d, d)))
            ge = np.asarray(_vfield(fm.MixtureVelocity(**kwe))(tt, xx))
            errs.append(float(np.max(np.abs(ge - gd))))
        note = "errors at eps = " + ", ".join(f"{e:.0e}: {r:.1e}" for e, r in zip(epss, errs, strict=True))
        rows.append(_row(f"5, last question: mixture with covs1 = eps^2 I -> dirac_velocity "
                         f"(eps = {epss[-1]:.0e})", "Ex 5", "limit eps -> 0",
                         errs[-1], 1e-3, note=note))
        slope = np.polyfit(np.log(epss), np.log(errs), 1)[0]
        rows.append(_row("5: Dirac-limit error is O(eps^2): |log-log slope - 2|", "Ex 5",
                         "fitted slope", abs(slope - 2.0), 0.2, note=f"slope {slope:.3f}"))
        # The flow of dirac_velocity sends N(0, I) onto the atoms with the right weights
        z = rng.normal(size=(cfg.n_dirac, d))
        # the field has no limit at t = 1 (X1 is discrete): stop at 1 - 1e-7
        y = _flow(fm.DiracVelocity(jnp.asarray(atoms)), z, cfg.rtol,
                  t1=1.0 - 1e-7)
        dist = np.linalg.norm(y[:, None, :] - atoms[None], axis=-1)
        near = np.min(dist, axis=1)
        rows.append(_row("5: flow of dirac_velocity lands every N(0,I) sample on an atom",
                         "Ex 5", "distance to nearest atom", np.max(near), 1e-4))
        counts = np.bincount(np.argmin(dist, axis=1), minlength=4) / cfg.n_dirac
        se = math.sqrt(0.25 * 0.75 / cfg.n_dirac)
        rows.append(_row("5: fraction of samples per atom = its weight 1/K", "Ex 5",
                         "binomial, 4 standard errors", np.max(np.abs(counts - 0.25)), 4 * se,
                         note="fractions " + ", ".join(f"{c:.3f}" for c in counts)))
        return rows

    # ---- Continuity equation -----------------------------------------------------------
    def ce():
        tt = jnp.asarray(rng.uniform(0.05, 0.95, n))
        xx = jnp.asarray(rng.normal(size=(n, d)) * 1.5)

        def max_res(logp, v):
            r = jax.jit(jax.vmap(lambda t, x: fm.continuity_residual(logp, v, t, x)))(tt, xx)
            return float(np.max(np.abs(np.asarray(r))))

        w_rot = rng.normal(size=(d, d))
        w_rot = jnp.asarray(w_rot - w_rot.T)  # antisymmetric: a rotation generator
        std_logp = lambda t, x: jax.scipy.stats.multivariate_normal.logpdf(
            x, jnp.zeros(d), jnp.eye(d))
        rot = lambda t, x: w_rot @ x
        e_rot = max_res(std_logp, rot)
        e_wrong = max_res(std_logp, lambda t, x: x)  # expansion: mu_t would spread
        mshift = jnp.asarray(m0)
        shifted_logp = lambda t, x: jax.scipy.stats.multivariate_normal.logpdf(
            x, mshift, jnp.eye(d))
        e_wrong_rot = max_res(shifted_logp, rot)  # rotation about 0 moves N(m, I), m != 0
        rows = [
            _row("CE: N(0, I) constant in t with a rotation field v = W x (W^T = -W)",
                 "CE example", "residual = 0", e_rot, 1e-10),
            _row("CE: a wrong field (v = x on constant N(0, I)) is detected", "CE example",
                 "residual clearly != 0", e_wrong, 0.1, sense=">="),
            _row("CE: rotation about 0 does not preserve N(m, I), m != 0", "CE example",
                 "residual clearly != 0", e_wrong_rot, 0.1, sense=">="),
        ]
        for path in (fm.Linear(), fm.Trigonometric()):
            kw = dict(gauss, path=path)
            e = max_res(lambda t, x, kw=kw: fm.gaussian_log_density(t, x, **kw),
                        lambda t, x, kw=kw: fm.gaussian_velocity(t, x, **kw))
            rows.append(_row(f"CE: Gaussian closed form, {path.name} path, cross-cov != 0",
                             "Flow matching v_t = E[dX_t/dt | X_t]", "residual = 0", e, 1e-8))
        K = 2
        mk = dict(weights=jnp.asarray([0.4, 0.6]), means0=jnp.zeros((K, d)),
                  covs0=jnp.broadcast_to(jnp.eye(d), (K, d, d)),
                  means1=jnp.asarray(rng.normal(size=(K, d)) * 2),
                  covs1=jnp.asarray(np.stack([random_spd(rng, d) * 0.3 for _ in range(K)])))
        for path in (fm.Linear(), fm.Trigonometric()):
            kw = dict(mk, path=path)
            e = max_res(lambda t, x, kw=kw: fm.mixture_log_density(t, x, **kw),
                        lambda t, x, kw=kw: fm.mixture_velocity(t, x, **kw))
            rows.append(_row(f"CE: mixture closed form (K={K}), {path.name} path",
                             "Ex 5 / CE", "residual = 0", e, 1e-8))
        # McCann interpolation between two Gaussians solves (CE) with v = (T - Id) o T_t^-1
        a_ot, b_ot = np_bures_map(m0, s0, m1, s1)
        a_j, b_j, m0_j, s0_j = (jnp.asarray(a) for a in (a_ot, b_ot, m0, s0))

        def mc_logp(t, x):
            at = t * a_j + (1 - t) * jnp.eye(d)
            return jax.scipy.stats.multivariate_normal.logpdf(
                x, at @ m0_j + t * b_j, at @ s0_j @ at.T)

        vmc = fm.mccann_velocity(a_j, b_j)
        e = max_res(mc_logp, vmc)
        rows.append(_row("CE: McCann interpolation ((T_t)#alpha, (T - Id) o T_t^-1)",
                         "Dynamical formulation", "residual = 0", e, 1e-8))
        return rows

    # ---- Variance examples ------------------------------------------------------------
    def variance():
        key = jax.random.PRNGKey(cfg.seed)
        k0, k1 = jax.random.split(key)
        x0 = jax.random.normal(k0, (cfg.n_mc,), dtype=f64)
        x1 = jax.random.normal(k1, (cfg.n_mc,), dtype=f64)
        se = math.sqrt(2.0 / (cfg.n_mc - 1))  # standard error of a sample variance, Var = 1
        lin, trig = fm.Linear(), fm.Trigonometric()
        a, b = lin.coefficients(jnp.float64(0.5))
        e_exact = abs(float(a**2 + b**2) - 0.5)
        xt = jax.vmap(lambda u, w: lin.interpolate(jnp.float64(0.5), u, w))(x0, x1)
        e_mc = abs(float(jnp.var(xt, ddof=1)) - 0.5)
        grid = jnp.linspace(0.0, 1.0, 101, dtype=f64)
        ab = jax.vmap(trig.coefficients)(grid)
        e_trig = float(jnp.max(jnp.abs(ab[0] ** 2 + ab[1] ** 2 - 1.0)))
        mc = []
        for t in (0.25, 0.5, 0.75):
            xt = jax.vmap(lambda u, w, t=t: trig.interpolate(jnp.float64(t), u, w))(x0, x1)
            mc.append(abs(float(jnp.var(xt, ddof=1)) - 1.0))
        return [
            _row("Var(X_0.5) = 0.5 for the linear path, Var(X0) = Var(X1) = 1 (exact)",
                 "Extensions, example", "a(t)^2 + b(t)^2", e_exact, 1e-15),
            _row(f"Var(X_0.5) = 0.5, Monte Carlo (n = {cfg.n_mc:,})", "Extensions, example",
                 "sample variance, 5 standard errors", e_mc, 0.5 * 5 * se),
            _row("trigonometric path: Var(X_t) = 1 for all t in [0, 1] (exact)",
                 "Extensions", "cos^2 + sin^2 on 101 times", e_trig, 1e-14),
            _row(f"trigonometric path: Var(X_t) = 1 at t = 0.25, 0.5, 0.75 (MC, n = {cfg.n_mc:,})",
                 "Extensions", "sample variance, 5 standard errors", max(mc), 5 * se),
        ]

    # ---- Benamou-Brenier ---------------------------------------------------------------
    def benamou_brenier():
        s1i = random_spd(rng, d)
        w2sq_ref = np_bures_w2_squared(m0, s0, m1, s1i)
        w2sq = float(fm.gaussian_w2_squared(jnp.asarray(m0), jnp.asarray(s0),
                                            jnp.asarray(m1), jnp.asarray(s1i)))
        a_ot, b_ot = np_bures_map(m0, s0, m1, s1i)
        vmc = fm.mccann_velocity(jnp.asarray(a_ot), jnp.asarray(b_ot))
        sp = sigma_points(m0, s0)
        e_mc = _energy(vmc, sp, cfg.rtol)
        # v_t o T_t = T - Id
        tt = rng.uniform(0, 1, n)
        xx = rng.normal(size=(n, d))
        tx = (tt[:, None] * (xx @ a_ot.T + b_ot) + (1 - tt[:, None]) * xx)
        vt = np.asarray(_vfield(vmc)(jnp.asarray(tt), jnp.asarray(tx)))
        e_def = np.max(np.abs(vt - (xx @ a_ot.T + b_ot - xx)))
        # geodesic: W2(mu_s, mu_t) = |s - t| W2(alpha, beta)
        w2 = math.sqrt(w2sq_ref)
        e_geo = 0.0
        for s_, t_ in ((0.0, 0.3), (0.2, 0.9), (0.5, 1.0), (0.1, 0.6)):
            ats, att = (u * a_ot + (1 - u) * np.eye(d) for u in (s_, t_))
            ms, mt = ats @ m0 + s_ * b_ot, att @ m0 + t_ * b_ot
            w = float(fm.gaussian_w2(jnp.asarray(ms), jnp.asarray(ats @ s0 @ ats.T),
                                     jnp.asarray(mt), jnp.asarray(att @ s0 @ att.T)))
            e_geo = max(e_geo, abs(w - abs(t_ - s_) * w2) / w2)
        # flow matching (independent coupling) pays more: E_FM >= E||phi_1 - x||^2 >= W2^2
        kw = dict(mean0=jnp.asarray(m0), cov0=jnp.asarray(s0), mean1=jnp.asarray(m1),
                  cov1=jnp.asarray(s1i))
        vfm = fm.GaussianVelocity(**kw)
        e_fm = _energy(vfm, sp, cfg.rtol)
        disp = float(np.mean(np.sum((_flow(vfm, sp, cfg.rtol) - sp) ** 2, axis=1)))
        return [
            _row("gaussian_w2_squared = Bures formula", "W2 (Gaussians)",
                 "SciPy sqrtm", abs(w2sq - w2sq_ref) / w2sq_ref, 1e-10),
            _row("McCann velocity: v_t o T_t = T - Id", "Dynamical formulation, definition",
                 "T(x) - x", e_def, 1e-10),
            _row("Benamou-Brenier: kinetic energy of McCann path = W2^2 (relative)",
                 "BB theorem", "Bures W2^2 (SciPy)", abs(e_mc - w2sq_ref) / w2sq_ref, 1e-6,
                 note=f"E = {e_mc:.6f}, W2^2 = {w2sq_ref:.6f}"),
            _row("McCann is a geodesic: W2(mu_s, mu_t) = |s-t| W2 (relative)", "Geodesic space",
                 "Bures W2", e_geo, 1e-10),
            _row("BB, Jensen step: E_FM >= E||phi_1(x) - x||^2 (relative gap)", "BB proof",
                 "inequality", (e_fm - disp) / w2sq_ref, -1e-8, sense=">=",
                 note=f"E_FM = {e_fm:.4f}, E||phi_1-x||^2 = {disp:.4f}"),
            _row("BB, OT step: E||phi_1(x) - x||^2 >= W2^2 (relative gap)", "BB proof",
                 "inequality", (disp - w2sq_ref) / w2sq_ref, -1e-8, sense=">=",
                 note=f"FM (independent) energy / W2^2 = {e_fm / w2sq_ref:.4f}"),
        ]

    groups = [ex4a, ex1, ex2, ex3, ex4b, ex5, ce, variance, benamou_brenier]
    if cfg.claims:
        unknown = set(cfg.claims) - set(CLAIM_GROUPS)
        if unknown:
            raise ValueError(f"unknown claims {sorted(unknown)}; choose from {CLAIM_GROUPS}")
        groups = [g for g in groups if g.__name__ in cfg.claims]
    return groups


CLAIM_GROUPS = ("ex4a", "ex1", "ex2", "ex3", "ex4b", "ex5", "ce", "variance", "benamou_brenier")


def run(config: Config, workdir: Path | str) -> dict:
    """Check every claim; write results.json/results.md into ``workdir``; return the rows."""
    _common.ensure_x64("float64")
    workdir = Path(workdir)
    rows: list[dict] = []
    with _common.Timer() as tm:
        for claim in _common.progress(_claims(config), desc="claims", enabled=config.progress):
            try:
                rows.extend(claim())
            except Exception as e:  # a broken claim is a failed row, not a crash
                rows.append(_row(f"{claim.__name__}: raised {type(e).__name__}: {e}"[:300],
                                 claim.__name__, "-", float("nan"), 0.0))
    n_ok = sum(r["ok"] for r in rows)
    ok = n_ok == len(rows)
    table = _common.markdown_table(
        ["claim", "the notes", "reference", "error", "tolerance", "pass", "note"],
        [[r["claim"], r["seed"], r["reference"], r["error"],
          ("<= " if r["sense"] == "<=" else ">= ") + _common.fmt(r["tol"]), r["ok"], r["note"]]
         for r in rows])
    summary = (f"{n_ok} of {len(rows)} claims hold ({tm.seconds:.1f} s, float64). "
               "`error` is a max absolute error (relative where the claim says so); rows "
               "marked `>=` show a gap that must be positive (an inequality, or a "
               "counter-example showing a hypothesis is needed).")
    _common.write_outputs(workdir, name=NAME, title="The notes' claims, checked numerically",
                          config=config, results=dict(ok=ok, rows=rows, seconds=tm.seconds),
                          sections=[("", summary), ("Claims", table)])
    return dict(ok=ok, rows=rows, seconds=tm.seconds)


def main(argv=None) -> int:
    return _common.main(Config, run, NAME, argv)


if __name__ == "__main__":
    raise SystemExit(main())
