"""Schema migrations with Alembic, run by the server at start (issue 12, Scale: migrations). The
revisions are in server/schema/versions/ (``0001`` baseline, ``0002`` ...); no alembic.ini is needed:
``upgrade`` hands Alembic the open connection (server/schema/env.py).

- **A new database** gets today's tables (``create_all``) and is stamped at the head revision.
- **A database of the previous release** (hand-written ``schema_version`` table, versions 1-2, no
  ``alembic_version``) is stamped at the revision of its version (1 -> ``0001``, 2 -> ``0002``);
  the revisions after it run.
- **A database of a release before versions** (tables, neither version table): the tables created
  since are made, the columns added since are added with their defaults (``add_missing_columns``:
  additive only), it is stamped ``0001`` -- the schema of 2026-12-03, the last one made without
  versions -- and the revisions after it run.
- **An Alembic database** runs the revisions after its own. A revision may do what the additive
  catch-up cannot (rename, drop, retype, move data, an index on existing tables).
- **A database newer than this fleetcast** (a downgrade: a revision it does not know, or a
  hand-written version above 2 without Alembic's table) is refused before anything is touched.

``schema_version`` is kept, at ``MOVED_TO_ALEMBIC`` (3): the previous release refuses such a database
("newer than this fleetcast knows") instead of running on a schema it does not know.

The whole upgrade is one transaction under a lock: on PostgreSQL a transaction-level advisory lock
(several ``fleetcast serve`` starting at once on one database upgrade it once); on SQLite ``BEGIN
IMMEDIATE`` (the write lock: the DDL is inside the transaction too, which Python's sqlite3 would
otherwise run outside it; the data directory's lock already allows one server). Every revision run
is logged as a warning (an upgrade is worth noticing).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Column, Connection, Engine, inspect, literal, text

from fleetcast.errors import ServerError
from fleetcast.server.db import Base

logger = logging.getLogger(__name__)
logging.getLogger("alembic").setLevel(logging.WARNING)  # its INFO lines at every start; ours say what ran

SCRIPT_LOCATION = Path(__file__).with_name("schema")
VERSION_TABLE = "schema_version"  # the previous release's hand-written version (1-2)
LEGACY_REVISIONS = {1: "0001", 2: "0002"}
MOVED_TO_ALEMBIC = 3
_LOCK_KEY = 0x666C6361  # pg_advisory_xact_lock key: "flca"


def _config(conn: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["connection"] = conn
    return config


SCRIPT = ScriptDirectory.from_config(_config())
HEAD = SCRIPT.get_current_head() or ""


def current_revision(conn: Connection) -> str | None:
    """The database's Alembic revision; None when it has none (new, or made by an older release)."""
    return MigrationContext.configure(conn).get_current_revision()


def legacy_version(conn: Connection) -> int | None:
    """The previous release's ``schema_version``; None when it has no such table (or no row)."""
    if VERSION_TABLE not in inspect(conn).get_table_names():
        return None
    row = conn.execute(text(f"SELECT version FROM {VERSION_TABLE}")).first()
    return int(row[0]) if row is not None else None


def _refuse_newer(found: str) -> ServerError:
    return ServerError(
        f"the database has schema {found}, newer than this fleetcast knows (revision {HEAD})",
        hint="run the fleetcast release that made it (or a newer one); nothing was changed",
    )


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _mark_moved(conn: Connection) -> None:
    conn.execute(text(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL)"))
    conn.execute(text(f"DELETE FROM {VERSION_TABLE}"))
    conn.execute(text(f"INSERT INTO {VERSION_TABLE} (version) VALUES (:v)"), {"v": MOVED_TO_ALEMBIC})


def upgrade(engine: Engine) -> list[str]:
    """Bring the database to Alembic's head; returns what was done (one line per revision or column)."""
    done: list[str] = []
    with engine.begin() as conn:
        _lock(conn)
        config = _config(conn)
        revision = current_revision(conn)
        legacy = legacy_version(conn)
        if revision is not None:
            try:
                SCRIPT.get_revision(revision)
            except CommandError:
                raise _refuse_newer(f"revision {revision}") from None
        elif legacy is not None and legacy not in LEGACY_REVISIONS:
            raise _refuse_newer(f"version {legacy} (without Alembic's table)")
        if revision is None:
            fresh = not (set(inspect(conn).get_table_names()) & set(Base.metadata.tables))
            Base.metadata.create_all(conn)  # tables added since (all of them for a new database)
            if fresh:
                command.stamp(config, "head")
                _mark_moved(conn)
                return []
            if legacy is None:  # made before versions: catch up additively, then it is 0001
                done += [f"added column {c}" for c in add_missing_columns(conn)]
                revision = LEGACY_REVISIONS[1]
                done.append(f"schema revision {revision} (the database had no version)")
            else:
                revision = LEGACY_REVISIONS[legacy]
                done.append(f"schema revision {revision} (the previous release's schema version {legacy})")
            command.stamp(config, revision)
            _mark_moved(conn)
        if revision != HEAD:  # at the head (every start but the first after an upgrade): nothing to load
            pending = list(SCRIPT.iterate_revisions(HEAD, revision))
            command.upgrade(config, "head")
            done += [f"schema revision {s.revision}: {s.doc}" for s in reversed(pending)]
    for line in done:
        logger.warning("database: %s", line)
    return done


def _default_literal(column: Column[Any], conn: Connection) -> str | None:
    """The SQL literal of a column's Python default (scalars, ``dict``/``list`` as JSON), or None."""
    default = column.default
    arg = getattr(default, "arg", None)
    if default is None or arg is None:
        return None
    if callable(arg):
        json_text = {"dict": "{}", "list": "[]"}.get(getattr(arg, "__name__", ""))
        return f"'{json_text}'" if json_text is not None else None
    if not isinstance(arg, bool | int | float | str):
        return None
    compiled = literal(arg, column.type).compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    return str(compiled)


def add_missing_columns(conn: Connection) -> list[str]:
    """The columns a database made by an older (unversioned) fleetcast lacks, added with ``ALTER
    TABLE ... ADD COLUMN`` and their defaults (existing rows get them); "table.column" for each.
    ``create_all`` makes missing tables but never touches existing ones: a column added since
    (``deployments.transport``, ...) made every query on its table fail after an upgrade."""
    found = inspect(conn)
    tables = set(found.get_table_names())
    quote = conn.dialect.identifier_preparer.quote
    added: list[str] = []
    for table in Base.metadata.sorted_tables:
        if table.name not in tables:
            continue
        have = {c["name"] for c in found.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            ddl = f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} "
            ddl += column.type.compile(dialect=conn.dialect)
            default = _default_literal(column, conn)
            if default is not None:
                ddl += f" DEFAULT {default}"
                if not column.nullable:
                    ddl += " NOT NULL"
            conn.execute(text(ddl))
            added.append(f"{table.name}.{column.name}")
    return added
