"""The package's structure, read from its sources: the layers contract, no import circles
(type-checking and lazy imports included), one home for the checkpoint layout."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import mentor_fn

PACKAGE = Path(mentor_fn.__file__).parent
FORMAT_HOME = "_files/mentee_file.py"
GENERIC_FILE_LAYER = "_files/checkpoint.py"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules ``path`` imports: at its top, lazily inside functions, or
    for type checkers only (a circle through ``if TYPE_CHECKING:`` is still a circle
    a reader has to untangle)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                # "from . import fields" imports a module; "from .. import Curriculum"
                # runs the package itself.
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in modules else source)
    return {module for module in found if module in modules and module != name}


def test_no_import_circles_lazy_and_type_checking_imports_included():
    graph = import_graph()
    circles = []
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for following in sorted(graph[node]):
                if following == start:
                    circles.append(" -> ".join([*trail, start]))
                elif following not in trail and following > start:
                    stack.append((following, [*trail, following]))
    assert circles == []
    # The rendering has its own module: the command line only parses and dispatches.
    assert (
        "mentor_fn._app.cli" not in graph["mentor_fn._app.demo.run"] | graph["mentor_fn._app.plot"]
    )


# The keys of a Mentee checkpoint (and of a distributed checkpoint's plain part)
# that no other dict of the package uses ("curriculum" and "model" are common
# keys of other state dicts; reads through a ``contents`` variable are caught below).
CHECKPOINT_KEYS = (
    "model_class",
    "constructor",
    "scheduler_recipe",
    "best_weights",
    "rng_state",
    "cuda_rng_states",
    "python_rng_state",
    "numpy_rng_state",
    "optimizer_state_keys",
)
KEY_NAMES = "|".join(CHECKPOINT_KEYS)
KEY_READ = re.compile(rf"""(\[\s*|\.get\(\s*|\.pop\(\s*)["']({KEY_NAMES})["']""")
CONTENTS_READ = re.compile(r"\bcontents\s*(\[|\.get\(|\.pop\()")


def test_only_the_format_module_reads_checkpoint_keys():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative == FORMAT_HOME:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            generic_header = relative == GENERIC_FILE_LAYER and CONTENTS_READ.search(line)
            if KEY_READ.search(line) or (CONTENTS_READ.search(line) and not generic_header):
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert offenders == []
    # The check finds what it looks for.
    home = (PACKAGE / FORMAT_HOME).read_text()
    assert KEY_READ.search(home) and CONTENTS_READ.search(home)


# The private layers, bottom up. A module imports only from its own layer and
# those below it. The package root re-exports them; the public packages
# (``testing``, ``integrations``) build on the root and any layer, never on
# each other, and no layer imports them.
LAYERS = ("_core", "_wrapper", "_schedules", "_files", "_mentee", "_app")
ABOVE_THE_LAYERS = {"mentor_fn": 0, "mentor_fn.testing": 1, "mentor_fn.integrations": 1}


def rank(module: str) -> tuple[int, str]:
    """``(height, name of the unit)``: equal heights of different units are not ordered."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1]), parts[1]
    if len(parts) > 1 and f"mentor_fn.{parts[1]}" in ABOVE_THE_LAYERS:
        unit = f"mentor_fn.{parts[1]}"
        return len(LAYERS) + 1 + ABOVE_THE_LAYERS[unit], unit
    if module in ("mentor_fn", "mentor_fn.__main__"):
        return len(LAYERS), "mentor_fn"
    raise AssertionError(f"{module} belongs to no layer: put it in one of {LAYERS}")


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, modules) for path in paths}


def test_the_package_root_holds_only_the_layers_and_the_public_packages():
    entries = {path.name for path in PACKAGE.iterdir() if path.name != "__pycache__"}
    public = {name.rpartition(".")[2] for name in ABOVE_THE_LAYERS} - {"mentor_fn"}
    assert entries == {"__init__.py", "__main__.py", "py.typed", *LAYERS, *public}


def test_every_import_points_down_the_layers():
    upward = []
    for importer, imported in import_graph().items():
        height, unit = rank(importer)
        for target in imported:
            target_height, target_unit = rank(target)
            if target_unit != unit and target_height >= height:
                upward.append(f"{importer} imports {target}")
    assert sorted(upward) == []


def test_the_layers_check_finds_an_upward_import():
    """The contract is not vacuous: the core really sits below the wrapper."""
    graph = import_graph()
    assert rank("mentor_fn._core.state") < rank("mentor_fn._wrapper.curriculum")
    assert "mentor_fn._core.state" in graph["mentor_fn._wrapper.curriculum"]
    assert rank("mentor_fn._wrapper.curriculum")[0] >= rank("mentor_fn._core.state")[0] + 1
