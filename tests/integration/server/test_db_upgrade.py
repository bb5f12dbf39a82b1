"""A database made by an older fleetcast (issue 12, Scale: schema upgrades): one made before schema
versions gets the columns added since (with their defaults), version 1, then the ordered steps; a
versioned one runs only the steps after its version; a newer one is refused untouched -- on SQLite
and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from servekit import postgres_cluster
from sqlalchemy import create_engine, inspect, text

from fleetcast.errors import ServerError
from fleetcast.server import migrations
from fleetcast.server.db import Base, Database, Deployment

pytestmark = pytest.mark.integration

# columns this session's fleetcast added to tables the previous release already had
NEW = {"deployments": ["transport", "multicast", "image_id"]}


def older_schema(url: str) -> None:
    """The tables as the previous release made them: today's, without the newer columns."""
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        for table, columns in NEW.items():
            for column in columns:
                conn.execute(text(f'ALTER TABLE {table} DROP COLUMN "{column}"'))
        conn.execute(text("DROP INDEX ix_targets_client_state"))  # migration 2 makes it
        conn.execute(
            text(f"DROP TABLE IF EXISTS {migrations.VERSION_TABLE}")
        )  # releases before versions had none
        conn.execute(
            text(
                'INSERT INTO deployments (image, image_size, disk_rule, batch, dns, grow, "then", state, '
                "created_at, created_by) VALUES ('golden', 1, '0', 2, '[]', false, 'none', 'done', "
                "'2026-12-02 10:00:00', 'admin')"
            )
        )
    engine.dispose()


def version_and_index(url: str) -> tuple[int | None, bool]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            indexes = {i["name"] for i in inspect(conn).get_indexes("targets")}
            return migrations.current_version(conn), "ix_targets_client_state" in indexes
    finally:
        engine.dispose()


def check_upgrade(url: str) -> None:
    older_schema(url)
    assert version_and_index(url) == (None, False)
    db = Database(url)
    try:
        assert version_and_index(url) == (migrations.LATEST, True)
        have = {c["name"] for c in inspect(db.engine).get_columns("deployments")}
        assert {"transport", "multicast", "image_id"} <= have
        with db.sessions() as s:
            old = s.get(Deployment, 1)
            assert old is not None
            assert (old.image, old.batch, old.transport, old.multicast, old.image_id) == (
                "golden",
                2,
                "unicast",
                {},
                "",
            )
    finally:
        db.close()
    engine = create_engine(url)
    assert migrations.upgrade(engine) == []  # a second start finds nothing to do
    engine.dispose()
    check_versioned(url)


def check_versioned(url: str) -> None:
    """A database at version 1 runs only step 2; one newer than this fleetcast is refused untouched."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_targets_client_state"))
            conn.execute(text(f"UPDATE {migrations.VERSION_TABLE} SET version = 1"))
        assert migrations.upgrade(engine) == [
            "schema version 2: index targets (client_id, state): a client's active target"
        ]
        assert version_and_index(url) == (2, True)
        with engine.begin() as conn:
            conn.execute(text(f"UPDATE {migrations.VERSION_TABLE} SET version = {migrations.LATEST + 1}"))
        with pytest.raises(ServerError) as newer:
            Database(url)
        assert newer.value.message == (
            f"the database has schema version {migrations.LATEST + 1}, newer than this fleetcast knows "
            f"({migrations.LATEST})"
        )
        assert version_and_index(url) == (migrations.LATEST + 1, True)
    finally:
        engine.dispose()


def test_a_new_database_starts_at_the_latest_version(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    Database(url).close()
    assert version_and_index(url) == (migrations.LATEST, True)


def test_sqlite_database_of_an_older_release_is_upgraded(tmp_path: Path) -> None:
    check_upgrade(f"sqlite:///{tmp_path / 'fleetcast.db'}")


def test_postgres_database_of_an_older_release_is_upgraded() -> None:
    with postgres_cluster() as url:
        check_upgrade(url)
