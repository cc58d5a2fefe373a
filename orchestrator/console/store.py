"""Open the results database for a command: writers create it at head, readers never do."""

from __future__ import annotations

from db.readonly import open_readonly
from db.repository import Repository
from db.session import is_sqlite, open_database, resolve_url
from db.timeouts import limit_engine, read_time_limit

__all__ = ["close_all", "database_dialect", "explain_database_error", "open_repository", "read_time_limit",
           "revision_line", "upgrade_database"]

# Repositories opened by this process's commands, closed when the command ends so that SQLite
# checkpoints its WAL at a known moment rather than whenever the garbage collector runs.
_OPEN: list[Repository] = []


def open_repository(db_url: str | None, *, write: bool) -> Repository:
    if write:
        engine = open_database(resolve_url(db_url), create=True)
    else:  # a reader: the read-only engine (works on read-only media), under the command's --timeout
        engine = limit_engine(open_readonly(resolve_url(db_url)))
    repo = Repository(engine)
    _OPEN.append(repo)
    return repo


# SQLite's messages that say nothing of which file or what to do: the fix for each.
_SQLITE_FIXES = {
    "database is locked": "another process held its write lock past the busy timeout; retry when it is done, "
                          "or use PostgreSQL for many concurrent writers",
    "readonly database": "the file or its directory is not writable by this user (or is on read-only media); "
                         "readers (status, query, report, export) can still open it",
    "unable to open database file": "check that the path and its directory exist and are writable (a writer "
                                    "cannot use a file on read-only media; readers can)",
    "disk i/o error": "check the disk and that no other machine writes the file over a network share",
}


def explain_database_error(message: str) -> str:
    """`message` with the database file(s) this command opened and the fix, for SQLite's bare messages."""
    lowered = message.lower()
    fix = next((text for phrase, text in _SQLITE_FIXES.items() if phrase in lowered), None)
    if fix is None:
        return message
    from db.session import safe_url

    where = ", ".join(safe for safe in dict.fromkeys(safe_url(repo.engine.url) for repo in _OPEN)
                      if safe not in message)
    return f"{message} ({where}): {fix}" if where else f"{message}: {fix}"


def database_dialect(db_url: str | None) -> str:
    """"sqlite" or "postgresql": what the URL names, without opening (or creating) anything."""
    from db.session import parse_url

    return "sqlite" if is_sqlite(parse_url(resolve_url(db_url))) else "postgresql"


def close_all() -> None:
    while _OPEN:
        _OPEN.pop().close()


def upgrade_database(db_url: str | None) -> str:
    """Migrate the database to head (creating it when new); a line saying where it stands."""
    from db.session import current_revision, make_engine, safe_url, upgrade

    url = resolve_url(db_url)
    upgrade(url)
    engine = make_engine(url)
    try:
        return f"{safe_url(url)} is at revision {current_revision(engine)}"
    finally:
        engine.dispose()


def revision_line(db_url: str | None) -> str:
    """The database's schema revision and the one this rtgrid needs."""
    from db.session import current_revision, head_revision, make_engine

    engine = make_engine(resolve_url(db_url))
    try:
        return f"current: {current_revision(engine) or '(empty)'}  head: {head_revision()}"
    finally:
        engine.dispose()
