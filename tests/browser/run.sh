#!/usr/bin/env bash
# Runs the web page's end-to-end test in headless Chromium against `diffuse serve`.
# Needs the debug binary (cargo build -p diffuse-cli), Debian's chromium (/usr/bin/chromium, or $CHROMIUM), and
# npm registry access the first time (playwright-core, pinned in package-lock.json).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -d node_modules/playwright-core ]; then
    npm ci --no-audit --no-fund --silent
fi
exec node --test --test-concurrency=1 page.test.mjs
