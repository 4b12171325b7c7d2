"""End-to-end test of ``experiments/images.py`` (issue 16): a tiny ``run(config, tmp_path)``
whose reported numbers are recomputed here with independent code (SciPy's ``cdist`` and
``sqrtm``, the cached classifier applied again), plus its restart and resume behaviour."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import cdist

from experiments import images

TINY = images.Config(
    dataset="digits", net="tiny", conditionings=("unconditional", "conditional"),
    couplings=("ot",), steps=30, batch_size=32, warmup=10, checkpoint_every=15,
    guidance=(0.0, 2.0), euler_steps=4, nfe_steps=(2, 4), n_eval=50, classifier_steps=150,
    figures=False, progress=False)


def _fd_scipy(f1, f2):
    """The Frechet distance with SciPy's matrix square root (the FID formula)."""
    m1, m2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_is_the_bures_w2_of_the_gaussian_fits():
    rng = np.random.default_rng(0)
    f1 = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    f2 = 0.5 + rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    got = images.frechet_distance(f1, f2)
    np.testing.assert_allclose(got, _fd_scipy(f1, f2), rtol=1e-8)
    import fmjax as fm

    w2sq = fm.gaussian_w2_squared(jnp.asarray(f1.mean(0)), jnp.asarray(np.cov(f1, rowvar=False)),
                                  jnp.asarray(f2.mean(0)), jnp.asarray(np.cov(f2, rowvar=False)))
    np.testing.assert_allclose(got, float(w2sq), rtol=1e-8)
    assert abs(images.frechet_distance(f1, f1)) < 1e-9
    # rank-deficient covariances (dead ReLU units) are fine
    g1, g2 = np.c_[f1, np.zeros(400)], np.c_[f2, np.zeros(300)]
    np.testing.assert_allclose(images.frechet_distance(g1, g2), got, rtol=1e-8)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("images")
    return workdir, images.run(TINY, workdir)


def test_tiny_run_numbers_recomputed(tiny_run):
    workdir, res = tiny_run
    x_train, y_train, x_test, y_test = images.load_data("digits")
    assert (res["n_train"], res["n_test"]) == (1438, 359)
    saved = json.loads((workdir / "results.json").read_text())
    assert saved["nets"]["cond-ot"]["guidance_rows"][1]["fd"] == pytest.approx(
        res["nets"]["cond-ot"]["guidance_rows"][1]["fd"])
    assert "Frechet" in (workdir / "results.md").read_text()

    # the cached classifier, applied again
    clf, info = images.train_classifier(x_test, y_test, TINY, workdir / "classifier.npz")
    assert info["cached"]
    logits = np.asarray(clf(jnp.asarray(x_train)))
    acc = float(np.mean(logits.argmax(1) == y_train))
    assert res["classifier"]["accuracy_on_train_split"] == pytest.approx(acc, abs=1e-12)
    assert acc > 0.5  # 150 steps on 359 digits: far above chance (10%)

    def feats(x):
        return np.asarray(clf.features(jnp.asarray(x)), np.float64)

    f_test = feats(x_test)
    d_test = cdist(x_test.reshape(len(x_test), -1), x_train.reshape(len(x_train), -1)).min(1)
    tau = np.quantile(d_test, TINY.memo_quantile)
    assert res["memo_threshold"] == pytest.approx(tau, rel=1e-9)

    floor, dirac = res["references"]
    pick = np.random.default_rng(TINY.seed).choice(len(x_train), TINY.n_eval, replace=False)
    assert floor["fd"] == pytest.approx(_fd_scipy(feats(x_train[pick]), f_test), rel=1e-6)
    assert floor["accuracy"] == pytest.approx(np.mean(
        logits[pick].argmax(1) == y_train[pick]), abs=1e-12)
    # Exercise 5: the Dirac field on the training set copies training images
    assert dirac["memorised"] == 1.0 and dirac["median_d_train"] < 1e-2

    for name, net in res["nets"].items():
        main = np.load(workdir / "models" / name / "eval.npz")["main"]
        assert main.shape == (TINY.n_eval, 8, 8, 1)
        row = net["guidance_rows"][0]  # w = 0 (or the unconditional net)
        d = cdist(main.reshape(len(main), -1), x_train.reshape(len(x_train), -1)).min(1)
        assert row["memorised"] == pytest.approx(np.mean(d < tau), abs=1e-12)
        assert row["median_d_train"] == pytest.approx(np.median(d), rel=1e-9)
        assert row["fd"] == pytest.approx(_fd_scipy(feats(main), f_test), rel=1e-5)
        pred = np.asarray(clf(jnp.asarray(main))).argmax(1)
        if net["conditional"]:
            labels = np.repeat(np.arange(10), TINY.n_eval // 10)
            assert row["accuracy"] == pytest.approx(np.mean(pred == labels), abs=1e-12)
            assert [r["w"] for r in net["guidance_rows"]] == list(TINY.guidance)
        else:
            assert row["accuracy"] is None
        # the NFE row at euler_steps is the main sample
        nfe = {r["steps"]: r for r in net["nfe_rows"]}
        assert nfe[TINY.euler_steps]["fd"] == pytest.approx(row["fd"], rel=1e-12)
        assert net["steps"] == TINY.steps and net["loss_last"] < net["loss_first"]
        assert net["params"] > 0 and net["train_seconds"] > 0


def test_tiny_run_restarts_from_stored_results(tiny_run):
    workdir, res = tiny_run
    again = images.run(TINY, workdir)
    assert again["classifier"]["cached"]
    for name, net in res["nets"].items():
        assert again["nets"][name] == net  # not retrained, not re-evaluated


def _leaves(model):
    from flax import nnx

    return [np.asarray(a) for a in jax.tree.leaves(nnx.state(model, nnx.Param))]


def test_training_resumes_bitwise(tmp_path):
    """20 steps in one go equal 10 steps, a restart, and 10 more (the checkpoint carries the
    state and the loss curve; a checkpoint past `steps` or of another configuration is
    refused)."""
    x, y, _, _ = images.load_data("digits")
    cfg = dataclasses.replace(TINY, steps=20, checkpoint_every=10, ema_decay=0.9)
    key = jax.random.key(4)

    def train(directory, steps, **kw):
        c = dataclasses.replace(cfg, steps=steps, **kw)
        model = images.make_unet("tiny", 8, True, 0)
        return images.train(key, model, x, y, coupling=images._coupling("ot"), config=c,
                            directory=directory, fingerprint="fp")

    straight, info = train(tmp_path / "a", 20)
    train(tmp_path / "b", 10)
    resumed, info_b = train(tmp_path / "b", 20)
    assert info_b["resumed_from"] == 10 and info["resumed_from"] is None
    np.testing.assert_array_equal(info_b["loss"], info["loss"])
    for p, q in zip(_leaves(straight), _leaves(resumed), strict=True):
        np.testing.assert_array_equal(p, q)
    with pytest.raises(ValueError, match="past `steps`"):
        train(tmp_path / "b", 10)
    with pytest.raises(ValueError, match="another training configuration"):
        images.train(key, images.make_unet("tiny", 8, True, 0), x, y,
                     coupling=images._coupling("ot"), config=cfg, directory=tmp_path / "b",
                     fingerprint="other")


def test_configs_are_consistent():
    for cfg in (images.Config(), images.Config.quick(), TINY):
        images._check_config(cfg)
        assert images.NETS[cfg.net]
    with pytest.raises(ValueError, match="multiple of 10"):
        images._check_config(dataclasses.replace(TINY, n_eval=15))
    assert images.steps_per_call(TINY) == (1 if jax.default_backend() == "cpu"
                                           else TINY.checkpoint_every)
    with pytest.raises(ValueError, match="steps_per_call"):
        images._check_config(dataclasses.replace(TINY, steps_per_call=-1))
