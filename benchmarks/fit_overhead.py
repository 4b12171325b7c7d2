"""``fm.fit`` steps/s before and after a change, measured in one run.

Usage::

    python -m benchmarks.fit_overhead --before REV [--repeats 5] [--quick]

Checks out ``REV`` (e.g. the commit before a refactor) in a temporary git worktree and
times ``fm.fit`` of the 3 x 64 SELU MLP on N(0, I) -> 8 Gaussians, batch 256, with the
independent coupling and with exact minibatch OT (POT, host pipeline), in fresh
subprocesses that alternate between the two source trees (single-threaded XLA), so that both
sides see the same machine load. Prints the median steps/s (``History.steps_per_second``:
compilation excluded) of each side and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The same script runs against either source tree: only the API both have.
_MEASURE = r"""
import json, sys
import jax, jax.numpy as jnp
from flax import nnx
import fmjax as fm
coupling, steps, chunk, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
normal = lambda key, n: jax.random.normal(key, (n, 2), jnp.float32)
model = fm.nn.VelocityMLP(2, rngs=nnx.Rngs(seed))
_, hist = fm.fit(jax.random.key(seed), normal, fm.datasets.eight_gaussians, coupling=coupling,
                 steps=steps, batch_size=256, steps_per_call=chunk, model=model)
print("RESULT " + json.dumps({"rate": hist.steps_per_second, "loss": float(hist.loss[-1]),
                              "file": fm.__file__}))
"""


def _measure(src: Path, coupling: str, steps: int, chunk: int, seed: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    out = subprocess.run([sys.executable, "-c", _MEASURE, coupling, str(steps), str(chunk),
                          str(seed)], cwd=src, env=env, capture_output=True, text=True,
                         check=True).stdout
    res = json.loads([x for x in out.splitlines() if x.startswith("RESULT ")][-1][7:])
    if not res["file"].startswith(str(src)):
        raise RuntimeError(f"measured {res['file']}, not the tree {src}")
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="git revision to compare against")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    q = 0.2 if args.quick else 1.0
    cases = [("independent", int(5000 * q), 500), ("ot", int(1000 * q), 250)]
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before],
                       cwd=ROOT, check=True, capture_output=True)
        try:
            rates: dict = {}
            for r in range(args.repeats):
                for coupling, steps, chunk in cases:
                    for side, src in (("before", before), ("after", ROOT)):
                        res = _measure(src, coupling, steps, chunk, seed=r)
                        rates.setdefault((coupling, side), []).append(res["rate"])
                        # the same training, bit for bit: the refactor changed no result
                        rates.setdefault((coupling, side, "loss"), []).append(res["loss"])
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT,
                           check=False, capture_output=True)
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nfm.fit steps/s, 3x64 SELU, batch 256, N -> 8 Gaussians; before = {args.before}, "
          f"after = the working tree; median of {args.repeats} alternating runs; load average "
          f"at the end {load}\n")
    print("| coupling | steps | before steps/s | after steps/s | after / before | same losses |")
    print("|---|---|---|---|---|---|")
    for coupling, steps, _ in cases:
        b, a = (statistics.median(rates[(coupling, s)]) for s in ("before", "after"))
        same = rates[(coupling, "before", "loss")] == rates[(coupling, "after", "loss")]
        print(f"| {coupling} | {steps:,} | {b:,.0f} | {a:,.0f} | {a / b:.3f} | "
              f"{'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
