"""workers.models: registry, wrapper, block freezing, heads, dropout hooks, checkpoints (real torch)."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pytest
import torch
import torchvision

from workers import models
from workers.errors import KernelInputError
from workers.io import sha256_file


@pytest.fixture(scope="module")
def resnet50() -> models.Classifier:
    return models.build_model("resnet50", 10)


def _names_under(model: models.Classifier, prefixes: tuple[str, ...]) -> list[str]:
    return [n for n, _ in model.net.named_parameters() if n.startswith(prefixes)]


# ---------------------------------------------------------------- registry and wrapper


def test_unknown_arch() -> None:
    with pytest.raises(KernelInputError, match="unknown architecture 'vgg11'"):
        models.build_model("vgg11", 10)
    with pytest.raises(KernelInputError, match="unknown arch"):
        models.load_source_model("vgg11", "/nonexistent.pt")


def test_classifier_normalises_and_broadcasts_greyscale() -> None:
    torch.manual_seed(0)
    model = models.build_model("tiny_resnet", 5).eval()
    grey = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        logits = model(grey)
        assert torch.allclose(logits, model(grey.expand(-1, 3, -1, -1)))
        mean = torch.tensor(models.IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(models.IMAGENET_STD).view(1, 3, 1, 1)
        normalised = (grey.expand(-1, 3, -1, -1) - mean) / std
        assert torch.allclose(logits, model.net(normalised))
        assert torch.allclose(logits, model(normalised, normalized=True))
        features = model.features(grey)
        assert features.shape == (3, 64)
        assert torch.allclose(model.head(features), logits, atol=1e-6)
    assert model.stage_names == ["layer1", "layer2", "layer3", "layer4"] and model.num_classes == 5
    assert all(k.startswith("net.") for k in model.state_dict())  # normaliser is not state


def test_mobilenet_layout() -> None:
    model = models.build_model("mobilenet_v2", 4).eval()
    assert models.residual_block_names(model) == [f"features.{i}" for i in range(1, 18)]
    assert model.head is model.net.classifier[1]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        stages = models.stage_outputs(model, x)
        assert [s.shape[1] for s in stages] == [24, 32, 96, 1280]
        assert torch.allclose(model.head(model.features(x)), model(x), atol=1e-5)
    head = models.replace_head(model, 6, "default")
    assert model.net.classifier[1] is head and model(x).shape == (2, 6)
    trainable = models.set_trainable_blocks(model, 1)
    assert trainable[0].startswith("features.17.") and trainable[-2:] == ["classifier.1.weight", "classifier.1.bias"]


# ---------------------------------------------------------------- block freezing


# arch -> (residual blocks per stage, convs per block, whether layer1.0 has a downsample); every later
# stage's block 0 has one. Written out from the architectures, independently of workers.models.
LAYOUTS = {"resnet50": ((3, 4, 6, 3), 3, True), "cifar_resnet": ((1, 1, 6, 3), 2, False)}
# Utrera's rule (REFERENCE C): blocks -> residual blocks trained besides fc
UTRERA_BLOCKS = {
    0: [],
    1: ["layer4.2"],
    3: ["layer4.0", "layer4.1", "layer4.2"],
    9: [f"layer3.{i}" for i in range(6)] + ["layer4.0", "layer4.1", "layer4.2"],
}


def _expected_names(arch: str, blocks: list[str]) -> list[str]:
    _, convs, first_downsample = LAYOUTS[arch]
    names = []
    for block in blocks:
        for k in range(1, convs + 1):
            names += [f"{block}.conv{k}.weight", f"{block}.bn{k}.weight", f"{block}.bn{k}.bias"]
        if block.endswith(".0") and (block != "layer1.0" or first_downsample):
            names += [f"{block}.downsample.0.weight", f"{block}.downsample.1.weight", f"{block}.downsample.1.bias"]
    return names + ["fc.weight", "fc.bias"]


@pytest.fixture(scope="module")
def nets(resnet50: models.Classifier) -> dict[str, models.Classifier]:
    return {"resnet50": resnet50, "cifar_resnet": models.build_model("cifar_resnet", 10)}


@pytest.mark.parametrize("arch", list(LAYOUTS))
@pytest.mark.parametrize("blocks", list(UTRERA_BLOCKS))
def test_trainable_parameter_names_per_block_setting(nets: dict[str, models.Classifier], arch: str,
                                                     blocks: int) -> None:
    model = nets[arch]
    per_stage = LAYOUTS[arch][0]
    assert models.residual_block_names(model) == [f"layer{s + 1}.{i}" for s in range(4) for i in range(per_stage[s])]
    trainable = models.set_trainable_blocks(model, blocks)
    assert trainable == _expected_names(arch, UTRERA_BLOCKS[blocks])  # exact names, in order
    assert {".".join(n.split(".")[:2]) for n in trainable if n.startswith("layer")} == set(UTRERA_BLOCKS[blocks])
    assert [n for n, p in model.net.named_parameters() if p.requires_grad] == trainable


def test_resnet50_block_counts_and_unfreeze_all(resnet50: models.Classifier) -> None:
    counts = {0: 2, 1: 11, 3: 32, 9: 89}
    assert {b: len(models.set_trainable_blocks(resnet50, b)) for b in counts} == counts
    assert len(models.residual_block_names(resnet50)) == 16
    models.set_trainable_blocks(resnet50, None)
    assert all(p.requires_grad for p in resnet50.parameters())


def test_cifar_resnet_all_blocks_and_too_many() -> None:
    model = models.build_model("cifar_resnet", 10)
    everything = models.set_trainable_blocks(model, 11)
    assert everything == [n for n, _ in model.net.named_parameters() if n.startswith(("layer", "fc."))]
    assert not model.net.conv1.weight.requires_grad and not model.net.bn1.weight.requires_grad
    with pytest.raises(KernelInputError, match=r"^blocks=12 but cifar_resnet has only 11 residual blocks$"):
        models.set_trainable_blocks(model, 12)


def test_tiny_resnet_block_error_message() -> None:
    with pytest.raises(KernelInputError) as info:
        models.set_trainable_blocks(models.build_model("tiny_resnet", 3), 9)
    assert str(info.value) == "blocks=9 but tiny_resnet has only 8 residual blocks"


# ---------------------------------------------------------------- heads, re-init, dropout, stages


def test_replace_head_inits() -> None:
    model = models.build_model("cifar_resnet", 10)
    head = models.replace_head(model, 7, "normal", torch.Generator().manual_seed(1))
    assert model.head is head and head.out_features == 7 and model.net.fc is head
    assert torch.all(head.bias == 0) and abs(float(head.weight.detach().std()) - 1.0) < 0.15
    again = models.replace_head(model, 7, "normal", torch.Generator().manual_seed(1))
    assert torch.equal(head.weight, again.weight)
    default = models.replace_head(model, 7, "default", torch.Generator().manual_seed(1))
    bound = 1 / 128**0.5
    assert float(default.weight.detach().abs().max()) <= bound and float(default.bias.detach().abs().max()) <= bound
    with pytest.raises(KernelInputError, match="head_init"):
        models.replace_head(model, 7, "xavier")


def test_reinitialize_resets_weights_and_bn() -> None:
    model = models.build_model("tiny_resnet", 3)
    with torch.no_grad():
        model.net.bn1.running_mean.fill_(5.0)
        model.net.bn1.weight.fill_(3.0)
    before = model.net.conv1.weight.clone()
    models.reinitialize(model)
    assert not torch.equal(before, model.net.conv1.weight)
    assert torch.all(model.net.bn1.running_mean == 0) and torch.all(model.net.bn1.weight == 1)


def test_spatial_dropout_and_stage_outputs() -> None:
    torch.manual_seed(0)
    model = models.build_model("tiny_resnet", 3)
    x = torch.rand(4, 3, 16, 16)
    model.train()
    plain_logits, plain_stages = models.forward_with_stages(model, x)
    models.set_spatial_dropout(model, 0.5)
    logits, stages = models.forward_with_stages(model, x)
    assert [s.shape for s in stages] == [s.shape for s in plain_stages]
    # layer1's output is taken before its dropout, so it matches; later stages see dropped inputs.
    assert torch.allclose(stages[0], plain_stages[0]) and not torch.allclose(logits, plain_logits)
    model.eval()
    with torch.no_grad():
        eval_logits = model(x)
        models.set_spatial_dropout(model, 0.0)
        assert torch.allclose(eval_logits, model(x))  # dropout only acts in train mode
    assert model._dropout_handles == [] and len(models.stage_outputs(model, x)) == 4


# ---------------------------------------------------------------- checkpoints


def _robustness_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DataParallel(AttackerModel) keys as MadryLab's robustness writes them."""
    mean, std = torch.tensor(models.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(models.IMAGENET_STD).view(3, 1, 1)
    out = {"module.normalizer.new_mean": mean, "module.normalizer.new_std": std}
    out.update({f"module.model.{k}": v for k, v in state.items()})
    out.update({"module.attacker.normalize.new_mean": mean, "module.attacker.normalize.new_std": std})
    out.update({f"module.attacker.model.{k}": v.clone() for k, v in state.items()})
    return out


def test_robustness_checkpoint_loads_into_torchvision_resnet50(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference_net = torchvision.models.resnet50(weights=None)
    with torch.no_grad():  # non-trivial BN statistics, so a missed buffer would show
        for module in reference_net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "imagenet_l2_3_0.pt"
    torch.save({"model": _robustness_layout(reference_net.state_dict()), "epoch": 90, "optimizer": {}}, path)
    state = models.load_state_dict_file(path)
    assert set(state) == set(reference_net.state_dict())
    loaded = models.load_source_model("resnet50", path).eval()
    reference = models.Classifier("resnet50", reference_net).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))
    assert loaded.num_classes == 1000


def test_legacy_state_dict_key_and_rtgrid_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = models.build_model("cifar_resnet", 6).eval()
    legacy = tmp_path / "legacy.pt"
    torch.save({"state_dict": _robustness_layout(source.net.state_dict()), "epoch": 3}, legacy)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(models.load_source_model("cifar_resnet", legacy).eval()(x), source(x))
    path = tmp_path / "sub" / "source.pt"
    digest = models.save_source_checkpoint(source, path, {"arch": "cifar_resnet", "epochs": 3})
    assert digest == sha256_file(path) and len(digest) == 64
    assert models.load_checkpoint_meta(path) == {"arch": "cifar_resnet", "epochs": 3}
    with torch.no_grad():
        assert torch.equal(models.load_source_model("cifar_resnet", path).eval()(x), source(x))
    plain = tmp_path / "plain.pt"
    torch.save(source.net.state_dict(), plain)  # torchvision-style bare state dict
    assert models.load_source_model("cifar_resnet", plain).num_classes == 6


def test_source_is_read_once_per_process_and_every_load_is_a_private_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "source.pt"
    torch.manual_seed(2)
    models.save_source_checkpoint(models.build_model("tiny_resnet", 4), path, {})
    reads: list[object] = []
    real_read = models.load_state_dict_file

    def counting_read(file: object) -> dict[str, torch.Tensor]:
        reads.append(file)
        return real_read(file)  # type: ignore[arg-type]

    monkeypatch.setattr(models, "load_state_dict_file", counting_read)
    first = models.load_source_model("tiny_resnet", path)
    second = models.load_source_model("tiny_resnet", path)
    assert len(reads) == 1  # the second load did not read the file
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(first.parameters(), second.parameters(), strict=True))
    with torch.no_grad():
        first.net.conv1.weight.add_(1.0)  # one trial changing its copy in place ...
    third = models.load_source_model("tiny_resnet", path)
    assert torch.equal(third.net.conv1.weight, second.net.conv1.weight)  # ... leaves the next load intact
    assert not torch.equal(third.net.conv1.weight, first.net.conv1.weight) and len(reads) == 1
    torch.manual_seed(3)
    models.save_source_checkpoint(models.build_model("tiny_resnet", 4), path, {})  # same size, new file
    fourth = models.load_source_model("tiny_resnet", path)
    assert len(reads) == 2 and not torch.equal(fourth.net.conv1.weight, third.net.conv1.weight)


def test_keys_that_do_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "r18.pt"
    torch.save(models.build_model("tiny_resnet", 4).net.state_dict(), path)
    with pytest.raises(KernelInputError) as info:
        models.load_source_model("resnet18", path)
    message = str(info.value)
    assert "\n" not in message and "does not fit resnet18" in message
    assert "wrong shape" in message and "conv1.weight" in message
    torch.save({"encoder.weight": torch.zeros(3)}, path)
    with pytest.raises(KernelInputError, match="fc.weight"):
        models.load_source_model("tiny_resnet", path)
    with pytest.raises(KernelInputError, match="checkpoint not found"):
        models.load_state_dict_file(tmp_path / "missing.pt")


class _Payload:
    """Unpickling this runs code: it would create `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    zipped, legacy = tmp_path / "evil.pt", tmp_path / "evil.pkl"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}, "hook": _Payload(marker)}, zipped)
    with open(legacy, "wb") as handle:
        pickle.dump({"state_dict": _Payload(marker)}, handle, protocol=2)
    for path in (zipped, legacy):
        with pytest.raises(KernelInputError) as info:
            models.load_state_dict_file(path)
        message = str(info.value)
        assert "\n" not in message and "weights_only" in message and "rtgrid sources convert" in message
        with pytest.raises(KernelInputError):
            models.load_source_model("tiny_resnet", path)
    assert not marker.exists()


def test_convert_trusted_checkpoint(tmp_path: Path) -> None:
    source = models.build_model("tiny_resnet", 3).eval()
    trusted = tmp_path / "madry.pt"
    # Like the released files: extra pickled objects (here argparse's Namespace) beside the weights.
    torch.save({"model": _robustness_layout(source.net.state_dict()), "args": argparse.Namespace(eps=3.0)}, trusted)
    with pytest.raises(KernelInputError, match="weights_only"):
        models.load_state_dict_file(trusted)
    out = tmp_path / "converted.pt"
    digest = models.convert_trusted_checkpoint(trusted, out)
    assert digest == sha256_file(out)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(models.load_source_model("tiny_resnet", out).eval()(x), source(x))
