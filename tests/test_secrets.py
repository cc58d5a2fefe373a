"""The database password never lands in a file, a log, the output or a column under `ray://`.

A real Ray head with a Ray Client server (started here by PID, on ports 6394/6396 and its own
temp dir) runs Tune's loop, which opens the database itself. The driver's URL carries a password
(the test server trusts loopback, so any password connects). After a real run every file under
the artifacts and the head's temp dir, the driver's output, the crash-log dir and every column of
every table are searched for it.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from db.session import RTGRID_TABLES
from orchestrator.run.runner import DIAGNOSTICS_ENV
from orchestrator.run.secrets import remove_secret, with_password, without_password, write_secret
from workers.trainable import Diagnostics

ROOT = Path(__file__).resolve().parents[1]
# Ray 2.60 turns token auth on for `ray start` once any local ray.init has written ~/.ray/auth_token,
# and its Ray Client then times out without sending the token: this private head runs without it.
NO_AUTH = {"RAY_AUTH_MODE": "disabled"}
GCS_PORT, CLIENT_PORT = 6394, 6396
GRID = """
name: secret
fixed: {arch: tiny_resnet, method: finetune, source: scratch, dataset: digits, epochs: 1, subset_size: 100}
axes:
  seed: [0, 1, 2, 3]
"""


def test_the_secret_file_is_the_users_alone(tmp_path: Path) -> None:
    public, password = without_password(make_url("postgresql+psycopg://rt:s3cr%40t@db.example:5432/rtgrid"))
    assert (public, password) == ("postgresql+psycopg://rt@db.example:5432/rtgrid", "s3cr@t")
    path = write_secret(str(tmp_path), password)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(Path(path).parent).st_mode) == 0o700
    assert make_url(with_password(public, path)).password == "s3cr@t"
    remove_secret(path)
    assert not Path(path).exists()


def _files_holding(root: Path, secret: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if secret in path.read_bytes():
                    found.append(str(path))
            except OSError:  # a socket or a file gone meanwhile
                continue
    return found


def _wait_for_port(port: int, head: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert head.poll() is None, "the Ray head exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the Ray head did not listen on {port}")


@pytest.fixture()
def ray_head(tmp_path: Path):
    """A Ray head with a Ray Client server, in its own process group, stopped by its PID."""
    for port in (GCS_PORT, CLIENT_PORT):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"port {port} is taken")
    temp_dir = Path(f"/tmp/rtg-{uuid.uuid4().hex[:8]}")  # short: Ray's socket paths have a length limit
    env = {**os.environ, **NO_AUTH, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port", str(GCS_PORT),
         "--ray-client-server-port", str(CLIENT_PORT), "--num-cpus", "2", "--include-dashboard", "false",
         "--temp-dir", str(temp_dir), "--node-ip-address", "127.0.0.1"],
        env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(CLIENT_PORT, head)
        yield temp_dir
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        try:
            os.killpg(head.pid, signal.SIGKILL)  # anything of the group that outlived `ray start`
        except ProcessLookupError:
            pass
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.postgres
def test_no_password_anywhere_after_a_ray_client_run(pg_server, ray_head: Path, tmp_path: Path) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    url = make_url(pg_server.new_database()).set(password=password).render_as_string(hide_password=False)
    grid = tmp_path / "secret.yaml"
    grid.write_text(GRID)
    artifacts, logs = tmp_path / "artifacts", tmp_path / "logs"
    diagnostics = Diagnostics(kernel_override="noop", kernel_starts_log=str(artifacts / "starts.log"))
    env = {**os.environ, **NO_AUTH, "RTGRID_LOG_DIR": str(logs), DIAGNOSTICS_ENV: diagnostics.to_json(),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "cli", "-v", "submit", str(grid), "--db", url, "--address",
         f"ray://127.0.0.1:{CLIENT_PORT}", "--artifacts", str(artifacts), "--pack-size", "1",
         "--cpus-per-trial", "0.5", "--worker-logs"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    assert "ran 4 trials" in done.stdout and "4 completed" in done.stdout, done.stdout
    assert len((artifacts / "starts.log").read_text().splitlines()) == 4

    secret = password.encode()
    assert secret not in done.stdout.encode() and secret not in done.stderr.encode()
    assert list((artifacts / "ray_results").rglob("*")), "Tune wrote no experiment state to search"
    assert _files_holding(artifacts, secret) == []
    assert _files_holding(ray_head, secret) == []
    assert not logs.exists() or _files_holding(logs, secret) == []
    assert not list((artifacts / ".secrets").iterdir()), "the run's secret file outlived it"
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            for table in RTGRID_TABLES:
                for row in connection.execute(text(f"SELECT * FROM {table}")):
                    assert password not in repr(tuple(row)), f"the password is in a row of {table}"
    finally:
        engine.dispose()
