"""Tests for fm.reflow and fm.change_path on trained nets.

References: the flow's own endpoints (``fm.integrate`` computed independently), Liu et al.'s
Theorem 3.5 (reflow does not increase the transport cost of the coupling), the straightness
identity, and bitwise equality of a resumed reflow with an uninterrupted one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import fmjax as fm

SRC = fm.datasets.standard_normal(2)
KW = dict(batch_size=128, ema_decay=0.99, steps_per_call=100, progress=False)


def ring(key, n):
    """Four Gaussians on a ring: independent flow matching crosses its paths."""
    kc, kz = jax.random.split(key)
    ang = jax.random.randint(kc, (n,), 0, 4).astype(jnp.float32) * jnp.float32(np.pi / 2)
    centres = 3.0 * jnp.stack([jnp.cos(ang), jnp.sin(ang)], axis=1)
    return centres + 0.3 * jax.random.normal(kz, (n, 2), jnp.float32)


def small():
    return fm.nn.VelocityMLP(2, width=32, depth=2, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def flows():
    model, _ = fm.fit(jax.random.key(0), SRC, ring, model=small(), steps=600, **KW)
    rf, hist = fm.reflow(jax.random.key(1), model, n_pairs=2048, steps=600, **KW)
    return model, rf, hist


def test_reflow_pairs_are_the_flow_endpoints(flows):
    model, _, hist = flows
    ref = fm.integrate(model, jnp.asarray(hist.x0), solver="tsit5")
    np.testing.assert_array_equal(hist.x1, np.asarray(ref.x))
    assert hist.pair_nfe == int(ref.nfe)
    k_pairs, _ = jax.random.split(jax.random.key(1))
    np.testing.assert_array_equal(hist.x0, np.asarray(SRC(k_pairs, 2048)))


def test_reflow_straightens_and_does_not_raise_the_transport_cost(flows):
    """S drops by a large factor; the cost E||phi'_1(X0) - X0||^2 of the new coupling is at
    most the old one's (Liu et al. 2023, Thm 3.5) up to the training error of 600 steps."""
    model, rf, _ = flows
    x0 = SRC(jax.random.key(9), 2000)
    before = fm.straightness(model, x0)
    after = fm.straightness(rf, x0)
    assert float(after.value) < 0.5 * float(before.value), (before.value, after.value)
    assert float(after.endpoint_cost) <= 1.05 * float(before.endpoint_cost)
    assert rf.source == SRC  # the new model remembers the law of x0, not the finite pairs


def test_reflow_resumes_bitwise(tmp_path, flows):
    model, _, _ = flows
    args = dict(n_pairs=256, **dict(KW, steps_per_call=20))
    ref, h_ref = fm.reflow(jax.random.key(3), model, steps=60, **args)
    d = tmp_path / "rf"
    _, h_a = fm.reflow(jax.random.key(3), model, steps=40, checkpoint_dir=d, **args)
    assert h_a.pair_seconds > 0
    out, h_b = fm.reflow(jax.random.key(3), model, steps=60, checkpoint_dir=d, **args)
    assert h_b.pair_seconds == 0.0 and h_b.resumed_from == 40  # pairs loaded, training resumed
    np.testing.assert_array_equal(h_b.loss, h_ref.loss)
    for a, b in zip(jax.tree.leaves(nnx.state(out, nnx.Param)),
                    jax.tree.leaves(nnx.state(ref, nnx.Param)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="pairs of another reflow"):
        fm.reflow(jax.random.key(4), model, steps=60, checkpoint_dir=d, **args)


def test_changed_path_net_samples_the_same_points(flows):
    """A net trained on the linear path, changed to the trigonometric path, has the same
    time-1 map (c(0) = c(1) = 1): the endpoints agree pointwise up to the solver error."""
    model, _, _ = flows
    u = fm.change_path(model, trained_on=fm.Linear(), to=fm.Trigonometric())
    x0 = SRC(jax.random.key(11), 512)
    a = fm.integrate(model, x0, rtol=1e-6, atol=1e-6).x
    b = fm.integrate(u, x0, rtol=1e-6, atol=1e-6).x
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-3)
