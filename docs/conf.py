"""Sphinx configuration for the torchrl_gagpo documentation.

Build from the repository root (CI runs exactly this)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Needs the package installed (``pip install -e ".[docs]"``). The build never
touches the network: no intersphinx inventories, and MathJax is only referenced
by the generated HTML.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The repository root first, so autodoc documents this checkout.
sys.path.insert(0, str(ROOT))


import torchrl_gagpo  # noqa: E402 - after the sys.path line above

# -- project -------------------------------------------------------------------------
project = "torchrl_gagpo"
author = "torchrl_gagpo developers"
copyright = "torchrl_gagpo developers"  # noqa: A001
release = torchrl_gagpo.__version__
version = ".".join(release.split(".")[:2])

# -- general ---------------------------------------------------------------------------
extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

# No network at build time: no intersphinx (not loaded at all).

# -- MyST ------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# -- autodoc / napoleon ----------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
# Show defaults as written in the source (``corpus=DEFAULT_CORPUS``, ``eps=1e-6``).
autodoc_preserve_defaults = True
# Undocumented overrides must not pull torch / torchrl docstrings into these pages.
autodoc_inherit_docstrings = False
autodoc_default_options: dict[str, object] = {}

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
# Napoleon's own field lists render grouped names ("min_rooms, max_rooms (int)") correctly.
napoleon_use_param = False
napoleon_use_keyword = False
napoleon_use_rtype = False
napoleon_include_init_with_doc = False

# -- HTML ------------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"torchrl_gagpo {release}"
html_static_path: list[str] = []
html_show_sourcelink = False


# -- hooks -----------------------------------------------------------------------------
def _init_signature(app, cls) -> str | None:
    """``__init__``'s signature of ``cls``, without ``self``, as autodoc would print it."""
    from sphinx.ext.autodoc.preserve_defaults import update_defvalue
    from sphinx.util import inspect as sphinx_inspect

    init = cls.__dict__.get("__init__")
    if init is None:
        init = next((c.__dict__["__init__"] for c in cls.__mro__ if "__init__" in c.__dict__), None)
    if init is None:
        return None
    try:
        update_defvalue(app, init, bound_method=True)
        sig = sphinx_inspect.signature(init, bound_method=True, type_aliases=app.config.autodoc_type_aliases)
    except (TypeError, ValueError):
        return None
    return sphinx_inspect.stringify_signature(sig, show_return_annotation=False, unqualified_typehints=True)


def _fix_class_signature(app, what, name, obj, options, signature, return_annotation):
    """Replace the ``(*args, **kwargs)`` of torch / torchrl ``__new__`` hooks by ``__init__``'s."""
    if what != "class" or not signature or "*args" not in signature:
        return None
    init_sig = _init_signature(app, obj)
    if init_sig is None or "*args" in init_sig:
        return None
    return init_sig, return_annotation


def _source_class_docstring(cls) -> str | None:
    """The docstring written in the class body, read from the source file."""
    import ast
    import inspect

    try:
        source = inspect.getsource(sys.modules[cls.__module__])
    except (KeyError, OSError, TypeError):
        return None
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            return ast.get_docstring(node)
    return None


def _restore_class_docstring(app, what, name, obj, options, lines):
    """Tensorclasses replace ``__doc__`` by their signature: document the written docstring."""
    if what != "class" or not isinstance(obj, type):
        return
    doc = obj.__doc__ or ""
    if not doc.startswith(f"{obj.__name__}("):
        return
    written = _source_class_docstring(obj)
    if not written:
        return
    from sphinx.ext.napoleon import GoogleDocstring

    lines[:] = GoogleDocstring(written, app.config, app, what, name, obj, options).lines()


def setup(app):
    app.connect("autodoc-process-signature", _fix_class_signature)
    app.connect("autodoc-process-docstring", _restore_class_docstring, priority=600)
    return {"parallel_read_safe": True}
