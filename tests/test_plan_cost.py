"""`rtgrid plan`: writes nothing, counts image-steps as REFERENCE.md's protocol does, prices them from the
throughput table, and checks data roots and source files; `rtgrid experiment list|show|delete`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cli_helpers import error_line, run_cli
from sqlalchemy import create_engine, text

from db.session import normalise_url
from workers import catalog


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_plan_and_dry_run_leave_no_database_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RTGRID_DB", raising=False)
    before = _files(tmp_path)
    out = run_cli("plan", "smoke").stdout
    assert "nothing is written" in out and "61" in out
    db = tmp_path / "explicit.sqlite"
    out = run_cli("submit", "smoke", "--dry-run", "--db", f"sqlite:///{db}").stdout
    assert "nothing is written" in out
    run_cli("plan", "utrera2021", "--json")
    assert _files(tmp_path) == before  # no rtgrid.sqlite, no explicit.sqlite, no WAL files
    assert not db.exists()


# --- Utrera et al. 2021 recounted from REFERENCE.md section C and E (paper text column), not from rtgrid's code
TRAIN_SPLIT = {"cifar10": 50_000, "cifar100": 50_000, "svhn": 73_257, "fmnist": 60_000, "kmnist": 60_000,
               "mnist": 60_000}
TEST_SPLIT = {"cifar10": 10_000, "cifar100": 10_000, "svhn": 26_032, "fmnist": 10_000, "kmnist": 10_000,
              "mnist": 10_000}
CIFAR101_IMAGES = 2_000  # CIFAR-10.1 v6 (REFERENCE D)
SUBSETS = [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, None]
ATTACKED_IMAGES = 1_000  # the penultimate attack on 1000 test images: the student sees them clean and attacked


def _utrera_expected() -> tuple[int, int]:
    train = evaluation = 0
    sources, blocks = 4, 4
    for target in TRAIN_SPLIT:
        ood_images = CIFAR101_IMAGES if target == "cifar10" else TEST_SPLIT[target]  # else a corrupted test split
        for n in SUBSETS:
            small = n is not None and n <= 1600
            seeds = 20 if small else 10
            epochs = 100 if small else 150
            every = 20 if small else 10
            # rows at 0-based epochs that are multiples of L, plus the last epoch
            evaluations = len(set(range(0, epochs, every)) | {epochs - 1})
            images = TRAIN_SPLIT[target] if n is None else n
            trials = sources * blocks * seeds
            train += trials * epochs * images
            evaluation += trials * (evaluations * (TEST_SPLIT[target] + ood_images) + 2 * ATTACKED_IMAGES)
    return train, evaluation


def test_utrera_image_steps_equal_an_independent_recount() -> None:
    data = json.loads(run_cli("plan", "utrera2021", "--json").stdout)
    train, evaluation = _utrera_expected()
    assert data["total"]["trials"] == 14_400
    assert (data["total"]["train_image_steps"], data["total"]["eval_image_steps"]) == (train, evaluation)
    assert [s["name"] for s in data["stages"]] == ["transfers"]


def test_gpu_hours_follow_the_throughput_table_and_an_override(tmp_path: Path) -> None:
    shipped = json.loads(run_cli("plan", "utrera2021", "--json", "--gpu-hour-price", "2").stdout)
    (rate,) = shipped["throughput"]
    assert rate["arch"] == "resnet50" and rate["source"]  # the figure says where it comes from
    train, evaluation = _utrera_expected()
    hours = (train / rate["train_images_per_s"] + evaluation / rate["eval_images_per_s"]) / 3600
    assert shipped["total"]["gpu_hours"] == pytest.approx(hours)
    assert shipped["cost"] == pytest.approx(2 * hours)
    longest = shipped["longest_trial"]
    assert "svhn" in longest["spec"] and "subset full" in longest["spec"]  # the biggest training split

    table = tmp_path / "rates.csv"
    table.write_text("arch,input_size,blocks,train_images_per_s,eval_images_per_s,device,source\n"
                     "resnet50,224,0,5000,10000,test device,this test\n")
    data = json.loads(run_cli("plan", "utrera2021", "--json", "--throughput", str(table)).stdout)
    assert {(r["blocks"], r["device"]) for r in data["throughput"]} == {("0", "test device"), ("*", rate["device"])}
    assert data["total"]["gpu_hours"] < shipped["total"]["gpu_hours"]  # a quarter of the trials got faster rates

    table.write_text("arch,input_size,blocks,train_images_per_s\nresnet50,224,0,1\n")
    assert "missing column" in error_line(run_cli("plan", "smoke", "--throughput", str(table), expect=2))


def test_a_trial_without_a_throughput_figure_is_named_not_priced(tmp_path: Path) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nfixed: {arch: resnet18, method: finetune, epochs: 2, source: torchvision:resnet18, "
                    "dataset: digits, params.input_size: 64}\naxes: {seed: [0, 1]}\n")
    out = run_cli("plan", str(grid)).stdout
    assert "no throughput figure for resnet18 64px" in out and "(2 trials)" in out
    data = json.loads(run_cli("plan", str(grid), "--json").stdout)
    assert data["total"]["unpriced_trials"] == 2 and data["total"]["gpu_hours"] == 0
    assert data["total"]["train_image_steps"] == 2 * 2 * catalog.SPLIT_SIZES["digits"][0]


def test_preflight_finds_what_is_on_disk(tmp_path: Path) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nfixed: {arch: tiny_resnet, method: finetune, epochs: 1, source: robustness:mine, "
                    "ood: cifar10.1}\naxes: {dataset: [cifar10], seed: [0]}\n")
    root = tmp_path / "data"
    root.mkdir()
    data = json.loads(run_cli("plan", str(grid), "--json", "--data-root", str(root)).stdout)
    assert [c["ok"] for c in data["preflight"]] == [False, False, False]
    (root / "cifar-10-batches-py").mkdir()
    (root / "cifar10.1").mkdir()
    (root / "sources").mkdir()
    (root / "sources" / "mine.pt").write_bytes(b"weights")
    data = json.loads(run_cli("plan", str(grid), "--json", "--data-root", str(root)).stdout)
    assert [(c["what"], c["ok"]) for c in data["preflight"]] == [
        ("dataset cifar10", True), ("dataset cifar10.1", True), ("source robustness:mine", True)]


def test_split_sizes_of_the_embedded_sets_are_what_the_loaders_build() -> None:
    from workers.data.registry import load_split

    for name in ("digits", "synthetic-target-a"):
        for train in (True, False):
            assert catalog.split_size(name, train, {}) == len(load_split(name, train)), (name, train)
    assert catalog.split_size("synthetic-source", True, {"train_images": 300}) == 300


# --- experiments ---------------------------------------------------------------------------------------

GRID_A = """
name: a
fixed: {arch: tiny_resnet, method: finetune, epochs: 2, source: torchvision:resnet18, dataset: digits}
axes: {seed: [0, 1, 2, 3], subset_size: [100, 200]}
"""
GRID_B = GRID_A.replace("name: a", "name: b").replace("seed: [0, 1, 2, 3]", "seed: [2, 3, 4]")


def _scalar(db_url: str, sql: str) -> int:
    engine = create_engine(normalise_url(db_url))
    try:
        with engine.begin() as connection:
            return int(connection.execute(text(sql)).scalar_one())
    finally:
        engine.dispose()


def test_experiment_list_show_and_delete_keeps_shared_trials(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GRID_A)
    (tmp_path / "b.yaml").write_text(GRID_B)
    run_cli("submit", str(tmp_path / "a.yaml"), "--record-only", "--db", db_url)
    engine = create_engine(normalise_url(db_url))
    with engine.begin() as connection:  # as if A had run: completed, with epochs
        connection.execute(text("UPDATE trials SET status = 'completed', attempts = 1, test_acc = 0.5"))
        connection.execute(text("INSERT INTO epoch_metrics (trial_id, epoch, test_acc) SELECT id, 1, 0.5 FROM trials"))
    engine.dispose()
    run_cli("submit", str(tmp_path / "b.yaml"), "--record-only", "--db", db_url)

    rows = json.loads(run_cli("experiment", "list", "--json", "--db", db_url).stdout)
    assert [(r["name"], r["trials"], r["completed"], r["pending"]) for r in rows] == [("a", 8, 8, 0), ("b", 6, 4, 2)]
    detail = json.loads(run_cli("experiment", "show", "a", "--json", "--db", db_url).stdout)
    assert detail["shared_with_other_experiments"] == 4
    assert "did you mean 'a'" in error_line(run_cli("experiment", "show", "aa", "--db", db_url, expect=2))

    refused = _decline(db_url)
    assert "Aborted" in refused
    assert _scalar(db_url, "SELECT count(*) FROM trials") == 10  # nothing removed

    out = run_cli("experiment", "delete", "a", "--yes", "--db", db_url).stdout
    assert "4 trials removed, 4 shared trials kept" in out
    assert _scalar(db_url, "SELECT count(*) FROM experiments") == 1
    assert _scalar(db_url, "SELECT count(*) FROM trials") == 6  # b's 4 shared (completed) + 2 pending
    assert _scalar(db_url, "SELECT count(*) FROM trials WHERE status = 'completed'") == 4
    assert _scalar(db_url, "SELECT count(*) FROM epoch_metrics") == 4  # the deleted trials' epochs went with them
    rows = json.loads(run_cli("experiment", "list", "--json", "--db", db_url).stdout)
    assert [(r["name"], r["completed"], r["pending"]) for r in rows] == [("b", 4, 2)]


def _decline(db_url: str) -> str:
    from click.testing import CliRunner

    from cli import main

    result = CliRunner().invoke(main, ["experiment", "delete", "a", "--db", db_url], input="n\n")
    assert result.exit_code == 1, result.output
    return result.output


def test_experiment_delete_refuses_a_running_experiment(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GRID_A)
    run_cli("submit", str(tmp_path / "a.yaml"), "--record-only", "--db", db_url)
    engine = create_engine(normalise_url(db_url))
    with engine.begin() as connection:
        connection.execute(text("UPDATE trials SET status = 'running' WHERE id = (SELECT min(id) FROM trials)"))
    engine.dispose()
    line = error_line(run_cli("experiment", "delete", "a", "--yes", "--db", db_url, expect=2))
    assert "cancel it first" in line
    assert _scalar(db_url, "SELECT count(*) FROM trials") == 8


def test_plan_needs_no_environment_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An unreachable $RTGRID_DB does not stop a plan: it says the database was not read."""
    monkeypatch.setenv("RTGRID_DB", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    monkeypatch.chdir(tmp_path)
    out = run_cli("plan", "smoke").stdout
    assert "nothing is written" in out and "database not read (" in out
    assert os.listdir(tmp_path) == []


def test_plan_counts_out_specs_completed_in_the_database(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GRID_A)
    grid = str(tmp_path / "a.yaml")
    before = json.loads(run_cli("plan", grid, "--json", "--db", db_url).stdout)
    assert before["already_completed"] is None and before["to_run"] is None  # no database yet
    run_cli("submit", grid, "--record-only", "--db", db_url)
    engine = create_engine(normalise_url(db_url))
    with engine.begin() as connection:  # 3 of the 8 specs completed (subset 100: the cheaper ones)
        connection.execute(text("UPDATE trials SET status = 'completed' WHERE id IN "
                                "(SELECT id FROM trials WHERE subset_size = 100 ORDER BY id LIMIT 3)"))
    engine.dispose()
    data = json.loads(run_cli("plan", grid, "--json", "--db", db_url).stdout)
    assert data["already_completed"] == 3 and data["to_run"]["trials"] == 5
    one = 2 * 100 + 2 * catalog.split_size("digits", False, {})  # 2 epochs of 100 images, 2 full evaluations
    assert data["to_run"]["train_image_steps"] + data["to_run"]["eval_image_steps"] == (
        data["total"]["train_image_steps"] + data["total"]["eval_image_steps"] - 3 * one)
    assert "3 of these specs are already completed" in run_cli("plan", grid, "--db", db_url).stdout
