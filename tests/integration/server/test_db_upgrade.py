"""A database made by an older fleetcast (issue 12, Scale: schema upgrades): columns added since are
added at start with their defaults, and the old rows read back -- on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from servekit import postgres_cluster
from sqlalchemy import create_engine, inspect, text

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
        conn.execute(
            text(
                'INSERT INTO deployments (image, image_size, disk_rule, batch, dns, grow, "then", state, '
                "created_at, created_by) VALUES ('golden', 1, '0', 2, '[]', false, 'none', 'done', "
                "'2026-12-02 10:00:00', 'admin')"
            )
        )
    engine.dispose()


def check_upgrade(url: str) -> None:
    older_schema(url)
    db = Database(url)
    try:
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
    Database(url).close()  # a second start finds nothing to add


def test_sqlite_database_of_an_older_release_is_upgraded(tmp_path: Path) -> None:
    check_upgrade(f"sqlite:///{tmp_path / 'fleetcast.db'}")


def test_postgres_database_of_an_older_release_is_upgraded() -> None:
    with postgres_cluster() as url:
        check_upgrade(url)
