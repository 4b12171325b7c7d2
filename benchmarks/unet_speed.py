"""Training speed of the U-Net step: ``fm.fit`` against bare JAX loops of the same network.

Usage::

    python -m benchmarks.unet_speed [--presets digits,mnist] [--batches 64,256] [--steps 4]
                                    [--devices 1,8] [--jit_steps 40] [--json PATH]

For each U-Net preset (``fm.nn.UNet.digits`` on 8 x 8, ``fm.nn.UNet.mnist`` on 28 x 28, both
class-conditional with 10 classes) and batch size, one class-conditional flow-matching step
(independent coupling, label dropout 0.1, Adam 1e-3; labelled images drawn from a random
dataset of 1,024 images; N(0, I) noise), timed after compilation, in pairs (the ratio column
is the fmjax row over the bare row below it, measured in the same process):

* ``fm.fit`` with ``steps_per_call = steps`` (``2 steps`` in all; ``History.steps_per_second``
  skips the first chunk, the compilation, so the rate is that of the second ``lax.scan``
  chunk; EMA on, fit's default 0.999) against a bare ``jax.jit`` + ``lax.scan`` of the same
  network (``nnx.split`` of the same module), the same loss (``fm.flow_matching_loss``),
  label dropout by ``jnp.where``, Optax Adam, no EMA, batches drawn inside the step.
* ``fm.fit`` with ``steps_per_call=1`` (a one-step chunk has no loop) against a bare
  ``jax.jit`` per step called from a Python loop. On XLA:CPU a convolution's gradient inside
  a loop body runs 10-80x slower than in a plain ``jit`` (jax-ml/jax#12868), so on the CPU
  this pair, not the scan, is the floor and the way to train a U-Net.

``--devices 1,8`` repeats the scan pair on 8 simulated CPU devices (a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``; fit shards the batch over the
``"data"`` mesh, the bare loop constrains its batches the same way); the column "loss vs 1
device" is the largest relative difference of fit's loss curve from the 1-device run: the
program is the same.

The table is printed as Markdown; ``--json`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

if "--child" in sys.argv:  # the 8-device subprocess: before JAX starts
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import fmjax as fm  # noqa: E402

SIDES = {"digits": 8, "mnist": 28}
N_DATA = 1024
DROPOUT = 0.1


def _data(side):
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(size=(N_DATA, side, side, 1)), -1, 1).astype(np.float32)
    return x, rng.integers(0, 10, N_DATA).astype(np.int32)


def _model(preset):
    return getattr(fm.nn.UNet, preset)(10, rngs=nnx.Rngs(0))


def fit_rate(preset, batch, steps, devices=None, steps_per_call=None):
    x, y = _data(SIDES[preset])
    side = SIDES[preset]

    def src(key, n):
        return jax.random.normal(key, (n, side, side, 1), jnp.float32)

    _, hist = fm.fit(jax.random.key(0), src, x, labels=y, label_dropout=DROPOUT,
                     steps=2 * steps, steps_per_call=steps_per_call or steps, batch_size=batch,
                     model=_model(preset), optimizer=optax.adam(1e-3), progress=False,
                     devices=devices)
    return hist.steps_per_second, hist.wall_time - steps / hist.steps_per_second, hist.loss


def _bare_body(preset, batch, mesh=None):
    model = _model(preset)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x, y = _data(SIDES[preset])
    data, labels = jnp.asarray(x), jnp.asarray(y)
    opt = optax.adam(1e-3)
    null = model.null_label
    constrain = ((lambda a: a) if mesh is None else
                 (lambda a: jax.lax.with_sharding_constraint(
                     a, NamedSharding(mesh, P("data", *([None] * (a.ndim - 1)))))))

    def body(carry, k):
        p, s = carry
        k0, k1, kt, kd = jax.random.split(jax.random.fold_in(jax.random.key(1), k), 4)
        idx = jax.random.randint(k1, (batch,), 0, N_DATA, jnp.int32)
        x0 = constrain(jax.random.normal(k0, (batch, *x.shape[1:]), jnp.float32))
        x1, yb = constrain(data[idx]), constrain(labels[idx])
        yb = jnp.where(jax.random.bernoulli(kd, DROPOUT, (batch,)), null, yb)
        t = jax.random.uniform(kt, (batch,), jnp.float32)

        def loss_fn(p):
            return fm.flow_matching_loss(nnx.merge(graphdef, p, rest), t, x0, x1, labels=yb)

        loss, g = jax.value_and_grad(loss_fn)(p)
        upd, s = opt.update(g, s, p)
        return (optax.apply_updates(p, upd), s), loss

    return body, (params, opt.init(params))


def _time(f, reps=2):
    t0 = time.perf_counter()
    jax.block_until_ready(f())
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f())
        best = min(best, time.perf_counter() - t0)
    return best, first - best


def bare_scan_rate(preset, batch, steps, mesh=None):
    body, carry = _bare_body(preset, batch, mesh)
    with jax.numpy_dtype_promotion("standard"):
        run = jax.jit(lambda c: jax.lax.scan(body, c, jnp.arange(steps, dtype=jnp.int32)))
        best, compile_s = _time(lambda: run(carry), reps=1)
    return steps / best, compile_s


def bare_jit_rate(preset, batch, steps):
    body, carry = _bare_body(preset, batch)
    with jax.numpy_dtype_promotion("standard"):
        one = jax.jit(body)

        def loop():
            c = carry
            for k in range(steps):
                c, loss = one(c, jnp.int32(k))
            return loss

        best, compile_s = _time(loop)
    return steps / best, compile_s


def measure(presets, batches, steps, n_devices, with_bare_jit=True, jit_steps=40):
    rows = []
    devs = jax.devices()[:n_devices]
    mesh = fm.make_mesh(devs) if n_devices > 1 else None
    for preset in presets:
        for batch in batches:
            base = dict(preset=preset, batch=batch, devices=n_devices)
            sps, comp, loss = fit_rate(preset, batch, steps, devs)
            rows.append(dict(base, method="fm.fit (lax.scan chunks)", steps_per_s=sps,
                             compile_s=comp, loss=[float(v) for v in loss]))
            sps_b, comp_b = bare_scan_rate(preset, batch, steps, mesh)
            rows.append(dict(base, method="bare jax.jit + lax.scan", steps_per_s=sps_b,
                             compile_s=comp_b))
            rows[-2]["ratio"] = sps / sps_b
            if with_bare_jit and n_devices == 1:
                sps_1, comp_1, _ = fit_rate(preset, batch, jit_steps, devs, steps_per_call=1)
                rows.append(dict(base, method="fm.fit, steps_per_call=1 (no loop)",
                                 steps_per_s=sps_1, compile_s=comp_1))
                sps_j, comp_j = bare_jit_rate(preset, batch, jit_steps)
                rows.append(dict(base, method="bare jax.jit per step, Python loop",
                                 steps_per_s=sps_j, compile_s=comp_j))
                rows[-2]["ratio"] = sps_1 / sps_j
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def table(rows) -> str:
    fit1 = {(r["preset"], r["batch"]): r["loss"] for r in rows
            if r["devices"] == 1 and "loss" in r}
    out = ["| U-Net | batch | devices | method | steps/s | samples/s | ratio | compile s | "
           "loss vs 1 device |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = fit1.get((r["preset"], r["batch"]))
        dev = "–"
        if "loss" in r and r["devices"] > 1 and ref is not None:
            a, b = np.asarray(r["loss"]), np.asarray(ref)
            dev = f"{float(np.max(np.abs(a - b) / np.abs(b))):.1e}"
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
        out.append(f"| {r['preset']} | {r['batch']} | {r['devices']} | {r['method']} | "
                   f"{r['steps_per_s']:.3g} | {r['steps_per_s'] * r['batch']:,.0f} | {ratio} | "
                   f"{r['compile_s']:.0f} | {dev} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="digits,mnist")
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per row of the scan pair")
    ap.add_argument("--jit_steps", type=int, default=40,
                    help="timed steps per row of the no-loop pair (cheap steps: more are needed "
                         "for a stable rate)")
    ap.add_argument("--devices", default="1,8")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    presets = [p for p in args.presets.split(",") if p]
    batches = [int(b) for b in args.batches.split(",") if b]
    if args.child:
        rows = measure(presets, batches, args.steps, 8)
        print("RESULT " + json.dumps(rows), flush=True)
        return 0
    devices = [int(d) for d in args.devices.split(",")]
    rows = (measure(presets, batches, args.steps, 1, jit_steps=args.jit_steps)
            if 1 in devices else [])
    if 8 in devices:
        cmd = [sys.executable, "-m", "benchmarks.unet_speed", "--child", "--presets",
               args.presets, "--batches", args.batches, "--steps", str(args.steps)]
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        rows += json.loads([ln for ln in proc.stdout.splitlines()
                            if ln.startswith("RESULT ")][-1][7:])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"jax {jax.__version__}, {platform.machine()}, {os.cpu_count()} cores, load average "
          f"{load:.1f} at the end, {args.steps} timed steps per scan row, "
          f"{args.jit_steps} per no-loop row")
    print()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
