"""`rtgrid status`: stages, cells, running trials, failures, an ETA weighted by image-steps, the --json schema,
no "eta: done" for a cancelled experiment, and --watch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import run_cli

from db.repository import Repository
from db.session import open_database
from orchestrator.plan.grids import load_grid

GRID = """\
name: weights
fixed: {arch: tiny_resnet, method: finetune, epochs: 2, source: scratch, dataset: digits,
        params: {input_size: 16, eval_images: 100}}
axes: {subset_size: [100, 1000], seed: [0, 1, 2]}
"""


def _steps(subset: int) -> int:
    """Image-steps of one trial of GRID, counted by hand: 2 epochs of `subset` images, 2 evaluations (every
    epoch) of 100 test images (eval_images caps the 540 of digits' test split), no OOD set, no attack."""
    return 2 * subset + 2 * 100


@pytest.fixture()
def seeded(db_url: str, tmp_path: Path) -> Iterator[tuple[str, Repository, str]]:
    grid = tmp_path / "weights.yaml"
    grid.write_text(GRID)
    run_cli("submit", str(grid), "--record-only", "--db", db_url)
    repo = Repository(open_database(db_url, create=False))
    yield db_url, repo, str(grid)
    repo.close()


def _by_subset(grid: str) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for spec in load_grid(grid).specs:
        assert spec.subset_size is not None
        found.setdefault(spec.subset_size, []).append(spec.spec_hash)
    return found


def test_status_json_schema_and_an_eta_weighted_by_image_steps(seeded: tuple[str, Repository, str]) -> None:
    db_url, repo, grid = seeded
    small, large = _by_subset(grid)[100], _by_subset(grid)[1000]
    for spec_hash in small[:2]:  # two cheap trials finished just now
        repo.mark_started(spec_hash, "node-a")
        repo.complete(spec_hash, {"test_acc": 0.5})
    repo.mark_started(large[0], "node-b")  # one expensive trial half way
    repo.record_epoch(large[0], 1, {"test_acc": 0.4})
    repo.mark_started(small[2], "node-a")
    repo.fail(small[2], "RuntimeError: out of memory\n  a second line that status never shows")

    view = json.loads(run_cli("status", "-e", "weights", "--json", "--db", db_url).stdout)
    assert set(view) == {"experiment", "generated_at", "trials", "counts", "stages", "cells", "running_trials",
                         "failures", "throughput", "image_steps", "eta", "experiments"}
    assert view["counts"] == {"pending": 2, "running": 1, "completed": 2, "failed": 1, "cancelled": 0}
    assert view["stages"] == [{"name": "transfers", "counts": view["counts"]}]
    assert view["cells"]["total"] == 1 and view["cells"]["rows"][0]["state"] == "running"
    (running,) = view["running_trials"]
    assert (running["spec_hash"], running["epoch"], running["epochs"], running["node"]) == (large[0], 1, 2, "node-b")
    assert running["elapsed_s"] >= 0 and "subset 1000" in running["spec"]
    assert view["failures"] == [{"spec_hash": small[2], "spec": view["failures"][0]["spec"],
                                 "error": "RuntimeError: out of memory",
                                 "finished_at": view["failures"][0]["finished_at"]}]

    # ETA: remaining image-steps (2 pending large + half the running one) at the rate of image-steps done
    remaining = 2 * _steps(1000) + 0.5 * _steps(1000)
    assert view["image_steps"] == {"done": 2 * _steps(100), "remaining": remaining}
    throughput = view["throughput"]
    assert throughput["window_s"] == 60.0  # the work began under a minute ago: the window is its floor
    assert throughput["image_steps_per_hour"] == pytest.approx(2 * _steps(100) * 3600 / 60)
    assert view["eta"]["state"] == "running"
    assert view["eta"]["seconds"] == pytest.approx(remaining / (2 * _steps(100)) * 60)
    by_count = 3 / 2 * 60  # what a trial-count ETA would say: 3 left at 2 per minute
    assert view["eta"]["seconds"] > 4 * by_count  # a large trial costs 5.5x a small one (2200 vs 400)

    text = run_cli("status", "weights", "--db", db_url).stdout  # the positional spelling still works
    assert "node-b" in text and "epoch 1/2" in text and "RuntimeError: out of memory" in text
    assert "second line" not in text and "eta: " in text and "eta: done" not in text


def test_a_cancelled_experiment_has_no_eta_done(seeded: tuple[str, Repository, str]) -> None:
    db_url, repo, _ = seeded
    run_cli("cancel", "-e", "weights", "--yes", "--db", db_url)
    view = json.loads(run_cli("status", "-e", "weights", "--json", "--db", db_url).stdout)
    assert view["eta"]["state"] == "cancelled" and view["eta"]["seconds"] is None
    text = run_cli("status", "-e", "weights", "--db", db_url).stdout
    assert "eta: done" not in text and "retry weights --cancelled" in text


def test_a_finished_experiment_says_done_and_watch_returns(seeded: tuple[str, Repository, str]) -> None:
    db_url, repo, grid = seeded
    for hashes in _by_subset(grid).values():
        for spec_hash in hashes:
            repo.mark_started(spec_hash, "n")
            repo.complete(spec_hash, {"test_acc": 0.5})
    view = json.loads(run_cli("status", "-e", "weights", "--json", "--db", db_url).stdout)
    assert view["eta"] == {"state": "done", "seconds": 0.0, "text": "done"}
    out = run_cli("status", "-e", "weights", "--watch", "--interval", "0.5", "--db", db_url).stdout
    assert "eta: done" in out and "6 trials" in out  # one frame, then it stops: nothing is left to watch


def test_status_of_all_experiments_lists_them(seeded: tuple[str, Repository, str]) -> None:
    db_url, _, _ = seeded
    view = json.loads(run_cli("status", "--json", "--db", db_url).stdout)
    assert view["experiment"] is None and view["experiments"] == ["weights"] and view["trials"] == 6
