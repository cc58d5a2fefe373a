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

from orchestrator.console.store import open_repository
from orchestrator.plan.grids import load_grid_file
from orchestrator.run.runner import DIAGNOSTICS_ENV, RunOptions, start_ray
from orchestrator.run.submit import grid_for_experiment, submit
from workers.trainable import Diagnostics, KillWorker

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

    start_ray(RunOptions(quiet=True))
    yield
    ray.shutdown()


@pytest.fixture()
def grid_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_GRID)
    return path


def _starts_log(artifacts: Path) -> str:
    return str(artifacts / "kernel_starts.log")


def _options(tmp_path: Path, diagnostics: Diagnostics | None = None, **extra) -> RunOptions:
    """Options for a test run; its kernel starts are logged under the artifacts directory."""
    empty_root = tmp_path / "data"
    empty_root.mkdir(parents=True, exist_ok=True)
    artifacts = tmp_path / "artifacts"
    diagnostics = diagnostics or Diagnostics(kernel_starts_log=_starts_log(artifacts))
    return RunOptions(data_root=str(empty_root), artifacts=str(artifacts), quiet=True, diagnostics=diagnostics,
                      **extra)


def _driver_env(db_url: str, artifacts: Path) -> dict[str, str]:
    """The environment of a driver run as `python -m cli`: its diagnostics come from RTGRID_DIAGNOSTICS."""
    diagnostics = Diagnostics(kernel_starts_log=_starts_log(artifacts))
    return {**os.environ, "RTGRID_DB": db_url, DIAGNOSTICS_ENV: diagnostics.to_json()}


def _kernel_starts(artifacts: Path) -> Counter:
    log = Path(_starts_log(artifacts))
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
    env = _driver_env(db_url, artifacts)
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
        # While the first driver lives, a second one (default stale limit) takes nothing from it.
        second = submit(repo, grid_for_experiment(repo, "cut"), "cut", _options(tmp_path / "second"))
        assert second.run.runnable == 0 and second.run.claimed_elsewhere > 0
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray instance it started
        driver.wait()
    assert len(done) >= 4, "driver did not complete trials in time"
    assert not _kernel_starts(tmp_path / "second" / "artifacts")

    result = submit(repo, grid_for_experiment(repo, "cut"), "cut", _options(tmp_path, stale_after_s=0))
    assert result.run.failed == 0
    statuses = Counter(r[0] for r in _rows(repo, "SELECT status FROM trials"))
    assert statuses == {"completed": 13}
    starts = _kernel_starts(artifacts)
    assert all(starts[h] == 1 for h in done), "a spec completed before the interruption ran again"


NOOP_CELL = """
name: noop-cell
fixed: {arch: tiny_resnet, method: finetune, source: scratch, dataset: digits, epochs: 1, subset_size: 100}
axes:
  seed: SEEDS
"""


def test_lost_worker_strikes_only_its_own_spec(ray_local, db_url: str, tmp_path: Path) -> None:
    """A worker process dies (os._exit) while running the second spec of a 4-spec pack: only that
    spec is retried (resuming the rest of the pack untouched); dying past --max-failures fails it
    alone, with the worker's error, while its pack-mates complete."""
    repo = open_repository(db_url, write=True)
    for seeds, deaths, experiment in (([0, 1, 2, 3], 1, "dies-once"), ([10, 11, 12, 13], 3, "dies-always")):
        grid_file = tmp_path / f"{experiment}.yaml"
        grid_file.write_text(NOOP_CELL.replace("SEEDS", str(seeds)))
        grid = load_grid_file(grid_file)
        victim = grid.specs[1].spec_hash
        fault = KillWorker(spec_hash=victim, marker_dir=str(tmp_path / f"deaths-{experiment}"), times=deaths)
        diagnostics = Diagnostics(kernel_override="noop", kill_worker=fault,
                                  kernel_starts_log=_starts_log(tmp_path / "artifacts"))
        options = _options(tmp_path, diagnostics, pack_size=4, max_failures=1, flush_interval_s=0)
        result = submit(repo, grid, experiment, options)
        starts = _kernel_starts(tmp_path / "artifacts")
        statuses = {h: repo.trial_by_hash(h).status for h in (s.spec_hash for s in grid.specs)}
        others = [s.spec_hash for s in grid.specs if s.spec_hash != victim]
        assert all(statuses[h] == "completed" for h in others), statuses
        assert all(starts[h] == 1 for h in others), "a pack-mate ran twice"
        assert starts[victim] == 2  # the first run and one retry (--max-failures 1)
        assert len(list(Path(fault.marker_dir).iterdir())) == min(deaths, 2), "the worker did not die"
        if deaths == 1:
            assert statuses[victim] == "completed" and result.run.failed == 0
        else:
            error = repo.trial_by_hash(victim).error
            assert statuses[victim] == "failed" and error.startswith("worker lost 2 times")
            assert result.run.failed == 1 and result.run.failures == {victim: error}
        assert all(repo.trial_by_hash(s.spec_hash).claimed_by is None for s in grid.specs)


def test_cancel_stops_a_running_driver(ray_local, db_url: str, grid_file: Path, tmp_path: Path) -> None:
    grid_file.write_text(TINY_GRID.replace("seed: [0, 1]", "seed: [0, 1, 2, 3, 4, 5, 6, 7]")
                         .replace("dataset: [digits, cifar10]", "dataset: [digits]")
                         .replace("epochs: 2", "epochs: 6"))
    (tmp_path / "data").mkdir()
    env = {**os.environ, "RTGRID_DB": db_url}
    driver = subprocess.Popen(
        [sys.executable, "-m", "cli", "submit", str(grid_file), "--experiment", "stop-me", "--quiet",
         "--artifacts", str(tmp_path / "artifacts"), "--data-root", str(tmp_path / "data"), "--pack-size", "1",
         "--max-concurrent", "1"],
        cwd=Path(__file__).resolve().parents[1], env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    repo = open_repository(db_url, write=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            started = _rows(repo, "SELECT count(*) FROM trials WHERE kind = 'transfer' AND status = 'running'")
            if started and started[0][0]:
                break
            assert driver.poll() is None, driver.stderr.read() if driver.stderr else "driver exited"
            time.sleep(0.5)
        cancel = subprocess.run([sys.executable, "-m", "cli", "cancel", "stop-me", "--yes"], env=env, text=True,
                                capture_output=True, cwd=Path(__file__).resolve().parents[1])
        assert cancel.returncode == 0 and "trials cancelled" in cancel.stdout
        out, err = driver.communicate(timeout=120)  # the driver notices and stops by itself
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 0, err[-2000:]
    statuses = Counter(r[0] for r in _rows(repo, "SELECT status FROM trials WHERE kind = 'transfer'"))
    assert statuses["cancelled"] >= 6 and set(statuses) <= {"cancelled", "completed"}, statuses
    assert _rows(repo, "SELECT count(*) FROM trials WHERE claimed_by IS NOT NULL")[0][0] == 0
