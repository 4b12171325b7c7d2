"""Minibatch OT over many devices: coupling solved over the global batch vs per device shard.

Runs on simulated CPU devices (set before JAX starts) and prints a Markdown table of the
normalized path energy NPE = |E - W2^2| / W2^2 (Tong et al.) of the learned flow on
8 Gaussians -> moons, for ``fm.fit(..., coupling=fm.couplings.ExactOT(shard="global" | "local"))``
and for the independent coupling. With D devices and global batch B, "local" solves D
problems of size B / D: cheaper, but OT of a smaller minibatch, hence straighter paths are
lost as B / D shrinks.

    python benchmarks/shard_coupling.py [--devices 8] [--batch 256] [--steps 1500]
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={a.devices}")
    import jax
    import jax.numpy as jnp
    import numpy as np
    import ot as pot

    import fmjax as fm
    from fmjax import datasets

    src, tgt = datasets.TASKS["8gaussians->moons"]
    k0, k1, kt = jax.random.split(jax.random.key(1234), 3)
    x0 = src(k0, a.n_eval)
    y = tgt(k1, a.n_eval)
    C = np.asarray(jnp.sum((x0[:, None, :] - y[None, :, :]) ** 2, -1), np.float64)
    w2sq = float(pot.emd2(np.full(a.n_eval, 1 / a.n_eval), np.full(a.n_eval, 1 / a.n_eval), C,
                          numItermax=10_000_000))
    rows = []
    for coupling, shard in (("independent", "global"), ("ot", "global"), ("ot", "local")):
        t = time.perf_counter()
        value = (fm.couplings.Independent() if coupling == "independent"
                 else fm.couplings.ExactOT(shard=shard))
        model, hist = fm.fit(jax.random.key(a.seed), src, tgt, coupling=value, steps=a.steps,
                             batch_size=a.batch, sigma=0.0)
        train_s = time.perf_counter() - t
        e = float(fm.kinetic_energy(model, x0, solver="euler", steps=100))
        w2 = float(fm.w2(fm.sample(model, kt, a.n_eval, sample_x0=x0), y))
        rows.append((coupling, shard if coupling == "ot" else "-", a.batch // a.devices
                     if shard == "local" and coupling == "ot" else a.batch,
                     e, abs(e - w2sq) / w2sq, w2, train_s))
    print(f"8 Gaussians -> moons, {jax.device_count()} devices ({jax.devices()[0].platform}), "
          f"global batch {a.batch}, {a.steps} steps, W2^2(source, target) = {w2sq:.3f} "
          f"(POT emd2 on {a.n_eval} points)\n")
    print("| coupling | shard | OT problem size | kinetic energy E | NPE | "
          "W2(generated, target) | train s |")
    print("|---|---|---|---|---|---|---|")
    for c, s, n, e, npe, w2, ts in rows:
        print(f"| {c} | {s} | {n} | {e:.3f} | {npe:.3f} | {w2:.3f} | {ts:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
