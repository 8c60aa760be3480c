#!/bin/bash
# One-shot GPU check of a `--features cuda` build of diffuse, for a machine with a GPU but no Rust toolchain.
#
# Expects, under $CARRY (default .devcarry): `diffuse` or `diffuse.xz` (the release binary),
# `ref/<case>-cpu-f32.safetensors` (latents of the parity commands below run with `--device cpu --dtype f32`,
# for the cases sd1 sd2 sdxl sd1-256 sdxl-256), `tools/` (this folder's scripts), and optionally
# `sd15-skel/` (the small files of a full-size SD 1.5 folder) plus `whl/` (diffusers wheels) for full-size
# timings. Writes its log to $OUT/log.txt. See docs/CUDA.md.
set -u
CARRY=${CARRY:-.devcarry}
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
DEVICE=${DEVICE:-cuda}   # DEVICE=cpu FULL=0 dry-runs the script's logic on a machine without a GPU
FULL=${FULL:-1}           # 0 skips the full-size SD 1.5 timings
FULL_DTYPES=${FULL_DTYPES:-f16 f32}   # timed before the diffusers baseline
LATE_DTYPES=${LATE_DTYPES:-bf16}      # timed after it
DIFFUSERS=${DIFFUSERS:-f16,f32} # the diffusers baseline dtypes; 0 skips it
BIN=$CARRY/diffuse
if [ -f "$CARRY/diffuse.xz" ]; then
    python3 -c "import lzma, sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())" "$CARRY/diffuse.xz" >/tmp/diffuse
    chmod +x /tmp/diffuse
    BIN=/tmp/diffuse
fi
TOOLS=$CARRY/tools
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

# row MODEL LABEL DTYPE W STEPS_A STEPS_B: two runs whose difference is (STEPS_B - STEPS_A) denoising steps.
row() {
    local model=$1 label=$2 dt=$3 size=$4 a=$5 b=$6 ta
    tm "$label $dt $a" "$BIN" generate "$PROMPT" --model "$model" --steps "$a" --seed 1 --device "$DEVICE" \
        --dtype "$dt" --width "$size" --height "$size" -q -o /tmp/t.png || return
    ta=$T
    tm "$label $dt $b" "$BIN" generate "$PROMPT" --model "$model" --steps "$b" --seed 1 --device "$DEVICE" \
        --dtype "$dt" --width "$size" --height "$size" -q -o /tmp/t.png || return
    echo "diffuse $label $dt ${size}²: ${a} steps ${ta} s, ${b} steps ${T} s, per step" \
        "$(awk "BEGIN{printf \"%.1f\", ($T - $ta) / ($b - $a) * 1000}") ms (process wall clock)"
}

echo "== timing: tiny sd1 (launch-bound)"
row tests/fixtures/models/sd1 tiny-sd1 f32 256 1 21
row tests/fixtures/models/sd1 tiny-sd1 f16 256 1 21

if [ "$FULL" = 1 ] && [ -d "$CARRY/sd15-skel" ]; then
    echo "== full-size SD 1.5 architecture, random weights drawn here"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$CARRY"/whl/*.whl && export PYTHONPATH=/tmp/site
    timeout 200 "$PY" "$TOOLS/make_sd15_random.py" "$CARRY/sd15-skel" /tmp/sd15 || echo "FAILED: weights"
    if [ -f /tmp/sd15/unet/diffusion_pytorch_model.safetensors ]; then
        tm warmup "$BIN" generate "$PROMPT" --model /tmp/sd15 --steps 1 --device "$DEVICE" --dtype f16 -q -o /tmp/w.png \
            && echo "warm-up (first full-size run, page cache + kernel JIT): $T s"
        for dt in $FULL_DTYPES; do
            row /tmp/sd15 sd15 "$dt" 512 1 20
        done
        if [ "$DIFFUSERS" != 0 ]; then
            timeout 240 "$PY" "$TOOLS/diffusers_timing.py" /tmp/sd15 "$DIFFUSERS" || echo "FAILED: diffusers timing"
        fi
        for dt in $LATE_DTYPES; do
            row /tmp/sd15 sd15 "$dt" 512 1 20
        done
    fi
fi
echo "== done"
