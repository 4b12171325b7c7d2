"""Port the ``Mix3toMix10`` benchmark pairs once: PyTorch state dicts -> ``.npz`` (needs CPU torch).

Reads ``SOURCE/{D}_v1.pt`` and ``SOURCE/{D}_v2.pt`` (the two ICNN state dicts of each pair,
from ``iamalexkorotin/Wasserstein2Benchmark`` at commit
``647a1acc85f88e207733d087cbe87987cc0dea06``, ``benchmarks/Mix3toMix10/``, MIT licence) and
writes ``OUT/mix3tomix10_d{D}.npz`` with the weights (float32, as published), the mixture
centres and maps of :func:`experiments.w2bench.mixture_parameters`, the standardisation
constants ``(m, s)`` and the moments of ``Q``; copies ``LICENSE.txt`` and writes ``README.md``
(provenance and the constants). fmjax then needs no torch: ``experiments.w2bench.load_pair``
reads the ``.npz``.

    python -m experiments.w2bench_convert [--source /work/shared/w2bench]
        [--out experiments/data/w2bench] [--dims 2,4,8,16,32,64,128]

Install CPU torch first (``pip install 'fmjax[w2bench]'``, or ``make peers``); a plain
``pip install torch`` may pull a multi-GB CUDA build.

Constants (float64, JAX ``vmap(grad(psi))`` on CPU):

- ``(m, s)``: mean and ``sqrt`` of the mean per-coordinate variance (``ddof = 0``, as
  ``np.var`` in the reference's ``standardize_potential``) of ``grad psi`` on
  ``N_STANDARDISE = 2^14`` source points drawn from ``np.random.RandomState(STANDARDISE_SEED)``:
  first the ``n`` component indices (``randint(0, 3, n)``), then ``Z`` (``standard_normal``).
- ``mean_Q``, ``Cov_Q`` (``ddof = 1``): of ``T*(X)`` on ``N_MOMENTS = 2^18`` points drawn the
  same way from ``RandomState(MOMENTS_SEED)``. The same points also give the large-sample
  ``(m, s)`` that the README sets beside the stored ones, and the L2-UVP between the two
  resulting maps: the size of the Monte Carlo ambiguity of the pair's definition.

The reference draws its ``2^14`` standardisation points with ``torch.randn`` on CUDA and keeps
no copy of ``(m, s)``, so its values cannot be reproduced on a CPU; the README states how far
apart two such draws are expected to be.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from . import w2bench as wb

DEFAULT_SOURCE = Path("/work/shared/w2bench")
UPSTREAM = ("iamalexkorotin/Wasserstein2Benchmark", "647a1acc85f88e207733d087cbe87987cc0dea06")
CHUNK = 8192


def expected_shapes(dim: int) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and shapes of one benchmark ``DenseICNN`` (rank 1) of dimension ``dim``."""
    sizes = wb.hidden_sizes(dim)
    shapes: dict[str, tuple[int, ...]] = {}
    for i, h in enumerate(sizes):
        shapes[f"quadratic_layers.{i}.quadratic_decomposed"] = (dim, 1, h)
        shapes[f"quadratic_layers.{i}.weight"] = (h, dim)
        shapes[f"quadratic_layers.{i}.bias"] = (h,)
    for i, (h_in, h_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        shapes[f"convex_layers.{i}.weight"] = (h_out, h_in)
    shapes["final_layer.weight"] = (1, sizes[-1])
    return shapes


def state_dict_to_arrays(state: dict, dim: int, prefix: str, name: str) -> dict[str, np.ndarray]:
    """Check a state dict against the architecture and rename it to the ``.npz`` keys."""
    want = expected_shapes(dim)
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != want:
        raise ValueError(f"{name}: state dict keys/shapes {got} differ from the benchmark "
                         f"DenseICNN of dimension {dim}: {want}")
    arr = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in state.items()}
    for k in [k for k in want if k.startswith(("convex_layers", "final_layer"))]:
        if (arr[k] < 0).any():
            raise ValueError(f"{name}: {k} has negative entries; the potential would not be "
                             "convex")
    out = {}
    for i in range(len(wb.hidden_sizes(dim))):
        out[f"{prefix}.q{i}.U"] = arr[f"quadratic_layers.{i}.quadratic_decomposed"]
        out[f"{prefix}.q{i}.V"] = arr[f"quadratic_layers.{i}.weight"]
        out[f"{prefix}.q{i}.b"] = arr[f"quadratic_layers.{i}.bias"]
    for i in range(len(wb.hidden_sizes(dim)) - 1):
        out[f"{prefix}.c{i}.W"] = arr[f"convex_layers.{i}.weight"]
    out[f"{prefix}.final"] = arr["final_layer.weight"][0]
    return out


def sample_source_numpy(centers: np.ndarray, maps: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` float64 points of ``P`` from ``RandomState(seed)``: indices first, then ``Z``."""
    rs = np.random.RandomState(seed)
    idx = rs.randint(0, wb.NUM_COMPONENTS, size=n)
    z = rs.standard_normal((n, centers.shape[1]))
    c = centers.astype(np.float64)
    a = maps.astype(np.float64)
    x = np.empty_like(z)
    for k in range(wb.NUM_COMPONENTS):
        sel = idx == k
        x[sel] = wb.COMPONENT_STD * z[sel] @ a[k].T + c[k]
    return x


def grad_psi_numpy(arrays: dict[str, np.ndarray], dim: int, x: np.ndarray) -> np.ndarray:
    """``grad psi`` in float64 on a NumPy batch, in chunks of ``CHUNK`` points."""
    n_layers = len(wb.hidden_sizes(dim))
    params = tuple(wb._cast(wb._params_from_npz(arrays, f"psi{i}", n_layers), np.float64)
                   for i in (1, 2))
    fn = jax.jit(jax.vmap(jax.grad(wb.psi, argnums=1), in_axes=(None, 0)))
    out = [np.asarray(fn(params, x[i:i + CHUNK])) for i in range(0, len(x), CHUNK)]
    return np.concatenate(out, axis=0)


def standardisation(g: np.ndarray) -> tuple[np.ndarray, float]:
    """``(m, s)``: the mean of ``g`` and ``sqrt`` of its mean per-coordinate variance (ddof 0)."""
    m = g.mean(axis=0)
    return m, float(np.sqrt(((g - m) ** 2).mean(axis=0).mean()))


def convert_one(source: Path, out: Path, dim: int) -> dict[str, float]:
    """Convert the pair of dimension ``dim``; returns the summary row of the README."""
    import torch

    t0 = time.perf_counter()
    arrays: dict[str, np.ndarray] = {}
    for i in (1, 2):
        path = source / f"{dim}_v{i}.pt"
        state = torch.load(path, map_location="cpu", weights_only=True)
        arrays.update(state_dict_to_arrays(state, dim, f"psi{i}", str(path)))
    centers, maps = wb.mixture_parameters(dim)

    x0 = sample_source_numpy(centers, maps, wb.N_STANDARDISE, wb.STANDARDISE_SEED)
    m, s = standardisation(grad_psi_numpy(arrays, dim, x0))

    x1 = sample_source_numpy(centers, maps, wb.N_MOMENTS, wb.MOMENTS_SEED)
    g1 = grad_psi_numpy(arrays, dim, x1)
    y1 = (g1 - m) / s
    target_mean = y1.mean(axis=0)
    target_cov = np.cov(y1, rowvar=False)
    target_cov = 0.5 * (target_cov + target_cov.T)
    var_q = float(np.trace(target_cov))
    m_big, s_big = standardisation(g1)
    y1_big = (g1 - m_big) / s_big
    uvp_ambiguity = 100 * float(np.mean(np.sum((y1 - y1_big) ** 2, axis=1))) / var_q

    np.savez_compressed(
        out / wb.data_path(dim).name,
        **arrays,
        centers=centers,
        maps=maps,
        std=np.float64(wb.COMPONENT_STD),
        grad_mean=m,
        grad_scale=np.float64(s),
        target_mean=target_mean,
        target_cov=target_cov,
        n_standardise=np.int64(wb.N_STANDARDISE),
        standardise_seed=np.int64(wb.STANDARDISE_SEED),
        n_moments=np.int64(wb.N_MOMENTS),
        moments_seed=np.int64(wb.MOMENTS_SEED),
        upstream=np.array(f"{UPSTREAM[0]}@{UPSTREAM[1]}"),
    )
    return {
        "dim": dim,
        "s": s,
        "s_big": s_big,
        "m_norm": float(np.linalg.norm(m)),
        "dm": float(np.linalg.norm(m - m_big) / s_big),
        "var_q": var_q,
        "mean_q_norm": float(np.linalg.norm(target_mean)),
        "uvp_ambiguity": uvp_ambiguity,
        "seconds": time.perf_counter() - t0,
    }


README = """# Mix3toMix10 benchmark pairs, converted for fmjax

Converted by `python -m experiments.w2bench_convert` (needs CPU torch; `fmjax[w2bench]`) from
the PyTorch state dicts `benchmarks/Mix3toMix10/{{D}}_v{{1,2}}.pt` of the repository
[{repo}](https://github.com/{repo}) at commit `{commit}`, MIT licence (`LICENSE.txt`, copied
from there). Paper: Korotin, Li, Genevay, Solomon, Filippov, Burnaev, "Do Neural Optimal
Transport Solvers Work? A Continuous Wasserstein-2 Benchmark", NeurIPS 2021, arXiv 2106.01954.

Each `mix3tomix10_d{{D}}.npz` holds:

- `psi{{1,2}}.q{{l}}.U` `(D, 1, h_l)`, `.V` `(h_l, D)`, `.b` `(h_l,)`: the convex quadratic layers
  (state-dict `quadratic_layers.{{l}}.quadratic_decomposed`, `.weight`, `.bias`);
  `psi{{1,2}}.c{{l}}.W`: `convex_layers.{{l}}.weight`; `psi{{1,2}}.final`: `final_layer.weight[0]`.
  Float32, bit for bit the published values.
- `centers` `(3, D)`, `maps` `(3, D, D)`, `std`: the source mixture, rebuilt from NumPy's legacy
  generator after seed 0 as the reference does (float32).
- `grad_mean` (m), `grad_scale` (s): `T*(x) = (grad psi(x) - m) / s`. Mean and square root of the
  mean per-coordinate variance (ddof 0) of `grad psi` on `n_standardise` = 2^14 source points of
  `np.random.RandomState(standardise_seed = {seed0})` (indices `randint(0, 3, n)` first, then
  `standard_normal((n, D))`), computed in float64 with JAX.
- `target_mean`, `target_cov` (ddof 1): moments of `Q = T*#P` on `n_moments` = 2^18 source
  points of `RandomState(moments_seed = {seed1})`, drawn the same way. `Var(Q) = tr target_cov`.

The reference (`src/potentials.py`, `standardize_potential`) computes `(m, s)` the same way
but on 2^14 points drawn with `torch.randn` on CUDA after `torch.manual_seed(0)` (component
indices from NumPy's global generator), in float32, and keeps no copy; those points cannot be
redrawn on a CPU. The pairs here are therefore the published construction up to the Monte
Carlo error of `(m, s)`. The table measures it: `s (2^18)` and `|dm| / s` are the
standardisation on the 2^18 moment points, and `L2-UVP(T*_14, T*_18)` is the L2-UVP (in %)
of the map with the stored 2^14 constants against the map with the 2^18 ones. Two independent
2^14 draws (ours and the reference's) are expected to differ by about sqrt(2) times `|dm| / s`
and, in L2-UVP, by about twice the last column.

| D | s (2^14, stored) | s (2^18) | \\|m\\| | \\|dm\\| / s | Var(Q) | \\|mean_Q\\| | L2-UVP(T*_14, T*_18) % |
|---|---|---|---|---|---|---|---|
{rows}
"""


def write_readme(out: Path, rows: Sequence[dict[str, float]]) -> None:
    lines = [f"| {r['dim']} | {r['s']:.5f} | {r['s_big']:.5f} | {r['m_norm']:.4f} | "
             f"{r['dm']:.4f} | {r['var_q']:.4f} | {r['mean_q_norm']:.4f} | "
             f"{r['uvp_ambiguity']:.4f} |" for r in rows]
    text = README.format(repo=UPSTREAM[0], commit=UPSTREAM[1], seed0=wb.STANDARDISE_SEED,
                         seed1=wb.MOMENTS_SEED, rows="\n".join(lines))
    (out / "README.md").write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=wb.DATA_DIR)
    parser.add_argument("--dims", type=str, default=",".join(map(str, wb.DIMS)))
    args = parser.parse_args(argv)
    dims = [int(d) for d in args.dims.split(",") if d.strip()]
    for d in dims:
        wb._check_dim(d)
    jax.config.update("jax_enable_x64", True)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.source / "LICENSE.txt", args.out / "LICENSE.txt")
    rows = []
    for d in dims:
        row = convert_one(args.source, args.out, d)
        rows.append(row)
        print(f"D={d:4d}  s={row['s']:.5f} (2^18: {row['s_big']:.5f})  |dm|/s={row['dm']:.4f}  "
              f"Var(Q)={row['var_q']:.4f}  L2-UVP(T*_14, T*_18)={row['uvp_ambiguity']:.4f}%  "
              f"{row['seconds']:.0f} s", flush=True)
    if sorted(dims) == list(wb.DIMS):
        write_readme(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
