"""Network boot on the server side: per-MAC iPXE scripts and GRUB configs, the boot environment's files,
the TFTP root over HTTP (UEFI HTTP boot), clients registered by MAC before their first boot, and the
lab's first-boot reports.

Routes (docs/boot-chain.md):

- ``GET /boot/ipxe?mac=MAC``: iPXE script; ``GET /boot/grub?mac=MAC``: GRUB config (Secure Boot chain).
  Unauthenticated (firmware sends no token); they hand out the enrollment token, as any PXE
  deployment server does: serve DHCP only on a network you trust.
- ``GET /boot/file/vmlinuz``, ``/boot/file/initrd.img``: the boot environment.
- ``GET /boot/tftp/NAME``: the TFTP root's boot files over HTTP.
- ``POST /api/lab/report`` (unauthenticated; what lab/golden.py's first-boot unit sends),
  ``GET /api/lab/reports`` (admin).
- ``GET/POST /api/registrations``, ``POST /api/registrations/import``, ``DELETE /api/registrations/MAC``
  (admin).

Tables ``registrations`` and ``lab_reports`` are created by :func:`install` on an existing database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Boolean, Integer, String, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from fleetcast.errors import ConflictError, NotFoundError, UsageError
from fleetcast.netboot import roster
from fleetcast.netboot.scripts import INITRD, KERNEL, BootAction, chain_script, grub_config, ipxe_script
from fleetcast.server.auth import Tokens
from fleetcast.server.db import Base, Client, Database, Deployment, Target, isoformat, utcnow
from fleetcast.server.plan import Assignment, normalize_mac

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = 24  # a registered IP without /PREFIX
ACTIVE_TARGETS = ("queued", "running")
ACTIVE_DEPLOYMENTS = ("running", "cancelling")
BOOTENV_CACHE = Path("/var/cache/fleetcast/bootenv")


class RegistrationRow(Base):
    """A client registered by MAC (``fleetcast clients register`` / ``import``)."""

    __tablename__ = "registrations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mac: Mapped[str] = mapped_column(String(17), unique=True, index=True)
    name: Mapped[str | None] = mapped_column(String(255), unique=True, default=None)
    ip: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    boot: Mapped[str] = mapped_column(String(16), default="auto")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LabReportRow(Base):
    """What a deployed lab machine said on its first boot (one row per MAC, the newest wins)."""

    __tablename__ = "lab_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mac: Mapped[str] = mapped_column(String(17), unique=True, index=True)
    hostname: Mapped[str] = mapped_column(String(255), default="")
    ip: Mapped[str] = mapped_column(String(64), default="")
    machine_id: Mapped[str] = mapped_column(String(64), default="")
    secure_boot: Mapped[bool] = mapped_column(Boolean, default=False)
    address: Mapped[str] = mapped_column(String(64), default="")
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


@dataclass(frozen=True)
class BootConfig:
    """Set by ``fleetcast serve`` (:func:`configure`). ``server_url`` None: the URL the client used.
    ``bootenv_dir`` None: the newest complete entry of the boot-environment cache.
    ``on_registrations``: called with the Secure Boot MACs when registrations change (dnsmasq tags)."""

    server_url: str | None = None
    bootenv_dir: Path | None = None
    on_registrations: Callable[[tuple[str, ...]], None] | None = None


def newest_bootenv(cache: Path = BOOTENV_CACHE) -> Path | None:
    """The newest cache entry holding vmlinuz, initrd.img and manifest.json."""
    try:
        entries = [
            p
            for p in cache.iterdir()
            if not p.name.startswith((".", "base-"))
            and all((p / f).is_file() for f in (KERNEL, INITRD, "manifest.json"))
        ]
    except OSError:
        return None
    return max(entries, key=lambda p: (p / "manifest.json").stat().st_mtime, default=None)


def boot_action(s: Session, mac: str) -> BootAction:
    """What the machine with ``mac`` should boot (see netboot.scripts.BootAction)."""
    client = s.scalars(select(Client).where(Client.mac == mac)).first()
    if client is None:
        return BootAction.REGISTER
    active = s.scalars(
        select(Target.id)
        .join(Deployment)
        .where(
            Target.client_id == client.id,
            Target.state.in_(ACTIVE_TARGETS),
            Deployment.state.in_(ACTIVE_DEPLOYMENTS),
        )
    ).first()
    if active is not None:
        return BootAction.DEPLOY
    last = s.scalars(
        select(Target.state).where(Target.client_id == client.id).order_by(Target.id.desc())
    ).first()
    return BootAction.LOCAL if last == "done" else BootAction.WAIT


def boot_actions(s: Session) -> dict[str, BootAction]:
    """``boot_action`` of every known or registered MAC, in four queries (the per-MAC GRUB sync runs
    every 2 s; one query per client would not scale to a room of hundreds)."""
    clients: dict[int, str] = {row[0]: row[1] for row in s.execute(select(Client.id, Client.mac))}
    active = set(
        s.scalars(
            select(Target.client_id)
            .join(Deployment)
            .where(Target.state.in_(ACTIVE_TARGETS), Deployment.state.in_(ACTIVE_DEPLOYMENTS))
        )
    )
    newest = select(func.max(Target.id)).group_by(Target.client_id)
    last = {
        row[0]: row[1]
        for row in s.execute(select(Target.client_id, Target.state).where(Target.id.in_(newest)))
    }
    actions = {mac: BootAction.REGISTER for mac in s.scalars(select(RegistrationRow.mac))}
    for client_id, mac in clients.items():
        if client_id in active:
            actions[mac] = BootAction.DEPLOY
        else:
            actions[mac] = BootAction.LOCAL if last.get(client_id) == "done" else BootAction.WAIT
    return actions


def grub_mac_configs(
    db: Database, server_url: str, enroll_token: str, *, tls_fingerprint: str | None = None
) -> dict[str, str]:
    """Per-MAC GRUB configs for the TFTP root (``grub/mac/<mac>.cfg``), one per known or registered
    machine: what ``GET /boot/grub`` answers, with the files by TFTP (the Secure Boot chain's GRUB has no
    http module)."""
    with db.sessions() as s:
        actions = boot_actions(s)
    return {
        mac: grub_config(action, server_url, enroll_token, mac, tftp=True, tls_fingerprint=tls_fingerprint)
        for mac, action in sorted(actions.items())
    }


def secureboot_macs(s: Session) -> tuple[str, ...]:
    return tuple(s.scalars(select(RegistrationRow.mac).where(RegistrationRow.boot == "secureboot")))


def registration_view(r: RegistrationRow) -> dict[str, Any]:
    return {
        "mac": r.mac,
        "name": r.name,
        "ip": r.ip,
        "boot": r.boot,
        "created_at": isoformat(r.created_at),
    }


def _conflicts(s: Session, entries: Sequence[roster.Registration], *, replace_mac: bool) -> list[str]:
    """``line N: ...`` (or plain) for entries whose MAC, name or IP another registration holds."""
    problems = []
    rows = list(s.scalars(select(RegistrationRow)))
    for e in entries:
        where = f"line {e.line}: " if e.line else ""
        for r in rows:
            if r.mac == e.mac:
                if not replace_mac:
                    problems.append(f"{where}MAC {e.mac} is already registered (name {r.name or '-'})")
                continue
            if e.name and r.name and r.name.lower() == e.name.lower():
                problems.append(f"{where}name {e.name} is already registered to {r.mac}")
            if e.ip and r.ip and _host(r.ip) == _host(e.ip):
                problems.append(f"{where}IP {e.ip} is already registered to {r.mac}")
    return problems


def _host(ip: str) -> str:
    return ip.split("/", 1)[0]


def add_registrations(
    db: Database, entries: Sequence[roster.Registration], *, replace_mac: bool = False, source: str = ""
) -> list[dict[str, Any]]:
    """Store ``entries`` all or nothing (RosterError / ConflictError naming every problem)."""
    with db.transaction() as s:
        problems = _conflicts(s, entries, replace_mac=replace_mac)
        if problems:
            if len(entries) == 1 and not entries[0].line:
                raise ConflictError(problems[0], hint="fleetcast clients unregister MAC first, or --replace")
            raise roster.RosterError(problems, source=source)
        stored = []
        for e in entries:
            row = s.scalars(select(RegistrationRow).where(RegistrationRow.mac == e.mac)).first()
            if row is None:
                row = RegistrationRow(mac=e.mac, created_at=utcnow())
                s.add(row)
            row.name, row.ip, row.boot = e.name, e.ip, e.boot
            s.flush()
            stored.append(registration_view(row))
    logger.info("registered %d client(s)%s", len(stored), f" from {source}" if source else "")
    return stored


def apply_registrations(
    s: Session, assignments: list[Assignment], *, names: bool, ips: bool, max_name_length: int = 63
) -> list[Assignment]:
    """A deployment without a name pattern (``names``) or addresses (``ips``) gives each registered
    client its registered name / IP (a plain IP gets /24)."""
    if not (names or ips) or not assignments:
        return assignments
    regs = {r.mac: r for r in s.scalars(select(RegistrationRow))}
    out = []
    for a in assignments:
        r = regs.get(a.mac)
        if r is None:
            out.append(a)
            continue
        name = r.name if names and r.name and not a.name else a.name  # an IP list's names win
        if name and len(name) > max_name_length:
            raise UsageError(
                f"{a.mac} is registered with the name {name!r} ({len(name)} characters); this image's "
                f"computer names may have at most {max_name_length}",
                hint="register a shorter name or give the deployment a --name pattern",
            )
        ip = a.ip
        if ips and r.ip:
            ip = r.ip if "/" in r.ip else f"{r.ip}/{DEFAULT_PREFIX}"
        out.append(replace(a, name=name, ip=ip))
    return out


# ---- HTTP -----------------------------------------------------------------------------------------


def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def _config(request: Request) -> BootConfig:
    cfg: BootConfig = request.app.state.boot
    return cfg


def server_url(request: Request) -> str:
    cfg = _config(request)
    return (cfg.server_url or str(request.base_url)).rstrip("/")


def tls_fingerprint(app: FastAPI) -> str | None:
    """The server certificate's fingerprint (``sha256:HEX``) when ``fleetcast serve`` runs HTTPS, for the
    boot environment's command line (``fleetcast.tls=``: the agent pins it); None for plain HTTP."""
    found = getattr(getattr(app.state, "settings", None), "tls_fingerprint", None)
    return found if isinstance(found, str) and found else None


def _mac_or_none(mac: str | None) -> str | None:
    if not mac:
        return None
    try:
        return normalize_mac(mac)
    except UsageError:
        return None


def _decide(request: Request, mac: str) -> tuple[BootAction, str, str]:
    tokens: Tokens = request.app.state.tokens
    with _db(request).sessions() as s:
        action = boot_action(s, mac)
    peer = request.client.host if request.client else ""
    logger.info("boot %s from %s (%s): %s", request.url.path, mac, peer, action.value)
    return action, server_url(request), tokens.enroll


boot_router = APIRouter(prefix="/boot", tags=["boot"])


@boot_router.get("/ipxe", response_class=PlainTextResponse)
def ipxe(request: Request, mac: Annotated[str | None, Query(max_length=64)] = None) -> PlainTextResponse:
    """The per-MAC iPXE script (a chain to itself with ``${net0/mac}`` when the MAC is missing or bad)."""
    found = _mac_or_none(mac)
    if found is None:
        return PlainTextResponse(chain_script(server_url(request)))
    action, url, token = _decide(request, found)
    tls = tls_fingerprint(request.app)
    return PlainTextResponse(ipxe_script(action, url, token, found, tls_fingerprint=tls))


@boot_router.get("/grub", response_class=PlainTextResponse)
def grub(request: Request, mac: Annotated[str | None, Query(max_length=64)] = None) -> PlainTextResponse:
    """GRUB's per-MAC config for the Secure Boot chain (``net_default_mac``)."""
    found = _mac_or_none(mac)
    if found is None:
        raise UsageError(f"mac={mac!r} is not a MAC address")
    action, url, token = _decide(request, found)
    tls = tls_fingerprint(request.app)
    return PlainTextResponse(grub_config(action, url, token, found, tls_fingerprint=tls))


def _bootenv(request: Request) -> Path:
    cfg = _config(request)
    found = cfg.bootenv_dir or newest_bootenv()
    if found is None:
        raise NotFoundError(
            f"no boot environment in {BOOTENV_CACHE}",
            hint="build it: fleetcast bootenv build (or give fleetcast serve --bootenv DIR)",
        )
    return found


@boot_router.get("/file/{name}", response_class=FileResponse)
def boot_file(name: str, request: Request) -> FileResponse:
    if name not in (KERNEL, INITRD):
        raise NotFoundError(f"boot file {name!r} does not exist (there are {KERNEL} and {INITRD})")
    return FileResponse(_bootenv(request) / name, media_type="application/octet-stream")


@boot_router.get("/tftp/{name}", response_class=FileResponse)
def tftp_file(name: str, request: Request) -> FileResponse:
    """A boot file of the TFTP root over HTTP (UEFI HTTP boot)."""
    from fleetcast.netboot import methods

    files = methods.tftp_files()
    if name not in files:
        raise NotFoundError(
            f"boot file {name!r} does not exist", hint=f"there are {', '.join(sorted(files))}"
        )
    return FileResponse(files[name], media_type="application/efi")


class LabReport(BaseModel):
    """What lab/golden.py's first-boot unit POSTs; unknown keys are kept out, not refused."""

    model_config = ConfigDict(extra="ignore")

    mac: str = Field(max_length=32)
    hostname: str = Field(default="", max_length=255)
    ip: str = Field(default="", max_length=64)
    machine_id: str = Field(default="", max_length=64)
    secure_boot: bool = False


lab_router = APIRouter(prefix="/api/lab", tags=["lab"])


@lab_router.post("/report")
def lab_report(body: LabReport, request: Request) -> dict[str, Any]:
    mac = normalize_mac(body.mac)
    peer = request.client.host if request.client else ""
    with _db(request).transaction() as s:
        row = s.scalars(select(LabReportRow).where(LabReportRow.mac == mac)).first()
        if row is None:
            row = LabReportRow(mac=mac)
            s.add(row)
        row.hostname, row.ip, row.machine_id = body.hostname, body.ip, body.machine_id
        row.secure_boot, row.address, row.received_at = body.secure_boot, peer, utcnow()
    logger.info(
        "lab report from %s (%s): hostname %s, ip %s, machine-id %s, secure boot %s",
        mac, peer, body.hostname, body.ip, body.machine_id, body.secure_boot,
    )  # fmt: skip
    return {"ok": True, "mac": mac}


def lab_reports(db: Database) -> list[dict[str, Any]]:
    with db.sessions() as s:
        return [
            {
                "mac": r.mac,
                "hostname": r.hostname,
                "ip": r.ip,
                "machine_id": r.machine_id,
                "secure_boot": r.secure_boot,
                "address": r.address,
                "received_at": isoformat(r.received_at),
            }
            for r in s.scalars(select(LabReportRow).order_by(LabReportRow.mac))
        ]


class RegistrationBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    mac: str = Field(max_length=32)
    name: str | None = Field(default=None, max_length=255)
    ip: str | None = Field(default=None, max_length=64)
    boot: str = Field(default="auto", max_length=16)
    replace: bool = False


class ImportBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    csv: str = Field(max_length=roster.MAX_CSV_BYTES)
    source: str = Field(default="CSV", max_length=255)


def _admin(request: Request) -> None:
    from fleetcast.server.sessions import principal

    principal(request)


admin_router = APIRouter(prefix="/api", tags=["admin"], dependencies=[Depends(_admin)])


def _changed(request: Request) -> None:
    hook = _config(request).on_registrations
    if hook is not None:
        with _db(request).sessions() as s:
            hook(secureboot_macs(s))


@admin_router.get("/lab/reports")
def get_lab_reports(request: Request) -> dict[str, Any]:
    return {"reports": lab_reports(_db(request))}


@admin_router.get("/registrations")
def list_registrations(request: Request) -> dict[str, Any]:
    with _db(request).sessions() as s:
        rows = s.scalars(select(RegistrationRow).order_by(RegistrationRow.mac))
        return {"registrations": [registration_view(r) for r in rows]}


@admin_router.post("/registrations", status_code=201)
def register(body: RegistrationBody, request: Request) -> dict[str, Any]:
    entry = roster.registration(body.mac, body.name, body.ip, body.boot)
    stored = add_registrations(_db(request), [entry], replace_mac=body.replace)
    _changed(request)
    return stored[0]


@admin_router.post("/registrations/import", status_code=201)
def import_registrations(body: ImportBody, request: Request) -> dict[str, Any]:
    entries = roster.parse_csv(body.csv, source=body.source)
    stored = add_registrations(_db(request), entries, source=body.source)
    _changed(request)
    return {"registrations": stored, "imported": len(stored)}


@admin_router.delete("/registrations/{mac}")
def unregister(mac: str, request: Request) -> dict[str, Any]:
    found = normalize_mac(mac)
    with _db(request).transaction() as s:
        row = s.scalars(select(RegistrationRow).where(RegistrationRow.mac == found)).first()
        if row is None:
            raise NotFoundError(f"MAC {found} is not registered")
        view = registration_view(row)
        s.delete(row)
    _changed(request)
    return view


def install(app: FastAPI, db: Database) -> None:
    """Create the tables on an existing database and add the routes (called by create_app)."""
    Base.metadata.create_all(db.engine, tables=[RegistrationRow.__table__, LabReportRow.__table__])  # type: ignore[list-item]
    if not hasattr(app.state, "boot"):
        app.state.boot = BootConfig()
    app.include_router(boot_router)
    app.include_router(lab_router)
    app.include_router(admin_router)


def configure(app: FastAPI, cfg: BootConfig) -> None:
    app.state.boot = cfg
