"""`rtgrid doctor`: is this cluster ready for a grid? One verdict per check, each with its fix.

The checks: the database (reachable, at the schema head); Ray (reachable, nodes, CPUs, GPUs, the
versions of Python / Ray / torch on every node against the driver's); the grid's datasets and
source files on the driver and on every node (the plan preflight, orchestrator/console/preflight.py,
run again in a small Ray task pinned to each node); source files' sha256 against the grid and the
source manifest; the artifacts directory writable and shared (a file written on the driver read on
every node, and one written on each node read back on the driver).
"""

from __future__ import annotations

import json
import platform
import secrets
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.console.preflight import Check, preflight
from orchestrator.plan.grids import Grid

PROBE_DIR = ".rtgrid-doctor"  # under the artifacts directory; each run's probes are removed afterwards


@dataclass(frozen=True)
class Verdict:
    check: str  # "database", "ray", "versions <node>", "dataset cifar10 @ <node>", "artifacts shared"
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{'PASS' if self.ok else 'FAIL'}  {self.check}: {self.detail}"
        return text if self.ok or not self.fix else f"{text} -- fix: {self.fix}"


# --- database -----------------------------------------------------------------------------------


def database_verdict(db_url: str | None) -> Verdict:
    from db.errors import DatabaseError, SchemaOutOfDate
    from db.session import head_revision, is_sqlite, make_engine, parse_url, resolve_url, safe_url, schema_at_head

    url = parse_url(resolve_url(db_url))
    safe = safe_url(url)
    if is_sqlite(url) and url.database and url.database != ":memory:" and not Path(url.database).exists():
        return Verdict("database", True, f"{safe} does not exist yet (the first submit creates it at "
                                         f"{head_revision()})")
    try:
        engine = make_engine(url)
    except Exception as exc:  # a bad URL or a missing driver
        return Verdict("database", False, f"{safe}: {exc}", "check --db / $RTGRID_DB")
    try:
        at_head = schema_at_head(engine, safe, _script_location())
    except SchemaOutOfDate as exc:
        return Verdict("database", False, str(exc).split(": run ")[0], f"rtgrid db upgrade --db '{safe}'")
    except DatabaseError as exc:
        return Verdict("database", False, str(exc), "start the database server, or correct --db / $RTGRID_DB "
                                                      "(host, port, user, password, database name)")
    finally:
        engine.dispose()
    if not at_head:
        return Verdict("database", True, f"{safe} is empty (the first submit creates the schema)")
    return Verdict("database", True, f"{safe} reachable, schema at head {head_revision()}")


def _script_location() -> str:
    from db.session import SCRIPT_LOCATION

    return SCRIPT_LOCATION


# --- what each node reports -------------------------------------------------------------------


def versions() -> dict[str, str]:
    """This process's Python, Ray and torch versions (what must match across the cluster)."""
    import ray

    try:
        import torch

        torch_version = str(torch.__version__).split("+")[0]
    except ImportError:
        torch_version = "missing"
    return {"python": platform.python_version(), "ray": str(ray.__version__), "torch": torch_version}


def node_report(grid: Grid | None, data_root: str | None, artifacts: str, probe: str, token: str,
                node_id: str) -> dict[str, Any]:
    """Runs ON a node (a Ray task): its versions, the grid's preflight as this node sees its disks,
    whether it reads the driver's probe file, and whether it could write its own."""
    reads = _read(Path(artifacts, PROBE_DIR, probe)) == token
    write_error = ""
    try:
        Path(artifacts, PROBE_DIR, f"{probe}.{node_id}").write_text(token)
    except OSError as exc:
        write_error = f"{type(exc).__name__}: {exc}"
    checks = preflight(grid, data_root) if grid is not None else []
    return {"versions": versions(), "host": platform.node(),
            "checks": [asdict(check) for check in checks], "reads_probe": reads, "write_error": write_error}


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


# --- the cluster ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    address: str | None = None
    data_root: str | None = None
    artifacts: str = "rtgrid_artifacts"
    db_url: str | None = None
    manifest: str | None = None
    node_timeout_s: float = 120.0


def load_grid_verdict(grid_name: str, max_specs: int) -> tuple[Grid | None, Verdict]:
    """The grid, or None with the verdict saying why it does not load (a manifest source whose file
    does not match its sha256 lands here: loading refuses it, as `rtgrid submit` would)."""
    from orchestrator.errors import UserError
    from orchestrator.plan.grids import load_grid

    try:
        grid = load_grid(grid_name, max_specs)
    except UserError as exc:
        return None, Verdict("grid", False, str(exc), "correct the grid, or the source file it names")
    return grid, Verdict("grid", True, f"{grid_name}: {len(grid.specs)} specs")


def manifest_verdicts(manifest: str | None) -> list[Verdict]:
    """Every file of the source manifest hashed again (none when there is no manifest)."""
    from orchestrator.plan.manifest import ManifestError, load, manifest_path, verify_entry

    where = manifest_path(manifest)
    try:
        entries = load(where)
    except ManifestError as exc:
        return [Verdict("source manifest", False, str(exc), "restore the file, or remove it and add the sources again")]
    verdicts = []
    for entry in entries.values():
        problem = verify_entry(entry)
        verdicts.append(Verdict(f"source {entry.name}", problem is None, problem or f"{entry.file} sha256 "
                                f"{entry.sha256[:12]}", "" if problem is None else
                                "replace the file with the one recorded (compare sizes: truncated download?)"))
    return verdicts


def run_checks(grid: Grid | None, options: Options) -> list[Verdict]:
    verdicts = [database_verdict(options.db_url)]
    verdicts += manifest_verdicts(options.manifest)
    artifacts_ok, artifacts_verdicts, probe, token = _prepare_artifacts(options.artifacts)
    verdicts += artifacts_verdicts
    if grid is not None:
        verdicts += [_preflight_verdict(check, "driver") for check in preflight(grid, options.data_root)]
        verdicts += checksum_verdicts(grid, options.data_root)
    verdicts += _cluster_verdicts(grid, options, probe if artifacts_ok else None, token)
    _remove_probes(options.artifacts, probe)
    return verdicts


def _prepare_artifacts(artifacts: str) -> tuple[bool, list[Verdict], str, str]:
    probe, token = f"probe-{secrets.token_hex(6)}", secrets.token_hex(16)
    where = Path(artifacts, PROBE_DIR)
    try:
        where.mkdir(parents=True, exist_ok=True)
        (where / probe).write_text(token)
    except OSError as exc:
        return False, [Verdict("artifacts writable", False, f"{artifacts}: {exc}",
                               "give --artifacts a directory this user can write on a volume every node mounts")
                       ], probe, token
    return True, [Verdict("artifacts writable", True, f"{artifacts} (wrote {where / probe})")], probe, token


def _remove_probes(artifacts: str, probe: str) -> None:
    for path in Path(artifacts, PROBE_DIR).glob(f"{probe}*"):
        path.unlink(missing_ok=True)


def _preflight_verdict(check: Check, where: str) -> Verdict:
    if check.ok:
        return Verdict(f"{check.what} @ {where}", True, check.detail)
    fix = ("copy it there (the same path on every node), or point --data-root / $RTGRID_DATA at the shared copy"
           if check.what.startswith("dataset") else
           "put the file under <data-root>/sources on every node (or in the torch hub cache)")
    return Verdict(f"{check.what} @ {where}", False, check.detail, fix)


def checksum_verdicts(grid: Grid, data_root: str | None) -> list[Verdict]:
    """Each source file a grid names with a checksum (a grid file's `source_checksum`) hashed on the driver."""
    from workers.trainable import sha256_file

    verdicts = []
    for (source, expected), path in sorted(grid.source_files.items()):
        check = f"checksum {source}"
        if not Path(path).is_file():
            verdicts.append(Verdict(check, False, f"{path} not found", "restore the file the grid names"))
            continue
        actual = sha256_file(path)
        if expected and actual != expected:
            verdicts.append(Verdict(check, False, f"{path} has sha256 {actual[:12]}, the grid expects "
                                                  f"{expected[:12]}", "replace the file with the one the "
                                                                      "grid was written for (a truncated "
                                                                      "or wrong download?)"))
        else:
            verdicts.append(Verdict(check, True, f"{path} sha256 {actual[:12]}"))
    return verdicts


def _cluster_verdicts(grid: Grid | None, options: Options, probe: str | None, token: str) -> list[Verdict]:
    from orchestrator.errors import UserError
    from orchestrator.run.runner import RunOptions, check_artifacts_location, start_ray

    try:
        start_ray(RunOptions(address=options.address, quiet=True))
    except UserError as exc:
        return [Verdict("ray", False, str(exc), "start the head (`ray start --head`) and pass its HOST:PORT "
                                                "as --address, or omit --address for a local instance")]
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive")]  # type: ignore[no-untyped-call]
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    gpus = resources.get("GPU", 0.0)
    verdicts = [Verdict("ray", True, f"{options.address or 'local'}: {len(nodes)} node(s), "
                                     f"{resources.get('CPU', 0.0):g} CPUs, {gpus:g} GPUs"
                                     + ("" if gpus else " (CPU only: trials run with --gpus-per-trial 0)"))]
    artifacts = check_artifacts_location(options.artifacts)
    reports = _node_reports(nodes, grid, options, artifacts, probe or "", token)
    driver = versions()
    for node, report in zip(nodes, reports, strict=True):
        label = f"{node['NodeManagerAddress']}/{node['NodeID'][:8]}"
        if isinstance(report, str):
            verdicts.append(Verdict(f"node {label}", False, report, "look at the node's raylet log; restart it"))
            continue
        verdicts.append(_versions_verdict(label, report["versions"], driver))
        verdicts += [_preflight_verdict(Check(**check), label) for check in report["checks"]]
        if probe:
            verdicts.append(_shared_verdict(label, report, artifacts, probe, node["NodeID"], token))
    return verdicts


def _node_reports(nodes: list[dict[str, Any]], grid: Grid | None, options: Options, artifacts: str,
                  probe: str, token: str) -> list[dict[str, Any] | str]:
    """node_report on every node (one task pinned to each); a line saying why where one did not answer."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(node_report)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
            .remote(grid, options.data_root, artifacts, probe, token, node["NodeID"]) for node in nodes]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=options.node_timeout_s)
    results: list[dict[str, Any] | str] = []
    for ref in refs:
        if ref not in ready:
            results.append(f"no answer within {options.node_timeout_s:g} s")
            continue
        try:
            results.append(ray.get(ref))
        except Exception as exc:  # the task failed on that node: its message is the verdict
            results.append(" ".join(str(exc).split())[:300])
    return results


def _versions_verdict(label: str, theirs: dict[str, str], driver: dict[str, str]) -> Verdict:
    differ = [f"{name} {theirs.get(name)} (driver {version})" for name, version in driver.items()
              if theirs.get(name) != version]
    shown = ", ".join(f"{name} {version}" for name, version in theirs.items())
    if differ:
        return Verdict(f"versions @ {label}", False, "; ".join(differ),
                       "run the same image (or environment) on the driver and every node")
    return Verdict(f"versions @ {label}", True, shown)


def _shared_verdict(label: str, report: dict[str, Any], artifacts: str, probe: str, node_id: str,
                    token: str) -> Verdict:
    problems = []
    if not report["reads_probe"]:
        problems.append("does not see the file the driver wrote")
    if report["write_error"]:
        problems.append(f"cannot write there ({report['write_error']})")
    elif _read(Path(artifacts, PROBE_DIR, f"{probe}.{node_id}")) != token:
        problems.append("wrote a file the driver does not see")
    if problems:
        return Verdict(f"artifacts shared @ {label}", False, f"{artifacts}: {'; '.join(problems)}",
                       "mount one shared volume (NFS, EFS, a ReadWriteMany PVC) at the same path on the "
                       "driver and every node")
    return Verdict(f"artifacts shared @ {label}", True, f"{artifacts} read and written both ways")


# --- output -----------------------------------------------------------------------------------


def render(verdicts: Iterable[Verdict], as_json: bool, echo: Callable[[str], None]) -> bool:
    """Print the verdicts (lines or one JSON document); True when every check passed."""
    verdicts = list(verdicts)
    passed = all(verdict.ok for verdict in verdicts)
    if as_json:
        echo(json.dumps({"ok": passed, "checks": [asdict(verdict) for verdict in verdicts]}, indent=2))
    else:
        for verdict in verdicts:
            echo(verdict.line())
        failed = sum(not verdict.ok for verdict in verdicts)
        echo(f"{len(verdicts) - failed} passed, {failed} failed")
    return passed
