"""Live events across several servers on one PostgreSQL: LISTEN/NOTIFY (issue 12, Scale-out).

Each server fans out the events it commits to its own Server-Sent Events subscribers
(server/events.py). With several ``fleetcast serve`` on one database, an event committed by one must
reach the streams of the others too. ``EventBus.record`` then also runs ``pg_notify('fleetcast_events',
'<server>:<id>')`` in the event's own transaction, so PostgreSQL delivers the notice exactly when the
row is committed (and never for a rollback). Every server LISTENs on one connection of its own in a
thread; a notice from another server names the event's id, which is read from the ``events`` table
and handed to this server's subscribers. A server ignores its own notices (it published them at
commit already).
"""

from __future__ import annotations

import logging
import secrets
import threading
from typing import Any

from sqlalchemy import Engine, select

from fleetcast.server.db import EventRow

logger = logging.getLogger(__name__)

CHANNEL = "fleetcast_events"


class PgFanout:
    def __init__(self, engine: Engine, publish: Any) -> None:
        self.engine = engine
        self.publish = publish  # EventBus.publish
        self.origin = secrets.token_hex(8)  # this server's name in its notices
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.received = 0  # events from other servers handed to subscribers (tests)

    def notice(self, event_id: int) -> str:
        return f"{self.origin}:{event_id}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._listen, name="pg-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen_once()
            except Exception as exc:  # the database restarted: listen again after a pause
                logger.warning("LISTEN %s failed (%s); listening again in 2 s", CHANNEL, exc)
                self._stop.wait(2)

    def _listen_once(self) -> None:
        raw = self.engine.raw_connection()  # a connection of its own, held while listening
        try:
            conn: Any = raw.driver_connection
            conn.autocommit = True
            conn.execute(f"LISTEN {CHANNEL}")
            while not self._stop.is_set():
                for note in conn.notifies(timeout=1.0, stop_after=100):
                    origin, _, number = str(note.payload).partition(":")
                    if origin != self.origin and number.isdigit():
                        self._deliver(int(number))
        finally:
            raw.invalidate()  # LISTEN state must not go back into the pool

    def _deliver(self, event_id: int) -> None:
        from fleetcast.server.events import event_dict

        with self.engine.connect() as conn:
            row = conn.execute(select(EventRow).where(EventRow.id == event_id)).first()
        if row is None:
            return
        event = EventRow(
            id=row.id, ts=row.ts, type=row.type, deployment_id=row.deployment_id,
            client_id=row.client_id, mac=row.mac, data=row.data,
        )  # fmt: skip
        self.received += 1
        self.publish(event_dict(event))
