"""Grid presets and YAML grid files -> list[TrialSpec].

Every preset is a function of plain data (the constants next to it). A grid lists its
source-training specs first; transfer specs that need a grid-trained source name it as
``spec:<source spec_hash>`` so the dedup key is known before the source exists.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError
from orchestrator.plan.names import check_experiment_name, printable
from orchestrator.plan.sources import SourceRef
from orchestrator.plan.spec import SpecError, TrialSpec

FULL = None  # subset_size of the whole training split


class GridError(UserError):
    """A grid name or grid file is invalid (one-line message)."""


@dataclass(frozen=True)
class Grid:
    name: str
    description: str
    specs: list[TrialSpec]
    notes: list[str] = field(default_factory=list)
    # Where a grid file found its `file:` sources: (source, sha256) -> path. Not part of any spec
    # (the same weights at another path are the same spec); workers get the path with the spec.
    source_files: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def sources(self) -> list[TrialSpec]:
        return [s for s in self.specs if s.kind == "source"]

    @property
    def transfers(self) -> list[TrialSpec]:
        return [s for s in self.specs if s.kind == "transfer"]


def _eval_epochs(epochs: int, every: int) -> list[int]:
    """Utrera paper text: every `every` epochs counted from epoch 1, plus the last (1-based): 1, 21, …, 81, 100
    for (100, 20); 1, 11, …, 141, 150 for (150, 10)."""
    return sorted({*range(1, epochs + 1, every), epochs})


def _code_eval_epochs(epochs: int, every: int) -> list[int]:
    """Utrera code: rows at 0-based epochs that are multiples of `every`, plus the last (REFERENCE C). The
    same 1-based epochs as the paper text's rule."""
    return sorted({*(e + 1 for e in range(0, epochs, every)), epochs})


# --- Utrera et al. 2021 -------------------------------------------------------------------

UTRERA_SOURCES: dict[str, str] = {
    "natural": "torchvision:resnet50",
    "l2-3": "robustness:imagenet_l2_3_0",
    "linf-4": "robustness:imagenet_linf_4",
    "linf-8": "robustness:imagenet_linf_8",
}
UTRERA_TARGETS = ("cifar100", "cifar10", "svhn", "fmnist", "kmnist", "mnist")
UTRERA_BLOCKS = (0, 1, 3, 9)
UTRERA_SEED_BASE = 20_000_000
UTRERA_SEED_STEP = 100_000
# OOD sets: the natural shift where one exists, else a fixed corruption of the test split.
UTRERA_OOD = {"cifar10": "cifar10.1"}
UTRERA_DEFAULT_OOD = "noise-3"

# subset size -> number of seeds
UTRERA_SEEDS_PAPER: dict[int | None, int] = {
    100: 20, 200: 20, 400: 20, 800: 20, 1600: 20,
    3200: 10, 6400: 10, 12800: 10, 25600: 10, FULL: 10,
}
UTRERA_SEEDS_TABLE4: dict[int | None, int] = {
    100: 20, 200: 20, 400: 20, 800: 20, 1600: 20,
    3200: 10, 6400: 10, 12800: 5, 25600: 5, FULL: 1,
}
UTRERA_SEEDS_CODE: dict[int | None, int] = {
    100: 10, 200: 10, 400: 10, 800: 10, 1600: 10, 3200: 10, 6400: 10,
    12800: 5, 25600: 5, FULL: 1,
}

PAPER_ATTACK = {
    "attack_eps": 0.1,
    "attack_step": 0.01,
    "attack_steps": 40,
    "attack_m": 1000.0,
    "attack_clamp": 2.2,
    "attack_images": 1000,
}


def utrera_seed(index: int) -> int:
    return UTRERA_SEED_BASE + UTRERA_SEED_STEP * index


def _utrera(seeds_per_size: Mapping[int | None, int], *, code_rules: bool) -> list[TrialSpec]:
    specs: list[TrialSpec] = []
    for source, blocks, target in itertools.product(UTRERA_SOURCES.values(), UTRERA_BLOCKS, UTRERA_TARGETS):
        for subset_size, n_seeds in seeds_per_size.items():
            small = subset_size is not None and subset_size <= 1600
            epochs = 100 if small else 150
            every = 20 if small else 10
            evals = _code_eval_epochs(epochs, every) if code_rules else _eval_epochs(epochs, every)
            params = {
                "input_size": 224,
                "batch_size": 128,
                "lr": 0.1,
                "momentum": 0.9,
                "weight_decay": 5e-4,
                "schedule": "step-every-third" if code_rules else "thirds",
                "eval_epochs": evals,
                "head_init": "normal",
                "bn_mode": "train",
                **PAPER_ATTACK,
            }
            for i in range(n_seeds):
                specs.append(
                    TrialSpec(
                        kind="transfer",
                        arch="resnet50",
                        source=source,
                        dataset=target,
                        ood=UTRERA_OOD.get(target, UTRERA_DEFAULT_OOD),
                        method="finetune",
                        blocks=blocks,
                        subset_size=subset_size,
                        seed=utrera_seed(i),
                        epochs=epochs,
                        params=params,
                    )
                )
    return specs


def utrera2021() -> Grid:
    return Grid(
        "utrera2021",
        "Utrera et al. 2021, paper text: 4 ImageNet ResNet-50 sources x blocks {0,1,3,9} x 6 targets "
        "x 150 (subset, seed) pairs = 14,400",
        _utrera(UTRERA_SEEDS_PAPER, code_rules=False),
        ["LR x0.1 at 1/3 and 2/3 of the epochs (paper text)", "'9 blocks' = layer3 + layer4 (code key '6')"],
    )


def utrera2021_table4() -> Grid:
    return Grid(
        "utrera2021-table4",
        "Utrera et al. 2021, Table 4 seeds (20/20/20/20/20/10/10/5/5/1) = 12,576",
        _utrera(UTRERA_SEEDS_TABLE4, code_rules=False),
    )


def utrera2021_code() -> Grid:
    return Grid(
        "utrera2021-code",
        "Utrera et al. 2021, released code: 10/5/1 seeds, StepLR every E/3 epochs = 7,776",
        _utrera(UTRERA_SEEDS_CODE, code_rules=True),
    )


# --- Renofeation (Chin et al.) -----------------------------------------------------------

RENO_ARCHS = ("resnet18", "resnet50", "resnet101", "mobilenet_v2")
# dataset -> (lr, weight_decay, momentum, lambda_feat) of the DELTA / fine-tune scripts
RENO_DATASETS: dict[str, tuple[float, float, float, float]] = {
    "flower": (5e-3, 1e-4, 0.9, 0.1),
    "indoor": (1e-2, 1e-4, 0.0, 0.5),
    "action": (5e-3, 0.0, 0.0, 1.0),
    "bird": (1e-2, 0.0, 0.0, 0.1),
    "dog": (1e-2, 0.0, 0.0, 10.0),
}
RENO_EVAL_ITERS = 1000  # the scripts evaluate every 1000 iterations: one reported "epoch"
RENO_LAMBDA_SP = 1e-2  # unknown in the scripts (REFERENCE A): a documented choice
RENO_OOD = UTRERA_DEFAULT_OOD  # no natural shift exists for these targets: a fixed corruption of the test split
RENO_ATTACK_IMAGES = 0  # ASR over the whole test set, as in the paper (0 = all)
RENO_DELTA_ADV_EPOCHS = 60  # Chin et al. Sec. 5.5: adversarial DELTA runs 2x the 30k iterations of DELTA


def _reno_common() -> dict[str, Any]:
    return {
        "input_size": 224,
        "augment": "renofeation",  # RandomResizedCrop + flip; resize 256 -> centre crop 224 (REFERENCE A)
        "batch_size": 64,
        "iterations_per_epoch": RENO_EVAL_ITERS,
        "schedule": "cosine",
        "beta_fc": 1e-2,
        "head_init": "default",
        **PAPER_ATTACK,
        "attack_images": RENO_ATTACK_IMAGES,
    }


def reno_variants(dataset: str) -> dict[str, tuple[str, int, dict[str, Any]]]:
    """variant name -> (method, epochs, params) for one dataset.

    The ablations name the ablated part explicitly (dropout 0 / swa_epochs 0): the kernel's
    renofeation defaults would otherwise silently turn them back into the full method."""
    lr, wd, mom, lam = RENO_DATASETS[dataset]
    tuned = {"lr": lr, "weight_decay": wd, "momentum": mom}
    scratch = {"lr": 1e-2, "weight_decay": 5e-3, "momentum": 0.9}
    reno_lam = 1.0 if dataset == "bird" else 5.0
    swa = {"swa_epochs": 30, "swa_lr": 5e-3, "swa_every": 500}
    return {
        "linear": ("linear", 30, {**tuned, "bn_mode": "eval"}),
        "finetune": ("finetune", 30, tuned),
        "l2sp": ("l2sp", 30, {**tuned, "lambda_sp": RENO_LAMBDA_SP}),
        "delta": ("delta", 30, {**tuned, "lambda_feat": lam}),
        "retrain": ("retrain", 90, {**scratch, "reinit": "reset"}),  # the code's re-init (REFERENCE A)
        "renofeation": ("renofeation", 90, {**scratch, "lambda_feat": reno_lam, "dropout": 0.1, **swa}),
        # ablations
        "delta-r": ("delta-r", 90, {**scratch, "lambda_feat": reno_lam}),
        "renofeation-no-dropout": ("renofeation", 90, {**scratch, "lambda_feat": reno_lam, "dropout": 0.0, **swa}),
        "renofeation-no-swa": (
            "renofeation", 90, {**scratch, "lambda_feat": reno_lam, "dropout": 0.1, **swa, "swa_epochs": 0}
        ),
        "delta-adv": (
            "delta",
            RENO_DELTA_ADV_EPOCHS,
            {**tuned, "lambda_feat": lam, "adv_norm": "linf", "adv_eps": 8 / 255, "adv_step": 2 / 255,
             "adv_steps": 3},
        ),
    }


def renofeation2021() -> Grid:
    specs = []
    for arch, dataset in itertools.product(RENO_ARCHS, RENO_DATASETS):
        for method, epochs, extra in reno_variants(dataset).values():
            blocks = 0 if method == "linear" else None
            specs.append(
                TrialSpec(
                    kind="transfer", arch=arch, source=f"torchvision:{arch}", dataset=dataset, ood=RENO_OOD,
                    method=method, blocks=blocks, seed=0, epochs=epochs,
                    params={**_reno_common(), **extra},
                )
            )
    return Grid(
        "renofeation2021",
        "Renofeation (Chin et al.): 4 archs x 5 datasets x (6 methods + 4 ablations); one 'epoch' = 1000 "
        "iterations",
        specs,
        [f"L2SP lambda = {RENO_LAMBDA_SP} (unknown in the released scripts)",
         "ASR over the whole test set (attack_images 0); DELTA-adv runs 2x DELTA's iterations (Sec. 5.5)"],
    )


# --- Andreassen et al. 2021 ----------------------------------------------------------------

ANDREASSEN_ARCHS = ("resnet18", "resnet50", "resnet101", "mobilenet_v2")
ANDREASSEN_SEEDS = (0, 1, 2, 3, 4)


def andreassen2021() -> Grid:
    specs = []
    for arch, seed in itertools.product(ANDREASSEN_ARCHS, ANDREASSEN_SEEDS):
        common = {"input_size": 224, "batch_size": 128, "momentum": 0.9, "weight_decay": 5e-4,
                  "schedule": "cosine"}
        specs.append(
            TrialSpec(kind="transfer", arch=arch, source=f"torchvision:{arch}", dataset="cifar10",
                      ood="cifar10.1", method="finetune", seed=seed, epochs=20,
                      params={**common, "lr": 0.01, "head_init": "default", **PAPER_ATTACK})
        )
        # Random init = method retrain: the architecture's constructor init, no fc penalty, and no ASR attack
        # (the ImageNet source's attack says nothing about a model that never saw its weights).
        specs.append(
            TrialSpec(kind="transfer", arch=arch, source=f"torchvision:{arch}", dataset="cifar10", ood="cifar10.1",
                      method="retrain", seed=seed, epochs=100,
                      params={**common, "lr": 0.1, "head_init": "default", "beta_fc": 0.0,
                              "reinit": "constructor"})
        )
    return Grid(
        "andreassen2021",
        "Andreassen et al.: pre-trained vs random-init on cifar10, ER on cifar10.1 at every epoch",
        specs,
    )


# --- smoke: the embedded demo ------------------------------------------------------------

SMOKE_SOURCE_METHODS: dict[str, dict[str, Any]] = {
    "natural": {},
    "pgd-l2": {"adv_norm": "l2", "adv_eps": 0.5, "adv_step": 0.3, "adv_steps": 2},
    "pgd-linf": {"adv_norm": "linf", "adv_eps": 8 / 255, "adv_step": 5 / 255, "adv_steps": 2},
}
SMOKE_TARGETS = {"digits": "noise-2", "synthetic-target-a": "noise-2"}
SMOKE_BLOCKS = (3, 8)  # tiny_resnet has 8 residual blocks: a partial and a full fine-tune
SMOKE_SUBSETS = (100, 400)
SMOKE_SEEDS = (0, 1)
SMOKE_TESTBED_SUBSETS = (50, 100, 200, 400, FULL)
SMOKE_ARCH = "tiny_resnet"


def smoke() -> Grid:
    # PyTorch's default head init: the paper's N(0,1) head needs far more than the demo's few steps.
    base = {"input_size": 16, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
            "schedule": "thirds", "eval_images": 500, "head_init": "default"}
    sources = [
        TrialSpec(kind="source", arch=SMOKE_ARCH, dataset="synthetic-source", ood="noise-2", method=method, seed=0,
                  epochs=6, params={**base, "batch_size": 64, "lr": 0.1, "robust_eval_steps": 5, **adv})
        for method, adv in SMOKE_SOURCE_METHODS.items()
    ]
    attack = {"attack_eps": 0.1, "attack_step": 0.01, "attack_steps": 10, "attack_m": 1000.0,
              "attack_clamp": 2.2, "attack_images": 200}
    transfers = []
    for source, (target, ood), blocks, subset, seed in itertools.product(
        sources, SMOKE_TARGETS.items(), SMOKE_BLOCKS, SMOKE_SUBSETS, SMOKE_SEEDS
    ):
        transfers.append(
            TrialSpec(kind="transfer", arch=SMOKE_ARCH, source=f"spec:{source.spec_hash}", dataset=target,
                      ood=ood, method="finetune", blocks=blocks, subset_size=subset, seed=seed, epochs=10,
                      params={**base, **attack})
        )
    # Random-init (method retrain) models of varied quality: the ER testbed (baseline fit per target). The
    # natural source only serves the ASR attack, whose adversarial sets the transfers above already built.
    natural = f"spec:{next(s for s in sources if s.method == 'natural').spec_hash}"
    testbed = [
        TrialSpec(kind="transfer", arch=SMOKE_ARCH, source=natural, dataset=target, ood=ood,
                  method="retrain", subset_size=subset, seed=0, epochs=10, params={**base, **attack})
        for (target, ood), subset in itertools.product(SMOKE_TARGETS.items(), SMOKE_TESTBED_SUBSETS)
    ]
    return Grid(
        "smoke",
        "embedded CPU demo: 3 synthetic sources (natural, l2, linf) -> digits + synthetic target, "
        "2 block settings x 2 subset sizes x 2 seeds, plus a random-init (retrain) ER testbed",
        sources + transfers + testbed,
    )


# --- study: the embedded study of the three papers' claims (the demo, issue 12) --------------------------


@dataclass(frozen=True)
class StudyScale:
    """How much of the study runs: `full` is the demo (<= 10 min on 2 cores), `reduced` the tests' version."""

    seeds: int  # paired seeds of every Utrera / Chin cell
    source_epochs: int
    transfer_epochs: Mapping[int, int]  # training images -> epochs (Utrera and Chin arms)
    er_seeds: int  # Andreassen: pre-trained and random-init runs each
    er_epochs: int
    testbed_subsets: tuple[int, ...]  # Andreassen: the independent random-init testbed, per seed
    testbed_seeds: int


STUDY_SCALES: dict[str, StudyScale] = {
    "full": StudyScale(seeds=5, source_epochs=8, transfer_epochs={100: 30, 400: 20}, er_seeds=5, er_epochs=12,
                       testbed_subsets=(100, 200, 400, 800, 1600), testbed_seeds=2),
    "reduced": StudyScale(seeds=3, source_epochs=5, transfer_epochs={100: 20, 400: 10}, er_seeds=3, er_epochs=8,
                          testbed_subsets=(100, 200, 400, 800), testbed_seeds=2),
}
STUDY_ARCH = "tiny_resnet"  # 8 residual blocks
STUDY_SOURCE = "shortcut-source"
STUDY_CONFLICT = "shape-conflict"  # the source's OOD set: its ood_acc is the share of images classified by shape
STUDY_SOURCE_METHODS: dict[str, dict[str, Any]] = {
    "natural": {},
    "pgd-linf": {"adv_norm": "linf", "adv_eps": 0.1, "adv_step": 0.04, "adv_steps": 3},
    "pgd-l2": {"adv_norm": "l2", "adv_eps": 1.5, "adv_step": 0.6, "adv_steps": 3},
}
STUDY_INPUT_SIZE = 16
STUDY_CHANNELS = 3
# The shortcut's ± amplitude: the largest (to 0.01) that BOTH training adversaries can erase from every pixel
# (l_inf: a <= eps; l_2: a * sqrt(3*16*16) <= eps), so the pattern is as easy as it can be for a natural
# model while adversarial training still removes it. The data's default (0.04) was too weak: natural sources
# of some seeds classified conflict images by shape (26-79 % vs 2-12 % at 0.05, seeds 0-300).
STUDY_SHORTCUT_AMPLITUDE = math.floor(100 * min(
    next(m["adv_eps"] for m in STUDY_SOURCE_METHODS.values() if m.get("adv_norm") == "linf"),
    next(m["adv_eps"] for m in STUDY_SOURCE_METHODS.values() if m.get("adv_norm") == "l2")
    / math.sqrt(STUDY_CHANNELS * STUDY_INPUT_SIZE ** 2))) / 100
STUDY_DIGIT_TARGETS = ("digits", "mnist")  # embedded sklearn digits, or real MNIST under --data-root
STUDY_SHAPE_TARGET = "shape-target"
STUDY_OOD = "intensity-3"  # background offset + foreground gain: a shift the sources' nuisance covers
STUDY_BLOCKS = 3  # Utrera / Chin fine-tuning: the last 3 of 8 blocks + head
STUDY_ALL_BLOCKS = 8  # Andreassen: the whole network
STUDY_DELTA_LAMBDA = 1.0
STUDY_ATTACK = {"attack_eps": 0.1, "attack_step": 0.01, "attack_steps": 10, "attack_m": 1000.0,
                "attack_clamp": 2.2, "attack_images": 0}  # ASR over the whole target test set
STUDY_TESTBED_SEED_OFFSET = 1000  # testbed seeds never equal the compared runs' seeds


def study_experiment(seed_base: int, target: str = "digits", scale: str = "full") -> str:
    """The experiment of one study run: a new name per seed base, target and scale."""
    parts = ["study", *([target] if target != "digits" else []), *([scale] if scale != "full" else [])]
    return f"{'-'.join(parts)}-s{seed_base}"


def _study_common(epochs: int) -> dict[str, Any]:
    return {"input_size": STUDY_INPUT_SIZE, "augment": "none", "batch_size": 32, "lr": 0.05, "momentum": 0.9,
            "weight_decay": 5e-4, "schedule": "thirds", "eval_images": 0, "head_init": "default",
            "eval_epochs": [epochs]}


def _study_sources(scale: StudyScale, seed_base: int) -> list[TrialSpec]:
    params = {**_study_common(scale.source_epochs), "batch_size": 64, "lr": 0.1, "robust_eval_steps": 5,
              "shortcut_amplitude": STUDY_SHORTCUT_AMPLITUDE}
    return [TrialSpec(kind="source", arch=STUDY_ARCH, dataset=STUDY_SOURCE, ood=STUDY_CONFLICT, method=method,
                      seed=seed_base, epochs=scale.source_epochs, params={**params, **adv})
            for method, adv in STUDY_SOURCE_METHODS.items()]


def _study_testbed(scale: StudyScale, seed_base: int, natural: str) -> list[TrialSpec]:
    """Andreassen's independent testbed: random-init runs of varied quality (other seeds, smaller sets)."""
    return [TrialSpec(kind="transfer", arch=STUDY_ARCH, source=natural, dataset=STUDY_SHAPE_TARGET, ood=STUDY_OOD,
                      method="retrain", subset_size=subset, seed=seed_base + STUDY_TESTBED_SEED_OFFSET + i,
                      epochs=scale.er_epochs, params=_study_common(scale.er_epochs))
            for subset, i in itertools.product(scale.testbed_subsets, range(scale.testbed_seeds))]


def study(seed_base: int = 0, target: str = "digits", scale: str = "full") -> Grid:
    """Three arms on generated sources (natural, l_inf, l_2) of a shape set with a non-robust shortcut:
    Utrera (robust vs natural fine-tuning on a digit target and a shape target at 100 / 400 images),
    Chin (linear, finetune, delta, retrain, renofeation on the digit target, ASR on its whole test set, at
    the same two budgets), Andreassen (pre-trained vs random-init on the shape target with per-epoch ER on
    intensity-3, against an independent testbed: `study_testbed`, planned into this grid too)."""
    if target not in STUDY_DIGIT_TARGETS:
        raise GridError(f"study target must be one of {', '.join(STUDY_DIGIT_TARGETS)}, got {target!r}")
    if scale not in STUDY_SCALES:
        raise GridError(f"study scale must be one of {', '.join(STUDY_SCALES)}, got {scale!r}")
    size = STUDY_SCALES[scale]
    sources = _study_sources(size, seed_base)
    by_method = {s.method: f"spec:{s.spec_hash}" for s in sources}
    natural = by_method["natural"]
    seeds = [seed_base + i for i in range(size.seeds)]
    specs = list(sources)

    def transfer(source: str, dataset: str, method: str, blocks: int | None, subset: int | None, seed: int,
                 epochs: int, **extra: Any) -> TrialSpec:
        attack = STUDY_ATTACK if dataset == target else {}
        params = {**_study_common(epochs), **attack, **extra}
        return TrialSpec(kind="transfer", arch=STUDY_ARCH, source=source, dataset=dataset, ood=STUDY_OOD,
                         method=method, blocks=blocks, subset_size=subset, seed=seed, epochs=epochs, params=params)

    # Utrera: every source fine-tuned on both targets (the digit target's runs are Chin's finetune arm too)
    for dataset, source, (subset, epochs), seed in itertools.product(
            (target, STUDY_SHAPE_TARGET), sources, size.transfer_epochs.items(), seeds):
        specs.append(transfer(f"spec:{source.spec_hash}", dataset, "finetune", STUDY_BLOCKS, subset, seed, epochs))
    # Chin: the other methods from the natural source (the attack's source model) on the digit target
    chin: dict[str, tuple[int | None, dict[str, Any]]] = {
        "linear": (0, {"bn_mode": "eval"}),
        "delta": (STUDY_BLOCKS, {"lambda_feat": STUDY_DELTA_LAMBDA}),
        "retrain": (None, {}),
        "renofeation": (None, {"swa_every": 4}),
    }
    for (method, (blocks, extra)), (subset, epochs), seed in itertools.product(
            chin.items(), size.transfer_epochs.items(), seeds):
        specs.append(transfer(natural, target, method, blocks, subset, seed, epochs, **extra))
    # Andreassen: the whole shape-target training set, ID and OOD accuracy at every epoch
    for method, blocks, i in itertools.product(("finetune", "retrain"), (STUDY_ALL_BLOCKS,), range(size.er_seeds)):
        specs.append(transfer(natural, STUDY_SHAPE_TARGET, method, blocks if method == "finetune" else None, FULL,
                              seed_base + i, size.er_epochs, eval_epochs=[]))
    specs += _study_testbed(size, seed_base, natural)
    return Grid(
        "study",
        f"the embedded study ({scale}, seed base {seed_base}, digit target {target}): 3 shortcut sources; Utrera "
        f"(finetune, 2 targets x 2 sizes x {size.seeds} seeds), Chin (5 methods, ASR on the whole test set), "
        f"Andreassen (pre-trained vs random init, per-epoch ER, independent testbed of "
        f"{len(size.testbed_subsets) * size.testbed_seeds} runs)",
        specs,
    )


def study_testbed(seed_base: int = 0, target: str = "digits", scale: str = "full") -> Grid:
    """The Andreassen testbed alone (its own experiment: the ER baseline is fitted on it, never on the
    compared runs). Every spec is also in `study`, so planning it runs nothing new."""
    size = STUDY_SCALES[scale]
    sources = _study_sources(size, seed_base)
    natural = f"spec:{next(s for s in sources if s.method == 'natural').spec_hash}"
    return Grid("study-testbed", "the study's independent random-init ER testbed",
                [*sources, *_study_testbed(size, seed_base, natural)])


PRESETS: dict[str, Callable[[], Grid]] = {
    "utrera2021": utrera2021,
    "utrera2021-table4": utrera2021_table4,
    "utrera2021-code": utrera2021_code,
    "renofeation2021": renofeation2021,
    "andreassen2021": andreassen2021,
    "smoke": smoke,
    "study": study,
}


# --- YAML grid files -----------------------------------------------------------------------

SPEC_AXES = ("kind", "arch", "dataset", "method", "seed", "epochs", "source", "ood", "blocks", "subset_size")
_TOP_KEYS = {"name", "description", "fixed", "axes", "sources"}
# The type every top-level value must have (checked before use: a list where a mapping belongs
# must be a one-line GridError, not an AttributeError deep in the expansion).
_TOP_TYPES: dict[str, tuple[type, str]] = {
    "name": (str, "a string"),
    "description": (str, "a string"),
    "fixed": (dict, "a mapping"),
    "axes": (dict, "a mapping of axis: [values]"),
    "sources": (dict, "a mapping of name: {fields}"),
}


def _parse_subset(value: Any) -> int | None:
    return None if value in ("full", None) else value


def _split_params(flat: dict[str, Any], where: str) -> dict[str, Any]:
    """`params: {...}` and `params.<name>: value` fields, merged into one mapping (removed from flat)."""
    params = flat.pop("params", None) or {}
    if not isinstance(params, dict):
        raise GridError(f"{where}: 'params' must be a mapping of name: value, got {_shown(params)}")
    params = dict(params)
    for key in list(flat):
        if key.startswith("params."):
            params[key.removeprefix("params.")] = flat.pop(key)
    return params


def _spec_from_fields(fields: Mapping[str, Any], where: str) -> TrialSpec:
    names = [key for key in fields if not isinstance(key, str)]
    if names:
        raise GridError(f"{where}: field names must be strings, got {_shown(names[0])}")
    flat = dict(fields)
    params = _split_params(flat, where)
    unknown = set(flat) - set(SPEC_AXES)
    if unknown:
        raise GridError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} (known: {', '.join(SPEC_AXES)}, "
                        "params.<name>)")
    if "subset_size" in flat:
        flat["subset_size"] = _parse_subset(flat["subset_size"])
    try:
        return TrialSpec.from_dict({**flat, "params": params})
    except (SpecError, TypeError) as exc:
        raise GridError(f"{where}: {exc}") from None


def _resolve_source(value: Any, named_sources: Mapping[str, TrialSpec], base_dir: Path
                    ) -> tuple[str, str | None, str | None]:
    """(the spec's source, its checksum, the file's path) for a grid file's `source` value."""
    if not isinstance(value, str):
        raise GridError(f"source must be a string, got {_shown(value)}")
    if value.startswith("grid:"):
        name = value.removeprefix("grid:")
        if name not in named_sources:
            raise GridError(f"source {value!r} names no entry of 'sources:' (have: {', '.join(named_sources)})")
        return f"spec:{named_sources[name].spec_hash}", None, None
    if value.startswith("manifest:"):  # a source model by id: its file must match the manifest's sha256
        from orchestrator.plan.manifest import resolve

        return resolve(value)
    try:
        ref = SourceRef.parse(value)
    except ValueError as exc:
        raise GridError(f"{exc} (or grid:<name> of 'sources:', or manifest:<name> of `rtgrid sources list`)") from None
    if ref.scheme == "file":
        try:
            path = Path(ref.name).expanduser()
        except RuntimeError:  # ~user that does not exist
            raise GridError(f"source file not found: {ref.name}") from None
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise GridError(f"source file not found: {path}")
        from workers.trainable import sha256_file

        # Identity by name and content, never by location: the path travels beside the spec.
        return str(SourceRef("file", path.name)), sha256_file(path), str(path.resolve())
    return str(ref), None, None


# Bounds on a grid file, checked before anything is expanded: a 1 KiB file can name 10^9 specs
# (axes multiply) or 10^9 nodes (YAML aliases nest: "billion laughs").
DEFAULT_MAX_SPECS = 100_000  # the flagship utrera2021 grid has 14,400
MAX_GRID_FILE_BYTES = 4 * 1024 * 1024
MAX_YAML_NODES = 100_000  # counted with every alias expanded


def _shown(value: Any, limit: int = 60) -> str:
    """A user's value for a one-line message, cut short (it may be a huge list)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _expanded_size(root: Any, path: Path) -> int:
    """Nodes of a composed YAML document with every alias expanded, stopping past MAX_YAML_NODES.

    Shared nodes are counted once per use (memoised, so the count itself is linear in the file)."""
    import yaml

    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in in_progress:
            raise GridError(f"{path}: a YAML alias refers to itself (recursive anchor); grids are plain data")
        in_progress.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        in_progress.discard(key)
        sizes[key] = min(total, MAX_YAML_NODES + 1)
        return sizes[key]

    return size(root)


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        if path.stat().st_size > MAX_GRID_FILE_BYTES:
            raise GridError(f"{path}: {path.stat().st_size:,} bytes is too large for a grid file (limit "
                            f"{MAX_GRID_FILE_BYTES:,}); a grid names axes, not every spec")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise GridError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
                        ) from None
    except OSError as exc:
        raise GridError(f"cannot read grid file {path}: {exc.strerror}") from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        if _expanded_size(root, path) > MAX_YAML_NODES:
            raise GridError(f"{path}: YAML aliases expand to more than {MAX_YAML_NODES:,} values (an alias bomb?); "
                            "write the grid's axes out plainly")
        return loader.construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise GridError(f"malformed YAML in {path}{where}") from None
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:
        if isinstance(exc, GridError):
            raise
        # PyYAML's constructors raise these for bad scalars (`2020-13-01`, `!!int x`)
        lines = str(exc).strip().splitlines()
        raise GridError(f"malformed YAML in {path}: {lines[0] if lines else type(exc).__name__}") from None
    finally:
        loader.dispose()


class _Lines:
    """1-based line of each mapping key of a grid file, by key path: ("axes", "seed") -> 7. Errors cite
    `file:line:` so that a mistake in a long grid file is found at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: dict[tuple[Any, ...], int] = {}
        import yaml

        try:
            root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
        except (yaml.YAMLError, OSError, UnicodeDecodeError):  # _read_yaml already read and parsed it
            return
        self._walk(root, ())

    def _walk(self, node: Any, prefix: tuple[Any, ...]) -> None:
        import yaml

        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                self.lines[(*prefix, name)] = key.start_mark.line + 1
                self._walk(value, (*prefix, name))

    def at(self, *keys: Any) -> str:
        """`file:line` of the key path (its closest known parent), else `file`."""
        for end in range(len(keys), 0, -1):
            line = self.lines.get(tuple(str(k) for k in keys[:end]))
            if line is not None:
                return f"{self.path}:{line}"
        return str(self.path)

    def blame(self, message: str, sections: Sequence[tuple[tuple[Any, ...], Mapping[str, Any]]]) -> str | None:
        """`file:line` of the first field a spec error names (by name, or by a string value), else None.
        `sections`: (key path, its mapping) pairs, e.g. (("axes",), axes), (("fixed",), fixed)."""
        for prefix, fields in sections:
            for key, value in fields.items():
                names = {f"'{key}'", f"'{str(key).removeprefix('params.')}'"}
                values = value if prefix == ("axes",) and isinstance(value, list) else [value]
                if any(n in message for n in names) or any(
                        isinstance(v, str) and f"'{v}'" in message for v in values):
                    return self.at(*prefix, key)
                if key == "params" and isinstance(value, dict):
                    found = self.blame(message, [((*prefix, "params"), value)])
                    if found is not None:
                        return found
        return None


def _check_top_level(data: Any, path: Path, lines: _Lines) -> None:
    if not isinstance(data, dict):
        raise GridError(f"{path}: a grid file must be a mapping with 'fixed' and 'axes'")
    at = lines.at
    unknown = sorted(map(str, set(data) - _TOP_KEYS))
    if unknown:
        raise GridError(f"{at(unknown[0])}: unknown top-level key(s) {', '.join(unknown)} (known: "
                        f"{', '.join(sorted(_TOP_KEYS))})")
    for key, (expected, what) in _TOP_TYPES.items():
        value = data.get(key)
        if value is not None and not isinstance(value, expected):
            raise GridError(f"{at(key)}: '{key}' must be {what}, got {_shown(value)}")


def _check_size(count: int, what: str, max_specs: int) -> None:
    if count > max_specs:
        raise GridError(f"{what} has {count:,} specs, above the limit of {max_specs:,}; check the axes, or raise "
                        f"the limit with --max-specs {count}")


def load_grid_file(path: str | Path, max_specs: int = DEFAULT_MAX_SPECS) -> Grid:
    path = Path(path)
    data = _read_yaml(path)
    lines = _Lines(path)
    _check_top_level(data, path, lines)
    grid_name = str(data.get("name") or path.stem)
    if data.get("name") is not None:  # chosen by the file's author: the default experiment name, so the same rule
        check_experiment_name(grid_name, f"grid name in {lines.at('name')}")
    if grid_name in PRESETS:
        # An experiment holds one grid, known by its name: a file named like a preset would be planned into
        # the preset's experiment as if it were the preset. Refused rather than renamed behind the user's back.
        raise GridError(f"{lines.at('name')}: grid name {grid_name!r} is a preset's name; give the file its own "
                        "name (name: … in the file, or rename it)")
    fixed = data.get("fixed") or {}
    axes = data.get("axes") or {}
    for axis, values in axes.items():
        if not isinstance(values, list) or not values:
            raise GridError(f"{lines.at('axes', axis)}: axis {_shown(axis)} must be a non-empty list")
        if axis not in SPEC_AXES and not str(axis).startswith("params."):
            raise GridError(f"{lines.at('axes', axis)}: unknown axis {_shown(axis)} (known: {', '.join(SPEC_AXES)}, "
                            "params.<name>)")
    overlap = sorted(map(str, set(fixed) & set(axes)))
    if overlap:
        raise GridError(f"{lines.at('axes', overlap[0])}: {', '.join(overlap)} is both fixed and an axis")

    named_sources: dict[str, TrialSpec] = {}
    for name, fields in (data.get("sources") or {}).items():
        if not isinstance(name, str):
            raise GridError(f"{lines.at('sources')}: source names must be strings, got {_shown(name)}")
        if not isinstance(fields, dict):
            raise GridError(f"{lines.at('sources', name)}: sources.{name} must be a mapping")
        try:
            named_sources[name] = _spec_from_fields({"kind": "source", **fields}, f"sources.{name}")
        except GridError as exc:
            where = lines.blame(str(exc), [(("sources", name), fields)]) or lines.at("sources", name)
            raise GridError(f"{where}: {exc}") from None

    # count before expanding: the axes multiply
    sizes = " x ".join(f"{axis}: {len(values)}" for axis, values in axes.items())
    _check_size(len(named_sources) + math.prod(len(v) for v in axes.values()), f"{path} ({sizes})", max_specs)
    specs: list[TrialSpec] = list(named_sources.values())
    source_files: dict[tuple[str, str], str] = {}
    names = list(axes)
    for combo in itertools.product(*(axes[n] for n in names)):
        fields = {"kind": "transfer", **fixed, **dict(zip(names, combo, strict=True))}
        checksum = file_path = None
        if fields.get("source") is not None:
            try:
                fields["source"], checksum, file_path = _resolve_source(fields["source"], named_sources, path.parent)
            except GridError as exc:
                where = lines.at("axes", "source") if "source" in axes else lines.at("fixed", "source")
                raise GridError(f"{where}: {exc}") from None
        try:
            spec = _spec_from_fields(fields, "spec")
        except GridError as exc:
            where = lines.blame(str(exc), [(("axes",), axes), (("fixed",), fixed)]) or str(path)
            raise GridError(f"{where}: {str(exc).removeprefix('spec: ')}") from None
        if checksum is not None:
            spec = TrialSpec.from_dict({**spec.to_dict(), "source_checksum": checksum})
        if file_path is not None:
            source_files[(str(spec.source), str(checksum))] = file_path
        specs.append(spec)
    unique = list(dict.fromkeys(specs))
    return Grid(grid_name, printable(str(data.get("description") or f"grid file {path}")), unique,
                source_files=source_files)


def load_grid(name_or_path: str, max_specs: int = DEFAULT_MAX_SPECS) -> Grid:
    """A preset by name, else a YAML grid file; refused above `max_specs` specs (counted before expanding)."""
    if max_specs < 1:
        raise GridError(f"--max-specs must be at least 1, got {max_specs}")
    if name_or_path in PRESETS:
        grid = PRESETS[name_or_path]()
        _check_size(len(grid.specs), f"preset {name_or_path}", max_specs)
        return grid
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise GridError(f"grid file not found: {path}")
        return load_grid_file(path, max_specs)
    raise GridError(f"unknown grid {_shown(name_or_path)}: not a preset ({', '.join(PRESETS)}) nor a YAML file")


# --- breakdown ----------------------------------------------------------------------------

# A cell: one value of each of these; the specs of a cell differ in subset size, seed, epochs and params.
CELL_AXES = ("kind", "arch", "source", "dataset", "method", "blocks")
FULL_LABEL = "full"  # subset_size NULL: the whole training split (the one axis where NULL means "full")
NULL_LABEL = "null"  # any other axis: the field is not set


def value_label(axis: str, value: Any) -> str:
    if value is None:
        return FULL_LABEL if axis == "subset_size" else NULL_LABEL
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def _value_order(value: Any) -> tuple[int, float, str]:
    """Numbers by value, then strings, then lists; NULL last (subset_size: the full split is the biggest)."""
    if value is None:
        return (3, 0.0, "")
    if isinstance(value, bool):
        return (1, 0.0, str(value))
    if isinstance(value, (int, float)):
        return (0, float(value), "")
    if isinstance(value, (tuple, list)):
        return (2, float(len(value)), str(value))
    return (1, 0.0, str(value))


def axis_values(specs: Sequence[TrialSpec]) -> dict[str, list[tuple[Any, int]]]:
    """Every axis (the spec fields, then params.<name> for each param any spec sets) -> [(value, specs)], sorted."""
    axes: dict[str, Counter[Any]] = {axis: Counter(getattr(s, axis) for s in specs) for axis in SPEC_AXES}
    param_names = sorted({name for s in specs for name in s.params})
    for name in param_names:
        axes[f"params.{name}"] = Counter(s.param(name) for s in specs)
    return {axis: sorted(counts.items(), key=lambda kv: _value_order(kv[0])) for axis, counts in axes.items()}


def breakdown(specs: Sequence[TrialSpec]) -> dict[str, Any]:
    """Counts per axis value (every axis, params included) and the grid's cells, counted, never assumed a product."""
    values = axis_values(specs)
    axes = {axis: {value_label(axis, value): n for value, n in pairs} for axis, pairs in values.items()}
    cells = Counter(tuple(getattr(s, a) for a in CELL_AXES) for s in specs)
    factors = {a: len(values[a]) for a in CELL_AXES if len(values[a]) > 1}
    product = 1
    for n in factors.values():
        product *= n
    per_cell = sorted(set(cells.values()))
    return {
        "total": len(specs),
        "axes": axes,
        "varying": [axis for axis, pairs in values.items() if len(pairs) > 1],
        "cells": len(cells),
        "cell_axes": list(CELL_AXES),
        "factors": factors,
        "full_product": product,
        "specs_per_cell": [per_cell[0], per_cell[-1]] if per_cell else [],
    }


def spec_rows(grid: Grid) -> list[dict[str, Any]]:
    """One row per spec: its index in the grid (run-spec --index), its hash and the fields that vary."""
    info = axis_values(grid.specs)
    varying = [axis for axis, pairs in info.items() if len(pairs) > 1]
    rows = []
    for index, spec in enumerate(grid.specs):
        row: dict[str, Any] = {"index": index, "spec_hash": spec.spec_hash}
        for axis in varying:
            value = spec.param(axis.removeprefix("params.")) if axis.startswith("params.") else getattr(spec, axis)
            row[axis] = list(value) if isinstance(value, tuple) else value
        rows.append(row)
    return rows


def iter_presets() -> Iterable[tuple[str, str]]:
    for name, build in PRESETS.items():
        grid = build()
        yield name, f"{len(grid.specs):>6}  {grid.description}"
