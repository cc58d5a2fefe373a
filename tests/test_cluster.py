"""A real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`): a
driver connects with `--address HOST:PORT` (the driver writes SQLite) and with Ray Client
`--address ray://…` (Tune's loop runs on the head and writes PostgreSQL); the trials run on both
nodes. Only the processes these tests started are stopped (each `ray start --block` runs in its
own session and is killed as a group)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from loopback_cluster import stop
from sqlalchemy import create_engine, text

pytestmark = [pytest.mark.ray, pytest.mark.slow]

PORT = int(os.environ.get("RTGRID_TEST_RAY_PORT", "6390"))  # Redis holds Ray's default 6379 here
CLIENT_PORT = int(os.environ.get("RTGRID_TEST_RAY_CLIENT_PORT", "6392"))
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))

GRID = """
fixed:
  arch: tiny_resnet
  method: retrain
  source: scratch
  dataset: digits
  epochs: 2
  params: {input_size: 16, batch_size: 32, eval_images: 100, head_init: default}
axes:
  subset_size: [50, 100, 200]
  seed: [0, 1, 2, 3]
"""


# Both nodes listen on 127.0.0.2: still loopback, but Ray does not rewrite it to the host's
# outward IP as it does "127.0.0.1". They share one token: Ray clusters authenticate clients.
NODE_IP = "127.0.0.2"
# The head gives a Ray Client's server 30 s to start by default: too short on 2 busy cores.
LOOPBACK = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "180"}


RAY_DIRS: list[str] = []  # the running cluster's temp dir: its logs explain a failed start


def _ray_logs(pattern: str) -> str:
    """The tails of the cluster's log files matching pattern (for an assertion message)."""
    tails = []
    for ray_dir in RAY_DIRS:
        for log in sorted(Path(ray_dir).glob(f"session_*/logs/{pattern}")):
            tails.append(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}")
    return "\n".join(tails)


def _start(args: list[str], tmp_path: Path, name: str) -> subprocess.Popen:
    log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([RAY, "start", "--block", *args], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=REPO, env=LOOPBACK)


def _nodes_alive(address: str) -> int:
    probe = (f"import ray; ray.init(address='{address}', logging_level='ERROR'); "
             "print(sum(1 for n in ray.nodes() if n['Alive']))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=LOOPBACK)
    lines = out.stdout.strip().splitlines()
    return int(lines[-1]) if lines and lines[-1].isdigit() else 0


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("cluster")
    address = f"{NODE_IP}:{PORT}"
    ray_dir = tempfile.mkdtemp(prefix="rtg-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    RAY_DIRS.append(ray_dir)
    head = _start(["--head", f"--port={PORT}", f"--node-ip-address={NODE_IP}", "--num-cpus=1",
                   f"--ray-client-server-port={CLIENT_PORT}", "--include-dashboard=false",
                   f"--temp-dir={ray_dir}"], tmp_path, "head")
    worker = None
    try:
        deadline = time.time() + 90
        while _nodes_alive(address) < 1:
            assert head.poll() is None, (tmp_path / "head.log").read_text()
            assert time.time() < deadline, "Ray head did not start"
            time.sleep(2)
        worker = _start([f"--address={address}", f"--node-ip-address={NODE_IP}", "--num-cpus=1"], tmp_path, "worker")
        while _nodes_alive(address) < 2:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.time() < deadline, "second Ray node did not join"
            time.sleep(2)
        yield address
    finally:
        if worker is not None:
            stop(worker)
        stop(head)
        shutil.rmtree(ray_dir, ignore_errors=True)


def _submit(address: str, db_url: str, tmp_path: Path, grid_text: str = GRID) -> subprocess.CompletedProcess:
    grid = tmp_path / "grid.yaml"
    grid.write_text(grid_text)
    return subprocess.run(
        [sys.executable, "-m", "cli", "submit", str(grid), "--experiment", "cluster", "--address", address,
         "--db", db_url, "--artifacts", str(tmp_path / "artifacts"), "--pack-size", "1", "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=420, env=LOOPBACK,
    )


def _statuses_and_workers(db_url: str) -> tuple[dict[str, int], dict[str, int]]:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        statuses = dict(conn.execute(text("SELECT status, count(*) FROM trials GROUP BY status")).all())
        workers = dict(conn.execute(text("SELECT worker, count(*) FROM trials GROUP BY worker")).all())
    engine.dispose()
    return statuses, workers


def test_driver_with_address_runs_trials_on_both_nodes(two_node_cluster: str, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'cluster.sqlite'}"
    result = _submit(two_node_cluster, db_url, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    statuses, workers = _statuses_and_workers(db_url)
    assert statuses == {"completed": 12}
    assert len(workers) == 2, f"trials ran on {workers}"


@pytest.mark.postgres
def test_ray_client_address_records_from_the_head(two_node_cluster: str, tmp_path: Path, pg_server) -> None:
    """`--address ray://…`: Tune's loop (and the recorder) run on the head node, so the database must
    be one the head reaches; SQLite is refused with one line, PostgreSQL records every trial."""
    client = f"ray://{NODE_IP}:{CLIENT_PORT}"
    refused = _submit(client, f"sqlite:///{tmp_path / 'x.sqlite'}", tmp_path)
    assert refused.returncode == 2 and "PostgreSQL" in refused.stderr and len(refused.stderr.splitlines()) == 1
    db_url = pg_server.new_database()
    grid = GRID.replace("subset_size: [50, 100, 200]", "subset_size: [60, 120]")
    result = _submit(client, db_url, tmp_path, grid)
    assert result.returncode == 0, result.stderr[-3000:] + _ray_logs("ray_client_server*")
    statuses, workers = _statuses_and_workers(db_url)
    assert statuses == {"completed": 8}
    assert len(workers) == 2, f"trials ran on {workers}"
