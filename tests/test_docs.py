"""The documentation: every public name has an API entry, the site builds without a
warning, and the commands the README and the getting-started page show are the
ones CI and the tools run."""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import mentor_fn

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
GETTING_STARTED = DOCS / "getting-started.md"
PACKAGE = Path(mentor_fn.__file__).parent


def _project_field(name: str) -> str:
    """A string field of pyproject.toml's [project] table (tomllib is 3.11+)."""
    found = re.findall(rf'^{name} = "([^"]*)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert len(found) == 1, name
    return found[0]


def _public_names(module_file: Path) -> list[str]:
    """A module's ``__all__``, read from its source (the frameworks an adapter
    imports need not be installed)."""
    for node in ast.parse(module_file.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"{module_file} has no __all__")


def _api_entries() -> set[str]:
    """The fully qualified names the API pages document."""
    entries: set[str] = set()
    for page in (DOCS / "api").glob("*.md"):
        text = page.read_text()
        entries.update(re.findall(r"\.\. auto(?:class|function|data):: (\S+)", text))
        # Entries written by hand, under ``.. currentmodule:: mentor_fn``.
        entries.update(f"mentor_fn.{name}" for name in re.findall(r"```\{py:data\} (\w+)", text))
        for module in re.findall(r"\.\. automodule:: (\S+)\n(?!\s+:no-members:)", text):
            module_file = PACKAGE.parent / (module.replace(".", "/") + ".py")
            entries.update(f"{module}.{name}" for name in _public_names(module_file))
    return entries


def _integration_modules() -> list[str]:
    folder = PACKAGE / "integrations"
    return sorted(path.stem for path in folder.glob("*.py") if not path.stem.startswith("_"))


def test_every_public_name_has_an_api_entry():
    entries = _api_entries()
    public = [f"mentor_fn.{name}" for name in mentor_fn.__all__]
    public += [
        f"mentor_fn.testing.{name}" for name in _public_names(PACKAGE / "testing" / "__init__.py")
    ]
    for module in _integration_modules():
        module_file = PACKAGE / "integrations" / f"{module}.py"
        public += [f"mentor_fn.integrations.{module}.{name}" for name in _public_names(module_file)]
    assert _integration_modules(), "no adapter found"
    missing = [name for name in public if name not in entries]
    assert missing == [], f"public names without an API entry: {missing}"


def test_each_name_has_one_api_entry():
    """Two entries for one name are a duplicate-object warning in the build."""
    found = []
    for page in (DOCS / "api").glob("*.md"):
        found += re.findall(r"\.\. auto(?:class|function|data):: (\S+)", page.read_text())
    assert sorted({name for name in found if found.count(name) > 1}) == []


def test_the_api_pages_document_no_name_that_is_not_public():
    """An entry for a name that left the public API fails, not only a missing one."""
    public = {f"mentor_fn.{name}" for name in mentor_fn.__all__}
    public |= {
        f"mentor_fn.testing.{name}" for name in _public_names(PACKAGE / "testing" / "__init__.py")
    }
    for module in _integration_modules():
        module_file = PACKAGE / "integrations" / f"{module}.py"
        public |= {f"mentor_fn.integrations.{module}.{name}" for name in _public_names(module_file)}
    assert _api_entries() - public == set()


def _shell_blocks(path: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", path.read_text(), flags=re.DOTALL)


def _docs_command() -> str:
    """The one command that builds and opens the docs, as the README shows it."""
    commands = [block for block in _shell_blocks(README) if "-m sphinx" in block]
    assert len(commands) == 1
    return commands[0]


def test_the_readme_and_the_getting_started_page_build_the_docs_alike():
    assert _docs_command() in _shell_blocks(GETTING_STARTED)
    build = _docs_command().split(" && ")[0]
    assert build in (DOCS / "conf.py").read_text()  # the configuration says how it is built


# The docs extra, and the framework of each adapter: the API reference imports
# every adapter, and an adapter imports its framework (mocking one breaks its
# version check), so the site cannot be built without them all.
_SITE_NEEDS = ("sphinx", "myst_parser", "furo", *_integration_modules())
_SITE_MISSING = [name for name in _SITE_NEEDS if importlib.util.find_spec(name) is None]


@pytest.mark.skipif(
    bool(_SITE_MISSING), reason=f"the docs build needs {', '.join(_SITE_MISSING)} installed"
)
def test_the_docs_build_without_a_warning(tmp_path: Path):
    """The README's build command, into a scratch folder: -W turns any warning
    (a broken reference, a name autodoc cannot import, a page outside every
    toctree) into a failure."""
    build = shlex.split(_docs_command().split(" && ")[0])
    assert build[:3] == ["python", "-m", "sphinx"] and build[-2:] == ["docs", "docs/_build/html"]
    command = [sys.executable, *build[1:-1], str(tmp_path / "html")]
    completed = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    assert (tmp_path / "html" / "api" / "core.html").exists()


def test_the_readme_commands_are_what_ci_runs():
    commands = [block for block in _shell_blocks(README) if block.startswith("python -m venv")]
    assert len(commands) == 2
    install_demo, run_tests = commands
    assert install_demo.endswith("pip install -e '.[demo]' && python -m mentor_fn demo")
    ci = (ROOT / ".ci" / "run").read_text()
    for step in run_tests.split(" && ")[2:]:  # after creating and activating the venv
        assert f"\n{step}\n" in ci, step
    assert run_tests.endswith(" && python -m pytest -p no:cacheprovider")
    assert commands == [
        block for block in _shell_blocks(GETTING_STARTED) if block.startswith("python -m venv")
    ]


def test_the_wheel_the_docs_install_is_the_one_the_build_makes():
    """The getting-started page installs the file `python -m build` writes for
    this version, and tools/check_wheel.sh installs that file the same way."""
    version = _project_field("version")
    wheel = f"dist/mentor_fn-{version}-py3-none-any.whl"
    blocks = [block for block in _shell_blocks(GETTING_STARTED) if "python -m build" in block]
    assert blocks == [f"python -m build\npip install '{wheel}[lightning]'"]
    script = (ROOT / "tools" / "check_wheel.sh").read_text()
    assert "-m build\n" in script
    assert 'wheel="dist/mentor_fn-$version-py3-none-any.whl"' in script
    assert 'check "$root/$wheel[lightning]"' in script


def test_the_declared_torch_range_is_the_tested_one():
    """pyproject declares the range the docs state, whose floor the low-end check
    installs and whose ceiling excludes what no run has tested."""
    requirements = re.findall(r'^    "(torch[^"]*)",$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert requirements == ["torch>=2.4,<2.15"]
    assert "(`torch>=2.4,<2.15`)" in GETTING_STARTED.read_text()
    check = (ROOT / "tools" / "check_torch_versions.sh").read_text()
    assert "versions=(2.4.1)" in check
    # CI runs the suite at both ends: the floor by default, the ceiling by name.
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\n    bash tools/check_torch_versions.sh 2.14.1\n" in ci
    assert "\nTORCH_VENVS=.ci bash tools/check_torch_versions.sh\n" in ci


def test_the_readme_fits_on_a_few_screens():
    assert len(README.read_text().splitlines()) <= 250


def test_every_page_is_reachable_from_the_index():
    """A page outside every toctree is a warning in the build; this says which
    page, without needing Sphinx."""
    listed = set()
    for page in DOCS.rglob("*.md"):
        for block in re.findall(r"```\{toctree\}\n(.*?)```", page.read_text(), flags=re.DOTALL):
            entries = [line for line in block.splitlines() if line and not line.startswith(":")]
            base = page.parent.relative_to(DOCS)
            listed.update(str(base / entry) for entry in entries)
    pages = {str(page.relative_to(DOCS).with_suffix("")) for page in DOCS.rglob("*.md")}
    pages -= {"index"}
    pages = {page for page in pages if not page.startswith("_build")}
    assert pages - listed == set()


LAYERS = ("_core", "_wrapper", "_schedules", "_files", "_mentee", "_app")


@pytest.mark.parametrize("layer", LAYERS)
def test_the_design_page_maps_every_module_of_each_layer(layer: str):
    """The module map of docs/design.md names each module of a layer in that
    layer's paragraph (a subpackage as ``name/``), so a new module gets its line."""
    design = (DOCS / "design.md").read_text().split("## The module map", 1)[1]
    section = design.split(f"**`{layer}`", 1)[1].split("\n**", 1)[0]
    folder = PACKAGE / layer
    modules = [path.name for path in folder.glob("*.py") if path.name != "__init__.py"]
    modules += [f"{path.name}/" for path in folder.iterdir() if (path / "__init__.py").exists()]
    missing = [name for name in modules if f"`{name}`" not in section]
    assert missing == [], f"docs/design.md's {layer} paragraph does not name {missing}"
