"""TrialSpec hashing and the grid presets / YAML grid files (no database, no torch)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from orchestrator.grids import GridError, breakdown, load_grid, load_grid_file, utrera_seed
from orchestrator.spec import SpecError, TrialSpec

BASE = dict(
    kind="transfer", arch="resnet50", source="torchvision:resnet50", dataset="cifar10", method="finetune",
    blocks=3, subset_size=100, seed=20_000_000, epochs=100,
    params={"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128},
)
# Golden values: a change here means every stored trial would be run again.
GOLDEN = {
    "transfer": "6f26723284682fa95e2db2934f508469820bb813e916eeacce37b0a6b568634c",
    "source": "23c074089f7b692909b49cbd1b202d1acd3abf64691e3ad871c7bff1a037bee0",
    "utrera2021[0]": "f5b088b829588917742e9a891a4ce8e15366b6400aa171fed0d6bfe2d99f4173",
}


def test_spec_hash_golden_values() -> None:
    assert TrialSpec(**BASE).spec_hash == GOLDEN["transfer"]
    source = TrialSpec(kind="source", arch="tiny_resnet", dataset="synthetic-source", method="pgd-linf", seed=0,
                       epochs=4, params={"adv_eps": 8 / 255, "adv_steps": 3})
    assert source.spec_hash == GOLDEN["source"]
    assert load_grid("utrera2021").specs[0].spec_hash == GOLDEN["utrera2021[0]"]


def test_spec_hash_ignores_key_order_and_float_spelling() -> None:
    reordered = dict(reversed(list(BASE.items())))
    reordered["params"] = dict(reversed(list(BASE["params"].items())))
    assert TrialSpec(**reordered).spec_hash == GOLDEN["transfer"]
    spelled = {**BASE, "params": {"lr": 1e-1, "momentum": 0.90, "weight_decay": 0.0005, "batch_size": 128.0}}
    assert TrialSpec(**spelled).spec_hash == GOLDEN["transfer"]
    noisy = {**BASE, "params": {**BASE["params"], "lr": 0.1 + 1e-17, "weight_decay": 5e-4 * (1 + 1e-14)}}
    assert TrialSpec(**noisy).spec_hash == GOLDEN["transfer"]
    via_json = TrialSpec.from_json(json.dumps(TrialSpec(**BASE).to_dict(), indent=3))
    assert via_json.spec_hash == GOLDEN["transfer"]


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "transfer", "method": "linear"}, {"arch": "resnet18"}, {"source": "robustness:imagenet_linf_4"},
        {"source_checksum": "ab" * 32}, {"dataset": "svhn"}, {"ood": "cifar10.1"}, {"blocks": 1},
        {"subset_size": 200}, {"subset_size": None}, {"seed": 20_100_000}, {"epochs": 150},
        {"kernel_version": "2"}, {"params": {**BASE["params"], "lr": 0.01}},
        {"params": {**BASE["params"], "input_size": 224}},
    ],
)
def test_spec_hash_sensitive_to_every_field(change: dict) -> None:
    assert TrialSpec(**{**BASE, **change}).spec_hash != GOLDEN["transfer"]


def test_spec_rejects_unknown_and_mistyped_fields() -> None:
    with pytest.raises(SpecError, match="unknown param 'lrr'"):
        TrialSpec(**{**BASE, "params": {"lrr": 0.1}})
    with pytest.raises(SpecError, match="must be a number"):
        TrialSpec(**{**BASE, "params": {"lr": "fast"}})
    with pytest.raises(SpecError, match="unknown transfer method"):
        TrialSpec(**{**BASE, "method": "magic"})
    with pytest.raises(SpecError, match="unknown spec field"):
        TrialSpec.from_dict({**BASE, "colour": "red"})
    with pytest.raises(SpecError, match="integer"):
        TrialSpec(**{**BASE, "blocks": 2.5})


def test_spec_is_frozen() -> None:
    spec = TrialSpec(**BASE)
    with pytest.raises(AttributeError):
        spec.seed = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.params["lr"] = 1.0  # type: ignore[index]


@pytest.mark.parametrize(
    ("name", "count"),
    [("utrera2021", 14_400), ("utrera2021-table4", 12_576), ("utrera2021-code", 7_776), ("smoke", 61)],
)
def test_preset_counts_and_unique_hashes(name: str, count: int) -> None:
    grid = load_grid(name)
    assert len(grid.specs) == count
    assert len({s.spec_hash for s in grid.specs}) == count


def test_utrera_breakdown_is_4x4x6_with_150_pairs_per_cell() -> None:
    grid = load_grid("utrera2021")
    info = breakdown(grid.specs)
    assert info["factors"] == {"source": 4, "dataset": 6, "blocks": 4}
    assert info["cells"] == 96 and info["pairs_per_cell"] == [150]
    seeds = sorted({s.seed for s in grid.specs})
    assert seeds == [utrera_seed(i) for i in range(20)]
    small = next(s for s in grid.specs if s.subset_size == 100)
    big = next(s for s in grid.specs if s.subset_size is None)
    assert (small.epochs, big.epochs) == (100, 150)
    assert small.param("eval_epochs") == (1, 20, 40, 60, 80, 100)
    assert big.param("eval_epochs")[:3] == (1, 10, 20) and big.param("eval_epochs")[-1] == 150
    assert small.param("schedule") == "thirds" and small.param("input_size") == 224


def test_other_presets_plan() -> None:
    reno = load_grid("renofeation2021")
    methods = {s.method for s in reno.specs}
    assert {"linear", "finetune", "l2sp", "delta", "delta-r", "retrain", "renofeation"} <= methods
    assert {s.arch for s in reno.specs} == {"resnet18", "resnet50", "resnet101", "mobilenet_v2"}
    andreassen = load_grid("andreassen2021")
    assert {s.source == "scratch" for s in andreassen.specs} == {True, False}
    assert {s.ood for s in andreassen.specs} == {"cifar10.1"}
    smoke = load_grid("smoke")
    source_hashes = {s.spec_hash for s in smoke.sources}
    assert len(smoke.sources) == 3
    assert all(t.source.removeprefix("spec:") in source_hashes for t in smoke.transfers if t.source != "scratch")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


GOOD_YAML = """
name: mine
fixed: {arch: tiny_resnet, method: finetune, epochs: 2, params: {input_size: 16, lr: 0.05}}
sources:
  nat: {arch: tiny_resnet, dataset: synthetic-source, method: natural, seed: 0, epochs: 2}
axes:
  source: [grid:nat, scratch]
  dataset: [digits, synthetic-target-a]
  subset_size: [100, full]
  seed: [0, 1]
  params.lr: [0.05, 0.01]
"""


def test_yaml_grid_expands_axes(tmp_path: Path) -> None:
    grid = load_grid_file(_write(tmp_path, GOOD_YAML))
    assert grid.name == "mine"
    assert len(grid.sources) == 1 and len(grid.transfers) == 2 * 2 * 2 * 2 * 2
    combos = {(s.source, s.dataset, s.subset_size, s.seed, s.param("lr")) for s in grid.transfers}
    expected = itertools.product([f"spec:{grid.sources[0].spec_hash}", "scratch"], ["digits", "synthetic-target-a"],
                                 [100, None], [0, 1], [0.05, 0.01])
    assert combos == set(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fixed: [1, 2\n", "malformed YAML"),
        ("fixed: {arch: x}\naxes: {colour: [red]}\n", "unknown axis 'colour'"),
        ("fixed: {arch: x, method: finetune, epochs: 1, source: scratch, dataset: d, seed: 0, wat: 1}\n",
         "unknown field"),
        ("fixed: {arch: x, method: finetune, epochs: one, source: scratch, dataset: d}\naxes: {seed: [0]}\n",
         "must be an integer"),
        ("fixed: {arch: x, method: finetune, epochs: 1, source: scratch, dataset: d}\n"
         "axes: {seed: [0], params.lr: [fast]}\n", "must be a number"),
        ("axes: {seed: 3}\n", "non-empty list"),
        ("fixed: {arch: x, method: finetune, epochs: 1, dataset: d}\naxes: {seed: [0], source: ['grid:nope']}\n",
         "names no entry"),
        ("bogus: 1\n", "unknown top-level key"),
    ],
)
def test_yaml_grid_errors_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(GridError, match=message) as info:
        load_grid_file(_write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_unknown_preset() -> None:
    with pytest.raises(GridError, match="unknown grid 'nope'"):
        load_grid("nope")
