"""The seven silent traps a new user fell into (issue 17), each reproduced first.

Each row of ``TRAPS`` is a call that used to return a wrong or surprising result without a
word and must now raise a clear error; the tests after the table check the behaviour that
replaced the trap (adaptive sampling, the whole loss curve after a resume, the remembered
source, readable errors under jit) against independent references.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import fmjax as fm

D = 2
KW = dict(steps=20, batch_size=16, steps_per_call=10, ema_decay=0.9, progress=False)


def normal(key, n):
    return jax.random.normal(key, (n, D), jnp.float32)


def shifted(key, n):
    return 2.0 + jax.random.normal(key, (n, D), jnp.float32)


def uniform_box(key, n):
    return jax.random.uniform(key, (n, D), jnp.float32, -3.0, 3.0)


def small_model(seed=0):
    return fm.nn.VelocityMLP(D, width=8, depth=1, rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def trained():
    """A model fit from a non-Gaussian (uniform) source, and one from fm's standard normal."""
    m_box, _ = fm.fit(jax.random.key(0), uniform_box, shifted, model=small_model(), **KW)
    m_std, _ = fm.fit(jax.random.key(0), fm.datasets.standard_normal(D), shifted,
                      model=small_model(), **KW)
    return m_box, m_std


def _ckpt_at_40(tmp):
    d = str(tmp / "ck")
    fm.fit(jax.random.key(1), normal, shifted, model=small_model(), checkpoint_dir=d,
           **dict(KW, steps=40))
    return d


def _state():
    init, step = fm.make_train_step(small_model())
    return step, init(small_model())


# (item, what, thunk(tmp_path, trained), exception, regex the message must match)
TRAPS = [
    (1, "NumPy sampler (global generator)",
     lambda tmp, tr: fm.fit(jax.random.key(0), lambda k, n: np.random.randn(n, D) + 5,
                            shifted, **KW),
     ValueError, r"`sample_x0` does not depend on its key.*use jax\.random with the given "
                 r"key, or pass an array of data"),
    (1, "fixed slice of data as a sampler",
     lambda tmp, tr: fm.fit(jax.random.key(0), normal,
                            lambda k, n: jnp.ones((n, D), jnp.float32), **KW),
     ValueError, r"`sample_x1` does not depend on its key"),
    (2, "an adaptive solver with steps (fixes the grid)",
     lambda tmp, tr: _warning_as_error(lambda: fm.sample(tr[1], jax.random.key(0), 4,
                                                         solver="tsit5", steps=50)),
     UserWarning, r"adaptive.*steps=50 runs it on a fixed grid"),
    (3, "checkpoint past `steps`",
     lambda tmp, tr: fm.fit(jax.random.key(1), normal, shifted, model=small_model(),
                            checkpoint_dir=_ckpt_at_40(tmp), **dict(KW, steps=20)),
     ValueError, r"step 40, past `steps` = 20.*total number of steps"),
    (4, "a sampler returning the wrong number of points",
     lambda tmp, tr: fm.sample(tr[1], jax.random.key(0), 10,
                               sample_x0=lambda k, n: jax.random.normal(k, (7, D))),
     ValueError, r"`sample_x0\(key, n\)` gave 7 points but n = 10"),
    (5, "log_likelihood without base density for a non-Gaussian source",
     lambda tmp, tr: fm.log_likelihood(tr[0], jnp.zeros((2, D), jnp.float32)),
     ValueError, r"`log_density0` is required"),
    (6, "fit with an int key", lambda tmp, tr: fm.fit(0, normal, shifted, **KW),
     ValueError, r"`key` must be a JAX PRNG key such as jax\.random\.key\(0\)"),
    (6, "sample with an int key", lambda tmp, tr: fm.sample(tr[1], 3, 4),
     ValueError, r"`key` must be a JAX PRNG key such as jax\.random\.key\(0\)"),
    (6, "train step with a float key",
     lambda tmp, tr: (lambda s, st: s(st, 0.5, jnp.zeros((4, D)), jnp.ones((4, D))))(*_state()),
     ValueError, r"`key` must be a JAX PRNG key"),
    (6, "coupling with a key array",
     lambda tmp, tr: fm.couplings.ExactOT()(jax.random.split(jax.random.key(0)),
                                            jnp.zeros((4, D)), jnp.ones((4, D))),
     ValueError, r"`key` must be a single PRNG key"),
    (6, "Hutchinson likelihood with an int key",
     lambda tmp, tr: fm.log_likelihood(tr[1], jnp.zeros((2, D), jnp.float32),
                                       divergence="hutchinson", key=7),
     ValueError, r"`key` must be a JAX PRNG key"),
    (6, "w2_floor with an int key",
     lambda tmp, tr: fm.w2_floor(normal, 1, 10), ValueError, r"`key` must be a JAX PRNG key"),
    (7, "t outside [0, 1] under fm.jit: the first line is the fmjax message",
     lambda tmp, tr: fm.jit(lambda t: fm.gaussian_velocity(
         t, jnp.zeros(D), mean0=jnp.zeros(D), cov0=jnp.eye(D), mean1=jnp.zeros(D),
         cov1=jnp.eye(D)))(jnp.asarray(-0.1)),
     ValueError, r"^`t` must lie in \[0\.0, 1\.0\]"),
    (7, "a flow that blows up in finite time is not a step budget",
     lambda tmp, tr: fm.integrate(lambda t, x: x * x, jnp.full((3, 1), 2.0)),
     fm.FlowError, r"^integrate: the flow blows up before t1: the solve stopped at "
                   r"t = 0\.5\d* .*no step budget"),
]


def _warning_as_error(thunk):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return thunk()


@pytest.mark.parametrize("item,what,thunk,exc,pattern", TRAPS,
                         ids=[f"{t[0]}-{t[1]}" for t in TRAPS])
def test_trap_now_raises_a_clear_error(item, what, thunk, exc, pattern, tmp_path, trained):
    with pytest.raises(exc) as info:
        jax.block_until_ready(thunk(tmp_path, trained))
    assert re.search(pattern, str(info.value), re.S), (what, str(info.value)[:500])


def test_traps_table_covers_items_1_to_7():
    assert sorted({t[0] for t in TRAPS}) == list(range(1, 8))


# --------------------------------------------------------------------------------------
# What replaced the traps
# --------------------------------------------------------------------------------------
def test_adaptive_sampling_is_adaptive_and_reports_nfe(trained):
    """Item 2: tsit5 without steps runs adaptively: the same NFE as integrate's adaptive
    solve (not 6 x 100 + 1), and the NFE is returned."""
    _, model = trained
    x, info = fm.sample(model, jax.random.key(4), 64, solver="tsit5", return_info=True)
    x0 = fm.datasets.standard_normal(D)(jax.random.key(4), 64)
    ref = fm.integrate(model, x0, solver="tsit5")
    assert int(info.nfe) == int(ref.nfe) < 6 * 100 + 1
    np.testing.assert_array_equal(np.asarray(x), np.asarray(ref.x))
    _, euler = fm.sample(model, jax.random.key(4), 64, return_info=True)
    assert int(euler.nfe) == 100  # the documented default: 100 Euler steps


def test_model_remembers_its_source(trained, tmp_path):
    """Item 5: sampling uses the training source by default; the likelihood defaults to the
    standard normal density when that was the source; a checkpoint rebuilds a standard
    normal source and refuses to guess any other."""
    m_box, m_std = trained
    key = jax.random.key(5)
    np.testing.assert_array_equal(
        np.asarray(fm.sample(m_box, key, 32)),
        np.asarray(fm.sample(m_box, key, 32, sample_x0=uniform_box)))
    x1 = fm.sample(m_std, key, 8)
    base = lambda x: jnp.sum(jax.scipy.stats.norm.logpdf(x))  # noqa: E731
    np.testing.assert_allclose(np.asarray(fm.log_likelihood(m_std, x1)),
                               np.asarray(fm.log_likelihood(m_std, x1, base)), rtol=1e-6)
    d = str(tmp_path / "ck")
    fm.fit(jax.random.key(0), fm.datasets.standard_normal(D), shifted, model=small_model(),
           checkpoint_dir=d, **KW)
    again = fm.restore(d, small_model())
    np.testing.assert_array_equal(np.asarray(fm.sample(again, key, 8)), np.asarray(x1))
    d2 = str(tmp_path / "ck2")
    fm.fit(jax.random.key(0), uniform_box, shifted, model=small_model(), checkpoint_dir=d2,
           **KW)
    with pytest.raises(ValueError, match="pass `sample_x0`"):
        fm.sample(fm.restore(d2, small_model()), key, 8)


def test_resumed_history_equals_uninterrupted(tmp_path):
    """Item 3 (b): the loss curve is kept in the checkpoint."""
    _, ref = fm.fit(jax.random.key(1), normal, shifted, model=small_model(),
                    **dict(KW, steps=40))
    d = _ckpt_at_40(tmp_path)
    _, again = fm.fit(jax.random.key(1), normal, shifted, model=small_model(),
                      checkpoint_dir=d, **dict(KW, steps=40))  # finished: nothing to train
    np.testing.assert_array_equal(again.loss, ref.loss)
    assert again.resumed_from == 40


def test_readme_says_steps_is_the_total():
    """Item 3 (c)."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "`steps` is the total" in text and "continue" in text


def test_plain_jit_error_carries_the_message():
    """Item 7 under a plain jax.jit: XLA prefixes its callback traceback (the README says
    so); the fmjax message is in the error and fm.jit puts it first."""
    f = jax.jit(lambda t: fm.gaussian_velocity(t, jnp.zeros(D), mean0=jnp.zeros(D),
                                               cov0=jnp.eye(D), mean1=jnp.zeros(D),
                                               cov1=jnp.eye(D)))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"`t` must lie in \[0\.0, 1\.0\]"):
        jax.block_until_ready(f(jnp.asarray(1.5)))
