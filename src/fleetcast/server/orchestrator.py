"""Deployments and the batch queue.

A deployment has one *target* per client (its id is the agent's ``task_id``). Target states:

    queued ──(heartbeat, a place is free)──▶ running ──(result)──▶ done | failed | cancelled
       └──(cancel)──▶ cancelled                 └──(no report for task_timeout)──▶ failed

At most ``batch`` targets of a deployment are ``running`` at once; a place is taken when the task is
handed out (so never more than ``batch`` clients write at once) and freed by the result. An idle
agent whose target is still ``running`` (it was killed and started again, or lost the task) gets
the task back: with ``resume_chunk`` = its last checkpoint (event ``client-resumed``) or from 0
when it had none (``client-restarted``). A deployment finishes when every target is done, failed or
cancelled. All changes happen under one lock (one server process per database).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, object_session

from fleetcast.disk.rules import parse_rule
from fleetcast.errors import (
    ClientNotFound,
    ConflictError,
    DeploymentNotFound,
    DiskError,
    FleetcastError,
    NotFoundError,
    ServerError,
    TaskNotFound,
    UsageError,
)
from fleetcast.protocol import PHASES, RESULT_STATES, ProgressReport, Task, TaskResult
from fleetcast.server import plan as planner
from fleetcast.server import presets
from fleetcast.server.auth import TOKEN_PREFIX, ForbiddenError, hash_credential, new_secret, same
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
from fleetcast.server.presence import Presence
from fleetcast.server.settings import ServerSettings

logger = logging.getLogger(__name__)

_Row = TypeVar("_Row", Client, Deployment, Target)

ACTIVE_TARGET = ("queued", "running")
TERMINAL_TARGET = ("done", "failed", "cancelled")
ACTIVE_DEPLOYMENT = ("running", "cancelling")


@dataclass(frozen=True)
class DeploymentRequest:
    """What ``fleetcast deploy`` and ``POST /api/deployments`` ask for."""

    image: str
    clients: str | Sequence[str] = "all"
    disk: str = "0"
    batch: int = 1
    name: str | None = None
    ip: str | None = None
    gateway: str | None = None
    dns: Sequence[str] = ()
    grow: bool = False
    then: str = "reboot"
    transport: str = "unicast"  # unicast | multicast | auto (server/multicast.py)
    multicast: dict[str, Any] | None = None  # MulticastOptions.to_dict()
    presets: dict[str, Any] | None = None  # IP list, Windows options (server/presets.py)


@dataclass(frozen=True)
class Plan:
    image: str
    image_size: int
    os_hint: str | None
    disk_rule: str
    assignments: list[planner.Assignment]
    network: planner.Network
    transport: str = "unicast"
    transport_reason: str = ""
    multicast: dict[str, Any] | None = None
    shown: dict[str, Any] | None = None  # presets.Presets.apply: ip_source, conflicts, notes, windows
    stored: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return (self.shown or {}) | {
            "image": self.image,
            "image_size": self.image_size,
            "disk": self.disk_rule,
            "transport": self.transport,
            "transport_reason": self.transport_reason,
            "multicast": self.multicast,
            "gateway": self.network.gateway,
            "dns": list(self.network.dns),
            "clients": [
                {"n": a.n, "client_id": a.client_id, "mac": a.mac, "name": a.name, "ip": a.ip}
                for a in self.assignments
            ],
        }


def derive(credential: str, key: bytes) -> str:
    """The credential that replaces ``credential`` on re-enrollment (HMAC with the server's key)."""
    digest = hmac.new(key, credential.encode(), hashlib.sha256).digest()
    return TOKEN_PREFIX + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _proves(credential: str, current_hash: str, key: bytes) -> bool:
    """``credential`` is the client's current one, or the one before it (a retried enrollment)."""
    return same(hash_credential(credential), current_hash) or same(
        hash_credential(derive(credential, key)), current_hash
    )


def _get(s: Session, model: type[_Row], row_id: int) -> _Row | None:
    """``s.get`` for an id from outside: one out of the column's range is simply not there (instead of
    an OverflowError from SQLite or a DataError from PostgreSQL)."""
    return s.get(model, row_id) if 0 < row_id <= MAX_INTEGER else None


def _seconds_between(later: datetime, earlier: datetime | None) -> float | None:
    return (later - earlier).total_seconds() if earlier is not None else None


def target_view(t: Target) -> dict[str, Any]:
    """One client of a deployment; the first nine keys are what ``deploy --wait --json`` prints."""
    return {
        "mac": t.mac,
        "name": t.name,
        "ip": t.ip,
        "disk": t.disk,
        "state": t.state,
        "bytes": t.bytes_done,
        "started_at": isoformat(t.started_at),
        "finished_at": isoformat(t.finished_at),
        "error": t.error,
        "n": t.position,
        "task_id": t.id,
        "client_id": t.client_id,
        "phase": t.phase,
        "bytes_total": t.bytes_total,
        "rate_bps": t.rate_bps,
        "eta_seconds": t.eta_seconds,
        "checkpoint_chunk": t.checkpoint_chunk,
        "attempt": t.attempt,
        "resumes": t.resumes,
        "restarts": t.restarts,
        "action": t.action,
        "changes": list(t.changes or []),
    }


def deployment_kind(s: Session | None, deployment_id: int) -> str:
    """ "capture" (a captures row), "personalize" (a personalizations row) or "deploy", as _task_dict
    hands its tasks out."""
    if s is None:
        return "deploy"
    if s.scalars(select(CaptureRow.id).where(CaptureRow.deployment_id == deployment_id)).first() is not None:
        return "capture"
    by_dep = PersonalizeRow.deployment_id == deployment_id
    return (
        "personalize" if s.scalars(select(PersonalizeRow.id).where(by_dep)).first() is not None else "deploy"
    )


def deployment_view(d: Deployment, *, with_clients: bool = True, kind: str | None = None) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for t in d.targets:
        counts[t.state] = counts.get(t.state, 0) + 1
    view: dict[str, Any] = {
        "deployment": d.id,
        "image": d.image,
        "state": d.state,
        "disk": d.disk_rule,
        "batch": d.batch,
        "name": d.name_pattern,
        "ip": d.ip_range,
        "gateway": d.gateway,
        "dns": list(d.dns or []),
        "grow": d.grow,
        "then": d.then,
        "transport": d.transport,
        "created_at": isoformat(d.created_at),
        "finished_at": isoformat(d.finished_at),
        "created_by": d.created_by,
        "counts": counts,
        "kind": kind or deployment_kind(object_session(d), d.id),
    }
    if with_clients:
        view["clients"] = [target_view(t) for t in d.targets]
    return view


class Orchestrator:
    def __init__(self, db: Database, bus: EventBus, catalog: ImageCatalog, settings: ServerSettings) -> None:
        self.db = db
        self.bus = bus
        self.catalog = catalog
        self.settings = settings
        self._lock = threading.RLock()
        bus.attach(db.sessions)
        self.presence = Presence(db.sessions)

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._lock, self.db.transaction() as session:
            yield session

    # ---- admin side ---------------------------------------------------------------------------

    def plan(self, request: DeploymentRequest) -> Plan:
        """Check everything a deployment needs and compute its assignments; nothing is stored."""
        planner.check_batch(request.batch)
        planner.check_then(request.then)
        try:
            parse_rule(request.disk)
        except DiskError as exc:
            raise UsageError(exc.message, hint=exc.hint) from exc
        info = self.catalog.info(request.image)
        addresses: dict[int, str] = {}
        with self.db.sessions() as session:
            enrolled = []
            for c in session.scalars(select(Client).order_by(Client.mac)):
                enrolled.append(
                    planner.PlanClient(c.id, c.mac, tuple(c.inventory.get("macs", ()) or ()), c.hostname)
                )
                addresses[c.id] = c.address
            planned = presets.planned_addresses(session)  # addresses running deployments will write
        chosen = planner.select_clients(request.clients, enrolled)
        max_len = planner.WINDOWS_NAME_MAX if info.os_hint == "windows" else planner.HOSTNAME_MAX
        pre = presets.Presets.from_dict(request.presets)
        ip_range, gateway, dns = pre.range_args(request.ip, request.gateway, request.dns)
        assignments, network = planner.make_plan(
            chosen,
            name_pattern=request.name,
            ip_range=ip_range,
            gateway=gateway,
            dns=dns,
            max_name_length=max_len,
        )
        assignments, network, shown, stored = pre.apply(
            assignments, network, gateway=request.gateway, dns=request.dns, enrolled=enrolled,
            addresses=addresses, planned=planned, os_hint=info.os_hint, data_dir=self.settings.data_dir,
            max_name_length=max_len,
        )  # fmt: skip
        from fleetcast.server import boot  # names/IPs registered by MAC (fleetcast clients import)

        with self.db.sessions() as session:
            assignments = boot.apply_registrations(
                session, assignments, names=not request.name, ips=not (ip_range or pre.ip_list),
                max_name_length=max_len,
            )  # fmt: skip
        # registered addresses are checked too (presets.conflicts)
        shown["conflicts"] = presets.conflicts(assignments, enrolled, addresses, planned)
        from fleetcast.server import multicast as mc

        planner.check_assignments(assignments, network, info.os_hint)  # whatever gave names and IPs
        opts = mc.MulticastOptions.from_dict(request.multicast)
        mc.check_options(request.transport, opts)
        transport, why = mc.resolve_transport(
            request.transport, batch=request.batch, clients=len(assignments), opts=opts
        )
        return Plan(
            request.image, info.disk_size, info.os_hint, request.disk.strip(), assignments, network,
            transport, why, opts.to_dict() if transport == "multicast" else None, shown, stored,
        )  # fmt: skip

    def create(self, request: DeploymentRequest, *, actor: str, address: str) -> dict[str, Any]:
        plan = self.plan(request)
        with self._tx() as s:
            dep = Deployment(
                image=plan.image,
                image_size=plan.image_size,
                disk_rule=plan.disk_rule,
                batch=request.batch,
                name_pattern=request.name,
                ip_range=request.ip.strip() if request.ip else None,
                gateway=plan.network.gateway,
                dns=list(plan.network.dns),
                grow=request.grow,
                then=request.then,
                transport=plan.transport,
                multicast=plan.multicast or {},
                image_id=self._image_id(plan.image),
                state="running",
                created_at=utcnow(),
                created_by=actor,
            )
            targets = [
                Target(client_id=a.client_id, position=a.n, mac=a.mac, name=a.name, ip=a.ip, state="queued")
                for a in plan.assignments
            ]
            view = self._start(
                s,
                dep,
                targets,
                actor=actor,
                address=address,
                action="deployment-create",
                detail=plan.to_dict(),
            )
            presets.store(s, dep.id, plan.stored or {})
            return view | presets.view_fields(s, dep.id)

    def _image_id(self, name: str) -> str:
        """The id of image ``name`` as it is now (blake3 of its manifest); "" when unreadable."""
        try:
            return str(self.catalog.store().open(name, lazy=True).image_id or "")
        except FleetcastError as exc:
            logger.warning("image %s: no id recorded for the deployment: %s", name, exc)
            return ""

    def retry(self, deployment_id: int, *, actor: str, address: str) -> dict[str, Any]:
        """A new deployment of the failed clients of a finished one: same image, disk rule, batch,
        network and post action; each client keeps its number, name and IP."""
        with self._tx() as s:
            old = self._deployment(s, deployment_id)
            if deployment_kind(s, old.id) == "personalize":
                raise UsageError(
                    f"deployment {deployment_id} re-personalized disks; run fleetcast personalize again",
                    hint="a personalize-only deployment has no image to deploy again",
                )
            if old.state in ACTIVE_DEPLOYMENT:
                raise ServerError(
                    f"deployment {deployment_id} is still {old.state}; its failed clients can be retried "
                    "when it has finished",
                    hint=f"wait for it or cancel it: POST /api/deployments/{deployment_id}/cancel",
                )
            failed = [t for t in old.targets if t.state == "failed"]
            if not failed:
                raise UsageError(f"deployment {deployment_id} has no failed clients; nothing to retry")
            self.catalog.info(old.image)  # ImageNotFound if it was deleted since
            dep = Deployment(
                image=old.image, image_size=old.image_size, disk_rule=old.disk_rule, batch=old.batch,
                name_pattern=old.name_pattern, ip_range=old.ip_range, gateway=old.gateway,
                dns=list(old.dns or []), grow=old.grow, then=old.then, state="running",
                transport=old.transport, multicast=dict(old.multicast or {}),
                image_id=self._image_id(old.image), created_at=utcnow(), created_by=actor,
            )  # fmt: skip
            targets = [
                Target(
                    client_id=t.client_id,
                    position=t.position,
                    mac=t.mac,
                    name=t.name,
                    ip=t.ip,
                    state="queued",
                )
                for t in failed
            ]
            detail = {"retry_of": deployment_id, "clients": [t.mac for t in failed]}
            view = self._start(
                s, dep, targets, actor=actor, address=address, action="deployment-retry", detail=detail
            )
            presets.store(s, dep.id, presets.stored_options(s, old.id))  # the same Windows options
            return view | presets.view_fields(s, dep.id)

    def _start(
        self, s: Session, dep: Deployment, targets: list[Target], *, actor: str, address: str,
        action: str, detail: dict[str, Any],
    ) -> dict[str, Any]:  # fmt: skip
        """Store ``dep`` with ``targets`` queued, unless one of their clients is in a running deployment."""
        ids = [t.client_id for t in targets]
        busy = s.execute(
            select(Target.mac, Target.deployment_id)
            .join(Deployment)
            .where(Target.client_id.in_(ids), Target.state.in_(ACTIVE_TARGET))
            .where(Deployment.state.in_(ACTIVE_DEPLOYMENT))
            .order_by(Target.mac)
        ).first()
        if busy is not None:
            raise ServerError(
                f"client {busy.mac} is already in deployment {busy.deployment_id}, which is still running",
                hint=f"wait for it or cancel it: POST /api/deployments/{busy.deployment_id}/cancel",
            )
        s.add(dep)
        s.flush()
        dep.targets.extend(targets)
        s.flush()
        self._audit(
            s, actor=actor, address=address, action=action, target=f"deployment {dep.id}", detail=detail
        )
        self.bus.record(
            s,
            "deployment-created",
            deployment_id=dep.id,
            image=dep.image,
            batch=dep.batch,
            clients=len(dep.targets),
        )
        for t in dep.targets:
            self.bus.record(
                s, "client-queued", deployment_id=dep.id, client_id=t.client_id, mac=t.mac, name=t.name
            )
        logger.info("deployment %d: %s to %d clients, batch %d", dep.id, dep.image, len(ids), dep.batch)
        return deployment_view(dep)

    def cancel(self, deployment_id: int, *, actor: str, address: str) -> dict[str, Any]:
        with self._tx() as s:
            dep = self._deployment(s, deployment_id)
            if dep.state not in ACTIVE_DEPLOYMENT:
                raise ServerError(f"deployment {deployment_id} is already {dep.state}; nothing to cancel")
            now = utcnow()
            if dep.state == "running":
                dep.state = "cancelling"
                self._audit(
                    s, actor=actor, address=address, action="deployment-cancel",
                    target=f"deployment {dep.id}", detail={},
                )  # fmt: skip
                self.bus.record(s, "deployment-cancelled", deployment_id=dep.id)
            for t in dep.targets:
                if t.state == "queued":
                    self._finish_target(s, t, "cancelled", now, error="cancelled before it started")
                elif t.state == "running":
                    t.cancel_requested = True
            self._check_finished(s, dep, now)
            return deployment_view(dep)

    def deployment(self, deployment_id: int) -> dict[str, Any]:
        with self.db.sessions() as s:
            return deployment_view(self._deployment(s, deployment_id)) | presets.view_fields(s, deployment_id)

    def deployments(self) -> list[dict[str, Any]]:
        with self.db.sessions() as s:
            deps = s.scalars(select(Deployment).order_by(Deployment.id.desc()))
            captures = set(s.scalars(select(CaptureRow.deployment_id)))
            personal = set(s.scalars(select(PersonalizeRow.deployment_id)))
            return [
                deployment_view(
                    d, with_clients=False,
                    kind="capture" if d.id in captures else "personalize" if d.id in personal else "deploy",
                )
                for d in deps
            ]  # fmt: skip

    def clients(self, query: ClientQuery | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of clients in MAC order, filtered, in two queries (clients, their active
        targets), not one per client; and the ``after`` of the next page (None: this is the last)."""
        q = query or ClientQuery()
        with self.db.sessions() as s:
            stmt = select(Client).order_by(Client.mac)
            if q.after:
                stmt = stmt.where(Client.mac > q.after)
            if q.online is not None:
                stmt = stmt.where(Client.online.is_(q.online))
            if q.search:
                like = "%" + q.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                stmt = stmt.where(
                    Client.mac.ilike(like, escape="\\")
                    | Client.hostname.ilike(like, escape="\\")
                    | Client.address.ilike(like, escape="\\")
                )
            busy = select(Target.client_id).where(Target.state.in_(ACTIVE_TARGET))
            if q.state == "idle":
                stmt = stmt.where(Client.id.not_in(busy))
            elif q.state is not None:
                stmt = stmt.where(Client.id.in_(busy.where(Target.state == q.state)))
            if q.limit is not None:
                stmt = stmt.limit(q.limit + 1)
            rows = list(s.scalars(stmt))
            more = q.limit is not None and len(rows) > q.limit
            rows = rows[: q.limit] if q.limit is not None else rows
            active: dict[int, Target] = {}
            ids = [c.id for c in rows]
            targets = select(Target).where(Target.state.in_(ACTIVE_TARGET)).order_by(Target.id)
            if q.limit is not None:
                targets = targets.where(Target.client_id.in_(ids))
            for t in s.scalars(targets):
                active[t.client_id] = t  # the newest wins, as in _client_view
            views = [self._seen_view(client_view(c, active.get(c.id))) for c in rows]
            if q.state is not None:  # a target may have changed state between the two queries
                views = [v for v in views if v["state"] == q.state]
            return views, (rows[-1].mac if more and rows else None)

    def _seen_view(self, view: dict[str, Any]) -> dict[str, Any]:
        """``view`` with the heartbeat noted in memory but not yet written (server/presence.py)."""
        pending = self.presence.pending(view["id"])
        if pending is not None and (view["last_seen"] is None or isoformat(pending[0]) > view["last_seen"]):
            view["last_seen"] = isoformat(pending[0])
            if pending[1]:
                view["address"] = pending[1]
        return view

    def client(self, client_id: int) -> dict[str, Any]:
        with self.db.sessions() as s:
            c = _get(s, Client, client_id)
            if c is None:
                raise NotFoundError(f"client {client_id} does not exist", hint="GET /api/clients lists them")
            return self._client_view(s, c)

    def revoke(self, client_id: int, *, actor: str, address: str) -> dict[str, Any]:
        """Forget the client's credential: its agent is refused from now on, and the machine may
        enroll again (keeping its id, its history and a running task, which is handed back)."""
        with self._tx() as s:
            c = _get(s, Client, client_id)
            if c is None:
                raise ClientNotFound(f"client {client_id} does not exist", hint="GET /api/clients lists them")
            c.credential_hash = None
            self._audit(s, actor=actor, address=address, action="client-revoke",
                        target=f"client {c.id} ({c.mac})", detail={})  # fmt: skip
            logger.info("client %s (%d): credential revoked by %s", c.mac, c.id, actor)
            return self._client_view(s, c)

    def delete_client(self, client_id: int, *, actor: str, address: str) -> dict[str, Any]:
        """Forget a client entirely (issue 12 item 2): its row, its credential and its entries in
        finished deployments (their event log and the audit keep its MAC). Refused (409) while it is
        queued or running in a deployment. The machine enrolls again as a new client."""
        with self._tx() as s:
            c = _get(s, Client, client_id)
            if c is None:
                raise ClientNotFound(f"client {client_id} does not exist", hint="GET /api/clients lists them")
            active = s.execute(
                select(Target.deployment_id, Target.state)
                .where(Target.client_id == c.id, Target.state.in_(ACTIVE_TARGET))
                .order_by(Target.deployment_id)
            ).first()
            if active is not None:
                raise ConflictError(
                    f"client {c.mac} (id {c.id}) is {active.state} in deployment {active.deployment_id}",
                    hint=f"cancel it first: POST /api/deployments/{active.deployment_id}/cancel",
                )
            targets = list(s.scalars(select(Target).where(Target.client_id == c.id)))
            deployments = sorted({t.deployment_id for t in targets})
            view = self._client_view(s, c)
            for t in targets:
                s.delete(t)
            s.flush()  # the targets first: no relationship tells the unit of work their order
            s.delete(c)
            self._audit(s, actor=actor, address=address, action="client-delete",
                        target=f"client {client_id} ({view['mac']})",
                        detail={"hostname": view["hostname"], "deployments": deployments})  # fmt: skip
            logger.info("client %s (%d): deleted by %s", view["mac"], client_id, actor)
        self.presence.offline({client_id})
        return view

    def audit(
        self, limit: int = 1000, *, before: int | None = None, action: str | None = None,
        actor: str | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Newest first; ``before`` = an id: the page older than it (the last id of the previous
        page); ``action`` / ``actor`` filter exactly."""
        query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
        if before is not None:
            query = query.where(AuditRow.id < min(before, MAX_INTEGER))
        if action:
            query = query.where(AuditRow.action == action)
        if actor:
            query = query.where(AuditRow.actor == actor)
        with self.db.sessions() as s:
            rows = s.scalars(query)
            return [
                {
                    "id": r.id,
                    "ts": isoformat(r.ts),
                    "actor": r.actor,
                    "address": r.address,
                    "action": r.action,
                    "target": r.target,
                    "detail": r.detail,
                }
                for r in rows
            ]

    # ---- agent side ---------------------------------------------------------------------------

    def enroll(
        self, inventory: dict[str, Any], *, address: str, credential: str | None = None, key: bytes = b""
    ) -> tuple[int, str]:
        """A credential for the machine of ``inventory``. Its identity is the MAC it booted from
        (``boot_mac``) or else its first MAC. First enrollment wins: a known identity enrolls again
        only with its current credential, or after an admin revoked it (``fleetcast clients revoke``).
        A secondary MAC that is another client's identity is dropped (it cannot take that client's
        place in a ``--clients MAC`` deployment)."""
        macs = [planner.normalize_mac(m) for m in inventory.get("macs", [])]
        if not macs:
            raise UsageError("inventory.macs is empty: the agent must report at least one MAC address")
        boot = inventory.get("boot_mac")
        if boot:
            boot_mac = planner.normalize_mac(boot)
            macs = [boot_mac, *(m for m in macs if m != boot_mac)]
        new_credential = new_secret()
        generation = self.presence.credentials_generation
        with self._tx() as s:
            client = s.scalars(select(Client).where(Client.mac == macs[0])).first()
            others = set(s.scalars(select(Client.mac).where(Client.mac.in_(macs[1:]))))
            if others:
                logger.warning("enrollment of %s: dropping MACs of other clients %s", macs[0], sorted(others))
                macs = [macs[0], *(m for m in macs[1:] if m not in others)]
            inventory = {**inventory, "macs": macs}
            again = client is not None
            now = utcnow()
            if client is None:
                client = Client(mac=macs[0], enrolled_at=now)
                s.add(client)
            elif client.credential_hash is not None and not (
                credential and _proves(credential, client.credential_hash, key)
            ):
                raise ConflictError(
                    f"client {client.mac} (id {client.id}) is already enrolled; enrolling it again needs "
                    "its current credential or an admin's approval",
                    hint=f"if this is the same machine, run `fleetcast clients revoke {client.id}` "
                    "and start the agent again",
                )
            # derived from the presented credential: a retried request whose answer was lost gets
            # the same new credential again instead of a 409
            credential = derive(credential, key) if again and credential else new_credential
            client.inventory = inventory
            client.hostname = str(inventory.get("hostname", ""))
            client.credential_hash = hash_credential(credential)
            client.address = address
            client.last_seen = now
            client.online = True
            s.flush()
            self.bus.record(
                s,
                "client-enrolled",
                client_id=client.id,
                mac=client.mac,
                address=address,
                hostname=client.hostname,
                again=again,
            )
            logger.info("client %s (%s) enrolled from %s", client.mac, client.id, address)
            client_id = client.id
        # committed: its heartbeats may take the fast path at once (a re-enrollment changed a
        # credential, so the generation moved and this is dropped: the first heartbeat looks it up)
        self.presence.remember(hash_credential(credential), client_id, generation)
        self.presence.online(client_id)
        return client_id, credential

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
        return {"task": None, "cancel": False, "interval": self.settings.heartbeat_interval}

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
                "interval": self.settings.heartbeat_interval,
            }
            if task_id is not None:
                t = _get(s, Target, task_id)
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

    # ---- internals ----------------------------------------------------------------------------

    def _deployment(self, s: Session, deployment_id: int) -> Deployment:
        dep = _get(s, Deployment, deployment_id)
        if dep is None:
            raise DeploymentNotFound(
                f"deployment {deployment_id} does not exist", hint="GET /api/deployments lists them"
            )
        return dep

    def _client(self, s: Session, client_id: int) -> Client:
        client = _get(s, Client, client_id)
        if client is None:
            raise NotFoundError(f"client {client_id} does not exist")
        return client

    def _task(self, s: Session, client_id: int, task_id: int) -> Target:
        t = _get(s, Target, task_id)
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
        took = _seconds_between(now, t.started_at)
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
        stale_before = now - timedelta(seconds=self.settings.stale_after)
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


CLIENT_STATES = ("idle", "queued", "running")
MAX_PAGE = 5000


@dataclass(frozen=True)
class ClientQuery:
    """``GET /api/clients?limit=&after=&online=&state=&q=``: a page of at most ``limit`` clients
    after MAC ``after``; ``q`` is a case-insensitive substring of the MAC, host name or address."""

    limit: int | None = None
    after: str | None = None
    online: bool | None = None
    state: str | None = None
    search: str | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and not 1 <= self.limit <= MAX_PAGE:
            raise UsageError(f"limit must be 1-{MAX_PAGE}, found {self.limit}")
        if self.state is not None and self.state not in CLIENT_STATES:
            raise UsageError(f"state {self.state!r} is not one of {', '.join(CLIENT_STATES)}")
        if self.after is not None:
            object.__setattr__(self, "after", planner.normalize_mac(self.after))


def client_view(c: Client, active: Target | None) -> dict[str, Any]:
    """One client of ``GET /api/clients``; ``active`` is its newest queued or running target."""
    inv = c.inventory or {}
    return {
        "id": c.id,
        "mac": c.mac,
        "macs": inv.get("macs", [c.mac]),
        "hostname": c.hostname,
        "address": c.address,
        "online": c.online,
        "last_seen": isoformat(c.last_seen),
        "enrolled_at": isoformat(c.enrolled_at),
        "state": "idle" if active is None else active.state,
        "deployment_id": active.deployment_id if active else None,
        "task_id": active.id if active else None,
        "phase": active.phase if active else None,
        "cpu": inv.get("cpu"),
        "ram_bytes": inv.get("ram_bytes"),
        "dmi": inv.get("dmi"),
        "disks": inv.get("disks", []),
        "agent_version": inv.get("agent_version"),
        "windows": inv.get("windows", []),  # Windows installations on its disks (issue 13 SID audit)
    }
