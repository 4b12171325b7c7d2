"""End-to-end test of the w2bench experiment (``experiments.w2bench.run``) on a tiny grid.

Every number is checked against a reference computed here by other means: the baseline rows
against NumPy float64 sums with ``Var(Q)`` read from the ``.npz`` and the Bures map built
with SciPy's ``sqrtm``; the flow rows against a fresh Tsit5/Euler solve of the stored
parameters; the stored/merged/resumed grid against call counts of the training functions.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from experiments import _common
from experiments import w2bench as wb

DIM = 2
TINY = wb.Config(dims=(DIM,), methods=("ifm", "rf2"), steps=40, width=16, depth=2,
                 batch_size=64, reflow_pairs=256, n_eval=512, n_straight=128, euler_steps=20,
                 figure=False, progress=False, checkpoint_every=0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("w2tiny")
    return workdir, wb.run(TINY, workdir)


def _eval_points():
    pair = wb.load_pair(DIM)
    x = pair.source(jax.random.fold_in(jax.random.key(wb.EVAL_SEED), DIM), TINY.n_eval)
    return pair, np.asarray(x, np.float64), np.asarray(pair.ot_map(x), np.float64)


def _var_q_from_npz():
    with np.load(wb.data_path(DIM)) as z:
        return float(np.trace(np.asarray(z["target_cov"], np.float64)))


def test_baseline_rows_match_numpy(tiny_run):
    _, res = tiny_run
    pair, x, ref = _eval_points()
    var_q = _var_q_from_npz()
    base = res["dims"][str(DIM)]
    # identity: 100 E||x - T*(x)||^2 / Var(Q), and its cosine is 0 by the benchmark's rule
    ident = 100.0 * np.mean(np.sum((x - ref) ** 2, axis=1)) / var_q
    assert base["identity"]["l2_uvp"] == pytest.approx(ident, rel=1e-5)
    assert base["identity"]["cosine"] == 0.0
    # linear: the Bures map A = S_p^{-1/2} (S_p^{1/2} S_q S_p^{1/2})^{1/2} S_p^{-1/2} by SciPy
    with np.load(wb.data_path(DIM)) as z:
        mean_q, cov_q = np.asarray(z["target_mean"], float), np.asarray(z["target_cov"], float)
    mean_p, cov_p = np.asarray(pair.mean_p, float), np.asarray(pair.cov_p, float)
    root = np.real(scipy.linalg.sqrtm(cov_p))
    inv_root = np.linalg.inv(root)
    a = inv_root @ np.real(scipy.linalg.sqrtm(root @ cov_q @ root)) @ inv_root
    lin = mean_q + (x - mean_p) @ a.T
    err = np.sum((lin - ref) ** 2, axis=1)
    assert base["linear"]["l2_uvp"] == pytest.approx(100.0 * err.mean() / var_q, rel=1e-4)
    assert base["linear"]["l2_uvp_se"] == pytest.approx(
        100.0 * err.std(ddof=1) / np.sqrt(err.size) / var_q, rel=1e-3)
    u, v = lin - x, ref - x
    cos = np.mean(np.sum(u * v, 1)) / np.sqrt(np.mean(np.sum(u * u, 1)) * np.mean(np.sum(v * v, 1)))
    assert base["linear"]["cosine"] == pytest.approx(cos, rel=1e-4)
    # W2^2 of the pair on these points, and the OT map scored against itself
    assert base["w2sq"] == pytest.approx(np.mean(np.sum((ref - x) ** 2, axis=1)), rel=1e-5)
    assert float(wb.cosine_similarity(jnp.asarray(ref), jnp.asarray(ref), jnp.asarray(x))) == \
        pytest.approx(1.0, abs=1e-12)
    assert float(wb.l2_uvp(jnp.asarray(ref), jnp.asarray(ref), var_q)) == 0.0


def test_flow_rows_match_a_fresh_solve(tiny_run):
    import fmjax as fm

    workdir, res = tiny_run
    pair, x, ref = _eval_points()
    var_q = _var_q_from_npz()
    assert {r["method"] for r in res["runs"]} == {"ifm", "rf2"} and res["ok"]
    for r in res["runs"]:
        proto = wb.run_protocol(TINY, DIM, r["method"])
        with np.load(workdir / "runs" / f"d{DIM}__{r['method']}__0.npz") as z:
            model = wb._model_from_arrays(proto, 0, {k: z[k] for k in z.files})
        assert fm.nn.num_params(model) == r["num_params"] == \
            (DIM + 1) * 16 + 16 + (16 * 16 + 16) + 16 * DIM + DIM
        x32 = jnp.asarray(x, jnp.float32)
        sol = fm.integrate(model, x32, solver="tsit5", rtol=TINY.rtol, atol=TINY.atol)
        mapped = np.asarray(sol.x, np.float64)
        uvp = 100.0 * np.mean(np.sum((mapped - ref) ** 2, axis=1)) / var_q
        assert r["l2_uvp"] == pytest.approx(uvp, rel=1e-4)
        assert r["nfe"] == int(sol.nfe) > 0
        eul = np.asarray(fm.integrate(model, x32, solver="euler", steps=TINY.euler_steps).x)
        uvp_euler = 100.0 * np.mean(np.sum((eul - ref) ** 2, axis=1)) / var_q
        assert r["l2_uvp_euler"] == pytest.approx(uvp_euler, rel=1e-4)
        # S = E - E||phi_1 - Id||^2 >= 0 (Jensen), the endpoint cost from the same solve
        chord = np.mean(np.sum((mapped[: TINY.n_straight] - x[: TINY.n_straight]) ** 2, 1))
        assert r["endpoint_cost"] == pytest.approx(chord, rel=1e-3)
        assert r["straightness"] == pytest.approx(r["energy"] - r["endpoint_cost"], abs=1e-6)
        assert r["straightness"] >= -1e-6
        assert r["steps"] == 40 and r["batch_size"] == 64
    rf2 = next(r for r in res["runs"] if r["method"] == "rf2")
    assert rf2["pair_nfe"] > 0


def test_second_invocation_trains_nothing(tiny_run, monkeypatch):
    workdir, res = tiny_run

    def no_training(*args, **kwargs):
        raise AssertionError("a stored run was trained again")

    monkeypatch.setattr(wb.fm, "fit", no_training)
    monkeypatch.setattr(wb.fm, "reflow", no_training)
    again = wb.run(TINY, workdir)
    assert [r["l2_uvp"] for r in again["runs"]] == [r["l2_uvp"] for r in res["runs"]]
    assert all(r["loaded"] for r in again["runs"]) and again["ok"]
    md = (workdir / "results.md").read_text()
    assert "2 of 2 runs were loaded" in md
    js = json.loads((workdir / "results.json").read_text())
    assert js["summary"][str(DIM)]["best_fmjax"]["l2_uvp"] == pytest.approx(
        min(r["l2_uvp"] for r in res["runs"]))
    assert js["summary"][str(DIM)]["target_met"] is None  # no published number was found


def test_merge_trains_only_what_is_missing(tiny_run, tmp_path, monkeypatch):
    workdir, res = tiny_run
    calls = []
    real_reflow = wb.fm.reflow

    def counting_reflow(*args, **kwargs):
        calls.append("reflow")
        return real_reflow(*args, **kwargs)

    def no_fit(*args, **kwargs):
        raise AssertionError("the I-FM run is in the merged workdir")

    # A job that only has I-FM: its 2-RF row is trained from the merged I-FM run.
    only_ifm = tmp_path / "ifm_only"
    (only_ifm / "runs").mkdir(parents=True)
    src = workdir / "runs" / f"d{DIM}__ifm__0.npz"
    (only_ifm / "runs" / src.name).write_bytes(src.read_bytes())
    monkeypatch.setattr(wb.fm, "fit", no_fit)
    monkeypatch.setattr(wb.fm, "reflow", counting_reflow)
    out = wb.run(dataclasses.replace(TINY, merge=(str(only_ifm),)), tmp_path / "job2")
    assert calls == ["reflow"]
    by = {r["method"]: r for r in out["runs"]}
    assert by["ifm"]["source"] == str(only_ifm)
    # the same seed, key and data: the same 2-RF numbers as the first grid
    ref = next(r for r in res["runs"] if r["method"] == "rf2")
    assert by["rf2"]["l2_uvp"] == pytest.approx(ref["l2_uvp"], rel=1e-5)


def test_other_protocol_is_not_reused(tiny_run, tmp_path):
    workdir, _ = tiny_run
    other = dataclasses.replace(TINY, steps=41, train=False, merge=(str(workdir),))
    out = wb.run(other, tmp_path / "other")
    assert out["runs"] == [] and sorted(out["missing"]) == ["d2__ifm__0", "d2__rf2__0"]
    assert len(out["mismatched"]) == 2
    # the fingerprint is that of the run's protocol: the seed count or the dims do not enter it
    a = _common.protocol_fingerprint(wb.run_protocol(TINY, DIM, "ifm"), ())
    b = _common.protocol_fingerprint(
        wb.run_protocol(dataclasses.replace(TINY, seeds=3, dims=(2, 4)), DIM, "ifm"), ())
    assert a == b
    assert wb.run_protocol(TINY, DIM, "ifm")["steps"] == 40
    quick = wb.Config.quick()
    assert wb.run_protocol(quick, 8, "sinkhorn4096")["steps"] == quick.sinkhorn_steps
    assert wb.run_protocol(wb.Config(), 64, "otfm1024")["batch_size"] == 1024


def test_a_failed_run_is_reported(tmp_path, monkeypatch):
    def not_converging(*args, **kwargs):
        raise RuntimeError("Sinkhorn coupling did not converge: raise `epsilon`")

    monkeypatch.setattr(wb.fm, "fit", not_converging)
    out = wb.run(dataclasses.replace(TINY, methods=("sinkhorn4096",)), tmp_path)
    assert not out["ok"] and out["failed"][0]["run"] == "d2__sinkhorn4096__0"
    assert "did not converge" in (tmp_path / "results.md").read_text()
    assert not (tmp_path / "runs").exists()  # nothing stored: a later run retries it


def test_run_store_roundtrip(tmp_path):
    store = _common.KeyedRunStore(tmp_path / "a")
    store.save("k", "fp1", {"v": np.float32(1.5), "n": np.int64(3)}, arr=np.arange(3.0))
    rec = store.load("k", "fp1")
    assert rec["v"] == 1.5 and rec["n"] == 3 and rec["arr"].tolist() == [0.0, 1.0, 2.0]
    assert store.load("k", "fp2") is None and store.mismatched
    merged = _common.KeyedRunStore(tmp_path / "b", merge=[tmp_path / "a"])
    assert merged.load("k", "fp1")["source"] == str(tmp_path / "a")
    with pytest.raises(ValueError, match="not a directory"):
        _common.KeyedRunStore(tmp_path / "c", merge=[tmp_path / "missing"])
