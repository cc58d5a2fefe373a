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
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from tcp_proxy import TcpProxy

from db.repository import Repository
from db.session import open_database
from orchestrator.plan.spec import TrialSpec
from orchestrator.run.runner import DIAGNOSTICS_ENV
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


def _driver(tmp_path: Path, env: dict[str, str], *args: str, log_name: str = "driver") -> subprocess.Popen[str]:
    """`rtgrid ARGS…` as its own process group (the driver and the Ray instance it starts); its
    stderr goes to tmp_path/<log_name>.err."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    log = open(tmp_path / f"{log_name}.err", "a")  # noqa: SIM115 - the child holds it; read after it ends
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


def _wait_until(condition: Callable[[], bool], driver: subprocess.Popen[str], what: str, timeout: float = 240,
                also: subprocess.Popen[str] | None = None) -> None:
    """Poll `condition` while `driver` (or, when given, `also`) still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # noqa: BLE001 - the tables may not exist yet
            pass
        alive = driver.poll() is None or (also is not None and also.poll() is None)
        assert alive, f"the driver exited ({driver.returncode}) before {what}"
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


@pytest.mark.postgres
def test_postgres_refusing_connections_for_20s_mid_grid(pg_server, tmp_path: Path) -> None:
    """The driver reaches PostgreSQL through a loopback proxy that is stopped for 20 s mid-grid
    (open connections cut, new ones refused) and started again: the run completes, nothing lost."""
    n_specs = 14
    direct = pg_server.new_database()
    target = make_url(direct)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    proxied = target.set(port=proxy.start()).render_as_string(hide_password=False)
    env = _env(tmp_path, proxied, delay_s=1.5)
    repo = _repo(direct)  # the test watches over its own, direct connection
    try:
        driver = _driver(tmp_path, env, "submit", str(_grid(tmp_path, n_specs)), "--experiment", "outage")
        _wait_until(lambda: len(_completed(repo)) >= 3, driver, "three specs completed")
        proxy.stop()
        stopped_with = len(_completed(repo))
        time.sleep(20)
        during = len(_completed(repo))
        proxy.start()
        code, out = _finish(driver)
        err = (tmp_path / "driver.err").read_text()
        assert code == 0, (out, err[-3000:])
        assert during == stopped_with, "something was written while the database was unreachable"
        assert "database unreachable" in err and "Traceback" not in err, err[-3000:]
        starts = _starts(tmp_path)
        assert all(count == 1 for count in starts.values()), starts
        _assert_each_completed_once(repo, starts, n_specs)
        print("\n" + "\n".join(line for line in err.splitlines() if "database" in line))
        print(f"[postgresql] outage 20 s after {stopped_with} of {n_specs} specs: specs lost: 0, "
              f"duplicates: {sum(starts.values()) - n_specs}, proxy connections: {proxy.connections}")
    finally:
        proxy.stop()
        repo.close()


def test_racing_drivers_with_a_too_small_stale_after(db_url: str, tmp_path: Path) -> None:
    """Two drivers start together on one grid with --stale-after 0.5 (far below the heartbeat gap),
    and a resume comes in mid-run: no spec runs twice. A live driver on this host is never taken
    over; the resume that finds only its claims exits 1 saying who holds them."""
    n_specs = 16
    env = _env(tmp_path, db_url, delay_s=3.0)
    grid = str(_grid(tmp_path, n_specs))
    _repo(db_url).close()  # the database exists before the race (creating it is not the race)
    repo = _repo(db_url)
    racing = ["submit", grid, "--experiment", "race", "--stale-after", "0.5"]
    first = _driver(tmp_path, env, *racing, log_name="first")
    second = _driver(tmp_path, env, *racing, log_name="second")
    try:
        _wait_until(lambda: len(_starts(tmp_path)) >= 1, first, "a kernel start", also=second)
        resume = subprocess.run([sys.executable, "-m", "cli", "resume", "race", "--stale-after", "0.5",
                                 "--artifacts", str(tmp_path / "artifacts"), *DRIVER_FLAGS],
                                cwd=ROOT, env=env, text=True, capture_output=True, timeout=240)
        assert len(_completed(repo)) < n_specs, "the grid ended before the resume could find it running"
        results = [_finish(first), _finish(second)]
    finally:
        for driver in (first, second):
            if driver.poll() is None:
                _kill(driver)
    try:
        assert [code for code, _ in results] == [0, 0], results
        assert resume.returncode == 1, (resume.stdout, resume.stderr)
        assert resume.stderr.startswith("rtgrid: error: ") and len(resume.stderr.strip().splitlines()) == 1
        assert "runnable trials left unrun" in resume.stderr and "held by a live driver" in resume.stderr
        starts = _starts(tmp_path)
        assert all(count == 1 for count in starts.values()), f"specs ran twice: {starts}"
        _assert_each_completed_once(repo, starts, n_specs)
        print(f"\n[{make_url(db_url).get_backend_name()}] racing drivers (--stale-after 0.5) + a resume: "
              f"specs lost: 0, duplicates: {sum(starts.values()) - n_specs}; resume said: {resume.stderr.strip()}")
    finally:
        repo.close()


RESUMABLE = TrialSpec(kind="transfer", arch="tiny_resnet", source="scratch", dataset="digits", ood="noise-2",
                      method="retrain", subset_size=100, seed=3, epochs=4,
                      params={"input_size": 16, "batch_size": 32, "lr": 0.05, "eval_images": 100,
                              "head_init": "default"})


def test_worker_killed_mid_trial_resumes_from_its_checkpoint(db_url: str, tmp_path: Path) -> None:
    """Real training: the worker process dies (os._exit) right after it saved the resume checkpoint
    of epoch 2. The driver runs the spec again, and the new worker goes on from that checkpoint:
    epochs 1 and 2 are not trained again, 3 and 4 are, and the trial completes."""
    import ray

    from orchestrator.plan.grids import Grid
    from orchestrator.run.runner import RunOptions, start_ray
    from orchestrator.run.submit import submit

    fault = KillWorker(spec_hash=RESUMABLE.spec_hash, marker_dir=str(tmp_path / "deaths"), at_epoch=2)
    diagnostics = Diagnostics(kill_worker=fault, kernel_starts_log=str(_starts_log(tmp_path)))
    options = RunOptions(artifacts=str(tmp_path / "artifacts"), data_root=str(tmp_path), quiet=True,
                         checkpoint_interval_s=0, flush_interval_s=0, max_failures=1, diagnostics=diagnostics)
    start_ray(options)
    repo = _repo(db_url)
    try:
        result = submit(repo, Grid("resumable", "one spec", [RESUMABLE]), "resumable", options)
        assert (result.run.completed, result.run.failed) == (1, 0), result.run
        assert len(list(Path(fault.marker_dir).iterdir())) == 1, "the worker did not die"
        log = [line.split("\t") for line in _starts_log(tmp_path).read_text().splitlines()]
        assert len(log) == 2 and log[0][4] != log[1][4], "the spec did not start again in a new worker process"
        restart = float(log[1][0])
        with repo.engine.connect() as connection:
            epochs = {int(epoch): recorded for epoch, recorded in connection.execute(text(
                "SELECT epoch, recorded_at FROM epoch_metrics ORDER BY epoch"))}
        assert sorted(epochs) == [1, 2, 3, 4], "an epoch's metrics were lost"
        stamps = {epoch: (recorded if isinstance(recorded, datetime) else datetime.fromisoformat(recorded))
                  .replace(tzinfo=UTC).timestamp() for epoch, recorded in epochs.items()}
        assert stamps[1] < restart and stamps[2] < restart, "epochs before the checkpoint were trained again"
        assert stamps[3] > restart and stamps[4] > restart
        trial = repo.trial_by_hash(RESUMABLE.spec_hash)
        assert trial is not None and trial.status == "completed" and trial.test_acc is not None
    finally:
        repo.close()
        ray.shutdown()
