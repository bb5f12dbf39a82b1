"""The server's state in SQLAlchemy 2.0: a SQLite file by default, PostgreSQL by URL.

Tables: ``clients`` (one per primary MAC), ``deployments``, ``targets`` (one per client in a
deployment; its id is the agent protocol's ``task_id``), ``events`` (the event log) and ``audit``.
A new database gets the schema at start; an older one is brought up to date by the Alembic revisions
that server/migrations.py runs (server/schema/versions/).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from fleetcast.errors import ServerError, UsageError

logger = logging.getLogger(__name__)


# The largest values of the Integer and BigInteger columns (PostgreSQL refuses more, SQLite's driver raises).
MAX_INTEGER = 2**31 - 1
MAX_BIG_INTEGER = 2**63 - 1


def utcnow() -> datetime:
    return datetime.now(UTC)


def isoformat(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class Client(Base):
    __tablename__ = "clients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mac: Mapped[str] = mapped_column(String(17), unique=True, index=True)
    hostname: Mapped[str] = mapped_column(String(255), default="")
    inventory: Mapped[dict[str, Any]] = mapped_column(default=dict)
    credential_hash: Mapped[str | None] = mapped_column(String(64), unique=True, index=True, default=None)
    address: Mapped[str] = mapped_column(String(64), default="")
    enrolled_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    online: Mapped[bool] = mapped_column(Boolean, default=True)


class Deployment(Base):
    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image: Mapped[str] = mapped_column(String(255))
    image_size: Mapped[int] = mapped_column(BigInteger, default=0)
    disk_rule: Mapped[str] = mapped_column(String(255))
    batch: Mapped[int] = mapped_column(Integer)
    name_pattern: Mapped[str | None] = mapped_column(String(255), default=None)
    ip_range: Mapped[str | None] = mapped_column(String(64), default=None)
    gateway: Mapped[str | None] = mapped_column(String(64), default=None)
    dns: Mapped[list[Any]] = mapped_column(default=list)
    grow: Mapped[bool] = mapped_column(Boolean, default=False)
    then: Mapped[str] = mapped_column(String(16), default="reboot")
    # running | done | failed | cancelling | cancelled
    state: Mapped[str] = mapped_column(String(16), default="running")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    created_by: Mapped[str] = mapped_column(String(255), default="")
    # unicast | multicast (resolved from auto at creation); multicast start rules (server/multicast.py)
    transport: Mapped[str] = mapped_column(String(16), default="unicast")
    # the planned image's id (blake3 of its manifest): the agent refuses another (STORE, issue 14)
    image_id: Mapped[str] = mapped_column(String(64), default="")
    multicast: Mapped[dict[str, Any]] = mapped_column(default=dict)

    targets: Mapped[list[Target]] = relationship(
        back_populates="deployment", order_by="Target.position", cascade="all, delete-orphan"
    )


class Target(Base):
    """One client in one deployment. ``state``: queued | running | done | failed | cancelled."""

    __tablename__ = "targets"
    # a client's queued/running target: every full heartbeat and hand-out asks (migration 2)
    __table_args__ = (Index("ix_targets_client_state", "client_id", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), index=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    mac: Mapped[str] = mapped_column(String(17))
    name: Mapped[str | None] = mapped_column(String(255), default=None)
    ip: Mapped[str | None] = mapped_column(String(64), default=None)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    phase: Mapped[str | None] = mapped_column(String(32), default=None)
    disk: Mapped[str | None] = mapped_column(String(255), default=None)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    rate_bps: Mapped[float] = mapped_column(Float, default=0.0)
    eta_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    checkpoint_chunk: Mapped[int] = mapped_column(Integer, default=0)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    resumes: Mapped[int] = mapped_column(Integer, default=0)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    assigned_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    last_report: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    action: Mapped[str | None] = mapped_column(String(16), default=None)
    changes: Mapped[list[Any]] = mapped_column(default=list)

    deployment: Mapped[Deployment] = relationship(back_populates="targets")


class PersonalizeRow(Base):
    """A personalize-only deployment (server/personalize.py, issue 13): its targets' task kind is
    "personalize"; the OS already on the chosen disk gets a new identity, no image is written."""

    __tablename__ = "personalizations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), unique=True, index=True)
    new_sid: Mapped[bool] = mapped_column(Boolean, default=True)
    reset_ids: Mapped[bool] = mapped_column(Boolean, default=True)


class CaptureRow(Base):
    """A network capture (server/capture.py): one deployment of one target whose task kind is
    "capture"; ``image`` is the name it publishes. Counters are the server's own (what it received)."""

    __tablename__ = "captures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), unique=True, index=True)
    image: Mapped[str] = mapped_column(String(255), index=True)
    replace: Mapped[bool] = mapped_column(Boolean, default=False)
    image_id: Mapped[str | None] = mapped_column(String(64), default=None)
    bytes_read: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_received: Mapped[int] = mapped_column(BigInteger, default=0)
    chunks_new: Mapped[int] = mapped_column(BigInteger, default=0)
    chunks_known: Mapped[int] = mapped_column(BigInteger, default=0)
    packs_new: Mapped[int] = mapped_column(Integer, default=0)
    published_at: Mapped[datetime | None] = mapped_column(default=None)


class CaptureLease(Base):
    """A pack a running capture relies on (answered by ``have`` or uploaded, not yet published):
    ``store gc`` keeps every pack with a lease that has not expired."""

    __tablename__ = "capture_leases"
    __table_args__ = (UniqueConstraint("capture_id", "pack_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    capture_id: Mapped[int] = mapped_column(ForeignKey("captures.id"), index=True)
    pack_id: Mapped[str] = mapped_column(String(64), index=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class EventRow(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    type: Mapped[str] = mapped_column(String(32), index=True)
    deployment_id: Mapped[int | None] = mapped_column(Integer, default=None, index=True)
    client_id: Mapped[int | None] = mapped_column(Integer, default=None)
    mac: Mapped[str | None] = mapped_column(String(17), default=None)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class AuditRow(Base):
    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL: no fsync per commit (a crash of the process loses nothing; a power cut may lose
    # the last heartbeats, never corrupt the file). Every heartbeat is a commit.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the schema created; SQLite files get WAL and a busy timeout."""
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    except (ArgumentError, ImportError) as exc:
        raise UsageError(
            f"database URL {redact(url)!r} is not usable: {exc}",
            hint="use sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB",
        ) from exc
    from fleetcast.server import migrations  # it builds on this module's tables

    try:
        migrations.upgrade(engine)
    except ServerError:  # a newer schema: nothing was changed
        engine.dispose()
        raise
    except SQLAlchemyError as exc:
        engine.dispose()
        raise ServerError(
            f"cannot open the database {redact(url)}: {exc.__class__.__name__}: {exc}".splitlines()[0],
            hint="check that the database server runs and the URL's user may create tables",
        ) from exc
    return engine


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


class Database:
    """An engine and a session factory; ``transaction()`` commits or rolls back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()
