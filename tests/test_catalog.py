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
    from workers import data  # a module or a package: only its public names are used

    assert set(catalog.DATASETS) == set(data.DATASET_NAMES)
    assert set(catalog.AUGMENT_RECIPES) == set(data.RECIPES)
    assert set(catalog.CORRUPTIONS) == set(data.CORRUPTIONS)


def test_every_param_a_kernel_reads_is_in_the_schema() -> None:
    """Every `params["x"]`, `params.get("x"` and `param("x"` literal in the workers' source."""
    pattern = re.compile(r"""(?<!\w)(?:params\[|params\.get\(|param\()\s*["']([a-z_]+)["']""")
    read = {name for path in WORKERS.rglob("*.py") for name in pattern.findall(path.read_text())}
    # workers/attacks.py's inner dict of the penultimate attack (eps, step, ...) is not a spec's params.
    inner = {"eps", "step", "steps", "m", "clamp"}
    assert read - inner, "no param reads found: the pattern is stale"
    assert read - inner <= set(catalog.PARAMS), sorted(read - inner - set(catalog.PARAMS))


def test_schema_defaults_are_the_kernels_defaults() -> None:
    from workers import training

    for name, value in training.TRAINING_DEFAULTS.items():
        default = catalog.PARAMS[name].default
        assert (list(default) if isinstance(default, tuple) else default) == value, name


def test_method_traits_are_what_the_transfer_kernel_branches_on() -> None:
    from workers.kernels import transfer
    assert set(catalog.methods("transfer")) == set(transfer.METHODS)
    for name, kernel in transfer.METHODS.items():
        traits = catalog.method(name)
        assert (traits.random_init, traits.distils, traits.l2sp, traits.linear) == (
            kernel.reinit, kernel.distill, kernel.l2sp, kernel.linear), name


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
