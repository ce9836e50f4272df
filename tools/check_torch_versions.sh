#!/usr/bin/env bash
# Run the test suite on the lowest torch that mentor_fn declares (or on the
# versions given), each in its own venv beside the checkout, with the oldest
# Python the package supports.
#
#   bash tools/check_torch_versions.sh            # torch 2.4.1, the declared floor
#   bash tools/check_torch_versions.sh 2.5.1 2.6.0
#   PYTEST_ARGS="tests/test_distributed.py" bash tools/check_torch_versions.sh 2.6.0
#   PYTHON=python3 EXTRAS=test WITH="torchvision==0.29.1 timm torch-mentor" \
#       bash tools/check_torch_versions.sh 2.14.1   # the ceiling, as .ci/run runs it
#
# Each version gets .venv-torch-<version>/ (ignored by git; in $TORCH_VENVS if
# set). A venv that already holds that torch is reused, so only the first run
# downloads it: PyPI has no
# CPU-only build of old torch for Linux, so pip fetches the CUDA build and its
# NVIDIA libraries (about 2.8 GB for 2.4.1; pip's own cache keeps the wheels for
# a venv made again). Nothing here needs a GPU: the CUDA build runs on the CPU.
#
# The venv gets the library with the extra $EXTRAS (default test-core: its
# testing kit, the demo's packages, pytest and numpy) and the packages $WITH
# (default none), with torch pinned by a constraint so that no dependency can
# lift it. By default Lightning, transformers, accelerate and DeepSpeed are
# left out: their current releases need a newer torch than the floor, and their
# test modules skip without them. Tests of what an old torch lacks skip with
# the reason; `-rs` lists them at the end.
set -euo pipefail

cd "$(dirname "$0")/.."
# The oldest Python the package supports, where there is one: one run covers
# both floors. PYTHON=python3.11 bash tools/check_torch_versions.sh picks another.
oldest_python() {
    local candidate
    for candidate in python3.10 "$(pyenv root 2>/dev/null)"/versions/3.10*/bin/python3.10; do
        if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    command -v python3
}
python=${PYTHON:-$(oldest_python)}
extras=${EXTRAS:-test-core}
# shellcheck disable=SC2206  # WITH is a list of requirements on purpose
with=(${WITH:-})
versions=("$@")
if [ ${#versions[@]} -eq 0 ]; then
    versions=(2.4.1)
fi

for version in "${versions[@]}"; do
    venv="${TORCH_VENVS:-.}/.venv-torch-$version"
    started=$SECONDS
    # What the venv holds: its Python and torch (PyPI's Linux builds say
    # 2.4.1+cu121: the release alone is compared).
    probe='import sys, torch; print(sys.version_info[:2], torch.__version__.split("+")[0])'
    wanted="$("$python" -c 'import sys; print(sys.version_info[:2])') $version"
    installed=$("$venv/bin/python" -c "$probe" 2>/dev/null || true)
    if [ "$installed" != "$wanted" ]; then
        echo "== creating $venv (torch $version, $("$python" --version))"
        rm -rf "$venv"
        "$python" -m venv "$venv"
        constraint="$venv/torch-constraint.txt"
        echo "torch==$version" >"$constraint"
        "$venv/bin/pip" install --quiet -c "$constraint" "torch==$version" "${with[@]}"
    else
        echo "== reusing $venv (torch $version)"
        if [ ${#with[@]} -gt 0 ]; then
            "$venv/bin/pip" install --quiet -c "$venv/torch-constraint.txt" "${with[@]}"
        fi
    fi
    # The project's own requirements may have changed since the venv was made.
    "$venv/bin/pip" install --quiet -c "$venv/torch-constraint.txt" -e ".[$extras]"
    echo "== $venv ready in $((SECONDS - started)) s; running the suite"
    started=$SECONDS
    # shellcheck disable=SC2086  # PYTEST_ARGS is a list of words on purpose
    "$venv/bin/python" -m pytest -p no:cacheprovider -rs ${PYTEST_ARGS:-}
    echo "== torch $version: suite passed in $((SECONDS - started)) s"
done
