"""Sphinx configuration of mentor_fn's documentation site.

Build it from the repository root (with the docs extra installed)::

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html

``-W`` turns every warning into an error and ``-n`` (nitpicky) reports every
cross-reference that resolves to nothing, so a renamed function breaks the
build instead of leaving a dead link.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import mentor_fn

project = "mentor_fn"
author = "the mentor_fn authors"
copyright = "the mentor_fn authors"
release = mentor_fn.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "benchmarks/*.txt"]

# MyST: ``{literalinclude}``-style directives in backticks, headings get anchors
# that links like ``design.md#the-invariant`` can reach.
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# Docstrings are Google style; their types are in the signatures.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_preserve_defaults = True

nitpicky = True
# Names no documentation of ours defines: torch's, the frameworks', Python's
# typing helpers (intersphinx would link them, but needs the internet), and the
# private classes some public functions return (their public side is documented
# with the function).
nitpick_ignore_regex = [
    ("py:.*", r"mentor_fn(\.integrations)?\._.*"),
    # A Raises entry naming several builtin exceptions at once ("ValueError / TypeError").
    ("py:exc", r"\w+( / \w+)+"),
    (
        "py:.*",
        r"(torch|lightning|transformers|accelerate|deepspeed|hypothesis|optree|numpy)(\..*)?",
    ),
    ("py:.*", r"(nn|optim|Tensor|Module|Optimizer|LRScheduler)(\..*)?"),
    ("py:.*", r"(typing|collections\.abc|abc|os|pathlib|enum|types|datetime)\..*"),
    ("py:class", r"(Any|Callable|Iterable|Iterator|Mapping|Sequence|Hashable|TypeVar|Path)"),
    ("py:class", r"(PathLike|BinaryIO|IO|Literal|Self|Protocol|NamedTuple)(\[.*\])?"),
]


def _no_inline_type(
    app: object, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """Undo napoleon's reading of a property's first words as its type.

    Napoleon takes ``first words: the rest`` on a property's or attribute's
    first line as ``type: description`` and moves the words to a ``:type:``
    field. Here every type is in the annotations, so such a field is a
    misreading: connected after napoleon (priority 600 > 500), this puts the
    words back where they were written.
    """
    if what not in ("property", "attribute") or not lines or not lines[-1].startswith(":type: "):
        return
    words = lines.pop()[len(":type: ") :]
    while lines and not lines[-1].strip():
        lines.pop()
    first = next((index for index, line in enumerate(lines) if line.strip()), None)
    if first is None:
        lines.append(words)
    else:
        lines[first] = f"{words}: {lines[first]}"


def _no_return_type(
    app: object, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """Undo napoleon's reading of a Returns section's first words as its type.

    ``Returns: The report: what was carried`` becomes ``:rtype: The report``
    and a description without those words. Return types here are in the
    annotations, and a type is never two words in a row: such an ``:rtype:``
    goes back into the description.
    """
    for index, line in enumerate(lines):
        words = line[len(":rtype: ") :]
        if line.startswith(":rtype: ") and re.search(r"[A-Za-z_]\w*\s+[A-Za-z_]", words):
            returns = next(i for i in range(index) if lines[i].startswith(":returns: "))
            lines[returns] = f":returns: {words}: {lines[returns][len(':returns: ') :]}"
            del lines[index]
            return


def _private_name(app: object, env: object, node: Any, contnode: Any) -> Any:
    """A reference to a name the package defines but does not document (a private
    helper, a module constant) stays code, unlinked, instead of a warning.

    Anything else that resolves to nothing (a typo, a renamed public name) still
    warns: the name must exist in one of the package's modules.
    """
    target = node.get("reftarget", "").lstrip("~.")
    if node.get("refdomain") != "py" or not re.fullmatch(r"[A-Za-z_][\w.]*", target):
        return None
    name = target.rsplit(".", 1)[-1]
    for module_name, module in list(sys.modules.items()):
        if module_name.split(".")[0] == "mentor_fn" and name in vars(module):
            return contnode
    return None


def setup(app: Any) -> None:
    app.connect("autodoc-process-docstring", _no_inline_type, priority=600)
    app.connect("autodoc-process-docstring", _no_return_type, priority=600)
    app.connect("missing-reference", _private_name)


html_theme = "furo"
html_title = f"mentor_fn {release}"
html_static_path: list[str] = []
