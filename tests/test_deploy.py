"""The deployment files under docker/: the sbatch script passes `bash -n` and shellcheck, the compose
file validates with docker-compose and has what a cluster needs (no secret in it), the KubeRay
manifests parse with the fields they need, and every `rtgrid` command and option they use exists."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from cli import main

DOCKER = Path(__file__).resolve().parents[1] / "docker"
SBATCH = DOCKER / "slurm" / "rtgrid.sbatch"
COMPOSE = DOCKER / "compose.yml"
KUBERAY = [DOCKER / "kuberay.yaml", DOCKER / "kuberay-rayjob.yaml"]
RTGRID_SERVICES = ("ray-head", "ray-worker")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian: apt-get install {name})")
    return path


# --- every rtgrid command line in the files names real commands and options --------------------------


def _rtgrid_invocations(text: str) -> list[list[str]]:
    """The words after each `rtgrid` in `text` (shell lines, YAML strings), up to a shell operator.
    Comments count only where they show a command (indented past `#   `), not prose ("# rtgrid on …")."""
    found = []
    lines = [line for line in text.replace("\\\n", " ").splitlines()
             if not line.lstrip().startswith("#") or re.match(r"\s*#\s{2,}", line)]
    for match in re.finditer(r"(?<![\w/.-])rtgrid ([^\n&|;>)]*)", "\n".join(lines)):
        words = shlex.split(match.group(1).replace('"', " ").replace("'", " "), comments=True)
        if words and re.fullmatch(r"[a-z][a-z-]*", words[0]):
            found.append(words)
    return found


def _check_invocation(words: list[str]) -> str:
    """The command path (`sources add`) after checking each option exists there; AssertionError if not."""
    command: click.Command = main
    path = []
    rest = list(words)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        assert name in command.commands, f"`rtgrid {' '.join(words)}`: no command {name!r} under {path or 'rtgrid'}"
        command = command.commands[name]
        path.append(name)
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for word in rest:
        if word.startswith("--"):
            option = word.split("=", 1)[0]
            assert option in known, f"`rtgrid {' '.join(words)}`: {option} is not an option of {' '.join(path)}"
    return " ".join(path)


@pytest.mark.parametrize("path", [SBATCH, COMPOSE, *KUBERAY, DOCKER / "Dockerfile"], ids=lambda p: p.name)
def test_rtgrid_commands_in_deployment_files_exist(path: Path) -> None:
    commands = {_check_invocation(words) for words in _rtgrid_invocations(path.read_text())}
    if path in (SBATCH, KUBERAY[1]):
        assert {"doctor", "submit"} <= commands, commands


def test_the_invocation_check_can_fail() -> None:
    with pytest.raises(AssertionError, match="--no-such-option"):
        _check_invocation(["submit", "utrera2021", "--no-such-option", "1"])
    with pytest.raises(AssertionError, match="no command 'launch'"):
        _check_invocation(["launch"])


# --- SLURM ---------------------------------------------------------------------------------------


def test_sbatch_script_parses_and_passes_shellcheck() -> None:
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    out = subprocess.run([_tool("shellcheck"), "--severity=info", str(SBATCH)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_sbatch_script_requeues_and_resumes() -> None:
    text = SBATCH.read_text()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", text, flags=re.M))
    assert "requeue" in directives and directives["signal"].startswith("B:USR1@")
    assert directives["ntasks-per-node"] == "1" and "gpus-per-node" in directives  # one GPU worker per node
    assert re.search(r"trap requeue USR1", text) and "scontrol requeue" in text
    assert re.search(r'SLURM_RESTART_COUNT.*\n\s+rtgrid resume', text)
    assert "ray start --head" in text and re.search(r"srun .*\n\s+ray start --block --address", text)


# --- compose -------------------------------------------------------------------------------------


def _compose_config() -> dict[str, Any]:
    """The compose file as docker-compose resolves it, with the example env file."""
    out = subprocess.run([_tool("docker-compose"), "--env-file", str(DOCKER / ".env.example"), "-f", str(COMPOSE),
                          "config"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return dict(yaml.safe_load(out.stdout))


def test_compose_file_validates_with_what_a_cluster_needs() -> None:
    config = _compose_config()
    services = config["services"]
    assert set(services) == {"postgres", *RTGRID_SERVICES}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    gpus = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in device["capabilities"] for device in gpus)
    for name in RTGRID_SERVICES:
        mounts = {volume["target"]: volume for volume in services[name]["volumes"]}
        assert mounts["/data"]["read_only"] is True, f"{name}: data must be read-only"
        assert mounts["/artifacts"]["type"] == "volume" and mounts["/artifacts"]["source"] == "artifacts"
        assert not mounts["/artifacts"].get("read_only")
        assert services[name]["environment"]["RTGRID_ARTIFACTS"] == "/artifacts"
    assert services["ray-head"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "artifacts" in config["volumes"]


def test_compose_file_holds_no_secret(tmp_path: Path) -> None:
    text = COMPOSE.read_text()
    assert "PASSWORD:-" not in text  # no default password
    passwords = re.findall(r"^\s*\w*PASSWORD: *(\S.*)$", text, flags=re.M)
    assert passwords and all(value.strip('"').startswith("${RTGRID_DB_PASSWORD:?") for value in passwords)
    assert re.search(r"rtgrid:\$\{RTGRID_DB_PASSWORD:\?", text)  # the URL takes it from the environment
    empty = tmp_path / "empty.env"
    empty.write_text("")
    environment = {k: v for k, v in os.environ.items() if k != "RTGRID_DB_PASSWORD"}
    out = subprocess.run([_tool("docker-compose"), "-f", str(COMPOSE), "--env-file", str(empty), "config"],
                         capture_output=True, text=True, env=environment)
    assert out.returncode != 0 and "RTGRID_DB_PASSWORD" in out.stderr  # refuses to start without one
    ignored = subprocess.run(["git", "check-ignore", "-q", str(DOCKER / ".env")], cwd=DOCKER)
    assert ignored.returncode == 0, "docker/.env (the password) must be git-ignored"
    assert "RTGRID_DB_PASSWORD=" in (DOCKER / ".env.example").read_text()


# --- KubeRay -------------------------------------------------------------------------------------


def _containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod_template["spec"]["containers"])


def _db_from_secret(container: dict[str, Any]) -> bool:
    return any(env.get("name") == "RTGRID_DB" and "secretKeyRef" in env.get("valueFrom", {})
               for env in container.get("env", []))


def _mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {mount["mountPath"]: mount for mount in container["volumeMounts"]}


def _check_cluster_spec(spec: dict[str, Any]) -> None:
    head = _containers(spec["headGroupSpec"]["template"])[0]
    assert _db_from_secret(head), "the driver (head) reads RTGRID_DB from a Secret"
    assert _mounts(head)["/data"]["readOnly"] is True and "/artifacts" in _mounts(head)
    for group in spec["workerGroupSpecs"]:
        worker = _containers(group["template"])[0]
        assert "nvidia.com/gpu" in worker["resources"]["limits"]
        assert not _db_from_secret(worker) and "RTGRID_DB" not in str(worker.get("env"))
        assert _mounts(worker)["/data"]["readOnly"] is True and "/artifacts" in _mounts(worker)
        claims = {volume["name"]: volume["persistentVolumeClaim"]["claimName"]
                  for volume in group["template"]["spec"]["volumes"]}
        head_claims = {volume["name"]: volume["persistentVolumeClaim"]["claimName"]
                       for volume in spec["headGroupSpec"]["template"]["spec"]["volumes"]}
        assert claims["artifacts"] == head_claims["artifacts"]  # one shared volume


def test_kuberay_rayjob_submits_a_grid_with_the_database_from_a_secret() -> None:
    documents = list(yaml.safe_load_all(KUBERAY[1].read_text()))
    assert [doc["kind"] for doc in documents] == ["RayJob"]
    job = documents[0]
    assert job["apiVersion"] == "ray.io/v1"
    assert "rtgrid submit" in job["spec"]["entrypoint"] and "--address auto" in job["spec"]["entrypoint"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    _check_cluster_spec(job["spec"]["rayClusterSpec"])


def test_kuberay_raycluster_parses() -> None:
    cluster = yaml.safe_load(KUBERAY[0].read_text())
    assert cluster["kind"] == "RayCluster"
    _check_cluster_spec(cluster["spec"])


def test_sbatch_script_embedded_python_compiles() -> None:
    snippets = re.findall(r"<<'PY'\n(.*?)\nPY\n", SBATCH.read_text(), flags=re.S)
    assert snippets
    for snippet in snippets:
        compile(snippet, str(SBATCH), "exec")
