"""Denoising steps with and without LoRAs, diffuse against diffusers, on the same model and LoRA files, each
engine in its own process with the same thread count; prints a Markdown table of medians and the load average.

    python tools/bench/lora_bench.py MODEL LORA_DIR --diffuse target/release/diffuse [--threads 2] [--steps 6]

diffuse merges a LoRA set into its own copy of the changed layers once (prepare), then steps at full speed.
diffusers loads LoRAs as PEFT layers that run unfused (its default), or merges them with `fuse_lora`.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def run(cmd, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    rows = {}
    for line in out.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            rows[row["name"]] = row
    return rows, os.getloadavg()[0]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("lora_dir")
    p.add_argument("--diffuse", required=True)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args()
    loras = sorted(str(f) for f in pathlib.Path(args.lora_dir).glob("*.safetensors"))
    flags = [x for f in loras for x in ("--lora", f)]
    ours, load_ours = run([args.diffuse, "bench", args.model, "--task", "loras", "--steps", str(args.steps)]
                          + flags, args.threads)
    theirs, load_theirs = run([args.python, str(HERE / "diffusers_runner.py"), args.model, "--task", "loras",
                               "--steps", str(args.steps), "--threads", str(args.threads)] + flags, args.threads)
    med = lambda rows, name: statistics.median(rows[name]["times"]) if name in rows else float("nan")
    print(f"LoRAs: {', '.join(pathlib.Path(f).name for f in loras)}; first = {pathlib.Path(loras[0]).name}")
    print(f"load average after diffuse {load_ours:.2f}, after diffusers {load_theirs:.2f}\n")
    print("| | diffuse (s) | diffusers unfused (s) | diffusers fused (s) | unfused / diffuse |")
    print("|---|---|---|---|---|")
    base = med(ours, "step_plain")
    for label, name in (("step, no LoRA", "plain"), ("step, first LoRA", "one"), ("step, all three", "all")):
        d, u = med(ours, f"step_{name}"), med(theirs, f"step_{name}")
        f = med(theirs, f"step_{name}_fused") if name != "plain" else u
        print(f"| {label} | {d:.2f} ({d / base:.3f}× plain) | {u:.2f} | {f:.2f} | {u / d:.2f} |")
    for label, name in (("prepare the first LoRA", "one"), ("prepare all three", "all")):
        d, u, f = med(ours, f"prepare_{name}"), med(theirs, f"prepare_{name}"), med(theirs, f"fuse_{name}")
        print(f"| {label} | {d:.2f} | {u:.2f} (load) | +{f:.2f} (fuse) | |")


if __name__ == "__main__":
    main()
