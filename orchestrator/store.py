"""Open the results database for a command: writers create it at head, readers never do."""

from __future__ import annotations

from db.repository import Repository
from db.session import open_database, resolve_url


def open_repository(db_url: str | None, *, write: bool) -> Repository:
    return Repository(open_database(resolve_url(db_url), create=write))
