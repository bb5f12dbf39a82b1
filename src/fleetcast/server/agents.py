"""The agent side of the orchestrator: enroll, authenticate, heartbeat (the fast path from memory and
the full one), progress and results; the start-up grace period and the sweep."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from fleetcast.errors import (
    UsageError,
)
from fleetcast.protocol import PHASES, RESULT_STATES, ProgressReport, TaskResult
from fleetcast.server import plan as planner
from fleetcast.server.auth import hash_credential
from fleetcast.server.core import OrchestratorCore, get_row
from fleetcast.server.db import (
    Client,
    Deployment,
    Target,
    utcnow,
)
from fleetcast.server.rowviews import TERMINAL_TARGET

logger = logging.getLogger(__name__)


class AgentsMixin(OrchestratorCore):
    def authenticate(self, credential: str) -> int:
        from fleetcast.server.auth import AuthError

        digest = hash_credential(credential)
        client_id = self.presence.client_for(digest)
        if client_id is not None:
            return client_id
        generation = self.presence.credentials_generation
        with self.db.sessions() as s:
            client_id = s.scalars(select(Client.id).where(Client.credential_hash == digest)).first()
        if client_id is None:
            raise AuthError(
                "the agent credential is not known (or was replaced by a newer enrollment)",
                hint="enroll again with the enrollment token",
            )
        self.presence.remember(digest, client_id, generation)
        return client_id

    def cached_client(self, credential: str) -> int | None:
        """The client id of ``credential`` if the presence cache knows it (no database, no thread)."""
        return self.presence.client_for(hash_credential(credential))

    def fast_heartbeat(
        self, client_id: int, *, task_id: int | None, inventory: bool, address: str
    ) -> dict[str, Any] | None:
        """The answer to an idle, online client's heartbeat without the database (server/presence.py),
        or None when it needs the full path (a task id, an inventory, busy, offline, or not known)."""
        if task_id is not None or inventory or not self.presence.idle(client_id):
            self.presence.counts["full"] += 1
            return None
        self.presence.counts["fast"] += 1
        self.presence.seen(client_id, utcnow(), address)
        return {"task": None, "cancel": False, "interval": self.pacing.interval()}

    def task_image(self, client_id: int) -> str | None:
        """The image of the client's running task: the only one its agent may fetch (issue 12 item 3)."""
        with self.db.sessions() as s:
            return s.scalars(
                select(Deployment.image)
                .join(Target)
                .where(Target.client_id == client_id, Target.state == "running")
                .order_by(Target.id.desc())
            ).first()

    def heartbeat(
        self, client_id: int, *, task_id: int | None, inventory: dict[str, Any] | None, address: str
    ) -> dict[str, Any]:
        with self._tx() as s:
            now = utcnow()
            client = self._client(s, client_id)
            self._seen(s, client, now, address)
            if inventory is not None:
                client.inventory = {**inventory, "macs": client.inventory.get("macs", [client.mac])}
                client.hostname = str(inventory.get("hostname", client.hostname))
            reply: dict[str, Any] = {
                "task": None,
                "cancel": False,
                "interval": self.pacing.interval(),
            }
            if task_id is not None:
                t = get_row(s, Target, task_id)
                if t is None or t.client_id != client.id:
                    reply["cancel"] = True
                    return reply
                if t.state == "running":
                    t.last_report = now
                    reply["cancel"] = t.cancel_requested
                else:
                    reply["cancel"] = t.state in ("failed", "cancelled", "queued")
                return reply
            running = s.scalars(
                select(Target)
                .where(Target.client_id == client.id, Target.state == "running")
                .order_by(Target.id)
            ).first()
            if running is not None:
                if running.cancel_requested:  # the agent is idle, so it has stopped
                    self._finish_target(s, running, "cancelled", now, error="cancelled")
                    self._check_finished(s, running.deployment, now)
                else:
                    reply["task"] = self._hand_back(s, running, now)
                    return reply
            reply["task"] = self._next_task(s, client, now)
            return reply

    def progress(self, client_id: int, task_id: int, report: ProgressReport) -> dict[str, Any]:
        if report.phase not in PHASES:
            raise UsageError(f"phase {report.phase!r} is not one of {', '.join(PHASES)}")
        with self._tx() as s:
            now = utcnow()
            t = self._task(s, client_id, task_id)
            client = self._client(s, client_id)
            self._seen(s, client, now, None)
            if t.state != "running":
                return {"cancel": True}
            t.last_report = now
            t.phase = report.phase
            t.bytes_done = max(0, report.bytes_done)
            t.bytes_total = max(0, report.bytes_total)
            t.rate_bps = max(0.0, report.rate_bps)
            t.eta_seconds = report.eta_seconds
            if report.checkpoint_chunk is not None:
                t.checkpoint_chunk = max(0, report.checkpoint_chunk)
            if report.disk:
                t.disk = report.disk
            fields = {"name": t.name, "task_id": t.id}
            if report.phase in ("writing", "capturing") and t.started_at is None:
                t.started_at = now
                self.bus.record(
                    s, "client-started", deployment_id=t.deployment_id, client_id=t.client_id, mac=t.mac,
                    disk=t.disk, **fields,
                )  # fmt: skip
            self.bus.record(
                s,
                "client-progress",
                deployment_id=t.deployment_id,
                client_id=t.client_id,
                mac=t.mac,
                phase=t.phase,
                bytes_done=t.bytes_done,
                bytes_total=t.bytes_total,
                rate_bps=t.rate_bps,
                eta_seconds=t.eta_seconds,
                checkpoint_chunk=t.checkpoint_chunk,
                **fields,
            )
            return {"cancel": t.cancel_requested}

    def result(self, client_id: int, task_id: int, result: TaskResult) -> dict[str, Any]:
        if result.state not in RESULT_STATES:
            raise UsageError(f"result state {result.state!r} is not one of {', '.join(RESULT_STATES)}")
        if result.action is not None:
            planner.check_then(result.action)
        with self._tx() as s:
            now = utcnow()
            t = self._task(s, client_id, task_id)
            client = self._client(s, client_id)
            self._seen(s, client, now, None)
            if t.state in TERMINAL_TARGET:
                logger.info("task %d: late result %s ignored (already %s)", t.id, result.state, t.state)
                return {}
            if result.disk:
                t.disk = result.disk
            t.action = result.action
            t.changes = list(result.changes)
            error = result.error
            if result.state == "failed" and not error:
                error = "the agent reported a failure without a reason"
            if result.state == "done":
                t.bytes_done = max(t.bytes_done, t.bytes_total)
                if t.started_at is None:  # the agent never sent a writing report
                    t.started_at = t.assigned_at or now
            self._finish_target(s, t, result.state, now, error=error if result.state != "done" else None)
            self._check_finished(s, t.deployment, now)
            return {}

    def on_start(self) -> None:
        """After a server restart, agents that kept writing while it was down get a fresh grace
        period: their tasks are timed out only if they stay silent from now on."""
        with self._tx() as s:
            now = utcnow()
            running = s.scalars(select(Target).where(Target.state == "running")).all()
            for t in running:
                t.last_report = now
            for client in s.scalars(select(Client).where(Client.online.is_(True))).all():
                client.last_seen = max(
                    client.last_seen, now - timedelta(seconds=self.settings.stale_after / 2)
                )
            if running:
                logger.info("server start: %d task(s) still running; waiting for their agents", len(running))

    def sweep(self) -> None:
        """Stale-heartbeat detection and task timeouts, from the app's background loop (every
        ``min(5 s, stale_after / 2, task_timeout / 2)``; no longer on every heartbeat: at 2,000
        agents that was two extra queries per heartbeat). The heartbeats noted in memory are
        written first, so a client that beat is never taken for silent."""
        self.presence.flush()
        with self._tx() as s:
            self._sweep(s, utcnow())
