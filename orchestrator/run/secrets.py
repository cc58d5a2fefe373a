"""The database password under Ray Client: never pickled, never in a world-readable file.

Tune pickles its callbacks into experiment state on the shared volume, and under `ray://` they
open the database on the head node. So they carry the URL without its password, and the head
finds the password in its own environment ($RTGRID_DB_PASSWORD, set where the head was started)
or in a secret file that only the user can read (mode 0600 in a 0700 directory under the
artifacts), which the driver writes for the run and deletes when the run ends.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from sqlalchemy.engine import URL, make_url

PASSWORD_ENV = "RTGRID_DB_PASSWORD"
SECRETS_DIR = ".secrets"


def without_password(url: URL) -> tuple[str, str | None]:
    """(the URL as text without its password, the password or None)."""
    password = url.password
    # URL.set(password=None) keeps the password (set ignores None): build the URL anew without it.
    public = URL.create(url.drivername, url.username, None, url.host, url.port, url.database, url.query)
    return public.render_as_string(hide_password=False), (str(password) if password else None)


def write_secret(artifacts: str, password: str) -> str:
    """A new file holding `password`, readable by this user only; its path."""
    directory = Path(artifacts, SECRETS_DIR)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # an existing directory too: nobody else may list the secrets
    path = directory / uuid.uuid4().hex
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(password)
    return str(path)


def remove_secret(path: str | None) -> None:
    if path:
        Path(path).unlink(missing_ok=True)


def with_password(public_url: str, secret_file: str | None) -> str:
    """The full URL on the head: the password from $RTGRID_DB_PASSWORD, else from the secret file."""
    password = os.environ.get(PASSWORD_ENV)
    if not password and secret_file:
        password = Path(secret_file).read_text()
    url = make_url(public_url)
    return (url.set(password=password) if password else url).render_as_string(hide_password=False)
