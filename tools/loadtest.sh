#!/usr/bin/env bash
# Load test of `diffuse serve` on loopback: 200 requests at concurrency 16 (bounded; stops by itself), zero 5xx
# expected, every accepted request checked for its image, the server's memory sampled throughout.
#
#   flock /work/heavy.lock tools/loadtest.sh [MODEL_DIR] [load options: --requests N --concurrency C --steps S --size PX]
#
# MODEL_DIR defaults to $DIFFUSE_MODEL, else the tiny test model. Numbers go in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-${DIFFUSE_MODEL:-tests/fixtures/models/sd1}}"
shift || true
cargo build --quiet --release -p diffuse-cli
cargo build --quiet --release -p diffuse-server --example load
release="${CARGO_TARGET_DIR:-target}/release"
log="$(mktemp)"
"$release/diffuse" serve --model "$model" --port 0 --queue-capacity 64 >"$log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 600); do
    grep -q "listening on" "$log" && break
    kill -0 $server 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.1
done
url="$(grep -o 'http://[0-9.:]*' "$log")"
"$release/examples/load" --url "$url" --pid "$server" --requests 200 --concurrency 16 "$@"
curl -s "$url/metrics" | grep -E '^diffuse_(jobs_finished_total|http_responses_total|step_seconds_(sum|count)|job_seconds_(sum|count))'
kill -TERM $server
wait $server
trap - EXIT
rm -f "$log"
