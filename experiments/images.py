r"""Class-conditional flow matching on images: MNIST-5k (8 x 8 digits with ``--quick``).

Four U-Net velocity fields are trained from N(0, I) images to the training split:
{unconditional, class-conditional} x {independent, exact minibatch-OT coupling}. The
conditional nets see ``(x, y)`` pairs, with the label replaced by the net's null label with
probability ``label_dropout`` (so one net is both conditional and unconditional), and are
sampled with classifier-free guidance ``v = (1 + w) v(t, x, y) - w v(t, x, null)``
(``fm.sample(..., labels=y, guidance=w)``). With labels, the OT coupling pairs noise and
images within each class (``fm.couplings.ExactOT()``).

Metrics, all computed offline on ``n_eval`` samples (the same starting noise for every
guidance weight and step count):

1. **Accuracy** of a small CNN classifier (Flax NNX; trained here on the *held-out* split and
   cached in the workdir as ``classifier.npz``) on conditional samples, at the guidance
   weights ``w`` of ``Config.guidance``. Its accuracy on the training split of the flows (real
   digits it has never seen) is the reference.
2. **Frechet distance** between samples and the held-out images in that classifier's
   penultimate features (the ``classifier_features`` pre-activations of its last hidden
   layer): the Frechet (Bures-W2) distance
   of the two Gaussian fits. It is *not* the Inception FID (no Inception net, other
   features, other scale); compare it only with the floor in the same table, the distance of
   ``n_eval`` training images to the held-out ones.
3. **Memorisation**: the fraction of samples whose nearest training image (pixel L2) is closer
   than the ``memo_quantile`` quantile of the held-out images' nearest-training-image
   distances (real unseen digits: ``memo_quantile`` by construction). The closed-form
   ``fm.dirac_velocity`` on the training set, the exact minimiser of the flow-matching loss on
   it (Exercise 5 of the notes), lands on training images: the 100 % reference.
4. **Quality against NFE**: Frechet distance (and accuracy) of Euler samples with
   ``nfe_steps`` steps (guidance 0: one net evaluation per step).

Figures: a sample grid per conditional net (rows: classes, column groups: guidance weights),
unconditional and Dirac samples next to held-out images, trajectories ``x_t`` of every net,
quality against NFE and against ``w``. Outputs: ``results.json``, ``results.md``, PNGs.

Restarts. Every net is trained in ``workdir/models/NAME`` with checkpoints (every
``checkpoint_every`` steps) and its evaluation is stored there (``eval.json``, ``eval.npz``):
an interrupted run started again with the same command resumes where it stopped; finished
nets are not retrained nor re-evaluated. A checkpoint of another training configuration is
refused (use another workdir).

Training: ``fm.fit`` (Orbax checkpoints every ``checkpoint_every`` steps). On the CPU it
runs one step per compiled call (``steps_per_call=1``: a one-step chunk has no loop): XLA:CPU
runs the gradient of a convolution inside a loop body (``lax.scan``/``while``) 10 to 80 times
slower than in a plain ``jax.jit`` (jax-ml/jax#12868; 0.69 s against 0.078 s per step of the
8 x 8 quick net at batch 64, measured on the 2-core CPU); elsewhere ``checkpoint_every``
steps per call.

Protocol of the full CPU run (the defaults): MNIST-5k (4,000 training, 1,000 held-out
images, 28 x 28 in [-1, 1]); the ``mnist_cpu`` U-Net (the ``mnist`` preset at half width:
widths 8, 16, 16 at 28, 14, 7 pixels, one residual block per level, attention at 7 x 7 and
in the middle; 71,033 parameters unconditional); 4,000 steps of batch 64 per net, Adam 1e-3
with 200 warm-up steps and gradient clipping at 1, EMA 0.999, label dropout 0.2; classifier
2,000 steps; 500 samples per evaluation (50 per class), Euler with 100 steps, guidance w in
{0, 0.5, 1, 2, 4}, NFE sweep of 2 to 100 Euler steps. Its cost on the 2-core CPU is written
into results.md.

    python -m experiments.images --quick                    # 8 x 8 digits, a few minutes
    python -m experiments.images --workdir runs/images      # the full CPU run (MNIST-5k)

GPU batch job (the ``mnist_large`` preset, 6.8 M parameters; ``fm.fit`` with its ``lax.scan``
chunks and host-side OT, 1,000 samples per evaluation)::

    #!/bin/bash
    #SBATCH --gpus=1 --cpus-per-task=8 --time=04:00:00
    .venv/bin/python -m experiments.images --net=mnist_large --steps=30000 \
        --batch_size=128 --lr=2e-4 --n_eval=1000 --workdir runs/images-gpu
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import fmjax as fm
from fmjax import datasets

from . import _common

NAME = "images"
NUM_CLASSES = 10

#: U-Net configurations by name: the library presets and the CPU sizes chosen here.
NETS: dict[str, dict[str, Any]] = {
    "digits": dict(preset="digits"),
    "mnist": dict(preset="mnist"),
    "mnist_large": dict(preset="mnist_large"),
    # The mnist preset at half width (28 x 28; widths 8, 16, 16): the CPU full run.
    "mnist_cpu": dict(preset="mnist", channels=8, num_groups=4),
    # The digits preset without attention (8 x 8): the quick run.
    "digits_cpu": dict(preset="digits", attention_resolutions=(), mid_attention=False),
    # A few thousand parameters (8 x 8): the tests.
    "tiny": dict(image_size=8, channels=8, channel_mult=(1,), num_res_blocks=1,
                 attention_resolutions=(), mid_attention=False, num_groups=4),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """images configuration (defaults: the full CPU run on MNIST-5k)."""

    dataset: str = "mnist5k"  # or "digits" (8 x 8)
    net: str = "mnist_cpu"  # a name in NETS
    seed: int = 0
    conditionings: tuple[str, ...] = ("unconditional", "conditional")
    couplings: tuple[str, ...] = ("independent", "ot")
    # training
    steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 200
    clip: float = 1.0
    ema_decay: float = 0.999
    label_dropout: float = 0.2
    checkpoint_every: int = 500
    steps_per_call: int = 0  # 0: 1 on the CPU (see steps_per_call), else checkpoint_every
    # evaluation
    guidance: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
    euler_steps: int = 100
    nfe_steps: tuple[int, ...] = (2, 5, 10, 20, 50, 100)
    n_eval: int = 500  # samples per evaluation, a multiple of 10 (as many per class)
    memo_quantile: float = 0.05
    dirac: bool = True
    dirac_t1: float = 1.0 - 1e-4  # the Dirac field has no limit at t = 1
    # the classifier (trained on the held-out split)
    classifier_steps: int = 2000
    classifier_batch: int = 128
    classifier_lr: float = 1e-3
    classifier_features: int = 64
    figures: bool = True
    progress: bool = True

    @classmethod
    def quick(cls) -> Config:
        return cls(dataset="digits", net="digits_cpu", steps=600, warmup=50,
                   checkpoint_every=200, n_eval=200, nfe_steps=(2, 5, 10, 20, 100),
                   classifier_steps=600)


# --------------------------------------------------------------------------------------
# Data and nets
# --------------------------------------------------------------------------------------
def load_data(dataset: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` as float32 images in [-1, 1] and int32 labels."""
    if dataset == "digits":
        tr, te = datasets.digits_images("train"), datasets.digits_images("test")
    elif dataset == "mnist5k":
        tr, te = datasets.mnist5k("train"), datasets.mnist5k("test")
    else:
        raise ValueError(f"`dataset` must be 'digits' or 'mnist5k', got {dataset!r}")
    return (np.asarray(tr[0], np.float32), np.asarray(tr[1], np.int32),
            np.asarray(te[0], np.float32), np.asarray(te[1], np.int32))


def make_unet(net: str, image_size: int, conditional: bool, seed: int) -> fm.nn.UNet:
    """The U-Net ``net`` of :data:`NETS` (``num_classes=10`` when conditional)."""
    if net not in NETS:
        raise ValueError(f"`net` must be one of {sorted(NETS)}, got {net!r}")
    kw = dict(NETS[net])
    preset = kw.pop("preset", None)
    k = NUM_CLASSES if conditional else None
    rngs = nnx.Rngs(seed)
    model = (getattr(fm.nn.UNet, preset)(k, rngs=rngs, **kw) if preset is not None
             else fm.nn.UNet(num_classes=k, rngs=rngs, **kw))
    if model.image_size != image_size:
        raise ValueError(f"`net`={net!r} is for {model.image_size} x {model.image_size} images, "
                         f"the data are {image_size} x {image_size}")
    return model


@dataclasses.dataclass(frozen=True)
class ImageNormal:
    """Sampler of standard normal images ``(n, H, W, C)`` (the source of every flow)."""

    shape: tuple[int, ...]

    def __call__(self, key: jax.Array, n: int) -> jax.Array:
        return jax.random.normal(key, (n, *self.shape), jnp.float32)


def _coupling(name: str) -> Any:
    if name == "independent":
        return fm.couplings.Independent()
    if name == "ot":
        return fm.couplings.ExactOT()
    raise ValueError(f"coupling must be 'independent' or 'ot', got {name!r}")


def _optimizer(config: Config) -> tuple[optax.GradientTransformation, str]:
    lr = optax.join_schedules([optax.linear_schedule(0.0, config.lr, max(config.warmup, 1)),
                               optax.constant_schedule(config.lr)], [max(config.warmup, 1)])
    name = f"clip({config.clip})+adam({config.lr}, warmup {config.warmup})"
    return optax.chain(optax.clip_by_global_norm(config.clip), optax.adam(lr)), name


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(_common.to_jsonable(obj), sort_keys=True).encode()
                        ).hexdigest()[:16]


def _train_fields(config: Config) -> dict:
    """What a training checkpoint depends on (not ``steps``: a run can be continued)."""
    return {k: getattr(config, k) for k in ("dataset", "net", "seed", "batch_size", "lr",
                                            "warmup", "clip", "ema_decay", "label_dropout")}


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------
def steps_per_call(config: Config) -> int:
    """Steps per compiled call of ``fm.fit``: ``config.steps_per_call``, or by default one on
    the CPU (a one-step chunk has no loop, and XLA:CPU runs a convolution's gradient 10-80x
    slower inside a loop body, jax-ml/jax#12868) and ``checkpoint_every`` elsewhere."""
    if config.steps_per_call:
        return config.steps_per_call
    return 1 if jax.default_backend() == "cpu" else min(config.checkpoint_every, config.steps)


def train(key: jax.Array, model: nnx.Module, x: np.ndarray, y: np.ndarray | None, *,
          coupling: Any, config: Config, directory: Path,
          fingerprint: str) -> tuple[nnx.Module, dict]:
    """``fm.fit`` with Orbax checkpoints in ``directory/fit`` every ``checkpoint_every``
    steps; a checkpoint of another training configuration (``fingerprint``, recorded in
    ``directory/train.json``) is refused. Returns the (EMA) model and
    ``{"loss", "seconds", "resumed_from"}``."""
    directory.mkdir(parents=True, exist_ok=True)
    record = directory / "train.json"
    if (directory / "fit").exists():
        old = json.loads(record.read_text()).get("fingerprint") if record.exists() else None
        if old != fingerprint:
            raise ValueError(f"{directory / 'fit'} was written by another training "
                             f"configuration; use another --workdir or delete {directory}")
    _common.write_text_atomic(record, json.dumps({"fingerprint": fingerprint}) + "\n")
    optimizer, name = _optimizer(config)
    model, hist = fm.fit(
        key, ImageNormal(tuple(x.shape[1:])), x, labels=y,
        label_dropout=config.label_dropout if y is not None else 0.0, coupling=coupling,
        steps=config.steps, batch_size=config.batch_size, model=model, optimizer=optimizer,
        optimizer_name=name, ema_decay=config.ema_decay, steps_per_call=steps_per_call(config),
        checkpoint_every=config.checkpoint_every, checkpoint_dir=directory / "fit",
        progress=config.progress)
    return model, dict(loss=np.asarray(hist.loss, np.float32), seconds=hist.wall_time,
                       resumed_from=hist.resumed_from)


# --------------------------------------------------------------------------------------
# The classifier (trained on the held-out split)
# --------------------------------------------------------------------------------------
class Classifier(nnx.Module):
    """Small CNN: conv 3x3 (16) - ReLU - avg-pool 2 - conv 3x3 (32) - ReLU - avg-pool 2 -
    dense (``features``) [the penultimate features, taken before their ReLU: no dead
    coordinates] - ReLU - dense (10)."""

    def __init__(self, image_size: int, features: int, *, rngs: nnx.Rngs):
        if image_size % 4:
            raise ValueError(f"the classifier needs a side divisible by 4, got {image_size}")
        self.c1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
        self.c2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
        self.d1 = nnx.Linear(32 * (image_size // 4) ** 2, features, rngs=rngs)
        self.d2 = nnx.Linear(features, NUM_CLASSES, rngs=rngs)

    @staticmethod
    def _pool(h: jax.Array) -> jax.Array:
        n, hh, ww, c = h.shape
        return h.reshape(n, hh // 2, 2, ww // 2, 2, c).mean(axis=(2, 4))

    def features(self, x: jax.Array) -> jax.Array:
        h = self._pool(jax.nn.relu(self.c1(x)))
        h = self._pool(jax.nn.relu(self.c2(h)))
        return self.d1(h.reshape(h.shape[0], -1))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.d2(jax.nn.relu(self.features(x)))


def _shift(key: jax.Array, x: jax.Array, max_shift: int) -> jax.Array:
    """Random translations by up to ``max_shift`` pixels (background -1 fills the border)."""
    n, h, w, _ = x.shape
    pad = jnp.pad(x, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)),
                  constant_values=-1.0)
    off = jax.random.randint(key, (n, 2), 0, 2 * max_shift + 1, jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    return jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], zero),
                                                        (h, w, 1)))(pad, off)


def train_classifier(x: np.ndarray, y: np.ndarray, config: Config, path: Path
                     ) -> tuple[Classifier, dict]:
    """Train (or load from ``path``) the classifier on ``(x, y)``: Adam, random shifts."""
    size = x.shape[1]
    meta = dict(dataset=config.dataset, size=size, features=config.classifier_features,
                steps=config.classifier_steps, batch=config.classifier_batch,
                lr=config.classifier_lr, seed=config.seed, n=int(x.shape[0]),
                data=hashlib.sha1(x.tobytes() + y.tobytes()).hexdigest()[:16])
    model = Classifier(size, config.classifier_features, rngs=nnx.Rngs(config.seed))
    graphdef, params = nnx.split(model)
    leaves, treedef = jax.tree.flatten(params)
    if path.exists():
        with np.load(path) as f:
            if json.loads(str(f["meta"])) == meta:
                params = jax.tree.unflatten(treedef, [jnp.asarray(f[f"leaf{i}"])
                                                      for i in range(len(leaves))])
                return nnx.merge(graphdef, params), dict(meta, cached=True, seconds=0.0)
    opt = optax.adam(config.classifier_lr)
    xs, ys = jnp.asarray(x), jnp.asarray(y)
    max_shift = 1 if size <= 8 else 2
    key = jax.random.fold_in(jax.random.key(config.seed), 1234)

    def loss_fn(p, xb, yb):
        logits = nnx.merge(graphdef, p)(xb)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))

    def one(carry, k):
        p, s = carry
        kb, ks = jax.random.split(jax.random.fold_in(key, k))
        idx = jax.random.randint(kb, (config.classifier_batch,), 0, xs.shape[0], jnp.int32)
        loss, g = jax.value_and_grad(loss_fn)(p, _shift(ks, xs[idx], max_shift), ys[idx])
        upd, s = opt.update(g, s, p)
        return (optax.apply_updates(p, upd), s), loss

    with _common.Timer() as tm, jax.numpy_dtype_promotion("standard"):
        step = jax.jit(one)  # one jit per step: conv gradients are slow inside loops on CPU
        carry = (params, opt.init(params))
        for k in range(config.classifier_steps):
            carry, loss = step(carry, jnp.int32(k))
        params = carry[0]
        final_loss = float(loss) if config.classifier_steps else float("nan")
    _common.savez_atomic(path, meta=np.array(json.dumps(meta)),
                         **{f"leaf{i}": np.asarray(a)
                            for i, a in enumerate(jax.tree.leaves(params))})
    return nnx.merge(graphdef, params), dict(meta, cached=False, seconds=tm.seconds,
                                             final_loss=final_loss)


@functools.partial(jax.jit, static_argnums=0)
def _classify(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
    clf = nnx.merge(graphdef, state)
    feats = clf.features(x)
    return clf.d2(jax.nn.relu(feats)), feats


def classify(clf: Classifier, x: np.ndarray, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """``(logits, penultimate features)`` of images ``x`` (in batches of ``batch``)."""
    graphdef, state = nnx.split(clf)
    out = [_classify(graphdef, state, jnp.asarray(x[i:i + batch], jnp.float32))
           for i in range(0, len(x), batch)]
    return (np.concatenate([np.asarray(o[0]) for o in out]),
            np.concatenate([np.asarray(o[1], np.float64) for o in out]))


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------
def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    r"""Frechet distance of the Gaussian fits of two feature sets (rows are samples):
    :math:`\|m_1 - m_2\|^2 + \operatorname{tr}(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2})`
    (the squared Bures-W2 distance; the FID formula, here on other features)."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    m1, m2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = r1 @ s2 @ r1
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (m + m.T)), 0.0, None)))
    return float(np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * cross)


def nearest_distance(x: np.ndarray, ref: np.ndarray, block: int = 512
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance to, and index of, the nearest row of ``ref`` (flattened images)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    ref = np.asarray(ref, np.float64).reshape(len(ref), -1)
    rn = np.sum(ref ** 2, 1)
    dist, idx = np.empty(len(x)), np.empty(len(x), np.int64)
    for i in range(0, len(x), block):
        xb = x[i:i + block]
        d2 = np.sum(xb ** 2, 1)[:, None] + rn[None, :] - 2.0 * xb @ ref.T
        j = np.argmin(d2, axis=1)
        idx[i:i + block] = j
        dist[i:i + block] = np.sqrt(np.maximum(d2[np.arange(len(xb)), j], 0.0))
    return dist, idx


class _Judge:
    """The offline metrics of a batch of samples."""

    def __init__(self, clf: Classifier, x_train, x_test, y_train, quantile: float):
        self.clf = clf
        self.f_test = classify(clf, x_test)[1]
        self.x_train = x_train
        d_test, _ = nearest_distance(x_test, x_train)
        self.d_test_median = float(np.median(d_test))
        self.tau = float(np.quantile(d_test, quantile))
        self.real_accuracy = float(np.mean(classify(clf, x_train)[0].argmax(1) == y_train))

    def __call__(self, x: np.ndarray, labels: np.ndarray | None = None) -> dict:
        logits, feats = classify(self.clf, x)
        d_train, _ = nearest_distance(x, self.x_train)
        pred = logits.argmax(1)
        return dict(
            accuracy=None if labels is None else float(np.mean(pred == labels)),
            fd=frechet_distance(feats, self.f_test),
            memorised=float(np.mean(d_train < self.tau)),
            median_d_train=float(np.median(d_train)),
            class_fractions=np.bincount(pred, minlength=NUM_CLASSES) / len(pred))


# --------------------------------------------------------------------------------------
# One net: train, evaluate, store
# --------------------------------------------------------------------------------------
def _eval_labels(n: int) -> np.ndarray:
    if n % NUM_CLASSES:
        raise ValueError(f"`n_eval` must be a multiple of {NUM_CLASSES}, got {n}")
    return np.repeat(np.arange(NUM_CLASSES, dtype=np.int32), n // NUM_CLASSES)


def _sample(model, x0: np.ndarray, labels, w: float, steps: int, **kw):
    """Euler samples from the fixed starting points ``x0``."""
    n = x0.shape[0]
    return fm.sample(model, jax.random.key(0), n, sample_x0=jnp.asarray(x0),
                     labels=None if labels is None else jnp.asarray(labels), guidance=w,
                     solver="euler", steps=steps, **kw)


def evaluate(model, conditional: bool, x0: np.ndarray, judge: _Judge, config: Config
             ) -> tuple[dict, dict]:
    """Metrics (1)-(4) of one net; returns (results, arrays for the figures)."""
    labels = _eval_labels(len(x0)) if conditional else None
    ws = config.guidance if conditional else (0.0,)
    rows, arrays = [], {}
    per = len(x0) // NUM_CLASSES
    grid_idx = np.concatenate([np.arange(c * per, c * per + min(4, per))
                               for c in range(NUM_CLASSES)])
    with _common.Timer() as tm:
        main = None
        for w in ws:
            x = np.asarray(_sample(model, x0, labels, w, config.euler_steps))
            rows.append(dict(w=w if conditional else None, **judge(x, labels)))
            arrays[f"grid_w{w:g}"] = x[grid_idx]
            if w == 0.0:
                main = x
        nfe_rows = []
        for s in config.nfe_steps:
            x = main if s == config.euler_steps else np.asarray(
                _sample(model, x0, labels, 0.0, s))
            r = judge(x, labels)
            nfe_rows.append(dict(steps=s, nfe=s, fd=r["fd"], accuracy=r["accuracy"]))
        # trajectories of one sample per class (conditional) or of the first 10 points
        tl = None if labels is None else labels[::per][:NUM_CLASSES]
        _, sol = _sample(model, x0[::per][:NUM_CLASSES], tl, 0.0, config.euler_steps,
                         saveat=9, return_info=True)
        arrays["trajectory"] = np.asarray(sol.xs)
        arrays["main"] = main
    return dict(guidance_rows=rows, nfe_rows=nfe_rows, sample_seconds=tm.seconds), arrays


def run_net(name: str, conditional: bool, coupling: str, config: Config, data, judge: _Judge,
            x0: np.ndarray, workdir: Path) -> tuple[dict, dict]:
    """Train (or resume) and evaluate one net; reuse a stored evaluation of the same config."""
    x_train, y_train = data[0], data[1]
    directory = workdir / "models" / name
    directory.mkdir(parents=True, exist_ok=True)
    train_fp = _hash(dict(_train_fields(config), conditional=conditional, coupling=coupling))
    eval_fp = _hash(dict(config=dataclasses.asdict(config) | dict(figures=None, progress=None),
                         train=train_fp))
    stored = directory / "eval.json"
    if stored.exists():
        res = json.loads(stored.read_text())
        if res.get("fingerprint") == eval_fp:
            with np.load(directory / "eval.npz") as f:
                return res, {k: f[k] for k in f.files}
    model = make_unet(config.net, x_train.shape[1], conditional, config.seed)
    key = jax.random.fold_in(jax.random.key(config.seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)
    kw = dict(coupling=_coupling(coupling), config=config, directory=directory)
    y = y_train if conditional else None
    model, info = train(key, model, x_train, y, fingerprint=train_fp, **kw)
    loss = info["loss"]
    tail = max(1, min(200, len(loss) // 5))
    res = dict(name=name, conditional=conditional, coupling=coupling, fingerprint=eval_fp,
               params=fm.nn.num_params(model), summary=model.summary(), steps=len(loss),
               train_seconds=info["seconds"], resumed_from=info["resumed_from"],
               loss_first=float(np.mean(loss[:tail])), loss_last=float(np.mean(loss[-tail:])),
               loss_curve=loss[:: max(1, len(loss) // 200)].tolist())
    ev, arrays = evaluate(model, conditional, x0, judge, config)
    res.update(ev)
    _common.savez_atomic(directory / "eval.npz", **arrays)
    _common.write_text_atomic(stored, json.dumps(_common.to_jsonable(res), indent=1) + "\n")
    return json.loads(stored.read_text()), arrays


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------
def _check_config(config: Config) -> None:
    for c in config.conditionings:
        if c not in ("unconditional", "conditional"):
            raise ValueError(f"`conditionings` entries must be 'unconditional' or "
                             f"'conditional', got {c!r}")
    for c in config.couplings:
        _coupling(c)
    if config.steps_per_call < 0:
        raise ValueError(f"`steps_per_call` must be >= 0 (0: automatic), got "
                         f"{config.steps_per_call}")
    if config.guidance[:1] != (0.0,):
        raise ValueError(f"`guidance` must start with 0.0 (the conditional model), got "
                         f"{config.guidance}")
    if config.euler_steps not in config.nfe_steps:
        raise ValueError(f"`nfe_steps` must include `euler_steps`={config.euler_steps}")
    _eval_labels(config.n_eval)


def run(config: Config, workdir: Path | str) -> dict:
    """Train and evaluate the nets; write results.{json,md} and the figures."""
    _check_config(config)
    _common.ensure_x64("float64")  # the Dirac reference is integrated in float64
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = load_data(config.dataset)
    shape = x_train.shape[1:]
    with _common.Timer() as total:
        with _common.Timer() as tm_clf:
            clf, clf_info = train_classifier(x_test, y_test, config, workdir / "classifier.npz")
            judge = _Judge(clf, x_train, x_test, y_train, config.memo_quantile)
        clf_info["seconds_with_features"] = tm_clf.seconds
        key = jax.random.key(config.seed)
        x0 = np.asarray(ImageNormal(shape)(jax.random.fold_in(key, 7), config.n_eval))
        # references: training images (the floor) and the Dirac field on the training set
        rng = np.random.default_rng(config.seed)
        pick = rng.choice(len(x_train), config.n_eval, replace=False)
        floor = judge(x_train[pick], y_train[pick])
        floor.update(memorised=None, median_d_train=None)  # they are training images
        refs = [dict(name=f"{config.n_eval} training images (the floor)", **floor)]
        arrays: dict[str, dict] = {}
        if config.dirac:
            with _common.Timer() as tm:
                v = fm.DiracVelocity(jnp.asarray(x_train.reshape(len(x_train), -1), jnp.float64))
                sol = fm.integrate(v, jnp.asarray(x0.reshape(len(x0), -1), jnp.float64),
                                   t1=config.dirac_t1, solver="tsit5", rtol=1e-6, atol=1e-6,
                                   max_steps=16_384)
                xd = np.asarray(sol.x, np.float32).reshape(x0.shape)
            refs.append(dict(name=f"fm.dirac_velocity on train (to t = {config.dirac_t1:g}, "
                                  f"tsit5, NFE {int(sol.nfe)})", seconds=tm.seconds,
                             **judge(xd)))
            arrays["dirac"] = dict(samples=xd[:32],
                                   nearest=x_train[nearest_distance(xd[:32], x_train)[1]])
        nets = {}
        for cond in config.conditionings:
            for coupling in config.couplings:
                name = f"{'cond' if cond == 'conditional' else 'uncond'}-{coupling}"
                nets[name], arrays[name] = run_net(name, cond == "conditional", coupling,
                                                   config, (x_train, y_train), judge, x0,
                                                   workdir)
    results = dict(
        n_train=len(x_train), n_test=len(x_test), image_shape=list(shape),
        classifier=dict(clf_info, accuracy_on_train_split=judge.real_accuracy),
        memo_threshold=judge.tau, test_median_d_train=judge.d_test_median,
        references=refs, nets=nets, seconds=total.seconds,
        train_seconds=sum(n["train_seconds"] for n in nets.values()),
        sample_seconds=sum(n["sample_seconds"] for n in nets.values()))
    results["ok"] = bool(np.isfinite([r["fd"] for r in refs]).all() and all(
        np.isfinite(r["fd"]) for n in nets.values() for r in n["guidance_rows"]))
    figures = _figures(workdir, config, x_test, nets, arrays) if config.figures else []
    _common.write_outputs(workdir, name=NAME, title=_title(config), config=config,
                          results=results, sections=_sections(config, results),
                          figures=figures)
    return results


def _title(config: Config) -> str:
    data = "MNIST-5k (28 x 28)" if config.dataset == "mnist5k" else "8 x 8 digits"
    return f"Class-conditional flow matching on {data}: guidance, couplings, memorisation"


def _sections(config: Config, res: dict) -> list[tuple[str, str]]:
    nets, refs = res["nets"], res["references"]
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    rows = []
    for r in refs:
        rows.append([r["name"], "–", "–" if r["accuracy"] is None else pct(r["accuracy"]),
                     r["fd"], "–" if r["memorised"] is None else pct(r["memorised"]),
                     r["median_d_train"]])
    for name, n in nets.items():
        for r in n["guidance_rows"]:
            acc = "–" if r["accuracy"] is None else pct(r["accuracy"])
            rows.append([name, "–" if r["w"] is None else f"{r['w']:g}", acc, r["fd"],
                         pct(r["memorised"]), r["median_d_train"]])
    main = _common.markdown_table(
        ["generator", "guidance w", "classifier accuracy", "Frechet distance (classifier "
         "features)", f"memorised (< q{config.memo_quantile:g} of test-to-train)",
         "median distance to nearest train"], rows)
    steps = config.nfe_steps
    nfe = _common.markdown_table(
        ["net", *[f"FD @ {s}" for s in steps], *[f"acc @ {s}" for s in steps]],
        [[name, *[r["fd"] for r in n["nfe_rows"]],
          *[("–" if r["accuracy"] is None else pct(r["accuracy"])) for r in n["nfe_rows"]]]
         for name, n in nets.items()])
    train = _common.markdown_table(
        ["net", "U-Net", "params", "steps", "loss (first / last 20%, up to 200 steps)",
         "train s", "sampling + metrics s"],
        [[name, n["summary"].split(":")[0], n["params"], n["steps"],
          f"{n['loss_first']:.3f} / {n['loss_last']:.3f}", f"{n['train_seconds']:.0f}"
          + ("" if n["resumed_from"] is None else f" (resumed at {n['resumed_from']})"),
          f"{n['sample_seconds']:.0f}"] for name, n in nets.items()])
    clf = res["classifier"]
    notes = (
        f"{res['n_train']} training / {res['n_test']} held-out images of shape "
        f"{tuple(res['image_shape'])}; {config.n_eval} samples per row "
        f"({config.n_eval // NUM_CLASSES} per class for the conditional nets), Euler with "
        f"{config.euler_steps} steps from the same starting noise in every row. The classifier "
        f"(trained on the held-out split, {clf['steps']} steps, {'cached' if clf['cached'] else 'trained in this run'}) "
        f"classifies the {res['n_train']} training images, which it has not seen, with accuracy "
        f"{pct(clf['accuracy_on_train_split'])}: the reference for the accuracy column. The "
        f"Frechet distance is computed in its {config.classifier_features} penultimate "
        f"features against all held-out images; it is not the Inception FID. Memorised: "
        f"distance to the nearest training image below {res['memo_threshold']:.3f}, the "
        f"{config.memo_quantile:g} quantile of the held-out images' distances to their nearest "
        f"training image (median {res['test_median_d_train']:.3f}): real unseen digits score "
        f"{pct(config.memo_quantile)} by construction; the Dirac field (Exercise 5 of the notes) "
        f"copies training images. Conditional nets: label dropout {config.label_dropout:g}, "
        f"guidance v = (1 + w) v(t, x, y) - w v(t, x, null); OT couples within each class. "
        f"fm.fit, {steps_per_call(config)} steps per call. Total time {res['seconds']:.0f} s (training "
        f"{res['train_seconds']:.0f} s, sampling and metrics {res['sample_seconds']:.0f} s; a "
        f"resumed run counts the training time of the earlier runs from the checkpoints).")
    return [("Samples: accuracy, Frechet distance, memorisation", main),
            ("Quality against NFE (Euler steps; guidance 0)", nfe),
            ("Training", train), ("Notes", notes)]


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------
def _tile(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """A ``rows x cols`` mosaic of ``(n, H, W, 1)`` images with 1-pixel white separators."""
    h, w = images.shape[1:3]
    out = -np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1))
    for k, im in enumerate(images[: rows * cols]):
        r, c = divmod(k, cols)
        out[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = \
            np.clip(im[..., 0], -1, 1)
    return out


def _figures(workdir: Path, config: Config, x_test, nets: dict, arrays: dict) -> list[str]:
    plt = _common.pyplot()
    figs = []
    # 1. per conditional net: rows = classes, column groups = guidance weights
    for name, n in nets.items():
        if not n["conditional"]:
            continue
        ws = [r["w"] for r in n["guidance_rows"]]
        fig, axes = plt.subplots(1, len(ws), figsize=(1.6 * len(ws) + 0.6, 4.2))
        for ax, w, r in zip(np.atleast_1d(axes), ws, n["guidance_rows"], strict=True):
            g = arrays[name][f"grid_w{w:g}"]
            per = len(g) // NUM_CLASSES
            ax.imshow(_tile(g, NUM_CLASSES, per), cmap="gray_r", vmin=-1, vmax=1)
            ax.set_title(f"w = {w:g}\nacc {100 * r['accuracy']:.0f}%, FD {r['fd']:.2g}",
                         fontsize=8)
            ax.axis("off")
        fig.suptitle(f"{name}: one row per class (0-9), same noise in every panel", fontsize=9)
        figs.append(_common.savefig(fig, workdir, f"grid_{name}", dpi=110))
    # 2. held-out images, unconditional and Dirac samples
    panels = [("held-out images", x_test[:32])]
    panels += [(f"{name} samples", arrays[name]["main"][:32]) for name, n in nets.items()
               if not n["conditional"]]
    if "dirac" in arrays:
        panels += [("Dirac-field samples", arrays["dirac"]["samples"]),
                   ("their nearest training image", arrays["dirac"]["nearest"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 1.7))
    for ax, (title, imgs) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(_tile(imgs, 4, 8), cmap="gray_r", vmin=-1, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    figs.append(_common.savefig(fig, workdir, "samples", dpi=110))
    # 3. trajectories: one row per net and sample, x_t at t = 0, 1/8, ..., 1
    names = list(nets)
    n_show = 3
    fig, axes = plt.subplots(len(names), 1, figsize=(6.0, 1.0 * n_show * len(names) + 0.3))
    for ax, name in zip(np.atleast_1d(axes), names, strict=True):
        tr = arrays[name]["trajectory"]  # (T, m, H, W, 1)
        frames = np.concatenate([tr[:, i] for i in range(min(n_show, tr.shape[1]))])
        ax.imshow(_tile(frames, min(n_show, tr.shape[1]), tr.shape[0]), cmap="gray_r",
                  vmin=-1, vmax=1)
        ax.set_title(f"{name}: x_t at t = 0, 1/8, ..., 1", fontsize=8)
        ax.axis("off")
    figs.append(_common.savefig(fig, workdir, "trajectories", dpi=110))
    # 4. quality against NFE and against w
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for name, n in nets.items():
        s = [r["steps"] for r in n["nfe_rows"]]
        axes[0].plot(s, [r["fd"] for r in n["nfe_rows"]], "o-", label=name)
        if n["conditional"]:
            axes[1].plot(s, [100 * r["accuracy"] for r in n["nfe_rows"]], "o-", label=name)
            ws = [r["w"] for r in n["guidance_rows"]]
            axes[2].plot(ws, [r["fd"] for r in n["guidance_rows"]], "o-", label=f"{name} FD")
    for ax in axes[:2]:
        ax.set_xscale("log")
        ax.set_xlabel("Euler steps (NFE)")
    axes[0].set_ylabel("Frechet distance (classifier features)")
    axes[1].set_ylabel("classifier accuracy (%)")
    axes[2].set_xlabel("guidance w")
    axes[2].set_ylabel("Frechet distance")
    acc_ax = axes[2].twinx()
    for name, n in nets.items():
        if n["conditional"]:
            acc_ax.plot([r["w"] for r in n["guidance_rows"]],
                        [100 * r["accuracy"] for r in n["guidance_rows"]], "s--",
                        label=f"{name} accuracy")
    acc_ax.set_ylabel("accuracy (%, dashed)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    figs.append(_common.savefig(fig, workdir, "quality", dpi=100))
    return figs


def main(argv=None) -> int:
    return _common.main(Config, run, NAME, argv)


if __name__ == "__main__":
    raise SystemExit(main())
