"""The source-model manifest: named checkpoint files with their sha256, architecture and the clean
ImageNet top-1 the papers give, so a grid file names a source by id (`source: manifest:<name>`) and
a wrong or truncated file is refused when the grid is loaded, before anything is written.

The manifest is a JSON file: $RTGRID_SOURCES, else sources.json in the artifacts directory
($RTGRID_ARTIFACTS, else rtgrid_artifacts). A grid's `manifest:<name>` becomes the spec source
`file:<file name>` with the manifest's sha256 as its source_checksum: the same identity as a
`file:` source, so nothing after loading knows the manifest exists.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError

PREFIX = "manifest:"  # a grid file's reference to an entry, like `grid:` for a grid's own sources

# Clean ImageNet top-1 (%) of the published source models, from MadryLab/robustness's README
# (REFERENCE.md section B); filled in by `rtgrid sources add` when the entry's name is one of these.
PUBLISHED_TOP1: dict[str, float] = {
    "resnet50": 76.13,  # torchvision's natural ResNet-50
    "imagenet_l2_3_0": 57.90,
    "imagenet_linf_4": 62.42,
    "imagenet_linf_8": 47.91,
}


class ManifestError(UserError):
    """A manifest that cannot be read, an unknown entry, or a file that does not match its sha256."""


@dataclass(frozen=True)
class SourceModel:
    name: str
    file: str  # absolute path
    sha256: str
    arch: str
    top1: float | None = None  # clean ImageNet top-1 (%), where the papers give it


def manifest_path(given: str | None = None) -> Path:
    if given:
        return Path(given)
    if os.environ.get("RTGRID_SOURCES"):
        return Path(os.environ["RTGRID_SOURCES"])
    return Path(os.environ.get("RTGRID_ARTIFACTS", "rtgrid_artifacts")) / "sources.json"


def load(path: Path) -> dict[str, SourceModel]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        return {entry["name"]: SourceModel(**entry) for entry in data["sources"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ManifestError(f"source manifest {path} is unreadable: {type(exc).__name__}: {exc}") from None


def save(path: Path, entries: dict[str, SourceModel]) -> None:
    """Write the manifest atomically: another reader sees the old list or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"sources": as_rows(entries)}, indent=2) + "\n")
    os.replace(temporary, path)


def add(path: Path, name: str, file: str, arch: str, top1: float | None, *, replace: bool) -> SourceModel:
    """Hash `file` and record it as `name` (the published top-1 filled in for a known name)."""
    from orchestrator.plan.names import check_experiment_name
    from workers.trainable import catalog, sha256_file

    check_experiment_name(name, "source name")  # the experiment-name rule: printable, no spaces or colons
    try:
        catalog.check_arch(arch)
    except ValueError as exc:
        raise ManifestError(str(exc)) from None
    file_path = Path(file).expanduser().resolve()
    if not file_path.is_file():
        raise ManifestError(f"source file not found: {file_path}")
    entries = load(path)
    if name in entries and not replace:
        raise ManifestError(f"source {name!r} is already in {path} (use --replace to record a new file)")
    entry = SourceModel(name, str(file_path), sha256_file(file_path), arch,
                        top1 if top1 is not None else PUBLISHED_TOP1.get(name))
    entries[name] = entry
    save(path, entries)
    return entry


def verify_entry(entry: SourceModel) -> str | None:
    """None when the file is there with its recorded sha256; otherwise one line saying what is wrong."""
    from workers.trainable import sha256_file

    file_path = Path(entry.file)
    if not file_path.is_file():
        return f"source {entry.name!r}: {file_path} not found"
    actual = sha256_file(file_path)
    if actual != entry.sha256:
        return (f"source {entry.name!r}: {file_path} has sha256 {actual[:12]} ({file_path.stat().st_size} bytes), "
                f"the manifest records {entry.sha256[:12]} (truncated or replaced? re-download it, or "
                f"`rtgrid sources add {entry.name} FILE --replace` if the new file is intended)")
    return None


def resolve(reference: str, path: Path | None = None) -> tuple[str, str, str]:
    """(the spec's source `file:<name>`, the sha256, the file's path) for a grid's `manifest:<name>`;
    a ManifestError for an unknown name or a file that does not match."""
    where = path or manifest_path()
    name = reference.removeprefix(PREFIX)
    entries = load(where)
    if name not in entries:
        known = ", ".join(entries) or "none"
        raise ManifestError(f"source {reference!r} is not in the manifest {where} (have: {known}); "
                            f"add it with `rtgrid sources add {name} FILE --arch ARCH`")
    entry = entries[name]
    problem = verify_entry(entry)
    if problem:
        raise ManifestError(problem)
    return f"file:{Path(entry.file).name}", entry.sha256, entry.file


def as_rows(entries: dict[str, SourceModel]) -> list[dict[str, Any]]:
    return [asdict(entry) for entry in sorted(entries.values(), key=lambda e: e.name)]
