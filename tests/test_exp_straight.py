"""experiments/straight.py end to end on a tiny grid, against independent references."""

from __future__ import annotations

import dataclasses
import math
import shutil

import numpy as np
import pytest
import scipy.linalg
from scipy.optimize import linear_sum_assignment

from experiments import _common, straight

CFG = straight.Config(tasks=("N->moons", "gauss2"), methods=("ifm", "sk64", "rf_ifm"),
                      seeds=(0,), steps=60, reflow_steps=60, reflow_pairs=256,
                      sinkhorn_pairs=128, batch_size=64, width=16, depth=2,
                      euler_steps=(1, 100), n_eval=128, n_ref=256, n_traj=4,
                      trajectory_tasks=("N->moons",), progress=False, checkpoint_every=0)


def _bures(m0, s0, m1, s1):
    """W2² and the OT map's matrix from SciPy's sqrtm (independent of fmjax.ot)."""
    r0 = np.real(scipy.linalg.sqrtm(s0))
    cross = np.real(scipy.linalg.sqrtm(r0 @ s1 @ r0))
    w2sq = np.sum((m0 - m1) ** 2) + np.trace(s0) + np.trace(s1) - 2 * np.trace(cross)
    r0_inv = np.linalg.inv(r0)
    return w2sq, r0_inv @ cross @ r0_inv


def _w2_lsa(x, y):
    """Exact W2 between two equal-size clouds by SciPy's assignment."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    cost = np.sum((x[:, None, :] - y[None, :, :]) ** 2, axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return math.sqrt(cost[rows, cols].mean())


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    return workdir, straight.run(dataclasses.replace(CFG, figure=True), workdir)


def test_references_and_chain(grid):
    workdir, res = grid
    assert len(res["runs"]) == 6 and not res["missing"]
    task = straight.make_task("gauss2", CFG)
    m0, s0, m1, s1 = task.gaussians
    w2sq, _ = _bures(m0, s0, m1, s1)
    assert math.isclose(res["tasks"]["gauss2"]["w2sq_ref"], w2sq, rel_tol=1e-5)
    for r in res["runs"]:
        # The chain on the Euler grid: E >= E|phi_1(x) - x|^2 >= W2^2(x, phi_1(x)).
        assert r["energy"] >= r["endpoint_cost"] > 0, r
        assert r["endpoint_cost"] >= r["w2sq_realised"] * (1 - 1e-5), r
        if r["task"] == "gauss2":  # Gelbrich: W2² >= Bures W2² of the moments
            assert r["w2sq_realised"] >= r["gelbrich"] * (1 - 1e-4), r
        assert math.isclose(r["straightness"], r["energy"] - r["endpoint_cost"],
                            rel_tol=1e-5, abs_tol=1e-6)
        assert len(r["w2"]) == len(CFG.euler_steps)
        assert bool(r["l2uvp"]) == (r["task"] == "gauss2")
    md = (workdir / "results.md").read_text()
    assert "2-RF from I-FM" in md and "Sinkhorn-FM (64)" in md
    assert (workdir / "w2_vs_nfe.png").exists() and (workdir / "trajectories.png").exists()


def test_stored_samples_reproduce_the_table(grid):
    workdir, res = grid
    store = _common.RunStore(workdir, CFG, straight._NOT_PROTOCOL)
    for task_name in CFG.tasks:
        task = straight.make_task(task_name, CFG)
        x0, x1_eval = straight.eval_data(task, CFG)
        for method in CFG.methods:
            rec = store.load(task_name, method, 0)
            row = next(r for r in res["runs"]
                       if r["task"] == task_name and r["method"] == method)
            # W2 after 100 Euler steps, by SciPy's assignment on the stored samples
            assert math.isclose(_w2_lsa(rec["x1"], x1_eval), row["w2"][-1], rel_tol=1e-5)
            # the endpoint cost from the stored samples and the evaluation points
            cost = np.mean(np.sum((rec["x1"].astype(np.float64) - x0) ** 2, axis=1))
            assert math.isclose(cost, row["endpoint_cost"], rel_tol=1e-4)
            if task.gaussians is not None:
                m0, s0, m1, s1 = task.gaussians
                _, a = _bures(m0, s0, m1, s1)
                tx0 = m1 + (np.asarray(x0, np.float64) - m0) @ a.T
                for x1, reported in ((rec["x1"], row["l2uvp_100"]),
                                     (rec["x1_first"], row["l2uvp"][0])):  # 100 and 1 steps
                    uvp = 100 * np.mean(np.sum((x1 - tx0) ** 2, axis=1)) / np.trace(s1)
                    assert math.isclose(uvp, reported, rel_tol=1e-4)
                # the Bures W2 of the moments, and the Gelbrich bound, from the samples
                x1 = rec["x1"].astype(np.float64)
                mx, cx = x1.mean(0), np.cov(x1.T, bias=True)
                w2sq, _ = _bures(mx, cx, m1, s1)
                assert math.isclose(math.sqrt(w2sq), row["w2_moments"][-1], rel_tol=1e-4)
                x0 = np.asarray(x0, np.float64)
                w2sq, _ = _bures(x0.mean(0), np.cov(x0.T, bias=True), mx, cx)
                assert math.isclose(w2sq, row["gelbrich"], rel_tol=1e-4)


def test_stored_runs_are_reused_and_reflow_follows_its_base(grid, monkeypatch, tmp_path):
    workdir, res = grid

    def no_training(*a, **k):
        raise AssertionError("trained a stored run")

    real_reflow = straight.fm.reflow
    monkeypatch.setattr(straight.fm, "fit", no_training)
    monkeypatch.setattr(straight.fm, "reflow", no_training)
    again = straight.run(CFG, workdir)
    assert [r["w2"] for r in again["runs"]] == [r["w2"] for r in res["runs"]]
    assert all(r["resumed"] for r in again["runs"])
    # A 2-RF job in another workdir: its 1-RF comes from the merged store, only the
    # reflow is trained, to the same numbers (the 1-RF parameters are stored exactly).
    calls = []

    def counting_reflow(*a, **k):
        calls.append(1)
        return real_reflow(*a, **k)

    monkeypatch.setattr(straight.fm, "reflow", counting_reflow)
    base = tmp_path / "base" / "runs"
    base.mkdir(parents=True)
    for name in ("gauss2__ifm__0.npz", "tasks.json"):
        shutil.copy(workdir / "runs" / name, base / name)
    cfg = dataclasses.replace(CFG, tasks=("gauss2",), methods=("rf_ifm",),
                              merge=(str(base.parent),), figure=False)
    rf = straight.run(cfg, tmp_path / "rf")
    old = next(r for r in res["runs"] if r["task"] == "gauss2" and r["method"] == "rf_ifm")
    assert len(calls) == 1 and rf["runs"][0]["w2"] == old["w2"]
    assert rf["runs"][0]["energy"] == old["energy"]
    # Report-only: nothing stored for seed 1, so it is listed as missing.
    part = straight.run(dataclasses.replace(CFG, seeds=(0, 1), train=False, figure=False,
                                            merge=(str(workdir),)), tmp_path / "report")
    assert len(part["runs"]) == 6 and len(part["missing"]) == 6


def test_bad_names():
    with pytest.raises(ValueError, match="unknown method"):
        straight.check_method("rf_rf_ifm")
    with pytest.raises(ValueError, match="unknown method"):
        straight.check_method("sk")
    with pytest.raises(ValueError, match="unknown task"):
        straight.make_task("gauss0", CFG)
