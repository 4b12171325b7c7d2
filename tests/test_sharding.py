"""Data-parallel training (issue 6), in subprocesses so this suite's device count is unchanged.

References: the single-device run of the same program (same batches, derived from
(key, step)), equal up to float32 reduction order; a checkpoint's own values (bitwise)
when restored on another device count.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "scripts", "train_worker.py")


def _env(**extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def _result(out):
    lines = [x for x in out.splitlines() if x.startswith("RESULT ")]
    assert lines, out[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_eight_simulated_devices_match_one_and_checkpoints_move(tmp_path):
    """8 CPU devices vs 1: loss curve and parameters equal within float32 reduction
    tolerance (a mean over a batch sharded 8 ways sums in another order); the checkpoint
    written from 8 devices restores bitwise on 1 and on 4 devices; a batch of 12 on 8
    devices is refused naming both numbers; the per-device ("local") OT coupling runs and
    differs from the global one."""
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, WORKER, "sharding"], env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = _result(proc.stdout)
    assert res["n_devices"] == 8
    assert res["loss_rel_diff"] < 1e-5, res
    assert res["param_max_diff"] < 1e-5 * max(1.0, res["param_scale"]), res
    assert res["restored_equal"] == {"1": True, "4": True}, res
    err = res["indivisible_error"]
    assert err is not None and "12" in err and "8" in err, err
    assert res["ot_local_first_loss"] != res["ot_global_first_loss"], res


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    """Two real processes joined by jax.distributed (gloo CPU collectives, loopback) train
    one model over a global mesh of 2 devices; the loss curve equals, within float32
    reduction tolerance, that of one process with the same global batch, and both processes
    hold the same parameters."""
    port = _free_port()
    env = _env(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, WORKER, "dist", str(i), str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=240))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("distributed workers did not finish within 240 s")
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-4000:]
    r0, r1 = (_result(o) for o, _ in outs)
    assert {r0["process_index"], r1["process_index"]} == {0, 1}
    assert r0["process_count"] == 2 and r0["n_devices"] == 2
    for r in (r0, r1):
        loss1, loss2 = np.array(r["loss1"]), np.array(r["loss2"])
        np.testing.assert_allclose(loss2, loss1, rtol=1e-5)
        assert r["param_max_diff"] < 1e-5
    for a, b in zip(r0["params2"], r1["params2"], strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
