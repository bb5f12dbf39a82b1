"""Network capture, the server's side (issue 11): a capture task, the agent's upload routes, leases.

A capture is a deployment of one target whose task kind is "capture" (a ``captures`` row beside it), so
queueing, hand-out, progress, results, resume after an agent restart and timeouts are the orchestrator's.
What is new lives here:

- ``POST /api/captures`` (admin): CLIENT (a MAC or a client name) and NAME; an existing image NAME is
  refused before anything is read, unless ``replace``.
- the agent routes under ``/api/agent/captures/{task_id}/`` (docs/agent-protocol.md, "Capture"): ``begin``,
  ``have`` (a batch of raw 32-byte chunk digests -> where the store keeps them), ``packs/{id}`` (resumable
  upload: ``GET`` says how many bytes arrived, ``PUT`` at that offset sends the rest; a body cut off by
  the network keeps what arrived), ``index`` and ``publish``. Each pack is verified (one zstd frame whose
  content hashes to its id, whose stored bytes hash to the announced hash) before it enters the store.
- leases: every pack a running capture relies on -- answered by ``have`` or uploaded, not yet published --
  has a row in ``capture_leases`` until the publish; ``leased_packs`` is what ``store gc`` keeps. A lease
  expires ``lease_seconds`` after the capture's last request (a killed agent's packs are collected later,
  never under a running capture).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import blake3
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from fleetcast.errors import (
    ClientNotFound,
    ConflictError,
    DiskError,
    FleetcastError,
    IntegrityError,
    NotFoundError,
    UsageError,
)
from fleetcast.protocol import (
    DIGEST_BYTES,
    MAX_HAVE,
    CaptureBeginReply,
    HaveReply,
    KnownPack,
    PackStatus,
    PublishReply,
    pack_digests,
)
from fleetcast.server.api_admin import require_admin
from fleetcast.server.api_agent import AgentId, peer
from fleetcast.server.auth import ForbiddenError
from fleetcast.server.db import (
    CaptureLease,
    CaptureRow,
    Client,
    Database,
    Deployment,
    Target,
    isoformat,
    utcnow,
)
from fleetcast.server.images import check_chunk_id, check_name
from fleetcast.server.orchestrator import ACTIVE_DEPLOYMENT, Orchestrator
from fleetcast.server.sessions import actor
from fleetcast.store.source import KnownChunk

logger = logging.getLogger(__name__)

LEASE_SECONDS = 6 * 3600.0  # a capture silent for this long loses its leases (its task failed long before)
RENEW_EVERY = 60.0
MAX_PACK_STORED = (256 << 20) + (1 << 20)  # a pack's zstd frame: 256 MiB of content at most, plus framing
MAX_INDEX_BYTES = 4 << 30
MAX_MANIFEST_BYTES = 64 << 20
PART_DIR = "capture-parts"
FLUSH_BYTES = 1 << 20  # an upload is written to its part file in pieces of this size
HEX64 = r"^[0-9a-f]{64}$"


class PackRejected(IntegrityError):
    """An uploaded pack that does not verify: answered 422, so the agent sends it again from the start."""

    http_status = 422


# ---- the store side: StoreIngest when the store has it, the capture sink's pieces until then --------


class _Ingest:
    """``store.ingest.StoreIngest``'s interface (iface-store.md) over what the store had before it."""

    def __init__(self, store_root: Path) -> None:
        from fleetcast.store.images import ImageStore

        self.store = ImageStore(store_root)
        self._impl: Any = None
        try:
            from fleetcast.store.ingest import StoreIngest  # type: ignore[import-not-found,unused-ignore]

            self._impl = StoreIngest(self.store)  # thread-safe: one dedupe-index handle, locked
        except ImportError:
            self._impl = None

    def have(self, hashes: Sequence[bytes]) -> dict[bytes, KnownChunk]:
        if self._impl is not None:
            known: dict[bytes, KnownChunk] = self._impl.have(hashes)
            return known
        from fleetcast.store.sink_local import StoreSink

        return StoreSink(self.store, "have").have(hashes)

    def has_pack(self, pack_id: str, stored: int) -> bool:
        try:
            return self.store.chunks.path(pack_id).stat().st_size == stored
        except OSError:
            return False

    def put_pack(self, pack_id: str, stored: bytes, stored_hash: str) -> None:
        if self._impl is not None:
            try:
                self._impl.put_pack(pack_id, stored, stored_hash=stored_hash)
            except IntegrityError as exc:
                raise PackRejected(exc.message, hint=exc.hint) from exc
            return
        from fleetcast.store.chunkstore import decompress_verify, fsync_dir, write_file_durable

        found = blake3.blake3(stored).hexdigest()
        if found != stored_hash:
            raise PackRejected(f"pack {pack_id}: its stored bytes hash to {found}, expected {stored_hash}")
        try:
            decompress_verify(pack_id, stored, None, what="uploaded pack")
        except IntegrityError as exc:
            raise PackRejected(exc.message) from exc
        final = self.store.chunks.path(pack_id)
        if final.is_file() and final.stat().st_size == len(stored):
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{pack_id}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            write_file_durable(tmp, stored)
            os.replace(tmp, final)
            fsync_dir(final.parent)
        finally:
            tmp.unlink(missing_ok=True)

    def publish(self, manifest: bytes, index: Path, *, replace: bool) -> str:
        from fleetcast.store.manifest import INDEX_FILE, load_image

        if self._impl is not None:
            published = self._impl.publish(manifest, index, replace=replace)
            image_id: str = published.image_id
            return image_id
        m = load_image(manifest, index)
        if replace and self.store.exists(m.name):
            self.store.remove(m.name)  # not atomic with the publish below (StoreIngest's is)
        for p in m.pack_refs():
            if not self.has_pack(p.id, p.stored):
                raise ConflictError(
                    f"image {m.name!r} needs pack {p.id} of {p.stored} bytes, which the server does not have",
                    hint="the capture sends it again when it is retried",
                )
        with self.store.begin_capture(m.name) as txn:
            txn.commit(m, extra={INDEX_FILE: index})
        return m.image_id


# ---- resumable uploads --------------------------------------------------------------------------


@dataclass
class _Part:
    """One pack (or index) arriving in pieces: ``size`` bytes are in ``path``; the newest request
    (``generation``) owns it, an older one still streaming over a dead connection stops writing."""

    path: Path
    stored: int
    size: int = 0
    generation: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Superseded(Exception):
    pass


class Uploads:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._parts: dict[str, _Part] = {}
        self._lock = threading.Lock()

    def part(self, key: str, stored: int) -> _Part:
        with self._lock:
            p = self._parts.get(key)
            if p is None or p.stored != stored:
                self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                path = self.root / f"{key}.part"
                size = path.stat().st_size if path.is_file() else 0
                p = self._parts[key] = _Part(path, stored, size=min(size, stored))
            return p

    def received(self, key: str, stored: int) -> int:
        return self.part(key, stored).size

    def begin(self, part: _Part, offset: int) -> int:
        with part.lock:
            if offset > part.size:
                raise ConflictError(
                    f"upload offset {offset} is past the {part.size} bytes received",
                    hint="ask for the pack's status and continue from there",
                )
            part.generation += 1
            with open(part.path, "ab") as f:
                f.truncate(offset)
            part.size = offset
            return part.generation

    def _write(self, part: _Part, generation: int, fd: int, data: bytes | bytearray) -> None:
        with part.lock:
            if part.generation != generation:
                raise _Superseded
            if part.size + len(data) > part.stored:
                raise UsageError(f"upload is longer than the announced {part.stored} bytes")
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, part.size)
                part.size += n
                view = view[n:]

    async def receive(
        self, part: _Part, offset: int, stream: AsyncIterator[bytes], count: Callable[[int], None]
    ) -> None:
        """The body from ``offset`` into the part file, written in pieces of ``FLUSH_BYTES``; what arrived
        before a disconnect is kept. Raises _Superseded when a newer request took the part over."""
        generation = self.begin(part, offset)
        fd = os.open(part.path, os.O_WRONLY | os.O_CREAT, 0o600)
        buf = bytearray()
        try:
            try:
                async for piece in stream:
                    buf += piece
                    if len(buf) >= FLUSH_BYTES:
                        self._write(part, generation, fd, buf)
                        count(len(buf))
                        buf.clear()
            finally:
                if buf:
                    try:
                        self._write(part, generation, fd, buf)
                        count(len(buf))
                    except (_Superseded, UsageError):
                        pass
        finally:
            os.close(fd)

    def drop(self, key: str) -> None:
        with self._lock:
            p = self._parts.pop(key, None)
        path = p.path if p is not None else self.root / f"{key}.part"
        path.unlink(missing_ok=True)


# ---- the service ------------------------------------------------------------------------------------


@dataclass
class _Live:
    capture_id: int
    renewed: float = 0.0
    chunks_new: int = 0
    chunks_known: int = 0
    received: int = 0

    def count(self, n: int) -> None:
        self.received += n


class CaptureService:
    def __init__(self, orch: Orchestrator, store_root: Path, data_dir: Path) -> None:
        self.orch = orch
        self.db: Database = orch.db
        self.ingest = _Ingest(store_root)
        self.uploads = Uploads(data_dir / PART_DIR)
        self.lease_seconds = LEASE_SECONDS
        self._live: dict[int, _Live] = {}
        self._lock = threading.Lock()
        self._publish_lock = threading.Lock()

    # -- admin --------------------------------------------------------------------------------------
    def create(
        self, client: str, name: str, disk: str, *, replace: bool, actor: str, address: str
    ) -> dict[str, Any]:
        from fleetcast.disk.rules import parse_rule

        check_name(name)
        try:
            parse_rule(disk)
        except DiskError as exc:
            raise UsageError(exc.message, hint=exc.hint) from exc
        if not replace and name in self.orch.catalog.names():
            raise ConflictError(
                f"image {name!r} already exists on the server",
                hint="pick another name, or replace it: fleetcast capture ... --replace",
            )
        with self.orch._tx() as s:
            c = self._resolve_client(s, client)
            busy = s.scalars(
                select(CaptureRow)
                .join(Deployment, Deployment.id == CaptureRow.deployment_id)
                .where(CaptureRow.image == name, Deployment.state.in_(ACTIVE_DEPLOYMENT))
            ).first()
            if busy is not None:
                raise ConflictError(
                    f"image {name!r} is already being captured (capture {busy.deployment_id})",
                    hint=f"wait for it or cancel it: fleetcast deployments cancel {busy.deployment_id}",
                )
            if replace:
                captures = select(CaptureRow.deployment_id)
                using = s.scalars(
                    select(Deployment.id).where(
                        Deployment.image == name,
                        Deployment.state.in_(ACTIVE_DEPLOYMENT),
                        Deployment.id.not_in(captures),
                    )
                ).first()
                if using is not None:
                    raise ConflictError(
                        f"image {name!r} cannot be replaced while deployment {using} deploys it",
                        hint=f"wait for it or cancel it: fleetcast deployments cancel {using}",
                    )
            dep = Deployment(
                image=name, image_size=0, disk_rule=disk.strip(), batch=1, then="none", state="running",
                created_at=utcnow(), created_by=actor,
            )  # fmt: skip
            target = Target(client_id=c.id, position=1, mac=c.mac, name=None, state="queued")
            self.orch._start(
                s, dep, [target], actor=actor, address=address, action="capture-create",
                detail={"client": c.mac, "image": name, "disk": disk, "replace": replace},
            )  # fmt: skip
            s.add(CaptureRow(deployment_id=dep.id, image=name, replace=replace))
            s.flush()
            logger.info("capture %d: %s from %s, disk rule %r", dep.id, name, c.mac, disk)
            return self._view(s, dep)

    @staticmethod
    def _resolve_client(s: Session, spec: str) -> Client:
        from fleetcast.server.plan import normalize_mac

        spec = spec.strip()
        try:
            mac: str | None = normalize_mac(spec)
        except FleetcastError:
            mac = None
        clients = list(s.scalars(select(Client).order_by(Client.mac)))
        if mac is not None:
            for c in clients:
                if c.mac == mac:
                    return c
            for c in clients:
                if mac in (c.inventory or {}).get("macs", []):
                    return c
            raise ClientNotFound(
                f"client {mac} is not enrolled", hint="`fleetcast clients list` shows the enrolled clients"
            )
        named = [c for c in clients if c.hostname and c.hostname.lower() == spec.lower()]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise UsageError(
                f"client name {spec!r} is ambiguous: {', '.join(c.mac for c in named)} carry it",
                hint="give the MAC instead",
            )
        raise ClientNotFound(
            f"no enrolled client has the MAC or name {spec!r}",
            hint="`fleetcast clients list` shows the enrolled clients",
        )

    def view(self, capture_id: int) -> dict[str, Any]:
        with self.db.sessions() as s:
            dep = s.get(Deployment, capture_id) if 0 < capture_id < 2**31 else None
            if dep is None or self._row(s, dep.id) is None:
                raise NotFoundError(
                    f"capture {capture_id} does not exist", hint="GET /api/captures lists them"
                )
            return self._view(s, dep)

    def list(self) -> list[dict[str, Any]]:
        with self.db.sessions() as s:
            rows = s.scalars(select(CaptureRow).order_by(CaptureRow.id.desc())).all()
            out = []
            for row in rows:
                dep = s.get(Deployment, row.deployment_id)
                if dep is not None:
                    out.append(self._view(s, dep))
            return out

    @staticmethod
    def _row(s: Session, deployment_id: int) -> CaptureRow | None:
        return s.scalars(select(CaptureRow).where(CaptureRow.deployment_id == deployment_id)).first()

    def _view(self, s: Session, dep: Deployment) -> dict[str, Any]:
        row = self._row(s, dep.id)
        assert row is not None
        t = dep.targets[0] if dep.targets else None
        live = self._live.get(t.id) if t is not None else None
        started = t.started_at if t is not None else None
        finished = t.finished_at if t is not None else None
        begun = (t.assigned_at or started) if t is not None else None
        seconds = (finished - begun).total_seconds() if finished is not None and begun is not None else None
        return {
            "capture": dep.id,
            "image": row.image,
            "state": t.state if t is not None else dep.state,
            "client": t.mac if t is not None else None,
            "client_id": t.client_id if t is not None else None,
            "task_id": t.id if t is not None else None,
            "disk_rule": dep.disk_rule,
            "disk": t.disk if t is not None else None,
            "replace": row.replace,
            "phase": t.phase if t is not None else None,
            "bytes_done": t.bytes_done if t is not None else 0,
            "bytes_total": t.bytes_total if t is not None else 0,
            "rate_bps": t.rate_bps if t is not None else 0.0,
            "eta_seconds": t.eta_seconds if t is not None else None,
            "error": t.error if t is not None else None,
            "image_id": row.image_id,
            "bytes_read": row.bytes_read,
            "bytes_sent": row.bytes_received + (live.received if live else 0),
            "chunks_new": row.chunks_new + (live.chunks_new if live else 0),
            "chunks_known": row.chunks_known + (live.chunks_known if live else 0),
            "packs_new": row.packs_new,
            "seconds": round(seconds, 3) if seconds is not None else None,
            "created_at": isoformat(dep.created_at),
            "started_at": isoformat(started),
            "finished_at": isoformat(finished),
            "attempt": t.attempt if t is not None else 0,
            "resumes": t.resumes if t is not None else 0,
            "restarts": t.restarts if t is not None else 0,
        }

    # -- agent --------------------------------------------------------------------------------------
    def session(self, client_id: int, task_id: int) -> _Live:
        """The running capture behind ``task_id`` (which must be this client's); renews its leases."""
        with self.db.sessions() as s:
            t = s.get(Target, task_id) if 0 < task_id < 2**31 else None
            if t is None:
                raise NotFoundError(f"task {task_id} does not exist")
            if t.client_id != client_id:
                raise ForbiddenError(f"task {task_id} belongs to another client")
            row = self._row(s, t.deployment_id)
            if row is None:
                raise ForbiddenError(f"task {task_id} is not a capture")
            if t.state != "running":
                raise ConflictError(f"capture task {task_id} is {t.state}, not running")
            capture_id = row.id
        with self._lock:
            live = self._live.setdefault(task_id, _Live(capture_id))
        now = time.monotonic()
        if now - live.renewed >= RENEW_EVERY:
            live.renewed = now
            with self.db.transaction() as s:
                s.execute(
                    update(CaptureLease)
                    .where(CaptureLease.capture_id == capture_id)
                    .values(expires_at=self._expiry())
                )
        return live

    def _expiry(self) -> datetime:
        return utcnow() + timedelta(seconds=self.lease_seconds)

    def _lease(self, capture_id: int, packs: Collection[str]) -> None:
        if not packs:
            return
        with self.db.transaction() as s:
            have = set(
                s.scalars(
                    select(CaptureLease.pack_id).where(
                        CaptureLease.capture_id == capture_id, CaptureLease.pack_id.in_(list(packs))
                    )
                )
            )
            expires = self._expiry()
            for pid in sorted(set(packs) - have):
                s.add(CaptureLease(capture_id=capture_id, pack_id=pid, expires_at=expires))

    def prune(self) -> int:
        """Forget expired leases and those of captures that ended (failed, cancelled: their uploaded packs
        stay until a gc, and a new capture that finds one in the store does not send it again), and the
        partial uploads of tasks that no longer run."""
        with self.db.transaction() as s:
            running = set(s.scalars(select(Target.id).where(Target.state == "running")))
            live = select(CaptureRow.id).join(Target, Target.deployment_id == CaptureRow.deployment_id)
            live = live.where(Target.state.in_(("queued", "running")))
            ended = (CaptureLease.expires_at <= utcnow()) | CaptureLease.capture_id.not_in(live)
            gone = int(getattr(s.execute(delete(CaptureLease).where(ended)), "rowcount", 0) or 0)
        root = self.uploads.root
        if root.is_dir():
            for part in root.glob("*.part"):
                task = part.name.split("-", 1)[0]
                if task.isdigit() and int(task) not in running:
                    part.unlink(missing_ok=True)
        return gone

    def begin(self, client_id: int, task_id: int) -> dict[str, Any]:
        self.session(client_id, task_id)
        self.prune()
        with self.db.sessions() as s:
            t = s.get(Target, task_id)
            assert t is not None
            row = self._row(s, t.deployment_id)
            assert row is not None
            name, replace, published = row.image, row.replace, row.image_id
        if published is None and not replace and name in self.orch.catalog.names():
            raise ConflictError(
                f"image {name!r} already exists on the server; the capture does not read the disk",
                hint="pick another name, or replace it: fleetcast capture ... --replace",
            )
        return CaptureBeginReply(image=name, replace=replace, max_have=MAX_HAVE).model_dump()

    def have(self, client_id: int, task_id: int, body: bytes) -> dict[str, Any]:
        live = self.session(client_id, task_id)
        try:
            digests = pack_digests(body)
        except FleetcastError as exc:
            raise UsageError(exc.message) from exc
        with self.ingest.store.locked(exclusive=False, wait=True):  # no gc between answer and lease
            known = self.ingest.have(digests)
            packs = {k.pack for k in known.values()}
            self._lease(live.capture_id, packs)
        index = {d: i for i, d in enumerate(digests)}
        reply = HaveReply(
            known=[(index[d], k.pack, k.offset) for d, k in known.items()],
            packs={k.pack: KnownPack(stored=k.stored, hash=k.stored_hash) for k in known.values()},
        )
        hits = sum(1 for d in digests if d in known)  # a digest may be asked twice in one batch
        live.chunks_known += hits
        live.chunks_new += len(digests) - hits
        return reply.model_dump()

    def pack_status(
        self, client_id: int, task_id: int, pack_id: str, stored_hash: str, stored: int
    ) -> PackStatus:
        self.session(client_id, task_id)
        check_chunk_id(pack_id)
        if self.ingest.has_pack(pack_id, stored):
            return PackStatus(received=stored, complete=True)
        return PackStatus(received=self.uploads.received(_key(task_id, pack_id, stored_hash), stored))

    async def put_pack(
        self, request: Request, *, client_id: int, task_id: int, pack_id: str, stored_hash: str,
        stored: int, offset: int,
    ) -> PackStatus:  # fmt: skip
        live = await asyncio.to_thread(self.session, client_id, task_id)
        check_chunk_id(pack_id)
        if not 0 < stored <= MAX_PACK_STORED:
            raise UsageError(f"pack {pack_id}: stored size {stored} is not between 1 and {MAX_PACK_STORED}")
        await asyncio.to_thread(self._lease, live.capture_id, [pack_id])  # before the pack is in the store
        if await asyncio.to_thread(self.ingest.has_pack, pack_id, stored):
            return PackStatus(received=stored, complete=True)
        key = _key(task_id, pack_id, stored_hash)
        part = self.uploads.part(key, stored)
        try:
            await self.uploads.receive(part, offset, request.stream(), live.count)
        except _Superseded:
            raise ConflictError(f"pack {pack_id}: a newer upload of it took over") from None
        except ClientDisconnect:
            logger.info(
                "capture task %d: pack %s cut off at %d of %d bytes", task_id, pack_id, part.size, stored
            )
            return PackStatus(received=part.size)
        if part.size < stored:
            return PackStatus(received=part.size)
        data = await asyncio.to_thread(part.path.read_bytes)
        try:
            await asyncio.to_thread(self.ingest.put_pack, pack_id, data, stored_hash)
        except PackRejected:
            self.uploads.drop(key)
            raise
        self.uploads.drop(key)
        await asyncio.to_thread(self._count_pack, live)
        return PackStatus(received=stored, complete=True)

    def _count_pack(self, live: _Live) -> None:
        with self.db.transaction() as s:
            row = s.get(CaptureRow, live.capture_id)
            if row is not None:
                row.packs_new += 1

    async def put_index(
        self, request: Request, *, client_id: int, task_id: int, stored: int, offset: int
    ) -> PackStatus:
        live = await asyncio.to_thread(self.session, client_id, task_id)
        if not 0 < stored <= MAX_INDEX_BYTES:
            raise UsageError(f"index size {stored} is not between 1 and {MAX_INDEX_BYTES}")
        part = self.uploads.part(f"{task_id}-index", stored)
        try:
            await self.uploads.receive(part, offset, request.stream(), live.count)
        except _Superseded:
            raise ConflictError("index: a newer upload of it took over") from None
        except ClientDisconnect:
            return PackStatus(received=part.size)
        return PackStatus(received=part.size, complete=part.size == stored)

    def publish(self, client_id: int, task_id: int, manifest: bytes) -> dict[str, Any]:
        from fleetcast.store.manifest import Manifest

        live = self.session(client_id, task_id)
        with self._publish_lock:
            with self.db.sessions() as s:
                row = s.get(CaptureRow, live.capture_id)
                assert row is not None
                name, replace, done_id = row.image, row.replace, row.image_id
            if done_id is not None:  # a retried publish whose answer was lost
                return PublishReply(image=name, image_id=done_id).model_dump()
            expected = image_id_of(manifest)
            try:
                claimed = Manifest.from_json(manifest).name
            except FleetcastError as exc:
                raise UsageError(f"capture task {task_id}: the manifest is not valid: {exc.message}") from exc
            if claimed != name:
                raise ForbiddenError(f"capture task {task_id} captures image {name!r}, not {claimed!r}")
            index = self.uploads.root / f"{task_id}-index.part"
            if not index.is_file():
                raise ConflictError(f"capture task {task_id}: no chunk index was uploaded before the publish")
            if name in self.orch.catalog.names() and self._published_id(name) == expected:
                image_id = expected  # published, and then the answer (or our bookkeeping) was lost
            elif not replace and name in self.orch.catalog.names():
                raise ConflictError(f"image {name!r} appeared on the server while it was being captured")
            else:
                image_id = self._publish(name, manifest, index, replace=replace)
            self._published(live, name, image_id, Manifest.from_json(manifest).used_bytes)
            index.unlink(missing_ok=True)
            logger.info("capture task %d: published %s (%s)", task_id, name, image_id[:16])
            return PublishReply(image=name, image_id=image_id).model_dump()

    def _published_id(self, name: str) -> str | None:
        try:
            return image_id_of(self.ingest.store.read_manifest_bytes(name))
        except FleetcastError:
            return None

    def _publish(self, name: str, manifest: bytes, index: Path, *, replace: bool) -> str:
        try:
            return self.ingest.publish(manifest, index, replace=replace)
        except FleetcastError as exc:
            if isinstance(exc, PackRejected | ConflictError):
                raise
            raise ConflictError(f"image {name!r} cannot be published: {exc.message}", hint=exc.hint) from exc

    def _published(self, live: _Live, name: str, image_id: str, used: int) -> None:
        with self.orch._tx() as s:
            row = s.get(CaptureRow, live.capture_id)
            assert row is not None
            row.image_id = image_id
            row.published_at = utcnow()
            row.bytes_read = used
            row.bytes_received += live.received
            row.chunks_new += live.chunks_new
            row.chunks_known += live.chunks_known
            live.received = live.chunks_new = live.chunks_known = 0
            s.execute(delete(CaptureLease).where(CaptureLease.capture_id == row.id))
            self.orch.bus.record(
                s, "capture-published", deployment_id=row.deployment_id, image=name, image_id=image_id,
                bytes_read=row.bytes_read, bytes_sent=row.bytes_received, chunks_new=row.chunks_new,
                chunks_known=row.chunks_known, packs_new=row.packs_new,
            )  # fmt: skip

    def flush_counters(self) -> None:
        """Persist the in-memory counters of captures no longer running (their totals stay visible)."""
        with self._lock:
            items = list(self._live.items())
        for task_id, live in items:
            if not (live.received or live.chunks_new or live.chunks_known):
                continue
            with self.db.transaction() as s:
                t = s.get(Target, task_id)
                row = s.get(CaptureRow, live.capture_id)
                if row is None or t is None:
                    continue
                row.bytes_received += live.received
                row.chunks_new += live.chunks_new
                row.chunks_known += live.chunks_known
                live.received = live.chunks_new = live.chunks_known = 0
                if t.state != "running":
                    with self._lock:
                        self._live.pop(task_id, None)


def image_id_of(manifest: bytes) -> str:
    from fleetcast.store.manifest import image_id

    return image_id(manifest)


def _key(task_id: int, pack_id: str, stored_hash: str) -> str:
    if len(stored_hash) != 64 or any(c not in "0123456789abcdef" for c in stored_hash):
        raise UsageError(f"stored hash {stored_hash[:80]!r} is not 64 lower-case hex digits")
    return f"{task_id}-{pack_id}-{stored_hash[:16]}"


def leased_packs(db: Database, *, now: datetime | None = None) -> set[str]:
    """The packs ``store gc`` must keep: those with an unexpired capture lease."""
    when = now or utcnow()
    with db.sessions() as s:
        return set(s.scalars(select(CaptureLease.pack_id).where(CaptureLease.expires_at > when).distinct()))


# ---- routes -----------------------------------------------------------------------------------------


def service(request: Request) -> CaptureService:
    svc: CaptureService | None = getattr(request.app.state, "captures", None)
    if svc is None:
        settings = request.app.state.settings
        svc = CaptureService(request.app.state.orchestrator, settings.store, settings.data_dir)
        request.app.state.captures = svc
    return svc


Svc = Annotated[CaptureService, Depends(service)]


class CaptureBody(BaseModel):
    """``fleetcast capture CLIENT NAME --disk RULE [--replace]``; strict, unknown keys refused."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")

    client: str = Field(max_length=255)
    name: str = Field(max_length=128)
    disk: str = Field(default="0", max_length=255)
    replace: bool = False


admin_router = APIRouter(prefix="/api", tags=["captures"], dependencies=[Depends(require_admin)])
agent_router = APIRouter(prefix="/api/agent/captures", tags=["agent"])


@admin_router.post("/captures")
def create_capture(body: CaptureBody, request: Request, svc: Svc) -> dict[str, Any]:
    return svc.create(
        body.client, body.name, body.disk, replace=body.replace, actor=actor(request), address=peer(request)
    )


@admin_router.get("/captures")
def list_captures(svc: Svc) -> dict[str, Any]:
    svc.flush_counters()
    return {"captures": svc.list()}


@admin_router.get("/captures/{capture_id}")
def get_capture(capture_id: int, svc: Svc) -> dict[str, Any]:
    return svc.view(capture_id)


@agent_router.post("/{task_id}/begin", response_model=CaptureBeginReply)
def begin(task_id: int, svc: Svc, client_id: AgentId) -> dict[str, Any]:
    return svc.begin(client_id, task_id)


@agent_router.post("/{task_id}/have", response_model=HaveReply)
async def have(task_id: int, request: Request, svc: Svc, client_id: AgentId) -> dict[str, Any]:
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > MAX_HAVE * DIGEST_BYTES:
            raise UsageError(f"have request: at most {MAX_HAVE} digests ({MAX_HAVE * DIGEST_BYTES} bytes)")
    return await asyncio.to_thread(svc.have, client_id, task_id, bytes(body))


Hash = Annotated[str, Query(pattern=HEX64)]


@agent_router.get("/{task_id}/packs/{pack_id}", response_model=PackStatus)
def pack_status(
    task_id: int,
    pack_id: str,
    *,
    svc: Svc,
    client_id: AgentId,
    stored_hash: Hash,
    stored: Annotated[int, Query(ge=1)],
) -> PackStatus:
    return svc.pack_status(client_id, task_id, pack_id, stored_hash, stored)


@agent_router.put("/{task_id}/packs/{pack_id}", response_model=PackStatus)
async def put_pack(
    task_id: int, pack_id: str, request: Request, *, svc: Svc, client_id: AgentId, stored_hash: Hash,
    stored: Annotated[int, Query(ge=1)], offset: Annotated[int, Query(ge=0)] = 0,
) -> PackStatus:  # fmt: skip
    return await svc.put_pack(
        request, client_id=client_id, task_id=task_id, pack_id=pack_id, stored_hash=stored_hash,
        stored=stored, offset=offset,
    )  # fmt: skip


@agent_router.put("/{task_id}/index", response_model=PackStatus)
async def put_index(
    task_id: int,
    *, request: Request, svc: Svc, client_id: AgentId,
    stored: Annotated[int, Query(ge=1)], offset: Annotated[int, Query(ge=0)] = 0,
) -> PackStatus:  # fmt: skip
    return await svc.put_index(request, client_id=client_id, task_id=task_id, stored=stored, offset=offset)


@agent_router.post("/{task_id}/publish", response_model=PublishReply)
async def publish(task_id: int, request: Request, svc: Svc, client_id: AgentId) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_MANIFEST_BYTES:
        raise UsageError(f"manifest of {len(body)} bytes; at most {MAX_MANIFEST_BYTES} are accepted")
    return await asyncio.to_thread(svc.publish, client_id, task_id, body)
