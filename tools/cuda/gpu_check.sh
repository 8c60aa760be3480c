#!/bin/bash
# One-shot GPU check of a `--features cuda` build of diffuse, for a machine with a GPU but no Rust toolchain.
#
# Expects, under $CARRY (default .devcarry): `diffuse` or `diffuse.xz` (the release binary),
# optionally `diffuse-baseline` or `diffuse-baseline.xz` (another build to benchmark beside it),
# `ref/<case>-cpu-f32.safetensors` (latents of the parity commands below run with `--device cpu --dtype f32`,
# for the cases sd1 sd2 sdxl sd1-256 sdxl-256), and optionally
# `sd15-skel/` (`tools/bench/make_sd15_random.py --skeleton`) plus `whl/` (diffusers wheels) for the full-size
# benchmark (tools/bench/bench.py --cuda, diffuse against diffusers). Run from the repository root. Writes its log
# to $OUT/log.txt and the benchmark's table and raw timings to $OUT/bench.md and $OUT/bench.json. See docs/CUDA.md.
set -u
CARRY=${CARRY:-.devcarry}
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
DEVICE=${DEVICE:-cuda}   # DEVICE=cpu FULL=0 dry-runs the script's logic on a machine without a GPU
FULL=${FULL:-1}           # 0 skips the full-size SD 1.5 benchmark
BENCH_DTYPES=${BENCH_DTYPES:-f16,bf16,f32}
BENCH_TASKS=${BENCH_TASKS:-components,generate,vae-tiled}
BENCH_REPS=${BENCH_REPS:-5}
BENCH_LIMIT=${BENCH_LIMIT:-420}   # seconds for the whole of bench.py
# unpack NAME: the path of $CARRY/NAME, or of $CARRY/NAME.xz decompressed into /tmp.
unpack() {
    if [ -f "$CARRY/$1.xz" ]; then
        python3 -c "import lzma, sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())" "$CARRY/$1.xz" >"/tmp/$1"
        chmod +x "/tmp/$1"
        echo "/tmp/$1"
    else
        echo "$CARRY/$1"
    fi
}
BIN=$(unpack diffuse)
# An optional second build, $CARRY/diffuse-baseline[.xz] (say, the one before a change): the benchmark's diffuse
# rows are run again with it (tasks BASELINE_TASKS), into $OUT/bench-baseline.md, beside the same diffusers columns.
BASELINE_TASKS=${BASELINE_TASKS:-components,generate}
BASELINE=""
if [ -f "$CARRY/diffuse-baseline" ] || [ -f "$CARRY/diffuse-baseline.xz" ]; then
    BASELINE=$(unpack diffuse-baseline)
fi
TOOLS=tools/cuda
PY=${PY:-$(command -v python3)}
PROMPT="a photo of a cat"

echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
echo "python: $PY"

echo "== CUDA libraries"
dirs=""
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
    p=$(find /opt/torch/.venv /usr/local/cuda/ -name "$lib" 2>/dev/null | head -1)
    [ -n "$p" ] && case ":$dirs:" in *":$(dirname "$p"):"*) ;; *) dirs="$dirs:$(dirname "$p")" ;; esac
done
dirs=${dirs#:}
export LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+${dirs:+:}$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
ldd "$BIN" | grep -E "cuda|cublas|curand|nvrtc|not found"

# tm LABEL CMD...: runs CMD with a 150 s limit, sets T to its wall-clock seconds; prints the log tail on failure.
tm() {
    local label=$1; shift
    local s e rc
    s=$(date +%s.%N)
    timeout 150 "$@" >"$OUT/last_cmd.txt" 2>&1
    rc=$?
    e=$(date +%s.%N)
    T=$(awk "BEGIN{printf \"%.3f\", $e - $s}")
    if [ $rc -ne 0 ]; then
        echo "FAILED ($label, rc=$rc): $*"
        tail -n 15 "$OUT/last_cmd.txt"
    fi
    return $rc
}

echo "== parity: tiny fixtures, 4 steps, seed 42, CUDA against the CPU run of the same binary"
# Cases: MODEL (the model's own size) or MODEL-SIZE (SIZE² pixels); references are ref/<case>-cpu-f32.safetensors.
for case in sd1 sd2 sdxl sd1-256 sdxl-256; do
    m=${case%%-*}
    size=(); [ "$case" != "$m" ] && size=(--width "${case#*-}" --height "${case#*-}")
    for dt in f32 f16; do
        lat=/tmp/$case-$DEVICE-$dt.safetensors
        if tm "$case $dt" "$BIN" generate "$PROMPT" --model "tests/fixtures/models/$m" --steps 4 --seed 42 \
            "${size[@]}" --device "$DEVICE" --dtype "$dt" -q -o "/tmp/$case-$dt.png" --save-latents "$lat"; then
            tol=1e-3; [ "$dt" = f16 ] && tol=5e-2
            echo -n "$case $DEVICE $dt vs cpu f32 (${T} s): "
            "$PY" "$TOOLS/compare_latents.py" "$lat" "$CARRY/ref/$case-cpu-f32.safetensors" "$tol"
        fi
    done
done

if [ "$FULL" = 1 ] && [ -d "$CARRY/sd15-skel" ]; then
    echo "== full-size SD 1.5 architecture, random weights drawn here; tools/bench/bench.py --cuda"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$CARRY"/whl/*.whl && export PYTHONPATH=/tmp/site
    timeout 200 "$PY" "$TOOLS/make_sd15_random.py" "$CARRY/sd15-skel" /tmp/sd15 || echo "FAILED: weights"
    if [ -f /tmp/sd15/unet/diffusion_pytorch_model.safetensors ]; then
        # One bf16 process, so that the driver has compiled every kernel the benchmark's processes load.
        tm "warm-up bf16" "$BIN" generate "$PROMPT" --model tests/fixtures/models/sd1 --steps 2 --device "$DEVICE" \
            --dtype bf16 -q -o /tmp/w.png && echo "warm-up (tiny sd1, bf16): $T s"
        cuda=(--cuda); [ "$DEVICE" = cpu ] && cuda=()
        PYTHONUNBUFFERED=1 timeout "$BENCH_LIMIT" "$PY" tools/bench/bench.py /tmp/sd15 "${cuda[@]}" --diffuse "$BIN" \
            --python "$PY" --dtypes "$BENCH_DTYPES" --tasks "$BENCH_TASKS" --diffusers-alloc default \
            --reps "$BENCH_REPS" --size 2048 --out "$OUT/bench.json" --images /tmp/bench-images \
            >"$OUT/bench.md" || echo "FAILED: bench.py (rc $?; $OUT/bench.json holds what finished)"
        cat "$OUT/bench.md"
        if [ -n "$BASELINE" ]; then
            echo "== the baseline build, $BASELINE"
            PYTHONUNBUFFERED=1 timeout "$BENCH_LIMIT" "$PY" tools/bench/bench.py /tmp/sd15 "${cuda[@]}" \
                --diffuse "$BASELINE" --engines diffuse --reuse "$OUT/bench.json" --python "$PY" \
                --dtypes "$BENCH_DTYPES" --tasks "$BASELINE_TASKS" --reps "$BENCH_REPS" --size 2048 \
                --out "$OUT/bench-baseline.json" --images /tmp/bench-images-baseline >"$OUT/bench-baseline.md" \
                || echo "FAILED: bench.py with the baseline build"
            cat "$OUT/bench-baseline.md"
        fi
    fi
fi
echo "== done"
