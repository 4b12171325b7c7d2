"""Every ``>>>`` example in fmjax's docstrings runs and prints what it says.

Modules are discovered with :mod:`pkgutil`, so a new module cannot escape. The examples are
written for a user's default JAX configuration (float32, no ``jax_enable_x64``): this file
switches x64 off while they run (and back on afterwards), but keeps the strict rank and dtype
promotion of ``conftest.py``, so an example must also be free of implicit promotions.

The reference each doctest is checked against is the output written in the docstring (a
closed form worked out by hand next to it: a symmetric mixture's zero velocity, the N(0, 1)
log-density -0.9189, the notes' rotation with zero continuity residual...).

A second test asserts that every public class and function (``fmjax.__all__``,
``fmjax.nn.__all__``, ``fmjax.datasets.__all__``) has a docstring with an example.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import jax
import pytest

import fmjax

MODULES = ["fmjax"] + sorted(m.name for m in pkgutil.walk_packages(fmjax.__path__, "fmjax."))

# Public names whose docstring has no ``>>>`` example yet. Every entry comes from a module
# that was still being written when this list was made; strict xfail, so an entry must be
# removed as soon as its example lands.
MISSING_EXAMPLES: set[str] = set()

# Public names that are re-exported third-party objects, whose docstring belongs to their
# library (``FlowResults`` is ``diffrax.RESULTS``). They are documented by a ``#:`` comment
# in the fmjax module instead, and must be used in one of that module's examples.
THIRD_PARTY: dict[str, str] = {}


def _public_names() -> list[str]:
    names = list(fmjax.__all__)
    names += [f"nn.{n}" for n in fmjax.nn.__all__]
    names += [f"datasets.{n}" for n in fmjax.datasets.__all__]
    names += [f"couplings.{n}" for n in fmjax.couplings.__all__ if n not in fmjax.__all__]
    return names


def _resolve(name: str):
    obj = fmjax
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _documentable(obj) -> bool:
    """Classes and functions carry docstrings; constants (ints, tuples, dicts) cannot."""
    return inspect.isclass(obj) or inspect.isroutine(obj)


@pytest.fixture
def user_config():
    """Run with JAX's default precision (float32), as a user's session would."""
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


def test_modules_discovered():
    # The package has (at least) these modules; discovery must find every one of them.
    expected = {"paths", "closed_form", "ot", "flows", "nn", "datasets", "couplings", "metrics",
                "_fit", "_step", "_loss"}
    assert {f"fmjax.{m}" for m in expected} <= set(MODULES)


# Modules whose examples use names they do not import (they relied on the module's globals,
# which a reader copying the example does not have). Strict xfail: remove an entry once its
# examples start with their own imports (``import jax.numpy as jnp, fmjax as fm``).
EXAMPLES_WITHOUT_IMPORTS: set[str] = set()


@pytest.mark.parametrize(
    "module_name",
    [
        pytest.param(
            m,
            marks=pytest.mark.xfail(strict=True, reason="examples lack their imports")
            if m in EXAMPLES_WITHOUT_IMPORTS
            else (),
        )
        for m in MODULES
    ],
)
def test_doctests(module_name, user_config):
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    out: list[str] = []
    # globs={}: each docstring's examples run in a fresh namespace, as a reader would run them
    tests = finder.find(module, module_name, globs={})
    for test in tests:
        runner.run(test, out=out.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {module_name}:\n" + "".join(out)
    if module_name.split(".")[-1] in {"paths", "closed_form", "ot", "flows", "couplings",
                                      "metrics", "_fit", "_step", "_loss"}:
        # public modules with re-exported API: they must actually have examples
        assert result.attempted > 0, f"{module_name} has no doctest examples"


# Public constants (tuples, dicts, ints) cannot carry a docstring of their own.
CONSTANTS = {"couplings.COUPLINGS", "EXACT_MAX_SIZE", "couplings.OT_SOLVERS", "nn.ACTIVATIONS",
             "datasets.TASKS", "datasets.SAMPLERS"}


def test_constants_are_only_the_known_ones():
    # A public name that is neither a class nor a function must be a known constant, so a
    # documentable object cannot slip past the example check below.
    assert {n for n in _public_names() if not _documentable(_resolve(n))} == CONSTANTS


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            n,
            marks=pytest.mark.xfail(strict=True, reason="example not written yet")
            if n in MISSING_EXAMPLES
            else (),
        )
        for n in _public_names()
        if n not in CONSTANTS
    ],
)
def test_public_name_has_example(name):
    if name in THIRD_PARTY:
        module = importlib.import_module(THIRD_PARTY[name])
        assert _resolve(name) is getattr(module, name)
        tests = doctest.DocTestFinder(exclude_empty=True).find(module, module.__name__, globs={})
        sources = [ex.source for t in tests for ex in t.examples]
        assert any(f"fm.{name}" in s for s in sources), f"no example of {module.__name__} uses {name}"
        return
    doc = inspect.getdoc(_resolve(name)) or ""
    assert doc.strip(), f"fmjax.{name} has no docstring"
    assert ">>>" in doc, f"fmjax.{name} has a docstring but no `>>>` example"


def test_missing_list_is_current():
    # Every xfail entry must name a real public name or module (a typo would hide nothing).
    names = set(_public_names())
    assert MISSING_EXAMPLES <= names, sorted(MISSING_EXAMPLES - names)
    assert set(THIRD_PARTY) <= names, sorted(set(THIRD_PARTY) - names)
    for name in THIRD_PARTY:  # really a third-party object (else it needs its own docstring)
        assert not getattr(_resolve(name), "__module__", "fmjax").startswith("fmjax")
    assert EXAMPLES_WITHOUT_IMPORTS <= set(MODULES), sorted(EXAMPLES_WITHOUT_IMPORTS - set(MODULES))
