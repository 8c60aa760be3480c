#!/usr/bin/env bash
# Load test of `diffuse serve` on loopback: 200 requests at concurrency 16 (bounded; stops by itself), zero 5xx
# expected, every accepted request checked for its image, the server's memory sampled throughout.
#
#   flock /work/heavy.lock tools/loadtest.sh [--broker] [MODEL_DIR] [load options: --requests N --concurrency C --steps S --size PX]
#
# With --broker it runs the same requests twice: once on one in-process server with 3 generation threads, then
# through Redis (a
# redis-server of its own on a free port) with an API-only server and 3 `diffuse worker` processes, one of which
# is killed (SIGKILL) and restarted every $KILL_EVERY seconds (default 20). It then checks that no request was
# lost, that every image equals the in-process image for its seed (byte for byte, parameters included), and
# reports re-runs and the throughput of both. MODEL_DIR defaults to $DIFFUSE_MODEL, else the tiny test model.
# Numbers go in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
broker=0
if [[ "${1:-}" == "--broker" ]]; then
    broker=1
    shift
fi
model="${1:-${DIFFUSE_MODEL:-tests/fixtures/models/sd1}}"
shift || true
cargo build --quiet --release -p diffuse-cli
cargo build --quiet --release -p diffuse-server --example load
release="${CARGO_TARGET_DIR:-target}/release"
scratch="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$scratch"
}
trap cleanup EXIT

# Starts `diffuse serve ARGS` logging to $1; sets $url and $server.
start_server() {
    local log="$1"
    shift
    "$release/diffuse" serve --model "$model" --port 0 --queue-capacity 64 "$@" >"$log" 2>&1 &
    server=$!
    pids+=("$server")
    for _ in $(seq 1 600); do
        grep -q "listening on" "$log" && break
        kill -0 "$server" 2>/dev/null || { cat "$log"; exit 1; }
        sleep 0.1
    done
    url="$(grep -o 'http://[0-9.:]*' "$log")"
}

stop_server() {
    kill -TERM "$server"
    wait "$server" || true
}

threads=1
[[ $broker == 1 ]] && threads=3
echo "== in-process: one server, $threads generation thread(s)"
start_server "$scratch/serve.log" --workers "$threads"
"$release/examples/load" --url "$url" --pid "$server" --requests 200 --concurrency 16 \
    --digests "$scratch/in-process.txt" "$@"
curl -s "$url/metrics" | grep -E '^diffuse_(jobs_finished_total|http_responses_total|step_seconds_(sum|count)|job_seconds_(sum|count))'
stop_server
[[ $broker == 1 ]] || exit 0

echo "== through Redis: an API-only server, 3 workers, one killed every ${KILL_EVERY:-20} s"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
redis-server --port "$port" --bind 127.0.0.1 --dir "$scratch" --save "" --appendonly no \
    >"$scratch/redis.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
broker_url="redis://127.0.0.1:$port"
start_server "$scratch/serve-broker.log" --broker "$broker_url" --workers 0
worker_args=(worker --model "$model" --broker "$broker_url" --claim-after 5)
declare -a workers
for i in 0 1 2; do
    "$release/diffuse" "${worker_args[@]}" >/dev/null 2>"$scratch/worker-$i.0.log" &
    workers[$i]=$!
    pids+=("$!")
done
: >"$scratch/kills.log"
(
    round=0
    while sleep "${KILL_EVERY:-20}"; do
        i=$((round % 3))
        round=$((round + 1))
        pid="$(cat "$scratch/worker-$i.pid" 2>/dev/null || echo "${workers[$i]}")"
        kill -KILL "$pid" 2>/dev/null || true
        echo "killed worker $i (pid $pid) at round $round" >>"$scratch/kills.log"
        "$release/diffuse" "${worker_args[@]}" >/dev/null 2>"$scratch/worker-$i.$round.log" &
        echo "$!" >"$scratch/worker-$i.pid"
    done
) &
killer=$!
pids+=("$killer")
"$release/examples/load" --url "$url" --pid "$server" --requests 200 --concurrency 16 \
    --digests "$scratch/broker.txt" "$@"
kill "$killer" 2>/dev/null || true
health="$(curl -s "$url/health")"
stop_server
for f in "$scratch"/worker-*.pid; do [[ -e $f ]] && pids+=("$(cat "$f")"); done
kills="$(wc -l <"$scratch/kills.log")"
takeovers="$(cat "$scratch"/worker-*.log | grep -c 'took over job' || true)"
discarded="$(cat "$scratch"/worker-*.log | grep -c 'result is discarded' || true)"
succeeded="$(cat "$scratch"/worker-*.log | grep -c ' succeeded' || true)"
echo "workers killed: $kills; jobs taken over from a killed worker: $takeovers; runs whose result was discarded (already stored): $discarded; successful runs logged: $succeeded"
echo "broker at the end: $health"
lost="$(( $(wc -l <"$scratch/in-process.txt") - $(wc -l <"$scratch/broker.txt") ))"
if diff -q "$scratch/in-process.txt" "$scratch/broker.txt" >/dev/null; then
    echo "images: all $(wc -l <"$scratch/broker.txt") equal to the in-process images for their seeds; lost: $lost"
else
    echo "images differ from the in-process run (lost: $lost):"
    diff "$scratch/in-process.txt" "$scratch/broker.txt" | head -20
    exit 1
fi
