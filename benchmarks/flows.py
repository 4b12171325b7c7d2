"""Speed of fmjax flows (``fm.integrate``); exact W2 is in ``benchmarks/w2.py``.

Usage::

    python -m benchmarks.flows [--quick] [--repeats 3]

Prints a Markdown table: ``fm.integrate`` of the closed-form Gaussian -> Gaussian flow (``fm.gaussian_velocity``,
   independent coupling, random SPD covariances) on 100,000 float32 points in d = 2 and 64:
   median wall time per solve (compilation excluded: one warm-up call of the jitted solve;
   a single timed call when the warm-up took over 10 s),
   NFE (batched velocity evaluations) and the max error of the pushed covariance
   ``|Cov(x1) - S1|`` relative to ``|S1|`` (a sanity check, sampling error ~ 1/sqrt(n)), for
   Euler (100 steps), RK4 (25 steps) and Dopri5 (rtol = atol = 1e-5).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import fmjax as fm


def _spd(rng, d):
    M = rng.normal(size=(d, d))
    return (M @ M.T / d + 0.5 * np.eye(d)).astype(np.float32)


def _median_time(fn, repeats):
    t = time.perf_counter()
    out = jax.block_until_ready(fn())  # warm-up / compile
    if time.perf_counter() - t > 10.0:  # slow case: one timed repeat keeps the run short
        repeats = 1
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def bench_flows(n, dims, repeats):
    rows = []
    rng = np.random.default_rng(0)
    for d in dims:
        m0, m1 = rng.normal(size=d).astype(np.float32), rng.normal(size=d).astype(np.float32)
        S0, S1 = _spd(rng, d), _spd(rng, d)
        L0 = np.linalg.cholesky(S0.astype(np.float64))
        x0 = jnp.asarray(m0 + rng.normal(size=(n, d)) @ L0.T, jnp.float32)
        p = {k: jnp.asarray(a) for k, a in dict(mean0=m0, cov0=S0, mean1=m1, cov1=S1).items()}

        def v(t, x, p=p):
            return fm.gaussian_velocity(t, x, **p)

        for label, kw in (("Euler, 100 steps", dict(solver="euler", steps=100)),
                          ("RK4, 25 steps", dict(solver="rk4", steps=25)),
                          ("Dopri5, tol 1e-5", dict(solver="dopri5", rtol=1e-5, atol=1e-5))):
            solve = jax.jit(lambda x, kw=kw, v=v: fm.integrate(v, x, **kw))
            sec, sol = _median_time(lambda solve=solve, x0=x0: solve(x0), repeats)
            cov = np.cov(np.asarray(sol.x, np.float64), rowvar=False).reshape(d, d)
            err = np.abs(cov - S1).max() / np.abs(S1).max()
            rows.append((d, label, sec, int(sol.nfe), err))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    n = 2_000 if args.quick else 100_000

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
          f"{jax.device_count()} device(s)\n")
    print(f"### fm.integrate, Gaussian -> Gaussian closed-form flow, n = {n:,} float32 "
          f"points\n")
    print("| d | solver | median s / solve | NFE | rel. cov. error |")
    print("|---|---|---|---|---|")
    for d, label, sec, nfe, err in bench_flows(n, (2, 64), args.repeats):
        print(f"| {d} | {label} | {sec:.3f} | {nfe} | {err:.1e} |", flush=True)


if __name__ == "__main__":
    main()
