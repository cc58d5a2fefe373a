"""A real Ray cluster of several nodes on this machine, for tests: `ray start --block` per node, each in
its own session, stopped by its process group only (never `ray stop`, which would end other users' Ray).

Nodes listen on 127.0.0.2 (loopback that Ray does not rewrite to the host's outward IP) and share one
auth token. A node may run under a prefix (e.g. `unshare -m … sh -c`) to give it its own view of disks.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
NODE_IP = "127.0.0.2"


@dataclass
class LoopbackCluster:
    address: str
    env: dict[str, str]
    log_dir: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    def start_node(self, name: str, shell_prefix: str = "") -> subprocess.Popen:
        """One more node joined to the head; `shell_prefix` runs before `exec ray start` in `sh -c`."""
        command = f"{shell_prefix}exec {RAY} start --block --address={self.address} " \
                  f"--node-ip-address={NODE_IP} --num-cpus=1"
        wrapper = ["unshare", "-m", "--propagation", "private"] if shell_prefix.startswith("mount ") else []
        process = _popen([*wrapper, "sh", "-c", command], self.log_dir / f"{name}.log", self.env)
        self.processes.append(process)
        self.wait_for_nodes(len(self.processes), process, name)
        return process

    def wait_for_nodes(self, count: int, process: subprocess.Popen, name: str, timeout_s: float = 120) -> None:
        deadline = time.time() + timeout_s
        while alive_nodes(self.address, self.env) < count:
            log = (self.log_dir / f"{name}.log").read_text(errors="replace")
            assert process.poll() is None and time.time() < deadline, f"{name} did not join:\n{log[-3000:]}"
            time.sleep(2)


def _popen(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log_path, "w") as log:  # the child keeps its own descriptor
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
                                env=env)


def alive_nodes(address: str, env: dict[str, str]) -> int:
    probe = (f"import ray; ray.init(address='{address}', logging_level='ERROR'); "
             "print(sum(1 for n in ray.nodes() if n['Alive']))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=90, env=env)
    lines = out.stdout.strip().splitlines()
    return int(lines[-1]) if lines and lines[-1].isdigit() else 0


def stop(process: subprocess.Popen) -> None:
    """End one node: its process group (the `ray start` and every Ray process it started)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=20)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def loopback_cluster(port: int, log_dir: Path) -> Iterator[LoopbackCluster]:
    """A head node (1 CPU) on `port` (its Ray Client server on port + 2); add nodes with start_node."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    ray_dir = tempfile.mkdtemp(prefix="rtg-lb-", dir="/tmp")  # Ray's socket paths must fit 107 bytes
    cluster = LoopbackCluster(f"{NODE_IP}:{port}", env, log_dir)
    head = _popen([RAY, "start", "--block", "--head", f"--port={port}", f"--ray-client-server-port={port + 2}",
                   f"--node-ip-address={NODE_IP}", "--num-cpus=1", "--include-dashboard=false",
                   f"--temp-dir={ray_dir}"], log_dir / "head.log", env)
    cluster.processes.append(head)
    try:
        cluster.wait_for_nodes(1, head, "head")
        yield cluster
    finally:
        for process in reversed(cluster.processes):
            stop(process)
        shutil.rmtree(ray_dir, ignore_errors=True)


def can_unshare() -> bool:
    """Whether this user may make a private mount namespace (root, or unprivileged user namespaces)."""
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0
