"""`rtgrid grid show`: every axis (params.* included), honest cells, numeric order, NULL labels, --specs;
`run-spec --hash`; grid-file errors that name the line; the README's grid-file example is a valid grid."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cli_helpers import error_line, run_cli

from orchestrator.plan.grids import load_grid

README = Path(__file__).resolve().parents[1] / "README.md"

SWEEP = """\
name: sweep
fixed: {arch: tiny_resnet, method: finetune, epochs: 1, source: scratch, dataset: digits,
        params: {input_size: 16, eval_images: 50}}
axes:
  subset_size: [400, 200, full, 100]
  seed: [0, 1, 2]
  params.lr: [0.1, 0.05]
"""


def _write(tmp_path: Path, text: str, name: str = "g.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_params_axis_is_shown_and_cells_are_counted_not_multiplied(tmp_path: Path) -> None:
    grid = _write(tmp_path, SWEEP)
    info = json.loads(run_cli("grid", "show", grid, "--json").stdout)
    assert info["total"] == 24
    assert info["axes"]["params.lr"] == {"0.05": 12, "0.1": 12}  # the lr axis is visible (it was hidden)
    assert list(info["axes"]["subset_size"]) == ["100", "200", "400", "full"]  # numbers by value, full last
    assert info["axes"]["blocks"] == {"null": 24}  # NULL is "full" only for subset_size
    assert info["cells"] == 1 and info["specs_per_cell"] == [24, 24]
    out = run_cli("grid", "show", grid).stdout
    assert "cells: 1; 24 specs per cell" in out
    assert re.search(r"params\.lr\s+2 values: 0\.05 \(12\), 0\.1 \(12\)", out), out


def test_an_incomplete_product_is_not_claimed(tmp_path: Path) -> None:
    """Two methods x two datasets, but one method on one dataset only: 3 cells, not '2 x 2'."""
    grid = _write(tmp_path, "name: g\nfixed: {arch: tiny_resnet, epochs: 1, source: scratch, seed: 0}\n"
                            "axes: {dataset: [digits, synthetic-target-a], method: [finetune, retrain]}\n")
    grid2 = _write(tmp_path, "name: g\nfixed: {arch: tiny_resnet, epochs: 1, source: scratch, "
                             "dataset: digits, method: l2sp}\naxes: {seed: [0]}\n", "h.yaml")
    specs = load_grid(grid).specs[:3] + load_grid(grid2).specs
    from orchestrator.plan.grids import breakdown

    info = breakdown(specs)
    assert info["factors"] == {"dataset": 2, "method": 3} and info["full_product"] == 6
    assert info["cells"] == 4  # counted: 3 + 1, never the product


def test_specs_lists_index_hash_and_the_fields_that_vary(tmp_path: Path) -> None:
    grid = _write(tmp_path, SWEEP)
    rows = json.loads(run_cli("grid", "show", grid, "--specs", "--json").stdout)
    specs = load_grid(grid).specs
    assert [r["index"] for r in rows] == list(range(24))
    assert [r["spec_hash"] for r in rows] == [s.spec_hash for s in specs]
    assert set(rows[0]) == {"index", "spec_hash", "subset_size", "seed", "params.lr"}
    table = run_cli("grid", "show", grid, "--specs").stdout.splitlines()
    assert table[0].split() == ["index", "spec_hash", "seed", "subset_size", "params.lr"]
    assert table[1].split()[:2] == ["0", specs[0].spec_hash[:12]]
    assert len(table) == 25


@pytest.mark.slow
def test_run_spec_replays_a_spec_by_hash_from_the_grid_and_the_database(tmp_path: Path, db_url: str) -> None:
    grid = _write(tmp_path, SWEEP)
    spec = load_grid(grid).specs[5]
    common = ("--threads", "1", "--artifacts", str(tmp_path / "art"))
    out = run_cli("run-spec", "--preset", grid, "--hash", spec.spec_hash[:10], *common).stdout
    assert out.splitlines()[0] == f"spec 5 of sweep: {spec.spec_hash}" and "final" in out
    run_cli("submit", grid, "--record-only", "--db", db_url)
    out = run_cli("run-spec", "--hash", spec.spec_hash[:8], "--db", db_url, *common).stdout
    assert out.splitlines()[0] == f"trial {spec.spec_hash[:12]} of the database: {spec.spec_hash}"
    assert out.splitlines()[1] == spec.canonical_json()
    assert "no trial in the database" in error_line(run_cli("run-spec", "--hash", "ffffffff", "--db", db_url,
                                                            *common, expect=2))
    assert "no spec of grid sweep" in error_line(run_cli("run-spec", "--preset", grid, "--hash", "zzzzzz", *common,
                                                         expect=2))


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (SWEEP.replace("0.05]", "fast]"), ":7:", "param 'lr' must be a number"),
        (SWEEP.replace("arch: tiny_resnet", "arch: tiny_resnett"), ":2:", "did you mean 'tiny_resnet'"),
        (SWEEP.replace("  seed:", "  colour: [1]\n  seed:"), ":6:", "unknown axis 'colour'"),
        (SWEEP.replace("name: sweep", "name: sweep\nextra: 1"), ":2:", "unknown top-level key(s) extra"),
        (SWEEP.replace("seed: [0, 1, 2]", "seed: 3"), ":6:", "axis 'seed' must be a non-empty list"),
    ],
)
def test_grid_file_errors_name_the_line(tmp_path: Path, text: str, where: str, message: str) -> None:
    grid = _write(tmp_path, text)
    line = error_line(run_cli("grid", "show", grid, expect=2))
    assert f"{grid}{where}" in line and message in line, line


def test_the_readme_grid_file_example_is_a_valid_grid(tmp_path: Path) -> None:
    example = re.search(r"### Grid files.*?```yaml\n(.*?)```", README.read_text(), re.S)
    assert example is not None
    grid = load_grid(_write(tmp_path, example.group(1)))
    assert len(grid.sources) == 1 and len(grid.transfers) == 16  # as its comment says: 2 x 2 x 2 x 2
    assert {s.param("lr") for s in grid.transfers} == {0.05, 0.1}
