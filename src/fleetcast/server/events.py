"""The event log (rows in the database) and its live fan-out to Server-Sent Events subscribers.

``EventBus.record(session, type, ...)`` adds a row in the caller's transaction; the event reaches
subscribers only after that transaction commits, so nobody sees an event that was rolled back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy import event, select, text
from sqlalchemy.orm import Session, sessionmaker

from fleetcast.server.db import MAX_INTEGER, EventRow, isoformat, utcnow
from fleetcast.server.pgfanout import CHANNEL

logger = logging.getLogger(__name__)

EVENT_TYPES = (
    "client-enrolled",
    "client-seen",
    "client-stale",
    "deployment-created",
    "client-queued",
    "client-assigned",
    "client-started",
    "client-progress",
    "client-resumed",
    "client-restarted",
    "client-done",
    "client-failed",
    "client-cancelled",
    "deployment-finished",
    "deployment-cancelled",
    "multicast-waiting",
    "multicast-started",
    "multicast-finished",
    "multicast-rules-changed",
    "client-multicast-joined",
    "client-multicast-late",
    "client-multicast-dropped",
    "client-transport",
    "capture-published",
)
_PENDING = "fleetcast_events"
QUEUE_SIZE = 10_000
KEEPALIVE_SECONDS = 15.0


def event_dict(row: EventRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "ts": isoformat(row.ts),
        "type": row.type,
        "deployment_id": row.deployment_id,
        "client_id": row.client_id,
        "mac": row.mac,
        **row.data,
    }


class _Subscriber:
    def __init__(self, loop: asyncio.AbstractEventLoop, deployment_id: int | None) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self.deployment_id = deployment_id
        self.overflowed = False

    def offer(self, payload: dict[str, Any]) -> None:
        """Runs in the subscriber's event loop."""
        try:
            self.queue.put_nowait(payload)
        except asyncio.QueueFull:
            self.overflowed = True


class EventBus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: set[_Subscriber] = set()
        self._hooked: set[int] = set()
        self.fanout: Any = None  # server/pgfanout.PgFanout with several servers on one PostgreSQL

    def attach(self, factory: sessionmaker[Session]) -> None:
        """Publish recorded events when a session from ``factory`` commits."""
        if id(factory) in self._hooked:
            return
        self._hooked.add(id(factory))
        event.listen(factory, "after_commit", self._after_commit)
        event.listen(factory, "after_rollback", self._after_rollback)

    def record(
        self,
        session: Session,
        type: str,
        *,
        deployment_id: int | None = None,
        client_id: int | None = None,
        mac: str | None = None,
        **data: Any,
    ) -> dict[str, Any]:
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        row = EventRow(
            ts=utcnow(), type=type, deployment_id=deployment_id, client_id=client_id, mac=mac, data=data
        )
        session.add(row)
        session.flush()
        if self.fanout is not None:  # delivered to the other servers when this transaction commits
            session.execute(
                text("SELECT pg_notify(:channel, :notice)"),
                {"channel": CHANNEL, "notice": self.fanout.notice(row.id)},
            )
        payload = event_dict(row)
        session.info.setdefault(_PENDING, []).append(payload)
        return payload

    def _after_commit(self, session: Session) -> None:
        for payload in session.info.pop(_PENDING, []):
            self.publish(payload)

    def _after_rollback(self, session: Session) -> None:
        session.info.pop(_PENDING, None)

    def publish(self, payload: dict[str, Any]) -> None:
        """Hand one event to every live subscriber (thread-safe, never blocks)."""
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            if sub.deployment_id is not None and payload.get("deployment_id") != sub.deployment_id:
                continue
            try:
                sub.loop.call_soon_threadsafe(sub.offer, payload)
            except RuntimeError:  # the subscriber's loop is closed
                self._drop(sub)

    def _drop(self, sub: _Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)

    async def stream(
        self,
        load_since: Callable[[int], list[dict[str, Any]]],
        *,
        since: int | None,
        deployment_id: int | None,
        follow: bool,
    ) -> AsyncIterator[str]:
        """SSE text: the logged events after ``since`` (if given), then live ones while ``follow``."""
        sub = _Subscriber(asyncio.get_running_loop(), deployment_id)
        with self._lock:
            self._subscribers.add(sub)
        try:
            last = since or 0
            if since is not None or not follow:
                # load_since answers a page at a time (load_events' limit): read until a page is empty
                while page := await asyncio.to_thread(load_since, last):
                    for payload in page:
                        last = max(last, int(payload["id"]))
                        yield format_sse(payload)
            if not follow:
                return
            yield ": connected\n\n"
            while True:
                try:
                    payload = await asyncio.wait_for(sub.queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if int(payload["id"]) <= last:
                    continue
                last = int(payload["id"])
                yield format_sse(payload)
                if sub.overflowed:
                    logger.warning("event subscriber fell behind by %d events; closing it", QUEUE_SIZE)
                    return
        finally:
            self._drop(sub)


def format_sse(payload: dict[str, Any]) -> str:
    return f"id: {payload['id']}\nevent: {payload['type']}\ndata: {json.dumps(payload)}\n\n"


def load_events(
    session: Session, *, since: int = 0, deployment_id: int | None = None, limit: int = 10_000
) -> list[dict[str, Any]]:
    if since >= MAX_INTEGER or (deployment_id is not None and not 0 < deployment_id <= MAX_INTEGER):
        return []  # beyond the Integer columns: nothing there (and SQLite would raise OverflowError)
    query = select(EventRow).where(EventRow.id > since)
    if deployment_id is not None:
        query = query.where(EventRow.deployment_id == deployment_id)
    rows = session.scalars(query.order_by(EventRow.id).limit(limit))
    return [event_dict(r) for r in rows]
