"""`rtgrid ui`: check the bind address, open the database read-only, serve the Dash app."""

from __future__ import annotations

import ipaddress
import socket

from orchestrator.errors import UserError
from orchestrator.results.query import ReadOnlyDatabase

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050
DEFAULT_REFRESH_S = 5.0
REMOTE_WARNING = ("warning: the dashboard has no authentication; anyone who can reach {host}:{port} can read "
                  "every result in this database")


def is_loopback(host: str) -> bool:
    """True when every address `host` resolves to is a loopback address (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise UserError(f"cannot resolve --host {host!r}: {exc.strerror}") from None
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def check_bind(host: str, allow_remote: bool) -> str | None:
    """None for a loopback host; the warning to print for an allowed non-loopback one; UserError otherwise."""
    if is_loopback(host):
        return None
    if not allow_remote:
        raise UserError(f"--host {host} is not a loopback address and the dashboard has no authentication; "
                        "pass --allow-remote to serve it there anyway")
    return REMOTE_WARNING


def open_database(db_url: str | None) -> ReadOnlyDatabase:
    """The dashboard's one database handle: `rtgrid query`'s reader. A bad URL, a missing file or another
    schema revision fails here, as one line, before anything is served."""
    database = ReadOnlyDatabase(db_url)
    try:
        with database.engine.connect():
            pass
    except BaseException:
        database.close()
        raise
    return database


def serve(database: ReadOnlyDatabase, host: str, port: int, refresh_s: float) -> None:
    """Serve until interrupted; each page's reads run under the command's --timeout (read here: the
    server's threads do not inherit the command's context)."""
    from db.timeouts import current_limit
    from orchestrator.ui.app import create_app

    try:
        create_app(database, current_limit(), refresh_s).run(host=host, port=port, debug=False)
    finally:
        database.close()
