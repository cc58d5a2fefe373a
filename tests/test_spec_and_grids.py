"""TrialSpec hashing and the grid presets / YAML grid files (no database, no torch)."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path

import pytest
from cli_helpers import error_line, run_cli

from orchestrator.plan.grids import PRESETS, GridError, breakdown, load_grid, load_grid_file, utrera_seed
from orchestrator.plan.spec import _SPEC_FIELDS, PARAM_TYPES, SpecError, TrialSpec
from orchestrator.results.frames import RANDOM_INIT_METHODS
from workers.catalog import PARAMS

BASE = dict(
    kind="transfer", arch="resnet50", source="torchvision:resnet50", dataset="cifar10", method="finetune",
    blocks=3, subset_size=100, seed=20_000_000, epochs=100,
    params={"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128},
)
# Golden values: a change here means every stored trial would be run again (a KERNEL_VERSION bump
# does that on purpose: kernel version 3, issue 11). The transfer's canonical JSON is spelled out:
# `printf %s '…' | sha256sum`.
GOLDEN_TRANSFER_JSON = (
    '{"arch":"resnet50","blocks":3,"dataset":"cifar10","epochs":100,"kernel_version":"3","kind":"transfer",'
    '"method":"finetune","ood":null,"params":{"batch_size":128,"lr":0.1,"momentum":0.9,"weight_decay":0.0005},'
    '"seed":20000000,"source":"torchvision:resnet50","source_checksum":null,"subset_size":100}'
)
GOLDEN = {
    "transfer": "6219db1ee15e3946e9d2cd6bf67dc4330bbc795b870a3eb61aa442c8dbafd025",
    "source": "535c828e6cf8153de58e7cf4abd12d599779323c49025c66add4e4cc375d4822",
    "utrera2021[0]": "e7599fd09f767f24cb9c3c176244c50db3a6c71c9134d22e4dba8d15950131de",
}


def test_spec_hash_golden_values() -> None:
    assert TrialSpec(**BASE).canonical_json() == GOLDEN_TRANSFER_JSON
    assert hashlib.sha256(GOLDEN_TRANSFER_JSON.encode()).hexdigest() == GOLDEN["transfer"]
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


# One change per spec field (kind cannot change alone: source and transfer methods are disjoint).
HASH_CHANGES = [
    {"kind": "source", "method": "natural"}, {"method": "linear"}, {"arch": "resnet18"},
    {"source": "robustness:imagenet_linf_4"}, {"source": None, "kind": "source", "method": "pgd-l2"},
    {"source_checksum": "ab" * 32}, {"dataset": "svhn"}, {"ood": "cifar10.1"}, {"blocks": 1}, {"blocks": None},
    {"subset_size": 200}, {"subset_size": None}, {"seed": 20_100_000}, {"seed": -1}, {"epochs": 150},
    {"kernel_version": "1"}, {"params": {**BASE["params"], "lr": 0.01}}, {"params": {}},
]
_TYPICAL = {int: 7, float: 0.25, str: "x", list: [1, 2]}


def test_hash_changes_cover_every_spec_field() -> None:
    assert {name for change in HASH_CHANGES for name in change} == set(_SPEC_FIELDS)


@pytest.mark.parametrize("change", HASH_CHANGES)
def test_spec_hash_sensitive_to_every_field(change: dict) -> None:
    assert TrialSpec(**{**BASE, **change}).spec_hash != GOLDEN["transfer"]


def test_spec_hashes_of_all_changes_and_params_are_distinct() -> None:
    """Every field change and every known param (added with a typical value) gives its own hash."""
    hashes = [TrialSpec(**{**BASE, **change}).spec_hash for change in HASH_CHANGES]
    for name, kind in PARAM_TYPES.items():
        value = PARAMS[name].choices[-1] if PARAMS[name].choices else _TYPICAL[kind]  # a string param's choice
        hashes.append(TrialSpec(**{**BASE, "params": {**BASE["params"], name: value}}).spec_hash)
    hashes.append(GOLDEN["transfer"])
    assert len(set(hashes)) == len(hashes)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"source": 5}, "source"), ({"source": ""}, "source"), ({"ood": ["cifar10.1"]}, "ood"),
        ({"source_checksum": 12}, "source_checksum"), ({"blocks": -1}, "blocks"), ({"seed": 2**63}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"), ({"seed": "0"}, "seed"), ({"subset_size": 0}, "subset_size"),
        ({"epochs": 0}, "epochs"), ({"epochs": None}, "epochs"), ({"epochs": 2**31}, "epochs"),
        ({"params": {"lr": float("nan")}}, "lr"), ({"params": {"lr": float("inf")}}, "lr"),
        ({"params": {"weight_decay": -float("inf")}}, "weight_decay"), ({"params": [1]}, "params"),
        ({"kernel_version": 2}, "kernel_version"),
    ],
)
def test_spec_rejects_bad_values_naming_the_field(change: dict, field: str) -> None:
    with pytest.raises(SpecError, match=f"'{field}'") as info:
        TrialSpec(**{**BASE, **change})
    assert "\n" not in str(info.value)


def test_spec_accepts_the_extremes() -> None:
    extremes = TrialSpec(**{**BASE, "seed": 2**63 - 1, "blocks": 0, "subset_size": 1, "epochs": 1})
    assert extremes.seed == 2**63 - 1 and TrialSpec(**{**BASE, "seed": -(2**63)}).seed == -(2**63)


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


PRESET_COUNTS = {
    "utrera2021": 4 * 4 * 6 * (5 * 20 + 5 * 10),  # sources x blocks x targets x (subset, seed) pairs = 14,400
    "utrera2021-table4": 4 * 4 * 6 * (5 * 20 + 2 * 10 + 2 * 5 + 1),  # 12,576
    "utrera2021-code": 4 * 4 * 6 * (7 * 10 + 2 * 5 + 1),  # 7,776
    "renofeation2021": 4 * 5 * 10,  # archs x datasets x (6 methods + 4 ablations) = 200
    "andreassen2021": 4 * 5 * 2,  # archs x seeds x (pre-trained, random init) = 40
    "smoke": 3 + 3 * 2 * 2 * 2 * 2 + 2 * 5,  # sources + transfers + from-scratch testbed = 61
    # 3 sources + Utrera 2 targets x 3 sources x 2 sizes x 5 seeds + Chin 4 more methods x 2 sizes x 5 seeds
    # + Andreassen 2 inits x 5 seeds + the testbed 5 sizes x 2 seeds
    "study": 3 + 2 * 3 * 2 * 5 + 4 * 2 * 5 + 2 * 5 + 5 * 2,
}


def test_preset_counts_cover_every_preset() -> None:
    assert set(PRESET_COUNTS) == set(PRESETS)


@pytest.mark.parametrize(("name", "count"), PRESET_COUNTS.items())
def test_preset_counts_and_unique_hashes(name: str, count: int) -> None:
    grid = load_grid(name)
    assert len(grid.specs) == count
    assert len({s.spec_hash for s in grid.specs}) == count


def test_utrera_breakdown_is_4x4x6_with_150_specs_per_cell() -> None:
    grid = load_grid("utrera2021")
    info = breakdown(grid.specs)
    assert info["factors"] == {"source": 4, "dataset": 6, "blocks": 4}
    assert info["cells"] == info["full_product"] == 96 and info["specs_per_cell"] == [150, 150]
    seeds = sorted({s.seed for s in grid.specs})
    assert seeds == [utrera_seed(i) for i in range(20)]
    small = next(s for s in grid.specs if s.subset_size == 100)
    big = next(s for s in grid.specs if s.subset_size is None)
    assert (small.epochs, big.epochs) == (100, 150)
    assert small.param("eval_epochs") == (1, 21, 41, 61, 81, 100)  # every 20 from epoch 1, plus the last
    assert big.param("eval_epochs")[:3] == (1, 11, 21) and big.param("eval_epochs")[-2:] == (141, 150)
    assert small.param("schedule") == "thirds" and small.param("input_size") == 224


def test_other_presets_plan() -> None:
    reno = load_grid("renofeation2021")
    methods = {s.method for s in reno.specs}
    assert {"linear", "finetune", "l2sp", "delta", "delta-r", "retrain", "renofeation"} <= methods
    assert {s.arch for s in reno.specs} == {"resnet18", "resnet50", "resnet101", "mobilenet_v2"}
    andreassen = load_grid("andreassen2021")
    random_init = {s.method in RANDOM_INIT_METHODS or s.source == "scratch" for s in andreassen.specs}
    assert random_init == {True, False}  # pre-trained and random-init runs of every architecture
    assert {s.ood for s in andreassen.specs} == {"cifar10.1"}
    smoke = load_grid("smoke")
    source_hashes = {s.spec_hash for s in smoke.sources}
    assert len(smoke.sources) == 3
    assert all(t.source.removeprefix("spec:") in source_hashes for t in smoke.transfers if t.source != "scratch")


def test_preset_transfers_all_have_ood_and_asr() -> None:
    reno, andreassen, smoke = (load_grid(name) for name in ("renofeation2021", "andreassen2021", "smoke"))
    assert {s.ood for s in reno.specs} == {"noise-3"}  # every evaluation epoch has an OOD accuracy
    # random init = method retrain (the architecture's constructor init); only the pre-trained runs are attacked
    assert {(s.method, s.source == f"torchvision:{s.arch}") for s in andreassen.specs} == {
        ("finetune", True), ("retrain", True)}
    pretrained = [s for s in andreassen.specs if s.method == "finetune"]
    assert all(s.param("attack_steps") == 40 for s in reno.specs + pretrained)
    assert all(s.param("attack_steps", 0) == 0 for s in andreassen.specs if s.method == "retrain")
    natural = next(s for s in smoke.sources if s.method == "natural")
    testbed = [t for t in smoke.transfers if t.method == "retrain"]
    assert len(testbed) == 10 and {t.source for t in testbed} == {f"spec:{natural.spec_hash}"}
    attack = {k: v for k, v in smoke.transfers[0].params.items() if k.startswith("attack_")}
    assert attack["attack_steps"] > 0 and all({k: t.params[k] for k in attack} == attack for t in smoke.transfers)


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


_TRANSFER = "arch: x, method: finetune, epochs: 1, source: scratch, dataset: d"
# (grid file contents, what the one-line error says): every way a grid file can be wrong
GRID_FILE_ERRORS = [
    ("fixed: [1, 2\n", "malformed YAML"),
    ("seed: 2020-13-01\n", "malformed YAML"),  # PyYAML's own ValueError
    (b"fixed: {arch: \xff\xfe}\n", "not UTF-8"),
    ("fixed: {arch: x}\naxes: {colour: [red]}\n", "unknown axis 'colour'"),
    (f"fixed: {{{_TRANSFER}, seed: 0, wat: 1}}\n", "unknown field"),
    ("fixed: {arch: x, method: finetune, epochs: one, source: scratch, dataset: d}\naxes: {seed: [0]}\n",
     "must be an integer"),
    (f"fixed: {{{_TRANSFER}}}\naxes: {{seed: [0], params.lr: [fast]}}\n", "must be a number"),
    (f"fixed: {{{_TRANSFER}, seed: 0, params: {{lr: .inf}}}}\n", "'lr' must be a finite number"),
    (f"fixed: {{{_TRANSFER}, seed: 99999999999999999999}}\n", "'seed' must be between"),
    (f"fixed: {{{_TRANSFER}, seed: 0, blocks: -1}}\n", "'blocks' must be between"),
    (f"fixed: {{{_TRANSFER}, seed: 0, subset_size: 0}}\n", "'subset_size' must be between"),
    (f"fixed: {{{_TRANSFER}, seed: 0, ood: 3}}\n", "'ood' must be a non-empty string"),
    ("axes: {seed: 3}\n", "non-empty list"),
    ("fixed: {arch: x, method: finetune, epochs: 1, dataset: d}\naxes: {seed: [0], source: ['grid:nope']}\n",
     "names no entry"),
    ("fixed: {arch: x, method: finetune, epochs: 1, dataset: d}\naxes: {seed: [0], source: [5]}\n",
     "source must be a string"),
    ("bogus: 1\n", "unknown top-level key"),
    ("params: [1]\n", "unknown top-level key(s) params"),
    (f"fixed: {{{_TRANSFER}, seed: 0, params: [1]}}\n", "'params' must be a mapping"),
    ("sources: [1]\n", "'sources' must be a mapping"),
    ("sources: {nat: [1]}\n", "sources.nat must be a mapping"),
    ("sources: {1: {arch: x}}\n", "source names must be strings"),
    ("fixed: [1]\n", "'fixed' must be a mapping"),
    ("axes: [seed]\n", "'axes' must be a mapping"),
    ("name: [x]\n", "'name' must be a string"),
    ("description: {a: 1}\n", "'description' must be a string"),
    ("fixed: {1: 2}\n", "field names must be strings"),
    ("- 1\n- 2\n", "must be a mapping with 'fixed' and 'axes'"),
]


def _write_grid(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "grid.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize(("content", "message"), GRID_FILE_ERRORS)
def test_yaml_grid_errors_are_one_line(tmp_path: Path, content: str | bytes, message: str) -> None:
    with pytest.raises(GridError, match=re.escape(message)) as info:
        load_grid_file(_write_grid(tmp_path, content))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("content", "message"), [*GRID_FILE_ERRORS, (None, "unknown grid 'nope'")])
def test_grid_show_bad_input_is_one_line_exit_2(tmp_path: Path, content: str | bytes | None, message: str) -> None:
    target = "nope" if content is None else str(_write_grid(tmp_path, content))
    line = error_line(run_cli("grid", "show", target, expect=2))
    assert message in line, line


def test_unknown_preset() -> None:
    with pytest.raises(GridError, match="unknown grid 'nope'"):
        load_grid("nope")


def test_file_source_identity_is_name_and_content_not_location(tmp_path: Path) -> None:
    """The same weights at two paths (two machines, a moved folder) are the same spec; the path
    travels beside the spec, and workers without it look in <data-root>/sources."""
    from workers.errors import KernelInputError
    from workers.sources import resolve_source_path

    grid_text = "fixed: {arch: tiny_resnet, method: finetune, dataset: digits, epochs: 1, source: 'file:SRC'}\n" \
                "axes: {seed: [0, 1]}\n"
    hashes, paths = [], []
    for folder in ("a", "b"):
        weights = tmp_path / folder / "weights.pt"
        weights.parent.mkdir()
        weights.write_bytes(b"the same weights")
        grid_file = tmp_path / folder / "grid.yaml"
        grid_file.write_text(grid_text.replace("SRC", str(weights)))
        grid = load_grid_file(grid_file)
        hashes.append([s.spec_hash for s in grid.specs])
        spec = grid.specs[0]
        assert spec.source == "file:weights.pt"
        assert spec.source_checksum == hashlib.sha256(b"the same weights").hexdigest()
        paths.append(grid.source_files[(spec.source, spec.source_checksum)])
    assert hashes[0] == hashes[1] and paths[0] != paths[1]

    data_root = tmp_path / "root"
    with pytest.raises(KernelInputError, match=r"root/sources/weights\.pt"):
        resolve_source_path("file:weights.pt", str(data_root))
    (data_root / "sources").mkdir(parents=True)
    (data_root / "sources" / "weights.pt").write_bytes(b"the same weights")
    assert resolve_source_path("file:weights.pt", str(data_root)) == str(data_root / "sources" / "weights.pt")
    assert resolve_source_path("file:weights.pt", str(data_root), paths[0]) == paths[0]
