"""Fault tests with real processes: drivers run as `python -m cli` (each with its own local Ray),
real PostgreSQL (tests/db_fixtures.py) and SQLite files, and faults injected from outside.

- a driver SIGKILLed at three points (claims recorded; mid-grid; nearly done), each time followed
  by `rtgrid resume` at once (no --stale-after 0: a dead local driver's claims are taken at once);
- PostgreSQL refusing connections for 20 s mid-grid (a loopback TCP proxy, tests/tcp_proxy.py,
  stopped and started again; the shared server is never touched);
- two drivers racing on one grid with a far too small --stale-after, and a resume meanwhile;
- a worker process killed mid-trial, after its resume checkpoint (real training).

Every test counts kernel starts in the Diagnostics kernel-start log: a spec that completed must
never start again, and nothing may be lost. Specs use the noop kernel, paced by kernel_delay_s,
where the property needs no real training.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from db.repository import Repository
from db.session import open_database
from orchestrator.run.runner import DIAGNOSTICS_ENV
from tcp_proxy import TcpProxy
from workers.trainable import Diagnostics, KillWorker

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
NOOP_GRID = """
name: faults
fixed: {arch: tiny_resnet, method: finetune, source: scratch, dataset: digits, epochs: 1, subset_size: 100}
axes:
  seed: SEEDS
"""
DRIVER_FLAGS = ["--quiet", "--pack-size", "1", "--max-concurrent", "2", "--cpus-per-trial", "0.5"]


def _grid(tmp_path: Path, n_specs: int) -> Path:
    path = tmp_path / "faults.yaml"
    path.write_text(NOOP_GRID.replace("SEEDS", str(list(range(n_specs)))))
    return path


def _starts_log(tmp_path: Path) -> Path:
    return tmp_path / "kernel_starts.log"


def _env(tmp_path: Path, db_url: str, delay_s: float) -> dict[str, str]:
    diagnostics = Diagnostics(kernel_override="noop", kernel_delay_s=delay_s,
                              kernel_starts_log=str(_starts_log(tmp_path)))
    return {**os.environ, "RTGRID_DB": db_url, DIAGNOSTICS_ENV: diagnostics.to_json(),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _driver(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """`rtgrid ARGS…` as its own process group (the driver and the Ray instance it starts)."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    log = open(tmp_path / f"driver-{time.monotonic_ns()}.err", "w+")  # noqa: SIM115 - read after the process ends
    return subprocess.Popen([sys.executable, "-m", "cli", *args, "--artifacts", str(tmp_path / "artifacts"),
                             "--data-root", str(data), *DRIVER_FLAGS],
                            cwd=ROOT, env=env, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=log)


def _kill(driver: subprocess.Popen[str]) -> None:
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()


def _finish(driver: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str]:
    try:
        out, _ = driver.communicate(timeout=timeout)
    finally:
        if driver.poll() is None:
            _kill(driver)
    return driver.returncode, out


def _starts(tmp_path: Path) -> Counter[str]:
    log = _starts_log(tmp_path)
    if not log.exists():
        return Counter()
    return Counter(line.split("\t")[1] for line in log.read_text().splitlines() if line)


def _scalar(repo: Repository, sql: str) -> int:
    with repo.engine.connect() as connection:
        return int(connection.execute(text(sql)).scalar_one())


def _completed(repo: Repository) -> set[str]:
    with repo.engine.connect() as connection:
        return set(connection.execute(text("SELECT spec_hash FROM trials WHERE status = 'completed'")).scalars())


def _wait_until(condition: Callable[[], bool], driver: subprocess.Popen[str], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # noqa: BLE001 - the tables may not exist yet
            pass
        assert driver.poll() is None, f"the driver exited ({driver.returncode}) before {what}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _assert_each_completed_once(repo: Repository, starts: Counter[str], n_specs: int) -> None:
    assert _scalar(repo, "SELECT count(*) FROM trials WHERE status = 'completed'") == n_specs, "a spec was lost"
    assert _scalar(repo, "SELECT count(*) FROM epoch_metrics") == n_specs  # the noop kernel reports one epoch
    # No unfinished trial stays claimed (completed ones may keep a killed driver's name: harmless).
    assert _scalar(repo, "SELECT count(*) FROM trials WHERE claimed_by IS NOT NULL AND status <> 'completed'") == 0
    assert set(starts) == {h for h in _completed(repo)}


def _repo(db_url: str) -> Repository:
    return Repository(open_database(db_url, create=True))


def test_driver_killed_at_three_points_then_resume(db_url: str, tmp_path: Path) -> None:
    """SIGKILL the driver (and its Ray) after its claims are recorded, mid-grid and nearly done; each
    time `rtgrid resume` follows at once and is killed at the next point, the last one finishes.
    Every spec completes, and no spec that had completed starts again."""
    n_specs = 10
    env = _env(tmp_path, db_url, delay_s=1.0)
    repo = _repo(db_url)
    claimed = "SELECT count(*) FROM trials WHERE claimed_by IS NOT NULL"
    points: list[tuple[str, Callable[[], bool]]] = [
        ("its claims are recorded", lambda: _scalar(repo, claimed) == n_specs),
        ("mid-grid", lambda: len(_completed(repo)) >= 4),
        ("nearly done", lambda: len(_completed(repo)) >= n_specs - 2),
    ]
    command = ["submit", str(_grid(tmp_path, n_specs)), "--experiment", "killed"]
    reruns = 0  # kernel starts of specs that had completed before a kill
    try:
        done: set[str] = set()
        before: Counter[str] = Counter()
        for what, condition in points:
            driver = _driver(tmp_path, env, *command)
            _wait_until(condition, driver, what)
            _kill(driver)
            reruns += sum(_starts(tmp_path)[h] - before[h] for h in done)
            done, before = _completed(repo), _starts(tmp_path)
            command = ["resume", "killed"]  # at once: the killed driver's claims are dead, not stale
        code, out = _finish(_driver(tmp_path, env, *command))
        assert code == 0, out
        starts = _starts(tmp_path)
        reruns += sum(starts[h] - before[h] for h in done)
        assert reruns == 0, "a completed spec ran again after a resume"
        _assert_each_completed_once(repo, starts, n_specs)
        print(f"\n[{make_url(db_url).get_backend_name()}] driver SIGKILLs: 3, specs lost: 0, completed specs "
              f"re-run: {reruns}, kernel starts: {sum(starts.values())} for {n_specs} specs")
    finally:
        repo.close()
