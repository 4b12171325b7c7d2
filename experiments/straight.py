r"""Straight flows (issue #14): few-step sampling and both gaps of the notes' chain.

For a flow :math:`\varphi` of a velocity :math:`v` the notes' chain reads

.. math::
    E = \int_0^1 \mathbb{E}\|v_t(\varphi_t(X_0))\|^2 dt \;\ge\;
    \mathbb{E}\|\varphi_1(X_0) - X_0\|^2 \;\ge\; \mathbb{W}_2^2(X_0, \varphi_1(X_0)),

the first gap being the straightness :math:`S` (Liu et al., ICLR 2023), the second the
sub-optimality of the coupling the flow realises. Tasks: N -> 8 Gaussians, N -> moons,
8 Gaussians -> moons (``fmjax.datasets``) and Gaussian -> Gaussian in d = 2, 16, 64 (means
and SPD covariances drawn from a fixed NumPy seed per d, condition number 10; the OT map is
the Bures map ``fm.gaussian_ot_map``). Methods, on the linear path with sigma = 0:

* ``ifm``: independent coupling; ``otfm``: exact minibatch OT (POT) at batch 256;
* ``sk1024``, ``sk4096`` (any ``skN``): Sinkhorn-FM, the entropic plan (ott-jax, epsilon
  relative to the mean cost) of N x N batches, each source point paired with a partner drawn
  from its row of the plan;
* ``rf_ifm``, ``rf_otfm`` (any ``rf_BASE``): 2-rectified flow, ``fm.reflow`` of the stored
  1-RF model of the same (task, seed): pairs ``(x0, phi_1(x0))`` by Tsit5, warm start.

Every method trains ``steps`` AdamW steps at gradient batch ``batch_size`` (EMA 0.999),
3-layer SELU MLP (width ``width``; ``width_high_dim`` for d > 2). Sinkhorn-FM at batch 4,096
cannot be trained online on this CPU (one 4,096 x 4,096 solve per step, seconds each): with
``sinkhorn_pairs > 0`` (default) the pairs of ``sinkhorn_pairs / N`` plans are drawn once (a
bank, like reflow's pairs) and the net trains on them at the common batch size; so every
method has the same optimiser, steps and gradient batch, and only the coupling differs.
``--sinkhorn_pairs=0`` trains online at batch N instead.

Evaluation on fixed draws (the same for every method and seed): W2 (exact, POT) between
``n_eval`` samples after 1, 2, 4, 8, 100 Euler steps and ``n_eval`` target points, beside the
floor (W2 between two target samples); on the 100-step Euler grid, E, the endpoint cost
E‖φ₁(x)−x‖², S = E − endpoint cost, W2²(x0, φ₁(x0)) (exact, on the same points) and the
reference W2²(source, target) (Bures for the Gaussians; exact W2² on ``n_ref`` + ``n_ref``
points for the others); for the Gaussians L2-UVP = 100 E‖φ₁(x) − T*(x)‖² / tr Cov(target)
against the Bures map T* at 1 and 100 Euler steps.

    python -m experiments.straight [--quick] [--workdir DIR] [--seeds=0,1,2,3,4]
        [--tasks=N->8gaussians,gauss16] [--methods=ifm,rf_ifm] [--merge=DIR1,DIR2]
        [--train=False]

Runs are stored as in ``experiments.toy2d`` (``WORKDIR/runs/TASK__METHOD__SEED.npz`` with the
protocol fingerprint, mid-run checkpoints under ``WORKDIR/checkpoints/``): a killed grid
restarts where it stopped, seeds run as separate jobs (``--seeds=3``) and are combined with
``--merge``. A stored run keeps its network's parameters, so a 2-RF run can follow its 1-RF
in another job (the 1-RF is trained first when found nowhere).

Protocol cost (full config, one seed, 6 tasks x 6 methods, 2-core CPU): see
``docs/results/straight/`` and the per-run ``s / run`` column.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import fmjax as fm
from fmjax import datasets

from . import _common

NAME = "straight"

SAMPLE_TASKS = {"N->8gaussians": "N → 8 Gaussians", "N->moons": "N → moons",
                "8gaussians->moons": "8 Gaussians → moons"}
BASE_METHODS = {"ifm": "I-FM", "otfm": "OT-FM"}


@dataclasses.dataclass(frozen=True)
class Config(_common.GridConfig):
    """straight configuration. Defaults: the full grid (5 seeds)."""

    tasks: tuple[str, ...] = ("N->8gaussians", "N->moons", "8gaussians->moons", "gauss2",
                              "gauss16", "gauss64")
    methods: tuple[str, ...] = ("ifm", "otfm", "sk1024", "sk4096", "rf_ifm", "rf_otfm")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    steps: int = 5000
    batch_size: int = 256  # gradient batch of every method; OT-FM's coupling batch
    reflow_steps: int = 5000
    reflow_pairs: int = 65_536
    sinkhorn_epsilon: float = 0.01  # relative to the mean pairwise cost of each batch
    sinkhorn_threshold: float = 1e-3
    sinkhorn_max_iterations: int = 2000
    sinkhorn_pairs: int = 32_768  # pairs drawn from Sinkhorn plans; 0: online at batch N
    sigma: float = 0.0
    lr: float = 1e-3
    weight_decay: float = 1e-5
    width: int = 64
    width_high_dim: int = 256  # for the Gaussian tasks with d > 2
    depth: int = 3
    cond: float = 10.0  # condition number of the random covariances
    euler_steps: tuple[int, ...] = (1, 2, 4, 8, 100)
    n_eval: int = 2048  # generated and target samples for W2; source points for E, L2-UVP
    n_ref: int = 10_000  # source and target points for the exact W2² reference (2-D tasks)
    floor_reps: int = 2
    n_traj: int = 48
    trajectory_tasks: tuple[str, ...] = ("N->8gaussians", "8gaussians->moons")

    @classmethod
    def quick(cls) -> Config:
        return cls(tasks=("N->8gaussians", "gauss16"), seeds=(0,), steps=600, reflow_steps=600,
                   reflow_pairs=8192, sinkhorn_pairs=4096, width_high_dim=128, n_eval=1000,
                   n_ref=2000, euler_steps=(1, 2, 4, 100), n_traj=32,
                   trajectory_tasks=("N->8gaussians",))


#: Config fields that do not change what one (task, method, seed) run computes.
_NOT_PROTOCOL = ("tasks", "methods", "seeds", "n_traj", "trajectory_tasks",
                 *_common.GRID_FIELDS)
#: Per-task references that merged workdirs must share.
_TASK_KEYS = ("w2sq_ref", "floor")


# --------------------------------------------------------------------------------------
# Tasks and methods
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Task:
    """A task: samplers, dimension and, for the Gaussian tasks, the two Gaussians."""

    name: str
    label: str
    d: int
    sample_x0: object
    sample_x1: object
    gaussians: tuple | None = None  # (m0, S0, m1, S1), NumPy float64


def gaussian_dim(task: str) -> int | None:
    """``d`` for a task ``"gaussD"``, else None."""
    if task.startswith("gauss") and task[5:].isdigit() and int(task[5:]) > 0:
        return int(task[5:])
    return None


def make_task(name: str, config: Config) -> Task:
    """The task ``name``: one of :data:`SAMPLE_TASKS` or ``"gaussD"``."""
    d = gaussian_dim(name)
    if d is not None:
        rng = np.random.default_rng([2024, d])  # fixed per d: the same task in every job
        g = _common.random_gaussian_pair(rng, d, config.cond)
        return Task(name, f"N(m₀, Σ₀) → N(m₁, Σ₁), d = {d}", d,
                    _common.gaussian_sampler(g[0], g[1]), _common.gaussian_sampler(g[2], g[3]),
                    g)
    if name not in SAMPLE_TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(SAMPLE_TASKS)} or "
                         f"'gaussD' (D a positive integer)")
    x0, x1 = datasets.get(name)
    return Task(name, SAMPLE_TASKS[name], 2, x0, x1)


def method_label(method: str) -> str:
    if method in BASE_METHODS:
        return BASE_METHODS[method]
    if method.startswith("sk"):
        return f"Sinkhorn-FM ({int(method[2:]):,})"
    return f"2-RF from {method_label(method[3:])}"


def check_method(method: str) -> None:
    """Raise for a method name that is not ``ifm``, ``otfm``, ``skN`` or ``rf_BASE``."""
    ok = (method in BASE_METHODS or (method.startswith("sk") and method[2:].isdigit()
                                     and int(method[2:]) > 0))
    if method.startswith("rf_"):
        check_method(method[3:])
        ok = not method[3:].startswith("rf_")
    if not ok:
        raise ValueError(f"unknown method {method!r}: 'ifm', 'otfm', 'skN' (Sinkhorn-FM at "
                         f"batch N) or 'rf_BASE' (2-RF from BASE, one of those)")


def _width(task: Task, config: Config) -> int:
    return config.width if task.d <= 2 else config.width_high_dim


def _new_model(task: Task, config: Config, seed: int) -> nnx.Module:
    return fm.nn.VelocityMLP(task.d, width=_width(task, config), depth=config.depth,
                             activation="selu", rngs=nnx.Rngs(seed))


def _params(model: nnx.Module) -> dict[str, np.ndarray]:
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    return {f"param_{i}": np.asarray(x) for i, x in enumerate(leaves)}


def _restore(record: dict, task: Task, config: Config) -> nnx.Module:
    """The trained network of a stored run (its parameters are in the record)."""
    model = _new_model(task, config, 0)
    state = nnx.state(model, nnx.Param)
    leaves = jax.tree.leaves(state)
    if f"param_{len(leaves) - 1}" not in record:
        raise ValueError(f"the stored run {record['task']}/{record['method']}/seed "
                         f"{record['seed']} has no parameters (metrics only, from a "
                         f"results.json): 2-RF needs its runs/*.npz")
    new = [jnp.asarray(record[f"param_{i}"]) for i in range(len(leaves))]
    nnx.update(model, jax.tree.unflatten(jax.tree.structure(state), new))
    return model


def _optimizer(config: Config) -> dict:
    return dict(optimizer=optax.adamw(config.lr, weight_decay=config.weight_decay),
                optimizer_name=f"adamw(lr={config.lr}, wd={config.weight_decay})",
                sigma=config.sigma, progress=config.progress)


def _ckpt_kwargs(config: Config, ckpt: Path | None) -> dict:
    if ckpt is None or config.checkpoint_every == 0:
        return {}
    return dict(checkpoint_dir=ckpt, checkpoint_every=config.checkpoint_every,
                keep_checkpoints=1)


def _sinkhorn(config: Config) -> fm.couplings.Sinkhorn:
    return fm.couplings.Sinkhorn(config.sinkhorn_epsilon, threshold=config.sinkhorn_threshold,
                                 max_iterations=config.sinkhorn_max_iterations)


def _sinkhorn_bank(task: Task, n: int, config: Config, key, ckpt: Path | None):
    """``config.sinkhorn_pairs`` pairs from Sinkhorn plans of n x n batches, plan ``b`` from
    the key ``fold_in(key, b)``. With checkpoints on, the plans done so far are kept in
    ``ckpt/bank.npz`` (written atomically after each plan) and a killed run continues."""
    path = None if ckpt is None or config.checkpoint_every == 0 else ckpt / "bank.npz"
    x0s, x1s = [], []
    if path is not None and path.exists():
        with np.load(path) as z:
            x0s, x1s = list(z["x0"].reshape(-1, n, task.d)), list(z["x1"].reshape(-1, n, task.d))
    sinkhorn = _sinkhorn(config)
    coupling = fm.jit(lambda k, a, b: sinkhorn(k, a, b))
    blocks = math.ceil(config.sinkhorn_pairs / n)
    with _common.Timer() as tm:
        for b in _common.progress(range(len(x0s), blocks), desc=f"Sinkhorn plans {n}",
                                  enabled=config.progress):
            k0, k1, kc = jax.random.split(jax.random.fold_in(key, b), 3)
            a, c = coupling(kc, task.sample_x0(k0, n), task.sample_x1(k1, n))
            x0s.append(np.asarray(a))
            x1s.append(np.asarray(c))
            if path is not None:
                _common.savez_atomic(path, x0=np.stack(x0s), x1=np.stack(x1s))
    return np.concatenate(x0s), np.concatenate(x1s), tm.seconds


def train(task: Task, method: str, seed: int, config: Config, ckpt: Path | None = None,
          base: dict | None = None) -> tuple[nnx.Module, dict]:
    """Train one (task, method, seed); ``base`` is the stored 1-RF run of a 2-RF method.

    Returns the model and what training cost (``seconds`` in all, ``pair_seconds`` for the
    Sinkhorn bank or the reflow pairs, ``pair_nfe``, ``steps_per_s``, ``final_loss``).
    """
    key = jax.random.PRNGKey(1000 * seed + 17)  # the same data and init for every method
    kw = dict(_optimizer(config), batch_size=config.batch_size, **_ckpt_kwargs(config, ckpt))
    extra = dict(pair_seconds=0.0, pair_nfe=0)
    with _common.Timer() as tm:
        if method.startswith("rf_"):
            model, hist = fm.reflow(jax.random.PRNGKey(1000 * seed + 18),
                                    _restore(base, task, config), task.sample_x0,
                                    n_pairs=config.reflow_pairs, steps=config.reflow_steps,
                                    **kw)
            extra.update(pair_seconds=hist.pair_seconds, pair_nfe=hist.pair_nfe)
        elif method.startswith("sk") and config.sinkhorn_pairs == 0:  # online, batch N
            model, hist = fm.fit(
                key, task.sample_x0, task.sample_x1, steps=config.steps,
                coupling=_sinkhorn(config),
                model=_new_model(task, config, seed), **dict(kw, batch_size=int(method[2:])))
        elif method.startswith("sk"):
            x0, x1, extra["pair_seconds"] = _sinkhorn_bank(task, int(method[2:]), config,
                                                           jax.random.fold_in(key, 1), ckpt)
            model, hist = fm.fit(key, x0, x1, coupling=fm.couplings.Paired(),
                                 steps=config.steps, model=_new_model(task, config, seed),
                                 **dict(kw, **_ckpt_kwargs(config, None if ckpt is None
                                                           else ckpt / "train")))
            # The law of x0 is the task's source, not the finite bank (as fm.reflow does);
            # the bank's DataSource, hashed by identity, would also make every jitted
            # evaluation of this model compile anew.
            model.source = task.sample_x0
        else:
            coupling = (fm.couplings.Independent() if method == "ifm"
                        else fm.couplings.ExactOT())
            model, hist = fm.fit(key, task.sample_x0, task.sample_x1, coupling=coupling,
                                 steps=config.steps, model=_new_model(task, config, seed),
                                 **kw)
    loss = np.asarray(hist.loss)
    trained = int(loss.size) - (hist.resumed_from or 0)
    return model, dict(extra, seconds=tm.seconds, resumed_from=hist.resumed_from,
                       steps_per_s=trained / max(tm.seconds - extra["pair_seconds"], 1e-9),
                       final_loss=float(loss[-min(100, loss.size):].mean()))


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------
def bures_map_images(task: Task, x0: np.ndarray) -> np.ndarray:
    """``T*(x0)`` for the Bures map ``fm.gaussian_ot_map`` of a Gaussian task."""
    m0, s0, m1, s1 = (jnp.asarray(a) for a in task.gaussians)
    T = fm.gaussian_ot_map(m0, s0, m1, s1)
    return np.asarray(jax.vmap(T)(jnp.asarray(x0)), np.float64)


def l2_uvp(x1: np.ndarray, tx0: np.ndarray, cov1: np.ndarray) -> float:
    """``100 E||x1 - T*(x0)||^2 / tr Cov(target)``."""
    err = np.sum((np.asarray(x1, np.float64) - tx0) ** 2, axis=1).mean()
    return float(100.0 * err / np.trace(cov1))


def eval_data(task: Task, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """The fixed evaluation draws ``(x0_eval, x1_eval)`` (the same for methods and seeds)."""
    kx, ky = jax.random.split(jax.random.PRNGKey(12345))
    return (np.asarray(task.sample_x0(kx, config.n_eval)),
            np.asarray(task.sample_x1(ky, config.n_eval)))


def _task_info(task: Task, config: Config, store: _common.RunStore) -> dict:
    """Evaluation data and references of one task (the references cached in ``store``)."""
    x0_eval, x1_eval = eval_data(task, config)
    info = store.load_task(task.name)
    if info is None:
        kr0, kr1, kf = jax.random.split(jax.random.PRNGKey(54321), 3)
        if task.gaussians is not None:
            w2sq = float(fm.gaussian_w2_squared(*(jnp.asarray(a) for a in task.gaussians)))
        else:
            w2sq = float(fm.w2(task.sample_x0(kr0, config.n_ref),
                               task.sample_x1(kr1, config.n_ref), method="exact")) ** 2
        floor, floor_sd = fm.w2_floor(task.sample_x1, kf, config.n_eval,
                                      reps=config.floor_reps, method="exact")
        info = dict(w2sq_ref=w2sq, floor=floor, floor_sd=floor_sd)
        store.save_task(task.name, info)
    extra = {}
    if task.gaussians is not None:
        extra["tx0"] = bures_map_images(task, x0_eval)
    return dict(info, x0_eval=x0_eval, x1_eval=x1_eval, **extra)


def moments(x) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (normalised by n: the moments of the empirical measure)."""
    x = np.asarray(x, np.float64)
    m = x.mean(axis=0)
    return m, (x - m).T @ (x - m) / x.shape[0]


def _bures_w2sq(a: tuple, b: tuple) -> float:
    return float(fm.gaussian_w2_squared(*(jnp.asarray(v) for v in (*a, *b))))


def evaluate(model, task: Task, info: dict, config: Config) -> dict:
    """W2 at each number of Euler steps, the chain on the 100-step grid, L2-UVP, samples.

    For the Gaussian tasks also, at each number of steps, the Bures W2 between the moments
    of the samples and the target (``w2_moments``), and on the 100-step grid the Gelbrich
    bound ``gelbrich`` = Bures W2² between the moments of x and φ₁(x): a lower bound of
    W2²(x, φ₁(x)) (empirical measures), so cost >= W2²(x, φ₁(x)) >= gelbrich.
    """
    x0, x1_eval = jnp.asarray(info["x0_eval"]), jnp.asarray(info["x1_eval"])
    gauss = task.gaussians
    out = dict(w2=[], l2uvp=[], w2_moments=[])
    for k in config.euler_steps:
        x1 = fm.integrate(model, x0, solver="euler", steps=k).x
        out["w2"].append(float(fm.w2(x1, x1_eval, method="exact")))
        if gauss is not None:
            out["l2uvp"].append(l2_uvp(np.asarray(x1), info["tx0"], gauss[3]))
            out["w2_moments"].append(math.sqrt(_bures_w2sq(moments(x1), gauss[2:])))
        if k == config.euler_steps[0] and task.d == 2:
            out["x1_first"] = np.asarray(x1)  # the fewest-step samples, for the figure
    st = fm.straightness(model, x0, solver="euler", steps=100)
    out.update(energy=float(st.energy), endpoint_cost=float(st.endpoint_cost),
               straightness=float(st.value), length_excess=float(st.length_excess),
               w2sq_realised=float(fm.w2(x0, st.x1, method="exact")) ** 2,
               x1=np.asarray(st.x1))
    if gauss is not None:
        out["l2uvp_100"] = l2_uvp(out["x1"], info["tx0"], gauss[3])
        out["gelbrich"] = _bures_w2sq(moments(info["x0_eval"]), moments(out["x1"]))
    if task.d == 2:
        out["xs"] = np.asarray(fm.integrate(model, x0[: config.n_traj], solver="euler",
                                            steps=100, save_trajectory=True).xs)
    return out


def run_one(task: Task, method: str, seed: int, config: Config, info: dict,
            ckpt: Path | None = None, base: dict | None = None) -> dict:
    """Train and evaluate one (task, method, seed): the record stored under ``runs/``."""
    cpu = time.process_time()
    model, cost = train(task, method, seed, config, ckpt, base)
    cpu_train = time.process_time() - cpu
    with _common.Timer() as tm:
        metrics = evaluate(model, task, info, config)
    # CPU seconds (all threads of the process): less sensitive than wall-clock to other jobs
    return dict(task=task.name, method=method, seed=seed, **cost, eval_seconds=tm.seconds,
                cpu_seconds=cpu_train, eval_cpu_seconds=time.process_time() - cpu - cpu_train,
                **metrics, **_params(model))


# --------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------
def run(config: Config, workdir: Path | str) -> dict:
    """Run the grid; write results.{json,md}, the W2-vs-NFE and trajectory figures.

    Runs found in ``workdir/runs`` or in the ``config.merge`` workdirs are reused, not
    trained; with ``config.train=False`` nothing is trained and missing runs are listed.
    """
    workdir = Path(workdir)
    for m in config.methods:
        check_method(m)
    tasks = {t: make_task(t, config) for t in config.tasks}
    if not config.euler_steps or min(config.euler_steps) < 1:
        raise ValueError(f"`euler_steps` must be positive, got {config.euler_steps}")
    store = _common.RunStore(workdir, config, _NOT_PROTOCOL)
    merged = _common.MergedRuns(config.merge, config, _NOT_PROTOCOL, _TASK_KEYS)
    runs, info, arrays, missing = [], {}, {}, []
    grid = [(t, m, s) for s in config.seeds for t in config.tasks for m in config.methods]
    bar = iter(_common.progress(range(len(grid)), desc="straight runs",
                                enabled=config.progress))
    with _common.Timer() as total:
        for t in config.tasks:
            info[t] = _task_info(tasks[t], config, store)
            merged.check_task(t, info[t])

        def get(t, m, s):
            base = None
            if m.startswith("rf_"):
                base = get(t, m[3:], s)
                if base is None:  # --train=False and the 1-RF found nowhere
                    return None

            def compute(ckpt):
                return run_one(tasks[t], m, s, config, info[t], ckpt, base)

            return store.get(t, m, s, merged, compute if config.train else None)

        for t, m, s in grid:
            r = get(t, m, s)
            next(bar, None)
            if r is None:
                missing.append(f"{t}/{m}/seed {s}")
                continue
            keep = {k: r.pop(k) for k in list(r) if isinstance(r[k], np.ndarray)}
            if "xs" in keep:
                arrays[(t, m)] = keep  # the figures show the last seed stored
            runs.append(r)
    results = dict(runs=runs, missing=missing, seconds=total.seconds,
                   tasks={t: {k: info[t][k] for k in ("w2sq_ref", "floor", "floor_sd")}
                          for t in config.tasks})
    results["summary"] = _summary(config, runs)
    figures = []
    if config.figure and runs:
        summary = results["summary"]
        figures.append(_figure_vs_nfe(
            workdir, config, tasks, summary, "w2_vs_nfe",
            [(t, "w2", "W2 to the target (exact, samples)", info[t]["floor"])
             for t in config.tasks]))
        gauss = [t for t in config.tasks if tasks[t].gaussians is not None]
        if gauss:
            figures.append(_figure_vs_nfe(
                workdir, config, tasks, summary, "gaussian_vs_nfe",
                [(t, "l2uvp", "L2-UVP (%) against the Bures map", None) for t in gauss]
                + [(t, "w2_moments", "W2 of the moments to the target", None)
                   for t in gauss]))
        traj = [t for t in config.trajectory_tasks if t in tasks and tasks[t].d == 2]
        if traj:
            figures.append(_figure_trajectories(workdir, config, tasks, info, arrays, traj))
    _common.write_outputs(
        workdir, name=NAME, title="Straight flows: few-step sampling and the chain "
        "E ≥ E‖φ₁(x)−x‖² ≥ W2²", config=config, results=results,
        sections=_sections(config, tasks, info, runs, results["summary"])
        + [("", _common.provenance(total.seconds, runs, store, missing))],
        figures=figures)
    return results


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------
_METRICS = ("energy", "endpoint_cost", "straightness", "w2sq_realised", "seconds")
_GAUSS_METRICS = ("l2uvp_100", "gelbrich")


def _summary(config: Config, runs: list[dict]) -> dict:
    """Mean over seeds of every metric, per ``task/method`` (``w2_sd``: std of ``w2``)."""
    out = {}
    for t in config.tasks:
        for m in config.methods:
            rs = [r for r in runs if r["task"] == t and r["method"] == m]
            if not rs:
                continue
            gauss = bool(rs[0]["l2uvp"])
            s = {k: float(np.mean([r[k] for r in rs]))
                 for k in _METRICS + (_GAUSS_METRICS if gauss else ())}
            for k in ("w2", "l2uvp", "w2_moments") if gauss else ("w2",):
                s[k] = np.mean([r[k] for r in rs], axis=0).tolist()
                s[k + "_sd"] = (np.std([r[k] for r in rs], axis=0, ddof=1).tolist()
                                if len(rs) > 1 else [0.0] * len(config.euler_steps))
            s["seeds"] = len(rs)
            out[f"{t}/{m}"] = s
    return out


def _steps_label(k: int) -> str:
    return f"{k} step{'s' if k > 1 else ''}"


def _sections(config, tasks, info, runs, summary) -> list[tuple[str, str]]:
    ks = config.euler_steps
    rows_w2, rows_gauss, rows_chain = [], [], []
    for t in config.tasks:
        for m in config.methods:
            rs = [r for r in runs if r["task"] == t and r["method"] == m]
            if not rs:
                continue

            def pm(key, i=None, digits=3, rs=rs):
                return _common.fmt_pm([r[key] if i is None else r[key][i] for r in rs], digits)

            head = [tasks[t].label, method_label(m), str(len(rs))]
            rows_w2.append(head + [pm("w2", i) for i in range(len(ks))]
                           + [f"{info[t]['floor']:.3f}"])
            gauss = bool(rs[0]["l2uvp"])
            if gauss:
                rows_gauss.append(head + [pm("l2uvp", i, 2) for i in range(len(ks))]
                                  + [pm("l2uvp_100", None, 2), pm("w2_moments", 0),
                                     pm("w2_moments", len(ks) - 1)])
            rows_chain.append(head + [pm(k) for k in ("energy", "straightness",
                                                      "endpoint_cost", "w2sq_realised")]
                              + [pm("gelbrich") if gauss else "–",
                                 f"{info[t]['w2sq_ref']:.3f}", pm("seconds", None, 0)])
    t_w2 = _common.markdown_table(
        ["task", "method", "seeds"] + [f"W2, {_steps_label(k)}" for k in ks]
        + [f"W2 floor (n={config.n_eval:,})"], rows_w2)
    t_gauss = _common.markdown_table(
        ["task", "method", "seeds"] + [f"L2-UVP, {_steps_label(k)}" for k in ks]
        + ["L2-UVP, chain grid (100)", f"W2 of the moments, {_steps_label(ks[0])}",
           f"W2 of the moments, {_steps_label(ks[-1])}"], rows_gauss)
    t_chain = _common.markdown_table(
        ["task", "method", "seeds", "E", "S = E − cost", "cost E‖φ₁(x)−x‖²",
         "W2²(x, φ₁(x))", "Gelbrich bound", "W2²(source, target)", "s / run"], rows_chain)
    sections = [("Setup", _setup(config)),
                ("W2 against the number of Euler steps (mean ± std over seeds)", t_w2)]
    if rows_gauss:
        sections.append(("Gaussian tasks: map error L2-UVP against the Bures map, and W2 "
                         "of the samples' moments (mean ± std over seeds)", t_gauss))
    sections.append(("The chain E ≥ cost ≥ W2²(x, φ₁(x)) on the 100-step Euler grid (mean ± "
                     "std over seeds)", t_chain))
    checks = _targets(config, summary)
    if checks:
        sections.append(("Targets (N → 8 Gaussians; benchmark numbers, not tests)", checks))
    return sections


def _setup(config: Config) -> str:
    return (
        f"{config.steps:,} steps (2-RF: {config.reflow_steps:,} more, warm-started from its "
        f"1-RF, on {config.reflow_pairs:,} Tsit5 pairs), gradient batch "
        f"{config.batch_size} for every method, AdamW lr {config.lr:g} wd "
        f"{config.weight_decay:g}, EMA 0.999, sigma {config.sigma:g}, MLP {config.depth} x "
        f"{config.width} SELU ({config.width_high_dim} wide for d > 2). OT-FM: exact OT of "
        f"each batch of {config.batch_size}. Sinkhorn-FM at batch N: epsilon "
        f"{config.sinkhorn_epsilon:g} x mean cost, threshold {config.sinkhorn_threshold:g}; "
        + (f"{config.sinkhorn_pairs:,} pairs drawn once from ⌈{config.sinkhorn_pairs:,} / N⌉ "
           f"plans of N x N batches, trained on at the common batch size."
           if config.sinkhorn_pairs else "trained online at batch N.")
        + f" W2 exact (POT) between {config.n_eval:,} samples and {config.n_eval:,} target "
        f"points (fixed draws; in d = 16, 64 this W2 is dominated by the sample: it can fall "
        f"below the floor for samples with too little spread, hence the W2 of the moments). "
        f"E, S, cost and W2²(x, φ₁(x)) (exact, POT) on the 100-step Euler grid from the same "
        f"{config.n_eval:,} source points, so that E ≥ cost ≥ W2²(x, φ₁(x)) ≥ Gelbrich bound "
        f"holds exactly (Cauchy-Schwarz on the grid; the identity pairing is a coupling; "
        f"Gelbrich: W2² ≥ the Bures W2² of the means and covariances, here of x and φ₁(x)). "
        f"W2²(source, target): the Bures formula for the Gaussians, exact W2² on "
        f"{config.n_ref:,} + {config.n_ref:,} points otherwise. L2-UVP = 100 E‖φ₁(x) − "
        f"T*(x)‖² / tr Σ₁ against the Bures map T* (fm.gaussian_ot_map). W2 of the moments: "
        f"Bures W2 between the samples' mean and covariance and the target's. s / run: "
        f"training wall-clock, with the Sinkhorn plans or the reflow pairs (not the 1-RF a "
        f"2-RF starts from).")


def _targets(config: Config, summary: dict) -> str:
    """The issue's targets: S(2-RF) <= S(I-FM) / 4; one-step W2 <= 2 x 100-step W2."""
    a, b = summary.get("N->8gaussians/ifm"), summary.get("N->8gaussians/rf_ifm")
    if a is None or b is None or 1 not in config.euler_steps or 100 not in config.euler_steps:
        return ""
    i1, i100 = config.euler_steps.index(1), config.euler_steps.index(100)
    s_ratio = b["straightness"] / a["straightness"]
    w_ratio = b["w2"][i1] / b["w2"][i100]
    rows = [["S(2-RF from I-FM) / S(I-FM)", "≤ 0.25", f"{s_ratio:.3f}",
             "yes" if s_ratio <= 0.25 else "**no**"],
            ["2-RF from I-FM: W2 at 1 step / W2 at 100 steps", "≤ 2", f"{w_ratio:.3f}",
             "yes" if w_ratio <= 2 else "**no**"]]
    return _common.markdown_table(["quantity (means over seeds)", "target", "measured",
                                   "met"], rows)


def _colors(methods):
    plt = _common.pyplot()
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _figure_trajectories(workdir, config, tasks, info, arrays, traj_tasks) -> str:
    plt = _common.pyplot()
    nm = len(config.methods)
    fig, axes = plt.subplots(2 * len(traj_tasks), nm, figsize=(2.9 * nm, 5.8 * len(traj_tasks)),
                             squeeze=False)
    k1 = config.euler_steps[0]
    for i, t in enumerate(traj_tasks):
        tgt = info[t]["x1_eval"][:1500]
        for j, m in enumerate(config.methods):
            top, bottom = axes[2 * i, j], axes[2 * i + 1, j]
            top.set_title(method_label(m), fontsize=9)
            if j == 0:
                top.set_ylabel(f"{tasks[t].label}\ntrajectories, 100 steps", fontsize=8)
                bottom.set_ylabel(f"samples, {k1} Euler step{'s' if k1 > 1 else ''}",
                                  fontsize=8)
            got = arrays.get((t, m), {})
            _common.sample_panel(top, xs=got.get("xs"), target=tgt, size=3,
                                 end_color="tab:red")
            first = got.get("x1_first")
            _common.sample_panel(bottom, None if first is None else first[:1500], target=tgt)
    fig.tight_layout()
    return _common.savefig(fig, workdir, "trajectories", dpi=70)


def _figure_vs_nfe(workdir, config, tasks, summary, name, panels) -> str:
    """One panel per ``(task, key, y label, floor or None)``: the metric ``key`` of every
    method against the number of Euler steps (log-log), mean ± std over seeds."""
    plt = _common.pyplot()
    from matplotlib import ticker

    ncol = min(len(panels), 3)
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    colors = _colors(config.methods)
    for i, (t, key, ylabel, floor) in enumerate(panels):
        ax = axes[i // ncol, i % ncol]
        for m in config.methods:
            s = summary.get(f"{t}/{m}")
            if s is None:
                continue
            ax.errorbar(config.euler_steps, s[key], yerr=s[key + "_sd"], marker="o", ms=3,
                        ls="--" if m.startswith("rf_") else "-", lw=1.2, capsize=2,
                        color=colors[m], label=method_label(m))
        if floor is not None:
            ax.axhline(floor, color="0.5", ls=":", lw=1, label="W2 floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(config.euler_steps)
        ax.set_xticklabels([str(k) for k in config.euler_steps])
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.3g"))
        ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%.3g"))
        ax.set_title(tasks[t].label, fontsize=9)
        ax.set_xlabel("NFE (Euler steps)", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
    for j in range(len(panels), nrow * ncol):
        axes[j // ncol, j % ncol].axis("off")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    fig.tight_layout(rect=(0, 0.05 + 0.03 * (len(labels) > 4), 1, 1))
    return _common.savefig(fig, workdir, name, dpi=80)


def main(argv=None) -> int:
    return _common.main(Config, run, NAME, argv)


if __name__ == "__main__":
    raise SystemExit(main())
