"""Side-by-side benchmark: diffuse against diffusers, same weights, same thread count, same run.

    flock /work/heavy.lock /opt/refenv/bin/python tools/bench/bench.py /work/bench-models/sd15-random \
        --diffuse target/release/diffuse --threads 2 --dtypes f32,bf16

Each (engine, dtype, task) runs in its own process: `components` times text encoding, one UNet step at
batch 2 (CFG) at 512² and 256², and one VAE decode at 512² (medians of --reps after a warm-up); `generate` runs
one 512² text-to-image generation with --steps DPM++ 2M steps and gives the end-to-end time, the time from
process start to the end of the first denoising step, and the process's peak RSS (from wait4).

diffusers runs once per --diffusers-alloc setting: `default` (glibc malloc, as users run it), `tuned`
(glibc malloc with mmap disabled and a huge trim threshold, so big tensors are not returned to the OS and
faulted in again), `mimalloc` (LD_PRELOAD of Debian's libmimalloc, the allocator diffuse links in).
Ratios are diffusers/diffuse: above 1 means diffuse is faster.

With `--engines …,openvino` OpenVINO runs too (optimum-intel's OVStableDiffusionPipeline, through
openvino_runner.py with --openvino-python, its own venv): the model is exported once to OpenVINO IR with f32
weights (beside the model as MODEL-openvino, not timed); its f32 column sets INFERENCE_PRECISION_HINT f32, its bf16
column is OpenVINO's default precision (bf16 on a CPU with AVX512-BF16).

`--dtypes …,int8` adds diffuse with `--quantize int8` (its UNet's linear layers and convolutions in int8 on
AVX512-VNNI) and OpenVINO with its models' weights compressed to 8 bits by NNCF (a second IR, MODEL-openvino-int8,
exported once with `load_in_8bit=True`; computed with the f32 precision hint); diffusers runs its float dtypes
only. Each engine's int8 image's PSNR against its f32 image is printed with the end-to-end ratios.

With --cuda both engines run on the first CUDA device (diffusers with PyTorch's SDPA attention) and each
process's peak GPU memory is read from nvidia-smi (memory in use on the device while it runs, less what was in
use before it started: the CUDA context and each engine's cached allocations included).
tools/cuda/gpu_check.sh runs this on a lent GPU machine.
"""

import argparse
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
ALLOCS = {
    "default": {},
    "tuned": {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"},
    "mimalloc": {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"},
}
ROWS = [
    ("text_encode", "text encoding (prompt + negative)", "s"),
    ("unet_step_512", "UNet step, batch 2, 512² (64² latents)", "s"),
    ("unet_step_256", "UNet step, batch 2, 256² (32² latents)", "s"),
    ("vae_decode_512", "VAE decode 512²", "s"),
    ("generate_512", "end-to-end 512², DPM++ 2M", "s"),
    ("first_step", "process start → end of first step", "s"),
    ("peak_rss", "peak RSS (generate)", "GiB"),
    ("vae_tiled_decode", "tiled VAE decode, --size² (task vae-tiled)", "s"),
    ("peak_rss_vae_tiled", "peak RSS (vae-tiled)", "GiB"),
    ("peak_gpu", "peak GPU memory (generate)", "GiB"),
    ("peak_gpu_vae_tiled", "peak GPU memory (vae-tiled)", "GiB"),
    ("audio_generate", "AudioLDM: whole generation of the default length (task audio)", "s"),
    ("audio_text_encode", "AudioLDM: text encoding (prompt + negative)", "s"),
    ("audio_unet_step", "AudioLDM: UNet step, batch 2", "s"),
    ("audio_vae_decode", "AudioLDM: VAE decode to the mel spectrogram", "s"),
    ("audio_vocoder", "AudioLDM: vocoder, spectrogram → waveform", "s"),
]


def gpu_memory_used():
    """GiB in use on the first GPU, as nvidia-smi reports it (NaN where it cannot be read)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10).stdout
        return float(out.split()[0]) / 1024
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return math.nan


class GpuPeak:
    """Polls the GPU's memory in use while a process runs; `stop()` gives the most seen less the level before it."""

    def __init__(self):
        self.base = gpu_memory_used()
        self.most = self.base
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def poll(self):
        while not self.done.wait(0.05):
            used = gpu_memory_used()
            if not math.isnan(used):
                self.most = max(self.most, used)

    def stop(self):
        self.done.set()
        self.thread.join()
        return self.most - self.base


def run(cmd, env_extra, threads, gpu):
    env = dict(os.environ)
    env.update({"RAYON_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)})
    env.update(env_extra)
    peak = GpuPeak() if gpu else None
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    gpu_peak = peak.stop() if peak else math.nan
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} exited with {proc.returncode}")
    results = {}
    for line in out.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            results[rec["name"]] = {"wall": rec.get("times", []), "cpu": rec.get("cpu", [])}
    if "first_step_unix" in results:
        results["first_step"] = {"wall": [results.pop("first_step_unix")["wall"][0] - start]}
    results["peak_rss"] = {"wall": [usage.ru_maxrss / 2**20]}
    if gpu:
        results["peak_gpu"] = {"wall": [gpu_peak]}
    results["loadavg"] = {"wall": [os.getloadavg()[0]]}
    return results


def median(values):
    return statistics.median(values) if values else math.nan


def psnr(a_path, b_path):
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(a_path), dtype=np.float64)
    b = np.asarray(Image.open(b_path), dtype=np.float64)
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def main():
    p = argparse.ArgumentParser(description="diffuse vs diffusers")
    p.add_argument("model", type=pathlib.Path)
    p.add_argument("--diffuse", default=str(REPO / "target/release/diffuse"))
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--dtypes", default="f32,bf16",
                   help="f32, bf16, f16; int8 (diffuse: --quantize int8, OpenVINO: 8-bit weights)")
    p.add_argument("--tasks", default="components,generate", help="components, generate, vae-tiled; audio (an AudioLDM folder)")
    p.add_argument("--engines", default="diffuse,diffusers")
    p.add_argument("--diffusers-alloc", default="default,tuned")
    p.add_argument("--openvino-python", default="/opt/ovenv/bin/python")
    p.add_argument("--openvino-model", type=pathlib.Path, help="the exported IR (default: MODEL-openvino)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--size", type=int, default=2048, help="image side of the vae-tiled task")
    p.add_argument("--cuda", action="store_true", help="run both on the first CUDA device (f16 recommended)")
    p.add_argument("--out", type=pathlib.Path, help="also write all raw timings here as JSON (after each process)")
    p.add_argument("--reuse", type=pathlib.Path, action="append", default=[],
                   help="raw JSON of an earlier run: its results for engines not in --engines are tabulated too")
    p.add_argument("--images", type=pathlib.Path, default=pathlib.Path("/tmp/diffuse-bench"))
    args = p.parse_args()
    args.images.mkdir(parents=True, exist_ok=True)
    # The machine the tables are for: CPU model, features, topology, caches and the kernels' choices.
    machine = subprocess.run([args.diffuse, "info", "--system"], capture_output=True, text=True)
    print("### Machine\n\n```\n" + (machine.stdout or machine.stderr).strip() + "\n```")
    engines = args.engines.split(",")
    columns = []
    if "diffuse" in engines:
        columns.append(("diffuse", {}))
    if "diffusers" in engines:
        columns += [(f"diffusers[{a}]", ALLOCS[a]) for a in args.diffusers_alloc.split(",")]
    if "openvino" in engines:
        columns.append(("openvino", {}))
        args.openvino_model = args.openvino_model or args.model.with_name(args.model.name + "-openvino")
        ir = {"": args.openvino_model, "int8": args.openvino_model.with_name(args.openvino_model.name + "-int8")}
        for kind, folder in ir.items():
            if kind == "int8" and "int8" not in args.dtypes.split(","):
                continue
            if not (folder / "model_index.json").exists():
                print(f"# exporting {args.model} to OpenVINO IR in {folder}", file=sys.stderr, flush=True)
                flags = ["--int8"] if kind == "int8" else []
                subprocess.run([args.openvino_python, str(HERE / "openvino_runner.py"), str(args.model), "--task",
                                "export", "--out", str(folder)] + flags, check=True)
    raw = {}
    running = [c[0] for c in columns]
    for path in args.reuse:
        earlier = json.loads(path.read_text())
        for key, rows in earlier.items():
            if key.rsplit(" ", 1)[0] not in running:
                raw.setdefault(key, {}).update(rows)
    reused = set(raw)
    if reused:
        print(f"# reusing {sorted(reused)}", file=sys.stderr)
    for dtype in args.dtypes.split(","):
        for name, alloc in columns:
            if dtype == "int8" and name not in ("diffuse", "openvino"):
                continue  # diffusers runs its float dtypes only
            res = {}
            for task in args.tasks.split(","):
                image = args.images / f"{name}-{dtype}.png"
                if name == "openvino":
                    folder = ir["int8"] if dtype == "int8" else ir[""]
                    cmd = [args.openvino_python, str(HERE / "openvino_runner.py"), str(folder),
                           "--task", task, "--dtype", dtype, "--reps", str(args.reps), "--steps", str(args.steps),
                           "--threads", str(args.threads), "--save", str(image)]
                elif name == "diffuse":
                    cmd = [args.diffuse, "bench", str(args.model), "--task", task, "--dtype", dtype,
                           "--reps", str(args.reps), "--steps", str(args.steps), "--save", str(image),
                           "--size", str(args.size)]
                    if args.cuda:
                        cmd.append("--cuda")
                else:
                    cmd = [args.python, str(HERE / "diffusers_runner.py"), str(args.model), "--task", task,
                           "--dtype", dtype, "--reps", str(args.reps), "--steps", str(args.steps),
                           "--threads", str(args.threads), "--save", str(image), "--size", str(args.size),
                           "--device", "cuda" if args.cuda else "cpu"]
                print(f"# {name} {dtype} {task}", file=sys.stderr, flush=True)
                got = run(cmd, alloc, args.threads, args.cuda)
                if task == "components":
                    got.pop("peak_rss")
                    got.pop("peak_gpu", None)
                    got["loadavg_components"] = got.pop("loadavg")
                elif task == "audio":
                    got.pop("peak_gpu", None)
                    got["peak_rss_audio"] = got.pop("peak_rss")
                    got["loadavg_audio"] = got.pop("loadavg")
                elif task == "vae-tiled":
                    got["peak_rss_vae_tiled"] = got.pop("peak_rss")
                    if "peak_gpu" in got:
                        got["peak_gpu_vae_tiled"] = got.pop("peak_gpu")
                    got["loadavg_vae_tiled"] = got.pop("loadavg")
                res.update(got)
                raw[f"{name} {dtype}"] = res
                if args.out:
                    args.out.write_text(json.dumps(raw, indent=1))
            summary = {k: round(median(v["wall"]), 3) for k, v in res.items()}
            print(f"#   {json.dumps(summary)}", file=sys.stderr)
    all_columns = list(columns)
    for key in raw:
        name = key.rsplit(" ", 1)[0]
        if name not in [c[0] for c in all_columns]:
            all_columns.append((name, {}))
    print_tables(raw, args, all_columns)


def cell(raw, column, dtype, key, kind):
    return median(raw.get(f"{column} {dtype}", {}).get(key, {}).get(kind, []))


def print_tables(raw, args, columns):
    names = [c[0] for c in columns]
    for dtype in args.dtypes.split(","):
        for kind, title in [("wall", "wall-clock seconds"), ("cpu", "CPU seconds (all threads)")]:
            print(f"\n### {dtype}, {title}, {args.threads} threads, medians of {args.reps} (generate: 1 run)\n")
            head = ["row"] + names + [f"{n} / diffuse" for n in names if n != "diffuse"]
            print("| " + " | ".join(head) + " |")
            print("|" + "---|" * len(head))
            for key, label, unit in ROWS:
                vals = {n: cell(raw, n, dtype, key, kind) for n in names}
                if all(math.isnan(v) for v in vals.values()):
                    continue
                cells = [f"{label} ({unit})"] + [f"{vals[n]:.3f}" for n in names]
                base = vals.get("diffuse", math.nan)
                cells += [f"{vals[n] / base:.2f}×" for n in names if n != "diffuse"]
                print("| " + " | ".join(cells) + " |")
        loads = [cell(raw, n, dtype, k, "wall") for n in names
                 for k in ["loadavg_components", "loadavg", "loadavg_vae_tiled", "loadavg_audio"]]
        loads = [x for x in loads if not math.isnan(x)]
        print(f"\n1-minute load average after each process: {', '.join(f'{x:.1f}' for x in loads)}")
        for n in names:
            seconds, compute = cell(raw, n, dtype, "audio_seconds", "wall"), cell(raw, n, dtype, "audio_generate", "wall")
            if not math.isnan(seconds) and not math.isnan(compute):
                print(f"{n} {dtype}: {seconds / compute:.3f} seconds of audio per second of compute "
                      f"({seconds:.2f} s of audio in {compute:.2f} s)")
    dtypes = args.dtypes.split(",")
    for other in [d for d in dtypes if d != "f32"]:
        if "generate" not in args.tasks or "f32" not in dtypes:
            break
        print()
        for n in names:
            a, b = args.images / f"{n}-f32.png", args.images / f"{n}-{other}.png"
            if a.exists() and b.exists():
                print(f"PSNR of {n}'s {other} image against its f32 image: {psnr(a, b):.2f} dB")
        if "diffuse" in names:
            d_other = cell(raw, "diffuse", other, "generate_512", "wall")
            for n in names:
                ref = cell(raw, n, "f32", "generate_512", "wall")
                print(f"end-to-end, {n} f32 / diffuse {other}: {ref / d_other:.2f}×")


if __name__ == "__main__":
    main()
