"""Names are checked at plan time: a typo in a grid file is one line, exit 2, the database unchanged.

Also: every preset's specs pass the name checks, and spec hashes are exactly those of the code
before the checks existed (validation only; the canonical JSON did not change).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from results_data import db_fingerprint

from cli import main
from orchestrator.plan.grids import PRESETS, load_grid
from orchestrator.plan.sources import SourceRef
from orchestrator.plan.spec import SpecError, TrialSpec

VALID = {"arch": "tiny_resnet", "dataset": "digits", "ood": "noise-2", "method": "finetune",
         "source": "torchvision:resnet18", "epochs": 2, "params.lr": 0.05}
# grid field -> (its value, the bad name the error must show, what the suggestion must name)
TYPOS = {
    "dataset": ("cifar1O", "'cifar1O'", "'cifar10'"),
    "arch": ("resnet5O", "'resnet5O'", "'resnet50'"),
    "ood": ("noise-7", "'noise-7'", "'noise-"),
    "method": ("finetun", "'finetun'", "'finetune'"),
    "params.lrr": (0.1, "'lrr'", "'lr'"),
}


def _grid_text(**overrides: object) -> str:
    fields = {**VALID, **overrides}
    body = ", ".join(f"{key}: {value}" for key, value in fields.items())
    return f"name: names\nfixed: {{{body}}}\naxes: {{seed: [0, 1]}}\n"


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _sqlite_files(url: str) -> dict[str, bytes]:
    """The SQLite file and its content sidecars (-wal, -journal; absent = empty), byte for byte. The -shm
    file is only the WAL's index, rebuilt by any reader (a read-only open creates it): not content."""
    path = Path(url.removeprefix("sqlite:///"))
    files = (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-journal"))
    return {p.name: p.read_bytes() if p.exists() else b"" for p in files}


@pytest.mark.parametrize("field", list(TYPOS))
def test_unknown_name_in_grid_file_is_one_line_exit_2_db_unchanged(db_url: str, tmp_path: Path, field: str) -> None:
    typo, bad_name, suggestion = TYPOS[field]
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(_grid_text())
    bad.write_text(_grid_text(**{field: typo}))
    code, _, err = _invoke("submit", str(good), "--dry-run", "--db", db_url)  # the database exists, with rows
    assert code == 0, err
    fingerprint = db_fingerprint(db_url)
    before = _sqlite_files(db_url) if db_url.startswith("sqlite") else None
    assert before is None or before[Path(db_url).name]  # a real database file, not an empty one
    for args in (["grid", "show", str(bad)], ["submit", str(bad), "--dry-run", "--db", db_url],
                 ["submit", str(bad), "--db", db_url]):
        code, out, err = _invoke(*args)
        lines = err.strip().splitlines()
        assert code == 2, (args, out, err)
        assert len(lines) == 1, err
        assert bad_name in lines[0] and f"did you mean {suggestion}" in lines[0], lines[0]
        assert str(bad) in lines[0]  # a grid file's errors name the file
    if before is not None:
        assert _sqlite_files(db_url) == before
    assert db_fingerprint(db_url) == fingerprint


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"arch": "resnet5O"}, "unknown architecture 'resnet5O'; did you mean 'resnet50'?"),
        ({"dataset": "cifar1O"}, "unknown dataset 'cifar1O'; did you mean 'cifar10'?"),
        ({"ood": "cifar10.2"}, "unknown OOD set 'cifar10.2'; did you mean 'cifar10.1'?"),
        ({"dataset": "svhn", "ood": "cifar10.1"}, "applies to cifar10 only"),
        ({"method": "pgd-linf"}, "unknown transfer method 'pgd-linf'"),
        ({"params": {"lrr": 0.1}}, "unknown param 'lrr'; did you mean 'lr'?"),
        ({"params": {"schedule": "cosin"}}, "unknown schedule 'cosin'; did you mean 'cosine'?"),
        ({"source": "torchvison:resnet50"}, "unknown source scheme 'torchvison'; did you mean 'torchvision:'?"),
        ({"source": "torchvision:resnet5O"}, "unknown architecture 'resnet5O'"),
        ({"source": "resnet50"}, "not scratch nor <scheme>:<name>"),
    ],
)
def test_spec_names_are_checked(change: dict, message: str) -> None:
    spec = {"kind": "transfer", "arch": "resnet50", "source": "torchvision:resnet50", "dataset": "cifar10",
            "method": "finetune", "seed": 0, "epochs": 1, **change}
    with pytest.raises(SpecError) as info:
        TrialSpec(**spec)
    text = str(info.value)
    assert message in text and "\n" not in text
    assert "(known: " in text or not message.startswith("unknown")  # an unknown name lists the known ones


def test_every_preset_builds_with_its_counts() -> None:
    counts = {name: len(build().specs) for name, build in PRESETS.items()}
    assert counts == {"utrera2021": 14400, "utrera2021-table4": 12576, "utrera2021-code": 7776,
                      "renofeation2021": 200, "andreassen2021": 40, "smoke": 61}


# sha256 over every spec_hash of each preset, in order, computed before the catalog and the name checks.
PRESET_HASHES = {
    "utrera2021": "b03998f4bf970d2501ef99ccc8e401f56df848c68a058e37bdd9c85185d13d35",
    "utrera2021-table4": "1a476aead79720c4375cfc761724ec1a140f6dcd3d167101df22a85a300f2be0",
    "utrera2021-code": "834d960c8dd7b36583fad64a725f3cf048cface8bd5fac6ca519b04cac0ebc9d",
    "renofeation2021": "67ba3a263d17c8c93b572e338a3b48d490b10784a5361017303dc1b87f14a3b3",
    "andreassen2021": "9288fc40639239d52129a9fff2772a8463788ffd8cbc1b23b7974f2c366ab36d",
    "smoke": "55e26e8d0fb38fab13141f99d97f0de5ca1529e1b7dc1fa36c92320871437699",
}
# A few single spec hashes from before (first and last of some presets).
SPEC_HASHES = {
    ("renofeation2021", 0): "5e504d7816f22e47e8c4341d09f229e2b36cab355cba30ba9850ae800da0bd20",
    ("renofeation2021", -1): "b864c4bca313631712fb3778654a29355be7bb780595e903d7f340246ff8828f",
    ("andreassen2021", 0): "10010d194a380491ba48beb1d8b27b6d3c0702d2f0857a1810720838a31c8d59",
    ("smoke", 0): "f61e19ea54993431ac673a0d5876a7204256c0ae9623db4567931b8156e4e797",
    ("smoke", -1): "aecc6b1576070c7aa02f133f28944a5d3c8f42cb1a0975cb36be93206ea060bf",
    ("utrera2021-code", -1): "880d8da15d6379d29f1ce9c07f8cb4694b801eaba899e25dc24bb42fe35470d7",
}


@pytest.mark.parametrize("name", list(PRESET_HASHES))
def test_preset_spec_hashes_are_stable(name: str) -> None:
    specs = load_grid(name).specs
    assert hashlib.sha256("".join(s.spec_hash for s in specs).encode()).hexdigest() == PRESET_HASHES[name]
    for (preset, index), expected in SPEC_HASHES.items():
        if preset == name:
            assert specs[index].spec_hash == expected
    for spec in specs[:: max(1, len(specs) // 50)]:  # a round trip through JSON re-validates and re-hashes
        assert TrialSpec.from_json(spec.canonical_json()).spec_hash == spec.spec_hash


@pytest.mark.parametrize("text", ["scratch", "spec:" + "ab" * 32, "file:weights.pt", "torchvision:resnet50",
                                  "robustness:imagenet_linf_4"])
def test_source_ref_round_trips(text: str) -> None:
    assert str(SourceRef.parse(text)) == text
