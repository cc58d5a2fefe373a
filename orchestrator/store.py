"""Open the results database for a command: writers create it at head, readers never do."""

from __future__ import annotations

from db.repository import Repository
from db.session import open_database, resolve_url

# Repositories opened by this process's commands, closed when the command ends so that SQLite
# checkpoints its WAL at a known moment rather than whenever the garbage collector runs.
_OPEN: list[Repository] = []


def open_repository(db_url: str | None, *, write: bool) -> Repository:
    repo = Repository(open_database(resolve_url(db_url), create=write))
    _OPEN.append(repo)
    return repo


def close_all() -> None:
    while _OPEN:
        _OPEN.pop().close()
