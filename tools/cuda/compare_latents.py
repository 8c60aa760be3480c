"""Compares two `--save-latents` files: relative L2 error ‖a − b‖ / ‖b‖ and largest absolute difference.

    python3 tools/cuda/compare_latents.py GPU.safetensors CPU.safetensors [TOLERANCE]

Exits 1 when the relative error exceeds TOLERANCE (default 1e-3) or either tensor holds a NaN.
"""

import sys

import torch
from safetensors.torch import load_file


def main():
    a = load_file(sys.argv[1])["latents"].double()
    b = load_file(sys.argv[2])["latents"].double()
    tol = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-3
    if a.shape != b.shape:
        print(f"FAIL shapes {tuple(a.shape)} vs {tuple(b.shape)}")
        sys.exit(1)
    rel = ((a - b).norm() / b.norm()).item()
    max_abs = (a - b).abs().max().item()
    ok = rel <= tol and not (a.isnan().any() or b.isnan().any())
    print(f"{'PASS' if ok else 'FAIL'} rel_l2={rel:.3e} max_abs={max_abs:.3e} tol={tol:g} shape={tuple(a.shape)}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
