"""The three throughput cases of docs/benchmarks.md, one after the other, as Markdown to paste there.

    uv run python benchmarks/throughput.py                 # CPU sizes, or GPU sizes when CUDA is there
    uv run python benchmarks/throughput.py --device cuda   # the GPU figures
    uv run python benchmarks/throughput.py --case resnet-18 --out docs/benchmarks.md  # one case, appended

Each case is what `ablate bench` runs with the options printed next to it (the same `run_bench`).
Cases never run concurrently: on a small machine they would measure each other. The load average
before and after each case says whether something else was running.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ablate.engine.bench import device_name, run_bench
from ablate.engine.train import resolve_device

# name -> (run_bench options, training images per epoch on a CPU, on a GPU). The CPU counts keep
# each case within about three minutes on 2 cores; the GPU counts are a full CIFAR epoch (and
# 10240 images at 224 px) so that an epoch lasts long enough to time.
CASES: dict[str, tuple[dict[str, object], int, int]] = {
    "resnet-20": ({"variant": "resnet-20", "dataset": "cifar10", "random_data": True}, 5120, 50_000),
    "resnet-56": ({"variant": "resnet-56", "dataset": "cifar10", "random_data": True}, 2560, 50_000),
    "resnet-18": ({"variant": "resnet-18", "dataset": "fashion-mnist", "size": 224, "batch_size": 64}, 256, 10_240),
}


def command(options: dict[str, object]) -> str:
    parts = ["ablate bench"]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        parts.append(flag if value is True else f"{flag} {value}")
    return " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--case", action="append", choices=list(CASES), help="run only these (repeatable)")
    parser.add_argument("--images", type=int, help="override every case's training images per epoch")
    parser.add_argument("--workers", type=int, default=2, help="the baseline DataLoader's workers")
    parser.add_argument("--out", type=Path, help="also append the Markdown to this file")
    args = parser.parse_args()
    device = resolve_device(args.device)

    lines = [
        f"Machine: {os.cpu_count()} CPUs ({device_name(torch.device('cpu'))}), "
        + (f"GPU {torch.cuda.get_device_name(device)}, " if device.type == "cuda" else "")
        + f"torch {torch.__version__}, Python {platform.python_version()}",
        "",
        "| case | command | engine img/s | baseline img/s | ratio | load before / after | others' CPU |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    print("\n".join(lines), flush=True)
    for name in args.case or CASES:
        options, cpu_images, gpu_images = CASES[name]
        options = {**options, "device": device.type, "images": args.images or (gpu_images if device.type == "cuda" else cpu_images),
                   "workers": args.workers}
        print(f"[{name}] {command(options)}", file=sys.stderr, flush=True)
        r = run_bench(**options)
        row = (f"| {r.variant}, {r.dataset}, {r.size} px | `{command(options)}` | {r.engine_ips:,.1f} | "
               f"{r.baseline_ips:,.1f} | {r.ratio:.2f}x | {r.load[0]:.2f} / {r.load[1]:.2f} | "
               f"{'-' if r.others_cpu is None else f'{r.others_cpu:.2f}'} |")
        lines.append(row)
        print(row, flush=True)
    lines.append(f"\n({r.date}; batch size as in the command, default 128; {r.threads} torch threads; "
                 f"{r.epochs} epochs per side, the first not timed.)")
    print(lines[-1])
    if args.out is not None:
        with args.out.open("a") as file:
            file.write("\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
