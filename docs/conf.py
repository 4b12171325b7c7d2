"""Sphinx configuration of the fmjax API reference (``make docs``).

The docstrings are Google style with reStructuredText roles (``:math:``, ``.. math::``,
``:func:``), which Sphinx's napoleon and mathjax extensions render as written.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import fmjax  # noqa: E402

project = "fmjax"
author = "fmjax contributors"
release = version = fmjax.__version__
copyright = "2026, fmjax contributors"  # noqa: A001

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
]
autosummary_generate = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # NamedTuple "Attributes:" sections would duplicate the fields
# Shape-annotated aliases (fmjax._typing) are shown as their jaxtyping spelling, e.g.
# ``Float[ArrayLike, 'd d']``, so the reader sees the shape in the signature.
def _alias_text(obj) -> str | None:
    name = getattr(obj, "__name__", "")
    if "[" in name:  # Float[jaxlib._jax.Array, 'd'] -> Float[Array, 'd']
        return name.replace("jaxlib._jax.Array", "Array")
    args = [getattr(a, "__name__", "") for a in getattr(obj, "__args__", ())]
    if name == "Union" and len(args) >= 2 and "ndarray" in args[1]:  # the ArrayLike unions
        return args[0].replace("jaxlib._jax.Array", "ArrayLike")
    return None


import fmjax._typing as _typing  # noqa: E402

autodoc_type_aliases = {}
for _name in _typing.__all__:
    _text = _alias_text(getattr(_typing, _name))
    if _text is not None:
        autodoc_type_aliases[_name] = _text
autodoc_type_aliases["VelocityField"] = "Callable[[t, Float[Array, 'd']], Float[Array, 'd']]"
autodoc_type_aliases["Key"] = "PRNGKeyArray"
autodoc_type_aliases["Sampler"] = "Callable[[PRNGKeyArray, int], Float[Array, 'n d']]"
autodoc_type_aliases["LogDensity"] = "Callable[[t, Float[Array, 'd']], Float[Array, '']]"
intersphinx_mapping = {}  # offline builds: no inventories are fetched
exclude_patterns = ["_build", "results/**"]
html_theme = "furo"
html_title = f"fmjax {release}"
nitpicky = False

# Render jaxtyping aliases by name in signatures (otherwise TypeAliasForwardRef("Float[...]")).
import sphinx.util.inspect as _si  # noqa: E402

_si.TypeAliasForwardRef.__repr__ = lambda self: self.name
