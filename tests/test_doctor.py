"""`rtgrid doctor` and the source manifest, on real parts.

The database verdicts run on a real SQLite file and the real PostgreSQL (at head, one revision
behind, unreachable). The cluster verdicts run on a real two-node Ray cluster on loopback (ports
6410/6412, stopped by process group): the second node's raylet runs in its own mount namespace
where one data root and one artifacts directory are covered by an empty tmpfs, so that node, and
only that node, lacks a dataset and does not share the artifacts directory, as a node with a
missing NFS mount would.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import error_line, run_cli
from loopback_cluster import REPO, can_unshare, loopback_cluster

from db.session import head_revision, open_database, upgrade
from orchestrator.console.doctor import database_verdict, load_grid_verdict
from orchestrator.plan.manifest import PUBLISHED_TOP1, load

PORT = int(os.environ.get("RTGRID_TEST_DOCTOR_RAY_PORT", "6410"))  # not test_cluster's 6390/6392

GRID = """
fixed:
  arch: tiny_resnet
  method: retrain
  source: scratch
  dataset: cifar10
  epochs: 1
  params: {input_size: 16, batch_size: 32, eval_images: 100, head_init: default}
axes:
  seed: [0, 1]
"""

BEHIND_HEAD = "0004"  # the revision before head (0004er)


# --- the database ---------------------------------------------------------------------------


def test_database_at_head_passes(db_url: str) -> None:
    open_database(db_url, create=True).dispose()
    verdict = database_verdict(db_url)
    assert verdict.ok, verdict
    assert head_revision() in verdict.detail


def test_database_behind_head_fails_with_the_upgrade_command(db_url: str) -> None:
    upgrade(db_url, BEHIND_HEAD)
    verdict = database_verdict(db_url)
    assert not verdict.ok
    assert BEHIND_HEAD in verdict.detail and head_revision() in verdict.detail
    assert verdict.fix.startswith("rtgrid db upgrade --db ")


@pytest.mark.postgres
def test_unreachable_postgres_fails(pg_server: object) -> None:
    verdict = database_verdict("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=3")
    assert not verdict.ok
    assert "cannot open database" in verdict.detail and "start the database server" in verdict.fix


def test_unopenable_sqlite_fails(tmp_path: Path) -> None:
    (tmp_path / "a-directory.sqlite").mkdir()  # a path that exists and is no database file
    verdict = database_verdict(f"sqlite:///{tmp_path / 'a-directory.sqlite'}")
    assert not verdict.ok, verdict


# --- the source manifest ------------------------------------------------------------------


def _checkpoint(path: Path, size: int = 4096) -> Path:
    path.write_bytes(secrets.token_bytes(size))
    return path


def _manifest_grid(tmp_path: Path, name: str) -> Path:
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID.replace("dataset: cifar10", "dataset: digits")
                    .replace("source: scratch", f"source: manifest:{name}").replace("method: retrain",
                                                                                   "method: finetune"))
    return grid


def test_sources_add_list_verify(tmp_path: Path) -> None:
    manifest = tmp_path / "sources.json"
    weights = _checkpoint(tmp_path / "l2.pt")
    run_cli("sources", "add", "imagenet_l2_3_0", str(weights), "--arch", "resnet50", "--manifest", str(manifest))
    entry = load(manifest)["imagenet_l2_3_0"]
    assert entry.top1 == PUBLISHED_TOP1["imagenet_l2_3_0"] and entry.arch == "resnet50"
    listed = json.loads(run_cli("sources", "list", "--json", "--manifest", str(manifest)).stdout)
    assert [row["name"] for row in listed] == ["imagenet_l2_3_0"]
    verified = run_cli("sources", "verify", "--manifest", str(manifest)).stdout
    assert verified.strip().endswith("1 of 1 source files match their sha256")
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated download
    out = run_cli("sources", "verify", "--manifest", str(manifest), expect=1).stdout
    assert "FAIL  source 'imagenet_l2_3_0'" in out and "1000 bytes" in out
    # a second add under the same name needs --replace
    error_line(run_cli("sources", "add", "imagenet_l2_3_0", str(weights), "--arch", "resnet50",
                       "--manifest", str(manifest), expect=2))


def test_grid_names_a_manifest_source_and_a_wrong_file_is_refused_before_the_database(tmp_path: Path) -> None:
    manifest = tmp_path / "sources.json"
    weights = _checkpoint(tmp_path / "mine.pt")
    run_cli("sources", "add", "mine", str(weights), "--arch", "tiny_resnet", "--manifest", str(manifest))
    grid = _manifest_grid(tmp_path, "mine")
    env = {"RTGRID_SOURCES": str(manifest)}
    shown = json.loads(run_cli("grid", "show", str(grid), "--format", "json", env=env).stdout)
    assert "file:mine.pt" in json.dumps(shown)
    weights.write_bytes(secrets.token_bytes(4096))  # same size, other content
    db = tmp_path / "rtgrid.sqlite"
    line = error_line(run_cli("submit", str(grid), "--db", f"sqlite:///{db}", "--dry-run", env=env, expect=2))
    assert "source 'mine'" in line and "the manifest records" in line
    assert not db.exists()  # refused before anything was written


def test_doctor_reports_a_grid_whose_manifest_file_differs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = tmp_path / "sources.json"
    weights = _checkpoint(tmp_path / "mine.pt")
    run_cli("sources", "add", "mine", str(weights), "--arch", "tiny_resnet", "--manifest", str(manifest))
    monkeypatch.setenv("RTGRID_SOURCES", str(manifest))
    grid = _manifest_grid(tmp_path, "mine")
    loaded, verdict = load_grid_verdict(str(grid), 1000)
    assert loaded is not None and verdict.ok
    weights.write_bytes(b"")  # an empty (failed) download
    loaded, verdict = load_grid_verdict(str(grid), 1000)
    assert loaded is None and not verdict.ok and "0 bytes" in verdict.detail and verdict.fix


def test_unknown_manifest_source_is_one_line(tmp_path: Path) -> None:
    line = error_line(run_cli("grid", "show", str(_manifest_grid(tmp_path, "nope")),
                              env={"RTGRID_SOURCES": str(tmp_path / "none.json")}, expect=2))
    assert "'manifest:nope' is not in the manifest" in line


# --- a real two-node cluster --------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """(address, env, dirs): a head, and a second node that sees `data_hidden` and `art_hidden` empty."""
    if not can_unshare():
        pytest.skip("needs `unshare -m` (a private mount namespace) to give one node different disks")
    base = tmp_path_factory.mktemp("doctor")
    dirs = {name: base / name for name in ("data_shared", "data_hidden", "art_shared", "art_hidden")}
    for name, path in dirs.items():
        path.mkdir()
        if name.startswith("data"):
            (path / "cifar-10-batches-py").mkdir()  # where cifar10 must lie under a data root
    with loopback_cluster(PORT, base) as running:
        # The second raylet (and every worker it starts) sees an empty tmpfs over these two directories.
        running.start_node("node", f"mount -t tmpfs tmpfs {dirs['data_hidden']} && "
                                   f"mount -t tmpfs tmpfs {dirs['art_hidden']} && ")
        yield running.address, running.env, dirs


def _doctor(address: str, env: dict[str, str], *args: str) -> tuple[int, dict]:
    out = subprocess.run([sys.executable, "-m", "cli", "doctor", "--address", address, "--json", *args],
                         capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert out.stdout.strip(), out.stderr
    return out.returncode, json.loads(out.stdout)


def _by_check(report: dict) -> dict[str, dict]:
    return {row["check"]: row for row in report["checks"]}


@pytest.mark.ray
@pytest.mark.slow
def test_doctor_green_on_a_healthy_cluster(cluster, tmp_path: Path, pg_server) -> None:
    address, env, dirs = cluster
    db_url = pg_server.new_database()
    open_database(db_url, create=True).dispose()
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    code, report = _doctor(address, env, "--grid", str(grid), "--db", db_url, "--data-root",
                           str(dirs["data_shared"]), "--artifacts", str(dirs["art_shared"]),
                           "--manifest", str(tmp_path / "none.json"))
    assert code == 0 and report["ok"], report
    checks = _by_check(report)
    nodes = {check.split(" @ ")[1] for check in checks if check.startswith("versions @ ")}
    assert len(nodes) == 2
    for node in nodes:  # every node ran the preflight and the artifacts probe
        assert checks[f"dataset cifar10 @ {node}"]["ok"] and checks[f"artifacts shared @ {node}"]["ok"]
    assert checks["database"]["ok"] and "2 node(s)" in checks["ray"]["detail"]
    pg_server.drop(db_url)


@pytest.mark.ray
@pytest.mark.slow
def test_doctor_finds_what_one_node_lacks(cluster, tmp_path: Path) -> None:
    address, env, dirs = cluster
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    manifest = tmp_path / "sources.json"
    weights = _checkpoint(tmp_path / "w.pt")
    run_cli("sources", "add", "w", str(weights), "--arch", "resnet50", "--manifest", str(manifest))
    weights.write_bytes(weights.read_bytes()[:100])  # truncated after it was recorded
    db = tmp_path / "behind.sqlite"
    upgrade(f"sqlite:///{db}", BEHIND_HEAD)
    code, report = _doctor(address, env, "--grid", str(grid), "--db", f"sqlite:///{db}",
                           "--data-root", str(dirs["data_hidden"]), "--artifacts", str(dirs["art_hidden"]),
                           "--manifest", str(manifest))
    assert code == 1 and not report["ok"]
    checks = _by_check(report)
    failed = {name for name, row in checks.items() if not row["ok"]}
    nodes = {check.split(" @ ")[1] for check in checks if check.startswith("versions @ ")}
    masked = [node for node in nodes if f"dataset cifar10 @ {node}" in failed]
    assert len(masked) == 1, failed  # the dataset is missing on one node only
    healthy = (nodes - set(masked)).pop()
    assert checks["dataset cifar10 @ driver"]["ok"] and checks[f"dataset cifar10 @ {healthy}"]["ok"]
    assert failed == {"database", "source w", f"dataset cifar10 @ {masked[0]}", f"artifacts shared @ {masked[0]}"}
    assert "does not see the file the driver wrote" in checks[f"artifacts shared @ {masked[0]}"]["detail"]
    assert "has sha256" in checks["source w"]["detail"] and "100 bytes" in checks["source w"]["detail"]
    assert checks["database"]["fix"].startswith("rtgrid db upgrade")
    assert all(row["fix"] for row in checks.values() if not row["ok"])  # every failure says what to do
