"""Orbax checkpoints of :func:`fmjax.fit`: save, resume, and :func:`restore` a model.

A checkpoint holds the parameters, their EMA, the optimizer state and step, the loss of
every step so far (so a resumed run reports the whole curve) and a JSON fingerprint of the
configuration, compared field by field on resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ._devices import _to_host, make_mesh
from ._step import TrainState, _ema_debiased, _split

__all__ = ["restore"]


def _model_signature(params: Any) -> str:
    leaves = jax.tree_util.tree_leaves_with_path(params)
    desc = [(jax.tree_util.keystr(p), tuple(x.shape), str(x.dtype)) for p, x in leaves]
    return hashlib.sha1(repr(desc).encode()).hexdigest()[:16]


def describe_model(model: nnx.Module, params: Any) -> dict:
    from .nn import num_params

    info = {"class": type(model).__name__, "params_sha": _model_signature(params),
            "n_params": num_params(model)}
    for attr in ("dim", "width", "depth", "activation", "time_embedding"):
        val = getattr(model, attr, None)
        if isinstance(val, int | str | float):
            info[attr] = val
    return info


def check_writable(directory: str | os.PathLike) -> str:
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


def manager(directory: str, keep: int | None):
    import orbax.checkpoint as ocp

    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                        enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory, options=opts)


def _leaves(tree: Any) -> list:
    return list(jax.tree_util.tree_leaves(tree))


def save(mgr, state: TrainState, meta: dict, losses: np.ndarray) -> None:
    import orbax.checkpoint as ocp

    step = int(_to_host(state.step))
    mgr.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(_leaves(state.params)),
        ema=ocp.args.StandardSave(_leaves(state.ema)),
        opt=ocp.args.StandardSave(_leaves(state.opt_state) + [state.step]),
        losses=ocp.args.StandardSave([np.asarray(losses, np.float32)]),
        meta=ocp.args.JsonSave(dict(meta, step=step))), force=True)
    mgr.wait_until_finished()


def _abstract(leaves: list, mesh: Mesh) -> list:
    sharding = NamedSharding(mesh, P())
    return [jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype if not hasattr(x, "dtype")
                                 else x.dtype, sharding=sharding) for x in leaves]


def read_meta(mgr, step: int) -> dict:
    import orbax.checkpoint as ocp

    out = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out["meta"])


def restore_items(mgr, step: int, items: dict[str, list], mesh: Mesh) -> dict[str, list]:
    import orbax.checkpoint as ocp

    args = {name: ocp.args.StandardRestore(_abstract(leaves, mesh))
            for name, leaves in items.items()}
    out = mgr.restore(step, args=ocp.args.Composite(**args))
    return {name: list(out[name]) for name in items}


def restore_losses(mgr, step: int) -> np.ndarray:
    import orbax.checkpoint as ocp

    target = [np.zeros((step,), np.float32)]
    out = mgr.restore(step, args=ocp.args.Composite(losses=ocp.args.StandardRestore(target)))
    return np.asarray(_to_host(out["losses"][0]) if isinstance(out["losses"][0], jax.Array)
                      else out["losses"][0], np.float32)


def compare_fingerprints(saved: dict, current: dict, directory: str) -> None:
    diffs = [f"{k}: checkpoint has {saved.get(k)!r}, this run has {current.get(k)!r}"
             for k in sorted(set(saved) | set(current)) if k != "step"
             and json.dumps(saved.get(k), sort_keys=True) != json.dumps(current.get(k),
                                                                        sort_keys=True)]
    if diffs:
        raise ValueError(f"cannot resume from the checkpoint in {directory!r}: the training "
                         f"configuration differs ({'; '.join(diffs)}). Use another "
                         f"`checkpoint_dir` or the original configuration.")


def resume(mgr, directory: str, fingerprint: dict, state: TrainState, steps: int,
           mesh: Mesh) -> tuple[TrainState, np.ndarray] | None:
    """The latest complete checkpoint as ``(state, losses)``, or None if there is none."""
    latest = mgr.latest_step()
    if latest is None:
        return None
    if latest > steps:
        raise ValueError(f"`checkpoint_dir` {directory!r} holds a run at step {latest}, past "
                         f"`steps` = {steps} (`steps` is the total number of steps): pass "
                         f"steps >= {latest} to continue it, load it with fm.restore, or use "
                         f"another `checkpoint_dir`")
    compare_fingerprints(read_meta(mgr, latest), fingerprint, directory)
    treedef_p = jax.tree_util.tree_structure(state.params)
    treedef_o = jax.tree_util.tree_structure(state.opt_state)
    got = restore_items(mgr, latest, {
        "params": _leaves(state.params), "ema": _leaves(state.ema),
        "opt": _leaves(state.opt_state) + [state.step]}, mesh)
    state = TrainState(step=got["opt"][-1],
                       params=jax.tree_util.tree_unflatten(treedef_p, got["params"]),
                       ema=jax.tree_util.tree_unflatten(treedef_p, got["ema"]),
                       opt_state=jax.tree_util.tree_unflatten(treedef_o, got["opt"][:-1]))
    return state, restore_losses(mgr, latest)


def _default_model(meta: dict) -> nnx.Module:
    kw = meta.get("model_kwargs")
    if not kw:
        raise ValueError("the checkpoint was trained with a custom model: pass `model=` (same "
                         "structure)")
    from .nn import VelocityMLP

    return VelocityMLP(kw["dim"], rngs=nnx.Rngs(0), param_dtype=np.dtype(meta["dtype"]))


def restore(checkpoint_dir: str | os.PathLike, model: nnx.Module | None = None, *,
            step: int | None = None, use_ema: bool = True,
            devices: Sequence[jax.Device] | None = None) -> nnx.Module:
    """Load a trained model from a ``fit`` checkpoint directory (any device count).

    The model remembers its source as :func:`fmjax.fit`'s does when the source was a
    standard normal (:func:`fmjax.datasets.standard_normal`); for any other source,
    :func:`fmjax.sample` then asks for ``sample_x0`` rather than guessing.

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
        >>> x0 = fm.datasets.standard_normal(2)
        >>> x1 = lambda key, n: 2.0 + jax.random.normal(key, (n, 2), jnp.float32)
        >>> ckpt = tempfile.mkdtemp()
        >>> model, _ = fm.fit(jax.random.key(0), x0, x1, steps=200, batch_size=64,
        ...                   checkpoint_dir=ckpt, progress=False)
        >>> again = fm.restore(ckpt)
        >>> x = jnp.zeros(2, jnp.float32)
        >>> bool(jnp.array_equal(again(0.5, x), model(0.5, x)))
        True
    """
    directory = os.path.abspath(os.fspath(checkpoint_dir))
    if not os.path.isdir(directory):
        raise ValueError(f"`checkpoint_dir` {directory!r} does not exist")
    mgr = manager(directory, None)
    try:
        step = mgr.latest_step() if step is None else int(step)
        if step is None or step not in mgr.all_steps():
            raise ValueError(f"no complete checkpoint{'' if step is None else f' {step}'} in "
                             f"{directory!r} (steps: {list(mgr.all_steps())})")
        meta = read_meta(mgr, step)
        model = _default_model(meta) if model is None else model
        graphdef, params, rest = _split(model)
        if _model_signature(params) != meta["model"]["params_sha"]:
            raise ValueError(f"`model` does not have the structure of the checkpointed "
                             f"model ({meta['model']})")
        item = "ema" if use_ema and meta["ema_decay"] > 0.0 and step > 0 else "params"
        got = restore_items(mgr, step, {item: _leaves(params)}, make_mesh(devices))[item]
    finally:
        mgr.close()
    tree = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params),
                                        [jnp.asarray(_to_host(x)) for x in got])
    if item == "ema":
        tree = _ema_debiased(tree, step, meta["ema_decay"])
    from ._sources import attach_source, source_from_info

    return attach_source(nnx.merge(graphdef, tree, rest), source_from_info(meta.get("source")))
