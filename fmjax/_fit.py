r"""``fit``: a driver over :func:`fmjax.make_train_step`'s step.

The driver draws the batches of step ``k`` on the device from ``jax.random.fold_in(data_key,
k)`` (so the trajectory does not depend on how the steps are chunked, interrupted or
resumed: bitwise on CPU), runs ``steps_per_call`` steps per compiled ``lax.scan`` (one
``jax.jit``, compiled once per configuration), and visits the host only between chunks: loss
check, checkpoint, progress line. Batches are sharded over a 1-D mesh with axis ``"data"``;
exact OT with a host solver is solved one chunk ahead on host threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import _checkpoint, _checks
from ._data import Source, check_pair
from ._devices import _replicate, _to_host, make_mesh
from ._pipeline import AssignmentPipeline, default_workers
from ._sources import DataSource, attach_source
from ._step import TrainState, _core_step, _default_optimizer, _ema_debiased, _make_spec, _split
from .couplings import ExactOT, _host_solver, _resolve
from .paths import AffinePath

__all__ = ["History", "NonFiniteLossError", "Preempted", "fit"]

_DEFAULT_OPTIMIZER = "adamw(learning_rate=0.001, weight_decay=1e-05)"


class History(NamedTuple):
    """What ``fit`` reports besides the model.

    Attributes:
        loss: ``(k,)`` float array, the minibatch loss of every step from 0 to the last one
            (a resumed run includes the steps of the run it resumed: the curve equals that of
            an uninterrupted run).
        steps: ``(k,)`` int array, the (0-based) indices of those steps.
        steps_per_second: throughput of this call, excluding the first chunk (which
            includes compilation) when there are at least two chunks.
        wall_time: seconds spent in ``fit`` (compilation and checkpoints included).
        state: the final :class:`TrainState` (raw parameters, EMA, optimizer state).
        resumed_from: the step of the checkpoint this run resumed from, or ``None``.

    Example:
        >>> import jax, jax.numpy as jnp, fmjax as fm
        >>> x0 = fm.datasets.standard_normal(2)
        >>> x1 = lambda key, n: 2.0 + jax.random.normal(key, (n, 2), jnp.float32)
        >>> model, hist = fm.fit(jax.random.key(0), x0, x1, steps=200, batch_size=64,
        ...                      progress=False)
        >>> hist.loss.shape, int(hist.steps[-1]), hist.resumed_from
        ((200,), 199, None)
    """

    loss: np.ndarray
    steps: np.ndarray
    steps_per_second: float
    wall_time: float
    state: TrainState
    resumed_from: int | None


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; ``.step`` is the (0-based) step index.

    Example:
        >>> import fmjax as fm
        >>> err = fm.NonFiniteLossError(37, float("nan"))
        >>> err.step, str(err).startswith("non-finite loss at step 37")
        (37, True)
    """

    def __init__(self, step: int, value: float):
        self.step, self.value = int(step), float(value)
        super().__init__(f"non-finite loss at step {self.step} (loss = {self.value}); "
                         f"lower the learning rate or check the data")


class Preempted(SystemExit):
    """Raised by ``fit`` after SIGTERM once a checkpoint has been written.

    A ``SystemExit`` subclass with exit code 143 (128 + SIGTERM): left uncaught, the
    process exits cleanly, as batch schedulers (SLURM, Kubernetes) expect; catch it to do
    something else. ``.step`` is the step the checkpoint holds.

    Example:
        >>> import fmjax as fm
        >>> e = fm.Preempted(500)
        >>> isinstance(e, SystemExit), e.code, e.step
        (True, 143, 500)
    """

    def __init__(self, step: int):
        self.step = int(step)
        super().__init__(143)


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _FitConfig:
    """The validated options of one ``fit`` call."""

    path: AffinePath | None
    coupling: Any
    sigma: float
    steps: int
    batch_size: int
    ema_decay: float
    use_ema: bool
    steps_per_call: int
    checkpoint_every: int
    keep_checkpoints: int | None
    progress: bool
    handle_sigterm: bool
    label_dropout: float

    @classmethod
    def make(cls, *, path, coupling, sigma, steps, batch_size, ema_decay, use_ema,
             steps_per_call, checkpoint_every, keep_checkpoints, progress, handle_sigterm,
             label_dropout) -> _FitConfig:
        pos = _checks.positive_int
        steps_per_call = pos(steps_per_call, "steps_per_call")
        every = pos(checkpoint_every, "checkpoint_every", allow_none=True) or steps_per_call
        if progress is None:
            progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
        return cls(path, _resolve(coupling), sigma, pos(steps, "steps"),
                   pos(batch_size, "batch_size"), ema_decay, bool(use_ema), steps_per_call,
                   every, pos(keep_checkpoints, "keep_checkpoints", allow_none=True),
                   bool(progress), bool(handle_sigterm), label_dropout)

    @property
    def chunk(self) -> int:
        return min(self.steps_per_call, self.steps)


def _schedule(start: int, steps: int, chunk: int, every: int) -> Iterator[tuple[int, int]]:
    """``(first step, number of steps)`` of each chunk; chunks end at checkpoint steps."""
    while start < steps:
        n = min(chunk, steps - start, (start // every + 1) * every - start)
        yield start, n
        start += n


def _fit_mesh(devices, mesh, batch_size: int) -> Mesh:
    if mesh is None:
        mesh = make_mesh(devices)
    elif devices is not None:
        raise ValueError("give `devices` or `mesh`, not both")
    if mesh.axis_names != ("data",):
        raise ValueError(f"`mesh` must be 1-D with axis name 'data', got {mesh.axis_names}")
    n_dev = int(mesh.devices.size)
    if batch_size % n_dev:
        raise ValueError(f"`batch_size`={batch_size} is not divisible by the number of "
                         f"devices ({n_dev}); use a multiple of {n_dev} or pass `devices=`")
    return mesh


# --------------------------------------------------------------------------------------
# The compiled chunk
# --------------------------------------------------------------------------------------
class _ChunkConfig(NamedTuple):
    """Everything the compiled chunk depends on besides its array arguments (hashable)."""

    graphdef: Any
    path: AffinePath | None
    src0: Any
    src1: Any
    paired: bool
    point_ndim: int
    batch_size: int
    coupling: Any
    sigma: float
    ema_decay: float
    label_dropout: float
    null_label: Any
    chunk: int
    mesh: Mesh
    optimizer: Any
    key_impl: Any
    wrap: Any


_CHUNK_CACHE: dict = {}
_CHUNK_CACHE_SIZE = 8


def _compiled_chunk(cfg: _ChunkConfig, src0: Source, src1: Source) -> Callable:
    """The jitted ``lax.scan`` of ``cfg.chunk`` steps, memoised on ``cfg`` (a resumed run or
    a sweep over seeds reuses one compiled program)."""
    try:
        hash(cfg)
    except TypeError:  # an unhashable coupling or sampler: no memoisation
        return _build_chunk(cfg, src0, src1)
    fn = _CHUNK_CACHE.pop(cfg, None) or _build_chunk(cfg, src0, src1)
    _CHUNK_CACHE[cfg] = fn  # most recently used last
    while len(_CHUNK_CACHE) > _CHUNK_CACHE_SIZE:
        _CHUNK_CACHE.pop(next(iter(_CHUNK_CACHE)))
    return fn


def _build_chunk(cfg: _ChunkConfig, src0: Source, src1: Source) -> Callable:
    batch_sharding = NamedSharding(cfg.mesh, P("data", *([None] * cfg.point_ndim)))
    label_sharding = NamedSharding(cfg.mesh, P("data"))
    rep = NamedSharding(cfg.mesh, P())
    constrain = lambda x: jax.lax.with_sharding_constraint(x, batch_sharding)  # noqa: E731

    def as_key(key_data):
        return (key_data if cfg.key_impl is None
                else jax.random.wrap_key_data(key_data, impl=cfg.key_impl))

    def draw(index, data_key, data0, data1, labels1):
        """The batches of step ``index``: keys 0 and 1 of ``split(fold_in(key, index), 5)``."""
        k0, k1 = jax.random.split(jax.random.fold_in(data_key, index), 5)[:2]
        idx = (jax.random.randint(k0, (cfg.batch_size,), 0, data0.shape[0]) if cfg.paired
               else None)
        x0, _ = src0.draw(k0, cfg.batch_size, data0, None, idx)
        x1, y = src1.draw(k1, cfg.batch_size, data1, labels1, idx)
        y = None if y is None else jax.lax.with_sharding_constraint(y, label_sharding)
        return constrain(x0), constrain(x1), y

    if cfg.wrap == "draw":  # the batches of a chunk, for the host assignment pipeline
        def draw_chunk(start, key_data, *data):
            idx = start + jnp.arange(cfg.chunk, dtype=jnp.int32)
            return jax.lax.map(lambda i: draw(i, as_key(key_data), *data), idx)

        return jax.jit(draw_chunk, out_shardings=rep)

    def one_step(state, inputs, data_key, rest, data):
        index, active, perm = inputs
        x0, x1, y = draw(index, data_key, *data)
        spec = _make_spec_cached(cfg)._replace(rest=rest)
        new, metrics = _core_step(spec, state, jax.random.fold_in(data_key, index), x0, x1,
                                  y, perm, constrain)
        new = jax.tree.map(lambda n_, o_: jnp.where(active, n_, o_), new, state)
        return new, metrics["loss"]

    step_fn = cfg.wrap(one_step)

    def run_chunk(state, start, n_active, key_data, rest, data, perms):
        data_key = as_key(key_data)
        idx = start + jnp.arange(cfg.chunk, dtype=jnp.int32)
        active = jnp.arange(cfg.chunk, dtype=jnp.int32) < n_active
        # Optax mixes Python floats with int32 counters: allow standard promotion while
        # tracing (user code under jax_numpy_dtype_promotion="strict" stays strict).
        with jax.numpy_dtype_promotion("standard"):
            body = lambda s, inp: step_fn(s, inp, data_key, rest, data)  # noqa: E731
            if cfg.chunk == 1:  # no loop: XLA:CPU runs the gradient of a convolution 10-80x
                # slower inside a loop body (jax-ml/jax#12868); a scan of length 1 still is one
                state, loss = body(state, jax.tree.map(lambda a: a[0], (idx, active, perms)))
                return state, loss[None]
            return jax.lax.scan(body, state, (idx, active, perms))

    return jax.jit(run_chunk, donate_argnums=(0,), out_shardings=rep)


def _make_spec_cached(cfg: _ChunkConfig):
    from ._step import _StepSpec

    return _StepSpec(cfg.graphdef, None, cfg.optimizer, cfg.path, cfg.coupling, cfg.sigma,
                     cfg.ema_decay, cfg.label_dropout, cfg.null_label)


def _wrap_step(step_fn: Callable) -> Callable:
    """Identity; a seam where tests wrap the train step (``chex.assert_max_traces``)."""
    return step_fn


# --------------------------------------------------------------------------------------
# One prepared run: data on the mesh, model, state, compiled chunk, host pipeline
# --------------------------------------------------------------------------------------
def _key_fingerprint(key: jax.Array) -> str:
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return hashlib.sha1(np.asarray(data).tobytes()).hexdigest()[:16]


def _coupling_fingerprint(coupling: Any) -> str:
    fp = getattr(coupling, "fingerprint", None)
    if callable(fp):
        return fp()
    return repr(coupling) if dataclasses.is_dataclass(coupling) else (
        f"fn:{getattr(coupling, '__qualname__', type(coupling).__name__)}")


class _Run:
    """Everything ``fit`` prepares before the first step."""

    def __init__(self, cfg: _FitConfig, key, src0: Source, src1: Source, model, optimizer,
                 optimizer_name, mesh: Mesh):
        self.cfg, self.mesh, self.src0, self.src1 = cfg, mesh, src0, src1
        init_key, data_key = jax.random.split(key)
        model, self.model_kwargs = self._model(model, init_key, src0)
        if optimizer is None:
            optimizer, optimizer_name = _default_optimizer(), optimizer_name or _DEFAULT_OPTIMIZER
        self.spec = _make_spec(model, optimizer, cfg.path, cfg.coupling, cfg.sigma,
                               cfg.ema_decay, cfg.label_dropout)
        self.graphdef, params0, self.rest_host = _split(model)
        opt_state0 = self.spec.optimizer.init(params0)
        self.fingerprint = {
            "dim": src0.point_shape[0] if len(src0.point_shape) == 1 else None,
            "point_shape": list(src0.point_shape), "dtype": str(src0.dtype),
            "model": _checkpoint.describe_model(model, params0), "path": self.spec.path.name,
            "coupling": _coupling_fingerprint(self.spec.coupling), "sigma": cfg.sigma,
            "batch_size": cfg.batch_size, "label_dropout": cfg.label_dropout,
            "optimizer": optimizer_name or ("custom:" + hashlib.sha1(str(
                jax.tree_util.tree_structure(opt_state0)).encode()).hexdigest()[:16]),
            "ema_decay": cfg.ema_decay, "key": _key_fingerprint(key),
            "x0": src0.describe(), "x1": src1.describe(), "model_kwargs": self.model_kwargs,
            "source": src0.info()}
        rep = lambda tree: jax.tree.map(lambda x: _replicate(x, mesh), tree)  # noqa: E731
        self.rest = rep(self.rest_host)
        self.state = TrainState(_replicate(np.int32(0), mesh), rep(params0),
                                rep(jax.tree.map(np.zeros_like, params0)), rep(opt_state0))
        self.data = tuple(None if a is None else _replicate(a, mesh)
                          for a in (src0.data, src1.data, src1.labels))
        if jnp.issubdtype(data_key.dtype, jax.dtypes.prng_key):
            key_impl, key_data = jax.random.key_impl(data_key), jax.random.key_data(data_key)
        else:  # a legacy raw uint32 key
            key_impl, key_data = None, data_key
        self.key = _replicate(key_data, mesh)
        self.chunk_cfg = _ChunkConfig(
            self.graphdef, self.spec.path, src0.fn or "array", src1.fn or "array",
            bool(self.spec.coupling.keeps_pairs if hasattr(self.spec.coupling, "keeps_pairs")
                 else False), len(src0.point_shape), cfg.batch_size, self.spec.coupling,
            cfg.sigma, cfg.ema_decay, cfg.label_dropout, self.spec.null_label, cfg.chunk, mesh,
            self.spec.optimizer, key_impl, _wrap_step)
        self.run_chunk = _compiled_chunk(self.chunk_cfg, src0, src1)

    @staticmethod
    def _model(model, init_key, src0: Source):
        if model is not None:
            return model, None
        if len(src0.point_shape) != 1:
            raise ValueError(f"points of shape {src0.point_shape} need a model: pass "
                             f"`model=` (e.g. fm.nn.UNet for images)")
        from .nn import VelocityMLP

        dim = src0.point_shape[0]
        return (VelocityMLP(dim, rngs=nnx.Rngs(params=init_key), param_dtype=src0.dtype),
                {"dim": dim})

    def pipeline(self) -> AssignmentPipeline | None:
        """Exact OT on host threads one chunk ahead, when the coupling allows it."""
        c = self.spec.coupling
        if not (isinstance(c, ExactOT) and c.host_workers != 0 and jax.process_count() == 1
                and (self.mesh.devices.size == 1 or c.shard == "global")):
            return None
        solve = _host_solver(c.solver)
        if solve is None:
            return None
        draw = _compiled_chunk(self.chunk_cfg._replace(wrap="draw"), self.src0, self.src1)
        return AssignmentPipeline(
            draw, solve, c.host_workers or default_workers(), self.cfg.chunk,
            self.cfg.batch_size, lambda start: _replicate(np.int32(start), self.mesh),
            self.key, self.data, self.mesh)

    def chunk(self, state, schedule: list, i: int, pipe: AssignmentPipeline | None):
        """Run chunk ``i`` of ``schedule``; the host pipeline solves chunk ``i + 1`` meanwhile.
        Returns the new state and the chunk's losses on the host."""
        first, n = schedule[i]
        perms = None if pipe is None else pipe.result(first, n)
        if pipe is not None and i + 1 < len(schedule):
            pipe.draw(*schedule[i + 1])  # drawn before this chunk is queued
        state, loss = self._dispatch(state, first, n, perms)
        if pipe is not None:
            pipe.solve_ahead()  # host threads solve the next chunk while this one trains
        return state, _to_host(loss)[:n]

    def _dispatch(self, state, start: int, n: int, perms):
        put = lambda v: _replicate(np.int32(v), self.mesh)  # noqa: E731
        # A per-shard coupling finds the mesh in the context while the chunk is traced.
        local = (getattr(self.spec.coupling, "shard", "global") == "local"
                 and self.mesh.devices.size > 1)
        with jax.set_mesh(self.mesh) if local else contextlib.nullcontext():
            return self.run_chunk(state, put(start), put(n), self.key, self.rest, self.data,
                                  perms)  # dispatched: the losses stay on the device

    def output(self, state: TrainState) -> tuple[nnx.Module, TrainState]:
        host = lambda tree: jax.tree.map(lambda x: jnp.asarray(_to_host(x)), tree)  # noqa
        final = TrainState(jnp.asarray(_to_host(state.step)), host(state.params),
                           host(state.ema), host(state.opt_state))
        k = int(final.step)
        params = (_ema_debiased(final.ema, k, self.cfg.ema_decay)
                  if self.cfg.use_ema and self.cfg.ema_decay > 0.0 and k > 0 else final.params)
        source = self.src0.fn if self.src0.fn is not None else DataSource(self.src0.data)
        model = attach_source(nnx.merge(self.graphdef, params, self.rest_host), source)
        return model, final


# --------------------------------------------------------------------------------------
# Host side: checkpoints, progress, loss record
# --------------------------------------------------------------------------------------
class _Checkpoints:
    """Orbax checkpoints of one run (a no-op without ``checkpoint_dir``)."""

    def __init__(self, directory, cfg: _FitConfig, run: _Run):
        self.cfg, self.run, self.mgr = cfg, run, None
        if directory is not None:
            self.directory = _checkpoint.check_writable(directory)
            self.mgr = _checkpoint.manager(self.directory, cfg.keep_checkpoints)

    def resume(self, state: TrainState) -> tuple[TrainState, np.ndarray]:
        got = None if self.mgr is None else _checkpoint.resume(
            self.mgr, self.directory, self.run.fingerprint, state, self.cfg.steps,
            self.run.mesh)
        return (state, np.zeros((0,), np.float32)) if got is None else got

    def after_chunk(self, state, losses: Callable[[], np.ndarray], step: int,
                    stop: bool) -> None:
        """Save at a checkpoint step; ``losses()`` (the whole curve) is built only then."""
        if self.mgr is not None and (step % self.cfg.checkpoint_every == 0
                                     or step == self.cfg.steps or stop):
            _checkpoint.save(self.mgr, state, self.run.fingerprint, losses())

    def close(self) -> None:
        if self.mgr is not None:
            self.mgr.close()


class _Progress:
    """A one-line progress report on stderr (no dependency): rewritten in place on a
    terminal, otherwise a line at every 10% of the run."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.enabled, self.total, self.start = enabled, total, start
        self.tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.t0, self.shown = time.perf_counter(), start

    def update(self, step: int, loss: float) -> None:
        if not self.enabled or (not self.tty and step < self.total
                                and step - self.shown < self.total / 10):
            return
        rate = (step - self.start) / max(time.perf_counter() - self.t0, 1e-9)
        line = (f"fit: step {step:,}/{self.total:,} ({100 * step / self.total:.0f}%)  loss "
                f"{loss:.4g}  {rate:,.0f} steps/s")
        sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
        sys.stderr.flush()
        self.shown = step

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


class _Recorder:
    """The loss of every step (from the checkpoint, then this call) and the timing."""

    def __init__(self, prior: np.ndarray, progress: _Progress):
        self.losses, self.progress = [np.asarray(prior, np.float32)], progress
        self.timed_steps, self.timed_seconds, self.n_chunks = 0, 0.0, 0

    def add(self, start: int, loss: np.ndarray, seconds: float) -> None:
        self.n_chunks += 1
        if self.n_chunks > 1:
            self.timed_steps, self.timed_seconds = (self.timed_steps + len(loss),
                                                    self.timed_seconds + seconds)
        bad = ~np.isfinite(loss)
        if bad.any():
            first = int(np.argmax(bad))
            raise NonFiniteLossError(start + first, loss[first])
        self.losses.append(np.asarray(loss, np.float32))
        self.progress.update(start + len(loss), float(loss[-1]))

    @property
    def curve(self) -> np.ndarray:
        return np.concatenate(self.losses)

    def history(self, final: TrainState, resumed_from, t_start: float) -> History:
        wall = time.perf_counter() - t_start
        if self.timed_steps == 0:
            self.timed_steps = sum(len(x) for x in self.losses[1:])
            self.timed_seconds = wall
        curve = self.curve
        return History(curve, np.arange(len(curve)),
                       float(self.timed_steps / max(self.timed_seconds, 1e-12)), wall, final,
                       resumed_from)


class _Sigterm:
    """Within ``with``: SIGTERM sets a flag (the run saves and raises :class:`Preempted`)."""

    def __init__(self, enabled: bool):
        self.flag, self.enabled, self.old = threading.Event(), enabled, None

    def __enter__(self):
        if self.enabled and threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGTERM, lambda *_: self.flag.set())
        return self.flag

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
        return False


# --------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------
def fit(key: jax.Array, sample_x0: Any, sample_x1: Any, *, path: AffinePath | None = None,
        coupling: Any = "independent", sigma: float = 0.0, steps: int = 20_000,
        batch_size: int = 512, model: nnx.Module | None = None,
        optimizer: optax.GradientTransformation | None = None, optimizer_name: str | None = None,
        ema_decay: float = 0.999, use_ema: bool = True, steps_per_call: int = 500,
        checkpoint_dir: Any = None, checkpoint_every: int | None = None,
        keep_checkpoints: int | None = 2, progress: bool | None = None,
        devices: Sequence[jax.Device] | None = None, mesh: Mesh | None = None,
        handle_sigterm: bool = True, labels: Any = None, label_dropout: float = 0.0):
    r"""Train a velocity network by flow matching; return ``(model, history)``.

    Each step is :func:`fmjax.make_train_step`'s step on a fresh minibatch of ``batch_size``
    pairs. Step ``k`` draws its batches with keys 0 and 1 of ``jax.random.split(jax.random.
    fold_in(data_key, k), 5)`` (``init_key, data_key = jax.random.split(key)``): chunking,
    checkpoints and resuming do not change a bit of the result.

    Args:
        key: a PRNG key (``jax.random.key(0)``).
        sample_x0, sample_x1: pure JAX samplers ``(key, n) -> (n, *point_shape)`` that
            depend on their key (one that does not is refused), or arrays of data
            ``(N, *point_shape)`` sampled uniformly with replacement. ``sample_x1`` may
            return ``(x, y)`` with integer labels (conditional flow matching).
        path: the affine path (default :class:`fmjax.Linear`).
        coupling: a coupling value (:class:`fmjax.couplings.ExactOT` ...), any callable
            ``(key, x0, x1) -> (x0, x1)``, or ``"independent"``, ``"ot"``, ``"sinkhorn"``,
            ``"paired"``. Host threads, host solver and per-shard solves are options of
            the coupling (:class:`~fmjax.couplings.ExactOT`).
        sigma: noise added to :math:`x_t`; Tong et al.'s protocol uses ``0.1``.
        steps: the **total** number of steps: a run resumed from a checkpoint continues up
            to it (raise it to continue a finished run).
        batch_size: global batch size, divisible by the number of devices.
        model: an NNX module ``model(t, x)`` (default: ``fmjax.nn.VelocityMLP(d)``, the
            3 x 64 SELU net of Tong et al., for flat points).
        optimizer, optimizer_name: an Optax transform (default ``adamw(1e-3, wd 1e-5)``),
            its label in the checkpoint fingerprint. ``ema_decay``, ``use_ema``: the EMA of
            the parameters, returned debiased (default).
        steps_per_call: steps per compiled ``lax.scan`` chunk (one host visit each).
        checkpoint_dir, checkpoint_every, keep_checkpoints: Orbax checkpoints, resumed from
            the latest complete one (another configuration, or a step past ``steps``,
            raises), saved every ``checkpoint_every`` steps (default ``steps_per_call``) and
            at the end; the ``keep_checkpoints`` most recent are kept (``None``: all).
        progress: a progress line on stderr (default: when stderr is a terminal).
        devices, mesh: the devices to shard the batch over (default: all visible).
        handle_sigterm: on SIGTERM save and raise :class:`Preempted` (exit code 143).
        labels, label_dropout: integer labels ``(N,)`` of the rows of an array
            ``sample_x1``; the probability of replacing one by the model's null label.

    Returns:
        ``(model, history)``: the NNX model (debiased EMA parameters by default; it
        remembers its source as ``model.source``, used by :func:`fmjax.sample`) and a
        :class:`History`.

    Raises:
        NonFiniteLossError: a NaN or inf loss, naming the step. ValueError: bad arguments,
            a sampler that ignores its key, an incompatible checkpoint.

    Example:
        >>> import jax, jax.numpy as jnp, fmjax as fm
        >>> x0 = fm.datasets.standard_normal(2)
        >>> x1 = lambda key, n: 2.0 + jax.random.normal(key, (n, 2), jnp.float32)
        >>> model, hist = fm.fit(jax.random.key(0), x0, x1, steps=200, batch_size=64,
        ...                      coupling=fm.couplings.ExactOT(), progress=False)
        >>> hist.loss.shape
        (200,)
    """
    t_start = time.perf_counter()
    cfg = _FitConfig.make(path=path, coupling=coupling, sigma=sigma, steps=steps,
                          batch_size=batch_size, ema_decay=ema_decay, use_ema=use_ema,
                          steps_per_call=steps_per_call, checkpoint_every=checkpoint_every,
                          keep_checkpoints=keep_checkpoints, progress=progress,
                          handle_sigterm=handle_sigterm, label_dropout=label_dropout)
    mesh = _fit_mesh(devices, mesh, cfg.batch_size)
    src0, src1 = Source(sample_x0, "sample_x0"), Source(sample_x1, "sample_x1", labels)
    check_pair(src0, src1, bool(getattr(cfg.coupling, "keeps_pairs", False)))
    run = _Run(cfg, _checks.check_key(key), src0, src1, model, optimizer, optimizer_name,
               mesh)
    ckpt = _Checkpoints(checkpoint_dir, cfg, run)
    state, prior = ckpt.resume(run.state)
    start = int(_to_host(state.step))
    rec = _Recorder(prior, _Progress(cfg.progress, cfg.steps, start))
    pipe = run.pipeline()
    schedule = list(_schedule(start, cfg.steps, cfg.chunk, cfg.checkpoint_every))
    try:
        with _Sigterm(ckpt.mgr is not None and cfg.handle_sigterm) as sigterm:
            for i, (first, n) in enumerate(schedule):
                tic = time.perf_counter()
                state, loss = run.chunk(state, schedule, i, pipe)
                rec.add(first, loss, time.perf_counter() - tic)
                ckpt.after_chunk(state, lambda: rec.curve, first + n, sigterm.is_set())
                if sigterm.is_set():
                    raise Preempted(first + n)
    finally:
        for closeable in (pipe, rec.progress, ckpt):
            if closeable is not None:
                closeable.close()
    model, final = run.output(state)
    return model, rec.history(final, start if start > 0 else None, t_start)
