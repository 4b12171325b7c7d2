"""Timing probes behind the w2bench budget (``docs/results/w2bench/PROTOCOL.md``).

Per dimension D, with the velocity MLP of ``experiments.w2bench.net_size(D)``, measures the
cost of one training step of each method (``fm.fit`` after compilation: I-FM at the I-FM
batch and at 256 and 4,096, ExactOT at 256 and 1,024, Sinkhorn at 4,096) and of one Tsit5
time-1 solve of 2^14 points. Reports wall seconds and process CPU seconds per step: on a
shared machine the CPU seconds (all threads) are the better guide to an idle machine.

    python docs/results/w2bench/probe_costs.py --dims 2,64 --steps 40 [--methods ...]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import optax
from flax import nnx

import fmjax as fm
from experiments import w2bench as wb


def _timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    jax.block_until_ready(jax.tree.leaves(out))
    return out, time.perf_counter() - t, time.process_time() - c


def probe(dim: int, method: str, steps: int, batch: int | None = None) -> dict:
    """Seconds per step of ``method`` ("ifm", "otfm256", "otfm1024", "sinkhorn4096")."""
    pair = wb.load_pair(dim)
    proto = wb.run_protocol(wb.Config(steps=steps), dim, method)
    batch = batch or proto["batch_size"]
    sx0, sx1 = wb._samplers(pair)

    def fit(n):
        model = fm.nn.VelocityMLP(dim, width=proto["width"], depth=proto["depth"],
                                  activation="selu", rngs=nnx.Rngs(0))
        return fm.fit(jax.random.key(0), sx0, sx1, coupling=wb._coupling(proto), steps=n,
                      batch_size=batch, model=model, optimizer=optax.adamw(1e-3),
                      steps_per_call=steps, progress=False)

    # A first run compiles the chunk of `steps` steps (fit reuses the compiled program); the
    # timed run of four chunks includes fit's start-up, so the cost is a slight overestimate.
    _, w1, c1 = _timed(lambda: fit(steps))
    (model, _), w2, c2 = _timed(lambda: fit(4 * steps))
    w1 = c1 = 0.0
    steps = 4 * steps
    x = pair.source(jax.random.key(1), wb.N_EVAL)
    sol, wi, ci = _timed(lambda: fm.integrate(model, x, solver="tsit5"))
    sol, wi, ci = _timed(lambda: fm.integrate(model, x, solver="tsit5"))  # compiled
    return dict(dim=dim, method=method, batch=batch, width=proto["width"],
                depth=proto["depth"], wall_per_step=(w2 - w1) / steps,
                cpu_per_step=(c2 - c1) / steps,  tsit5_wall=wi, tsit5_cpu=ci,
                tsit5_nfe=int(sol.nfe))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dims", default="2,8,32,64")
    p.add_argument("--methods", default="ifm,otfm256,otfm1024,sinkhorn4096")
    p.add_argument("--steps", type=int, default=40)
    a = p.parse_args()
    for dim in (int(d) for d in a.dims.split(",")):
        for method in a.methods.split(","):
            print(json.dumps(probe(dim, method, a.steps)), flush=True)


if __name__ == "__main__":
    main()
