"""End to end: real local Ray, real kernels, real SQLite file and real PostgreSQL.

A tiny grid (one natural source trained on synthetic data, fine-tuned on sklearn digits, plus
specs on a dataset that is absent from the data root, which must fail cleanly) is submitted,
interrupted, resumed and shared between experiments.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import text

from orchestrator.grids import load_grid_file
from orchestrator.runner import RunOptions, _start_ray
from orchestrator.store import open_repository
from orchestrator.submit import grid_for_experiment, submit

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY_GRID = """
name: tiny
fixed:
  arch: tiny_resnet
  method: finetune
  epochs: 2
  ood: noise-2
  blocks: 3
  params: {input_size: 16, batch_size: 32, lr: 0.05, eval_images: 100,
           attack_steps: 3, attack_images: 40, attack_eps: 0.1, attack_step: 0.01}
sources:
  nat: {arch: tiny_resnet, dataset: synthetic-source, method: natural, seed: 0, epochs: 1,
        params: {input_size: 16, batch_size: 64, lr: 0.1, num_classes: 10, train_images: 400, eval_images: 100}}
axes:
  source: [grid:nat]
  dataset: [digits, cifar10]
  subset_size: [50, 100]
  seed: [0, 1]
"""


@pytest.fixture(scope="module")
def ray_local():
    import ray

    _start_ray(RunOptions(quiet=True))
    yield
    ray.shutdown()


@pytest.fixture()
def grid_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_GRID)
    return path


def _options(tmp_path: Path, **extra) -> RunOptions:
    empty_root = tmp_path / "data"
    empty_root.mkdir(exist_ok=True)
    return RunOptions(data_root=str(empty_root), artifacts=str(tmp_path / "artifacts"), quiet=True, **extra)


def _kernel_starts(artifacts: Path) -> Counter:
    log = artifacts / "kernel_starts.log"
    if not log.exists():
        return Counter()
    return Counter(line.split("\t")[1] for line in log.read_text().splitlines() if line)


def _rows(repo, sql: str) -> list:
    with repo.engine.connect() as conn:
        return list(conn.execute(text(sql)))


def test_full_run_records_everything(ray_local, db_url: str, grid_file: Path, tmp_path: Path) -> None:
    repo = open_repository(db_url, write=True)
    grid = load_grid_file(grid_file)
    result = submit(repo, grid, "tiny", _options(tmp_path))
    assert result.plan.new == 9
    assert (result.run.runnable, result.run.completed, result.run.failed) == (9, 5, 4)

    trials = {r.dataset: r for r in _rows(repo, "SELECT * FROM trials WHERE kind = 'transfer'")}
    rows = _rows(repo, "SELECT dataset, status, error, test_acc, asr, ood_acc FROM trials WHERE kind='transfer'")
    for dataset, status, error, test_acc, asr, ood_acc in rows:
        if dataset == "digits":
            assert status == "completed" and test_acc is not None and asr is not None and ood_acc is not None
        else:  # cifar10 is not in the (empty) data root: a clear one-line error, the others unaffected
            assert status == "failed" and "cifar10" in error and str(tmp_path / "data") in error
    assert trials
    epochs = _rows(repo, "SELECT t.dataset, e.epoch, e.test_acc, e.ood_acc FROM epoch_metrics e "
                         "JOIN trials t ON t.id = e.trial_id WHERE t.kind = 'transfer'")
    assert sorted(Counter(e[1] for e in epochs).items()) == [(1, 4), (2, 4)]
    assert all(e[2] is not None and e[3] is not None for e in epochs)
    source = _rows(repo, "SELECT status, checkpoint_uri FROM trials WHERE kind = 'source'")[0]
    assert source[0] == "completed" and Path(source[1]).is_file()

    # Submitting again runs nothing that completed; the failed specs are retried (and fail again).
    again = submit(repo, grid, "tiny", _options(tmp_path))
    assert again.plan.new == 0 and again.run.runnable == 4 and again.run.completed == 0
    starts = _kernel_starts(tmp_path / "artifacts")
    completed = [r[0] for r in _rows(repo, "SELECT spec_hash FROM trials WHERE status = 'completed'")]
    assert all(starts[h] == 1 for h in completed)


def test_second_experiment_links_shared_specs(ray_local, db_url: str, grid_file: Path, tmp_path: Path) -> None:
    repo = open_repository(db_url, write=True)
    grid = load_grid_file(grid_file)
    submit(repo, grid, "first", _options(tmp_path))
    before = _kernel_starts(tmp_path / "artifacts")
    second = submit(repo, grid, "second", _options(tmp_path))
    assert second.plan.new == 0 and second.plan.already_completed == 5
    after = _kernel_starts(tmp_path / "artifacts")
    assert all(after[h] == before[h] for h in before if h in {r[0] for r in _rows(
        repo, "SELECT spec_hash FROM trials WHERE status = 'completed'")})
    links = _rows(repo, "SELECT e.name, count(*) FROM experiment_trials l JOIN experiments e "
                        "ON e.id = l.experiment_id GROUP BY e.name ORDER BY e.name")
    assert [(name, n) for name, n in links] == [("first", 9), ("second", 9)]


def test_interrupted_driver_then_resume(ray_local, db_url: str, grid_file: Path, tmp_path: Path) -> None:
    grid_file.write_text(TINY_GRID.replace("seed: [0, 1]", "seed: [0, 1, 2, 3, 4, 5]")
                         .replace("dataset: [digits, cifar10]", "dataset: [digits]"))
    artifacts = tmp_path / "artifacts"
    (tmp_path / "data").mkdir()
    env = {**os.environ, "RTGRID_DB": db_url}
    driver = subprocess.Popen(
        [sys.executable, "-m", "cli", "submit", str(grid_file), "--experiment", "cut", "--quiet",
         "--artifacts", str(artifacts), "--data-root", str(tmp_path / "data"), "--pack-size", "1",
         "--max-concurrent", "1"],
        cwd=Path(__file__).resolve().parents[1], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    repo = open_repository(db_url, write=True)
    deadline = time.time() + 240
    done: list[str] = []
    try:
        while time.time() < deadline:
            if repo.experiment_id("cut") is not None:
                done = [r[0] for r in _rows(repo, "SELECT spec_hash FROM trials WHERE status='completed'")]
                if len(done) >= 4:  # the source and some transfers
                    break
            assert driver.poll() is None, driver.stderr.read().decode() if driver.stderr else "driver exited"
            time.sleep(0.5)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray instance it started
        driver.wait()
    assert len(done) >= 4, "driver did not complete trials in time"

    result = submit(repo, grid_for_experiment(repo, "cut"), "cut", _options(tmp_path, stale_after_s=0))
    assert result.run.failed == 0
    statuses = Counter(r[0] for r in _rows(repo, "SELECT status FROM trials"))
    assert statuses == {"completed": 13}
    starts = _kernel_starts(artifacts)
    assert all(starts[h] == 1 for h in done), "a spec completed before the interruption ran again"
