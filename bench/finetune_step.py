"""The transfer kernel's fine-tune step vs a plain PyTorch loop written the obvious way, side by side in one
run (issue 16), images/s per block setting; and, with --compile, whether torch.compile pays off.

plain: the seeds' style: a Dataset of PIL images with torchvision transforms (Resize, RandomCrop(pad 4),
flip, ColorJitter(0.25, 0.25, 0.25), RandomRotation(2), to a float tensor) in a shuffling DataLoader, and a
fp32 loop (zero_grad, cross-entropy, backward, step). kernel: workers.training.train_epoch fed by the
kernel's BatchStream (batches made on the training device; bf16 + channels-last on GPU).

    python bench/finetune_step.py --quick            # CPU: tiny_resnet 32 px (< 1 min)
    python bench/finetune_step.py --compile          # + torch.compile of the kernel's model (slow to compile on CPU)
    python bench/finetune_step.py --arch resnet50 --size 224 --batch 128      # on a GPU
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bench.data_path import uint8_set
from bench.timing import default_device, device_name, timed_seconds, use_threads
from workers import data, models
from workers.training import BatchStream, make_optimizer, train_epoch


class PilImages(Dataset[tuple[Any, int]]):
    """The images as PIL, through a torchvision transform per image: how the seeds' scripts read CIFAR."""

    def __init__(self, ds: data.ImageSet, transform: Any) -> None:
        from torchvision.transforms.v2 import functional as TF

        assert ds.data is not None
        self.images = [TF.to_pil_image(image) for image in ds.data]
        self.targets = ds.targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.transform(self.images[index]), self.targets[index]


def plain_loader(ds: data.ImageSet, size: int, batch: int, workers: int) -> DataLoader[Any]:
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.Resize(size), transforms.RandomCrop(size, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(0.25, 0.25, 0.25), transforms.RandomRotation(2), transforms.ToTensor(),
    ])
    return DataLoader(PilImages(ds, transform), batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)


def model_for(arch: str, blocks: int, device: torch.device, kernel: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = models.build_model(arch, 10)
    models.set_trainable_blocks(model, blocks)
    model.to(device)
    if kernel and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], 0.01, 0.9, 5e-4)
    return model, optimizer


def plain_rate(ds: data.ImageSet, arch: str, blocks: int, size: int, batch: int, steps: int, workers: int,
               device: torch.device) -> float:
    model, optimizer = model_for(arch, blocks, device, kernel=False)
    loss_fn = nn.CrossEntropyLoss()
    loader = plain_loader(ds, size, batch, workers)

    def epoch(limit: int) -> None:
        model.train()
        for i, (x, y) in enumerate(loader):
            if i == limit:
                break
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()

    epoch(2)  # warm-up
    return batch * steps / timed_seconds(lambda: epoch(steps), device)


def kernel_rate(ds: data.ImageSet, arch: str, blocks: int, size: int, batch: int, steps: int, device: torch.device,
                compile_model: bool = False) -> tuple[float, float]:
    """(images/s, seconds of the warm-up, which includes compilation when compile_model)."""
    model, optimizer = model_for(arch, blocks, device, kernel=True)
    net: nn.Module = torch.compile(model) if compile_model else model  # type: ignore[assignment]
    stream = BatchStream(lambda seed: data.make_train_loader(ds, range(len(ds)), batch, size, seed=seed,
                                                             device=device), seed=0)
    warmup = timed_seconds(lambda: train_epoch(net, stream.loader(0, 2), optimizer, None, step=0, device=device),
                           device)
    seconds = timed_seconds(lambda: train_epoch(net, stream.loader(2, steps), optimizer, None, step=0, device=device),
                            device)
    return batch * steps / seconds, warmup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer timed batches")
    parser.add_argument("--arch", default=None, help="default: tiny_resnet on CPU, resnet50 on GPU")
    parser.add_argument("--size", type=int, default=None, help="default: 32 on CPU, 224 on GPU")
    parser.add_argument("--batch", type=int, default=None, help="default: 64 on CPU, 128 on GPU")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--blocks", type=int, nargs="+", default=[0, 1, 3, 9])
    parser.add_argument("--workers", type=int, default=0, help="the plain loop's DataLoader workers")
    parser.add_argument("--compile", action="store_true", help="also time the kernel step with torch.compile")
    parser.add_argument("--threads", type=int, default=1, help="CPU: torch threads (1, as a CPU trial)")
    args = parser.parse_args()
    device = default_device()
    use_threads(device, args.threads)
    gpu = device.type == "cuda"
    arch = args.arch or ("resnet50" if gpu else "tiny_resnet")
    size, batch = args.size or (224 if gpu else 32), args.batch or (128 if gpu else 64)
    steps = args.steps or (4 if args.quick else (20 if gpu else 8))
    torch.backends.cudnn.benchmark = True
    ds = uint8_set(batch * (steps + 4))
    block_count = len(models.residual_block_names(models.build_model(arch, 10)))
    print(f"device: {device_name(device)}; {arch} {size} px, batch {batch}, {steps} timed batches; plain loop: "
          f"{args.workers} loader workers, fp32; kernel: {'bf16 + channels-last' if gpu else 'fp32'}")
    print(f"{'blocks':>6} | {'plain img/s':>11} | {'kernel img/s':>12} | {'kernel/plain':>12}"
          + (f" | {'compiled img/s':>14} {'compile s':>9} {'compiled/kernel':>15}" if args.compile else ""))
    for requested in args.blocks:
        blocks = min(requested, block_count)  # tiny_resnet has 8 blocks: 9 means all of them
        plain = plain_rate(ds, arch, blocks, size, batch, steps, args.workers, device)
        kernel, _ = kernel_rate(ds, arch, blocks, size, batch, steps, device)
        line = f"{blocks:>6} | {plain:11.0f} | {kernel:12.0f} | {kernel / plain:11.2f}x"
        if args.compile:
            compiled, warmup = kernel_rate(ds, arch, blocks, size, batch, steps, device, compile_model=True)
            line += f" | {compiled:14.0f} {warmup:9.1f} {compiled / kernel:14.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
