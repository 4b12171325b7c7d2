"""Exact minibatch-OT solvers: time per assignment and optimality, measured in one run.

    python -m benchmarks.couplings [--sizes 64 256 512] [--reps 5] [--max-seconds 20]

Batches: x0 ~ N(0, I_2), x1 ~ torchcfm's 8 Gaussians (the N -> 8gaussians task), float32.
Each solver is called through ``fmjax.couplings.exact_ot_permutation`` under ``jax.jit``
(host solvers through ``jax.pure_callback``), except ``lap`` (LAPJV, C++), called directly on
the host when installed. "excess" is the relative excess of the total squared cost over
SciPy's optimum (0 = exact). The median over ``--reps`` calls is printed, with the ratio to
SciPy and the steps/s bound that the solver alone allows. A solver is skipped at larger
sizes once one call exceeds ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from fmjax import couplings, datasets


def sq_cost(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0)


def solvers():
    out = {}
    for name in ("scipy", "pot", "hungarian", "auction"):
        fn = jax.jit(lambda a, b, name=name: couplings.exact_ot_permutation(a, b, solver=name))
        out[name] = lambda a, b, fn=fn: np.asarray(jax.block_until_ready(fn(a, b)))
    try:
        import lap

        out["lap (host)"] = lambda a, b: lap.lapjv(sq_cost(a, b))[1]
    except ImportError:
        pass
    for eps in (0.05, 1e-3):
        fn = jax.jit(lambda k, a, b, eps=eps: couplings.Sinkhorn(eps, max_iterations=5000)(
            k, a, b)[1])
        out[f"sinkhorn eps={eps:g}*mean (pairs)"] = (
            lambda a, b, fn=fn: np.asarray(jax.block_until_ready(fn(jax.random.key(0), a, b))))
    return out


def train_loop_steps_per_second(coupling: str, solver: str, batch: int, steps: int) -> float:
    """Steps/s of a bare flow-matching loop (3 x 64 SELU MLP, Adam, linear path, N ->
    8gaussians): ``fm.make_train_step``'s step in one ``lax.scan``, with the given coupling
    solved inside each step (no host pipeline)."""
    import optax
    from flax import nnx

    import fmjax as fm

    model = fm.nn.VelocityMLP(2, rngs=nnx.Rngs(0))
    value = (couplings.Independent() if coupling == "independent"
             else couplings.ExactOT(solver))
    init, step = fm.make_train_step(model, optax.adam(1e-3), coupling=value, ema_decay=0.0)
    src, tgt = datasets.TASKS["N->8gaussians"]

    def body(state, key):
        k0, k1 = jax.random.split(key, 5)[:2]
        return step(state, key, src(k0, batch), tgt(k1, batch))

    run = jax.jit(lambda state, keys: jax.lax.scan(body, state, keys))
    keys = jax.random.split(jax.random.key(0), steps)
    state = init(model)
    jax.block_until_ready(run(state, keys))
    t0 = time.perf_counter()
    jax.block_until_ready(run(state, keys))
    return steps / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--max-seconds", type=float, default=20.0)
    p.add_argument("--train-steps", type=int, default=200,
                   help="steps of the bare training loop per coupling (0 to skip)")
    args = p.parse_args(argv)
    src, tgt = datasets.TASKS["N->8gaussians"]
    rows = []
    slow = set()
    table = solvers()
    for n in args.sizes:
        k0, k1 = jax.random.split(jax.random.key(n))
        x0 = np.asarray(src(k0, n, jnp.float32))
        x1 = np.asarray(tgt(k1, n, jnp.float32))
        C = sq_cost(x0, x1)
        r, c = linear_sum_assignment(C)
        best = C[r, c].sum()
        ref_time = None
        for name, fn in table.items():
            if name in slow:
                rows.append((n, name, None, None, None))
                continue
            t0 = time.perf_counter()
            out = fn(x0, x1)  # compile + first call
            first = time.perf_counter() - t0
            times = []
            for _ in range(args.reps if first < 10 * args.max_seconds else 0):
                t0 = time.perf_counter()
                out = fn(x0, x1)
                times.append(time.perf_counter() - t0)
                if times[-1] > args.max_seconds:
                    break
            med = float(np.median(times)) if times else first
            if med > args.max_seconds or first > 10 * args.max_seconds:
                slow.add(name)
            if "sinkhorn" in name:  # returned paired x1: cost of the sampled pairs
                cost = ((np.asarray(x0, np.float64) - np.asarray(out, np.float64)) ** 2).sum()
            else:
                cost = C[np.arange(n), np.asarray(out)].sum()
            excess = cost / best - 1
            if name == "scipy":
                ref_time = med
            rows.append((n, name, med, excess, ref_time))
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
          f"devices {jax.devices()[0].device_kind}")
    print()
    print("| n | solver | median ms | x SciPy time | solver-only steps/s | excess cost |")
    print("|---|---|---|---|---|---|")
    for n, name, med, excess, ref in rows:
        if med is None:
            print(f"| {n} | {name} | skipped (too slow) | | | |")
            continue
        ratio = f"{med / ref:.2f}" if ref else ""
        print(f"| {n} | {name} | {med * 1e3:.1f} | {ratio} | {1 / med:.0f} | {excess:.2e} |")
    if args.train_steps:
        print()
        print("Bare lax.scan training loop, 3 x 64 SELU MLP, batch 256, N -> 8gaussians:")
        print()
        print("| coupling | solver | steps/s |")
        print("|---|---|---|")
        cases = [("independent", "auto"), ("ot", "scipy"), ("ot", "auto")]
        for coupling, solver in cases:
            sps = train_loop_steps_per_second(coupling, solver, 256, args.train_steps)
            label = couplings._auto_solver() if solver == "auto" and coupling == "ot" else solver
            print(f"| {coupling} | {label if coupling == 'ot' else '-'} | {sps:.0f} |")


if __name__ == "__main__":
    main()
