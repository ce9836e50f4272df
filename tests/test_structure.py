"""The package's structure, read from its sources: no import circles, one home for the
checkpoint layout."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import mentor_fn

PACKAGE = Path(mentor_fn.__file__).parent
FORMAT_HOME = "_mentee_checkpoint.py"
GENERIC_FILE_LAYER = "_checkpoint.py"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node that can run: ``if TYPE_CHECKING:`` blocks are for type checkers only."""
    nodes, pending = [], [tree]
    while pending:
        node = pending.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))
    return nodes


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules ``path`` imports when it runs, at its top or lazily
    inside functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
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
                # "from . import _layers" imports a module; "from . import __version__"
                # runs the package itself.
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in modules else source)
    return {module for module in found if module in modules and module != name}


def test_no_import_circles_lazy_imports_included():
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    graph = {module_name(path): imported_modules(path, modules) for path in paths}
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
    assert "mentor_fn._cli" not in graph["mentor_fn._demo"] | graph["mentor_fn._plot"]


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
        if path.name == FORMAT_HOME:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            generic_header = path.name == GENERIC_FILE_LAYER and CONTENTS_READ.search(line)
            if KEY_READ.search(line) or (CONTENTS_READ.search(line) and not generic_header):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []
    # The check finds what it looks for.
    home = (PACKAGE / FORMAT_HOME).read_text()
    assert KEY_READ.search(home) and CONTENTS_READ.search(home)


README = PACKAGE.parent / "README.md"


def _readme_module_order() -> list[str]:
    """The modules the README's "Modules" section names, in its order (dotted names)."""
    text = README.read_text()
    section = text[
        text.index("\n## Modules\n") : text.index("\n## ", text.index("\n## Modules\n") + 1)
    ]
    order = []
    for name in re.findall(r"`([\w/]+\.py|\w+/)`", section):
        if name.endswith("/"):
            order.append(f"mentor_fn.{name[:-1]}")
        else:
            order.append(f"mentor_fn.{name[:-3]}")
    return order


def test_the_readme_lists_every_module_in_an_order_where_imports_point_up():
    """A newcomer reads the architecture from the README's module list: every module
    is there, and each imports only modules listed above it (a subpackage counts as
    one entry)."""
    order = _readme_module_order()
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}

    def entry(module: str) -> str:
        for package in ("mentor_fn.testing", "mentor_fn.integrations"):
            if module == package or module.startswith(package + "."):
                return package
        return module

    listed = {entry(module) for module in modules} - {"mentor_fn"}
    assert sorted(listed - set(order)) == []
    assert sorted(set(order) - listed) == []
    position = {name: number for number, name in enumerate(order)}
    upward = []
    for path in paths:
        importer = entry(module_name(path))
        if importer == "mentor_fn":
            continue
        for imported in imported_modules(path, modules):
            target = entry(imported)
            if target not in ("mentor_fn", importer) and position[target] > position[importer]:
                upward.append(f"{importer} imports {target}, listed below it")
    assert upward == []
