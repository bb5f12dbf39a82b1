"""Multicast sessions: one per batch of a ``--transport multicast`` deployment (docs/multicast.md).

A session is created when the first agent of a batch joins (``POST /api/agent/multicast/{task}/join``)
and then:

    waiting ──(joined >= min_clients, or max_wait seconds since the first join)──▶ starting
    starting ──(udp-sender spawned; agents see it in their next report and start udp-receiver)──▶
    streaming ──(every pack sent once, in disk order, then the end frame)──▶ finished
    any ──(deployment cancelled or finished, sender failed, server stopping)──▶ ended (sender killed)

The start rules (``min_clients``, ``max_wait``) can be changed while a session waits
(``POST /api/deployments/{id}/multicast``, ``fleetcast deployments multicast ID``). An agent that joins
after the start (a late joiner, a restarted agent, one whose stream ended with packs missing) is given
the **next cycle** — a session that starts when this one ends and streams the union of what its members
lack — or told ``late`` and takes the missing packs by HTTP, whichever the estimate says is sooner
(server/multicast_repair.py). **Dropping:** while streaming, when the session's rate stays below
``drop_below`` bytes/s, the member whose interface received clearly the least, in two windows in a row
(it is the one the others wait for: udpcast retransmits what it lost to everyone) is dropped, with the
event ``client-multicast-dropped``; it stops its receiver and finishes by HTTP. Each session's udp-sender is
tracked by PID and ends with the session.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from fleetcast.errors import ConflictError, FleetcastError, UsageError
from fleetcast.server.db import Deployment, utcnow
from fleetcast.server.multicast_repair import REPAIR_MODES, choose, estimate
from fleetcast.server.multicast_session import ENDED, DeploymentInfo, Member, Session, TaskInfo
from fleetcast.server.multicast_settings import MulticastSettings
from fleetcast.server.orchestrator import Orchestrator
from fleetcast.transport.multicast import Channel, Sender, from_ranges, route_interface

if TYPE_CHECKING:
    from fleetcast.server.multicast_api import MemberReport

logger = logging.getLogger(__name__)


class Transport(StrEnum):
    """``--transport`` of a deployment (``auto``: multicast from ``multicast_from`` clients a batch)."""

    UNICAST = "unicast"
    MULTICAST = "multicast"
    AUTO = "auto"


TRANSPORTS = tuple(t.value for t in Transport)  # ("unicast", "multicast", "auto"), the order errors name
DEFAULTS = MulticastSettings()  # the [multicast] table's defaults (server/multicast_settings.py)
DEFAULT_MULTICAST_FROM = DEFAULTS.multicast_from
DEFAULT_MAX_WAIT = DEFAULTS.max_wait
DEFAULT_DROP_BELOW = DEFAULTS.drop_below  # bytes/s; 0 = never drop
SENDER_WAIT = 15.0  # how long udp-sender waits for the joined receivers to connect
NO_RECEIVER = 90.0  # a sender that got no receiver at all by then ends (its members went HTTP)
DROP_WINDOW = 4.0
DROP_GRACE = 6.0
STANDS_OUT = 0.6  # a receiver is the slow one when it received at most this share of the others' median
TICK = 0.25
KEEP_ENDED = 6 * 3600.0
CYCLE_GATHER = 2.0  # a next cycle whose stream has ended waits this long after its first join for others
RESULT_KEYS = ("transport", "packs_multicast", "packs_repaired", "outcome", "foreign_frames")


@dataclass(frozen=True)
class MulticastOptions:
    """What a deployment asked for; stored in its ``multicast`` column as a dict."""

    min_clients: int | None = None  # None: the batch's size
    max_wait: float = DEFAULT_MAX_WAIT
    multicast_from: int = DEFAULT_MULTICAST_FROM
    drop_below: float = DEFAULT_DROP_BELOW
    repair: str | None = None  # late joiners: sooner | cycle | http; None: the server's [multicast] repair

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "min_clients": self.min_clients,
            "max_wait": self.max_wait,
            "multicast_from": self.multicast_from,
            "drop_below": self.drop_below,
        }
        if self.repair is not None:
            out["repair"] = self.repair
        return out

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any] | None, *, defaults: MulticastSettings | None = None
    ) -> MulticastOptions:
        """The options a deployment gave, the server's ``[multicast]`` defaults for the rest."""
        raw = {k: v for k, v in (raw or {}).items() if v is not None}
        d = defaults or MulticastSettings()
        return cls(
            min_clients=raw.get("min_clients", d.min_clients),
            max_wait=float(raw.get("max_wait", d.max_wait)),
            multicast_from=int(raw.get("multicast_from", d.multicast_from)),
            drop_below=float(raw.get("drop_below", d.drop_below)),
            repair=str(raw["repair"]) if "repair" in raw else None,
        )


def check_options(transport: str, opts: MulticastOptions) -> None:
    if transport not in TRANSPORTS:
        raise UsageError(f"transport {transport!r} is not one of {', '.join(TRANSPORTS)}")
    if opts.min_clients is not None and opts.min_clients < 1:
        raise UsageError(f"--min-clients must be at least 1, found {opts.min_clients}")
    if not 0 <= opts.max_wait <= 86_400:
        raise UsageError(f"--max-wait must be 0 to 86400 seconds, found {opts.max_wait}")
    if opts.multicast_from < 1:
        raise UsageError(f"--multicast-from must be at least 1, found {opts.multicast_from}")
    if opts.drop_below < 0:
        raise UsageError(f"--drop-below must be 0 or more bytes/s, found {opts.drop_below}")
    if opts.repair is not None and opts.repair not in REPAIR_MODES:
        raise UsageError(f"repair must be one of {', '.join(REPAIR_MODES)}, found {opts.repair!r}")


def resolve_transport(requested: str, *, batch: int, clients: int, opts: MulticastOptions) -> tuple[str, str]:
    """The transport a deployment uses and why: ``auto`` is multicast when a batch holds at least
    ``multicast_from`` clients."""
    size = min(batch, clients)
    if requested == "auto":
        if size >= opts.multicast_from:
            return "multicast", f"auto: batches of {size} clients (multicast from {opts.multicast_from})"
        return "unicast", f"auto: batches of {size} clients (multicast from {opts.multicast_from})"
    return requested, f"{requested} (asked for)"


class MulticastManager:
    """All sessions of one server; ``tick()`` runs from its own thread (``start()``)."""

    def __init__(self, orch: Orchestrator, *, log_dir: Path | None = None) -> None:
        self.orch = orch
        self.log_dir = log_dir
        self.settings: MulticastSettings = orch.settings.multicast  # the [multicast] table
        self._lock = threading.RLock()
        self.sessions: dict[str, Session] = {}
        self._current: dict[int, str] = {}  # deployment id -> its newest session
        self._next_slot = 0
        self._http_until: dict[int, list[float]] = {}  # deployment -> when its HTTP repairs should end
        self._by_http: dict[int, set[int]] = {}  # deployment -> targets told "late" (HTTP): not joining
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="multicast-sessions", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            for session in self.sessions.values():
                self._end(session, "ended", "the server is stopping")

    def _loop(self) -> None:
        while not self._stop.wait(TICK):
            try:
                self.tick()
            except Exception:  # keep the sessions going; the next tick may work
                logger.exception("multicast tick failed")

    def pids(self) -> list[int]:
        with self._lock:
            return [
                s.sender.pid for s in self.sessions.values() if s.sender and s.sender.running and s.sender.pid
            ]

    # ---- agent side --------------------------------------------------------------------------

    def _task(self, client_id: int, task_id: int) -> tuple[TaskInfo, DeploymentInfo]:
        with self.orch.db.sessions() as s:
            t = self.orch._task(s, client_id, task_id)
            d = t.deployment
            return (
                TaskInfo(t.id, t.client_id, t.mac, t.state, t.attempt, t.checkpoint_chunk, t.assigned_at),
                DeploymentInfo(
                    d.id,
                    d.image,
                    d.batch,
                    d.transport,
                    dict(d.multicast or {}),
                    sum(x.state in ("queued", "running") for x in d.targets),
                    len(d.targets),
                    frozenset(x.id for x in d.targets if x.state in ("queued", "running")),
                ),
            )

    def join(
        self, client_id: int, task_id: int, peer: str, missing: list[list[int]] | None = None
    ) -> dict[str, Any]:
        """``missing``: the packs the agent lacks, as ``[start, end)`` ranges of the image's pack order
        (None: all of them)."""
        t, dep = self._task(client_id, task_id)
        if t.state != "running" or dep.transport != "multicast":
            return {"state": "none", "reason": "this task does not use multicast"}
        with self._lock:
            session = self.sessions.get(self._current.get(dep.id, ""))
            if (
                session is not None
                and t.id in session.members
                and session.state in ("waiting", "starting")
                and session.members[t.id].state == "joined"
            ):
                return self._reply(session, session.members[t.id])
            known = any(t.id in x.members for x in self.sessions.values() if x.deployment_id == dep.id)
            restarted = t.attempt > 1 or t.checkpoint_chunk > 0
            if session is None or session.state in ENDED:
                one_batch = session is not None and dep.batch >= dep.total  # no later batch to stream to
                # handed its task before that stream started: it belongs to that batch, not to the next
                # (a new batch session would wait max_wait for clients that are not coming)
                its_batch = (
                    session is not None
                    and session.started_utc is not None
                    and t.assigned_at is not None
                    and t.assigned_at <= session.started_utc
                )
                if session is not None and (restarted or known or one_batch or its_batch):  # late for it
                    why = "restarted agent" if restarted else "late"
                    return self._late(
                        dep, t, session, missing, peer=peer, why=f"{why}, the session is {session.state}"
                    )
                if restarted:  # a restarted agent and no session of this deployment in this server
                    self._by_http.setdefault(dep.id, set()).add(t.id)
                    self._event("client-multicast-late", dep.id, t, reason="restarted agent", choice="http")
                    return {"state": "late", "reason": "a restarted agent finishes by HTTP"}
                session = self._new_session(dep, peer)  # the first join of a batch
            if session.state != "waiting" or session.after is not None or known:  # the stream runs: late
                return self._late(dep, t, session, missing, peer=peer, why=f"the session is {session.state}")
            member = Member(t.id, t.client_id, t.mac, time.monotonic(), self._missing(session, missing))
            session.members[t.id] = member
            self._event(
                "client-multicast-joined", dep.id, t, session_id=session.id, joined=len(session.members),
                min_clients=session.min_clients,
            )  # fmt: skip
            if session.after is None and len(session.active) >= session.min_clients:
                self._maybe_start(session, time.monotonic())  # the last one: now, not at the next tick
            return self._reply(session, member)

    def _missing(self, session: Session, ranges: list[list[int]] | None) -> frozenset[str] | None:
        if ranges is None:
            return None
        order = list(session.sizes)
        try:
            return frozenset(order[i] for i in from_ranges(ranges, len(order)))
        except FleetcastError as exc:
            raise UsageError(f"join: {exc.message}") from exc

    def _late(
        self,
        dep: DeploymentInfo,
        t: TaskInfo,
        current: Session,
        ranges: list[list[int]] | None,
        *,
        peer: str,
        why: str,
    ) -> dict[str, Any]:
        """A client that cannot take ``current`` (the newest session): the next cycle or HTTP, whichever
        the estimate says is sooner (server/multicast_repair.py)."""
        nxt = current if current.after is not None and current.state == "waiting" else None
        prev = self.sessions.get(current.after or "") if nxt is not None else current
        prev = prev or current
        missing = self._missing(current, ranges)
        lacks = list(current.sizes) if missing is None else [p for p in current.sizes if p in missing]
        lack_bytes = sum(current.sizes[p] for p in lacks)
        union = set(lacks) | set(nxt.union() if nxt is not None else ())
        now = time.monotonic()
        ends = [x for x in self._http_until.get(dep.id, []) if x > now]
        self._http_until[dep.id] = ends
        est = estimate(
            missing=lack_bytes, union=sum(current.sizes[p] for p in union), remaining=prev.remaining(),
            rate=self._rate(dep.id, now), http_clients=len(ends),
        )  # fmt: skip
        cycle = nxt.cycle if nxt is not None else prev.cycle + 1
        mode = (
            MulticastOptions.from_dict(dep.multicast, defaults=self.settings).repair or self.settings.repair
        )
        choice = choose(mode, est, cycle=cycle, max_cycles=self.settings.max_cycles)
        self._event(
            "client-multicast-late", dep.id, t, session_id=current.id, reason=why, choice=choice, cycle=cycle,
            packs=len(lacks), repair=mode, **est.to_dict(),
        )  # fmt: skip
        if choice == "http":
            ends.append(now + est.http)
            self._by_http.setdefault(dep.id, set()).add(t.id)
            return {"state": "late", "session": current.id, "reason": f"{why}; HTTP is sooner",
                    "estimate": est.to_dict()}  # fmt: skip
        if nxt is None:
            nxt = self._new_session(dep, peer, after=prev)
        member = Member(t.id, t.client_id, t.mac, now, missing)
        nxt.members[t.id] = member
        return self._reply(nxt, member) | {"estimate": est.to_dict()}

    def _rate(self, deployment_id: int, now: float) -> float | None:
        """The newest measured stream rate of the deployment."""
        mine = [x for x in self.sessions.values() if x.deployment_id == deployment_id]
        for session in sorted(mine, key=lambda x: x.created, reverse=True):
            rate = session.stream_rate(now)
            if rate is not None:
                return rate
        return None

    def _reply(self, session: Session, member: Member) -> dict[str, Any]:
        state = session.state
        if member.state == "dropped":
            state = "dropped"
        return {
            "state": state,
            "session": session.id,
            "cycle": session.cycle,
            "image_id": session.image_id,
            "group": session.channel.group,
            "port": session.channel.port,
            "drop_below": session.drop_below,  # 0: no drop rule, the agent reports less often
        }

    def report(self, client_id: int, task_id: int, body: MemberReport) -> dict[str, Any]:
        with self._lock:
            session = self.sessions.get(body.session)
            member = session.members.get(task_id) if session else None
            if session is None or member is None or member.client_id != client_id:
                return {"state": "none"}
            now = time.monotonic()
            if body.rx_bytes is not None:
                member.rx.append((now, body.rx_bytes))
                del member.rx[:-64]
            member.packs = body.packs
            if body.done is not None:
                done = {k: body.done[k] for k in RESULT_KEYS if k in body.done}  # an agent names no others
                member.result = done
                if member.state == "joined":
                    member.state = "left"
                self._event_target(
                    "client-transport", session.deployment_id, member, session_id=session.id, **done
                )
            return self._reply(session, member)

    # ---- admin side --------------------------------------------------------------------------

    def set_rules(
        self,
        deployment_id: int,
        *,
        min_clients: int | None,
        max_wait: float | None,
        repair: str | None = None,
        start_now: bool = False,
    ) -> None:
        """Change the start rules of the deployment's waiting session (and of later ones), how its late
        joiners are served (``repair``), or start the waiting session now (``start_now``: as if its
        max-wait had passed, once a client joined; the stored rules stay)."""
        with self.orch._tx() as s:
            dep = self.orch._deployment(s, deployment_id)
            if dep.transport != "multicast":
                raise ConflictError(
                    f"deployment {deployment_id} does not use multicast (it is {dep.transport})"
                )
            opts = MulticastOptions.from_dict(dep.multicast, defaults=self.settings)
            raw = opts.to_dict()
            if min_clients is not None:
                raw["min_clients"] = min_clients
            if max_wait is not None:
                raw["max_wait"] = max_wait
            if repair is not None:
                raw["repair"] = repair
            new = MulticastOptions.from_dict(raw, defaults=self.settings)
            check_options("multicast", new)
            dep.multicast = new.to_dict()
            with self._lock:
                session = self.sessions.get(self._current.get(deployment_id, ""))
                if start_now and (session is None or session.state != "waiting" or not session.active):
                    state = "none" if session is None else f"{session.state}, {len(session.active)} joined"
                    raise ConflictError(
                        f"deployment {deployment_id} has no waiting multicast session with a client in it "
                        f"to start (its newest session: {state})"
                    )
                if session is not None and session.state == "waiting":
                    if min_clients is not None:
                        session.min_clients = min_clients
                    if max_wait is not None:
                        session.max_wait = max_wait
                    session.start_now = session.start_now or start_now
            self.orch.bus.record(
                s, "multicast-rules-changed", deployment_id=deployment_id, min_clients=min_clients,
                max_wait=max_wait, repair=repair, start_now=start_now,
            )  # fmt: skip

    def view(self, deployment_id: int) -> dict[str, Any]:
        with self.orch.db.sessions() as s:
            dep = self.orch._deployment(s, deployment_id)
            transport, opts = dep.transport, MulticastOptions.from_dict(dep.multicast, defaults=self.settings)
        with self._lock:
            sessions = [x.view() for x in self.sessions.values() if x.deployment_id == deployment_id]
        return {"deployment": deployment_id, "transport": transport, "options": opts.to_dict(),
                "sessions": sessions}  # fmt: skip

    # ---- sessions ----------------------------------------------------------------------------

    def _new_session(self, dep: DeploymentInfo, peer: str, *, after: Session | None = None) -> Session:
        from fleetcast.store.manifest import Manifest

        manifest: Manifest = self.orch.catalog.store().open(dep.image)
        opts = MulticastOptions.from_dict(dep.multicast, defaults=self.settings)
        # the clients that can still join a session: queued or running, in none of this deployment's
        # sessions yet and not sent to HTTP (those still finishing the batch before are not coming)
        members = {i for x in self.sessions.values() if x.deployment_id == dep.id for i in x.members}
        members |= self._by_http.get(dep.id, set())
        clients = len(dep.pending - members) if dep.pending else dep.targets or dep.batch
        slot = self._next_slot
        self._next_slot = (self._next_slot + 1) % self.settings.sessions
        channel = Channel(self.settings.group(slot), self.settings.port(slot), route_interface(peer))
        session = Session(
            id=secrets.token_hex(16),
            deployment_id=dep.id,
            image=dep.image,
            image_id=manifest.image_id,
            channel=channel,
            min_clients=1 if after else opts.min_clients or max(1, min(dep.batch, clients)),
            max_wait=opts.max_wait,
            drop_below=opts.drop_below,
            created=time.monotonic(),
            cycle=after.cycle + 1 if after else 1,
            after=after.id if after else None,
            sizes={p.id: p.stored for p in manifest.pack_refs()},
        )
        self.sessions[session.id] = session
        self._current[dep.id] = session.id
        self._event_dep(
            "multicast-waiting", dep.id, session_id=session.id, group=channel.group, port=channel.port,
            min_clients=session.min_clients, max_wait=session.max_wait, cycle=session.cycle,
            after=session.after,
        )  # fmt: skip
        return session

    def _packs(self, session: Session) -> Iterator[tuple[str, Callable[[], bytes]]]:
        for pack_id in session.send:
            path = self.orch.catalog.chunk_path(pack_id)
            yield pack_id, path.read_bytes

    def tick(self) -> None:
        with self._lock:
            old = time.monotonic() - KEEP_ENDED
            for sid in [k for k, x in self.sessions.items() if x.finished is not None and x.finished < old]:
                dep_id = self.sessions.pop(sid).deployment_id  # an ended session stays KEEP_ENDED seconds
                if self._current.get(dep_id) == sid:
                    del self._current[dep_id]
                    self._by_http.pop(dep_id, None)
                    self._http_until.pop(dep_id, None)
            sessions = [s for s in self.sessions.values() if s.state in ("waiting", "starting", "streaming")]
        if not sessions:
            return
        with self.orch.db.sessions() as s:
            ids = {x.deployment_id for x in sessions}
            states = {d.id: d.state for d in s.query(Deployment).filter(Deployment.id.in_(ids))}
        now = time.monotonic()
        with self._lock:
            for session in sessions:
                if states.get(session.deployment_id) != "running":
                    self._end(session, "ended", f"deployment {states.get(session.deployment_id, 'gone')}")
                elif session.state == "waiting":
                    self._maybe_start(session, now)
                else:
                    self._watch(session, now)

    def _maybe_start(self, session: Session, now: float) -> None:
        joined = len(session.active)
        waited = now - session.created
        if session.after is not None:  # a next cycle: as soon as the stream before it has ended
            before = self.sessions.get(session.after)
            if joined == 0 or (before is not None and before.state not in ENDED) or waited < CYCLE_GATHER:
                return
            why = f"cycle {session.cycle}: {joined} joined while cycle {session.cycle - 1} streamed"
        elif joined == 0 or (
            joined < session.min_clients and waited < session.max_wait and not session.start_now
        ):
            return
        elif joined >= session.min_clients:
            why = f"{joined} joined"
        else:
            why = "started by an administrator" if session.start_now else f"waited {waited:.0f} s"
        session.send = session.union()
        log = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.log_dir / f"udp-sender-{session.id}.log", "ab")  # noqa: SIM115 (closed at end)
        session.log = log
        session.sender = Sender(
            session.channel, session.id, session.image_id, self._packs(session),
            min_receivers=joined, max_wait=SENDER_WAIT, log=log,
        )  # fmt: skip
        session.state = "starting"
        session.started = now
        session.started_utc = utcnow()
        session.sender.start()
        self._event_dep(
            "multicast-started", session.deployment_id, session_id=session.id, receivers=joined, reason=why,
            sender_pid=session.sender.pid, cycle=session.cycle, packs=len(session.send),
        )  # fmt: skip

    def _watch(self, session: Session, now: float) -> None:
        sender = session.sender
        assert sender is not None
        if session.state == "starting" and sender.bytes_sent > 0:
            session.state = "streaming"
            session.streaming_at = now
        waited = now - (session.started or now)
        if session.state == "starting" and waited > NO_RECEIVER:
            self._end(session, "failed", f"no receiver connected within {NO_RECEIVER:.0f} s")
            return
        if sender.finished.is_set():
            if sender.error:
                self._end(session, "failed", sender.error)
            else:
                self._end(session, "finished", None)
            return
        session.rate.append((now, sender.bytes_sent))
        del session.rate[:-256]
        if session.drop_below <= 0 or session.state != "streaming" or session.started is None:
            return
        if now - session.started < DROP_GRACE or now - session.last_drop < DROP_GRACE:
            return
        recent = [(t, b) for t, b in session.rate if t >= now - DROP_WINDOW]
        if len(recent) < 2 or recent[-1][0] - recent[0][0] < DROP_WINDOW / 2:
            return
        rate = (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])
        if rate >= session.drop_below:
            return
        rates = [(m.rx_rate(DROP_WINDOW, now), m) for m in session.active]
        known = sorted(((r, m) for r, m in rates if r is not None), key=lambda x: x[0])
        if len(known) < 2:
            return
        slowest_rate, slowest = known[0]
        others = sorted(r for r, _ in known[1:])
        median = others[len(others) // 2]
        if slowest_rate > STANDS_OUT * median:
            session.suspect = None
            return  # nobody stands out: the network as a whole is slow
        # a suspect is dropped only when it is still the one that stands out a window later (a receiver
        # whose reports were late once, on a busy machine, is not dropped for it)
        if session.suspect is None or session.suspect[0] != slowest.target_id:
            session.suspect = (slowest.target_id, now)
            return
        if now - session.suspect[1] < DROP_WINDOW:
            return
        session.suspect = None
        slowest.state = "dropped"
        session.last_drop = now
        left = estimate(missing=session.remaining(), union=0, remaining=0, rate=rate, http_clients=0)
        self._http_until.setdefault(session.deployment_id, []).append(now + left.http)
        self._event_target(
            "client-multicast-dropped", session.deployment_id, slowest, session_id=session.id,
            session_rate_bps=round(rate), drop_below=session.drop_below, rx_bps=round(slowest_rate),
            others_rx_bps=round(median),
        )  # fmt: skip
        logger.info("multicast session %s: dropped %s (rx %.0f B/s, others %.0f B/s, session %.0f B/s)",
                    session.id, slowest.mac, slowest_rate, median, rate)  # fmt: skip

    def _end(self, session: Session, state: str, error: str | None) -> None:
        if session.state in ("finished", "ended", "failed"):
            return
        if session.sender is not None:
            session.sender.stop()
        if session.log is not None:
            session.log.close()
            session.log = None
        session.state = state
        session.error = error
        session.finished = time.monotonic()
        sender = session.sender
        self._event_dep(
            "multicast-finished", session.deployment_id, session_id=session.id, state=state, error=error,
            cycle=session.cycle,
            bytes_sent=sender.bytes_sent if sender else 0, packs_sent=sender.packs_sent if sender else 0,
        )  # fmt: skip

    # ---- events ------------------------------------------------------------------------------

    def _event_dep(self, type: str, deployment_id: int, **data: Any) -> None:
        with self.orch._tx() as s:
            self.orch.bus.record(s, type, deployment_id=deployment_id, **data)

    def _event(self, type: str, deployment_id: int, t: TaskInfo, **data: Any) -> None:
        with self.orch._tx() as s:
            self.orch.bus.record(
                s, type, deployment_id=deployment_id, client_id=t.client_id, mac=t.mac, task_id=t.id, **data
            )

    def _event_target(self, type: str, deployment_id: int, m: Member, **data: Any) -> None:
        with self.orch._tx() as s:
            self.orch.bus.record(
                s, type, deployment_id=deployment_id, client_id=m.client_id, mac=m.mac, task_id=m.target_id,
                **data,
            )  # fmt: skip


def install(app: FastAPI, orch: Orchestrator, data_dir: Path | None = None) -> MulticastManager:
    """The session manager for this app (``app.state.multicast``) and its routes; started now."""
    from fleetcast.server.multicast_api import admin_router, agent_router  # they name the manager's type

    log_dir = data_dir / "multicast" if data_dir is not None else Path(tempfile.gettempdir())
    mgr = MulticastManager(orch, log_dir=log_dir)
    app.state.multicast = mgr
    app.include_router(agent_router)
    app.include_router(admin_router)
    mgr.start()
    with contextlib.suppress(Exception):
        import atexit

        atexit.register(mgr.close)
    return mgr
