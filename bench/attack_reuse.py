"""ASR of N transfers of one source: the cached adversarial set (workers/attacks/cache.py) vs one crafted
per trial, side by side in one run (issue 16: speed-up >= 0.8·N).

Each trial runs the transfer kernel's attack step (workers.kernels.transfer.transfer_asr: the source's
clean evaluation images, the adversarial set, the student's ASR) on its own fine-tuned student. "cached":
all trials share one artifacts directory, so the first crafts the set and the others read it; "per
trial": each trial has its own directory, so each crafts it. Both give the same ASR per student.

    python bench/attack_reuse.py --quick      # CPU, tiny_resnet 32 px: the paper's attack (40 steps), 128 images
    python bench/attack_reuse.py              # the paper's attack on its 1000 images
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.timing import default_device, device_name, timed_seconds, use_threads
from orchestrator.plan.grids import PAPER_ATTACK
from workers import data, models
from workers.context import KernelContext
from workers.kernels.transfer import resolve_transfer_params, transfer_asr

DATASET = "synthetic-target-a"


def students(source: models.Classifier, count: int, num_classes: int) -> list[models.Classifier]:
    """`count` stand-ins for fine-tuned students: the source with a new head and perturbed weights."""
    out = []
    for i in range(count):
        student = copy.deepcopy(source)
        models.replace_head(student, num_classes, init="default", generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            generator = torch.Generator().manual_seed(100 + i)
            for p in student.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=generator).to(p.device))
        out.append(student)
    return out


def run_trials(spec: dict[str, Any], params: dict[str, Any], source_path: str, source: models.Classifier,
               trials: list[models.Classifier], test_ds: data.ImageSet, device: torch.device, root: Path,
               shared: bool) -> tuple[float, list[float]]:
    """Seconds of the attack step of every trial, and their ASRs."""
    asrs: list[float] = []

    def run_all() -> None:
        for i, student in enumerate(trials):
            artifacts = root / ("shared" if shared else f"trial{i}")
            ctx = KernelContext(artifacts_dir=str(artifacts), device=str(device), source_path=source_path)
            asrs.append(float(transfer_asr(spec, ctx, params, source, student, test_ds, device)["asr"]))

    return timed_seconds(run_all, device), asrs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="128 images (the paper's 40 steps)")
    parser.add_argument("--trials", type=int, default=8, help="transfers of the one source (N)")
    parser.add_argument("--arch", default="tiny_resnet")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="CPU: torch threads (1, as a CPU trial)")
    args = parser.parse_args()
    device = default_device()
    use_threads(device, args.threads)
    # the speed-up depends on the attack's steps (crafting) against one evaluation per trial, not on the
    # number of images: --quick keeps the paper's steps on fewer images
    steps = int(PAPER_ATTACK["attack_steps"])
    images = 128 if args.quick else int(PAPER_ATTACK["attack_images"])
    # the attacked images: a generated split of exactly `images` images (the test split is smaller)
    test_ds = data.load_split(DATASET, True, params={"train_images": images})
    attack = {**PAPER_ATTACK, "attack_images": images, "attack_steps": steps}
    spec: dict[str, Any] = {"kind": "transfer", "arch": args.arch, "dataset": DATASET, "method": "finetune",
                            "seed": 0, "epochs": 1, "source": "file:source.pt", "blocks": None,
                            "params": {"input_size": args.size, **attack}}
    params = resolve_transfer_params(spec)
    with tempfile.TemporaryDirectory(prefix="attack_reuse_") as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        source = models.build_model(args.arch, 10)
        source_path = str(root / "source.pt")
        models.save_source_checkpoint(source, source_path, {"arch": args.arch, "dataset": "bench"})
        source.to(device).eval()
        trials = [s.to(device) for s in students(source, args.trials, test_ds.num_classes)]
        print(f"device: {device_name(device)}; {args.arch} {args.size} px; {args.trials} transfers of one source; "
              f"attack: {len(test_ds)} images x {steps} steps")
        per_trial, asr_per_trial = run_trials(spec, params, source_path, source, trials, test_ds, device, root / "a",
                                              shared=False)
        cached, asr_cached = run_trials(spec, params, source_path, source, trials, test_ds, device, root / "b",
                                        shared=True)
    assert asr_cached == asr_per_trial, "the cached set must give each student the ASR of a freshly crafted one"
    speedup = per_trial / cached
    target = 0.8 * args.trials
    print(f"per trial (craft every time): {per_trial:7.2f} s  ({per_trial / args.trials:.2f} s/trial)")
    print(f"cached (craft once, reuse):   {cached:7.2f} s  ({cached / args.trials:.2f} s/trial)")
    print(f"ASR identical per student: {[round(a, 3) for a in asr_cached]}")
    print(f"speed-up {speedup:.2f}x for N={args.trials}; target 0.8*N = {target:.1f}x: "
          f"{'met' if speedup >= target else 'missed'}")


if __name__ == "__main__":
    main()
