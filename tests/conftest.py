"""Test configuration: the strict JAX numerics the best JAX libraries test with.

By default every test runs with float64 available, ``jax_numpy_rank_promotion="raise"``
and ``jax_numpy_dtype_promotion="strict"``. ``pytest --debug-nans`` additionally turns on
``jax_debug_nans`` (a separate CI step).
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


def pytest_addoption(parser):
    parser.addoption("--debug-nans", action="store_true", default=False,
                     help="run with jax_debug_nans=True")


def pytest_configure(config):
    if config.getoption("--debug-nans"):
        jax.config.update("jax_debug_nans", True)


#: End-to-end runs of the experiments and notebooks (tiny configs, but each compiles and
#: trains several models): the ``slow`` tier, ``make test-slow``.
SLOW_FILES = ("test_exp_", "test_experiments.py", "test_notebook.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name.startswith(SLOW_FILES):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    import numpy as np

    return np.dtype(request.param)
