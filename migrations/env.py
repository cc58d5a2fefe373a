"""Alembic environment for rtgrid.

rtgrid configures Alembic in code (db.session.alembic_config) and hands over an open
connection in `config.attributes["connection"]`, inside a transaction it commits itself.
Run from a shell (`alembic upgrade head` with the repo's alembic.ini) the URL comes from
`-x db=URL`, else $RTGRID_DB, else the default SQLite file.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from db.models import Base
from db.session import make_engine, migration_transaction, normalise_url, resolve_url

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return normalise_url(
        context.get_x_argument(as_dictionary=True).get("db") or config.get_main_option("sqlalchemy.url")
        or resolve_url(None)
    )


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    url = _url()
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    try:
        # rtgrid's own migration transaction: on SQLite a table rebuild (0004) must not fire ON DELETE
        # CASCADE into epoch_metrics, so foreign keys are off while it runs (as under `rtgrid db upgrade`).
        with migration_transaction(engine) as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
