#!/usr/bin/env bash
# Runs the real-client tests (openai SDK, webuiapi) against `diffuse serve`.
# Needs the debug binary (cargo build -p diffuse-cli) and PyPI access the first time: the client packages go
# into a venv under ~/.cache (or $DIFFUSE_CLIENTS_VENV), reused while requirements.txt is unchanged.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${DIFFUSE_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/diffuse}"
if ! "$bin" serve --help >/dev/null 2>&1; then
    echo "$bin with \`serve\` not found: run cargo build -p diffuse-cli (or set DIFFUSE_BIN)" >&2
    exit 1
fi
export DIFFUSE_BIN="$bin"
here="$(cd "$(dirname "$0")" && pwd)"
venv="${DIFFUSE_CLIENTS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/diffuse/clients-venv}"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    echo "$want" > "$stamp"
fi
cd "$here"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
