"""Response models of the admin API: what ``/api/openapi.json`` documents for each answer.

They describe the dicts that orchestrator/images build (docs/server.md lists the keys); unknown keys
are kept (``extra="allow"``), so adding a key to a view never drops it from an answer.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from fleetcast.server.images import ImageInfo


class _View(BaseModel):
    model_config = ConfigDict(extra="allow")


class ClientView(_View):
    id: int
    mac: str
    macs: list[str]
    hostname: str
    address: str
    online: bool
    last_seen: str | None
    enrolled_at: str | None
    state: str
    deployment_id: int | None
    task_id: int | None
    phase: str | None
    cpu: dict[str, Any] | None
    ram_bytes: int | None
    dmi: dict[str, Any] | None
    disks: list[dict[str, Any]]
    agent_version: str | None
    windows: list[dict[str, Any]] = []  # protocol.WindowsInstall: disk, partition, machine_sid, ...


class ClientList(_View):
    clients: list[ClientView]
    next: str | None = None  # with ?limit=: the ``after`` of the next page; null on the last


ImageView = ImageInfo  # the catalog's dataclass is the shape


class ImageList(_View):
    images: list[ImageView]


class PlanClient(_View):
    n: int
    client_id: int
    mac: str
    name: str | None
    ip: str | None


class PlanView(_View):
    image: str
    image_size: int
    disk: str
    gateway: str | None
    dns: list[str]
    clients: list[PlanClient]


class TargetView(_View):
    mac: str
    name: str | None
    ip: str | None
    disk: str | None
    state: str
    bytes: int
    started_at: str | None
    finished_at: str | None
    error: str | None


class DeploymentView(_View):
    deployment: int
    image: str
    state: str
    disk: str
    batch: int
    created_at: str | None
    finished_at: str | None
    counts: dict[str, int]
    clients: list[TargetView] | None = None


class DeploymentList(_View):
    deployments: list[DeploymentView]


class EventList(_View):
    events: list[dict[str, Any]]


class AuditList(_View):
    audit: list[dict[str, Any]]
