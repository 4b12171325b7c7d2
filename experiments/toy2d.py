r"""The 2-D benchmark of Tong et al. ([SF]²M, AISTATS 2024, Table 2; TMLR 2024 protocol).

Tasks N -> 8 Gaussians, 8 Gaussians -> moons, N -> moons, N -> S-curve; methods I-FM
(independent coupling) and OT-FM (exact minibatch OT), on the linear path, plus OT-FM on the
trigonometric path. Protocol: MLP 3 x 64 SELU, AdamW lr 1e-3 / weight decay 1e-5, batch 512,
sigma 0.1, 20,000 steps, 5 seeds; sampling with 100 Euler steps; W2 between ``n_eval``
generated and ``n_eval`` target samples; normalized path energy
NPE = |E - W2²(source, target)| / W2²(source, target), E the kinetic energy of the learned
flow on the same Euler grid. The table prints mean ± std over seeds beside the published
numbers, the W2 floor (two target samples of the same size) and the wall-clock per run.

    python -m experiments.toy2d [--quick] [--workdir DIR] [--steps=N] [--seeds=K]
        [--tasks=N->8gaussians,N->moons] [--methods=ifm,otfm] [--n_eval=N]
        [--merge=DIR1,DIR2] [--train=False]

Every finished (task, method, seed) is stored under ``WORKDIR/runs/`` with the fingerprint
of the protocol, and the run in training is checkpointed every ``checkpoint_every`` steps
under ``WORKDIR/checkpoints/``, so a killed grid restarts where it stopped, to the same
numbers. ``--merge`` reuses the finished
runs of other workdirs run under the same protocol (their ``runs/`` and ``results.json``):
seeds split over several batch jobs or sessions are combined into one table, and only the
runs found nowhere are trained. ``--train=False`` builds the table from stored runs only.
The grid goes seed by seed over all tasks, so a partial grid has whole seeds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

import fmjax as fm
from fmjax import datasets

from . import _common

NAME = "toy2d"

#: method name -> (coupling, path, label)
METHODS = {
    "ifm": ("independent", fm.Linear(), "I-FM"),
    "otfm": ("ot", fm.Linear(), "OT-FM"),
    "otfm_trig": ("ot", fm.Trigonometric(), "OT-FM (trig. path)"),
    "ifm_trig": ("independent", fm.Trigonometric(), "I-FM (trig. path)"),
}

#: Tong et al. ([SF]²M, AISTATS 2024, Table 2): W2 mean ± std over 5 seeds, and NPE.
#: Task keys follow this module's names.
PUBLISHED = {
    "OT-CFM": {"w2": {"N->8gaussians": (0.303, 0.043), "8gaussians->moons": (0.601, 0.027),
                      "N->moons": (0.130, 0.016), "N->scurve": (0.144, 0.028)},
               "npe": {"N->8gaussians": 0.031, "8gaussians->moons": 0.015, "N->moons": 0.083,
                       "N->scurve": 0.027}},
    "I-CFM": {"w2": {"N->8gaussians": (0.373, 0.103), "8gaussians->moons": (1.557, 0.407),
                     "N->moons": (0.178, 0.014), "N->scurve": (0.242, 0.141)},
              "npe": {"N->8gaussians": 0.202, "8gaussians->moons": 2.680, "N->moons": 0.891,
                      "N->scurve": 0.856}},
}
PUBLISHED_FOR = {"ifm": "I-CFM", "otfm": "OT-CFM", "otfm_trig": "OT-CFM", "ifm_trig": "I-CFM"}

TASK_LABELS = {"N->8gaussians": "N → 8 Gaussians", "8gaussians->moons": "8 Gaussians → moons",
               "N->moons": "N → moons", "N->scurve": "N → S-curve"}


@dataclasses.dataclass(frozen=True)
class Config(_common.GridConfig):
    """toy2d configuration. Defaults: the full published protocol (hours on a 2-core CPU)."""

    tasks: tuple[str, ...] = ("N->8gaussians", "8gaussians->moons", "N->moons", "N->scurve")
    methods: tuple[str, ...] = ("ifm", "otfm", "otfm_trig")
    seeds: int = 5
    steps: int = 20_000
    batch_size: int = 512
    sigma: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-5
    width: int = 64
    depth: int = 3
    euler_steps: int = 100
    n_eval: int = 10_000  # generated and target samples for W2
    n_ref: int = 10_000  # source and target samples for the NPE reference W2²(source, target)
    w2_method: str = "exact"  # "exact" (POT network simplex at any n) or fm.w2's "auto"
    floor_reps: int = 3
    n_traj: int = 64  # trajectories drawn per panel
    checkpoint_every: int = 2000

    @classmethod
    def quick(cls) -> Config:
        return cls(methods=("ifm", "otfm"), seeds=1, steps=1000, batch_size=256,
                   n_eval=1000, n_ref=2000, floor_reps=2)


def _w2_fn(config: Config):
    if config.w2_method in ("exact", "auto"):  # auto is exact at these sizes
        return lambda a, b: float(fm.w2(a, b, method=config.w2_method))
    raise ValueError(f"`w2_method` must be 'exact' or 'auto', got {config.w2_method!r}")


def _task(name: str):
    """(sample_x0, sample_x1) for a task name: one of ``fmjax.datasets.TASKS`` (the four
    published tasks) or any ``"SOURCE->TARGET"`` of ``fmjax.datasets.SAMPLERS`` names."""
    if "->" not in name:
        raise ValueError(f"task {name!r} is not 'SOURCE->TARGET'; published tasks: "
                         f"{sorted(datasets.TASKS)}, samplers: {sorted(datasets.SAMPLERS)}")
    return datasets.get(name)


def run_one(task: str, method: str, seed: int, config: Config, samplers, eval_data,
            checkpoint_dir: Path | None = None) -> dict:
    """Train one (task, method, seed) and evaluate W2 and NPE on ``eval_data``.

    With ``checkpoint_dir`` (and ``config.checkpoint_every > 0``) training is checkpointed
    there and resumes from the latest checkpoint it finds (bitwise the same result).
    """
    coupling, path, _ = METHODS[method]
    sample_x0, sample_x1 = samplers
    x0_eval, x1_eval, w2sq_src_tgt = eval_data
    key = jax.random.PRNGKey(1000 * seed + 17)
    model = fm.nn.VelocityMLP(2, width=config.width, depth=config.depth, activation="selu",
                              rngs=nnx.Rngs(seed))
    with _common.Timer() as tm:
        model, history = fm.fit(
            key, sample_x0, sample_x1, path=path, coupling=coupling, sigma=config.sigma,
            steps=config.steps, batch_size=config.batch_size, model=model,
            optimizer=optax.adamw(config.lr, weight_decay=config.weight_decay),
            optimizer_name=f"adamw(lr={config.lr}, wd={config.weight_decay})",
            progress=config.progress,
            **(dict(checkpoint_dir=checkpoint_dir, checkpoint_every=config.checkpoint_every,
                    keep_checkpoints=1)
               if checkpoint_dir is not None and config.checkpoint_every > 0 else {}))
    pe = fm.straightness(model, x0_eval, solver="euler", steps=config.euler_steps)
    w2 = _w2_fn(config)(pe.x1, x1_eval)
    energy = float(pe.energy)
    npe = abs(energy - w2sq_src_tgt) / w2sq_src_tgt
    # NPE of the map the net realises: E against W2²(x0, T(x0)) on the same points (how
    # close to optimal transport the learned flow is for its own endpoint distribution).
    w2sq_realised = _w2_fn(config)(x0_eval, pe.x1) ** 2
    npe_realised = abs(energy - w2sq_realised) / w2sq_realised
    loss = np.asarray(history.loss)
    sol = fm.integrate(model, x0_eval[: config.n_traj], solver="euler",
                       steps=config.euler_steps, save_trajectory=True)
    return dict(task=task, method=method, seed=seed, w2=w2, npe=npe, energy=energy,
                npe_realised=npe_realised, w2sq_realised=w2sq_realised,
                seconds=tm.seconds, resumed_from=history.resumed_from,
                steps_per_s=(config.steps - (history.resumed_from or 0)) / tm.seconds,
                final_loss=float(loss[-min(100, loss.size):].mean()),
                x1=np.asarray(pe.x1)[:2000], xs=np.asarray(sol.xs))


#: Config fields that do not change what one (task, method, seed) run computes.
_NOT_PROTOCOL = ("tasks", "methods", "seeds", "n_traj", *_common.GRID_FIELDS)


def _task_info(task: str, config: Config, log: _common.RunStore) -> dict:
    """Evaluation data and references of one task (the references cached in ``log``)."""
    samplers = _task(task)
    kx, ky, kf = jax.random.split(jax.random.PRNGKey(12345), 3)
    x0_eval = samplers[0](kx, config.n_eval)
    x1_eval = samplers[1](ky, config.n_eval)
    info = log.load_task(task)
    # NPE reference: W2 between finite samples is biased upwards (about +7% in W2² at
    # 1,000 vs 10,000 points on 8 Gaussians -> moons), so it is estimated on n_ref >=
    # n_eval points, exactly, whatever n_eval is.
    kr0, kr1 = jax.random.split(jax.random.fold_in(kx, 1))
    n_ref = max(config.n_ref, config.n_eval)
    if info is None:
        w2sq = float(_w2_fn(config)(samplers[0](kr0, n_ref), samplers[1](kr1, n_ref))) ** 2
        floor, floor_sd = fm.w2_floor(samplers[1], kf, config.n_eval,
                                      reps=config.floor_reps, method=config.w2_method)
        info = dict(w2sq_source_target=w2sq, floor=floor, floor_sd=floor_sd)
        log.save_task(task, info)
    if "w2sq_source_blurred" not in info:
        # With sigma > 0 the path's marginal at t = 1 is target * N(0, sigma^2 I) (its
        # noise does not vanish at t = 1): a reference for E that does not charge the
        # flow for the blur its loss asks for. Same draws as above, plus the blur.
        x1 = samplers[1](kr1, n_ref)
        x1 = x1 + config.sigma * jax.random.normal(jax.random.fold_in(kx, 2), x1.shape, x1.dtype)
        info = dict(info, w2sq_source_blurred=info["w2sq_source_target"] if config.sigma == 0
                    else float(_w2_fn(config)(samplers[0](kr0, n_ref), x1)) ** 2)
        log.save_task(task, info)
    return dict(info, samplers=samplers, x0_eval=x0_eval, x1_eval=np.asarray(x1_eval))


def run(config: Config, workdir: Path | str) -> dict:
    """Run the benchmark grid; write results.{json,md} and the sample/trajectory grid.

    Runs found in ``workdir/runs`` or in the ``config.merge`` workdirs are reused, not
    trained; with ``config.train=False`` nothing is trained and missing runs are listed.
    """
    workdir = Path(workdir)
    for m in config.methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {sorted(METHODS)}")
    for t in config.tasks:
        _task(t)
    runs, task_info, last_runs, missing = [], {}, {}, []
    log = _common.RunStore(workdir, config, _NOT_PROTOCOL)
    merged = _common.MergedRuns(config.merge, config, _NOT_PROTOCOL,
                                ("w2sq_source_target", "floor"))
    # Seed-major: a grid stopped part-way has whole seeds over all tasks and methods.
    grid = [(t, m, s) for s in range(config.seeds) for t in config.tasks for m in config.methods]
    bar = _common.progress(range(len(grid)), desc="toy2d runs", enabled=config.progress)
    it = iter(bar)
    with _common.Timer() as total:
        for task in config.tasks:
            task_info[task] = _task_info(task, config, log)
            merged.check_task(task, task_info[task])
        for task, method, seed in grid:
            info = task_info[task]

            def compute(ckpt, task=task, method=method, seed=seed, info=info):
                return run_one(task, method, seed, config, info["samplers"],
                               (info["x0_eval"], info["x1_eval"], info["w2sq_source_target"]),
                               checkpoint_dir=ckpt)

            r = log.get(task, method, seed, merged, compute if config.train else None)
            next(it, None)
            if r is None:
                missing.append(f"{task}/{method}/seed {seed}")
                continue
            x1, xs = r.pop("x1", None), r.pop("xs", None)
            if x1 is not None:
                last_runs[(task, method)] = (x1, xs)  # the figure shows the last seed stored
            runs.append(r)
        runs.sort(key=lambda r: (config.tasks.index(r["task"]),
                                 config.methods.index(r["method"]), r["seed"]))

    # ---------------- table ----------------
    rows = []
    summary = {}
    for task in config.tasks:
        info = task_info[task]
        for method in config.methods:
            rs = [r for r in runs if r["task"] == task and r["method"] == method]
            pub = PUBLISHED[PUBLISHED_FOR[method]]
            pw2 = pub["w2"].get(task)
            pnpe = pub["npe"].get(task)
            w2s, npes = [r["w2"] for r in rs], [r["npe"] for r in rs]
            ref_b = info["w2sq_source_blurred"]
            npes_b = [abs(r["energy"] - ref_b) / ref_b for r in rs]
            if rs:
                summary[f"{task}/{method}"] = dict(
                    w2_mean=float(np.mean(w2s)), npe_mean=float(np.mean(npes)),
                    npe_blurred_mean=float(np.mean(npes_b)),
                    seconds_mean=float(np.mean([r["seconds"] for r in rs])), seeds=len(rs))
            cells = ([_common.fmt_pm(w2s)] if rs else ["–"]) + [
                f"{pw2[0]:.3f} ± {pw2[1]:.3f} ({PUBLISHED_FOR[method]})" if pw2 else "–",
                f"{info['floor']:.3f} ± {info['floor_sd']:.3f}"]
            cells += ([_common.fmt_pm(npes)] if rs else ["–"]) + [f"{pnpe:.3f}" if pnpe is not None
                                                          else "–"]
            cells.append(_common.fmt_pm(npes_b) if rs else "–")
            cells += ([_common.fmt_pm([r["npe_realised"] for r in rs], 4),
                       _common.fmt_pm([r["seconds"] for r in rs], 1),
                       f"{np.mean([r['steps_per_s'] for r in rs]):,.0f}"] if rs else
                      ["–"] * 3)
            rows.append([TASK_LABELS.get(task, task), METHODS[method][2], str(len(rs))] + cells)
    table = _common.markdown_table(
        ["task", "method", "seeds", f"W2 (n={config.n_eval:,})", "W2 published (n=10,000)",
         f"W2 floor (n={config.n_eval:,})", "NPE", "NPE published",
         f"NPE vs target ⊛ N(0, {config.sigma:g}²)", "NPE of the realised map",
         "s / run", "steps/s"],
        rows)
    w2_desc = ("exact (POT network simplex)" if config.w2_method == "exact" else
               "fm.w2 'auto' (exact for n <= 2,048, else debiased Sinkhorn)")
    setup = (f"{config.seeds} seed(s) x {config.steps:,} steps, batch {config.batch_size}, "
             f"MLP {config.depth} x {config.width} SELU, AdamW lr {config.lr:g} wd "
             f"{config.weight_decay:g}, sigma {config.sigma:g}, {config.euler_steps} Euler "
             f"steps; W2 {w2_desc}; NPE against the "
             f"exact W2²(source, target) on {max(config.n_ref, config.n_eval):,} + "
             f"{max(config.n_ref, config.n_eval):,} points; E on {config.n_eval:,} source "
             f"points. 'NPE vs target ⊛ N(0, σ²)': the same against W2²(source, target + σ Z), "
             f"the marginal at t = 1 of the σ-path the loss fits (its noise does not vanish "
             f"at t = 1; same draws plus the blur). 'NPE of the realised map' = "
             f"|E - W2²(x0, T(x0))| / W2²(x0, T(x0)) on "
             f"the same points (T the learned flow map): near 0 when the flow is optimal for "
             f"the distribution it generates; the NPE column adds the error of T#source "
             f"against the target, to which E is first-order sensitive. "
             f"Published numbers: Tong et al., [SF]²M (AISTATS 2024), Table 2, at 20,000 "
             f"steps, 5 seeds, n = 10,000 (floor 0.227 there for torchcfm's 8 Gaussians); W2 "
             f"at a smaller n is larger for the same model (compare with the floor column).")
    datasets_note = getattr(datasets, "TOY2D_NOTE", "")
    figures = []
    if config.figure:
        figures.append(_figure(workdir, config, task_info, last_runs))
    results = dict(runs=runs, summary=summary, missing=missing,
                   tasks={k: {kk: v[kk] for kk in ("w2sq_source_target", "w2sq_source_blurred",
                                                   "floor", "floor_sd")}
                          for k, v in task_info.items()},
                   seconds=total.seconds)
    _common.write_outputs(
        workdir, name=NAME, title="2-D benchmark (Tong et al. protocol)", config=config,
        results=results,
        sections=[("Setup", setup + (" " + datasets_note if datasets_note else "")),
                  ("Results (mean ± std over seeds)", table),
                  ("", _common.provenance(total.seconds, runs, log, missing))],
        figures=figures)
    return results


def _figure(workdir, config, task_info, last_runs) -> str:
    plt = _common.pyplot()
    nt, nm = len(config.tasks), len(config.methods)
    fig, axes = plt.subplots(nt, nm, figsize=(3.3 * nm, 3.3 * nt), squeeze=False)
    for i, task in enumerate(config.tasks):
        tgt = task_info[task]["x1_eval"][:2000]
        for j, method in enumerate(config.methods):
            ax = axes[i, j]
            if i == 0:
                ax.set_title(METHODS[method][2], fontsize=9)
            if j == 0:
                ax.set_ylabel(TASK_LABELS.get(task, task), fontsize=9)
            # no samples: only metrics stored for this cell
            x1, xs = last_runs.get((task, method), (None, None))
            _common.sample_panel(ax, None if x1 is None else x1[:2000], xs, target=tgt)
    fig.tight_layout()
    return _common.savefig(fig, workdir, "samples_trajectories", dpi=70)


def main(argv=None) -> int:
    return _common.main(Config, run, NAME, argv)


if __name__ == "__main__":
    raise SystemExit(main())
