"""Schema versions: the database records which version of the schema it has (``schema_version``), and
the server brings it forward at start by ordered steps, each in the same transaction as its new
version number (issue 12, Scale: migrations).

- **A new database** gets today's tables (``create_all``) and the latest version at once.
- **A database of a release before versions** (tables, no ``schema_version``): the tables created
  since are made, the columns added since are added with their defaults (``add_missing_columns``:
  additive only), and it is stamped version 1 -- the schema of 2026-12-03, the last one made
  without versions; the steps after 1 then run.
- **A versioned database** runs the steps after its version, in order. A step may do what the
  additive catch-up cannot (rename, drop, retype, move data, an index on existing tables).
- **A database newer than this fleetcast** (a downgrade) is refused before anything is touched.

On PostgreSQL the whole upgrade holds a transaction-level advisory lock, so several ``fleetcast
serve`` starting at once on one database upgrade it once; with SQLite the data directory's lock
already allows one server. Every step taken is logged as a warning (an upgrade is worth noticing).

Alembic is the usual tool for this; it is not among the project's dependencies, and its
autogenerate cannot tell a rename from a drop and an add either, so steps are written by hand here
as they would be in an Alembic revision (``op.create_index`` ... becomes the DDL it emits).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Connection, Engine, inspect, literal, text

from fleetcast.errors import ServerError
from fleetcast.server.db import Base

logger = logging.getLogger(__name__)

VERSION_TABLE = "schema_version"
_LOCK_KEY = 0x666C6361  # pg_advisory_xact_lock key: "flca"


@dataclass(frozen=True)
class Step:
    version: int
    what: str
    apply: Callable[[Connection], None]


def _baseline(_conn: Connection) -> None:
    """Version 1: the tables of 2026-12-03 (what create_all and the additive catch-up make)."""


def _targets_client_state_index(conn: Connection) -> None:
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_targets_client_state ON targets (client_id, state)"))


STEPS: tuple[Step, ...] = (
    Step(1, "baseline: the schema of 2026-12-03", _baseline),
    Step(
        2,
        "index targets (client_id, state): a client's active target",
        _targets_client_state_index,
    ),
)
LATEST = STEPS[-1].version


def _check_steps() -> None:
    numbers = [s.version for s in STEPS]
    if numbers != list(range(1, len(STEPS) + 1)):
        raise AssertionError(f"migration steps must be numbered 1, 2, ... in order, found {numbers}")


_check_steps()


def current_version(conn: Connection) -> int | None:
    """The database's schema version; None when it has no ``schema_version`` table (or no row)."""
    if VERSION_TABLE not in inspect(conn).get_table_names():
        return None
    row = conn.execute(text(f"SELECT version FROM {VERSION_TABLE}")).first()
    return int(row[0]) if row is not None else None


def _stamp(conn: Connection, version: int) -> None:
    conn.execute(text(f"DELETE FROM {VERSION_TABLE}"))
    conn.execute(text(f"INSERT INTO {VERSION_TABLE} (version) VALUES (:v)"), {"v": version})


def upgrade(engine: Engine) -> list[str]:
    """Bring the database to ``LATEST``; returns what was done (one line per step or column)."""
    done: list[str] = []
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        tables = set(inspect(conn).get_table_names())
        fresh = not (tables & set(Base.metadata.tables))
        version = current_version(conn)
        if version is not None and version > LATEST:
            raise ServerError(
                f"the database has schema version {version}, newer than this fleetcast knows ({LATEST})",
                hint="run the fleetcast release that made it (or a newer one); nothing was changed",
            )
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL)"))
        Base.metadata.create_all(conn)  # tables added since (all of them for a new database)
        if fresh:
            _stamp(conn, LATEST)
            return []
        if version is None:  # made before versions: catch up additively, then it is version 1
            done += [f"added column {c}" for c in add_missing_columns(conn)]
            version = 1
            _stamp(conn, version)
            done.append("schema version 1 (the database had none)")
        for step in STEPS:
            if step.version > version:
                step.apply(conn)
                _stamp(conn, step.version)
                done.append(f"schema version {step.version}: {step.what}")
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
