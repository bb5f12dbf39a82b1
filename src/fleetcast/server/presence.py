"""What an idle agent's heartbeat needs, kept in memory, so most heartbeats touch no database.

Measured with ``bench/load.py`` (issue 12, Scale): an idle heartbeat cost about 5 ms of server CPU
in two thread hops and six queries -- the credential looked up twice (the body limit's early check
and the route), the client loaded, its running and queued targets asked for, ``last_seen``
written and committed. At 2,000 agents beating every 2 s that is 1,000 of them a second, more than
one process can do. Here:

- **credentials**: SHA-256 of a credential -> client id for every enrolled client, read whole
  every ``AUTH_REFRESH`` seconds when other servers share the database (one query of two columns;
  another server process on the same PostgreSQL may have enrolled or revoked meanwhile), every
  ``BUSY_MAX_AGE`` with SQLite (a backstop: 4 % of the server's CPU at 2,000 agents), a client's
  entry dropped at once when this process commits a new ``credential_hash`` for it (enrollment,
  revocation, deletion); a miss is looked up in the database and remembered;
- **busy clients**: the ids with a queued or running target, read in one query; any commit that
  created, deleted or changed the state of a ``Target`` makes the set stale (a generation counter),
  and so does ``BUSY_TTL`` seconds when several servers share the database (another process may
  have started a deployment); the app's loop re-reads it twice a second. Only a client known *not*
  busy, from a fresh set, takes the fast path. With SQLite there is one server per database (the
  data directory's lock), so the generation alone says whether the set is current, and age only
  past ``BUSY_MAX_AGE``: under load the loop's re-read can come late, and a set that expired by age
  sent every idle heartbeat down the full path at once -- 5 ms of CPU each instead of 30 µs, which
  made the re-read later still (seen at 3,000 agents on the loaded machine: 250 a second). With
  several servers, another server's ``client-queued`` event (LISTEN/NOTIFY, server/pgfanout.py)
  makes the set stale as a local commit does, so age counts only past ``BUSY_SHARED_MAX_AGE`` (a
  backstop for a lost notification; at 2 s the same feedback loop held 5,000 agents' heartbeats on
  PostgreSQL behind full-path ones);
- **online clients**: the ids the slow path saw online; the stale sweep removes the ones it marks
  offline, so a client coming back still takes the slow path and gets its ``client-seen`` event;
- **last seen**: the fast path notes (time, address) here; ``flush()`` writes them in one
  ``executemany`` (the app's loop, every 2.5 s, and the stale sweep before it looks), and client
  views overlay the notes not yet flushed.

- **waiting clients** (a long poll, ``HeartbeatRequest.wait``): an idle client's heartbeat may be held
  (server/fastlane.py) until a commit creates, deletes or changes the state of one of *its* targets
  -- the ids come from the same flush tracking, so a new deployment wakes exactly its clients, at
  its commit, from whatever thread commits; another server's ``client-queued`` event (LISTEN/NOTIFY)
  wakes its client here too -- or until the interval it was told has passed.

A heartbeat that carries an inventory or a task id, or comes from a busy, unknown or offline
client, takes the full path through the orchestrator as before.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, event, inspect, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.state import InstanceState

from fleetcast.server.db import Client, Target

logger = logging.getLogger(__name__)

AUTH_REFRESH = 5.0
BUSY_TTL = 2.0  # re-read at least every BUSY_TTL / 2 with several servers
BUSY_SHARED_MAX_AGE = 10.0
BUSY_MAX_AGE = 60.0  # one server per database: the generation is exact, age is a backstop
ACTIVE_TARGET = ("queued", "running")


def _resolve(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


def _changed(obj: Target | Client, attribute: str) -> bool:
    state: InstanceState[Any] = inspect(obj)
    return bool(state.attrs[attribute].history.has_changes())


class Presence:
    def __init__(self, sessions: sessionmaker[Session], *, shared: bool = True) -> None:
        """``shared``: other server processes may write the same database (PostgreSQL)."""
        self._sessions = sessions
        self._max_age = BUSY_SHARED_MAX_AGE if shared else BUSY_MAX_AGE
        # one server per database: every credential change is this process's own commit (dropped at
        # once, new ones cached at enrollment), so the whole re-read is only a backstop
        self._auth_every = AUTH_REFRESH if shared else BUSY_MAX_AGE
        self._lock = threading.Lock()
        self._auth: dict[str, int] = {}
        self._auth_gen = 0
        self._auth_read_at = -1.0e9
        self._busy: frozenset[int] = frozenset()
        self._busy_read_at = -1.0e9
        self._busy_gen = -1
        self._gen = 0
        self._online: set[int] = set()
        self._seen: dict[int, tuple[datetime, str | None]] = {}
        self._waiting: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[bool]]] = {}
        # heartbeats answered from memory / sent the full path, since the last report (app.py logs them)
        self.counts: dict[str, int] = {"fast": 0, "full": 0}
        event.listen(sessions, "after_flush", self._after_flush)
        event.listen(sessions, "after_commit", self._after_commit)
        event.listen(sessions, "after_rollback", self._after_rollback)

    # ---- change tracking (SQLAlchemy session events, in whatever thread commits) ----------------

    def _after_flush(self, session: Session, _context: Any) -> None:
        """Note what the commit will change: a target's state (new, deleted, or ``state`` set), an
        existing client's credential (replaced, cleared, or the client deleted). A new client
        retires no credential: enrollments of new machines leave the cache alone."""
        touched = session.info.setdefault("fleetcast_presence", set())
        woken = session.info.setdefault("fleetcast_wake", set())
        for obj in (*session.new, *session.deleted):
            if isinstance(obj, Target):
                touched.add(-1)
                woken.add(obj.client_id)
        for obj in session.deleted:
            if isinstance(obj, Client) and obj.id is not None:
                touched.add(obj.id)
        for obj in session.dirty:
            if isinstance(obj, Target) and _changed(obj, "state"):
                touched.add(-1)
                woken.add(obj.client_id)
            elif isinstance(obj, Client) and _changed(obj, "credential_hash"):
                touched.add(obj.id)

    def _after_commit(self, session: Session) -> None:
        touched: set[int] = session.info.pop("fleetcast_presence", set())
        woken: set[int] = session.info.pop("fleetcast_wake", set())
        if not touched:
            return
        with self._lock:
            if -1 in touched:
                self._gen += 1
            clients = touched - {-1}
            if clients:
                self._auth = {k: v for k, v in self._auth.items() if v not in clients}
                self._auth_gen += 1
        self.wake(woken | clients)

    def _after_rollback(self, session: Session) -> None:
        session.info.pop("fleetcast_presence", None)
        session.info.pop("fleetcast_wake", None)

    # ---- waiting clients (long poll) -------------------------------------------------------------

    def wake(self, client_ids: set[int]) -> None:
        """Answer these clients' held heartbeats on the full path now; from any thread."""
        with self._lock:
            waiting = [self._waiting[c] for c in client_ids if c in self._waiting]
        for loop, future in waiting:
            loop.call_soon_threadsafe(_resolve, future, True)

    def wake_for_event(self, event: dict[str, Any]) -> None:
        """Another server's event (server/pgfanout.py): a client it queued is busy now (the busy set is
        stale) and may be held here."""
        client_id = event.get("client_id")
        if event.get("type") == "client-queued" and isinstance(client_id, int):
            self.targets_changed()  # the busy set is stale, as after a local commit
            self.wake({client_id})

    async def wait_for_work(self, client_id: int, timeout: float) -> bool:
        """Wait until a commit touches one of the client's targets or its credential (True: answer
        it on the full path) or ``timeout`` seconds pass (False: still idle). On the event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        with self._lock:
            previous = self._waiting.get(client_id)
            self._waiting[client_id] = (loop, future)
        if previous is not None:  # the agent gave up on its last request: that one ends now
            previous[0].call_soon_threadsafe(_resolve, previous[1], False)
        if not self.idle(client_id):  # a commit came between the fast lane's check and now
            _resolve(future, True)
        timer = loop.call_later(timeout, _resolve, future, False)
        try:
            return await future
        finally:
            timer.cancel()
            with self._lock:
                if self._waiting.get(client_id, (None, None))[1] is future:
                    del self._waiting[client_id]

    def waiting_count(self) -> int:
        return len(self._waiting)

    def targets_changed(self) -> None:
        """For writers outside the ORM unit of work (bulk ``UPDATE targets``)."""
        with self._lock:
            self._gen += 1

    # ---- credentials ----------------------------------------------------------------------------

    def client_for(self, digest: str) -> int | None:
        """The client id of a credential hash, if known here."""
        return self._auth.get(digest)

    @property
    def credentials_generation(self) -> int:
        return self._auth_gen

    def remember(self, digest: str, client_id: int, generation: int) -> None:
        """Cache a lookup made when ``credentials_generation`` was ``generation`` (unless a
        credential changed since: the lookup may predate a revocation)."""
        with self._lock:
            if self._auth_gen == generation:
                self._auth[digest] = client_id

    def refresh_credentials(self, *, force: bool = False) -> None:
        """Re-read every client's credential hash (when ``AUTH_REFRESH`` has passed); from a thread.
        Dropped if this process changed a credential meanwhile (the next round reads it again)."""
        if not force and time.monotonic() - self._auth_read_at < self._auth_every:
            return
        gen, read_at = self._auth_gen, time.monotonic()
        with self._sessions() as s:
            rows = s.execute(
                select(Client.credential_hash, Client.id).where(Client.credential_hash.is_not(None))
            ).all()
        fresh = {str(digest): int(cid) for digest, cid in rows}
        with self._lock:
            if self._auth_gen == gen:
                self._auth, self._auth_read_at = fresh, read_at

    # ---- busy and online -----------------------------------------------------------------------

    def idle(self, client_id: int) -> bool:
        """True only when a fresh read says the client has no queued or running target and the
        slow path saw it online (so its heartbeat needs nothing but a ``last_seen`` note)."""
        if client_id not in self._online:
            return False
        if self._busy_gen != self._gen or time.monotonic() - self._busy_read_at > self._max_age:
            return False
        return client_id not in self._busy

    def refresh(self, *, force: bool = False) -> None:
        """Re-read the busy set if it is stale (one query); call from a thread, not the event loop."""
        # re-read at half the age idle() accepts: the app's loop (every 0.5 s) keeps it fresh, so no
        # heartbeat falls into a gap between expiry and the next read (2.5 % took the full path)
        age = time.monotonic() - self._busy_read_at
        if not force and self._busy_gen == self._gen and age <= BUSY_TTL / 2:
            return
        gen, read_at = self._gen, time.monotonic()
        with self._sessions() as s:
            busy = frozenset(
                s.scalars(select(Target.client_id).where(Target.state.in_(ACTIVE_TARGET)).distinct())
            )
        with self._lock:
            self._busy, self._busy_gen, self._busy_read_at = busy, gen, read_at

    def online_count(self) -> int:
        return len(self._online)

    def online(self, client_id: int) -> None:
        self._online.add(client_id)

    def offline(self, client_ids: set[int]) -> None:
        with self._lock:
            self._online -= client_ids

    # ---- last seen -----------------------------------------------------------------------------

    def seen(self, client_id: int, when: datetime, address: str | None) -> None:
        with self._lock:
            previous = self._seen.get(client_id)
            if previous is not None and address is None:
                address = previous[1]
            self._seen[client_id] = (when, address)

    def pending(self, client_id: int) -> tuple[datetime, str | None] | None:
        """A ``last_seen`` (and address) noted but not yet written."""
        return self._seen.get(client_id)

    def flush(self) -> int:
        """Write the noted ``last_seen`` values (and addresses) in one statement; how many."""
        with self._lock:
            seen, self._seen = self._seen, {}
        if not seen:
            return 0
        with_address = [
            {"cid": cid, "ts": ts, "addr": addr} for cid, (ts, addr) in seen.items() if addr is not None
        ]
        without = [{"cid": cid, "ts": ts} for cid, (ts, addr) in seen.items() if addr is None]
        table = Client.__table__
        assert isinstance(table, Table)
        try:
            with self._sessions() as s, s.begin():
                conn = s.connection()
                if with_address:
                    conn.execute(
                        update(table)
                        .where(table.c.id == bindparam("cid"))
                        .values(last_seen=bindparam("ts"), address=bindparam("addr")),
                        with_address,
                    )
                if without:
                    conn.execute(
                        update(table).where(table.c.id == bindparam("cid")).values(last_seen=bindparam("ts")),
                        without,
                    )
        except Exception:
            with self._lock:  # keep what was not written, unless newer notes came meanwhile
                for cid, value in seen.items():
                    self._seen.setdefault(cid, value)
            raise
        return len(seen)
