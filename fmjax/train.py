r"""Training a neural velocity by flow matching, checkpoints, sampling, data parallelism.

The seed's pipeline: (1) a source :math:`\alpha` (by default :math:`N(0, I)`), (2) learn
:math:`v_\theta` by regression on the flow-matching loss

.. math::

    L(\theta) = \mathbb{E}_{t \sim U[0, 1],\,(X_0, X_1) \sim \pi}
        \big\| v_\theta(t, X_t) - (a'(t) X_0 + b'(t) X_1) \big\|^2,
    \qquad X_t = a(t) X_0 + b(t) X_1,

for any affine path (``path.coefficients`` / ``path.derivatives``) and a coupling
:math:`\pi` of :math:`(\alpha, \beta)` (independent, exact minibatch OT, Sinkhorn),
(3) integrate :math:`\dot x = v_\theta(t, x)` from :math:`t = 0` to :math:`1` (``sample``).

Design (functional NNX): the model is split once (``nnx.split``) into a graph definition and
a parameter pytree; a whole chunk of ``steps_per_call`` optimisation steps is one
``jax.jit`` of a ``lax.scan``, compiled once per ``fit`` call. The host is used only
between chunks (loss check, checkpoint, progress bar). All randomness of step ``k`` comes
from ``jax.random.fold_in(key, k)``, so the trajectory of the parameters does not depend on
how the steps are chunked, interrupted or resumed (bitwise on CPU).

Data parallelism: the batch is sharded over a 1-D :class:`jax.sharding.Mesh` with axis
``"data"`` made of every visible device (or ``devices=``); parameters, EMA and optimizer
state are replicated. The program is the same on 1 or N devices, on one or many hosts
(see :func:`initialize_distributed`). Batches are generated *inside* the compiled step from
``(key, step)``, so each device computes only its own shard and no host-to-device data
feeding is needed.

Exact minibatch OT with a host solver (POT, SciPy) is pipelined: the batches of the next
chunk are drawn on the device, and their assignments are solved by host threads while the
device trains the current chunk; the compiled step only gathers ``x1[perm]``. The host
solve, not the device step, bounds the rate (``benchmarks/train_speed.py``): the pipeline
overlaps it with the step and spreads it over the host's cores (``host_workers``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import _checks
from .paths import AffinePath, Linear, _require_path

__all__ = [
    "History",
    "NonFiniteLossError",
    "Preempted",
    "TrainState",
    "fit",
    "global_batch",
    "initialize_distributed",
    "make_mesh",
    "restore",
    "sample",
]

_COUPLINGS = ("independent", "ot", "sinkhorn")
_DEFAULT_OPTIMIZER = "adamw(learning_rate=0.001, weight_decay=1e-05)"


# --------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------
class TrainState(NamedTuple):
    """Everything that evolves during training (a pytree; replicated over the mesh).

    Attributes:
        step: int32 scalar, the number of optimisation steps taken so far.
        params: the model's ``nnx.Param`` state (raw, last iterate).
        ema: exponential moving average accumulator of ``params``, *not debiased*: the
            debiased average after ``k`` steps is ``ema / (1 - ema_decay**k)`` (as in
            ``optax.ema(debias=True)``); ``fit`` returns the debiased average.
        opt_state: the Optax optimizer state.

    Example:
        >>> import jax, jax.numpy as jnp, fmjax as fm
        >>> x0 = lambda key, n: jax.random.normal(key, (n, 2), jnp.float32)
        >>> x1 = lambda key, n: 2.0 + jax.random.normal(key, (n, 2), jnp.float32)
        >>> model, hist = fm.fit(jax.random.key(0), x0, x1, steps=200, batch_size=64)
        >>> isinstance(hist.state, fm.TrainState), int(hist.state.step)
        (True, 200)
    """

    step: jax.Array
    params: Any
    ema: Any
    opt_state: Any


class History(NamedTuple):
    """What ``fit`` reports besides the model.

    Attributes:
        loss: ``(k,)`` float array, the minibatch loss of each step run in this call.
        steps: ``(k,)`` int array, the (0-based) indices of those steps (they start after
            the checkpoint a run resumed from).
        steps_per_second: training throughput, excluding the first chunk (which includes
            compilation) when there are at least two chunks.
        wall_time: seconds spent in ``fit`` (compilation and checkpoints included).
        state: the final :class:`TrainState` (raw parameters, EMA, optimizer state).
        resumed_from: the step of the checkpoint this run resumed from, or ``None``.

    Example:
        >>> import jax, jax.numpy as jnp, fmjax as fm
        >>> x0 = lambda key, n: jax.random.normal(key, (n, 2), jnp.float32)
        >>> x1 = lambda key, n: 2.0 + jax.random.normal(key, (n, 2), jnp.float32)
        >>> model, hist = fm.fit(jax.random.key(0), x0, x1, steps=200, batch_size=64)
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
# Devices, meshes, multi-host
# --------------------------------------------------------------------------------------
def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: every visible device).

    Example:
        >>> import fmjax as fm
        >>> fm.make_mesh().axis_names
        ('data',)
    """
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("`devices` is empty")
    return Mesh(np.array(devs, dtype=object), ("data",))


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None, *,
                           cpu_collectives: str | None = "gloo", **kwargs) -> None:
    """Join a multi-process (multi-host) JAX job; call it first, before any other JAX call.

    Arguments left ``None`` are read from the environment variables
    ``FMJAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``FMJAX_NUM_PROCESSES`` and
    ``FMJAX_PROCESS_ID``; if those are absent too, :func:`jax.distributed.initialize` detects
    the cluster itself (SLURM: ``SLURM_*`` variables; Cloud TPU pods; MPI; Kubernetes).
    On the CPU backend ``cpu_collectives`` selects the cross-process collectives
    (``"gloo"``), needed for training across CPU processes.

    After this, ``jax.devices()`` lists the devices of every process and :func:`fit` trains
    one model over all of them (each process runs the same script).

    SLURM recipe (one process per GPU)::

        #SBATCH --nodes=2 --ntasks-per-node=4 --gpus-per-task=1
        srun python -c "import fmjax as fm; fm.initialize_distributed(); ..."

    TPU VM pod recipe::

        gcloud compute tpus tpu-vm ssh NAME --worker=all --command="python train.py"
        # train.py calls fm.initialize_distributed() (arguments auto-detected)

    Example (not executed by the doctests: it joins a multi-process job)::

        >>> import fmjax as fm  # doctest: +SKIP
        >>> fm.initialize_distributed("10.0.0.1:1234", num_processes=2,  # doctest: +SKIP
        ...                           process_id=0)
    """
    env = os.environ
    if coordinator_address is None:
        coordinator_address = env.get("FMJAX_COORDINATOR_ADDRESS")
    if num_processes is None and "FMJAX_NUM_PROCESSES" in env:
        num_processes = int(env["FMJAX_NUM_PROCESSES"])
    if process_id is None and "FMJAX_PROCESS_ID" in env:
        process_id = int(env["FMJAX_PROCESS_ID"])
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id, **kwargs)


def global_batch(local: Any, mesh: Mesh | None = None) -> jax.Array:
    """Assemble per-process host data into one global array sharded along ``"data"``.

    For users who feed their own host-side batches (``fit`` does not need it: it generates
    batches on device). Each process passes its ``(n_local, ...)`` slice; the result has
    leading size ``n_local * process_count`` (``jax.make_array_from_process_local_data``).

    Example:
        >>> import jax, numpy as np, fmjax as fm
        >>> x = fm.global_batch(np.ones((4 * jax.local_device_count(), 2), np.float32))
        >>> x.shape[0] == 4 * jax.device_count(), x.sharding.spec[0]
        (True, 'data')
    """
    local = np.asarray(local)
    if local.ndim < 1:
        raise ValueError(f"`local` must have a leading batch axis, got shape {local.shape}")
    mesh = make_mesh() if mesh is None else mesh
    sharding = NamedSharding(mesh, P("data"))
    return jax.make_array_from_process_local_data(sharding, local)


def _replicate(x: Any, mesh: Mesh) -> jax.Array:
    """Place a host-local value replicated on every device of ``mesh`` (any process count)."""
    host = np.asarray(_to_host(x) if isinstance(x, jax.Array) else x)
    sharding = NamedSharding(mesh, P())
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def _to_host(x: jax.Array) -> np.ndarray:
    """The value of a replicated (possibly multi-process) array on this host."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    return np.asarray(x.addressable_shards[0].data)


# --------------------------------------------------------------------------------------
# Data sources
# --------------------------------------------------------------------------------------
class _Source:
    """A sampler ``(key, n) -> (n, d)`` or a finite dataset sampled by index."""

    def __init__(self, src: Any, name: str):
        self.name = name
        if callable(src):
            self.fn, self.data = src, None
            try:
                out = jax.eval_shape(lambda k: src(k, 3), jax.random.key(0))
            except Exception as e:
                raise ValueError(f"`{name}` must be a pure JAX function (key, n) -> (n, d) "
                                 f"or an array of shape (N, d); calling it failed: {e}") from e
            if len(out.shape) != 2 or out.shape[0] != 3:
                raise ValueError(f"`{name}`(key, n) must return shape (n, d); with n=3 it "
                                 f"returned shape {tuple(out.shape)}")
            if not jnp.issubdtype(out.dtype, jnp.floating):
                raise ValueError(f"`{name}` must return floating-point samples, got dtype "
                                 f"{out.dtype}")
            self.dim, self.dtype = int(out.shape[1]), np.dtype(out.dtype)
        else:
            arr = _checks.check_batch(src, name)
            self.fn, self.data = None, np.asarray(arr)
            self.dim, self.dtype = int(arr.shape[1]), np.dtype(arr.dtype)

    def draw(self, key: jax.Array, n: int, data: jax.Array | None) -> jax.Array:
        if self.fn is not None:
            return self.fn(key, n)
        # Uniform minibatch with replacement: depends only on (key, step).
        idx = jax.random.randint(key, (n,), 0, data.shape[0])
        return data[idx]

    def describe(self) -> str:
        if self.fn is not None:
            return f"fn:{getattr(self.fn, '__qualname__', type(self.fn).__name__)}"
        return f"array{self.data.shape}:{hashlib.sha1(self.data.tobytes()).hexdigest()[:12]}"


# --------------------------------------------------------------------------------------
# Model helpers
# --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _default_optimizer() -> optax.GradientTransformation:
    # One shared object, so that fit calls with the default optimizer share compilations.
    return optax.adamw(1e-3, weight_decay=1e-5)


def _split(model: nnx.Module):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, params, rest


def _model_signature(params: Any) -> str:
    leaves = jax.tree_util.tree_leaves_with_path(params)
    desc = [(jax.tree_util.keystr(p), tuple(x.shape), str(x.dtype)) for p, x in leaves]
    return hashlib.sha1(repr(desc).encode()).hexdigest()[:16]


def _describe_model(model: nnx.Module, params: Any) -> dict:
    info = {"class": type(model).__name__, "params_sha": _model_signature(params),
            "n_params": int(sum(x.size for x in jax.tree_util.tree_leaves(params)))}
    for attr in ("dim", "width", "depth", "activation", "time_embedding"):
        val = getattr(model, attr, None)
        if isinstance(val, (int, str, float)):
            info[attr] = val
    return info


def _key_fingerprint(key: jax.Array) -> str:
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return hashlib.sha1(np.asarray(data).tobytes()).hexdigest()[:16]


def _ema_debiased(ema: Any, step: int, decay: float) -> Any:
    if decay == 0.0 or step == 0:
        return ema
    scale = 1.0 / (1.0 - decay ** int(step))
    # On the host (NumPy): no small device programs to compile.
    return jax.tree.map(lambda e: jnp.asarray((np.asarray(e) * scale).astype(e.dtype)), ema)


# --------------------------------------------------------------------------------------
# Checkpoints (Orbax)
# --------------------------------------------------------------------------------------
def _checkpoint_manager(directory: str, keep: int | None):
    import orbax.checkpoint as ocp

    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                        enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory, options=opts)


def _check_writable(directory: str) -> str:
    directory = os.path.abspath(os.fspath(directory))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".fmjax-write-test-", dir=directory)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"`checkpoint_dir` {directory!r} is not a writable directory "
                         f"({type(e).__name__}: {e})") from e
    return directory


def _leaves(tree: Any) -> list:
    return list(jax.tree_util.tree_leaves(tree))


def _save(mgr, state: TrainState, meta: dict) -> None:
    import orbax.checkpoint as ocp

    step = int(_to_host(state.step))
    meta = dict(meta, step=step)
    mgr.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(_leaves(state.params)),
        ema=ocp.args.StandardSave(_leaves(state.ema)),
        opt=ocp.args.StandardSave(_leaves(state.opt_state) + [state.step]),
        meta=ocp.args.JsonSave(meta)), force=True)
    mgr.wait_until_finished()


def _abstract(leaves: list, mesh: Mesh) -> list:
    sharding = NamedSharding(mesh, P())
    return [jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype if not hasattr(x, "dtype")
                                 else x.dtype, sharding=sharding) for x in leaves]


def _read_meta(mgr, step: int) -> dict:
    import orbax.checkpoint as ocp

    out = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out["meta"])


def _restore_items(mgr, step: int, items: dict[str, list], mesh: Mesh) -> dict[str, list]:
    import orbax.checkpoint as ocp

    args = {name: ocp.args.StandardRestore(_abstract(leaves, mesh))
            for name, leaves in items.items()}
    out = mgr.restore(step, args=ocp.args.Composite(**args))
    return {name: list(out[name]) for name in items}


def _compare_fingerprints(saved: dict, current: dict, directory: str) -> None:
    diffs = [f"{k}: checkpoint has {saved.get(k)!r}, this run has {current.get(k)!r}"
             for k in sorted(set(saved) | set(current)) if k != "step"
             and json.dumps(saved.get(k), sort_keys=True) != json.dumps(current.get(k),
                                                                        sort_keys=True)]
    if diffs:
        raise ValueError(f"cannot resume from the checkpoint in {directory!r}: the training "
                         f"configuration differs ({'; '.join(diffs)}). Use another "
                         f"`checkpoint_dir` or the original configuration.")


# --------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------
def fit(key: jax.Array, sample_x0: Any, sample_x1: Any, *, path: AffinePath | None = None,
        coupling: str = "independent", coupling_kwargs: dict | None = None,
        sigma: float = 0.0, steps: int = 20_000, batch_size: int = 512,
        model: nnx.Module | None = None, optimizer: optax.GradientTransformation | None = None,
        optimizer_name: str | None = None, ema_decay: float = 0.999, use_ema: bool = True,
        steps_per_call: int = 500, checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int | None = None, keep_checkpoints: int | None = 2,
        progress: bool = False, devices: Sequence[jax.Device] | None = None,
        mesh: Mesh | None = None, shard_coupling: str = "global",
        handle_sigterm: bool = True, host_workers: int | None = None):
    r"""Train a velocity network by flow matching; return ``(model, history)``.

    Loss of one step (``n = batch_size``, :math:`t_i \sim U[0, 1]` i.i.d.):

    .. math::

        \frac1n \sum_i \big\| v_\theta(t_i, x_{t_i}^{(i)} + \sigma \varepsilon_i)
            - a'(t_i) x_0^{(i)} - b'(t_i) x_1^{(i)} \big\|^2,
        \quad x_t = a(t) x_0 + b(t) x_1,

    where :math:`(x_0^{(i)}, x_1^{(i)})` is the minibatch coupled by ``coupling`` and
    :math:`\varepsilon_i \sim N(0, I)` (only if ``sigma > 0``). With ``sigma = 0`` (default)
    this is plain (rectified / conditional) flow matching. Tong et al.'s I-CFM / OT-CFM
    protocol (TMLR 2024) uses a constant ``sigma_min = 0.1``: pass ``sigma=0.1``, the
    regression target is unchanged because :math:`\sigma` does not depend on ``t``.

    Args:
        key: PRNG key. Split into an initialisation key (default model) and a data key;
            step ``k`` uses ``fold_in(data_key, k)`` for its batch, times, coupling, noise.
        sample_x0, sample_x1: pure JAX functions ``(key, n) -> (n, d)`` (a source/target
            sampler) or finite datasets, arrays ``(N, d)`` (minibatches drawn uniformly with
            replacement). Both must have the same ``d`` and dtype.
        path: affine path (default :class:`~fmjax.Linear`).
        coupling: ``"independent"``, ``"ot"`` (exact minibatch OT, a permutation) or
            ``"sinkhorn"`` (entropic), via :func:`fmjax.couplings.couple`;
            ``coupling_kwargs`` are passed to it (e.g. ``{"epsilon": 0.01}``).
        sigma: standard deviation of the Gaussian noise added to :math:`x_t`.
        steps: total number of optimisation steps (a resumed run continues up to it).
        batch_size: global batch size; must be divisible by the number of devices.
        model: an NNX module ``model(t, x)`` (per point); default
            ``fmjax.nn.VelocityMLP(d)`` (3 x 64 SELU, the Tong et al. 2-D net) with the data
            dtype as parameter dtype.
        optimizer: any Optax transform (schedules included); default
            ``optax.adamw(1e-3, weight_decay=1e-5)``. ``optimizer_name`` labels it in the
            checkpoint fingerprint (otherwise only the structure of its state is recorded).
        ema_decay: decay of the EMA of the parameters (0 disables it).
        use_ema: return the (debiased) EMA parameters (default) rather than the last ones.
        steps_per_call: steps per compiled ``lax.scan`` chunk (the host is visited once per
            chunk: loss check, checkpoint, progress bar).
        checkpoint_dir: Orbax checkpoint directory. If it holds a checkpoint, training
            resumes from the latest complete one (a half-written ``*.orbax-checkpoint-tmp-*``
            directory is ignored); a different configuration raises ``ValueError``.
        checkpoint_every: save every this many steps (default: ``steps_per_call``), and at
            the end. Best a multiple of ``steps_per_call`` (chunks are cut at checkpoints).
        keep_checkpoints: how many checkpoints to keep (``None``: all).
        progress: show a tqdm progress bar (needs ``tqdm``); otherwise ``fit`` is silent.
        devices, mesh: the devices to shard the batch over (default: all visible devices)
            or a 1-D mesh with axis ``"data"``.
        shard_coupling: with several devices, ``"global"`` (default) solves the coupling
            over the whole batch, so the result is the same as on one device (the exact OT
            of the full minibatch; costs an all-gather and a solve of size ``batch_size``);
            ``"local"`` couples each device's shard independently (``jax.shard_map``):
            cheaper, scales, but it is minibatch OT at batch ``batch_size / n_devices``.
        handle_sigterm: with a ``checkpoint_dir``, on SIGTERM finish the current chunk,
            save and raise :class:`Preempted` (exit code 143).
        host_workers: exact OT with a host solver (``coupling="ot"`` with solver
            ``"auto"`` (here: POT, else SciPy, on every backend), ``"pot"`` or ``"scipy"``;
            one process; one device or ``shard_coupling="global"``): number of host threads
            that solve the assignments of the *next* chunk while the device trains the
            current one.
            Default: the number of CPU cores (at most 8). ``0`` solves each assignment
            inside the step through a blocking ``jax.pure_callback`` instead. The result
            does not depend on it (the assignments are the same deterministic solutions).

    Returns:
        ``(model, history)``: ``model`` is an NNX module, a velocity callable ``v(t, x)``
        usable in ``fm.integrate`` / ``fm.kinetic_energy`` / ``fm.log_likelihood``, holding
        the debiased EMA parameters (``use_ema=True``) or the last iterate; ``history`` is a
        :class:`History` (per-step loss, steps/s, final state).

    Raises:
        NonFiniteLossError: a NaN or inf loss (message ``"non-finite loss at step N"``,
            N 0-based); nothing is checkpointed after it.
        ValueError: bad arguments (batch size not divisible by the device count,
            unwritable ``checkpoint_dir``, mismatched checkpoint configuration, ...).

    Example:
        >>> import jax, jax.numpy as jnp, fmjax as fm
        >>> x1 = lambda key, n: 2.0 + jax.random.normal(key, (n, 2), jnp.float32)
        >>> x0 = lambda key, n: jax.random.normal(key, (n, 2), jnp.float32)
        >>> model, hist = fm.fit(jax.random.key(0), x0, x1, steps=200, batch_size=64)
        >>> hist.loss.shape
        (200,)
    """
    t_start = time.perf_counter()
    path = Linear() if path is None else _require_path(path)
    if coupling not in _COUPLINGS:
        raise ValueError(f"`coupling` must be one of {_COUPLINGS}, got {coupling!r}")
    if shard_coupling not in ("global", "local"):
        raise ValueError(f"`shard_coupling` must be 'global' or 'local', got {shard_coupling!r}")
    for name, val in (("steps", steps), ("batch_size", batch_size),
                      ("steps_per_call", steps_per_call)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {val!r}")
    if checkpoint_every is not None and (not isinstance(checkpoint_every, (int, np.integer))
                                         or checkpoint_every < 1):
        raise ValueError(f"`checkpoint_every` must be a positive integer, got "
                         f"{checkpoint_every!r}")
    if not (0.0 <= float(ema_decay) < 1.0):
        raise ValueError(f"`ema_decay` must lie in [0, 1), got {ema_decay!r}")
    if not (float(sigma) >= 0.0 and np.isfinite(sigma)):
        raise ValueError(f"`sigma` must be a finite number >= 0, got {sigma!r}")
    if host_workers is not None and (isinstance(host_workers, bool) or not isinstance(
            host_workers, (int, np.integer)) or host_workers < 0):
        raise ValueError(f"`host_workers` must be a non-negative integer or None, got "
                         f"{host_workers!r}")
    steps, batch_size = int(steps), int(batch_size)
    ema_decay, sigma = float(ema_decay), float(sigma)
    coupling_kwargs = dict(coupling_kwargs or {})

    # -- devices -------------------------------------------------------------------------
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

    # -- data ----------------------------------------------------------------------------
    src0, src1 = _Source(sample_x0, "sample_x0"), _Source(sample_x1, "sample_x1")
    if src0.dim != src1.dim:
        raise ValueError(f"`sample_x0` gives points of dimension {src0.dim} but `sample_x1` "
                         f"of dimension {src1.dim}")
    if src0.dtype != src1.dtype:
        raise ValueError(f"`sample_x0` gives dtype {src0.dtype} but `sample_x1` dtype "
                         f"{src1.dtype}; cast one of them")
    dim, dtype = src0.dim, src0.dtype
    data0 = None if src0.data is None else _replicate(src0.data, mesh)
    data1 = None if src1.data is None else _replicate(src1.data, mesh)

    # -- model and optimizer -------------------------------------------------------------
    init_key, data_key = jax.random.split(key)
    model_kwargs = None
    if model is None:
        from . import nn as _nn

        model_kwargs = {"dim": dim}
        model = _nn.VelocityMLP(dim, rngs=nnx.Rngs(params=init_key), param_dtype=dtype)
    graphdef, params0, rest_host = _split(model)
    if optimizer is None:
        optimizer = _default_optimizer()
        optimizer_name = optimizer_name or _DEFAULT_OPTIMIZER
    opt_state0 = optimizer.init(params0)
    opt_desc = optimizer_name or ("custom:" + hashlib.sha1(
        str(jax.tree_util.tree_structure(opt_state0)).encode()).hexdigest()[:16])

    fingerprint = {
        "dim": dim, "dtype": str(dtype), "model": _describe_model(model, params0),
        "path": path.name, "coupling": coupling,
        "coupling_kwargs": {k: repr(v) for k, v in sorted(coupling_kwargs.items())},
        "sigma": sigma, "batch_size": batch_size, "optimizer": opt_desc,
        "ema_decay": ema_decay, "key": _key_fingerprint(key),
        "x0": src0.describe(), "x1": src1.describe(), "shard_coupling": shard_coupling,
        "model_kwargs": model_kwargs,
    }

    rest = jax.tree.map(lambda x: _replicate(x, mesh), rest_host)
    state = TrainState(
        step=_replicate(np.int32(0), mesh),
        params=jax.tree.map(lambda x: _replicate(x, mesh), params0),
        ema=jax.tree.map(lambda x: _replicate(np.zeros_like(x), mesh), params0),
        opt_state=jax.tree.map(lambda x: _replicate(x, mesh), opt_state0),
    )

    # -- checkpoints: resume -------------------------------------------------------------
    mgr, resumed_from = None, None
    if checkpoint_dir is not None:
        checkpoint_dir = _check_writable(checkpoint_dir)
        mgr = _checkpoint_manager(checkpoint_dir, keep_checkpoints)
        latest = mgr.latest_step()
        if latest is not None:
            _compare_fingerprints(_read_meta(mgr, latest), fingerprint, checkpoint_dir)
            treedef_p = jax.tree_util.tree_structure(state.params)
            treedef_o = jax.tree_util.tree_structure(state.opt_state)
            got = _restore_items(mgr, latest, {
                "params": _leaves(state.params), "ema": _leaves(state.ema),
                "opt": _leaves(state.opt_state) + [state.step]}, mesh)
            state = TrainState(step=got["opt"][-1],
                               params=jax.tree_util.tree_unflatten(treedef_p, got["params"]),
                               ema=jax.tree_util.tree_unflatten(treedef_p, got["ema"]),
                               opt_state=jax.tree_util.tree_unflatten(treedef_o,
                                                                      got["opt"][:-1]))
            resumed_from = int(_to_host(state.step))
    every = int(checkpoint_every or steps_per_call)

    # -- exact OT on host threads, one chunk ahead ---------------------------------------
    host_solve = None
    if (coupling == "ot" and host_workers != 0 and jax.process_count() == 1
            and (n_dev == 1 or shard_coupling == "global")
            and set(coupling_kwargs) <= {"solver"}):
        from . import couplings as _couplings

        host_solve = _couplings._host_solver(coupling_kwargs.get("solver", "auto"))
    workers = (min(8, os.cpu_count() or 1) if host_workers is None else int(host_workers))

    # -- the compiled chunk --------------------------------------------------------------
    chunk = int(min(steps_per_call, steps))
    if jnp.issubdtype(data_key.dtype, jax.dtypes.prng_key):
        key_impl, key_data = jax.random.key_impl(data_key), jax.random.key_data(data_key)
    else:  # a legacy raw uint32 key
        key_impl, key_data = None, data_key
    cfg = _ChunkConfig(graphdef=graphdef, path=path, src0=src0.fn or "array",
                       src1=src1.fn or "array", dtype=dtype, batch_size=batch_size,
                       coupling=coupling, coupling_kwargs=tuple(sorted(coupling_kwargs.items())),
                       sigma=sigma, ema_decay=ema_decay, chunk=chunk, mesh=mesh,
                       shard_coupling=shard_coupling, optimizer=optimizer, key_impl=key_impl,
                       wrap=_wrap_step, prefetch=host_solve is not None)
    run_chunk = _compiled_chunk(cfg, src0, src1)
    key_rep = _replicate(key_data, mesh)
    pipe = (None if host_solve is None else
            _AssignmentPipeline(_compiled_chunk(cfg._replace(wrap="draw"), src0, src1),
                                host_solve, workers, chunk, batch_size,
                                lambda start: _replicate(np.int32(start), mesh), key_rep,
                                data0, data1, mesh))

    # -- host loop -----------------------------------------------------------------------
    sigterm = threading.Event()
    old_handler = None
    if (mgr is not None and handle_sigterm
            and threading.current_thread() is threading.main_thread()):
        old_handler = signal.signal(signal.SIGTERM, lambda *_: sigterm.set())
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=resumed_from or 0, desc="fit", unit="step")
    losses, indices = [], []
    step = int(_to_host(state.step))
    timed_steps, timed_seconds, n_chunks = 0, 0.0, 0

    def chunk_length(start: int) -> int:
        next_ckpt = (start // every + 1) * every
        return min(chunk, steps - start, next_ckpt - start)

    try:
        while step < steps:
            n_active = chunk_length(step)
            tic = time.perf_counter()
            perms = None
            if pipe is not None:
                perms = pipe.result(step, n_active)
                if step + n_active < steps:  # drawn before this chunk is queued
                    pipe.draw(step + n_active, chunk_length(step + n_active))
            state, chunk_loss = run_chunk(state, _replicate(np.int32(step), mesh),
                                          _replicate(np.int32(n_active), mesh),
                                          key_rep, rest, data0, data1, perms)
            if pipe is not None:
                pipe.solve_ahead()  # host threads solve the next chunk while it trains
            chunk_loss = _to_host(chunk_loss)[:n_active]
            toc = time.perf_counter()
            n_chunks += 1
            if n_chunks > 1:
                timed_steps, timed_seconds = timed_steps + n_active, timed_seconds + toc - tic
            bad = ~np.isfinite(chunk_loss)
            if bad.any():
                first = int(np.argmax(bad))
                raise NonFiniteLossError(step + first, chunk_loss[first])
            losses.append(chunk_loss)
            indices.append(np.arange(step, step + n_active))
            step += n_active
            if bar is not None:
                bar.update(n_active)
                bar.set_postfix(loss=f"{float(chunk_loss[-1]):.4g}")
            if mgr is not None and (step % every == 0 or step == steps or sigterm.is_set()):
                _save(mgr, state, fingerprint)
            if sigterm.is_set():
                raise Preempted(step)
    finally:
        if pipe is not None:
            pipe.close()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
        if bar is not None:
            bar.close()
        if mgr is not None:
            mgr.close()

    # -- outputs -------------------------------------------------------------------------
    if timed_steps == 0:
        timed_steps, timed_seconds = sum(len(x) for x in losses), time.perf_counter() - t_start
    host = lambda tree: jax.tree.map(lambda x: jnp.asarray(_to_host(x)), tree)  # noqa: E731
    final = TrainState(jnp.asarray(_to_host(state.step)), host(state.params), host(state.ema),
                       host(state.opt_state))
    final_step = int(final.step)
    params = (_ema_debiased(final.ema, final_step, ema_decay)
              if use_ema and ema_decay > 0.0 and final_step > 0 else final.params)
    out_model = nnx.merge(graphdef, params, rest_host)
    history = History(
        loss=np.concatenate(losses) if losses else np.zeros((0,), np.float32),
        steps=np.concatenate(indices) if indices else np.zeros((0,), np.int64),
        steps_per_second=float(timed_steps / max(timed_seconds, 1e-12)),
        wall_time=time.perf_counter() - t_start, state=final, resumed_from=resumed_from)
    return out_model, history


class _ChunkConfig(NamedTuple):
    """Everything the compiled chunk depends on besides its array arguments (hashable)."""

    graphdef: Any
    path: AffinePath
    src0: Any
    src1: Any
    dtype: Any
    batch_size: int
    coupling: str
    coupling_kwargs: tuple
    sigma: float
    ema_decay: float
    chunk: int
    mesh: Mesh
    shard_coupling: str
    optimizer: Any
    key_impl: Any
    wrap: Any
    prefetch: bool = False


_CHUNK_CACHE: dict = {}
_CHUNK_CACHE_SIZE = 8


def _compiled_chunk(cfg: _ChunkConfig, src0: _Source, src1: _Source) -> Callable:
    """The jitted ``lax.scan`` of ``cfg.chunk`` steps, memoised on ``cfg``.

    Memoising lets repeated ``fit`` calls with the same configuration (a resumed run, a
    sweep over seeds or datasets) reuse one compiled program instead of recompiling.
    """
    try:
        hash(cfg)
    except TypeError:  # an unhashable coupling option or sampler: no memoisation
        return _build_chunk(cfg, src0, src1)
    fn = _CHUNK_CACHE.pop(cfg, None)
    if fn is None:
        fn = _build_chunk(cfg, src0, src1)
    _CHUNK_CACHE[cfg] = fn  # most recently used last
    while len(_CHUNK_CACHE) > _CHUNK_CACHE_SIZE:
        _CHUNK_CACHE.pop(next(iter(_CHUNK_CACHE)))
    return fn


def _build_chunk(cfg: _ChunkConfig, src0: _Source, src1: _Source) -> Callable:
    graphdef, path, dtype, batch_size = cfg.graphdef, cfg.path, cfg.dtype, cfg.batch_size
    sigma, ema_decay, optimizer, chunk = cfg.sigma, cfg.ema_decay, cfg.optimizer, cfg.chunk
    batch_sharding = NamedSharding(cfg.mesh, P("data", None))
    key_impl = cfg.key_impl
    rep = NamedSharding(cfg.mesh, P())

    def draw(index, data_key, data0, data1):
        """The two independent batches of step ``index`` and the keys of its other draws."""
        k0, k1, kt, kc, kn = jax.random.split(jax.random.fold_in(data_key, index), 5)
        x0 = jax.lax.with_sharding_constraint(src0.draw(k0, batch_size, data0), batch_sharding)
        x1 = jax.lax.with_sharding_constraint(src1.draw(k1, batch_size, data1), batch_sharding)
        return x0, x1, kt, kc, kn

    def as_key(key_data):
        return key_data if key_impl is None else jax.random.wrap_key_data(key_data,
                                                                          impl=key_impl)

    if cfg.wrap == "draw":  # the batches of a chunk, for the host assignment pipeline
        def draw_chunk(start, key_data, data0, data1):
            idx = start + jnp.arange(chunk, dtype=jnp.int32)
            return jax.lax.map(lambda i: draw(i, as_key(key_data), data0, data1)[:2], idx)

        return jax.jit(draw_chunk, out_shardings=rep)

    couple_fn = _make_coupling(cfg.coupling, dict(cfg.coupling_kwargs), cfg.mesh,
                               cfg.shard_coupling)

    def loss_fn(params, rest, x0, x1, key_t, key_noise):
        t = jax.random.uniform(key_t, (batch_size,), dtype=dtype)
        a, b = path.coefficients(t)
        da, db = path.derivatives(t)
        xt = a[:, None] * x0 + b[:, None] * x1
        if sigma > 0.0:
            noise = jax.random.normal(key_noise, xt.shape, dtype=dtype)
            xt = xt + sigma * noise
        target = da[:, None] * x0 + db[:, None] * x1
        net = nnx.merge(graphdef, params, rest)
        v = jax.vmap(lambda ti, xi: net(ti, xi))(t, xt)
        return jnp.mean(jnp.sum((v.astype(dtype) - target) ** 2, axis=-1))

    def one_step(state: TrainState, inputs, data_key, rest, data0, data1):
        index, active, perm = inputs
        x0, x1, kt, kc, kn = draw(index, data_key, data0, data1)
        if perm is None:
            x0, x1 = couple_fn(kc, x0, x1)
        else:  # exact OT solved on the host ahead of time (``_AssignmentPipeline``)
            x1 = jax.lax.with_sharding_constraint(x1[perm], batch_sharding)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, rest, x0, x1, kt, kn)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                           state.ema, params)
        new = TrainState(state.step + 1, params, ema, opt_state)
        new = jax.tree.map(lambda n_, o_: jnp.where(active, n_, o_), new, state)
        return new, loss

    step_fn = cfg.wrap(one_step)

    def run_chunk(state, start, n_active, key_data, rest, data0, data1, perms):
        data_key = as_key(key_data)
        idx = start + jnp.arange(chunk, dtype=jnp.int32)
        active = jnp.arange(chunk, dtype=jnp.int32) < n_active
        # Optax mixes Python floats with int32 counters: allow standard promotion while
        # tracing (user code running under jax_numpy_dtype_promotion="strict" stays strict).
        with jax.numpy_dtype_promotion("standard"):
            return jax.lax.scan(lambda s, inp: step_fn(s, inp, data_key, rest, data0, data1),
                                state, (idx, active, perms))

    return jax.jit(run_chunk, donate_argnums=(0,), out_shardings=rep)


class _AssignmentPipeline:
    """Exact minibatch OT one chunk ahead: the batches of the next chunk are drawn on the
    device (the same ``(key, step)`` draws as inside the step), copied to the host, and
    their assignments solved by ``workers`` threads while the device trains the current
    chunk (POT and SciPy release the GIL). ``result`` hands the permutations, shape
    ``(chunk, batch)``, to the compiled chunk, which gathers ``x1[perm]``."""

    def __init__(self, draw_fn, solve, workers, chunk, batch, put_start, key, data0, data1,
                 mesh):
        from concurrent.futures import ThreadPoolExecutor

        self.draw_fn, self.solve, self.chunk, self.batch = draw_fn, solve, chunk, batch
        self.put_start, self.key, self.data0, self.data1 = put_start, key, data0, data1
        self.mesh, self.workers = mesh, workers
        self.pool = ThreadPoolExecutor(workers)
        self.drawn = None  # (start, n, device arrays)
        self.pending = None  # (start, n, futures)

    def draw(self, start: int, n: int) -> None:
        self.drawn = (start, n, self.draw_fn(self.put_start(start), self.key, self.data0,
                                             self.data1))

    def _solve_block(self, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
        return np.stack([self.solve(a, b) for a, b in zip(x0, x1, strict=True)])

    def solve_ahead(self) -> None:
        if self.drawn is None:
            return
        start, n, (x0, x1) = self.drawn
        self.drawn = None
        x0, x1 = _to_host(x0)[:n], _to_host(x1)[:n]
        size = -(-n // (4 * self.workers))  # about four blocks per thread
        blocks = [(lo, min(lo + size, n)) for lo in range(0, n, size)]
        futures = [self.pool.submit(self._solve_block, x0[lo:hi], x1[lo:hi])
                   for lo, hi in blocks]
        self.pending = (start, n, futures)

    def result(self, start: int, n: int) -> jax.Array:
        if self.pending is None or self.pending[:2] != (start, n):
            self.draw(start, n)
            self.solve_ahead()
        _, _, futures = self.pending
        self.pending = None
        perms = np.tile(np.arange(self.batch, dtype=np.int32), (self.chunk, 1))
        perms[:n] = np.concatenate([f.result() for f in futures])
        return _replicate(perms, self.mesh)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _wrap_step(step_fn: Callable) -> Callable:
    """Identity; a seam where tests wrap the train step (``chex.assert_max_traces``)."""
    return step_fn


def _make_coupling(method: str, kwargs: dict, mesh: Mesh, shard: str) -> Callable:
    if method == "independent":
        return lambda key, x0, x1: (x0, x1)
    from . import couplings as _couplings

    def couple(key, x0, x1):
        return _couplings.couple(key, x0, x1, method=method, **kwargs)

    if shard == "global" or mesh.devices.size == 1:
        return couple

    def local(key, x0, x1):
        key = jax.random.fold_in(key, jax.lax.axis_index("data"))
        return couple(key, x0, x1)

    # check_vma=False: the coupling's run-time checks (equinox.error_if) and host
    # callbacks are not annotated for varying-manual-axes types.
    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data", None), P("data", None)),
                         out_specs=(P("data", None), P("data", None)), check_vma=False)


# --------------------------------------------------------------------------------------
# restore, sample
# --------------------------------------------------------------------------------------
def restore(checkpoint_dir: str | os.PathLike, model: nnx.Module | None = None, *,
            step: int | None = None, use_ema: bool = True,
            devices: Sequence[jax.Device] | None = None) -> nnx.Module:
    """Load a trained model from a ``fit`` checkpoint directory (any device count).

    Args:
        checkpoint_dir: the directory given to ``fit``.
        model: a module with the same structure as the trained one (its values are
            ignored); may be omitted if ``fit`` built the default ``VelocityMLP``.
        step: which checkpoint (default: the latest complete one).
        use_ema: load the debiased EMA parameters (default) or the last iterate.
        devices: devices to place the parameters on, replicated (default: all visible).

    Returns:
        The model, a velocity callable ``v(t, x)``.

    Example:
        >>> import tempfile, jax, jax.numpy as jnp, fmjax as fm
        >>> x0 = lambda key, n: jax.random.normal(key, (n, 2), jnp.float32)
        >>> x1 = lambda key, n: 2.0 + jax.random.normal(key, (n, 2), jnp.float32)
        >>> ckpt = tempfile.mkdtemp()
        >>> model, _ = fm.fit(jax.random.key(0), x0, x1, steps=200, batch_size=64,
        ...                   checkpoint_dir=ckpt)
        >>> again = fm.restore(ckpt)
        >>> x = jnp.zeros(2, jnp.float32)
        >>> bool(jnp.array_equal(again(0.5, x), model(0.5, x)))
        True
    """
    directory = os.path.abspath(os.fspath(checkpoint_dir))
    if not os.path.isdir(directory):
        raise ValueError(f"`checkpoint_dir` {directory!r} does not exist")
    mgr = _checkpoint_manager(directory, None)
    try:
        step = mgr.latest_step() if step is None else int(step)
        if step is None or step not in mgr.all_steps():
            raise ValueError(f"no complete checkpoint{'' if step is None else f' {step}'} in "
                             f"{directory!r} (steps: {list(mgr.all_steps())})")
        meta = _read_meta(mgr, step)
        if model is None:
            kw = meta.get("model_kwargs")
            if not kw:
                raise ValueError("the checkpoint was trained with a custom model: pass "
                                 "`model=` (same structure)")
            from . import nn as _nn

            model = _nn.VelocityMLP(kw["dim"], rngs=nnx.Rngs(0),
                                    param_dtype=np.dtype(meta["dtype"]))
        graphdef, params, rest = _split(model)
        if _model_signature(params) != meta["model"]["params_sha"]:
            raise ValueError(f"`model` does not have the structure of the checkpointed "
                             f"model ({meta['model']})")
        mesh = make_mesh(devices)
        item = "ema" if use_ema and meta["ema_decay"] > 0.0 and step > 0 else "params"
        got = _restore_items(mgr, step, {item: _leaves(params)}, mesh)[item]
    finally:
        mgr.close()
    tree = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params),
                                        [jnp.asarray(_to_host(x)) for x in got])
    if item == "ema":
        tree = _ema_debiased(tree, step, meta["ema_decay"])
    return nnx.merge(graphdef, tree, rest)


def sample(model: Callable, key: jax.Array, n: int, *, dim: int | None = None,
           sample_x0: Any = None, solver: str = "euler", steps: int = 100,
           t0: float = 0.0, t1: float = 1.0, dtype: Any = jnp.float32,
           **integrate_kwargs) -> jax.Array:
    r"""Draw ``n`` samples of the learned target: integrate :math:`\dot x = v(t, x)`.

    :math:`x(t_0) \sim \alpha` (``N(0, I_d)`` by default, or ``sample_x0(key, n)``) and the
    result is :math:`x(t_1)` computed by :func:`fmjax.integrate` (``solver="euler"`` with
    ``steps`` fixed steps, the Tong et al. protocol, or any solver it accepts).

    Args:
        model: a velocity callable ``v(t, x)`` on one point (e.g. ``fit``'s model).
        key: PRNG key for the source samples.
        n: number of samples.
        dim: dimension ``d`` (default: ``model.dim`` if it exists).
        sample_x0: optional source sampler ``(key, n) -> (n, d)`` or an array ``(n, d)``
            of starting points.
        solver, steps, t0, t1, \*\*integrate_kwargs: passed to ``fmjax.integrate``.
        dtype: dtype of the default Gaussian source.

    Returns:
        ``(n, d)`` array.

    Example:
        >>> import jax, jax.numpy as jnp, fmjax as fm
        >>> v = lambda t, x: jnp.ones_like(x)
        >>> fm.sample(v, jax.random.key(0), 5, dim=2, steps=10).shape
        (5, 2)
    """
    from . import flows as _flows

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"`n` must be a positive integer, got {n!r}")
    if sample_x0 is None:
        dim = getattr(model, "dim", None) if dim is None else dim
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"`dim` must be given (a positive integer) when the model has "
                             f"no `dim` attribute, got {dim!r}")
        x0 = jax.random.normal(key, (int(n), int(dim)), dtype=dtype)
    elif callable(sample_x0):
        x0 = _checks.check_batch(sample_x0(key, int(n)), "sample_x0(key, n)")
    else:
        x0 = _checks.check_batch(sample_x0, "sample_x0")
        if x0.shape[0] != n:
            raise ValueError(f"`sample_x0` has {x0.shape[0]} points but n={n}")
    return _flows.integrate(model, x0, t0=t0, t1=t1, solver=solver, steps=steps,
                            **integrate_kwargs).x
