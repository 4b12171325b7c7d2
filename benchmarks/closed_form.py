"""Speed of the closed-form velocities: ``jit(vmap(...))`` beside plain NumPy, same run.

Usage::

    python benchmarks/closed_form.py [--n 100000] [--repeats 3] [--chunk 1000]

Prints one Markdown table: evaluations (points) per second of ``jax.jit(jax.vmap(v))`` for
``fm.gaussian_velocity`` (d = 2 and 64, with a cross-covariance and non-zero means),
``fm.mixture_velocity`` (K = 8, d = 64) and ``fm.dirac_velocity`` (K = 10,000 atoms,
d = 64; the points are chunked with ``jax.lax.map(..., batch_size=chunk)``) on ``n`` float32
points at t = 0.5 on the linear path, beside a vectorised NumPy/SciPy implementation of the
same formula (Cholesky solves; the Dirac case chunked the same way). Each timing is the
median of ``repeats`` calls after one warm-up call (compilation excluded); the ratio is
JAX / NumPy throughput measured in this run. The last column is the max relative difference
between the two results (a check that both compute the same thing).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.linalg import solve_triangular
from scipy.special import softmax

import fmjax as fm

T = 0.5  # linear path: a = 1 - t, b = t, a' = -1, b' = 1
A, B, DA, DB = 1 - T, T, -1.0, 1.0


def _median_time(fn, repeats):
    fn()  # warm-up (compilation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _gaussian_problem(rng, d, K=None):
    shape = (d, d) if K is None else (K, d, d)

    def joint():
        G = rng.normal(size=(2 * d, 2 * d)).astype(np.float32)
        M = G @ G.T / (2 * d) + 0.5 * np.eye(2 * d, dtype=np.float32)
        return M[:d, :d], M[d:, d:], M[d:, :d]

    blocks = [joint() for _ in range(1 if K is None else K)]
    S0, S1, C = (np.stack([b[i] for b in blocks]).reshape(shape) for i in range(3))
    mshape = (d,) if K is None else (K, d)
    return (rng.normal(size=mshape).astype(np.float32), S0,
            rng.normal(size=mshape).astype(np.float32), S1, C)


# ------------------------------- NumPy references ---------------------------------------
def np_gaussian(X, m0, S0, m1, S1, C):
    """v(X) for all rows of X (n, d): the same formula, vectorised; returns (logN, V)."""
    St = A * A * S0 + B * B * S1 + A * B * (C + C.T)
    P = DA * A * S0 + DB * B * S1 + DA * B * C.T + A * DB * C
    L = np.linalg.cholesky(St)
    R = (X - (A * m0 + B * m1)).T  # (d, n)
    Z = solve_triangular(L, R, lower=True, check_finite=False)
    W = solve_triangular(L.T, Z, lower=False, check_finite=False)
    d = X.shape[1]
    logn = (-0.5 * np.sum(Z * Z, axis=0) - np.sum(np.log(np.diag(L)))
            - 0.5 * d * np.log(2 * np.pi))
    return logn, (DA * m0 + DB * m1) + (P @ W).T


def np_mixture(X, w, m0, S0, m1, S1, C):
    K = w.shape[0]
    logits = np.empty((K, X.shape[0]), X.dtype)
    V = np.empty((K,) + X.shape, X.dtype)
    for k in range(K):
        logits[k], V[k] = np_gaussian(X, m0[k], S0[k], m1[k], S1[k], C[k])
        logits[k] += np.log(w[k])
    R = softmax(logits, axis=0)
    return np.einsum("kn,knd->nd", R, V)


def np_dirac(X, Y, chunk):
    """Chunked, in-place NumPy version of the same expanded-distance softmax."""
    ysq = np.sum(Y * Y, axis=1)
    c2 = 1.0 / (2 * A * A)
    out = np.empty_like(X)
    for s in range(0, X.shape[0], chunk):
        x = X[s:s + chunk]
        logits = x @ Y.T  # (c, K); logits = -max(||x - b y||^2, 0) / (2 a^2), in place
        logits *= 2 * B * c2
        logits -= (B * B * c2) * ysq[None, :]
        logits -= (c2 * np.sum(x * x, axis=1))[:, None]
        np.minimum(logits, 0, out=logits)
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        ybar = logits @ Y
        out[s:s + chunk] = DB * ybar + (DA / A) * (x - B * ybar)
    return out


# ------------------------------------ main ----------------------------------------------
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=1000)
    args = parser.parse_args()
    n = args.n
    rng = np.random.default_rng(0)
    rows = []
    t32 = jnp.float32(T)

    for d in (2, 64):
        m0, S0, m1, S1, C = _gaussian_problem(rng, d)
        X = rng.normal(size=(n, d)).astype(np.float32)
        kw = dict(mean0=m0, cov0=S0, mean1=m1, cov1=S1, cross_cov=C)
        f = jax.jit(jax.vmap(lambda x, kw=kw: fm.gaussian_velocity(t32, x, **kw)))
        Xj = jnp.asarray(X)
        tj = _median_time(lambda f=f, Xj=Xj: f(Xj).block_until_ready(), args.repeats)
        tn = _median_time(lambda X=X, kw=(m0, S0, m1, S1, C): np_gaussian(X, *kw), args.repeats)
        diff = np.abs(np.asarray(f(Xj)) - np_gaussian(X, m0, S0, m1, S1, C)[1]).max()
        rows.append((f"gaussian_velocity, d = {d}", n, tj, tn, diff))

    K, d = 8, 64
    m0, S0, m1, S1, C = _gaussian_problem(rng, d, K)
    w = rng.uniform(0.5, 1.5, size=K).astype(np.float32)
    w /= w.sum()
    X = (rng.normal(size=(n, d)) * 1.5).astype(np.float32)
    kw = dict(weights=w, means0=m0, covs0=S0, means1=m1, covs1=S1, cross_covs=C)
    f = jax.jit(jax.vmap(lambda x: fm.mixture_velocity(t32, x, **kw)))
    Xj = jnp.asarray(X)
    tj = _median_time(lambda: f(Xj).block_until_ready(), args.repeats)
    tn = _median_time(lambda: np_mixture(X, w, m0, S0, m1, S1, C), args.repeats)
    diff = np.abs(np.asarray(f(Xj)) - np_mixture(X, w, m0, S0, m1, S1, C)).max()
    rows.append((f"mixture_velocity, K = {K}, d = {d}", n, tj, tn, diff))

    K, d = 10_000, 64
    Y = rng.normal(size=(K, d)).astype(np.float32)
    X = (B * Y[rng.integers(K, size=n)] + A * rng.normal(size=(n, d))).astype(np.float32)

    @jax.jit
    def fd(X, Y):
        return jax.lax.map(lambda x: fm.dirac_velocity(t32, x, atoms=Y), X,
                           batch_size=args.chunk)

    Xj, Yj = jnp.asarray(X), jnp.asarray(Y)
    tj = _median_time(lambda: fd(Xj, Yj).block_until_ready(), args.repeats)
    tn = _median_time(lambda: np_dirac(X, Y, args.chunk), args.repeats)
    ref = np_dirac(X, Y, args.chunk)
    diff = np.abs(np.asarray(fd(Xj, Yj)) - ref).max() / np.abs(ref).max()
    rows.append((f"dirac_velocity, K = {K:,}, d = {d} (chunks of {args.chunk})", n, tj, tn, diff))

    print(f"jax {jax.__version__}, numpy {np.__version__}, backend {jax.default_backend()}, "
          f"float32, t = {T}, linear path, median of {args.repeats} (warm)\n")
    print("| field | points | JAX jit(vmap) evals/s | NumPy evals/s | JAX / NumPy | max diff |")
    print("|---|---|---|---|---|---|")
    for name, npts, tj, tn, diff in rows:
        print(f"| {name} | {npts:,} | {npts / tj:,.0f} | {npts / tn:,.0f} | {tn / tj:.2f} | "
              f"{diff:.1e} |")


if __name__ == "__main__":
    main()
