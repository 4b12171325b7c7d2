"""Subprocess worker for tests/test_train.py and tests/test_sharding.py.

Run as ``python tests/scripts/train_worker.py MODE [args]``; prints one JSON line
(prefixed ``RESULT``) on success. Modes:

- ``train DIR STEPS``: a checkpointed run (slowed down by ``FMJAX_TEST_SLEEP`` seconds after
  each checkpoint, on the host, so that it can be killed mid-run).
- ``resume DIR STEPS``: resume from DIR, then run the same training uninterrupted without
  checkpoints; report whether the parameters are bitwise equal.
- ``sharding``: run with 8 simulated CPU devices (set XLA_FLAGS before starting).
- ``dist PID PORT``: one of two processes joined by ``jax.distributed``.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

MODE = sys.argv[1]
if MODE == "dist":
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{sys.argv[3]}",
                               num_processes=2, process_id=int(sys.argv[2]),
                               initialization_timeout=60)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import fmjax as fm  # noqa: E402

SLEEP = float(os.environ.get("FMJAX_TEST_SLEEP", "0"))
if SLEEP:  # slow the run down on the host only (the compiled program is unchanged)
    from fmjax import _checkpoint

    _save = _checkpoint.save

    def _slow_save(*args, **kwargs):
        _save(*args, **kwargs)
        time.sleep(SLEEP)

    _checkpoint.save = _slow_save


def sample_x0(key, n):
    return jax.random.normal(key, (n, 2), jnp.float32)


def sample_x1(key, n):
    return jnp.array([[2.0, -1.0]], jnp.float32) + 0.5 * jax.random.normal(key, (n, 2),
                                                                          jnp.float32)


def make_model():
    return fm.nn.VelocityMLP(2, width=32, depth=2, rngs=nnx.Rngs(0))


def leaves(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def report(**kw):
    print("RESULT " + json.dumps(kw), flush=True)


KW = dict(batch_size=64, steps_per_call=10, checkpoint_every=20, ema_decay=0.9, progress=False)

if MODE == "train":
    directory, steps = sys.argv[2], int(sys.argv[3])
    model, hist = fm.fit(jax.random.key(7), sample_x0, sample_x1, steps=steps,
                         model=make_model(), checkpoint_dir=directory, **KW)
    report(final_step=int(hist.state.step))

elif MODE == "resume":
    directory, steps = sys.argv[2], int(sys.argv[3])
    resumed, h1 = fm.fit(jax.random.key(7), sample_x0, sample_x1, steps=steps,
                         model=make_model(), checkpoint_dir=directory, **KW)
    fresh, h2 = fm.fit(jax.random.key(7), sample_x0, sample_x1, steps=steps,
                       model=make_model(), **KW)
    equal = all(np.array_equal(a, b) for a, b in zip(leaves(resumed), leaves(fresh),
                                                     strict=True))
    raw_equal = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree.leaves(h1.state), jax.tree.leaves(h2.state), strict=True))
    # the resumed run's history is the whole curve (from the checkpoint, then this call)
    tail_equal = bool(np.array_equal(h1.loss, h2.loss))
    report(resumed_from=h1.resumed_from, equal=bool(equal), raw_equal=bool(raw_equal),
           tail_equal=tail_equal, n_params=int(sum(x.size for x in leaves(fresh))))

elif MODE == "sharding":
    import tempfile

    devs = jax.devices()
    out = {"n_devices": len(devs)}
    kw = dict(steps=40, batch_size=64, steps_per_call=20, ema_decay=0.0)
    m1, h1 = fm.fit(jax.random.key(3), sample_x0, sample_x1, model=make_model(),
                    devices=devs[:1], **kw)
    with tempfile.TemporaryDirectory() as d:
        m8, h8 = fm.fit(jax.random.key(3), sample_x0, sample_x1, model=make_model(),
                        checkpoint_dir=d, **kw)
        out["loss_rel_diff"] = float(np.max(np.abs(h8.loss - h1.loss) / np.abs(h1.loss)))
        out["param_max_diff"] = max(float(np.max(np.abs(a - b)))
                                    for a, b in zip(leaves(m8), leaves(m1), strict=True))
        out["param_scale"] = max(float(np.max(np.abs(a))) for a in leaves(m1))
        # Restore the 8-device checkpoint onto 1 and onto 4 devices.
        out["restored_equal"] = {}
        for k in (1, 4):
            r = fm.restore(d, make_model(), devices=devs[:k])
            out["restored_equal"][str(k)] = all(np.array_equal(a, b) for a, b in zip(
                leaves(r), leaves(m8), strict=True))
    try:
        fm.fit(jax.random.key(3), sample_x0, sample_x1, model=make_model(),
               **dict(kw, batch_size=12))
        out["indivisible_error"] = None
    except ValueError as e:
        out["indivisible_error"] = str(e)
    # "local" coupling (per-device exact OT via shard_map) runs and differs from "global".
    # (The global coupling on 8 devices equals the 1-device run: measured 0 difference.)
    kw_ot = dict(kw, steps=20, coupling="ot")
    _, hg = fm.fit(jax.random.key(3), sample_x0, sample_x1, model=make_model(), **kw_ot)
    _, hl = fm.fit(jax.random.key(3), sample_x0, sample_x1, model=make_model(),
                   **dict(kw_ot, coupling=fm.couplings.ExactOT(shard="local")))
    out["ot_local_first_loss"] = float(hl.loss[0])
    out["ot_global_first_loss"] = float(hg.loss[0])
    report(**out)

elif MODE == "dist":
    devs = jax.devices()
    kw = dict(steps=30, batch_size=64, steps_per_call=10, ema_decay=0.0)
    m2, h2 = fm.fit(jax.random.key(5), sample_x0, sample_x1, model=make_model(), **kw)
    m1, h1 = fm.fit(jax.random.key(5), sample_x0, sample_x1, model=make_model(),
                    devices=jax.local_devices()[:1], **kw)
    report(process_index=jax.process_index(), process_count=jax.process_count(),
           n_devices=len(devs), loss2=h2.loss.tolist(), loss1=h1.loss.tolist(),
           params2=[x.ravel()[:50].tolist() for x in leaves(m2)],
           param_max_diff=max(float(np.max(np.abs(a - b)))
                              for a, b in zip(leaves(m2), leaves(m1), strict=True)))
    jax.distributed.shutdown()
else:  # pragma: no cover
    raise SystemExit(f"unknown mode {MODE}")
