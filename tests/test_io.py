"""workers.io: sha256_file (correct, cached per file version) and save_atomically (all or nothing)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from workers.io import append_line, file_identity, save_atomically, sha256_file


class PicklingFails:
    """An object that torch.save cannot serialise: the save fails midway."""

    def __reduce__(self) -> tuple[object, ...]:
        raise RuntimeError("cannot pickle this")


@pytest.mark.parametrize("size", [0, 1, (1 << 20) + 17])  # empty, tiny, more than one read chunk
def test_sha256_file_is_the_sha256_of_the_bytes(tmp_path: Path, size: int) -> None:
    path = tmp_path / "file.bin"
    content = os.urandom(size)
    path.write_bytes(content)
    assert sha256_file(path) == hashlib.sha256(content).hexdigest()
    assert sha256_file(str(path)) == hashlib.sha256(content).hexdigest()  # str or Path, one answer


def test_same_size_rewrite_in_the_same_second_is_a_new_digest(tmp_path: Path) -> None:
    path = tmp_path / "source.pt"
    path.write_bytes(b"a" * 4096)
    first = sha256_file(path)
    before = os.stat(path)
    # In place (same inode, same size), mtime moved by 1 µs within its second: only the
    # sub-second part of the mtime tells the versions apart.
    with open(path, "r+b") as handle:
        handle.write(b"b" * 4096)
    step = 1000 if before.st_mtime_ns % 10**9 < 10**9 - 1000 else -1000
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + step))
    in_place = os.stat(path)
    assert (in_place.st_ino, in_place.st_size, int(in_place.st_mtime)) == (
        before.st_ino, before.st_size, int(before.st_mtime))
    assert sha256_file(path) == hashlib.sha256(b"b" * 4096).hexdigest() != first


def test_atomic_replace_with_the_same_size_and_mtime_is_a_new_digest(tmp_path: Path) -> None:
    path = tmp_path / "source.pt"
    path.write_bytes(b"a" * 4096)
    assert sha256_file(path) == hashlib.sha256(b"a" * 4096).hexdigest()
    before = os.stat(path)
    # os.replace by a file of the same size and the very same mtime_ns: only the inode differs.
    other = tmp_path / "other.tmp"
    other.write_bytes(b"c" * 4096)
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(other, path)
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert after.st_ino != before.st_ino
    assert sha256_file(path) == hashlib.sha256(b"c" * 4096).hexdigest()


def test_a_file_version_is_read_once(tmp_path: Path) -> None:
    path = tmp_path / "source.pt"
    path.write_bytes(b"a" * 4096)
    identity = file_identity(path)
    assert sha256_file(path) == hashlib.sha256(b"a" * 4096).hexdigest()
    # Change the bytes but restore every part of the identity: the cached digest answers, which is
    # what makes repeated checks of a multi-GB source cheap (and why the identity must be complete).
    stat = os.stat(path)
    with open(path, "r+b") as handle:
        handle.write(b"z" * 4096)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_identity(path) == identity
    assert sha256_file(path) == hashlib.sha256(b"a" * 4096).hexdigest()


def test_save_atomically_round_trips_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "state.pt"  # parents are created
    state = {"epoch": 3, "weights": torch.arange(12.0).reshape(3, 4), "meta": {"name": "x"}}
    save_atomically(state, path)
    save_atomically(state, path)  # over an existing file too
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 3 and loaded["meta"] == {"name": "x"}
    assert torch.equal(loaded["weights"], state["weights"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.pt"]


def test_save_atomically_bytes_do_not_depend_on_the_file_name(tmp_path: Path) -> None:
    state = {"weights": torch.arange(12.0)}
    save_atomically(state, tmp_path / "a.pt")
    save_atomically(state, tmp_path / "b.pt")
    assert sha256_file(tmp_path / "a.pt") == sha256_file(tmp_path / "b.pt")


def test_a_save_that_fails_midway_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    save_atomically({"epoch": 1, "weights": torch.ones(1000)}, path)
    old = path.read_bytes()
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        save_atomically({"epoch": 2, "weights": torch.zeros(1000), "bad": PicklingFails()}, path)
    assert path.read_bytes() == old
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    missing = tmp_path / "never.pt"
    with pytest.raises(RuntimeError):
        save_atomically({"bad": PicklingFails()}, missing)
    assert not missing.exists() and [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_a_concurrent_reader_sees_the_old_file_or_the_new_one(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    versions = [{"version": i, "weights": torch.full((1 << 20,), float(i))} for i in range(4)]  # 4 MiB each
    save_atomically(versions[0], path)
    seen: list[bytes] = []
    done = threading.Event()

    def read_while_saving() -> None:
        while not done.is_set():
            seen.append(path.read_bytes())

    reader = threading.Thread(target=read_while_saving)
    reader.start()
    try:
        for version in versions[1:]:
            save_atomically(version, path)
    finally:
        done.set()
        reader.join()
    whole = set()
    for version in versions:
        save_atomically(version, tmp_path / "reference.pt")
        whole.add((tmp_path / "reference.pt").read_bytes())
    assert seen and all(content in whole for content in seen)


def test_workers_io_imports_no_torch() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    code = "import sys, workers.io; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_append_line_never_follows_a_symlink(tmp_path: Path) -> None:
    """A log the workers append to in the shared artifacts directory: another user's symlink there must not
    make rtgrid write into the file it points at."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    shared = tmp_path / "artifacts" / "logs"
    shared.mkdir(parents=True)
    (shared / "starts.log").symlink_to(victim)
    with pytest.raises(OSError):
        append_line(shared / "starts.log", "x")
    assert victim.read_text() == "precious\n"
    append_line(shared / "real.log", "one")
    append_line(shared / "real.log", "two\n")
    assert (shared / "real.log").read_text() == "one\ntwo\n"


def test_kernel_start_log_refuses_a_symlink(tmp_path: Path) -> None:
    from workers.diagnostics import log_kernel_start

    victim = tmp_path / "victim.txt"
    victim.write_text("")
    (tmp_path / "starts.log").symlink_to(victim)
    with pytest.raises(OSError):
        log_kernel_start(str(tmp_path / "starts.log"), "abc", 1, "node")
    assert victim.read_text() == ""
