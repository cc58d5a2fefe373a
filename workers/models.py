"""Architectures by name, the normalising classifier wrapper, checkpoints, block freezing.

`ARCHS` is the single place an architecture name maps to a constructor. Every network keeps the
torchvision layout (ResNets: conv1, bn1, layer1..layer4, fc; MobileNetV2: features, classifier),
so checkpoints and "layerN.i" block names mean the same thing for all of them.
"""

from __future__ import annotations

import copy
import os
import pickle
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers import catalog
from workers.errors import KernelInputError
from workers.io import file_identity, save_atomically, sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONVERT_HINT = "run `rtgrid sources convert IN OUT` on a TRUSTED copy to turn it into a plain state dict"


# ---------------------------------------------------------------- CIFAR-style ResNet


class CifarResNet(nn.Module):
    """BasicBlock ResNet for small images: 3×3 stem, no max-pool, torchvision attribute names."""

    def __init__(self, widths: tuple[int, int, int, int], layers: tuple[int, int, int, int], num_classes: int) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(BasicBlock, widths[0], layers[0], stride=1)
        self.layer2 = self._make_layer(BasicBlock, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(BasicBlock, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(BasicBlock, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block: Any, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [block(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        logits: Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return logits


def _torchvision(name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import torchvision.models as tvm

        net: nn.Module = getattr(tvm, name)(weights=None, num_classes=num_classes)  # never downloads
        return net

    return build


ARCHS: dict[str, Callable[[int], nn.Module]] = {
    "resnet18": _torchvision("resnet18"),
    "resnet50": _torchvision("resnet50"),
    "resnet101": _torchvision("resnet101"),
    "mobilenet_v2": _torchvision("mobilenet_v2"),
    # (1, 1, 6, 3) blocks: the last 3 / 9 blocks are layer4 / layer3 + layer4, as in ResNet-50 (Utrera's rule).
    "cifar_resnet": lambda num_classes: CifarResNet((16, 32, 64, 128), (1, 1, 6, 3), num_classes),
    "tiny_resnet": lambda num_classes: CifarResNet((8, 16, 32, 64), (2, 2, 2, 2), num_classes),
}

# MobileNetV2 stages by output stride (4, 8, 16, 32): the module whose output ends each stage.
_MOBILENET_STAGES = ["features.3", "features.6", "features.13", "features.18"]


# ---------------------------------------------------------------- the classifier wrapper


class Classifier(nn.Module):
    """A torchvision-layout network behind ImageNet normalisation: inputs are images in [0,1].

    1-channel inputs are broadcast to 3 channels (REFERENCE C). `normalized=True` feeds inputs
    that are already normalised (the penultimate attack works in normalised units).
    """

    mean: Tensor  # buffers (register_buffer)
    std: Tensor

    def __init__(self, arch: str, net: nn.Module) -> None:
        super().__init__()
        self.arch = arch
        self.net = net
        # Not persistent: the state dict is exactly the torchvision one under "net.".
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.is_mobilenet = hasattr(net, "features") and hasattr(net, "classifier")
        self.head_name = "classifier.1" if self.is_mobilenet else "fc"
        self.stage_names = list(_MOBILENET_STAGES) if self.is_mobilenet else [f"layer{i}" for i in range(1, 5)]
        self.spatial_dropout = 0.0
        self._dropout_handles: list[Any] = []

    @property
    def head(self) -> nn.Linear:
        return self.net.get_submodule(self.head_name)  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def normalize(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def forward(self, x: Tensor, normalized: bool = False) -> Tensor:
        logits: Tensor = self.net(x if normalized else self.normalize(x))
        return logits

    def features(self, x: Tensor, normalized: bool = False) -> Tensor:
        """Penultimate features: the global-average-pooled output that the head consumes."""
        x = x if normalized else self.normalize(x)
        net: Any = self.net
        if self.is_mobilenet:
            return torch.flatten(F.adaptive_avg_pool2d(net.features(x), 1), 1)
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        return torch.flatten(net.avgpool(x), 1)


def constructor(arch: str) -> Callable[[int], nn.Module]:
    """The constructor of `arch`; an unknown name fails with the catalog's one-line message."""
    build = ARCHS.get(catalog.check_arch(arch))
    if build is None:
        raise catalog.CatalogError(f"architecture {arch!r} is in the catalog but has no constructor in workers.models")
    return build


def build_model(arch: str, num_classes: int) -> Classifier:
    build = constructor(arch)
    if num_classes < 1:
        raise KernelInputError(f"num_classes must be >= 1, got {num_classes}")
    return Classifier(arch, build(num_classes))


# ---------------------------------------------------------------- heads, blocks, freezing


def replace_head(
    model: Classifier, num_classes: int, init: str = catalog.PARAMS["head_init"].default,
    generator: torch.Generator | None = None,
) -> nn.Linear:
    """A new Linear head (init: a catalog head_init choice). "normal": weight ~ N(0, 1), bias 0 (Utrera);
    "default": PyTorch's init."""
    catalog.check_choice("head_init", init)
    old = model.head
    head = nn.Linear(old.in_features, num_classes)
    with torch.no_grad():
        if init == "normal":
            head.weight.normal_(0.0, 1.0, generator=generator)
            head.bias.zero_()
        elif init == "default":
            # nn.Linear.reset_parameters, but drawn from `generator` when one is given.
            nn.init.kaiming_uniform_(head.weight, a=5**0.5, generator=generator)
            bound = 1 / old.in_features**0.5
            head.bias.uniform_(-bound, bound, generator=generator)
        else:
            raise KernelInputError(f"head_init {init!r} is in the catalog but has no implementation in workers.models")
    head = head.to(device=old.weight.device, dtype=old.weight.dtype)
    parent_name, _, child = model.head_name.rpartition(".")
    parent = model.net.get_submodule(parent_name) if parent_name else model.net
    setattr(parent, child, head)
    return head


def residual_block_names(model: Classifier) -> list[str]:
    """Residual blocks in forward order: "layer1.0" … "layer4.2"; MobileNetV2: features.1..17."""
    net: Any = model.net
    if model.is_mobilenet:
        return [f"features.{i}" for i in range(1, 18)]
    return [f"layer{i}.{j}" for i in range(1, 5) for j in range(len(getattr(net, f"layer{i}")))]


def set_trainable_blocks(model: Classifier, blocks: int | None) -> list[str]:
    """Train the last `blocks` residual blocks and the head, freeze the rest (None = train all).

    Everything registered after the first trainable block is trainable too; for ResNet-50 and
    cifar_resnet that is exactly the Utrera rule (0 → fc; 1 → + layer4.2; 3 → + layer4; 9 → + layer3
    + layer4); other ResNets count back the same way (resnet18: 3 → layer3.1 + layer4); for
    MobileNetV2 it also trains the final 1×1 conv (features.18) that follows features.17.
    Returns the trainable parameter names, in `model.net` (torchvision) naming.
    """
    params = list(model.net.named_parameters())
    if blocks is None:
        for _, p in params:
            p.requires_grad_(True)
        return [name for name, _ in params]
    names = residual_block_names(model)
    if blocks < 0:
        raise KernelInputError(f"blocks must be >= 0, got {blocks}")
    if blocks > len(names):
        raise KernelInputError(f"blocks={blocks} but {model.arch} has only {len(names)} residual blocks")
    start = names[len(names) - blocks] if blocks else model.head_name
    trainable: list[str] = []
    on = False
    for name, p in params:
        on = on or name.startswith(start + ".")
        p.requires_grad_(on)
        if on:
            trainable.append(name)
    return trainable


def reinitialize(model: nn.Module) -> None:
    """Each Conv/BN/Linear's own reset_parameters() (PyTorch defaults; REFERENCE A re-init)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
            module.reset_parameters()


def set_spatial_dropout(model: Classifier, p: float) -> None:
    """Dropout2d(p) on the output of each of the 4 stages (train mode only); p = 0 removes it."""
    for handle in model._dropout_handles:
        handle.remove()
    model._dropout_handles = []
    model.spatial_dropout = float(p)
    if p <= 0:
        return

    def drop(module: nn.Module, args: Any, output: Tensor) -> Tensor:
        return F.dropout2d(output, p, training=model.training)

    for name in model.stage_names:
        model._dropout_handles.append(model.net.get_submodule(name).register_forward_hook(drop))


def forward_with_stages(model: Classifier, x: Tensor, normalized: bool = False) -> tuple[Tensor, list[Tensor]]:
    """Logits and the 4 stage outputs (hooked BEFORE any spatial dropout) in one forward pass."""
    outputs: list[Tensor] = []

    def keep(module: nn.Module, args: Any, output: Tensor) -> None:
        outputs.append(output)

    # prepend=True: runs before the dropout hooks, so it sees the un-dropped stage output.
    handles = [
        model.net.get_submodule(name).register_forward_hook(keep, prepend=True) for name in model.stage_names
    ]
    try:
        logits = model(x, normalized=normalized)
    finally:
        for handle in handles:
            handle.remove()
    return logits, outputs


def stage_outputs(model: Classifier, x: Tensor, normalized: bool = False) -> list[Tensor]:
    """The 4 stage outputs BEFORE dropout (e.g. layer1..layer4) of one forward pass."""
    return forward_with_stages(model, x, normalized)[1]


# ---------------------------------------------------------------- checkpoints


def _torch_load_safe(path: str | os.PathLike[str]) -> Any:
    file = Path(path)
    if not file.is_file():
        raise KernelInputError(f"checkpoint not found: {file}")
    try:
        with warnings.catch_warnings():  # a damaged file makes torch warn on the way to its error: one line only
            warnings.simplefilter("ignore")
            return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or bit-flipped file raises anything (IndexError, KeyError, …)
        reason = _unpickling_reason(exc)
        raise KernelInputError(
            f"checkpoint {file} is unsafe or unreadable with weights_only=True ({reason}); {CONVERT_HINT}"
        ) from None


def _unpickling_reason(exc: BaseException) -> str:
    """The informative part of torch's long weights_only message, on one line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
        text = text.split("Please use", 1)[0].split("Check the documentation", 1)[0]
    text = " ".join(text.split()) or type(exc).__name__
    if not isinstance(exc, (pickle.UnpicklingError, RuntimeError)):  # KeyError(101) alone says nothing
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= 120 else text[:117] + "..."


def _extract_state_dict(obj: Any, origin: str) -> dict[str, Tensor]:
    """Plain torchvision names from a torchvision / rtgrid / MadryLab robustness checkpoint."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):  # rtgrid & robustness: "model"; legacy robustness: "state_dict"
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise KernelInputError(f"checkpoint {origin} holds no state dict")
    keys = [str(k) for k in obj]
    if any(k.startswith("module.model.") for k in keys):
        # DataParallel(AttackerModel): keep the model copy, drop normalizer and attacker duplicates.
        obj = {k[len("module.model.") :]: v for k, v in obj.items() if k.startswith("module.model.")}
    elif all(k.startswith("module.") for k in keys):
        obj = {k[len("module.") :]: v for k, v in obj.items()}  # plain DataParallel
    state = {str(k): v for k, v in obj.items()}
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise KernelInputError(f"checkpoint {origin} has non-tensor entries: {', '.join(bad[:3])}")
    return state


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The network state dict in a checkpoint file, read with torch.load(weights_only=True) only."""
    return _extract_state_dict(_torch_load_safe(path), str(path))


def _damaged(path: str | os.PathLike[str], exc: BaseException) -> KernelInputError:
    return KernelInputError(f"checkpoint {path} is damaged or not a checkpoint ({_unpickling_reason(exc)}); "
                            "use the original file, or train the source again")


def load_checkpoint_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The "meta" dict of an rtgrid source checkpoint ({} for other files)."""
    obj = _torch_load_safe(path)
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    return dict(meta) if isinstance(meta, Mapping) else {}


def _head_weight_key(arch: str) -> str:
    return "classifier.1.weight" if arch == "mobilenet_v2" else "fc.weight"


def load_state_into(model: Classifier, state: Mapping[str, Tensor], origin: str) -> None:
    """Strict load of a plain state dict into model.net; a mismatch is a one-line KernelInputError."""
    expected = model.net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} of wrong shape (e.g. {', '.join(wrong[:3])})")
        raise KernelInputError(f"checkpoint {origin} does not fit {model.arch}: keys {'; '.join(parts)}")
    model.net.load_state_dict(state, strict=True)


# Per-process cache of loaded sources: a worker runs many trials of the same few sources, and a
# ResNet-50 read + unpickle costs seconds. Keyed on the file's identity; trials get deep copies.
_SOURCE_CACHE: OrderedDict[tuple[str, str, int, int, int], Classifier] = OrderedDict()
SOURCE_CACHE_SIZE = 4


def load_source_model(arch: str, path: str | os.PathLike[str]) -> Classifier:
    """A Classifier of `arch` with the checkpoint's weights; the head size comes from the file.

    Read from disk once per process per (arch, file path, size, mtime); every call returns its own
    deep copy, so no two trials ever share (or mutate each other's) weights.
    """
    constructor(arch)
    file = Path(path)
    if not file.is_file():
        raise KernelInputError(f"checkpoint not found: {file}")
    key = (arch, *file_identity(file))
    cached = _SOURCE_CACHE.get(key)
    if cached is None:
        cached = _read_source_model(arch, path)
        _SOURCE_CACHE[key] = cached
        while len(_SOURCE_CACHE) > SOURCE_CACHE_SIZE:
            _SOURCE_CACHE.popitem(last=False)
    _SOURCE_CACHE.move_to_end(key)
    return copy.deepcopy(cached)


def _read_source_model(arch: str, path: str | os.PathLike[str]) -> Classifier:
    try:
        return _build_source_model(arch, path)
    except KernelInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - tensors of a damaged file break model building in any way
        raise _damaged(path, exc) from None


def _build_source_model(arch: str, path: str | os.PathLike[str]) -> Classifier:
    state = load_state_dict_file(path)
    head_key = _head_weight_key(arch)
    if head_key not in state or state[head_key].ndim != 2:
        raise KernelInputError(f"checkpoint {path} does not fit {arch}: keys 1 missing (e.g. {head_key})")
    model = build_model(arch, int(state[head_key].shape[0]))
    load_state_into(model, state, str(path))
    return model


def save_source_checkpoint(model: Classifier, path: str | os.PathLike[str], meta: dict[str, Any]) -> str:
    """Write {"model": torchvision state dict (CPU), "meta": meta}; returns the file's sha256.

    `meta` must hold plain values (str, numbers, bools, None, lists, dicts) so that the file
    loads with weights_only=True.
    """
    state = {k: v.detach().cpu().clone() for k, v in model.net.state_dict().items()}
    save_atomically({"model": state, "meta": dict(meta)}, path)
    return sha256_file(path)


def convert_trusted_checkpoint(in_path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> str:
    """ONLY FOR TRUSTED FILES: unpickle `in_path` with weights_only=False (it can run code), and
    write its network state dict as a plain file that loads with weights_only=True. Returns the
    new file's sha256. Used by `rtgrid sources convert` for e.g. MadryLab's dill checkpoints."""
    file = Path(in_path)
    if not file.is_file():
        raise KernelInputError(f"checkpoint not found: {file}")
    try:
        import dill  # the robustness library pickled with dill (untyped: ignore_missing_imports in pyproject)

        pickle_module: Any = dill
    except ImportError:
        pickle_module = pickle
    try:
        obj = torch.load(file, map_location="cpu", weights_only=False, pickle_module=pickle_module)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is one bad-input line
        raise KernelInputError(f"checkpoint {file} cannot be unpickled: {_unpickling_reason(exc)}") from None
    state = _extract_state_dict(obj, str(file))
    save_atomically({k: v.detach().cpu().clone() for k, v in state.items()}, out_path)
    return sha256_file(out_path)
