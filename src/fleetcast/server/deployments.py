"""The admin side of deployments: plan (check everything, store nothing), create, retry, cancel,
and their views."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetcast.errors import (
    FleetcastError,
    ServerError,
    UsageError,
)
from fleetcast.server import plan as planner
from fleetcast.server import presets
from fleetcast.server.core import OrchestratorCore, active_target
from fleetcast.server.db import (
    CaptureRow,
    Client,
    Deployment,
    PersonalizeRow,
    Target,
    utcnow,
)
from fleetcast.server.rowviews import ACTIVE_DEPLOYMENT, deployment_kind, deployment_view

logger = logging.getLogger(__name__)


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


class DeploymentsMixin(OrchestratorCore):
    def plan(self, request: DeploymentRequest) -> Plan:
        """Check everything a deployment needs and compute its assignments; nothing is stored."""
        planner.check_request(request.batch, request.then, request.disk)
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
        planner.check_static_ip(assignments, request.image, self._os_info(request.image))
        opts = mc.MulticastOptions.from_dict(request.multicast, defaults=self.settings.multicast)
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

    def _os_info(self, name: str) -> list[dict[str, Any]]:
        """What capture recorded about the OS of each partition of image ``name`` (may be none)."""
        try:
            areas = self.catalog.store().open(name, lazy=True).areas
        except FleetcastError as exc:
            logger.warning("image %s: its partitions' OS facts are not readable: %s", name, exc)
            return []
        return [a.os_info for a in areas if a.os_info]

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
            kind = deployment_kind(s, old.id)
            if kind == "personalize":
                raise UsageError(
                    f"deployment {deployment_id} re-personalized disks; run fleetcast personalize again",
                    hint="a personalize-only deployment has no image to deploy again",
                )
            if kind == "capture":
                raise UsageError(
                    f"capture {deployment_id} cannot be retried: start a new capture",
                    hint="fleetcast capture CLIENT NAME (a retry would deploy an image that was never made)",
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
        busy = active_target(s, [t.client_id for t in targets])
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
        logger.info("deployment %d: %s to %d clients, batch %d", dep.id, dep.image, len(targets), dep.batch)
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
