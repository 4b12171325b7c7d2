"""Where does exact W2 stop being practical? ``fm.w2`` exact vs Sinkhorn vs SciPy / POT.

Usage::

    python -m benchmarks.w2 [--sizes 1000 2000] [--repeats 3] [--dtype float32]

For two 2-D Gaussian samples of n points (float32 by default), prints one Markdown table:
median wall time (compilation excluded: one warm-up call per size) of

* ``fm.w2(method="exact")``: ott-jax's Hungarian (``ott.tools.unreg.hungarian``, i.e. optax's
  ``hungarian_algorithm``) on the n x n squared-distance matrix;
* ``fm.w2(method="sinkhorn")``: ott-jax debiased Sinkhorn divergence, default relative epsilon
  (1e-2 x mean cost), with its Sinkhorn iteration count and relative error against the exact W2;
* SciPy ``linear_sum_assignment`` (cost matrix built by ``scipy.spatial.distance.cdist``,
  included in the time) and POT ``ot.emd2`` when installed,

plus ratios to SciPy measured in the same run. This is what ``fmjax.ot.EXACT_MAX_SIZE`` (the
size up to which ``method="auto"`` uses the exact solver) is based on.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

import fmjax as fm

try:  # optional peer
    import ot as pot
except ImportError:  # pragma: no cover - depends on the machine
    pot = None


def _median(fn, repeats):
    out = jax.block_until_ready(fn())  # warm-up / compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _scipy_w2(x, y):
    C = cdist(x, y, "sqeuclidean")
    r, c = linear_sum_assignment(C)
    return float(np.sqrt(C[r, c].mean()))


def _pot_w2(x, y):
    C = cdist(x, y, "sqeuclidean")
    n = x.shape[0]
    w = np.full(n, 1.0 / n)
    return float(np.sqrt(pot.emd2(w, w, C, numItermax=10_000_000)))


def run(sizes, repeats, dtype):
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        x = rng.normal(size=(n, 2))
        y = rng.normal(size=(n, 2)) * np.array([0.5, 2.0]) + np.array([1.0, -1.0])
        xj, yj = jax.numpy.asarray(x, dtype), jax.numpy.asarray(y, dtype)
        t_scipy, w_scipy = _median(lambda x=x, y=y: _scipy_w2(x, y), repeats)
        t_exact, w_exact = _median(lambda xj=xj, yj=yj: fm.w2(xj, yj, method="exact"), repeats)
        t_sink, res = _median(lambda xj=xj, yj=yj: fm.w2_result(xj, yj, method="sinkhorn"),
                              repeats)
        rows.append((n, "SciPy linear_sum_assignment", t_scipy, w_scipy, "", t_scipy))
        if pot is not None:
            t_pot, w_pot = _median(lambda x=x, y=y: _pot_w2(x, y), repeats)
            rows.append((n, "POT ot.emd2", t_pot, w_pot, "", t_scipy))
        rows.append((n, "fm.w2 exact (ott-jax Hungarian)", t_exact, float(w_exact), "",
                     t_scipy))
        rel = float(res.w2) / w_scipy - 1.0
        rows.append((n, "fm.w2 sinkhorn (ott-jax, eps 1e-2 x mean cost)", t_sink, float(res.w2),
                     f"{int(res.n_iterations)} it, rel. err {rel:+.1e}"
                     + ("" if bool(res.converged) else ", NOT converged"), t_scipy))
    print(f"\nW2 between two 2-D Gaussian samples ({np.dtype(dtype).name}, median of "
          f"{repeats}, compile excluded; backend {jax.default_backend()})\n")
    print("| n | solver | time (s) | x SciPy | W2 | notes |")
    print("|---|---|---|---|---|---|")
    for n, name, t, w, note, ref in rows:
        print(f"| {n} | {name} | {t:.3f} | {t / ref:.2f} | {w:.5f} | {note} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args()
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    run(args.sizes, args.repeats, np.dtype(args.dtype))


if __name__ == "__main__":
    main()
