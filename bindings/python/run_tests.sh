#!/usr/bin/env bash
# Installs the Python package as a user would (`pip install ./bindings/python`, which builds the wheel with maturin
# from PyPI) into a fresh venv, and runs its tests. Needs PyPI access. Set DIFFUSE_PYTHON_VENV to keep the venv
# somewhere else (it is rebuilt every run, so the install is always tested from nothing).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${DIFFUSE_PYTHON_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/diffuse/python-venv}"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/tests/requirements.txt"
"$venv/bin/pip" install --quiet --disable-pip-version-check "$here"
cd "$here/tests"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
