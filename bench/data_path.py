"""The fine-tune step's data path, old vs new, side by side in one run (issue 16).

For each block setting: images/s of the data path alone (a batch fetched, resized to the input size,
augmented, and on the device), of the model step alone (the kernel's train_epoch on batches already on
the device), and of the full kernel step (train_epoch fed by the loader). "old" makes batches on the CPU
and moves them (the path before issue 16); "new" keeps the uint8 set on the training device and makes
batches there. On a CPU both are the same code (there is no other device), so the CPU figure that
matters is full / model-only: how much of the step the data path costs.

    python bench/data_path.py --quick            # CPU (1 thread): tiny_resnet 32 px and ResNet-50 at 64 px
    python bench/data_path.py --profile          # + the top ops of a full step whose ratio misses 0.9
    python bench/data_path.py                    # on a GPU: ResNet-50 224 px, bf16, channels-last
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from bench.timing import best_of, default_device, device_name, timed_seconds, use_threads
from workers import data, models
from workers.training import BatchStream, make_optimizer, train_epoch

SOURCE_PX = 32  # the small-image targets (CIFAR, SVHN, …) are stored at 32 px, uint8
TARGET = 0.9  # issue 16: the full step at >= 0.9 of the model-only step (on GPU)


@dataclass(frozen=True)
class Config:
    arch: str
    size: int
    batch: int


def configs(device: torch.device, quick: bool) -> list[Config]:
    if device.type == "cuda":
        return [Config("resnet50", 224, 128)]
    return [Config("tiny_resnet", 32, 32), Config("resnet50", 64, 4 if quick else 8)]


def uint8_set(images: int, seed: int = 0) -> data.ImageSet:
    """A CIFAR-like in-memory set: uint8 RGB at 32 px, 10 classes (random pixels: speed does not care)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (images, 3, SOURCE_PX, SOURCE_PX), generator=generator, dtype=torch.uint8)
    return data.ImageSet("bench-uint8", [i % 10 for i in range(images)], 10, 3, data=pixels)


def student(arch: str, blocks: int, device: torch.device) -> tuple[models.Classifier, torch.optim.Optimizer]:
    """As the transfer kernel builds it: the last `blocks` blocks + head trainable, channels-last on GPU."""
    torch.manual_seed(0)
    model = models.build_model(arch, 10)
    models.set_trainable_blocks(model, blocks)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], 0.01, 0.9, 5e-4)
    return model, optimizer


def stream(ds: data.ImageSet, config: Config, device: torch.device, new: bool) -> BatchStream:
    """The kernel's batch stream; old: batches made on the CPU, new: on `device` (make_train_loader)."""
    where = device if new else torch.device("cpu")
    return BatchStream(lambda seed: data.make_train_loader(ds, range(len(ds)), config.batch, config.size, seed=seed,
                                                           device=where), seed=0)


def on_device(batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
              device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for x, y in batches:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def measure(config: Config, blocks: int, steps: int, rounds: int, device: torch.device) -> dict[str, float]:
    """images/s: data_old, data_new (the data path alone), model (the step alone), full_old, full_new;
    each the best of `rounds` interleaved rounds."""
    ds = uint8_set(config.batch * (steps + 2))
    images = config.batch * steps
    model, optimizer = student(config.arch, blocks, device)
    streams = {new: stream(ds, config, device, new) for new in (False, True)}

    def data_rate(new: bool) -> float:
        seconds = timed_seconds(lambda: [x.sum() for x, _ in on_device(streams[new].loader(0, steps), device)], device)
        return images / seconds

    def step_rate(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
        seconds = timed_seconds(lambda: train_epoch(model, batches, optimizer, None, step=0, device=device), device)
        return images / seconds

    fixed = [(x.to(device), y.to(device)) for x, y in streams[True].loader(0, steps)]
    step_rate(fixed[:1])  # warm-up: allocator, autotuning, the set's one copy to the device
    data_rate(True)
    return best_of(rounds, lambda: {
        "data_old": data_rate(False), "data_new": data_rate(True), "model": step_rate(fixed),
        "full_old": step_rate(streams[False].loader(0, steps)), "full_new": step_rate(streams[True].loader(0, steps)),
    })


def profile_full_step(config: Config, blocks: int, steps: int, device: torch.device, rows: int = 12) -> None:
    """The top ops (self time) of the new full step, and the data path's share of it: where the time goes
    when full/model misses TARGET."""
    from torch.profiler import ProfilerActivity, profile

    ds = uint8_set(config.batch * steps)
    model, optimizer = student(config.arch, blocks, device)
    batches = stream(ds, config, device, True)
    train_epoch(model, batches.loader(0, 1), optimizer, None, step=0, device=device)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        train_epoch(model, batches.loader(1, steps - 1), optimizer, None, step=0, device=device)
    events = prof.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    # the loader's __next__ (fetch, resize, augment) is one profiler range in train_epoch's loop
    fetch = sum(event.cpu_time_total for event in events if event.key.startswith("enumerate(DataLoader)"))
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nprofile: {config.arch} {config.size} px, blocks={blocks}, new full step ({steps - 1} batches): "
          f"the data path (DataLoader __next__) is {fetch / max(total, 1):.0%} of the step's CPU time")
    print(events.table(sort_by=sort, row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds, a smaller ResNet-50 batch")
    parser.add_argument("--steps", type=int, default=None, help="timed batches per measurement")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds; the best counts")
    parser.add_argument("--blocks", type=int, nargs="+", default=[0, 1, 3, 9])
    parser.add_argument("--threads", type=int, default=1, help="CPU: torch threads (1, as a CPU trial)")
    parser.add_argument("--profile", action="store_true", help="profile the full step where full/model < 0.9")
    args = parser.parse_args()
    device = default_device()
    use_threads(device, args.threads)
    torch.backends.cudnn.benchmark = True
    gpu = device.type == "cuda"
    steps = args.steps or (20 if gpu else 2 if args.quick else 4)
    rounds = args.rounds or (3 if gpu else 2)
    dtype = "bf16 autocast, channels-last" if gpu else "fp32"
    print(f"device: {device_name(device)}; {dtype}; source images uint8 {SOURCE_PX} px; {steps} timed batches, "
          f"best of {rounds} rounds")
    if not gpu:
        print("(CPU: old and new are the same code path; compare full/model-only)")
    header = (f"{'arch':>11} {'px':>4} {'batch':>5} {'blocks':>6} | {'data old':>9} {'data new':>9} | "
              f"{'model':>8} | {'full old':>8} {'full new':>8} | {'old/model':>9} {'new/model':>9}")
    to_profile: list[tuple[Config, int]] = []
    for config in configs(device, args.quick):
        print(header)
        block_count = len(models.residual_block_names(models.build_model(config.arch, 10)))
        for requested in args.blocks:
            blocks = min(requested, block_count)  # tiny_resnet has 8 blocks: 9 means all of them
            rate = measure(config, blocks, steps, rounds, device)
            old_ratio, new_ratio = rate["full_old"] / rate["model"], rate["full_new"] / rate["model"]
            print(f"{config.arch:>11} {config.size:>4} {config.batch:>5} {blocks:>6} | {rate['data_old']:9.0f} "
                  f"{rate['data_new']:9.0f} | {rate['model']:8.1f} | {rate['full_old']:8.1f} {rate['full_new']:8.1f} | "
                  f"{old_ratio:9.2f} {new_ratio:9.2f}", flush=True)
            if new_ratio < TARGET and not any(c == config for c, _ in to_profile):
                to_profile.append((config, blocks))
    print(f"headline: full step / model-only step, old and new path (last two columns; target >= {TARGET} on GPU)")
    if args.profile:
        for config, blocks in to_profile:
            profile_full_step(config, blocks, max(steps, 3), device)


if __name__ == "__main__":
    main()
