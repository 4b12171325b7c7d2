"""``pip install`` of the built wheel into a clean virtual environment works.

The wheel is built from a copy of the project's packaging inputs (``pyproject.toml``,
``fmjax/``, ``README.md``) in a temporary directory, so no stale ``build/`` folder of the
checkout can leak files into it, and the checkout is left untouched. It is then installed,
without dependencies and without an index, into a fresh ``venv`` created *without*
``--system-site-packages``; ``python -c "import fmjax"`` runs there with the project
venv's ``site-packages`` on ``PYTHONPATH`` for the third-party dependencies only (a
``PYTHONPATH`` entry does not execute ``.pth`` files, so the project's editable install is
not visible) and must import fmjax from the new venv, not from the checkout.

Building uses ``--no-build-isolation`` (no network, about a second); it needs setuptools
>= 68 and wheel in the running interpreter, which the ``test`` extra installs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, **kw):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert res.returncode == 0, f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    major = int(version("setuptools").split(".")[0])
    assert major >= 68, (f"building the wheel needs setuptools>=68 (pyproject's build-system); "
                         f"this interpreter has {version('setuptools')}: pip install -e '.[test]'")
    src = tmp_path_factory.mktemp("src")
    shutil.copy(ROOT / "pyproject.toml", src)
    for extra in ("README.md", "LICENSE"):
        if (ROOT / extra).exists():
            shutil.copy(ROOT / extra, src)
    shutil.copytree(ROOT / "fmjax", src / "fmjax",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheelhouse")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-q", "-w", str(out), str(src)])
    wheels = list(out.glob("fmjax-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "fmjax").glob("*.py")}
    assert sources, "no fmjax/*.py found"
    assert sources <= names, f"missing from the wheel: {sorted(sources - names)}"
    assert "fmjax/py.typed" in names  # PEP 561 marker: type checkers use our annotations
    top = {n.split("/")[0] for n in names}
    assert top == {"fmjax", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1]
                   + ".dist-info"}, top
    for unwanted in ("tests", "experiments", "benchmarks", "notebooks", "docs"):
        assert not any(n.startswith(unwanted + "/") for n in names), unwanted


def test_wheel_metadata_matches_pyproject(wheel):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    zf = zipfile.ZipFile(wheel)
    meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    meta = zf.read(meta_name).decode()
    assert f"Version: {project['version']}" in meta
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    for dep in project["dependencies"]:
        name = dep.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip()
        assert any(name in r for r in requires), f"dependency {name} missing from METADATA"


def test_install_into_clean_venv(wheel, tmp_path):
    env_dir = tmp_path / "clean-venv"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
    py = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # the project's pip installs into the new interpreter (pip >= 22.3: --python)
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
          "--no-index", "-q", str(wheel)])
    site = sysconfig.get_paths()["purelib"]  # the project venv: third-party deps only
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = site
    code = ("import fmjax, jax.numpy as jnp; "
            "print(fmjax.__file__); "
            "print(float(fmjax.gaussian_w2(jnp.zeros(1), jnp.eye(1), jnp.ones(1), jnp.eye(1))))")
    res = _run([str(py), "-c", code], cwd=tmp_path, env=env)
    lines = res.stdout.strip().splitlines()
    installed = Path(lines[0]).resolve()
    assert env_dir.resolve() in installed.parents, f"imported from {installed}, not the venv"
    assert ROOT not in installed.parents
    # W2 between N(0, 1) and N(1, 1) is the distance of the means, 1 (Bures with equal covs)
    assert abs(float(lines[1]) - 1.0) < 1e-6
