"""File identity and atomic writes: the one sha256 of a file and the one way to save a torch object.

Torch-free at import (the orchestrator reaches sha256_file through workers.trainable).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

__all__ = ["SHA256_CACHE_SIZE", "append_line", "file_identity", "save_atomically", "sha256_file"]

SHA256_CACHE_SIZE = 256
# (resolved path, size, st_mtime_ns, st_ino) -> hex digest. Nanoseconds and the inode, not a float
# mtime: an atomic rewrite (os.replace) of the same size within one coarse mtime tick is a new file.
_sha256_cache: OrderedDict[tuple[str, int, int, int], str] = OrderedDict()
_sha256_lock = threading.Lock()


def file_identity(path: str | os.PathLike[str]) -> tuple[str, int, int, int]:
    """(resolved path, size, st_mtime_ns, st_ino): changes whenever the file's content may have."""
    stat = os.stat(path)
    return str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of a file's bytes; each version of a file is read once per process."""
    key = file_identity(path)
    with _sha256_lock:
        cached = _sha256_cache.get(key)
        if cached is not None:
            _sha256_cache.move_to_end(key)
            return cached
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    hexdigest = digest.hexdigest()
    if file_identity(path) == key:  # a file replaced or rewritten while it was read is not cached
        with _sha256_lock:
            _sha256_cache[key] = hexdigest
            while len(_sha256_cache) > SHA256_CACHE_SIZE:
                _sha256_cache.popitem(last=False)
    return hexdigest


def save_atomically(obj: Any, path: str | os.PathLike[str]) -> None:
    """torch.save `obj` to `path` (parents created): readers see the old file or the new one, never a part.

    torch.save goes to an open handle, not a path: torch names the zip's inner folder after a path,
    so saving to a random temporary name would make identical objects differ in bytes (and sha256).
    """
    import torch

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())  # the bytes are on disk before the name points at them
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append one line to a log in the shared artifacts directory, never through a symlink: another user of
    the shared volume must not be able to point it at a file of ours (O_NOFOLLOW: ELOOP instead)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(target, flags, 0o644)
    with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
        handle.write(line if line.endswith("\n") else line + "\n")
