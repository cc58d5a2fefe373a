"""The device-resident data path (issue 16): the same batches as the CPU path for the same seeds, the same
kernel results on the CPU, the decoded-image cache, and the GPU suite's CPU smoke run.

No GPU is needed: the CPU path is compared with a frozen copy of the all-CPU path as it was before the
device path (so a changed random draw order or a changed op fails here); the device path's plumbing runs
on torch's "meta" device, where any tensor left on the CPU by mistake raises; with CUDA present, the
CUDA batches are compared too.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from image_folder import write_image_folder
from torchvision.transforms.v2 import functional as TF

from orchestrator.errors import UserError
from orchestrator.plan.cost import read_throughput
from orchestrator.run.runner import RunOptions, worker_settings
from workers import data
from workers.context import GPU_DATA_WORKERS, GPU_DECODE_CACHE_MB, KernelContext
from workers.data.decode_cache import DecodedImageCache
from workers.kernels import run_transfer

REPO = Path(__file__).resolve().parents[1]
SIZE = 16
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ------------------------------------------------------------------------------------- the frozen reference


def _reference_batch(ds: data.ImageSet, indices: Sequence[int], size: int, generator: torch.Generator | None,
                     swap_offsets: bool = False) -> torch.Tensor:
    """The utrera/none batch as commit 4effb1f made it, all on the CPU (ImageSet.batch, then augment_batch
    when a generator is given). Frozen: do not edit. swap_offsets draws the crop's column offsets before
    its row offsets, to show that the comparison catches a changed draw order."""
    assert ds.data is not None
    x = ds.data[torch.as_tensor(list(indices), dtype=torch.long)]
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    if x.shape[-2:] != (size, size):
        x = TF.resize(x, [size, size], antialias=True).clamp_(0, 1)
    if generator is None:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    first = torch.randint(0, 9, (b,), generator=generator)
    second = torch.randint(0, 9, (b,), generator=generator)
    oy, ox = (second, first) if swap_offsets else (first, second)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, :]
    x = padded[torch.arange(b)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)

    def grey(t: torch.Tensor) -> torch.Tensor:
        return t if t.shape[1] == 1 else 0.2989 * t[:, 0:1] + 0.587 * t[:, 1:2] + 0.114 * t[:, 2:3]

    factors = 0.75 + 0.5 * torch.rand(3, b, 1, 1, 1, generator=generator)
    for op in torch.randperm(3, generator=generator).tolist():
        f = factors[op]
        if op == 0:
            x = (x * f).clamp(0, 1)
        elif op == 1:
            x = (f * x + (1 - f) * grey(x).mean(dim=(1, 2, 3), keepdim=True)).clamp(0, 1)
        elif c == 3:
            x = (f * x + (1 - f) * grey(x)).clamp(0, 1)
    theta = (torch.rand(b, generator=generator) * 4 - 2) * math.pi / 180
    cos, sin = torch.cos(theta), torch.sin(theta)
    zeros = torch.zeros_like(cos)
    matrix = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = F.affine_grid(matrix, [b, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _uint8_set(channels: int) -> data.ImageSet:
    """An in-memory uint8 set at SIZE px (CIFAR-like storage: no resize at SIZE)."""
    generator = torch.Generator().manual_seed(channels)
    images = torch.randint(0, 256, (40, channels, SIZE, SIZE), generator=generator, dtype=torch.uint8)
    return data.ImageSet(f"uint8-{channels}ch", [i % 4 for i in range(40)], 4, channels, data=images)


SETS = {
    "digits (grey float 8 px, upsampled)": lambda: data.load_split("digits", True),
    "synthetic (RGB float 32 px, downsampled)": lambda: data.load_split("synthetic-target-a", True,
                                                                        params={"train_images": 200}),
    "uint8 grey": lambda: _uint8_set(1),
    "uint8 RGB": lambda: _uint8_set(3),
}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit on the CPU. On CUDA, reductions (the contrast mean) and the antialiased resize sum in
    another order, so the same random numbers give batches equal to float rounding (documented in README)."""
    if a.device.type == "cpu" and b.device.type == "cpu":
        return torch.equal(a, b)
    return torch.allclose(a.cpu(), b.cpu(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recipe", ["utrera", "none"])
@pytest.mark.parametrize("name", list(SETS))
def test_batches_equal_the_reference_cpu_path(name: str, recipe: str, device: str) -> None:
    ds = SETS[name]()
    indices = list(range(0, 40, 1)) + [3, 3]  # a repeated index too
    batches = list(data.make_train_loader(ds, indices, 16, SIZE, seed=11, recipe=recipe, device=device))
    # the (augmentation seed, indices) items that loader fetched: its sampler replayed from the same seed
    plan = list(data.make_train_loader(ds, indices, 16, SIZE, seed=11, recipe=recipe).sampler)
    assert len(batches) == len(plan) == 3
    for (aug_seed, batch_indices), (x, y) in zip(plan, batches, strict=True):
        generator = torch.Generator().manual_seed(aug_seed) if recipe == "utrera" else None
        assert x.device.type == y.device.type == device
        assert _same(x, _reference_batch(ds, batch_indices, SIZE, generator))
        assert y.tolist() == [ds.targets[i] for i in batch_indices]
    (x, y), = list(data.make_eval_loader(ds, indices, 64, SIZE, recipe=recipe, device=device))
    assert _same(x, _reference_batch(ds, indices, SIZE, None)) and y.tolist() == [ds.targets[i] for i in indices]


def test_a_changed_draw_order_is_caught() -> None:
    ds = _uint8_set(3)
    (seed, indices), = list(data.make_train_loader(ds, range(8), 8, SIZE, seed=2).sampler)
    (x, _), = list(data.make_train_loader(ds, range(8), 8, SIZE, seed=2))
    assert torch.equal(x, _reference_batch(ds, indices, SIZE, torch.Generator().manual_seed(seed)))
    swapped = _reference_batch(ds, indices, SIZE, torch.Generator().manual_seed(seed), swap_offsets=True)
    assert not torch.equal(x, swapped)


@pytest.mark.parametrize("recipe", ["utrera", "none"])
@pytest.mark.parametrize("name", ["digits (grey float 8 px, upsampled)", "uint8 RGB"])
def test_device_path_keeps_every_tensor_on_the_device(name: str, recipe: str) -> None:
    """On "meta" every op mixing a device tensor with a CPU one raises: the random draws move to the
    device, the index tensors are made there, and the set's data is moved once and reused."""
    ds = SETS[name]()
    on_meta = ds.on("meta")
    assert on_meta is ds.on("meta") and on_meta.data is not None and on_meta.data.device.type == "meta"
    assert ds.on("cpu") is ds and ds.data is not None and ds.data.device.type == "cpu"
    for loader in (data.make_train_loader(ds, range(20), 8, SIZE, seed=0, recipe=recipe, device="meta",
                                          num_workers=2),
                   data.make_eval_loader(ds, range(20), 8, SIZE, recipe=recipe, device="meta", num_workers=2)):
        assert loader.num_workers == 0 and not loader.pin_memory  # made in this process, on the device
        shapes = [(tuple(x.shape), x.device.type, y.device.type) for x, y in loader]
        assert shapes == [((8, ds.channels, SIZE, SIZE), "meta", "meta")] * 2 + [((4, ds.channels, SIZE, SIZE),
                                                                                  "meta", "meta")]


# ------------------------------------------------------------------------------------- kernel results on CPU


class _ReferenceFetcher(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """A loader item (augmentation seed, indices) -> the batch of the frozen all-CPU path (_reference_batch)."""

    def __init__(self, ds: data.ImageSet, size: int, augment: bool) -> None:
        self.ds, self.size, self.augment = ds, size, augment

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, item: tuple[int | None, list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        aug_seed, indices = item
        generator = torch.Generator().manual_seed(aug_seed) if self.augment and aug_seed is not None else None
        images = _reference_batch(self.ds, indices, self.size, generator).contiguous()
        return images, torch.tensor([self.ds.targets[i] for i in indices], dtype=torch.long)


def _short_transfer(tmp_path: Path) -> tuple[dict[str, torch.Tensor], list[tuple[int, dict[str, float]]]]:
    """A 2-epoch scratch finetune of tiny_resnet on synthetic-target-a (16 px, 60 images, batch 32): the
    final weights and the reported metrics (without the wall time)."""
    params = {"input_size": SIZE, "batch_size": 32, "lr": 0.01, "head_init": "default", "eval_images": 100}
    spec = {"kind": "transfer", "arch": "tiny_resnet", "dataset": "synthetic-target-a", "method": "finetune",
            "seed": 7, "epochs": 2, "source": "scratch", "source_checksum": None, "ood": None, "blocks": None,
            "subset_size": 60, "params": params, "kernel_version": "1"}
    states: list[dict[str, Any]] = []
    reports: list[tuple[int, dict[str, float]]] = []
    ctx = KernelContext(artifacts_dir=str(tmp_path / "artifacts"), save_state=states.append)
    run_transfer(spec, ctx, lambda epoch, metrics: reports.append((epoch, dict(metrics))))
    return states[-1]["model"], [(e, {k: v for k, v in m.items() if k != "seconds"}) for e, m in reports]


def test_cpu_kernel_results_are_those_of_the_reference_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole kernel on the CPU, once as it is and once with every batch made by the frozen all-CPU path
    (same batch plans, _reference_batch for the pixels): the weights and metrics are equal bit for bit.
    Compared within one run, so the check holds on any CPU (pinned float digests would not)."""
    torch.set_num_threads(1)
    weights, metrics = _short_transfer(tmp_path / "now")
    make_train, make_eval = data.make_train_loader, data.make_eval_loader

    def reference_train(ds: data.ImageSet, indices: Sequence[int], batch_size: int, input_size: int, seed: int,
                        augment: bool = True, **settings: Any) -> torch.utils.data.DataLoader:  # type: ignore[type-arg]
        plan = make_train(ds, indices, batch_size, input_size, seed=seed, augment=augment, **settings).sampler
        return torch.utils.data.DataLoader(_ReferenceFetcher(ds, input_size, augment), sampler=plan, batch_size=None)

    def reference_eval(ds: data.ImageSet, indices: Sequence[int], batch_size: int, input_size: int,
                       **settings: Any) -> torch.utils.data.DataLoader:  # type: ignore[type-arg]
        plan = make_eval(ds, indices, batch_size, input_size, **settings).sampler
        return torch.utils.data.DataLoader(_ReferenceFetcher(ds, input_size, False), sampler=plan, batch_size=None)

    monkeypatch.setattr(data, "make_train_loader", reference_train)
    monkeypatch.setattr(data, "make_eval_loader", reference_eval)
    reference_weights, reference_metrics = _short_transfer(tmp_path / "reference")
    assert metrics == reference_metrics and len(metrics) == 2
    assert weights.keys() == reference_weights.keys()
    assert all(torch.equal(weights[k], reference_weights[k]) for k in weights)
    # the run trained: the weights moved from their initialisation
    assert metrics[0][1]["train_loss"] != metrics[1][1]["train_loss"]


# ------------------------------------------------------------------------------------- decoded-image cache


def test_decode_cache_is_bounded_and_hits_return_the_same_tensor() -> None:
    decoded: list[int] = []

    def load_image(index: int) -> torch.Tensor:
        decoded.append(index)
        return torch.full((1, 16, 16), float(index))  # 1 KiB each

    cache = DecodedImageCache(load_image, budget_bytes=3 * 1024)
    first = cache(0)
    assert cache(0) is first and torch.equal(first, load_image(0)) and decoded == [0, 0]
    for index in (1, 2, 3):  # the fourth image evicts the least recently used (0)
        cache(index)
    assert len(cache) == 3 and cache.used_bytes == 3 * 1024 <= cache.budget_bytes
    assert (cache.hits, cache.misses) == (1, 4)
    cache(0)
    assert decoded[-1] == 0 and cache.misses == 5  # decoded again: it had been evicted
    huge = DecodedImageCache(lambda i: torch.zeros(4096), budget_bytes=1024)  # larger than the budget
    huge(0)
    assert len(huge) == 0 and huge.used_bytes == 0


def test_photo_loader_with_workers_and_cache_gives_the_same_batches(tmp_path: Path) -> None:
    name = write_image_folder(tmp_path)
    ds = data.load_split(name, True)
    cached = ds.with_decode_cache(1)
    assert cached.with_decode_cache(1) is cached and ds.with_decode_cache(0) is ds
    assert torch.equal(cached[5][0], ds[5][0]) and cached[5][0] is cached[5][0]
    plain = [(x, y) for x, y in data.make_train_loader(ds, range(12), 5, SIZE, seed=3, recipe="renofeation")]
    loader = data.make_train_loader(ds, range(12), 5, SIZE, seed=3, recipe="renofeation", num_workers=2,
                                    decode_cache_mb=1)
    assert loader.num_workers == 2 and not loader.pin_memory  # pinned only for a CUDA device
    for (a, ya), (b, yb) in zip(plain, list(loader), strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)


# ------------------------------------------------------------------------------------- runtime settings


def test_data_path_settings_travel_from_the_run_options_to_the_kernel() -> None:
    settings = worker_settings(RunOptions(gpus_per_trial=1.0, data_workers=3, decode_cache_mb=64.0), "artifacts")
    assert (settings.device, settings.data_workers, settings.decode_cache_mb) == ("cuda", 3, 64.0)
    explicit = KernelContext(device="cuda", data_workers=3, decode_cache_mb=64.0)
    assert (explicit.loader_workers(), explicit.loader_cache_mb()) == (3, 64.0)
    assert (KernelContext(device="cuda").loader_workers(), KernelContext(device="cuda").loader_cache_mb()) == \
        (GPU_DATA_WORKERS, GPU_DECODE_CACHE_MB)
    assert (KernelContext().loader_workers(), KernelContext().loader_cache_mb()) == (0, 0)  # CPU: as before
    with pytest.raises(UserError, match="--decode-cache-mb -1"):
        RunOptions(decode_cache_mb=-1.0)


# ------------------------------------------------------------------------------------- the GPU suite


def test_gpu_suite_smoke_run_writes_its_table(tmp_path: Path) -> None:
    table = tmp_path / "suite.csv"
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_suite.sh"), "--smoke", "--out", str(table)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    with table.open() as handle:
        rows = list(csv.DictReader(handle))
    measurements = ["model_step", "kernel_step_old", "kernel_step_new", "data_old", "data_new", "eval"]
    assert [(r["measurement"], r["blocks"]) for r in rows] == [(m, b) for b in ("0", "8") for m in measurements]
    for row in rows:
        assert float(row["images_per_s"]) > 0 and float(row["peak_mem_mib"]) > 0
        assert float(row["peak_fraction"]) == 0.0  # a CPU has no bf16 peak in the table: unknown, not invented
        if not row["measurement"].startswith("data_"):  # the data path runs no matmul or convolution
            assert float(row["gflop_per_image"]) > 0
    plan_rows = read_throughput(table.with_suffix(".throughput.csv"))  # as `rtgrid plan --throughput` reads it
    for blocks in ("0", "8"):
        row = plan_rows[("tiny_resnet", 16, blocks)]
        assert row.train_images_per_s > 0 and row.eval_images_per_s > 0 and "bench/gpu_suite.sh" in row.source
