"""Rows for orchestrator/plan/throughput.csv: training and evaluation images/s of one (architecture, input
size, fine-tuned blocks) on this machine, measured as the kernels run a step (SGD, cross-entropy, train-mode
BN; evaluation under no_grad). Prints CSV rows to paste into the table or pass to `rtgrid plan --throughput`.

    python bench/throughput.py --arch tiny_resnet --size 16 --batch 32 --blocks 3 8
    python bench/throughput.py --arch resnet50 --size 224 --batch 128 --blocks 0 1 3 9   # on the GPU
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from bench.timing import default_device, device_name, images_per_second
from workers import models


def rates(arch: str, blocks: int, batch: int, size: int, steps: int, device: torch.device) -> tuple[float, float]:
    torch.manual_seed(0)
    model = models.build_model(arch, 10)
    models.set_trainable_blocks(model, blocks)
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.01, momentum=0.9)
    images = torch.rand(batch, 3, size, size, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), labels).backward()
        optimizer.step()

    def eval_step() -> None:
        with torch.no_grad():
            model(images)

    train = images_per_second(train_step, batch, steps, device)
    model.eval()
    return train, images_per_second(eval_step, batch, steps, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="tiny_resnet")
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--blocks", type=int, nargs="+", default=[3, 8])
    args = parser.parse_args()
    device = default_device()
    name = device_name(device)
    for blocks in args.blocks:
        train, evaluation = rates(args.arch, blocks, args.batch, args.size, args.steps, device)
        print(f'{args.arch},{args.size},{blocks},{train:.0f},{evaluation:.0f},"{name}, fp32",'
              f'"measured: bench/throughput.py --arch {args.arch} --size {args.size} --batch {args.batch} '
              f'(batch {args.batch}, {args.steps} timed steps)"')


if __name__ == "__main__":
    main()
