"""Alembic migrations on a real SQLite file and a real PostgreSQL database.

Covers: empty -> head, head -> base -> head, previous revision -> head (with a throw-away
revision `test_next` written after a copy of the real scripts), the schema check on open
(new, behind, unknown revision, unreachable), and that migrations and db/models.py agree
(column and table comments included: revision 0003 stores them on PostgreSQL).
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Mapping
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from db.models import Base
from db.readonly import open_readonly
from db.repository import Repository
from db.session import (
    SCRIPT_LOCATION,
    DatabaseError,
    SchemaOutOfDate,
    _script,
    alembic_config,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    open_database,
    upgrade,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
RTGRID_TABLES = {"experiments", "trials", "experiment_trials", "epoch_metrics", "artifacts", "er_baselines"}

NEXT = "test_next"  # a throw-away revision after the real head: the real head becomes "the previous one"
REVISION_NEXT = '''"""test only: trials.priority

Revision ID: test_next
Revises: {head}
"""
import sqlalchemy as sa
from alembic import op

revision = "test_next"
down_revision = "{head}"
branch_labels = None
depends_on = None


def _recreate() -> str:
    # Rebuild `trials` on SQLite (copy, drop, rename): its children (epoch_metrics and
    # experiment_trials, ON DELETE CASCADE) and the `results` view must survive that.
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"


# SQLite reflects a column-level foreign key (trials.er_baseline_id, revision 0004er) without its
# name: a rebuild names it by the convention, as Alembic's batch mode documents.
FK = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def upgrade() -> None:
    with op.batch_alter_table("trials", recreate=_recreate(), naming_convention=FK) as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials", recreate=_recreate(), naming_convention=FK) as batch:
        batch.drop_column("priority")
'''


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _views(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_view_names())
    finally:
        engine.dispose()


def _constraint_names(url: str) -> dict[str, set[str]]:
    """Names of the CHECK, UNIQUE and foreign-key constraints and indexes of every rtgrid table."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            inspector = inspect(connection)
            return {
                table: {c["name"] for c in inspector.get_check_constraints(table)}
                | {c["name"] for c in inspector.get_unique_constraints(table)}
                | {c["name"] or _column_fk_name(connection, table, c) for c in inspector.get_foreign_keys(table)}
                | {c["name"] for c in inspector.get_indexes(table)}
                for table in sorted(RTGRID_TABLES)
            }
    finally:
        engine.dispose()


def _column_fk_name(connection: Any, table: str, fk: Mapping[str, Any]) -> str | None:
    """SQLite adds a foreign key in place only as a column constraint (`col INTEGER CONSTRAINT name
    REFERENCES ...`, revision 0004er), whose name SQLAlchemy does not reflect: read it from the DDL."""
    ddl = connection.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).scalar_one()
    column = fk["constrained_columns"][0]
    found = re.search(rf"\b{column}\s+\w+\s+CONSTRAINT\s+(\w+)\s+REFERENCES", ddl)
    return found.group(1) if found else None


def _model_constraint_names(tmp_path: Path) -> dict[str, set[str]]:
    """The same names as db/models.py creates them (create_all on a scratch SQLite file)."""
    url = f"sqlite:///{tmp_path / 'create_all.sqlite'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    return _constraint_names(url)


def _seed(url: str) -> str:
    """One experiment, one trial with two epochs; returns the spec_hash."""
    repo = Repository(open_database(url, create=False))
    try:
        experiment = repo.ensure_experiment("seeded", "smoke")
        row = {"spec_hash": "a" * 64, "spec_json": "{}", "kind": "transfer", "arch": "tiny_resnet", "source": "scratch",
               "dataset": "digits", "ood": "noise-2", "method": "retrain", "blocks": None, "subset_size": 50,
               "seed": 0, "epochs": 2, "init": "random"}
        repo.plan_trials(experiment, [row])
        repo.mark_started(row["spec_hash"], "host")
        repo.record_epoch(row["spec_hash"], 1, {"test_acc": 0.5, "ood_acc": 0.4})
        repo.record_epoch(row["spec_hash"], 2, {"test_acc": 0.6, "ood_acc": 0.45})
        repo.complete(row["spec_hash"], {"test_acc": 0.6, "ood_acc": 0.45})
        return row["spec_hash"]
    finally:
        repo.close()


def _counts(url: str) -> tuple[int, int, int]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return tuple(connection.execute(text(f"SELECT count(*) FROM {name}")).scalar_one()  # type: ignore[return-value]
                         for name in ("trials", "epoch_metrics", "experiment_trials"))
    finally:
        engine.dispose()


def _results_rows(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT count(*) FROM results")).scalar_one()
    finally:
        engine.dispose()


@pytest.fixture()
def scripts_with_0002(tmp_path: Path) -> str:
    """A copy of the real migration scripts plus a revision after their head."""
    location = tmp_path / "migrations"
    (location / "versions").mkdir(parents=True)
    source = Path(SCRIPT_LOCATION)
    for name in ("env.py", "script.py.mako"):
        shutil.copy(source / name, location / name)
    for script in (source / "versions").glob("0*.py"):
        shutil.copy(script, location / "versions" / script.name)
    (location / "versions" / "9999_test_priority.py").write_text(REVISION_NEXT.replace("{head}", head_revision()))
    return str(location)


def test_revisions_form_one_chain_from_the_initial_one() -> None:
    chain = [script.revision for script in _script(SCRIPT_LOCATION).walk_revisions()]  # head first
    assert chain[0] == head_revision() and chain[-1] == "0001"
    assert len(chain) == len(set(chain))


def test_empty_to_head_matches_models(db_url: str, tmp_path: Path) -> None:
    assert current_revision(db_url) is None
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()
    assert _tables(db_url) == RTGRID_TABLES
    assert "results" in _views(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []  # migrations create exactly db/models.py
    finally:
        engine.dispose()
    names = _constraint_names(db_url)
    assert names == _model_constraint_names(tmp_path)  # CHECKs too, which compare_metadata skips
    assert {"ck_trials_status", "ck_trials_test_acc_range", "uq_trials_spec_hash"} <= names["trials"]


def test_results_view_returns_rows(db_url: str) -> None:
    upgrade(db_url)
    spec_hash = _seed(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT * FROM results")).mappings().all()
    finally:
        engine.dispose()
    assert len(rows) == 1
    row = rows[0]
    assert (row["experiment"], row["spec_hash"], row["status"], row["last_epoch"]) == ("seeded", spec_hash,
                                                                                        "completed", 2)
    assert row["test_acc"] == pytest.approx(0.6) and row["subset_size"] == 50 and row["finished_at"] is not None


def test_downgrade_to_base_and_upgrade_again(db_url: str) -> None:
    upgrade(db_url)
    _seed(db_url)
    downgrade(db_url, "base")
    assert current_revision(db_url) is None
    assert _tables(db_url) == set() and "results" not in _views(db_url)
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()
    assert _counts(db_url) == (0, 0, 0)
    # A database at base counts as new again: a reader is told so, a writer re-creates it.
    downgrade(db_url, "base")
    with pytest.raises(DatabaseError, match="no rtgrid database"):
        open_database(db_url, create=False)
    open_database(db_url, create=True).dispose()
    assert current_revision(db_url) == head_revision()


def test_previous_revision_to_head(db_url: str, scripts_with_0002: str, tmp_path: Path) -> None:
    head = head_revision()
    upgrade(db_url)  # the real head: behind the copy's head
    _seed(db_url)
    with pytest.raises(SchemaOutOfDate) as info:
        open_database(db_url, create=True, script_location=scripts_with_0002)  # never migrates silently
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"database is at revision {head} but rtgrid needs {NEXT}: run `rtgrid db upgrade --db ")
    assert current_revision(db_url) == head

    upgrade(db_url, script_location=scripts_with_0002)
    assert current_revision(db_url) == NEXT
    engine = open_database(db_url, create=False, script_location=scripts_with_0002)
    engine.dispose()
    assert _counts(db_url) == (1, 2, 1)

    downgrade(db_url, head, script_location=scripts_with_0002)  # rebuilds `trials` on SQLite
    assert current_revision(db_url) == head
    assert _counts(db_url) == (1, 2, 1), "a table rebuild cascaded into the child tables"
    assert _results_rows(db_url) == 1
    assert _constraint_names(db_url) == _model_constraint_names(tmp_path), "the rebuild lost or renamed constraints"


COMMENTS_REVISION = "0003"  # stores the models' comments (PostgreSQL); 0002 has none


def _comments(url: str) -> dict[str, dict[str, str | None]]:
    """Table -> {"": table comment, column: column comment} as the live database has them."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            inspector = inspect(connection)
            stored = connection.dialect.supports_comments  # SQLite has none (its inspector raises)
            return {table: {"": inspector.get_table_comment(table)["text"] if stored else None}
                    | {c["name"]: c.get("comment") for c in inspector.get_columns(table)}
                    for table in sorted(RTGRID_TABLES)}
    finally:
        engine.dispose()


def _model_comments() -> dict[str, dict[str, str | None]]:
    return {name: {"": table.comment} | {c.name: c.comment for c in table.columns}
            for name, table in Base.metadata.tables.items()}


def test_comments_revision_is_a_literal_snapshot() -> None:
    """0003 documents every table and column of its schema with literal text (checked on SQLite too, where
    comments are not stored). Equality with db/models.py at head is the job of `alembic check` and
    test_upgrade_to_head_stores_the_comments, so that a later revision may change a comment."""
    script = _script(SCRIPT_LOCATION).get_revision(COMMENTS_REVISION)
    assert script is not None and script.down_revision == "0002"
    module = import_module(f"migrations.versions.{Path(script.path).stem}")
    frozen = {table: {"": module.TABLE_COMMENTS[table]} | module.COLUMN_COMMENTS[table]
              for table in module.TABLE_COMMENTS}
    at_0003 = {"experiments", "trials", "experiment_trials", "epoch_metrics", "artifacts", "er_baselines"}
    assert set(frozen) == at_0003
    assert all(isinstance(text, str) and text.strip() for columns in frozen.values() for text in columns.values())
    assert "\nfrom db" not in Path(script.path).read_text(), "a revision is a frozen snapshot: no db.models import"


def _frozen_comments(revision: str) -> dict[str, dict[str, str | None]]:
    """The comments a revision's literal snapshot stores (0003: every table and column of its schema)."""
    script = _script(SCRIPT_LOCATION).get_revision(revision)
    assert script is not None
    module = import_module(f"migrations.versions.{Path(script.path).stem}")
    return {table: {"": module.TABLE_COMMENTS[table]} | module.COLUMN_COMMENTS[table]
            for table in module.TABLE_COMMENTS}


@pytest.mark.parametrize("start", ["empty", "0002"])
def test_upgrade_to_head_stores_the_comments(db_url: str, db_backend: str, start: str) -> None:
    """empty -> 0003 -> head and 0002 -> 0003 (data kept) -> 0002 -> head: at 0003 its literal snapshot, at
    head the models' comments, on PostgreSQL; none on SQLite."""
    if start == "0002":
        upgrade(db_url)
        _seed(db_url)
        downgrade(db_url, "0002")
        assert current_revision(db_url) == "0002"
        with pytest.raises(SchemaOutOfDate) as info:
            open_database(db_url, create=True)  # an older database: the usual one-line refusal
        assert "\n" not in str(info.value)
        assert str(info.value).startswith(f"database is at revision 0002 but rtgrid needs {head_revision()}: "
                                          "run `rtgrid db upgrade --db ")
    at_0003 = _frozen_comments(COMMENTS_REVISION)
    no_comments_0003 = {table: dict.fromkeys(columns, None) for table, columns in at_0003.items()}
    no_comments_head = {table: dict.fromkeys(columns, None) for table, columns in _model_comments().items()}
    if start == "0002":
        assert _comments(db_url) == no_comments_0003
    upgrade(db_url, COMMENTS_REVISION)
    assert _comments(db_url) == (at_0003 if db_backend == "postgresql" else no_comments_0003)
    expected = _model_comments() if db_backend == "postgresql" else no_comments_head
    if db_backend == "postgresql":  # what a psql user reads
        engine = make_engine(db_url)
        try:
            with engine.connect() as connection:
                described = connection.execute(text(
                    "SELECT col_description('trials'::regclass, a.attnum) FROM pg_attribute a "
                    "WHERE a.attrelid = 'trials'::regclass AND a.attname = 'status'")).scalar_one()
                table = connection.execute(text("SELECT obj_description('er_baselines'::regclass)")).scalar_one()
        finally:
            engine.dispose()
        assert described == "pending | running | completed | failed | cancelled"
        assert table == Base.metadata.tables["er_baselines"].comment
    downgrade(db_url, "0002")
    assert _comments(db_url) == no_comments_0003
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()
    assert _comments(db_url) == expected
    downgrade(db_url, COMMENTS_REVISION)  # later revisions restore 0003's text
    assert _comments(db_url) == (at_0003 if db_backend == "postgresql" else no_comments_0003)
    upgrade(db_url)
    if start == "0002":
        assert _counts(db_url) == (1, 2, 1) and _results_rows(db_url) == 1
    open_database(db_url, create=False).dispose()


def test_alembic_command_line_config(tmp_path: Path) -> None:
    """`alembic upgrade head` as a developer runs it: env.py opens its own connection from the URL."""
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    command.upgrade(alembic_config(url=url), "head")
    assert current_revision(url) == head_revision()
    result = subprocess.run([sys.executable, "-m", "alembic", "-x", f"db={url}", "check"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "No new upgrade operations detected" in result.stdout


def test_unknown_revision_is_refused(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'ffffeeee0000'"))
    engine.dispose()
    with pytest.raises(SchemaOutOfDate) as info:
        open_database(db_url, create=True)
    message = str(info.value)
    assert "\n" not in message and "ffffeeee0000" in message and head_revision() in message
    with pytest.raises(DatabaseError, match="cannot upgrade"):
        upgrade(db_url)  # Alembic cannot place the revision: a one-line error, not a traceback


def test_new_database_created_only_by_writers(db_url: str, db_backend: str) -> None:
    with pytest.raises(DatabaseError) as info:
        open_database(db_url, create=False)
    assert str(info.value).startswith("no rtgrid database at ")
    assert "rtgrid db upgrade" in str(info.value)
    if db_backend == "sqlite":
        assert not Path(db_url.removeprefix("sqlite:///")).exists(), "a reader must not create the file"
    engine = open_database(db_url, create=True)
    engine.dispose()
    assert current_revision(db_url) == head_revision()
    open_database(db_url, create=False).dispose()


def test_readers_check_the_revision_like_writers(db_url: str, db_backend: str, scripts_with_0002: str) -> None:
    """open_readonly (query / export / report / plot): the writers' one-line errors, and never a new database."""
    with pytest.raises(DatabaseError) as info:
        open_readonly(db_url)
    assert str(info.value).startswith("no rtgrid database at ") and "\n" not in str(info.value)
    if db_backend == "sqlite":
        assert not Path(db_url.removeprefix("sqlite:///")).exists(), "a reader must not create the file"
    else:
        assert _tables(db_url) == set() and current_revision(db_url) is None
    upgrade(db_url)
    open_readonly(db_url).dispose()  # at head: fine
    with pytest.raises(SchemaOutOfDate) as info:
        open_readonly(db_url, script_location=scripts_with_0002)  # the database is behind this head
    with pytest.raises(SchemaOutOfDate) as writer:
        open_database(db_url, create=False, script_location=scripts_with_0002)
    assert str(info.value) == str(writer.value)
    assert "run `rtgrid db upgrade --db " in str(info.value) and "\n" not in str(info.value)
    assert current_revision(db_url) == head_revision()


def test_foreign_tables_without_revision_are_refused(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE trials (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    with pytest.raises(DatabaseError, match="has rtgrid tables but no schema revision"):
        open_database(db_url, create=True)


def test_concurrent_first_open_creates_once(db_url: str) -> None:
    """Two writers opening a brand-new database at once: one migrates, the other waits and finds head."""
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            open_database(db_url, create=True).dispose()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert current_revision(db_url) == head_revision()


def test_unreachable_postgres_is_one_line_without_password() -> None:
    url = "postgresql://rtgrid:s3cret-pw@127.0.0.1:1/rtgrid"
    with pytest.raises(DatabaseError) as info:
        open_database(url, create=True)
    message = str(info.value)
    assert message.startswith("cannot open database postgresql+psycopg://rtgrid:***@127.0.0.1:1/rtgrid: ")
    assert "\n" not in message and "s3cret-pw" not in message
    with pytest.raises(DatabaseError) as info:
        upgrade(url)
    assert "\n" not in str(info.value) and "s3cret-pw" not in str(info.value)


def test_unopenable_sqlite_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing-dir' / 'x.sqlite'}"
    with pytest.raises(DatabaseError, match=r"^cannot open database sqlite:///.*unable to open database file$"):
        open_database(url, create=True)
    not_a_db = tmp_path / "garbage.sqlite"
    not_a_db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DatabaseError, match="file is not a database"):
        open_database(f"sqlite:///{not_a_db}", create=False)
    assert sqlite3.sqlite_version  # the driver in use


def test_sqlite_settings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.sqlite'}"
    engine = open_database(url, create=True)
    try:
        with engine.connect() as connection:
            pragmas = {name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                       for name in ("journal_mode", "foreign_keys", "busy_timeout")}
    finally:
        engine.dispose()
    assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 30000}


def test_plain_engine_cannot_fool_the_check(tmp_path: Path) -> None:
    """A database created by other means (create_all) has no revision: it is not silently adopted."""
    url = f"sqlite:///{tmp_path / 'create_all.sqlite'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    with pytest.raises(DatabaseError, match="no schema revision"):
        open_database(url, create=True)
