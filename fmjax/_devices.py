"""Devices, meshes and multi-host set-up for data-parallel training.

The batch is sharded over a 1-D :class:`jax.sharding.Mesh` with axis ``"data"``; parameters,
EMA and optimizer state are replicated. The program is the same on 1 or N devices, on one
or many hosts (:func:`initialize_distributed`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["global_batch", "initialize_distributed", "make_mesh"]


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
