"""Schema migrations with Alembic (issue 12, Scale): a database of the previous release (its
hand-written ``schema_version`` 2, replayed from tests/data/schema-977f9a1-*.sql, the statements it
made) is taken over by Alembic without losing a row; one at version 1 runs revision 0002; one made
before versions gets the columns added since, then the revisions; one newer than this fleetcast is
refused untouched -- on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from servekit import postgres_cluster
from sqlalchemy import Engine, create_engine, inspect, text

from fleetcast.errors import ServerError
from fleetcast.server import migrations
from fleetcast.server.db import Base, Database, Deployment

pytestmark = pytest.mark.integration

DATA = Path(__file__).parents[2] / "data"
# columns this session's fleetcast added to tables the release before versions already had
NEW = {"deployments": ["transport", "multicast", "image_id"]}
OLD_ROW = (
    'INSERT INTO deployments (image, image_size, disk_rule, batch, dns, grow, "then", state, created_at, '
    "created_by, transport, multicast, image_id) VALUES ('golden', 1, '0', 2, '[]', false, 'none', "
    "'done', '2026-12-02 10:00:00', 'admin', 'multicast', '{}', 'abc')"
)
ROW_BEFORE_VERSIONS = (
    'INSERT INTO deployments (image, image_size, disk_rule, batch, dns, grow, "then", state, created_at, '
    "created_by) VALUES ('golden', 1, '0', 2, '[]', false, 'none', 'done', '2026-12-02 10:00:00', 'admin')"
)
INDEX = "ix_targets_client_state"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleetcast.db'}"
    else:
        with postgres_cluster() as pg:
            yield pg


def engine_for(url: str) -> Engine:
    return create_engine(url)


def previous_release(url: str, version: int = 2) -> None:
    """The database the previous release (977f9a1) made, its statements replayed, with one deployment;
    at ``version`` 1 without the index revision 2 makes."""
    dialect = url.partition(":")[0].partition("+")[0]
    statements = (DATA / f"schema-977f9a1-{dialect}.sql").read_text().split(";\n")
    engine = engine_for(url)
    with engine.begin() as conn:
        for statement in statements:
            lines = [line for line in statement.splitlines() if not line.startswith("--")]
            if "".join(lines).strip():
                conn.exec_driver_sql("\n".join(lines))
        conn.execute(text(OLD_ROW))
        if version == 1:
            conn.execute(text(f"DROP INDEX {INDEX}"))
            conn.execute(text(f"UPDATE {migrations.VERSION_TABLE} SET version = 1"))
    engine.dispose()


def before_versions(url: str) -> None:
    """The tables as the release before versions made them: today's, without the newer columns,
    the index or a version table."""
    engine = engine_for(url)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        for table, columns in NEW.items():
            for column in columns:
                conn.execute(text(f'ALTER TABLE {table} DROP COLUMN "{column}"'))
        conn.execute(text(f"DROP INDEX {INDEX}"))
        conn.execute(text(ROW_BEFORE_VERSIONS))
    engine.dispose()


def state(url: str) -> tuple[str | None, int | None, bool]:
    """Alembic's revision, the previous release's version, whether the index exists."""
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            indexes = {i["name"] for i in inspect(conn).get_indexes("targets")}
            return migrations.current_revision(conn), migrations.legacy_version(conn), INDEX in indexes
    finally:
        engine.dispose()


def old_deployment(url: str) -> tuple[object, ...]:
    db = Database(url)
    try:
        with db.sessions() as s:
            old = s.get(Deployment, 1)
            assert old is not None
            return (old.image, old.batch, old.then, old.transport, old.multicast, old.image_id)
    finally:
        db.close()


def upgrade(url: str) -> list[str]:
    engine = engine_for(url)
    try:
        return migrations.upgrade(engine)
    finally:
        engine.dispose()


def test_a_new_database_starts_at_the_head_revision(url: str) -> None:
    Database(url).close()
    assert state(url) == (migrations.HEAD, migrations.MOVED_TO_ALEMBIC, True)
    assert migrations.HEAD == "0002"
    assert upgrade(url) == []


def test_the_previous_release_database_is_taken_over_by_alembic(url: str) -> None:
    previous_release(url)
    assert state(url) == (None, 2, True)
    assert upgrade(url) == ["schema revision 0002 (the previous release's schema version 2)"]
    assert state(url) == ("0002", migrations.MOVED_TO_ALEMBIC, True)
    assert old_deployment(url) == ("golden", 2, "none", "multicast", {}, "abc")
    assert upgrade(url) == []  # a second start finds nothing to do


def test_the_previous_release_at_version_1_runs_revision_0002(url: str) -> None:
    previous_release(url, version=1)
    assert state(url) == (None, 1, False)
    assert upgrade(url) == [
        "schema revision 0001 (the previous release's schema version 1)",
        "schema revision 0002: index targets (client_id, state): a client's active target",
    ]
    assert state(url) == ("0002", migrations.MOVED_TO_ALEMBIC, True)


def test_a_database_from_before_versions_catches_up_then_runs_the_revisions(url: str) -> None:
    before_versions(url)
    assert state(url) == (None, None, False)
    assert upgrade(url) == [
        "added column deployments.transport",
        "added column deployments.image_id",
        "added column deployments.multicast",
        "schema revision 0001 (the database had no version)",
        "schema revision 0002: index targets (client_id, state): a client's active target",
    ]
    assert state(url) == ("0002", migrations.MOVED_TO_ALEMBIC, True)
    assert old_deployment(url) == ("golden", 2, "none", "unicast", {}, "")


def test_a_newer_database_is_refused_untouched(url: str) -> None:
    Database(url).close()
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    with pytest.raises(ServerError) as newer:
        Database(url)
    assert newer.value.message == (
        f"the database has schema revision 0099, newer than this fleetcast knows (revision {migrations.HEAD})"
    )
    assert state(url) == ("0099", migrations.MOVED_TO_ALEMBIC, True)


def test_a_newer_hand_written_version_is_refused_untouched(url: str) -> None:
    previous_release(url)
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {migrations.VERSION_TABLE} SET version = 7"))
    engine.dispose()
    with pytest.raises(ServerError) as newer:
        Database(url)
    assert newer.value.message == (
        "the database has schema version 7 (without Alembic's table), newer than this fleetcast knows "
        f"(revision {migrations.HEAD})"
    )
    assert state(url) == (None, 7, True)
