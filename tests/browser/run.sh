#!/usr/bin/env bash
# Runs the web page's end-to-end test in headless Chromium against `diffuse serve`.
# Needs the debug binary (cargo build -p diffuse-cli), Debian's chromium (/usr/bin/chromium, or $CHROMIUM), and
# npm registry access the first time (playwright-core, pinned in package-lock.json).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${DIFFUSE_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/diffuse}"
if ! "$bin" serve --help >/dev/null 2>&1; then
    echo "$bin with \`serve\` not found: run cargo build -p diffuse-cli (or set DIFFUSE_BIN)" >&2
    exit 1
fi
export DIFFUSE_BIN="$bin"
cd "$(dirname "$0")"
if [ ! -d node_modules/playwright-core ]; then
    npm ci --no-audit --no-fund --silent
fi
exec node --test --test-concurrency=1 page.test.mjs
