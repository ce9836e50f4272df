#!/usr/bin/env bash
# Build the wheel and the sdist, and install each in a fresh venv, as a user
# would: torch first (pinned, so that pip takes the CPU build), then the
# package with an extra. Each install imports mentor_fn, the extra's adapter,
# and runs the README's example. Leaves nothing behind but dist/.
#
#   bash tools/check_wheel.sh
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
started=$SECONDS

# The build (an isolated one, as `python -m build` does by default).
python3 -m venv "$scratch/build"
"$scratch/build/bin/pip" install --quiet build
rm -rf dist
"$scratch/build/bin/python" -m build
version=$("$scratch/build/bin/python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
wheel="dist/mentor_fn-$version-py3-none-any.whl"
sdist="dist/mentor_fn-$version.tar.gz"
test -f "$wheel" && test -f "$sdist"

# What ships: the type information, the license, no tests.
"$scratch/build/bin/python" - "$wheel" "$sdist" <<'PYTHON'
import sys, tarfile, zipfile
wheel, sdist = sys.argv[1:]
names = zipfile.ZipFile(wheel).namelist()
assert "mentor_fn/py.typed" in names, "py.typed is not in the wheel"
assert any(name.endswith("licenses/LICENSE") for name in names), "LICENSE is not in the wheel"
assert not any(name.startswith("tests/") for name in names), "the wheel ships tests"
metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
assert "License-Expression: MIT" in metadata, "no SPDX license in the metadata"
members = tarfile.open(sdist).getnames()
assert any(name.endswith("/LICENSE") for name in members), "LICENSE is not in the sdist"
print(f"{wheel}: {len(names)} files, py.typed and LICENSE included")
PYTHON

check() {  # $1: what to install (a wheel or an sdist, with an extra)
    local venv="$scratch/venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch==2.13.0
    "$venv/bin/pip" install --quiet "$1"
    # Out of the checkout, so that nothing is imported from it by accident.
    (
        cd "$scratch"
        "$venv/bin/python" -c 'import mentor_fn, mentor_fn.integrations.lightning; print("installed mentor_fn", mentor_fn.__version__, "from", mentor_fn.__file__)'
        "$venv/bin/python" -c 'import mentor_fn, pathlib; assert (pathlib.Path(mentor_fn.__file__).parent / "py.typed").exists()'
        "$venv/bin/python" "$root/examples/gradual_unfreezing.py" >/dev/null
        echo "ran examples/gradual_unfreezing.py with $1"
    )
}
check "$root/$wheel[lightning]"
check "$root/$sdist[lightning]"
echo "wheel and sdist check passed in $((SECONDS - started)) s"
