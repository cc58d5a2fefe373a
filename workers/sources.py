"""Resolve a spec's `source` to a checkpoint file on this worker, and check its checksum."""

from __future__ import annotations

import os
from pathlib import Path

from workers.catalog import SCRATCH, SOURCE_SCHEMES
from workers.errors import KernelInputError
from workers.io import sha256_file

SOURCE_SUFFIXES = (".pt", ".pth", ".ckpt")


def _candidates(directory: Path, stem: str) -> list[Path]:
    found = [directory / f"{stem}{suffix}" for suffix in SOURCE_SUFFIXES]
    found += sorted(directory.glob(f"{stem}-*.pth"))  # torchvision names: resnet50-0676ba61.pth
    return [path for path in found if path.is_file()]


def resolve_source_path(source: str, data_root: str | None, given: str | None = None) -> str | None:
    """The checkpoint file for `source`; None for a random-init ("scratch") source.

    `given` is what the driver resolved (grid-trained sources live in the artifacts store).
    Named published weights are looked up in <data_root>/sources, then the torch hub cache.
    """
    if given:
        if not Path(given).is_file():
            raise KernelInputError(f"source checkpoint {given} is not readable from this worker")
        return given
    if source == SCRATCH:
        return None
    scheme, _, name = source.partition(":")
    if scheme == "file":
        # The driver passes the path a grid file named (`given`); without one, a file source is
        # looked up by name like published weights (a path from older specs still works).
        candidates = [Path(name)] + ([Path(data_root) / "sources" / name] if data_root else [])
        for candidate in candidates:
            if candidate.is_file():
                return str(candidate)
        raise KernelInputError(f"source file {name!r} not found: expected "
                               f"{' or '.join(str(c) for c in candidates)}")
    if scheme == "spec":
        raise KernelInputError(f"source trial {name[:12]} has no checkpoint yet (run its source trial first)")
    if scheme not in SOURCE_SCHEMES:
        known = ", ".join([SCRATCH, *(f"{s}:" for s in SOURCE_SCHEMES)])
        raise KernelInputError(f"unknown source {source!r} (use {known})")
    directories = []
    if data_root:
        directories.append(Path(data_root) / "sources")
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    directories.append(hub)
    for directory in directories:
        matches = _candidates(directory, name)
        if matches:
            return str(matches[0])
    where = " or ".join(str(d / f"{name}.pt") for d in directories)
    raise KernelInputError(f"source weights {source!r} not found: expected {where}")


def verify_checksum(path: str, expected: str | None) -> str:
    """The file's sha256; a KernelInputError when `expected` is given and differs."""
    actual = sha256_file(path)
    if expected and actual != expected:
        raise KernelInputError(f"source checksum mismatch for {path}: spec has {expected[:12]}, file has {actual[:12]}")
    return actual
