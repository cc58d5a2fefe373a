"""The one list of every name a spec may use, and of what each method does. Torch-free.

timm-style: every name is checkable without building anything, so a typo in a preset or a
grid file fails at plan time, before a database row or a GPU minute is spent. Everything here
is plain data; the kernels (workers.kernels, workers.attacks, workers.data, workers.models)
and the orchestrator (through workers.trainable) derive from it. A name added to a kernel's
registry and not here fails the contract tests (tests/test_catalog.py).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from workers.errors import KernelInputError

__all__ = [
    "ARCHS", "AUGMENT_RECIPES", "CORRUPTIONS", "CORRUPTION_SEVERITIES", "CatalogError", "DATASETS",
    "DATASET_PATTERNS", "Derived", "KERNEL_VERSION", "KINDS", "METHODS", "MethodTraits", "OOD_SETS",
    "PARAMS", "Param", "RENOFEATION_CODE_METHODS", "SCRATCH", "SOURCE_SCHEMES", "SPLIT_SIZES",
    "SYNTHETIC_DEFAULT_CLASSES", "SYNTHETIC_DEFAULT_TEST", "SYNTHETIC_DEFAULT_TRAIN", "check_arch", "check_augment",
    "check_choice", "check_dataset",
    "check_ood", "check_param", "check_source_scheme", "method", "methods", "param_default", "param_defaults",
    "param_types", "split_size",
]

# Bump when a kernel changes numerically: old results stay in the DB, new specs hash anew.
# 2: cifar_resnet has ResNet-50's tail (1,1,6,3); sources report robust accuracy by default;
#    OOD corruptions of on-disk images are built image by image.
# 3: Gaussian noise projected onto the l2 ball of noise_l2_max (Utrera A.10); robust_acc of sources with the
#    robustness eval convention (20 steps of 2.5*eps/20); retrain re-initialises with the architecture's
#    constructor; per-method defaults (head_init, beta_fc, ...) from the papers.
KERNEL_VERSION = "3"

Kind = Literal["source", "transfer"]
KINDS: tuple[Kind, ...] = ("source", "transfer")


class CatalogError(KernelInputError):
    """An unknown name (architecture, dataset, OOD set, method, parameter, ...): one line naming it,
    the closest known names and all known names. A KernelInputError, so a kernel that meets one fails
    the spec at once (no retry), and a ValueError, so the plan layer turns it into its own error."""


def _unknown(what: str, value: object, known: Iterable[str], patterns: Iterable[str] = ()) -> CatalogError:
    names = list(known)
    close = difflib.get_close_matches(str(value), names, n=1, cutoff=0.6) if isinstance(value, str) else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listed = ", ".join([*names, *patterns])
    return CatalogError(f"unknown {what} {value!r}{hint} (known: {listed})")


# --- architectures (workers.models.ARCHS maps each to its constructor) -----------------------------

ARCHS: tuple[str, ...] = ("resnet18", "resnet50", "resnet101", "mobilenet_v2", "cifar_resnet", "tiny_resnet")


def check_arch(name: object) -> str:
    if name not in ARCHS:
        raise _unknown("architecture", name, ARCHS)
    return str(name)


# --- datasets (workers.data loads each) -------------------------------------------------------------

TORCHVISION_DATASETS = ("cifar10", "cifar100", "svhn", "fmnist", "kmnist", "mnist")
# The Renofeation targets (REFERENCE A), read from their published folder layouts.
RENOFEATION_DATASETS = ("bird", "flower", "dog", "action", "indoor")
SYNTHETIC_DATASETS = ("synthetic-source", "synthetic-target-a", "synthetic-target-b")
# The embedded study (issue 12): a shape source with a non-robust shortcut and a shape target.
STUDY_DATASETS = ("shortcut-source", "shape-target")
EMBEDDED_DATASETS = ("digits", *SYNTHETIC_DATASETS, *STUDY_DATASETS)
# OOD sets of cifar10 and of shortcut-source (its shape/pattern-conflict diagnostic); no training split
TEST_ONLY_DATASETS = ("cifar10.1", "shape-conflict")
DATASETS: tuple[str, ...] = (*TORCHVISION_DATASETS, *TEST_ONLY_DATASETS, *RENOFEATION_DATASETS, *EMBEDDED_DATASETS)
# Names by pattern: shown as written here, matched by the regular expression.
DATASET_PATTERNS: Mapping[str, re.Pattern[str]] = MappingProxyType({
    "imagefolder:<path>": re.compile(r"^imagefolder:.+$"),
})


def check_dataset(name: object) -> str:
    if name in DATASETS or (isinstance(name, str) and any(p.match(name) for p in DATASET_PATTERNS.values())):
        return str(name)
    raise _unknown("dataset", name, DATASETS, DATASET_PATTERNS)


# --- split sizes (what `rtgrid plan` counts before anything is loaded) --------------------------------

# dataset -> (training images, test images) of the split the loaders read (workers/data): the published
# sizes (SVHN: the train split only, no "extra"; Flowers-102: train + val, as the Renofeation code trains;
# digits: the fixed stratified 70/30 split). A test-only set has no training split (None).
SPLIT_SIZES: Mapping[str, tuple[int | None, int]] = MappingProxyType({
    "cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "svhn": (73_257, 26_032),
    "fmnist": (60_000, 10_000), "kmnist": (60_000, 10_000), "mnist": (60_000, 10_000),
    "cifar10.1": (None, 2_000),
    "bird": (5_994, 5_794), "flower": (2_040, 6_149), "dog": (12_000, 8_580), "action": (4_000, 5_532),
    "indoor": (5_360, 1_340),
    "digits": (1_257, 540),
})
# Generated sets: the sizes follow the params num_classes / train_images (workers/data/embedded.py reads these).
SYNTHETIC_DEFAULT_CLASSES: Mapping[str, int] = MappingProxyType(
    {"synthetic-source": 20, "synthetic-target-a": 10, "synthetic-target-b": 10})
SYNTHETIC_DEFAULT_TRAIN = 2000
SYNTHETIC_DEFAULT_TEST = 1000  # at least 50 images per class


def split_size(dataset: str, train: bool, params: Mapping[str, Any]) -> int | None:
    """Images in a dataset's training or test split; None where only the files can tell (imagefolder:<path>)."""
    if dataset in SYNTHETIC_DEFAULT_CLASSES:
        classes = params.get("num_classes") or SYNTHETIC_DEFAULT_CLASSES[dataset]
        if train:
            return int(params.get("train_images") or SYNTHETIC_DEFAULT_TRAIN)
        return max(SYNTHETIC_DEFAULT_TEST, 50 * int(classes))
    sizes = SPLIT_SIZES.get(dataset)
    if sizes is None:
        return None
    return sizes[0] if train else sizes[1]


# --- OOD evaluation sets ---------------------------------------------------------------------------

# of the ID test split: CIFAR-10-C levels; intensity = a random background offset and foreground gain per image,
# recolour = a random channel permutation mixed in per image (shifts the study's sources cover by their nuisance)
CORRUPTIONS = ("noise", "blur", "contrast", "intensity", "recolour")
CORRUPTION_SEVERITIES = (1, 2, 3, 4, 5)
# Natural shifts: OOD set -> the ID datasets it belongs to.
# shape-conflict: shortcut-source images carrying another class's pattern, labelled by shape; a source's
# ood_acc on it is the share it classifies by shape (the shape/pattern-conflict diagnostic).
OOD_SETS: Mapping[str, tuple[str, ...]] = MappingProxyType({"cifar10.1": ("cifar10",),
                                                            "shape-conflict": ("shortcut-source",)})
OOD_PATTERN = re.compile(rf"^({'|'.join(CORRUPTIONS)})-([{''.join(map(str, CORRUPTION_SEVERITIES))}])$")
OOD_PATTERNS = tuple(f"{kind}-{CORRUPTION_SEVERITIES[0]}..{CORRUPTION_SEVERITIES[-1]}" for kind in CORRUPTIONS)


def _ood_names() -> list[str]:
    """Every OOD name spelled out (for "did you mean"); the message lists the patterns."""
    return [*OOD_SETS, *(f"{kind}-{level}" for kind in CORRUPTIONS for level in CORRUPTION_SEVERITIES)]


def check_ood(name: object, dataset: str | None = None) -> str:
    """An OOD set name; with `dataset`, also that a natural shift belongs to that ID dataset."""
    if isinstance(name, str) and name in OOD_SETS:
        if dataset is not None and dataset not in OOD_SETS[name]:
            raise CatalogError(f"OOD set {name!r} applies to {', '.join(OOD_SETS[name])} only, not {dataset!r} "
                               f"(use a corruption: {', '.join(OOD_PATTERNS)})")
        return name
    if isinstance(name, str) and OOD_PATTERN.match(name):
        return name
    known = _ood_names()
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6) if isinstance(name, str) else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise CatalogError(f"unknown OOD set {name!r}{hint} (known: {', '.join([*OOD_SETS, *OOD_PATTERNS])})")


# --- transform recipes (the `augment` param) --------------------------------------------------------

# utrera (REFERENCE C), renofeation (REFERENCE A: RandomResizedCrop + flip; 256 -> centre 224), none (resize).
AUGMENT_RECIPES: tuple[str, ...] = ("utrera", "renofeation", "none")


def check_augment(name: object) -> str:
    if name not in AUGMENT_RECIPES:
        raise _unknown("augment recipe", name, AUGMENT_RECIPES)
    return str(name)


# --- source references (a transfer spec's `source`) -------------------------------------------------

SCRATCH = "scratch"  # random init, no source file (older specs; new ones name a random-init method)
# scheme -> what the name after "<scheme>:" is
SOURCE_SCHEMES: Mapping[str, str] = MappingProxyType({
    "spec": "the spec_hash of a source trial of the same grid",
    "file": "a checkpoint file's name (its sha256 is the spec's source_checksum)",
    "torchvision": "an architecture with torchvision ImageNet weights",
    "robustness": "a MadryLab robustness checkpoint name",
})


def check_source_scheme(scheme: object) -> str:
    if scheme not in SOURCE_SCHEMES:
        raise _unknown("source scheme", scheme, [f"{s}:" for s in SOURCE_SCHEMES], [SCRATCH])
    return str(scheme)


# --- methods and their traits -----------------------------------------------------------------------


@dataclass(frozen=True)
class MethodTraits:
    """What a method does: the kernels branch on these, the reports and the ER testbed derive from them."""

    name: str
    kind: Kind
    doc: str
    # transfer methods
    random_init: bool = False  # re-initialises the backbone (the source stays the teacher / attack model)
    distils: bool = False  # feature distillation from the pre-trained teacher (needs lambda_feat > 0)
    l2sp: bool = False  # L2-SP pull towards the pre-trained weights (needs lambda_sp > 0)
    swa: bool = False  # has an SWA stage by default (swa_epochs)
    linear: bool = False  # frozen backbone in eval mode, head only (blocks must be 0)
    # source methods
    adversarial: bool = False  # PGD adversarial training (adv_eps, adv_step, adv_steps)
    norm: str | None = None  # the threat model the method fixes (adv_norm)
    noise: bool = False  # Gaussian-noise training (needs noise_sigma > 0)

    @property
    def testbed(self) -> bool:
        """In the ER testbed: trained on the ID data alone, from random weights, with no teacher."""
        return self.kind == "transfer" and self.random_init and not self.distils


# Transfer methods in the order the Renofeation report shows them.
METHODS: Mapping[str, MethodTraits] = MappingProxyType({m.name: m for m in (
    MethodTraits("natural", "source", "plain cross-entropy training"),
    MethodTraits("pgd-l2", "source", "PGD adversarial training in the l2 ball", adversarial=True, norm="l2"),
    MethodTraits("pgd-linf", "source", "PGD adversarial training in the linf ball", adversarial=True, norm="linf"),
    MethodTraits("pgd1", "source", "one-step (fast) adversarial training; adv_step defaults to adv_eps",
                 adversarial=True),
    MethodTraits("gaussian", "source", "Gaussian-noise training (noise_sigma > 0)", noise=True),
    MethodTraits("linear", "transfer", "frozen backbone in eval mode, new head only", linear=True),
    MethodTraits("finetune", "transfer", "pretrained start, new head; the last `blocks` blocks + head train"),
    MethodTraits("l2sp", "transfer", "finetune + lambda_sp * sum ||w - w0||^2", l2sp=True),
    MethodTraits("delta", "transfer", "finetune + lambda_feat feature distillation from the source", distils=True),
    MethodTraits("retrain", "transfer", "random init, plain cross-entropy (the source only serves the ASR attack)",
                 random_init=True),
    MethodTraits("renofeation", "transfer",
                 "random init + feature distillation + spatial dropout 0.1 + an SWA stage",
                 random_init=True, distils=True, swa=True),
    MethodTraits("delta-r", "transfer", "delta from random init: renofeation without dropout and SWA",
                 random_init=True, distils=True),
)})


def methods(kind: Kind | None = None) -> tuple[str, ...]:
    """Method names (of one kind), in catalog (= report) order."""
    return tuple(name for name, traits in METHODS.items() if kind is None or traits.kind == kind)


def method(name: object, kind: Kind | None = None) -> MethodTraits:
    known = methods(kind)
    if name not in known:
        raise _unknown(f"{kind} method" if kind else "method", name, known)
    return METHODS[str(name)]


# --- the parameter schema ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Derived:
    """A default the kernel computes from the spec (documented here; the kernel owns the rule)."""

    rule: str


@dataclass(frozen=True)
class Param:
    """One hyper-parameter a spec may carry in `params`.

    `type` is what the value is coerced to before hashing (so `lr: 1` and `lr: 1.0` are one trial);
    `default` what the kernels use when a spec names none (None = not set: the kernel's own rule);
    `per_method` the defaults that differ by method; `choices` the allowed values of a string param.
    """

    type: type
    default: Any
    doc: str
    per_method: Mapping[str, Any] = field(default_factory=dict)
    choices: tuple[str, ...] = ()
    kinds: tuple[Kind, ...] = KINDS  # the kernels that read it

    def default_for(self, method_name: str) -> Any:
        return self.per_method.get(method_name, self.default)


_TRANSFER: tuple[Kind, ...] = ("transfer",)
_SOURCE: tuple[Kind, ...] = ("source",)

# The methods of the Renofeation code (REFERENCE A): PyTorch's default fc init and beta = 1e-2 always on, SGD
# at batch 64 on a cosine schedule. `linear` is not in the released code; it takes the same defaults (those of
# the renofeation2021 preset). finetune is Utrera's method (N(0,1) head, no fc penalty) and keeps the globals.
RENOFEATION_CODE_METHODS = ("linear", "l2sp", "delta", "retrain", "renofeation", "delta-r")
_RENO = RENOFEATION_CODE_METHODS
# REFERENCE A's re-training and Renofeation stage-1 scripts (the same for every dataset; DELTA's are per dataset).
_RENO_SCRATCH = ("retrain", "renofeation")

PARAMS: Mapping[str, Param] = MappingProxyType({
    "input_size": Param(int, 32, "model input side in pixels"),
    "augment": Param(str, None, "training/test transforms (None = the dataset's paper recipe: renofeation for "
                     "its five targets, else utrera)", choices=AUGMENT_RECIPES),
    "batch_size": Param(int, 128, "training (and evaluation) batch size (Renofeation's methods: 64)",
                        per_method=dict.fromkeys(_RENO, 64)),
    "lr": Param(float, 0.1, "peak learning rate (retrain, renofeation: 1e-2, REFERENCE A)",
                per_method=dict.fromkeys(_RENO_SCRATCH, 1e-2)),
    "momentum": Param(float, 0.9, "SGD momentum"),
    "weight_decay": Param(float, 5e-4, "SGD weight decay (forced to 0 when lambda_sp > 0; retrain, renofeation: "
                          "5e-3, REFERENCE A)", per_method=dict.fromkeys(_RENO_SCRATCH, 5e-3)),
    "schedule": Param(str, "thirds", "LR schedule (Renofeation's methods: cosine)",
                      choices=("thirds", "step-every-third", "cosine", "constant"),
                      per_method=dict.fromkeys(_RENO, "cosine")),
    "iterations_per_epoch": Param(int, 0, "0 = one pass over the (subset) training data"),
    "eval_epochs": Param(list, (), "1-based epochs at which ID/OOD accuracy is evaluated and reported "
                         "([] = every epoch)"),
    "eval_images": Param(int, 0, "cap on test / OOD images per evaluation (0 = all)"),
    "head_init": Param(str, "normal", "new head's init: normal (Utrera: N(0,1)) | default (PyTorch; the "
                       "Renofeation code's methods)", choices=("normal", "default"),
                       per_method=dict.fromkeys(_RENO, "default"), kinds=_TRANSFER),
    "reinit": Param(str, "constructor", "how random-init methods re-initialise the backbone: constructor (the "
                    "architecture's own init, a model trained from scratch) | reset (each Conv/BN/Linear's "
                    "reset_parameters: the Renofeation code's re-init, REFERENCE A)", choices=("constructor", "reset"),
                    per_method={"renofeation": "reset", "delta-r": "reset"}, kinds=_TRANSFER),
    "bn_mode": Param(str, "train", "train (paper) | eval (frozen BN layers use running stats)",
                     choices=("train", "eval"), kinds=_TRANSFER),
    "lambda_feat": Param(float, 0.0, "DELTA / Renofeation feature-distillation weight (renofeation: 5, the "
                         "code's value but for CUB's 1)", per_method={"renofeation": 5.0}, kinds=_TRANSFER),
    "lambda_sp": Param(float, 0.0, "L2SP weight", kinds=_TRANSFER),
    "beta_fc": Param(float, 0.0, "(beta/2)(|W_fc|^2 + |b_fc|^2): 1e-2 always on in the Renofeation code's "
                     "methods, 0 for finetune (Utrera)", per_method=dict.fromkeys(_RENO, 1e-2), kinds=_TRANSFER),
    "dropout": Param(float, 0.0, "spatial dropout after each stage", per_method={"renofeation": 0.1},
                     kinds=_TRANSFER),
    "swa_epochs": Param(int, 0, "SWA stage length in epochs (0 = no SWA)",
                        per_method={"renofeation": Derived("max(1, epochs // 3)")}, kinds=_TRANSFER),
    "swa_lr": Param(float, 0.005, "constant LR of the SWA stage", kinds=_TRANSFER),
    "swa_every": Param(int, 500, "fold the weights into the SWA mean every this many steps", kinds=_TRANSFER),
    "adv_norm": Param(str, "linf", "l2 | linf: adversarial training threat model", choices=("l2", "linf"),
                      per_method={"pgd-l2": "l2"}),
    "adv_eps": Param(float, 0.0, "adversarial training budget, in [0,1] pixel units"),
    "adv_step": Param(float, 0.0, "PGD step size, in [0,1] pixel units",
                      per_method={"pgd1": Derived("adv_eps")}),
    "adv_steps": Param(int, 0, "PGD steps of adversarial training (0 = none)", per_method={"pgd1": 1}),
    "noise_sigma": Param(float, 0.0, "Gaussian-noise training std"),
    "noise_l2_max": Param(float, 3.0, "Gaussian noise delta ~ N(0, noise_sigma^2) is projected per image onto the "
                          "l2 ball of this radius, in [0,1] pixel units (Utrera A.10: 3); 0 = no projection"),
    "robust_eval_steps": Param(int, 20, "PGD steps for the robust test accuracy of source models (robustness "
                               "eval convention: 20 steps of 2.5*eps/steps; 0 = no robust_acc)", kinds=_SOURCE),
    "robust_eval_step": Param(float, None, "PGD step of the robust test accuracy of source models",
                              per_method={m: Derived("2.5 * eps / robust_eval_steps")
                                          for m in ("natural", "pgd-l2", "pgd-linf", "pgd1", "gaussian")},
                              kinds=_SOURCE),
    "attack_eps": Param(float, 0.1, "penultimate attack budget, normalised units", kinds=_TRANSFER),
    "attack_step": Param(float, 0.01, "penultimate attack step", kinds=_TRANSFER),
    "attack_steps": Param(int, 0, "penultimate attack steps (0 = no ASR attack)", kinds=_TRANSFER),
    "attack_m": Param(float, 1000.0, "penultimate attack target magnitude m", kinds=_TRANSFER),
    "attack_clamp": Param(float, 2.2, "penultimate attack box [-c, c], normalised units", kinds=_TRANSFER),
    "attack_images": Param(int, 1000, "test images attacked for ASR (0 = the whole test set, as in Renofeation)",
                           kinds=_TRANSFER),
    "num_classes": Param(int, None, "synthetic datasets: classes to generate (None = the set's default)"),
    "train_images": Param(int, None, "synthetic datasets: training images to generate (None = 2000)"),
    "shortcut_amplitude": Param(float, None, "shortcut-source / shape-conflict: ± amplitude of the class-keyed "
                                "pixel pattern (None = 0.04)"),
    "shortcut_fraction": Param(float, None, "shortcut-source: fraction of training images that carry their "
                               "class's pattern (None = 1.0)"),
})


def check_param(name: object) -> Param:
    if name not in PARAMS:
        raise _unknown("param", name, PARAMS)
    return PARAMS[str(name)]


def check_choice(name: str, value: object) -> str:
    """`value` as one of the choices of the string param `name` (adv_norm, bn_mode, head_init, schedule, ...)."""
    choices = check_param(name).choices
    if value not in choices:
        raise _unknown(name, value, choices)
    return str(value)


def param_defaults(kind: Kind, method_name: str) -> dict[str, Any]:
    """Every param a `kind` kernel reads, with its default for `method_name`. A Derived default comes back as
    the Derived (the kernel applies its rule); a tuple default as a fresh list, for list-typed params."""
    defaults: dict[str, Any] = {}
    for name, p in PARAMS.items():
        if kind in p.kinds:
            value = p.default_for(method_name)
            defaults[name] = list(value) if p.type is list and isinstance(value, tuple) else value
    return defaults


def param_types() -> dict[str, type]:
    """name -> the type a value is coerced to (the plan layer's PARAM_TYPES)."""
    return {name: p.type for name, p in PARAMS.items()}


def param_default(name: str, method_name: str) -> Any:
    """The default a kernel uses for `name` under `method_name` (a Derived rule where it computes one)."""
    return check_param(name).default_for(method_name)
