"""The orchestrator's core: its database transaction under one lock, and the batch queue's steps
that the admin side (server/deployments.py, server/clients.py) and the agent side (server/agents.py)
share: hand a task out or back, finish a target, finish a deployment, sweep silent clients and tasks.
server/orchestrator.py puts the sides together."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Row, func, select, update
from sqlalchemy.orm import Session, object_session

from fleetcast.errors import (
    DeploymentNotFound,
    NotFoundError,
    TaskNotFound,
)
from fleetcast.protocol import Task
from fleetcast.server import presets
from fleetcast.server.auth import ForbiddenError
from fleetcast.server.db import (
    MAX_INTEGER,
    AuditRow,
    CaptureRow,
    Client,
    Database,
    Deployment,
    PersonalizeRow,
    Target,
    isoformat,
    utcnow,
)
from fleetcast.server.events import EventBus
from fleetcast.server.images import ImageCatalog
from fleetcast.server.pacing import Pacing
from fleetcast.server.presence import Presence
from fleetcast.server.rowviews import ACTIVE_DEPLOYMENT, ACTIVE_TARGET, client_view, seconds_between
from fleetcast.server.settings import ServerSettings

logger = logging.getLogger(__name__)

_Row = TypeVar("_Row", Client, Deployment, Target)


def get_row(s: Session, model: type[_Row], row_id: int) -> _Row | None:
    """``s.get`` for an id from outside: one out of the column's range is simply not there (instead of
    an OverflowError from SQLite or a DataError from PostgreSQL)."""
    return s.get(model, row_id) if 0 < row_id <= MAX_INTEGER else None


def active_target(s: Session, client_ids: list[int]) -> Row[str, int, str] | None:
    """The first queued or running target (MAC, deployment id, state) of these clients in a
    deployment still running -- what deleting a client and starting a deployment both refuse."""
    return s.execute(
        select(Target.mac, Target.deployment_id, Target.state)
        .join(Deployment)
        .where(Target.client_id.in_(client_ids), Target.state.in_(ACTIVE_TARGET))
        .where(Deployment.state.in_(ACTIVE_DEPLOYMENT))
        .order_by(Target.mac, Target.deployment_id)
    ).first()


class OrchestratorCore:
    def __init__(self, db: Database, bus: EventBus, catalog: ImageCatalog, settings: ServerSettings) -> None:
        self.db = db
        self.bus = bus
        self.catalog = catalog
        self.settings = settings
        self._lock = threading.RLock()
        # client id -> (inventory JSON text, decoded): the client list decodes only what changed
        self.inventories: dict[int, tuple[str, dict[str, Any]]] = {}
        bus.attach(db.sessions)
        # with SQLite this process is the database's only writer (settings.lock_data_dir)
        self.presence = Presence(db.sessions, shared=not db.url.startswith("sqlite"))
        self.pacing = Pacing(
            interval=settings.heartbeat_interval, stale_after=settings.stale_after,
            max_rate=settings.max_heartbeats_per_second, online=self.presence.online_count,
        )  # fmt: skip

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._lock, self.db.transaction() as session:
            yield session

    def _seen_view(self, view: dict[str, Any]) -> dict[str, Any]:
        """``view`` with the heartbeat noted in memory but not yet written (server/presence.py)."""
        pending = self.presence.pending(view["id"])
        if pending is not None and (view["last_seen"] is None or isoformat(pending[0]) > view["last_seen"]):
            view["last_seen"] = isoformat(pending[0])
            if pending[1]:
                view["address"] = pending[1]
        return view

    def _deployment(self, s: Session, deployment_id: int) -> Deployment:
        dep = get_row(s, Deployment, deployment_id)
        if dep is None:
            raise DeploymentNotFound(
                f"deployment {deployment_id} does not exist", hint="GET /api/deployments lists them"
            )
        return dep

    def _client(self, s: Session, client_id: int) -> Client:
        client = get_row(s, Client, client_id)
        if client is None:
            raise NotFoundError(f"client {client_id} does not exist")
        return client

    def _task(self, s: Session, client_id: int, task_id: int) -> Target:
        t = get_row(s, Target, task_id)
        if t is None:
            raise TaskNotFound(f"task {task_id} does not exist")
        if t.client_id != client_id:
            raise ForbiddenError(f"task {task_id} belongs to another client")
        return t

    def _seen(self, s: Session, client: Client, now: datetime, address: str | None) -> None:
        client.last_seen = now
        if address:
            client.address = address
        self.presence.seen(client.id, now, address or None)  # a pending older note must not win
        if not client.online:
            client.online = True
            self.bus.record(s, "client-seen", client_id=client.id, mac=client.mac, address=client.address)
        self.presence.online(client.id)

    def _audit(self, s: Session, *, actor: str, address: str, action: str, target: str, detail: Any) -> None:
        s.add(
            AuditRow(ts=utcnow(), actor=actor, address=address, action=action, target=target, detail=detail)
        )

    def _task_dict(self, t: Target) -> dict[str, Any]:
        d = t.deployment
        s = object_session(t)
        capture = (
            s.scalars(select(CaptureRow).where(CaptureRow.deployment_id == d.id)).first() if s else None
        )  # a capture (server/capture.py) is a deployment of one target with a captures row
        # a personalize-only deployment (server/personalize.py) has a personalizations row
        by_dep = PersonalizeRow.deployment_id == d.id
        pers = s.scalars(select(PersonalizeRow).where(by_dep)).first() if s else None
        task = Task(
            task_id=t.id,
            deployment_id=d.id,
            kind="capture" if capture is not None else "personalize" if pers is not None else "deploy",
            new_sid=pers.new_sid if pers is not None else True,
            reset_ids=pers.reset_ids if pers is not None else True,
            replace=capture.replace if capture is not None else False,
            image=d.image,
            image_size=d.image_size,
            disk_rule=d.disk_rule,
            grow=d.grow,
            name=t.name,
            ip=t.ip,
            gateway=d.gateway,
            dns=list(d.dns or []),
            then=d.then,
            resume_chunk=t.checkpoint_chunk,
            attempt=t.attempt,
            transport=d.transport,
        )
        extra = presets.task_fields(s, d.id) if pers is None else {}
        if d.image_id and capture is None and pers is None:
            extra["image_id"] = d.image_id  # the agent refuses any other image (protocol Task.image_id)
        return task.model_dump() | extra

    def _hand_back(self, s: Session, t: Target, now: datetime) -> dict[str, Any]:
        """The agent is idle but its target still runs: it restarted. Resume from the checkpoint."""
        t.attempt += 1
        t.last_report = now
        kind = "client-resumed" if t.checkpoint_chunk > 0 else "client-restarted"
        if kind == "client-resumed":
            t.resumes += 1
        else:
            t.restarts += 1
            t.bytes_done = 0
        self.bus.record(
            s, kind, deployment_id=t.deployment_id, client_id=t.client_id, mac=t.mac, name=t.name,
            task_id=t.id, attempt=t.attempt, resume_chunk=t.checkpoint_chunk,
        )  # fmt: skip
        logger.info(
            "task %d (%s): %s at chunk %d, attempt %d", t.id, t.mac, kind, t.checkpoint_chunk, t.attempt
        )
        return self._task_dict(t)

    def _next_task(self, s: Session, client: Client, now: datetime) -> dict[str, Any] | None:
        queued = s.scalars(
            select(Target)
            .join(Deployment)
            .where(Target.client_id == client.id, Target.state == "queued", Deployment.state == "running")
            .order_by(Target.deployment_id)
        ).all()
        for t in queued:
            dep = s.get(Deployment, t.deployment_id, with_for_update=True)
            assert dep is not None
            running = s.scalar(
                select(func.count()).where(Target.deployment_id == dep.id, Target.state == "running")
            )
            if (running or 0) >= dep.batch:
                continue
            t.state = "running"
            t.attempt = 1
            t.assigned_at = now
            t.last_report = now
            self.bus.record(
                s, "client-assigned", deployment_id=dep.id, client_id=t.client_id, mac=t.mac, name=t.name,
                task_id=t.id, running=(running or 0) + 1, batch=dep.batch,
            )  # fmt: skip
            return self._task_dict(t)
        return None

    def _finish_target(self, s: Session, t: Target, state: str, now: datetime, *, error: str | None) -> None:
        t.state = state
        t.finished_at = now
        t.error = error
        t.cancel_requested = False
        t.rate_bps = 0.0
        t.eta_seconds = None
        took = seconds_between(now, t.started_at)
        self.bus.record(
            s, f"client-{state}", deployment_id=t.deployment_id, client_id=t.client_id, mac=t.mac,
            name=t.name, task_id=t.id, error=error, disk=t.disk, bytes=t.bytes_done, seconds=took,
        )  # fmt: skip
        logger.info("task %d (%s): %s%s", t.id, t.mac, state, f": {error}" if error else "")

    def _check_finished(self, s: Session, dep: Deployment, now: datetime) -> None:
        if dep.state not in ACTIVE_DEPLOYMENT:
            return
        states = [t.state for t in dep.targets]
        if any(st in ACTIVE_TARGET for st in states):
            return
        if dep.state == "cancelling":
            dep.state = "cancelled"
        else:
            dep.state = "failed" if "failed" in states or "cancelled" in states else "done"
        dep.finished_at = now
        self.bus.record(
            s, "deployment-finished", deployment_id=dep.id, state=dep.state,
            done=states.count("done"), failed=states.count("failed"), cancelled=states.count("cancelled"),
        )  # fmt: skip
        logger.info("deployment %d finished: %s", dep.id, dep.state)

    def _sweep(self, s: Session, now: datetime) -> None:
        stale_before = now - timedelta(seconds=self.pacing.stale_after())  # server/pacing.py
        # three columns, not whole rows: an inventory is kilobytes of JSON to decode per client
        stale = s.execute(
            select(Client.id, Client.mac, Client.last_seen).where(
                Client.online.is_(True), Client.last_seen < stale_before
            )
        ).all()
        if stale:
            ids = [row.id for row in stale]
            for chunk in range(0, len(ids), 500):
                s.execute(update(Client).where(Client.id.in_(ids[chunk : chunk + 500])).values(online=False))
            self.presence.offline(set(ids))  # their next heartbeat takes the full path: client-seen
        for row in stale:
            self.bus.record(
                s, "client-stale", client_id=row.id, mac=row.mac, last_seen=isoformat(row.last_seen)
            )
        timeout = self.settings.task_timeout
        dead_before = now - timedelta(seconds=timeout)
        for t in s.scalars(
            select(Target).where(Target.state == "running", Target.last_report < dead_before)
        ).all():
            self._finish_target(
                s, t, "failed", now,
                error=f"no report from the agent for {timeout:.0f} s (last at {isoformat(t.last_report)})",
            )  # fmt: skip
            self._check_finished(s, t.deployment, now)

    def _client_view(self, s: Session, c: Client) -> dict[str, Any]:
        active = s.scalars(
            select(Target)
            .where(Target.client_id == c.id, Target.state.in_(ACTIVE_TARGET))
            .order_by(Target.id.desc())
        ).first()
        return self._seen_view(client_view(c, active))
