"""Shared harness for the experiments: configs, command line, outputs, progress.

Convention (the Flax-examples shape): every experiment module defines

* a frozen dataclass ``Config`` whose defaults are the *full* configuration and whose
  classmethod ``quick()`` returns the ``--quick`` preset;
* ``run(config, workdir) -> dict``: all the work, importable from a notebook or a test;
  it writes ``results.json``, ``results.md`` and PNG figures into ``workdir``;
* ``main(argv=None)``: ``return _common.main(Config, run, "NAME", argv)``.

Command line: ``python -m experiments.NAME [--quick] [--distributed] [--workdir DIR] [--field=value ...]``
where every dataclass field is a flag (tuples are comma separated, booleans take
``true``/``false`` or nothing). ``--quick`` is applied first, explicit flags override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "GRID_FIELDS",
    "GridConfig",
    "KeyedRunStore",
    "MergedRuns",
    "RunStore",
    "Timer",
    "command_line",
    "ensure_x64",
    "fmt",
    "fmt_pm",
    "gaussian_sampler",
    "machine_info",
    "main",
    "markdown_table",
    "parse_config",
    "progress",
    "protocol_fingerprint",
    "provenance",
    "pyplot",
    "random_gaussian_pair",
    "random_spd",
    "sample_panel",
    "savefig",
    "savez_atomic",
    "sigma_points",
    "to_jsonable",
    "write_outputs",
    "write_text_atomic",
]


# --------------------------------------------------------------------------------------
# Configs and the command line
# --------------------------------------------------------------------------------------
def _parse_bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "y", "on"):
        return True
    if v in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _converter(tp: Any) -> Callable[[str], Any]:
    """A string -> value converter for a dataclass field annotation."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:  # Optional[X] / X | None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = _converter(args[0])
        return lambda s: None if s.lower() in ("none", "null", "") else inner(s)
    if origin is tuple:
        args = typing.get_args(tp)
        elem = _converter(args[0]) if args else str
        return lambda s: tuple(elem(p.strip()) for p in s.split(",") if p.strip())
    if tp is bool:
        return _parse_bool
    if tp in (int, float, str):
        return tp
    raise TypeError(f"unsupported config field type {tp!r}")


def parse_config(config_cls: type, argv: Sequence[str] | None = None, *,
                 description: str | None = None, default_workdir: str | None = None):
    """Parse ``argv`` into ``(config, workdir)`` for a dataclass ``config_cls``.

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class C:
        ...     steps: int = 100
        ...     dims: tuple[int, ...] = (1, 2)
        ...     @classmethod
        ...     def quick(cls):
        ...         return cls(steps=5)
        >>> cfg, wd = parse_config(C, ["--quick", "--dims=4,8"], default_workdir="runs/c")
        >>> cfg.steps, cfg.dims, wd
        (5, (4, 8), 'runs/c-quick')
    """
    hints = typing.get_type_hints(config_cls)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="the quick preset (about two minutes on a 2-core CPU)")
    parser.add_argument("--workdir", default=None,
                        help="output folder (default: runs/NAME or runs/NAME-quick)")
    for f in dataclasses.fields(config_cls):
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        kwargs: dict[str, Any] = dict(type=_converter(tp), default=argparse.SUPPRESS,
                                      help=f"(default {default!r})")
        if tp is bool:
            kwargs.update(nargs="?", const=True)
        parser.add_argument("--" + f.name.replace("_", "-"), "--" + f.name,
                            dest=f.name, **kwargs)
    ns = vars(parser.parse_args(list(argv) if argv is not None else None))
    quick = ns.pop("quick")
    workdir = ns.pop("workdir")
    base = config_cls.quick() if quick else config_cls()
    config = dataclasses.replace(base, **ns)
    if workdir is None and default_workdir is not None:
        workdir = default_workdir + ("-quick" if quick else "")
    return config, workdir


def main(config_cls: type, run: Callable[[Any, Path], dict], name: str,
         argv: Sequence[str] | None = None) -> int:
    """Entry point shared by all experiments: parse, run, print where outputs are.

    Returns the process exit code: 0, or 1 when ``results["ok"]`` is false.
    """
    doc = sys.modules[run.__module__].__doc__
    argv = list(sys.argv[1:] if argv is None else argv)
    # --distributed: join a multi-process JAX job (SLURM, TPU pod, or FMJAX_* variables)
    # before anything touches a device; fm.fit then trains one model across processes.
    distributed = "--distributed" in argv
    if distributed:
        argv.remove("--distributed")
    config, workdir = parse_config(config_cls, argv, description=doc,
                                   default_workdir=os.path.join("runs", name))
    if distributed:
        import jax

        import fmjax

        fmjax.initialize_distributed()
        print(f"[{name}] process {jax.process_index()} of {jax.process_count()}, "
              f"{jax.device_count()} devices in all")
        if jax.process_index() != 0:  # every process computes; process 0 owns the outputs
            workdir = os.path.join(workdir, f"process-{jax.process_index()}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"[{name}] config: {config}")
    print(f"[{name}] writing to {workdir.resolve()}")
    t0 = time.perf_counter()
    results = run(config, workdir)
    elapsed = time.perf_counter() - t0
    md = workdir / "results.md"
    if md.exists():
        print()
        print(md.read_text())
    print(f"[{name}] done in {elapsed:.1f} s")
    print(f"[{name}] table:   {md.resolve()}")
    print(f"[{name}] json:    {(workdir / 'results.json').resolve()}")
    for png in sorted(workdir.glob("*.png")):
        print(f"[{name}] figure:  {png.resolve()}")
    ok = bool(results.get("ok", True))
    if not ok:
        print(f"[{name}] FAILED: see the table above", file=sys.stderr)
    return 0 if ok else 1


def command_line(name: str, config: Any, workdir: Path | str | None = None) -> str:
    """The command that reproduces ``config`` (fields that differ from the full defaults)."""
    default = type(config)()
    parts = ["python", "-m", f"experiments.{name}"]
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if v != getattr(default, f.name):
            if isinstance(v, tuple):
                v = ",".join(str(e) for e in v)
            parts.append(f"--{f.name}={v}")
    if workdir is not None:
        parts.append(f"--workdir={workdir}")
    return " ".join(shlex.quote(p) for p in parts)


# --------------------------------------------------------------------------------------
# Numerics set-up
# --------------------------------------------------------------------------------------
def ensure_x64(dtype: str) -> None:
    """Turn on ``jax_enable_x64`` when an experiment asks for float64 (idempotent)."""
    import jax

    if np.dtype(dtype) == np.float64 and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)


def random_spd(rng: np.random.Generator, d: int, cond: float = 10.0) -> np.ndarray:
    """A random SPD matrix, eigenvalues log-uniform in [1/sqrt(cond), sqrt(cond)]."""
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    ev = np.exp(rng.uniform(-0.5, 0.5, size=d) * math.log(cond))
    return (q * ev) @ q.T


def sigma_points(m: np.ndarray, s: np.ndarray) -> np.ndarray:
    r"""2d points :math:`m \pm \sqrt{d} L e_i` (:math:`L L^\top = s`) with mean ``m`` and
    covariance ``s`` exactly.

    Any quadratic function of x has the same mean over them as under N(m, s): this turns
    the kinetic energy of an affine flow into an exact quadrature.

    Example:
        >>> import numpy as np
        >>> p = sigma_points(np.zeros(2), np.diag([4.0, 1.0]))
        >>> p.mean(axis=0).tolist(), np.round(p.T @ p / len(p), 12).tolist()
        ([0.0, 0.0], [[4.0, 0.0], [0.0, 1.0]])
    """
    d = m.shape[0]
    lc = np.linalg.cholesky(s) * math.sqrt(d)
    return np.concatenate([m + lc.T, m - lc.T], axis=0)


# --------------------------------------------------------------------------------------
# Progress and timing
# --------------------------------------------------------------------------------------
def progress(iterable: Iterable, *, desc: str = "", total: int | None = None,
             enabled: bool = True) -> Iterable:
    """A tqdm progress bar on stderr when enabled (and tqdm is installed)."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the plot extra
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


class Timer:
    """Wall-clock timer: ``with Timer() as tm: ...; tm.seconds``."""

    def __enter__(self):
        self._t0 = time.perf_counter()
        self.seconds = float("nan")
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._t0
        return False


def machine_info() -> dict:
    """Where the numbers were measured: CPU/accelerator, core count, versions."""
    import jax

    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "device": getattr(dev, "device_kind", str(dev)),
        "n_devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


# --------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------
def to_jsonable(obj: Any) -> Any:
    """Convert NumPy/JAX scalars and arrays, dataclasses, tuples and paths for JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        v = float(obj)
        return v if math.isfinite(v) else str(v)
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):  # NumPy / JAX arrays
        arr = np.asarray(obj)
        return to_jsonable(arr.item()) if arr.ndim == 0 else to_jsonable(arr.tolist())
    return obj


def fmt(x: Any, digits: int = 3) -> str:
    """Format a number for a Markdown cell (significant digits, sci for tiny/huge)."""
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    if isinstance(x, bool | np.bool_):
        return "yes" if x else "**NO**"
    if isinstance(x, int | np.integer):
        return f"{int(x):,}"
    v = float(x)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    if abs(v) < 1e-3 or abs(v) >= 1e5:
        return f"{v:.{max(digits - 1, 1)}e}"
    return f"{v:.{digits}g}"


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
                   digits: int = 3) -> str:
    """A GitHub Markdown table; numbers formatted with ``fmt``.

    Example:
        >>> print(markdown_table(["a", "b"], [[1, 0.5], ["x", 1e-9]]))
        | a | b |
        |---|---|
        | 1 | 0.5 |
        | x | 1.00e-09 |
    """
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        # a literal "|" inside a cell (|x|, E[. | .]) must be escaped in Markdown tables
        lines.append("| " + " | ".join(fmt(c, digits).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)


def write_outputs(workdir: Path | str, *, name: str, title: str, config: Any,
                  results: dict, sections: Sequence[tuple[str, str]],
                  figures: Sequence[str] = ()) -> None:
    """Write ``results.json`` and ``results.md`` (title, command, machine, tables, figures)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    payload = {"experiment": name, "config": config, "machine": info,
               "command": command_line(name, config), **results}
    (workdir / "results.json").write_text(json.dumps(to_jsonable(payload), indent=2) + "\n")
    lines = [f"# {title}", "",
             f"Command: `{command_line(name, config)}`  ",
             f"Machine: {info['device']} ({info['platform']}, {info['cpu_count']} cores), "
             f"jax {info['jax']}, {info['date_utc']}", ""]
    for heading, body in sections:
        if heading:
            lines += [f"## {heading}", ""]
        lines += [body.rstrip(), ""]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{Path(f).stem}]({Path(f).name})" for f in figures]
        lines.append("")
    (workdir / "results.md").write_text("\n".join(lines))


def pyplot():
    """``matplotlib.pyplot`` with the non-interactive Agg backend (imported lazily)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def savefig(fig, workdir: Path | str, name: str, *, dpi: int = 90) -> str:
    """Save a figure as ``workdir/name.png`` (small: modest dpi), close it, return the path."""
    path = Path(workdir) / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return str(path)


# --------------------------------------------------------------------------------------
# Stored runs: a grid of (task, method, seed) runs that survives kills and splits into jobs
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GridConfig:
    """Base of the configs of experiments whose runs are stored (:class:`RunStore`): how a
    grid runs, none of it part of the protocol (:data:`GRID_FIELDS`)."""

    figure: bool = True
    progress: bool = True
    checkpoint_every: int = 1000  # steps between checkpoints of the run in training; 0: none
    merge: tuple[str, ...] = ()  # other workdirs whose finished runs (same protocol) are reused
    train: bool = True  # False: table from stored and merged runs only; missing ones listed

    def __post_init__(self):
        if self.checkpoint_every < 0:
            raise ValueError(f"`checkpoint_every` must be >= 0 (0: no checkpoints), got "
                             f"{self.checkpoint_every}")


#: The fields of :class:`GridConfig`.
GRID_FIELDS = tuple(f.name for f in dataclasses.fields(GridConfig))


def fmt_pm(vals: Sequence[float], digits: int = 3, *, significant: bool = False) -> str:
    """``mean ± std`` (sample std) of ``vals``, the single value, or "–" for none.

    ``digits`` decimals for both, or with ``significant`` the mean to ``digits`` significant
    digits and the spread to two (:func:`fmt`), for columns whose scale varies by row."""
    a = np.asarray(vals, np.float64)
    if a.size == 0:
        return "–"
    if significant:
        if a.size == 1:
            return fmt(float(a[0]), digits)
        return f"{fmt(float(a.mean()), digits)} ± {fmt(float(a.std(ddof=1)), 2)}"
    if a.size == 1:
        return f"{a[0]:.{digits}f}"
    return f"{a.mean():.{digits}f} ± {a.std(ddof=1):.{digits}f}"


def protocol_fingerprint(fields: dict, not_protocol: Sequence[str]) -> str:
    """The protocol of a config (its ``dataclasses.asdict`` or its JSON dict) without the
    ``not_protocol`` fields: what a stored run must match to be reused."""
    fields = {k: v for k, v in fields.items() if k not in not_protocol}
    return json.dumps(fields, sort_keys=True, default=str)


_MISMATCH = object()


def _read_run(f: Path, fp: str) -> dict | None:
    """The record stored in ``f`` with its arrays; ``None`` if there is no file, and
    ``_MISMATCH`` if it was stored under another fingerprint than ``fp``."""
    if not f.exists():
        return None
    with np.load(f, allow_pickle=False) as z:
        if str(z["fingerprint"]) != fp:
            return _MISMATCH
        rec = json.loads(str(z["record"]))
        rec.update({k: z[k] for k in z.files if k not in ("fingerprint", "record")})
    return rec


def savez_atomic(path: Path, **arrays: Any) -> None:
    """``np.savez(path, **arrays)`` through a temporary file and a rename: a run killed while
    writing leaves the previous file (or none), never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    """``path.write_text(text)`` through a temporary file and a rename (see
    :func:`savez_atomic`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_run(f: Path, fp: str, record: dict, arrays: dict) -> None:
    """Store ``record`` (JSON) and ``arrays`` under fingerprint ``fp`` in ``f``, atomically:
    a killed run leaves no half-written file."""
    savez_atomic(f, fingerprint=fp, record=json.dumps(to_jsonable(record)),
                 **{k: np.asarray(v) for k, v in arrays.items()})


class RunStore:
    """Finished runs on disk, so that an interrupted grid restarts where it stopped.

    ``runs/TASK__METHOD__SEED.npz`` holds the configuration's fingerprint, the run's record
    (JSON) and its NumPy arrays (every ``np.ndarray`` value of the record), written
    atomically; a file of another protocol is ignored. ``runs/tasks.json`` caches per-task
    references. ``checkpoint_dir`` is where the run in training keeps its checkpoints.
    """

    def __init__(self, workdir: Path | str, config: Any, not_protocol: Sequence[str]):
        self.dir = Path(workdir) / "runs"
        self.not_protocol = tuple(not_protocol)
        self.fingerprint = protocol_fingerprint(dataclasses.asdict(config), self.not_protocol)

    def _file(self, task: str, method: str, seed: int) -> Path:
        return self.dir / f"{task.replace('->', '_to_')}__{method}__{seed}.npz"

    def checkpoint_dir(self, task: str, method: str, seed: int) -> Path:
        """Where the run in training keeps its checkpoints (removed once it is stored)."""
        return self.dir.parent / "checkpoints" / self._file(task, method, seed).stem

    def load(self, task: str, method: str, seed: int) -> dict | None:
        """The stored record with its arrays and ``resumed=True``, or ``None``."""
        rec = _read_run(self._file(task, method, seed), self.fingerprint)
        if rec is None or rec is _MISMATCH:
            return None
        rec["resumed"] = True
        return rec

    def save(self, r: dict) -> None:
        """Store record ``r`` (keys ``task``, ``method``, ``seed``; arrays kept as arrays)."""
        arrays = {k: v for k, v in r.items() if isinstance(v, np.ndarray)}
        record = {k: v for k, v in r.items() if k not in arrays}
        _write_run(self._file(r["task"], r["method"], r["seed"]), self.fingerprint, record,
                   arrays)

    def get(self, task: str, method: str, seed: int, merged: MergedRuns | None = None,
            compute: Callable[[Path], dict] | None = None) -> dict | None:
        """The run from this store, else from ``merged``, else ``compute(checkpoint_dir)``
        (stored, its checkpoints removed); ``None`` when found nowhere and no ``compute``."""
        r = self.load(task, method, seed)
        if r is None and merged is not None:
            r = merged.load(task, method, seed)
        if r is None and compute is not None:
            ckpt = self.checkpoint_dir(task, method, seed)
            r = compute(ckpt)
            self.save(r)
            shutil.rmtree(ckpt, ignore_errors=True)
        return r

    def load_task(self, task: str) -> dict | None:
        f = self.dir / "tasks.json"
        if not f.exists():
            return None
        d = json.loads(f.read_text())
        return d.get(task) if d.get("fingerprint") == self.fingerprint else None

    def save_task(self, task: str, info: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        f = self.dir / "tasks.json"
        d = json.loads(f.read_text()) if f.exists() else {}
        if d.get("fingerprint") != self.fingerprint:
            d = {"fingerprint": self.fingerprint}
        d[task] = info
        write_text_atomic(f, json.dumps(d, indent=1))



class KeyedRunStore:
    """Finished runs stored one ``WORKDIR/runs/KEY.npz`` each, each under its own fingerprint
    (for grids whose methods have separate protocols, so that changing one method's settings
    keeps the others' runs).

    ``load(key, fp)`` looks in this workdir first and then in the ``merge`` workdirs, in
    order; a run loaded from elsewhere carries ``source`` (its workdir), and a file stored
    under another fingerprint is listed in ``mismatched`` and not used.

    Example:
        >>> import tempfile
        >>> store = KeyedRunStore(tempfile.mkdtemp())
        >>> store.save("a__1", '{"steps": 5}', {"loss": 0.5}, x=np.zeros(2))
        >>> store.load("a__1", '{"steps": 5}')["loss"], store.load("a__1", '{"steps": 6}')
        (0.5, None)
    """

    def __init__(self, workdir: Path | str, merge: Iterable[Path | str] = ()):
        self.workdir = Path(workdir)
        self.merge = [Path(d) for d in merge]
        for d in self.merge:
            if not d.is_dir():
                raise ValueError(f"`merge`: {str(d)!r} is not a directory")
        self.mismatched: list[str] = []

    def checkpoint_dir(self, key: str) -> Path:
        """Where the run ``key`` keeps its checkpoints while it trains."""
        return self.workdir / "checkpoints" / key

    def load(self, key: str, fp: str) -> dict | None:
        """The stored run ``key`` under fingerprint ``fp`` (arrays under their names), or None."""
        for i, workdir in enumerate([self.workdir, *self.merge]):
            f = workdir / "runs" / f"{key}.npz"
            rec = _read_run(f, fp)
            if rec is _MISMATCH:
                self.mismatched.append(str(f))
            elif rec is not None:
                rec["loaded"] = True
                if i > 0:
                    rec["source"] = str(workdir)
                return rec
        return None

    def save(self, key: str, fp: str, record: dict, **arrays: Any) -> None:
        """Store the run ``key`` (``record`` JSON-able, ``arrays`` NumPy) atomically."""
        _write_run(self.workdir / "runs" / f"{key}.npz", fp, record, arrays)

class MergedRuns:
    """Finished runs of other workdirs (``--merge``) under the same protocol: their stored
    ``runs/*.npz`` (with arrays) and the ``runs`` of their ``results.json`` (metrics only:
    runs made before runs were stored). A source whose per-task references (``check_keys``
    of its ``tasks``) differ from this invocation's was evaluated on other data: an error."""

    def __init__(self, dirs: Iterable[str], config: Any, not_protocol: Sequence[str],
                 check_keys: Sequence[str]):
        self.stores, self.records, self.tasks = [], {}, []
        self.check_keys = tuple(check_keys)
        fp = protocol_fingerprint(dataclasses.asdict(config), not_protocol)
        for d in dirs:
            d = Path(d)
            if not d.is_dir():
                raise ValueError(f"`merge`: {str(d)!r} is not a directory")
            self.stores.append(RunStore(d, config, not_protocol))
            res = d / "results.json"
            if res.exists():
                js = json.loads(res.read_text())
                other = protocol_fingerprint(js.get("config", {}), not_protocol)
                if other != fp:
                    raise ValueError(f"`merge`: {str(res)!r} was made under another protocol "
                                     f"({other}; this run: {fp})")
                for r in js.get("runs", []):
                    r = {k: v for k, v in r.items() if k not in ("resumed", "source")}
                    self.records.setdefault((r["task"], r["method"], r["seed"]),
                                            dict(r, resumed=True, source=str(d)))
                self.tasks.append((str(res), js.get("tasks", {})))

    def load(self, task: str, method: str, seed: int) -> dict | None:
        for store in self.stores:
            r = store.load(task, method, seed)
            if r is not None:
                return dict(r, source=str(store.dir.parent))
        r = self.records.get((task, method, seed))
        return dict(r) if r is not None else None

    def check_task(self, task: str, info: dict) -> None:
        for src, tasks in self.tasks:
            other = tasks.get(task)
            if other is None:
                continue
            for k in self.check_keys:
                a, b = float(other[k]), float(info[k])
                if abs(a - b) > 1e-6 * max(abs(a), abs(b)):
                    raise ValueError(f"`merge`: {src!r} has {k} = {a!r} for {task}, this "
                                     f"invocation {b!r}: its runs were evaluated on other data")


def provenance(seconds: float, runs: Sequence[dict], store: RunStore,
               missing: Sequence[str]) -> str:
    """A sentence on where the runs of a table come from: trained, resumed mid-training,
    loaded from this workdir or merged from others, or missing."""
    text = f"Total wall-clock of this invocation {seconds:.0f} s."
    mid = [r for r in runs if r.get("resumed_from")]
    if mid:
        text += (f" {len(mid)} runs resumed mid-training from a checkpoint; their s / run "
                 f"counts the steps after it only.")
    n_loaded = sum(bool(r.get("resumed")) for r in runs)
    if n_loaded:
        sources = sorted({r["source"] for r in runs if r.get("source")})
        n_merged = sum(bool(r.get("source")) for r in runs)
        parts = ([f"{n_loaded - n_merged} from this workdir's {store.dir} (an earlier "
                  f"invocation)"] if n_loaded > n_merged else [])
        parts += [f"{n_merged} merged from " + ", ".join(sources)] if n_merged else []
        text += (f" {n_loaded} of {len(runs)} runs were not trained by it but loaded: "
                 + "; ".join(parts) + ". Each run's s / run is its own.")
    if missing:
        text += (f" Not run (--train=False), left out of the table: {len(missing)} runs ("
                 + ", ".join(missing) + ").")
    return text


# --------------------------------------------------------------------------------------
# Gaussian tasks
# --------------------------------------------------------------------------------------
def random_gaussian_pair(rng: np.random.Generator, d: int, cond: float = 10.0):
    """``(m0, S0, m1, S1)``: random means (the target's shifted by 1) and SPD covariances
    (:func:`random_spd` with condition number ``cond``) of two Gaussians in ``R^d``."""
    m0, m1 = rng.normal(size=d), rng.normal(size=d) + 1.0
    return m0, random_spd(rng, d, cond), m1, random_spd(rng, d, cond)


def gaussian_sampler(m: np.ndarray, s: np.ndarray, dtype: Any = None) -> Callable:
    """A pure JAX sampler ``(key, n) -> (n, d)`` of ``N(m, s)`` (default dtype float32)."""
    import jax
    import jax.numpy as jnp

    dtype = jnp.float32 if dtype is None else dtype
    mj = jnp.asarray(m, dtype)
    lj = jnp.asarray(np.linalg.cholesky(s), dtype)

    def sample(key, n):
        z = jax.random.normal(key, (n, mj.shape[0]), dtype=dtype)
        return mj[None, :] + z @ lj.T

    return sample


def sample_panel(ax, samples: np.ndarray | None = None, xs: np.ndarray | None = None, *,
                 target: np.ndarray | None = None, size: float = 4,
                 end_color: str | None = None) -> None:
    """A 2-D panel without ticks: ``target`` points in light grey, ``samples`` in blue,
    trajectories ``xs`` ``(T, n, 2)`` as olive lines from black starting points (their end
    points in ``end_color``); a note when neither samples nor trajectories are given."""
    ax.set_xticks([])
    ax.set_yticks([])
    if target is not None:
        ax.scatter(target[:, 0], target[:, 1], s=1, c="0.8", rasterized=True)
    if samples is None and xs is None:
        ax.text(0.5, 0.5, "no stored samples", ha="center", transform=ax.transAxes)
        return
    if samples is not None:
        ax.scatter(samples[:, 0], samples[:, 1], s=1, c="tab:blue", alpha=0.5,
                   rasterized=True)
    if xs is not None:
        for k in range(xs.shape[1]):
            ax.plot(xs[:, k, 0], xs[:, k, 1], lw=0.5, color="tab:olive", alpha=0.8)
        ax.scatter(xs[0, :, 0], xs[0, :, 1], s=size, c="k", zorder=3)
        if end_color is not None:
            ax.scatter(xs[-1, :, 0], xs[-1, :, 1], s=size, c=end_color, zorder=3)
