"""Exact W2 at 1k, 4k and 10k points: ``fm.w2`` against POT's ``emd2`` and SciPy.

Usage::

    python -m benchmarks.w2 [--sizes 1000 4000 10000] [--repeats 3] [--scipy-max 4000]
                            [--sinkhorn-max 4000]

For two 2-D Gaussian samples of n points (float64), prints one Markdown table of median wall
times (one warm-up call per size, so compilation is excluded) of

* POT ``ot.emd2(a, b, ot.dist(x, y))`` called directly (the network simplex with the same
  iteration cap as fmjax, ``100 n m``, so that it reaches the optimum);
* ``fm.w2(x, y)`` (``method="auto"``: exact, POT's network simplex through a callback), eager
  and inside ``jax.jit``;
* SciPy ``linear_sum_assignment`` on ``cdist`` (up to ``--scipy-max`` points);
* ``fm.w2(method="sinkhorn")`` (ott-jax debiased divergence, default relative epsilon 1e-2;
  up to ``--sinkhorn-max`` points) with its error against the exact W2,

and the ratio of each time to POT's, measured in the same run. Target: ``fm.w2`` at most 10%
slower than POT's ``emd2`` from 1,000 to 10,000 points.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
import ot as pot
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

jax.config.update("jax_enable_x64", True)

import fmjax as fm  # noqa: E402


def _median(fn, repeats):
    out = jax.block_until_ready(fn())  # warm-up / compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _pot_w2(x, y):
    n, m = len(x), len(y)
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    return float(np.sqrt(pot.emd2(a, b, pot.dist(x, y), numItermax=100 * n * m)))


def _scipy_w2(x, y):
    C = cdist(x, y, "sqeuclidean")
    r, c = linear_sum_assignment(C)
    return float(np.sqrt(C[r, c].mean()))


def run(sizes, repeats, scipy_max, sinkhorn_max):
    rng = np.random.default_rng(0)
    rows = []
    w2_jit = jax.jit(fm.w2)
    for n in sizes:
        x = rng.normal(size=(n, 2))
        y = rng.normal(size=(n, 2)) * np.array([0.5, 2.0]) + np.array([1.0, -1.0])
        reps = repeats if n <= 4000 else max(1, repeats // 2)
        t_pot, w_pot = _median(lambda x=x, y=y: _pot_w2(x, y), reps)
        rows.append((n, "POT ot.emd2(a, b, ot.dist(x, y))", t_pot, w_pot, "", t_pot))
        t_fm, w_fm = _median(lambda x=x, y=y: fm.w2(x, y), reps)
        rows.append((n, "fm.w2(x, y) (exact)", t_fm, float(w_fm),
                     f"|diff| {abs(float(w_fm) - w_pot):.1e}", t_pot))
        t_jit, w_jit = _median(lambda x=x, y=y: w2_jit(x, y), reps)
        rows.append((n, "jax.jit(fm.w2)(x, y)", t_jit, float(w_jit), "", t_pot))
        if n <= scipy_max:
            t_sp, w_sp = _median(lambda x=x, y=y: _scipy_w2(x, y), reps)
            rows.append((n, "SciPy linear_sum_assignment(cdist)", t_sp, w_sp,
                         f"|diff| {abs(w_sp - w_pot):.1e}", t_pot))
        if n <= sinkhorn_max:
            t_s, res = _median(lambda x=x, y=y: fm.w2_result(x, y, method="sinkhorn"), reps)
            rel = float(res.w2) / w_pot - 1.0
            rows.append((n, "fm.w2 sinkhorn (ott-jax, eps 1e-2 x mean cost)", t_s,
                         float(res.w2), f"{int(res.n_iterations)} it, rel. err {rel:+.1e}"
                         + ("" if bool(res.converged) else ", NOT converged"), t_pot))
    print(f"\nW2 between two 2-D Gaussian samples (float64, median of {repeats} runs, "
          f"{max(1, repeats // 2)} above 4,000 points; compile excluded; backend "
          f"{jax.default_backend()})\n")
    print("| n | solver | time (s) | x POT | W2 | notes |")
    print("|---|---|---|---|---|---|")
    for n, name, t, w, note, ref in rows:
        print(f"| {n:,} | {name} | {t:.3f} | {t / ref:.2f} | {w:.6f} | {note} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 10000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scipy-max", type=int, default=4000)
    ap.add_argument("--sinkhorn-max", type=int, default=4000)
    args = ap.parse_args()
    run(args.sizes, args.repeats, args.scipy_max, args.sinkhorn_max)


if __name__ == "__main__":
    main()
