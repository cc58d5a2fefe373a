"""The GPU table of bench/gpu_suite.sh: images/s, the fraction of the device's bf16 peak (from a FLOP count
of the step) and peak memory, per measurement and block setting; written as CSV, plus the rows of
`rtgrid plan`'s throughput table (orchestrator/plan/throughput.csv columns) measured here.

Measurements (the kernel's code; bf16 autocast and channels-last on GPU, fp32 on CPU):
  model_step        train_epoch on batches already on the device (no data path)
  kernel_step_old   train_epoch fed by batches made on the CPU and moved (before issue 16)
  kernel_step_new   train_epoch fed by batches made on the device (issue 16)
  data_old/new      the data path alone (fetch, resize, augment, on the device)
  eval              workers.training.evaluate over the kernel's eval loader (GPU: 4x the training batch)

    python bench/gpu_suite.py --out gpu_suite.csv            # ResNet-50, 224 px, batch 128 on the GPU
    python bench/gpu_suite.py --smoke --out /tmp/t.csv       # tiny sizes: checks the code on a CPU
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.data_path import Config, on_device, stream, student, uint8_set
from bench.timing import default_device, device_name, timed_seconds, use_threads
from orchestrator.plan.cost import THROUGHPUT_COLUMNS
from workers import data, models
from workers.kernels.common import GPU_EVAL_BATCH_FACTOR
from workers.training import evaluate, train_epoch

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, by device-name substring;
# RTGRID_PEAK_TFLOPS or --peak-tflops overrides. 0: unknown (a CPU), and the fraction is reported as 0.
BF16_PEAK_TFLOPS: dict[str, float] = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0,
                                      "A10": 125.0, "RTX 4090": 165.2, "V100": 125.0}
COLUMNS = ["measurement", "arch", "size", "blocks", "batch", "images_per_s", "gflop_per_image", "achieved_tflops",
           "peak_tflops", "peak_fraction", "peak_mem_mib", "device"]


def peak_tflops(device: torch.device, override: float | None) -> float:
    if override is not None:
        return override
    if os.environ.get("RTGRID_PEAK_TFLOPS"):
        return float(os.environ["RTGRID_PEAK_TFLOPS"])
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), 0.0)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """The device's peak allocated memory since reset_memory; on a CPU the process's maximum RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def flops_per_image(run: Callable[[], object], images: int) -> float:
    """FLOPs of one call of `run` (matmuls and convolutions, forward and backward) per image."""
    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops()) / images


def suite(config: Config, blocks_list: Iterable[int], steps: int, device: torch.device,
          peak: float) -> list[dict[str, object]]:
    eval_batch = config.batch * (GPU_EVAL_BATCH_FACTOR if device.type == "cuda" else 1)
    ds = uint8_set(max(config.batch * (steps + 2), eval_batch * 2))
    block_count = len(models.residual_block_names(models.build_model(config.arch, 10)))
    return [row for blocks in sorted({min(b, block_count) for b in blocks_list})
            for row in measure_blocks(config, blocks, ds, eval_batch, steps, device, peak)]


def measure_blocks(config: Config, blocks: int, ds: data.ImageSet, eval_batch: int, steps: int,
                   device: torch.device, peak: float) -> list[dict[str, object]]:
    images = config.batch * steps
    model, optimizer = student(config.arch, blocks, device)
    streams = {new: stream(ds, config, device, new) for new in (False, True)}
    fixed = [(x.to(device), y.to(device)) for x, y in streams[True].loader(0, steps)]
    eval_loader = data.make_eval_loader(ds, range(eval_batch * 2), eval_batch, config.size, device=device)

    def train(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        train_epoch(model, batches, optimizer, None, step=0, device=device)

    train(fixed[:2])  # warm-up: allocator, autotuning, the set's copy on the device
    evaluate(model, eval_loader, device)
    train_flops = flops_per_image(lambda: train(fixed[:1]), config.batch)
    eval_flops = flops_per_image(lambda: evaluate(model, [fixed[0]], device), config.batch)
    measurements: list[tuple[str, Callable[[], object], int, float]] = [
        ("model_step", lambda: train(fixed), images, train_flops),
        ("kernel_step_old", lambda: train(streams[False].loader(0, steps)), images, train_flops),
        ("kernel_step_new", lambda: train(streams[True].loader(0, steps)), images, train_flops),
        ("data_old", lambda: [x.sum() for x, _ in on_device(streams[False].loader(0, steps), device)], images, 0.0),
        ("data_new", lambda: [x.sum() for x, _ in streams[True].loader(0, steps)], images, 0.0),
        ("eval", lambda: evaluate(model, eval_loader, device), eval_batch * 2, eval_flops),
    ]
    rows: list[dict[str, object]] = []
    for name, run, count, flops in measurements:
        reset_memory(device)
        rate = count / timed_seconds(run, device)
        achieved = rate * flops / 1e12
        rows.append({"measurement": name, "arch": config.arch, "size": config.size, "blocks": blocks,
                     "batch": eval_batch if name == "eval" else config.batch, "images_per_s": round(rate, 1),
                     "gflop_per_image": round(flops / 1e9, 4), "achieved_tflops": round(achieved, 4),
                     "peak_tflops": peak, "peak_fraction": round(achieved / peak, 4) if peak else 0.0,
                     "peak_mem_mib": round(peak_memory_mib(device), 1), "device": device_name(device)})
        print(", ".join(f"{k}={rows[-1][k]}" for k in COLUMNS[:7] + ["peak_fraction", "peak_mem_mib"]), flush=True)
    return rows


def throughput_rows(rows: list[dict[str, object]], dtype: str) -> list[dict[str, object]]:
    """`rtgrid plan --throughput` rows: the new kernel step and the evaluation, per block setting."""
    out = []
    for row in rows:
        if row["measurement"] != "kernel_step_new":
            continue
        evaluation = next(r for r in rows if r["measurement"] == "eval" and r["blocks"] == row["blocks"])
        out.append({"arch": row["arch"], "input_size": row["size"], "blocks": row["blocks"],
                    "train_images_per_s": round(float(str(row["images_per_s"]))),
                    "eval_images_per_s": round(float(str(evaluation["images_per_s"]))),
                    "device": f"{row['device']}, {dtype}",
                    "source": f"measured: bench/gpu_suite.sh (kernel step, batch {row['batch']}, device data path)"})
    return out


def write_csv(path: Path, columns: list[str], rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/gpu_suite.csv"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, two block settings: a CPU check of the code")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    args = parser.parse_args()
    device = default_device()
    torch.backends.cudnn.benchmark = True
    if args.smoke:
        use_threads(device, 1)
        configs, blocks, steps = [Config("tiny_resnet", 16, 8)], [0, 9], args.steps or 1
    else:
        configs, blocks, steps = [Config("resnet50", 224, 128)], [0, 1, 3, 9], args.steps or 20
    peak = peak_tflops(device, args.peak_tflops)
    dtype = "bf16 autocast, channels-last" if device.type == "cuda" else "fp32"
    print(f"device: {device_name(device)}; {dtype}; bf16 peak {peak or 'unknown'} TFLOP/s; {steps} timed batches")
    rows = [row for config in configs for row in suite(config, blocks, steps, device, peak)]
    write_csv(args.out, COLUMNS, rows)
    plan_rows = args.out.with_suffix(".throughput.csv")
    write_csv(plan_rows, list(THROUGHPUT_COLUMNS), throughput_rows(rows, dtype))
    print(f"table: {args.out}; rtgrid plan rows (orchestrator/plan/throughput.csv columns): {plan_rows}")


if __name__ == "__main__":
    main()
