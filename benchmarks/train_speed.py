"""Training speed of fmjax.fit and time-to-quality on N -> 8 Gaussians.

Usage::

    python -m benchmarks.train_speed [--platform cpu|gpu] [--quick]

Prints Markdown tables:

1. steps/s of ``fm.fit`` for the 3 x 64 SELU MLP (torchcfm's ``MLP(2, w=64,
   time_varying=True)``) on 2-D data (N(0, I) -> 8 Gaussians), batch 256 and 4096,
   independent and exact-OT couplings (compilation excluded: ``History.steps_per_second``
   skips the first chunk). With ``--platform gpu``: also width 512 at batch 4096 and exact
   OT at batch 4096, with samples/s.
2. The same for torchcfm's ``ConditionalFlowMatcher`` / ``ExactOptimalTransport
   ConditionalFlowMatcher`` (PyTorch loop) if ``torch`` and ``torchcfm`` are importable;
   otherwise the rows say "not installed".
3. Time to quality on N(0, I) -> 8 Gaussians (batch 256, sigma 0.1, evaluated every 2,000
   steps up to 20,000; the run resumes from its checkpoint between evaluations, evaluation
   time excluded): W2 of 100-Euler-step samples, averaged over 3 independent target draws,
   against the W2 floor averaged the same way (``_Judge``); the first step/second at which
   each run is within 10% of the floor and, with ``--peer-ttq``, at which it reaches
   torchcfm's final W2 (torchcfm's OT-CFM trained in the same process on the same judge).
4. A bare ``lax.scan`` loop of the same MLP (the compute floor of a step on this CPU).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import fmjax as fm

eight_gaussians = fm.datasets.eight_gaussians  # torchcfm's sample_8gaussians
normal = fm.datasets.standard_normal(2)


def w2(a, b):
    """Exact empirical W2 (POT's network simplex, through ``fm.w2``)."""
    return float(fm.w2(np.asarray(a, np.float64), np.asarray(b, np.float64), method="exact"))


def _coupling(name, solver=None, host_workers=None):
    if name == "independent":
        return fm.couplings.Independent()
    return fm.couplings.ExactOT(solver or "auto", host_workers=host_workers)


def fmjax_speed(batch, coupling, steps, chunk, width=64, repeats=3):
    rates = []
    for seed in range(repeats):
        model = fm.nn.VelocityMLP(2, width=width, rngs=nnx.Rngs(seed))
        _, hist = fm.fit(jax.random.key(seed), normal, eight_gaussians, coupling=coupling,
                         steps=steps, batch_size=batch, steps_per_call=chunk, model=model,
                         progress=False)
        rates.append(hist.steps_per_second)
    return statistics.median(rates)


def bare_loop_speed(batch, steps=2000, chunk=500, width=64, repeats=3):
    """The floor of a training step: the same 3 x width SELU MLP written as plain ``jnp``
    matmuls, Adam(W) by Optax, independent N(0, I) -> 8 Gaussians pairs drawn in the step,
    ``lax.scan`` of ``chunk`` steps; no EMA, no per-step bookkeeping (steps/s, median)."""
    import optax

    chunk = min(chunk, steps)
    sizes = [3, width, width, width, 2]
    opt = optax.adamw(1e-3, weight_decay=1e-5)

    def mlp(ps, h):
        for i, (w, b) in enumerate(ps):
            h = h @ w + b
            h = jax.nn.selu(h) if i < len(ps) - 1 else h
        return h

    def loss(ps, x0, x1, t):
        velocity = lambda s, x: mlp(ps, jnp.concatenate([x, s[None]]))  # noqa: E731
        return fm.flow_matching_loss(velocity, t, x0, x1)

    def step(carry, i):
        ps, st = carry
        k0, k1, kt = jax.random.split(jax.random.fold_in(jax.random.key(0), i), 3)
        x0, x1 = normal(k0, batch), eight_gaussians(k1, batch)
        val, g = jax.value_and_grad(loss)(ps, x0, x1, jax.random.uniform(kt, (batch,)))
        up, st = opt.update(g, st, ps)
        return (optax.apply_updates(ps, up), st), val

    run = jax.jit(lambda c, s: jax.lax.scan(step, c, s + jnp.arange(chunk)))
    rates = []
    for seed in range(repeats):
        keys = jax.random.split(jax.random.key(seed), len(sizes) - 1)
        ps = [(jax.random.normal(k, (a, b)) / math.sqrt(a), jnp.zeros(b))
              for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)]
        carry, _ = run((ps, opt.init(ps)), 0)  # compile + warm-up
        jax.block_until_ready(carry)
        tic = time.perf_counter()
        val = None
        for r in range(steps // chunk):
            carry, val = run(carry, (r + 1) * chunk)
        jax.block_until_ready((carry, val))
        rates.append(steps // chunk * chunk / (time.perf_counter() - tic))
    return statistics.median(rates)


def torchcfm_speed(batch, exact_ot, steps, repeats=3):
    rates = [_torchcfm_rate(batch, exact_ot, steps, seed) for seed in range(repeats)]
    return None if rates[0] is None else statistics.median(rates)


def _torchcfm_rate(batch, exact_ot, steps, seed):
    try:
        import torch
        from torchcfm.conditional_flow_matching import (
            ConditionalFlowMatcher,
            ExactOptimalTransportConditionalFlowMatcher,
        )
        from torchcfm.models.models import MLP
    except Exception:  # noqa: BLE001 - optional comparison
        return None
    torch.manual_seed(seed)
    net = MLP(dim=2, w=64, time_varying=True)
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-5)
    fmatcher = (ExactOptimalTransportConditionalFlowMatcher if exact_ot
                else ConditionalFlowMatcher)(sigma=0.1)
    key = jax.random.key(seed)
    x1_all = torch.from_numpy(np.array(eight_gaussians(key, batch * 64)))
    tic = None
    for i in range(steps + 10):  # the first 10 steps (warm-up) are not timed
        if i == 10:
            tic = time.perf_counter()
        x0 = torch.randn(batch, 2)
        x1 = x1_all[torch.randint(0, x1_all.shape[0], (batch,))]
        t, xt, ut = fmatcher.sample_location_and_conditional_flow(x0, x1)
        loss = ((net(torch.cat([xt, t[:, None]], dim=-1)) - ut) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        del i
    return steps / (time.perf_counter() - tic)


class _Judge:
    """The time-to-quality W2, made robust to the sampling noise of 8 Gaussians.

    W2 between two finite samples of the 8-Gaussians law varies a lot from draw to draw,
    mostly through the multinomial counts per mode (at 5,000 points: 0.256-0.379 over five
    pairs, measured). So W2 and its floor are both averaged over ``reps`` independent
    target draws: ``w2(x)`` is the mean over the draws of W2(x, target_j) and ``floor`` the
    mean of W2(target_j, target'_j) for fresh draws target'_j. Generated points always
    start from the same ``n`` source points (100 Euler steps).
    """

    def __init__(self, n, reps=3):
        keys = jax.random.split(jax.random.key(123), 2 * reps + 1)
        self.targets = [np.asarray(eight_gaussians(k, n)) for k in keys[:reps]]
        self.floor = statistics.mean(w2(t, np.asarray(eight_gaussians(k, n)))
                                     for t, k in zip(self.targets, keys[reps:2 * reps],
                                                     strict=True))
        self.x0 = np.asarray(normal(keys[-1], n))

    def w2(self, x):
        return statistics.mean(w2(x, t) for t in self.targets)


def time_to_quality(coupling, judge, max_steps, every=2000, sigma=0.1, batch=256):
    """fm.fit (AdamW 1e-3, EMA 0.999) evaluated every ``every`` steps: rows of
    (steps, training seconds, W2). Training seconds include compilation, not evaluation."""
    curve, train_seconds, steps = [], 0.0, 0
    with tempfile.TemporaryDirectory() as d:
        while steps < max_steps:
            steps += every
            _, hist = fm.fit(jax.random.key(0), normal, eight_gaussians,
                             coupling=_coupling(coupling), steps=steps, batch_size=batch,
                             checkpoint_dir=d, sigma=sigma, checkpoint_every=every,
                             steps_per_call=every // 4, progress=False)
            train_seconds += hist.wall_time
            model = fm.restore(d)
            x = fm.integrate(model, jnp.asarray(judge.x0), solver="euler", steps=100).x
            curve.append((steps, train_seconds, judge.w2(np.asarray(x))))
    return curve


def _torch_threads():
    try:
        import torch
    except ImportError:
        return "n/a"
    return torch.get_num_threads()


def _load():
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on every OS
        return "n/a"


def torchcfm_time_to_quality(judge, max_steps, every=2000, batch=256, sigma=0.1):
    """torchcfm's ExactOptimalTransportConditionalFlowMatcher (AdamW 1e-3, its 3 x 64 SELU
    MLP, no EMA) on the same task and judge; 100 Euler steps in torch. ``None`` if torchcfm
    is not installed."""
    try:
        import torch
        from torchcfm.conditional_flow_matching import (
            ExactOptimalTransportConditionalFlowMatcher,
        )
        from torchcfm.models.models import MLP
    except Exception:  # noqa: BLE001 - optional comparison
        return None
    torch.manual_seed(0)
    net = MLP(dim=2, w=64, time_varying=True)
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-5)
    fmatcher = ExactOptimalTransportConditionalFlowMatcher(sigma=sigma)
    x1_all = torch.from_numpy(np.array(eight_gaussians(jax.random.key(7), 200_000)))
    x0_eval = torch.from_numpy(judge.x0.copy())
    n = x0_eval.shape[0]
    curve, train_seconds, steps = [], 0.0, 0
    while steps < max_steps:
        tic = time.perf_counter()
        for _ in range(every):
            x0 = torch.randn(batch, 2)
            x1 = x1_all[torch.randint(0, x1_all.shape[0], (batch,))]
            t, xt, ut = fmatcher.sample_location_and_conditional_flow(x0, x1)
            loss = ((net(torch.cat([xt, t[:, None]], dim=-1)) - ut) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        train_seconds += time.perf_counter() - tic
        steps += every
        with torch.no_grad():
            x = x0_eval.clone()
            for i in range(100):
                x = x + net(torch.cat([x, torch.full((n, 1), i / 100.0)], dim=-1)) / 100.0
        curve.append((steps, train_seconds, judge.w2(x.numpy())))
    return curve


def _first_reaching(curve, level):
    for steps, seconds, w in curve:
        if w <= level:
            return steps, seconds
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--platform", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--quick", action="store_true", help="fewer steps (smoke run)")
    ap.add_argument("--n-eval", type=int, default=5000,
                    help="points per side for the time-to-quality W2 (10000: the published "
                         "protocol; slow with SciPy)")
    ap.add_argument("--peer-ttq", action="store_true",
                    help="also time torchcfm's OT-CFM to the same quality (slow: up to "
                         "20,000 steps)")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch.set_num_threads for the torchcfm rows (default 1: on this "
                         "loaded 2-core VM torch's default 2 intra-op threads ran I-CFM ~30x "
                         "slower, 7 vs 229 steps/s; 0 keeps torch's default)")
    ap.add_argument("--xla-threads", type=int, default=0,
                    help="1: single-threaded XLA CPU (sets XLA_FLAGS before the backend "
                         "starts; on the loaded 2-core VM 1.5x faster at batch 256, 2.4x at "
                         "4096); 0 keeps JAX's default thread pool")
    ap.add_argument("--skip-ttq", action="store_true", help="speed table only")
    ap.add_argument("--repeats", type=int, default=3, help="seeds per speed row (median)")
    ap.add_argument("--host-workers", type=int, default=-1,
                    help="ExactOT(host_workers=...) for exact OT (-1: the default, one "
                         "thread per core)")
    ap.add_argument("--ot-solver", default=None,
                    help="solver of fm.couplings.ExactOT (default: 'auto')")
    args = ap.parse_args(argv)
    if args.xla_threads == 1:  # read when the backend starts, i.e. at jax.devices() below
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_"
                                   "eigen=false intra_op_parallelism_threads=1").strip()
    jax.config.update("jax_platforms", args.platform)
    if args.torch_threads > 0:
        try:
            import torch

            torch.set_num_threads(args.torch_threads)
        except ImportError:
            pass
    q = 0.2 if args.quick else 1.0
    dev = jax.devices()[0]
    print(f"# fmjax training speed ({dev.platform}: {getattr(dev, 'device_kind', '')}; "
          f"{jax.device_count()} device(s); {platform.processor() or platform.machine()}; "
          f"jax {jax.__version__}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
          f"torch threads {_torch_threads()}; "
          f"load average {_load()})\n")

    rows = [("3x64 SELU", 256, "independent", int(5000 * q), 500, 64),
            ("3x64 SELU", 256, "ot", int(1000 * q), 250, 64),
            ("3x64 SELU", 4096, "independent", int(500 * q), 100, 64)]
    workers = None if args.host_workers < 0 else args.host_workers
    if args.platform == "gpu":
        rows += [("3x64 SELU", 4096, "ot", int(200 * q), 50, 64),
                 ("3x512 SELU", 4096, "independent", int(2000 * q), 500, 512),
                 ("3x512 SELU", 4096, "ot", int(200 * q), 50, 512)]
    print("| net | batch | coupling | fmjax steps/s | samples/s | torchcfm steps/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for net, batch, coupling, steps, chunk, width in rows:
        variants = [(coupling, workers)]
        if coupling == "ot" and workers != 0:  # also the in-step callback, for comparison
            variants.append(("ot, in-step callback", 0))
        ref = torchcfm_speed(batch, coupling == "ot", max(50, steps // 5),
                             repeats=args.repeats) if width == 64 else None
        for label, hw in variants:
            rate = fmjax_speed(batch, _coupling(coupling, args.ot_solver, hw), steps,
                               min(chunk, steps), width=width, repeats=args.repeats)
            ref_s = "not installed" if ref is None else f"{ref:,.0f}"
            ratio = "" if ref is None else f"{rate / ref:.1f}x"
            print(f"| {net} | {batch} | {label} | {rate:,.0f} | {rate * batch:,.0f} | "
                  f"{ref_s} | {ratio} |", flush=True)
    if args.platform == "cpu":
        for batch in (256, 4096):
            rate = bare_loop_speed(batch, steps=int(2000 * q) if batch == 256 else
                                   int(200 * q), chunk=500 if batch == 256 else 50,
                                   repeats=args.repeats)
            print(f"| bare lax.scan loop, 3x64 SELU (no EMA, floor) | {batch} | independent | "
                  f"{rate:,.0f} | {rate * batch:,.0f} | | |", flush=True)

    if args.skip_ttq:
        print(f"\nload average at the end: {_load()}")
        return
    print(f"\n## Time to quality, N -> 8 Gaussians (batch 256, sigma 0.1, W2 at {args.n_eval:,} "
          f"vs {args.n_eval:,} points, mean over 3 target draws)\n")
    judge = _Judge(args.n_eval)
    max_steps, every = int(20_000 * q), int(2000 * q)
    curves = {f"fmjax {c}": time_to_quality(c, judge, max_steps, every=every)
              for c in ("ot", "independent")}
    if args.peer_ttq:
        peer = torchcfm_time_to_quality(judge, max_steps, every=every)
        if peer is not None:
            curves["torchcfm OT-CFM"] = peer
    print("| run | " + " | ".join(f"{s:,}" for s, _, _ in next(iter(curves.values()))) + " |")
    print("|---|" + "---|" * len(next(iter(curves.values()))))
    for name, curve in curves.items():
        print(f"| {name}: W2 (train s) | "
              + " | ".join(f"{w:.3f} ({sec:.0f})" for _, sec, w in curve) + " |")
    target = 1.1 * judge.floor
    levels = [("1.1 x floor", target)]
    if "torchcfm OT-CFM" in curves:
        levels.append(("torchcfm's final W2", curves["torchcfm OT-CFM"][-1][2]))
    print(f"\nW2 floor (mean of 3 pairs): {judge.floor:.3f}\n")
    print("| run | " + " | ".join(f"first reaching {lab} ({lev:.3f}): steps, train s"
                                   for lab, lev in levels) + " |")
    print("|---|" + "---|" * len(levels))
    for name, curve in curves.items():
        cells = []
        for _, lev in levels:
            hit = _first_reaching(curve, lev)
            cells.append("not reached" if hit is None else f"{hit[0]:,}, {hit[1]:.0f} s")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nload average at the end: {_load()}")


if __name__ == "__main__":
    main()
