"""The notebooks run top to bottom (they cannot rot).

``notebooks/quickstart.ipynb`` is executed with nbclient in a fresh IPython kernel, with
``FMJAX_QUICK=1`` (small sizes and ~100 training steps). The notebook asserts its own
numbers against independent references as it goes: Monte-Carlo variances of the interpolants
against :math:`(1-t)^2 + t^2` and 1, ``gaussian_velocity`` against the notes' Exercise 4(a)
formula, continuity residuals (zero for the true pairs, not for a wrong velocity), the McCann
kinetic energy against :math:`\\mathbb{E}\\|T(X_0) - X_0\\|^2`, and the likelihood of the
McCann flow against SciPy-style Gaussian log-densities. ``notebooks/compose.ipynb`` builds a
training loop from the public pieces and asserts it reproduces ``fm.fit``'s loss curve to
1e-6, a user-defined coupling's pair cost between exact OT (SciPy) and independent pairs, and
``fm.GaussianVelocity`` in ``integrate``/``kinetic_energy``/``log_likelihood`` against its
closed forms. These tests fail on any exception or failed assertion in any cell, and check
the notebooks are stored without outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK = NOTEBOOKS / "quickstart.ipynb"


@pytest.mark.parametrize("name,min_cells", [("quickstart.ipynb", 8), ("compose.ipynb", 5)])
def test_notebook_stored_without_outputs(name, min_cells):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= min_cells
    assert all(not c.outputs and c.execution_count is None for c in code), \
        "strip the outputs before committing (small diffs)"


def _execute(path, tmp_path, monkeypatch):
    monkeypatch.setenv("FMJAX_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the kernel is a new process: it must not inherit the test suite's strict JAX flags
    # through the environment, and runs as a user would (float32 default)
    for var in ("JAX_ENABLE_X64", "JAX_NUMPY_RANK_PROMOTION", "JAX_NUMPY_DTYPE_PROMOTION"):
        monkeypatch.delenv(var, raising=False)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    return nb


def test_compose_notebook_runs(tmp_path, monkeypatch):
    nb = _execute(NOTEBOOKS / "compose.ipynb", tmp_path, monkeypatch)
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.outputs if o.output_type == "stream")
    assert "quick run" in outputs and "largest relative difference" in outputs
    assert os.listdir(tmp_path) == [], "the notebook must not write files"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nb = _execute(NOTEBOOK, tmp_path, monkeypatch)
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.outputs if o.output_type == "stream")
    assert "quick" in outputs  # the QUICK switch reached the kernel
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs)
    assert images >= 6, f"expected the inline plots, got {images}"
    assert os.listdir(tmp_path) == [], "the notebook must not write files"
