"""A node lost mid-grid: a real two-node Ray cluster on loopback, a small real grid submitted through
`--address` against the real PostgreSQL, the second node's raylet killed (SIGKILL) while it trains a
spec. The grid must end with every spec completed exactly once: one trials row per spec, one epoch row
per evaluated epoch, and the kernel starts (the workers' own audit log) matching `trials.attempts`,
with the interrupted spec started again on the surviving node."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from loopback_cluster import REPO, loopback_cluster
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.postgres]

PORT = int(os.environ.get("RTGRID_TEST_NODE_LOSS_RAY_PORT", "6420"))
EPOCHS = 4
GRID = f"""
fixed:
  arch: tiny_resnet
  method: retrain
  source: scratch
  dataset: digits
  epochs: {EPOCHS}
  params: {{input_size: 16, batch_size: 16, eval_images: 200, head_init: default, eval_epochs: [1, 2, 3, 4]}}
axes:
  subset_size: [400, 800]
  seed: [0, 1, 2]
"""
SPECS = 6


def _node_ids(address: str, env: dict[str, str]) -> tuple[str, str]:
    """(head node id, the other node's id)."""
    probe = (f"import ray, json; ray.init(address='{address}', logging_level='ERROR'); "
             "print(json.dumps([[n['NodeID'], 'node:__internal_head__' in n['Resources']] "
             "for n in ray.nodes() if n['Alive']]))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=90, env=env)
    nodes = json.loads(out.stdout.strip().splitlines()[-1])
    return next(n for n, head in nodes if head), next(n for n, head in nodes if not head)


def _starts(log: Path) -> list[tuple[str, int, str]]:
    """(spec_hash, attempt, node id) per kernel start."""
    if not log.exists():
        return []
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    return [(row[1], int(row[2]), row[3]) for row in rows]


def _completed(db_url: str) -> set[str]:
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return set(conn.execute(text("SELECT spec_hash FROM trials WHERE status = 'completed'")).scalars())
    except Exception:  # the driver has not created the schema yet
        return set()
    finally:
        engine.dispose()


def _kill_raylet(node: subprocess.Popen) -> int:
    """SIGKILL the raylet of `node` (found in the process group this test started for it)."""
    found = subprocess.run(["pgrep", "-g", str(node.pid), "-x", "raylet"], capture_output=True, text=True)
    raylets = [int(pid) for pid in found.stdout.split()]
    assert len(raylets) == 1, found
    os.kill(raylets[0], signal.SIGKILL)
    return raylets[0]


def test_a_lost_node_loses_no_spec_and_doubles_none(tmp_path: Path, pg_server) -> None:
    db_url = pg_server.new_database()
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    starts_log = tmp_path / "kernel_starts.log"
    with loopback_cluster(PORT, tmp_path) as cluster:
        second = cluster.start_node("second")
        head_id, second_id = _node_ids(cluster.address, cluster.env)
        env = {**cluster.env, "RTGRID_DIAGNOSTICS": json.dumps({"kernel_starts_log": str(starts_log)})}
        with open(tmp_path / "driver.log", "w") as driver_log:
            driver = subprocess.Popen(
                [sys.executable, "-m", "cli", "submit", str(grid), "--experiment", "nodeloss", "--address",
                 cluster.address, "--db", db_url, "--artifacts", str(tmp_path / "artifacts"), "--pack-size", "1",
                 "--max-failures", "2", "--quiet"], cwd=REPO, env=env, stdout=driver_log, stderr=subprocess.STDOUT)
        try:
            # Wait until the second node trains a spec that is not done, then kill that node's raylet.
            deadline = time.time() + 300
            victim = None
            while victim is None:
                assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
                assert time.time() < deadline, "the second node never started a spec"
                running = [spec for spec, _, node in _starts(starts_log) if node == second_id]
                victim = next((spec for spec in running if spec not in _completed(db_url)), None)
                time.sleep(0.2)
            _kill_raylet(second)
            code = driver.wait(timeout=420)
        finally:
            if driver.poll() is None:
                driver.kill()
        output = (tmp_path / "driver.log").read_text()
        assert code == 0, output[-3000:]

    engine = create_engine(db_url, poolclass=NullPool)
    with engine.connect() as conn:
        trials = conn.execute(text("SELECT spec_hash, status, attempts, worker FROM trials")).all()
        epochs = dict(conn.execute(text("SELECT t.spec_hash, count(*) FROM epoch_metrics e JOIN trials t "
                                        "ON t.id = e.trial_id GROUP BY t.spec_hash")).all())
    engine.dispose()
    pg_server.drop(db_url)

    assert len(trials) == SPECS and len({row.spec_hash for row in trials}) == SPECS  # one row per spec
    assert {row.status for row in trials} == {"completed"}
    assert epochs == {row.spec_hash: EPOCHS for row in trials}  # no epoch written twice, none missing
    starts = Counter(spec for spec, _, _ in _starts(starts_log))
    assert {row.spec_hash: row.attempts for row in trials} == dict(starts)  # every kernel start counted
    assert starts[victim] >= 2  # the interrupted spec ran again ...
    victim_row = next(row for row in trials if row.spec_hash == victim)
    assert victim_row.worker == head_id  # ... and completed on the node that survived
    assert len(starts) == SPECS
