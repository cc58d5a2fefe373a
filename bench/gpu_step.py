"""GPU training-step throughput of the fine-tune kernel's settings (bf16 autocast + channels-last)
against plain fp32, side by side in one process: ResNet-50 at 224 px, the Utrera block settings.

    python bench/gpu_step.py                 # needs a CUDA device; prints images/s and the ratio
    python bench/gpu_step.py --steps 5 --batch 8 --size 64    # a quick CPU smoke run of the code

The frozen prefix needs no explicit no_grad: its parameters do not require grad and neither does
the input, so autograd records nothing before the first trainable block.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from bench.timing import default_device, device_name, images_per_second
from workers import models
from workers.training import device_autocast


def step_rate(blocks: int, fast: bool, batch: int, size: int, steps: int, device: torch.device) -> float:
    torch.manual_seed(0)
    model = models.build_model("resnet50", 1000)
    models.replace_head(model, 10, init="normal")
    models.set_trainable_blocks(model, blocks)
    model.to(device).train()
    memory_format = torch.channels_last if fast else torch.contiguous_format
    model.to(memory_format=memory_format)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1, momentum=0.9, weight_decay=5e-4)
    images = torch.rand(batch, 3, size, size, device=device).to(memory_format=memory_format)
    labels = torch.randint(0, 10, (batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        context = device_autocast(device) if fast else torch.autocast(device_type=device.type, enabled=False)
        with context:
            loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()

    return images_per_second(step, batch, steps, device)  # warm-up first: cuDNN autotuning, allocator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    device = default_device()
    torch.backends.cudnn.benchmark = True
    name = device_name(device)
    print(f"device: {name}; ResNet-50, batch {args.batch}, {args.size} px, {args.steps} timed steps")
    for blocks in (0, 3, 9, 16):
        plain = step_rate(blocks, False, args.batch, args.size, args.steps, device)
        fast = step_rate(blocks, True, args.batch, args.size, args.steps, device)
        print(f"blocks={blocks:>2}: fp32 {plain:8.0f} img/s   bf16+channels-last {fast:8.0f} img/s   "
              f"ratio {fast / plain:.2f}x")


if __name__ == "__main__":
    main()
