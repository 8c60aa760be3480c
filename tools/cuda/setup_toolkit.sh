#!/bin/bash
# Assembles a CUDA 13.0 build toolkit from PyPI wheels into $1 (default /opt/cuda-tk), for building
# `--features cuda` on a machine with no CUDA install and no GPU. See docs/CUDA.md.
#
# Puts nvcc/cicc/ptxas, headers (CCCL included), cudart, cublas, cublasLt, curand and nvrtc under $1, and a
# link-time stub of the driver (lib/stubs/libcuda.so, soname libcuda.so.1) built with gcc from the cu* names
# that cudarc declares: the binary then loads the real driver where it runs. Prints the variables to export.
set -eu
TK=${1:-/opt/cuda-tk}
WHEELS=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 -d "$WHEELS" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 \
    nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14 nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35
mkdir -p "$TK"
for w in "$WHEELS"/*.whl; do
    python3 -m zipfile -e "$w" "$WHEELS/x"
done
cp -a "$WHEELS"/x/nvidia/cu13/. "$TK"/
chmod +x "$TK"/bin/* "$TK"/nvvm/bin/*
(cd "$TK/lib" && for f in *.so.*; do b=${f%%.so.*}; [ -e "$b.so" ] || ln -s "$f" "$b.so"; done)

CUDARC=$(find "${CARGO_HOME:-$HOME/.cargo}"/registry/src -maxdepth 1 -mindepth 1 -type d | head -1)/cudarc-0.19.10
[ -d "$CUDARC" ] || { echo "run 'cargo fetch' first: $CUDARC is missing" >&2; exit 1; }
mkdir -p "$TK/lib/stubs"
grep -oE "^pub unsafe fn cu[A-Za-z0-9_]+" "$CUDARC/src/driver/sys/mod.rs" | awk '{print $4}' | sort -u |
    awk '{print "int " $1 "(void) { return 999; }"}' >"$TK/lib/stubs/cuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$TK/lib/stubs/libcuda.so" "$TK/lib/stubs/cuda_stub.c"
rm -rf "$WHEELS"
cat <<VARS
export PATH=$TK/bin:\$PATH CUDA_HOME=$TK CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH=$TK/lib:$TK/lib/stubs
VARS
