"""Contract tests: the catalog (workers/catalog.py) names exactly what the kernels build and read."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from workers import catalog

WORKERS = Path(__file__).resolve().parent.parent / "workers"


def test_arch_names_are_the_model_registry() -> None:
    from workers import models

    assert set(catalog.ARCHS) == set(models.ARCHS)


def test_dataset_names_are_the_data_registry() -> None:
    """Every catalog dataset has a loader and every loader a catalog name (timm-style: the catalog names,
    workers.data constructs); the same for patterns, recipes and corruptions."""
    from workers import data
    from workers.data import disk, embedded, renofeation

    assert set(catalog.DATASETS) == set(data.LOADERS) == set(data.DATASET_NAMES)
    assert set(catalog.DATASET_PATTERNS) == set(data.PATTERN_LOADERS)
    assert set(catalog.TORCHVISION_DATASETS) == set(disk.TORCHVISION_LAYOUT)
    assert set(catalog.RENOFEATION_DATASETS) == set(renofeation.RENOFEATION_SETS)
    assert set(catalog.SYNTHETIC_DATASETS) == set(embedded.SYNTHETIC_FAMILIES) == set(
        embedded.SYNTHETIC_DEFAULT_CLASSES)
    assert set(catalog.AUGMENT_RECIPES) == set(data.RECIPES)
    assert set(catalog.CORRUPTIONS) == set(data.CORRUPTIONS)


def test_a_catalog_name_without_a_loader_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers import data
    from workers.data import registry

    monkeypatch.setattr(catalog, "DATASETS", (*catalog.DATASETS, "newset"))
    with pytest.raises(catalog.CatalogError, match="'newset' is in the catalog but has no loader"):
        data.load_split("newset", True)
    monkeypatch.setattr(registry, "LOADERS", {})
    with pytest.raises(catalog.CatalogError, match="unknown dataset 'nope'"):
        data.load_split("nope", True)


def test_unknown_dataset_fails_with_the_catalog_message() -> None:
    from workers import data

    with pytest.raises(catalog.CatalogError) as info:
        data.load_split("cifar1O", True)
    assert "did you mean 'cifar10'?" in str(info.value) and "imagefolder:<path>" in str(info.value)


@pytest.mark.parametrize("ood", [*catalog.OOD_SETS, *(f"{kind}-{level}" for kind in catalog.CORRUPTIONS
                                                      for level in catalog.CORRUPTION_SEVERITIES)])
def test_every_catalog_ood_name_is_parsed_by_the_data_package(ood: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every OOD name the catalog accepts loads through workers.data.load_ood (natural shifts are loaded by
    name: stubbed here, they need a data root)."""
    from workers import data
    from workers.data import ood as ood_module

    if ood in catalog.OOD_SETS:
        loaded: list[str] = []
        monkeypatch.setattr(ood_module, "load_split", lambda name, *a, **k: loaded.append(name) or "set")
        assert data.load_ood(catalog.OOD_SETS[ood][0], ood) == "set" and loaded == [ood]
        return
    ds = data.load_ood("synthetic-target-a", ood, params={"num_classes": 3, "train_images": 30})
    assert len(ds) > 0 and ds.name.endswith(ood)


def test_natural_ood_sets_belong_to_their_datasets() -> None:
    from workers import data

    with pytest.raises(catalog.CatalogError, match="applies to cifar10 only"):
        data.load_ood("mnist", "cifar10.1")
    with pytest.raises(catalog.CatalogError, match="unknown OOD set 'blur-9'"):
        data.load_ood("mnist", "blur-9")


@pytest.mark.parametrize("recipe", catalog.AUGMENT_RECIPES)
def test_every_recipe_transforms_a_batch(recipe: str) -> None:
    from workers import data

    ds = data.load_split("digits", True)
    for augment in (True, False):
        x, y = next(iter(data.make_train_loader(ds, range(8), 4, 16, seed=0, augment=augment, recipe=recipe)))
        assert x.shape == (4, 1, 16, 16) and y.shape == (4,)


@pytest.mark.parametrize("schedule", catalog.PARAMS["schedule"].choices)
def test_every_schedule_is_implemented(schedule: str) -> None:
    from workers import training

    lrs = [training.make_lr_schedule(schedule, 0.1, 6, 2).lr_at(step) for step in range(12)]
    assert lrs[0] == pytest.approx(0.1) and all(0 <= lr <= 0.1 for lr in lrs)


@pytest.mark.parametrize("init", catalog.PARAMS["head_init"].choices)
def test_every_head_init_is_implemented(init: str) -> None:
    from workers import models

    model = models.build_model("tiny_resnet", 3)
    assert models.replace_head(model, 5, init=init).out_features == 5


@pytest.mark.parametrize("norm", catalog.PARAMS["adv_norm"].choices)
def test_every_adv_norm_is_a_pgd_threat_model(norm: str) -> None:
    import torch

    from workers import attacks, models

    torch.manual_seed(0)
    model = models.build_model("tiny_resnet", 3)
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    assert attacks.pgd(model, x, y, norm=norm, eps=0.1, step=0.05, steps=1).shape == x.shape


@pytest.mark.parametrize("method", catalog.methods("transfer"))
def test_every_transfer_method_resolves_through_the_kernel(method: str) -> None:
    """The transfer kernel dispatches on the catalog's traits: each method's params resolve with the catalog's
    defaults, its Derived defaults applied, and the trait's requirements enforced."""
    from workers.kernels import resolve_transfer_params

    traits = catalog.method(method)
    given = {"lambda_feat": 0.5} if traits.distils else {}
    given |= {"lambda_sp": 0.01} if traits.l2sp else {}
    spec = {"method": method, "epochs": 9, "blocks": 0 if traits.linear else None, "params": given}
    params = resolve_transfer_params(spec)
    for name, p in catalog.PARAMS.items():
        if "transfer" not in p.kinds or name in given:
            continue
        default = p.default_for(method)
        if isinstance(default, catalog.Derived):
            assert not isinstance(params[name], catalog.Derived), name
        else:
            assert params[name] == (list(default) if isinstance(default, tuple) else default), name
    assert (params["swa_epochs"] > 0) == traits.swa  # renofeation: max(1, 9 // 3) = 3
    # the trait's weight is required, unless the method has a default for it (renofeation: lambda_feat 5)
    if (traits.distils and not catalog.param_default("lambda_feat", method)) or \
            (traits.l2sp and not catalog.param_default("lambda_sp", method)):
        with pytest.raises(catalog.KernelInputError, match="needs lambda"):
            resolve_transfer_params({**spec, "params": {}})
    else:
        resolve_transfer_params({**spec, "params": {}})


@pytest.mark.parametrize("method", catalog.methods("source"))
def test_every_source_method_resolves_through_the_kernel(method: str) -> None:
    from workers.kernels import resolve_source_params

    traits = catalog.method(method)
    given: dict[str, float] = {"noise_sigma": 0.1} if traits.noise else {}
    given |= {"adv_eps": 0.03, "adv_step": 0.01, "adv_steps": 2} if traits.adversarial and traits.norm else {}
    given |= {"adv_eps": 0.03} if traits.adversarial and not traits.norm else {}
    params = resolve_source_params({"method": method, "params": given})
    assert params["adv_norm"] == (traits.norm or catalog.PARAMS["adv_norm"].default)
    assert not any(isinstance(v, catalog.Derived) for v in params.values())


@pytest.mark.parametrize("kind", catalog.KINDS)
def test_an_unknown_method_fails_in_the_kernel_with_the_catalog_message(kind: str) -> None:
    from workers.kernels import resolve_source_params, resolve_transfer_params

    resolve = resolve_transfer_params if kind == "transfer" else resolve_source_params
    with pytest.raises(catalog.CatalogError) as info:
        resolve({"method": "renofeatoin", "epochs": 3, "params": {}})
    known = ", ".join(catalog.methods(kind))
    hint = "; did you mean 'renofeation'?" if kind == "transfer" else ""
    assert str(info.value) == f"unknown {kind} method 'renofeatoin'{hint} (known: {known})"


def test_unknown_arch_fails_with_the_catalog_message() -> None:
    from workers import models

    with pytest.raises(catalog.CatalogError, match="unknown architecture 'resnet5O'; did you mean 'resnet50'"):
        models.build_model("resnet5O", 3)


def test_every_param_a_kernel_reads_is_in_the_schema() -> None:
    """Every `params["x"]`, `params.get("x"` and `param("x"` literal in the workers' source."""
    pattern = re.compile(r"""(?<!\w)(?:params\[|params\.get\(|param\()\s*["']([a-z_]+)["']""")
    read = {name for path in WORKERS.rglob("*.py") for name in pattern.findall(path.read_text())}
    # workers/attacks.py's inner dict of the penultimate attack (eps, step, ...) is not a spec's params.
    inner = {"eps", "step", "steps", "m", "clamp"}
    assert read - inner, "no param reads found: the pattern is stale"
    assert read - inner <= set(catalog.PARAMS), sorted(read - inner - set(catalog.PARAMS))


def test_derived_method_sets() -> None:
    assert {n for n, m in catalog.METHODS.items() if m.random_init} == {"retrain", "renofeation", "delta-r"}
    assert {n for n, m in catalog.METHODS.items() if m.testbed} == {"retrain"}
    assert catalog.methods("source") == ("natural", "pgd-l2", "pgd-linf", "pgd1", "gaussian")


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        (catalog.check_arch, "resnet5O", "unknown architecture 'resnet5O'; did you mean 'resnet50'?"),
        (catalog.check_dataset, "cifar1O", "unknown dataset 'cifar1O'; did you mean 'cifar10'?"),
        (catalog.check_ood, "blur-9", "unknown OOD set 'blur-9'; did you mean 'blur-"),
        (catalog.method, "renofeatoin", "unknown method 'renofeatoin'; did you mean 'renofeation'?"),
        (catalog.check_param, "lamda_feat", "unknown param 'lamda_feat'; did you mean 'lambda_feat'?"),
    ],
)
def test_lookups_fail_loudly_in_one_line(check, value: str, message: str) -> None:
    with pytest.raises(catalog.CatalogError) as info:
        check(value)
    text = str(info.value)
    assert message in text and "(known: " in text and "\n" not in text
    assert isinstance(info.value, ValueError)


def test_patterns_are_accepted() -> None:
    assert catalog.check_dataset("imagefolder:/data/x") == "imagefolder:/data/x"
    assert catalog.check_ood("contrast-5") == "contrast-5"
    assert catalog.check_ood("cifar10.1", "cifar10") == "cifar10.1"


def test_importing_the_catalog_and_the_trainable_imports_no_torch() -> None:
    code = "import sys, workers.catalog, workers.trainable; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=WORKERS.parent).returncode == 0
