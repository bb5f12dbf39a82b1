"""Network capture, the server's service (issue 11): capture creation, and what the agent's routes do --
``begin``, ``have``, resumable verified pack and index uploads, ``publish`` -- with the leases ``store gc``
keeps (module docstring of ``server/capture.py``; docs/agent-protocol.md "Capture")."""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import threading
import time
import weakref
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from fastapi import Request
from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from fleetcast.errors import ConflictError, FleetcastError, NotFoundError, UsageError
from fleetcast.protocol import (
    MAX_HAVE,
    CaptureBeginReply,
    HaveReply,
    KnownPack,
    PackStatus,
    PreviousImage,
    PublishReply,
    chunk_answer,
    chunk_requests,
    pack_digests,
)
from fleetcast.server.auth import ForbiddenError
from fleetcast.server.capture_admin import (
    capture_row,
    capture_view,
    check_free,
    check_request,
    resolve_client,
)
from fleetcast.server.capture_ingest import CaptureIngest, PackRejected
from fleetcast.server.capture_uploads import PART_DIR, Superseded, Uploads, index_key, upload_key
from fleetcast.server.db import CaptureLease, CaptureRow, Database, Deployment, Target, utcnow
from fleetcast.server.images import check_chunk_id
from fleetcast.server.orchestrator import Orchestrator
from fleetcast.store.manifest import INDEX_FILE, Manifest, image_id

logger = logging.getLogger(__name__)

LEASE_SECONDS = 6 * 3600.0  # a capture silent for this long loses its leases (its task failed long before)
RENEW_EVERY = 60.0
MAX_PACK_STORED = (256 << 20) + (1 << 20)  # a pack's zstd frame: 256 MiB of content at most, plus framing
MAX_INDEX_BYTES = 4 << 30
STORE_THREADS = 4  # uploaded packs verified and stored at once
PREVIOUS_CANDIDATES = 5  # this client's newest captures looked at for the image a re-capture starts from


@dataclass
class _Live:
    """A running capture's counters, kept in memory between requests and written to its row at the
    publish (or by ``flush_counters``)."""

    capture_id: int
    previous: tuple[str, str] | None = None  # (name, image id) of the previous image handed out at begin
    renewed: float = 0.0
    chunks_new: int = 0
    chunks_known: int = 0
    received: int = 0
    have_requests: int = 0
    have_seconds: float = 0.0  # answering have (look-ups and leases)
    packs_stored: int = 0
    store_seconds: float = 0.0  # verifying and storing uploaded packs

    def count(self, n: int) -> None:
        self.received += n

    def counts(self) -> tuple[int, int, int]:
        return self.received, self.chunks_new, self.chunks_known

    def reset(self) -> None:
        self.received = self.chunks_new = self.chunks_known = 0


def _spill_at_exit(uploads: Uploads) -> None:
    """At interpreter exit (the server stopped: uvicorn's graceful shutdown ends the process normally),
    partly received in-memory packs go to part files so their captures continue after a restart. Held
    weakly: a service that is gone (tests make many) is not kept alive for it."""
    ref = weakref.ref(uploads)

    def spill() -> None:
        live = ref()
        if live is None:
            return
        try:
            n = live.spill()
        except OSError:
            return  # (at exit: nobody to tell; the agent sends those packs again)
        if n:
            logger.info("capture uploads: %d partial pack(s) kept in %s for after the restart", n, live.root)

    atexit.register(spill)


class CaptureService:
    def __init__(self, orch: Orchestrator, store_root: Path, data_dir: Path) -> None:
        self.orch = orch
        self.db: Database = orch.db
        self.ingest = CaptureIngest(store_root)
        self.uploads = Uploads(data_dir / PART_DIR)
        _spill_at_exit(self.uploads)
        self.lease_seconds = LEASE_SECONDS
        self._live: dict[int, _Live] = {}
        self._lock = threading.Lock()
        self._publish_lock = threading.Lock()
        self._store_pool = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="capture-store")

    # -- admin --------------------------------------------------------------------------------------
    def create(
        self, client: str, name: str, disk: str, *, replace: bool, actor: str, address: str
    ) -> dict[str, Any]:
        check_request(name, disk, replace=replace, names=self.orch.catalog.names())
        with self.orch._tx() as s:
            c = resolve_client(s, client)
            check_free(s, name, replace=replace)
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

    def view(self, capture_id: int) -> dict[str, Any]:
        with self.db.sessions() as s:
            dep = s.get(Deployment, capture_id) if 0 < capture_id < 2**31 else None
            if dep is None or capture_row(s, dep.id) is None:
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

    def _view(self, s: Session, dep: Deployment) -> dict[str, Any]:
        t = dep.targets[0] if dep.targets else None
        live = self._live.get(t.id) if t is not None else None
        return capture_view(s, dep, live.counts() if live is not None else (0, 0, 0))

    # -- agent --------------------------------------------------------------------------------------
    def session(self, client_id: int, task_id: int) -> _Live:
        """The running capture behind ``task_id`` (which must be this client's); renews its leases."""
        with self.db.sessions() as s:
            t = s.get(Target, task_id) if 0 < task_id < 2**31 else None
            if t is None:
                raise NotFoundError(f"task {task_id} does not exist")
            if t.client_id != client_id:
                raise ForbiddenError(f"task {task_id} belongs to another client")
            row = capture_row(s, t.deployment_id)
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

    def stop(self) -> int:
        """The server is stopping: partly received in-memory packs go to their part files, so the agents
        continue them after the restart (the app's lifespan calls this; an exit handler does too). Never
        raises: a pack not kept is sent again from the start."""
        try:
            return self.uploads.spill()
        except OSError as exc:
            logger.warning("capture uploads: partial packs not kept for after the restart: %s", exc)
            return 0

    def prune(self) -> int:
        """Forget expired leases and those of captures that ended (failed, cancelled: their uploaded packs
        stay until a gc, and a new capture that finds one in the store does not send it again), and the
        partial uploads of tasks that no longer run."""
        with self.db.transaction() as s:
            running = set(s.scalars(select(Target.id).where(Target.state == "running")))
            live = select(CaptureRow.id).join(Target, Target.deployment_id == CaptureRow.deployment_id)
            live = live.where(Target.state.in_(("queued", "running")))
            ended = (CaptureLease.expires_at <= utcnow()) | CaptureLease.capture_id.not_in(live)
            result = cast("CursorResult[Any]", s.execute(delete(CaptureLease).where(ended)))
            gone = int(result.rowcount or 0)
        self.uploads.prune(running)
        return gone

    def begin(self, client_id: int, task_id: int) -> dict[str, Any]:
        live = self.session(client_id, task_id)
        self.prune()
        with self.db.sessions() as s:
            t = s.get(Target, task_id)
            assert t is not None
            row = capture_row(s, t.deployment_id)
            assert row is not None
            name, replace, published = row.image, row.replace, row.image_id
        names = set(self.orch.catalog.names())
        if published is None and not replace and name in names:
            raise ConflictError(
                f"image {name!r} already exists on the server; the capture does not read the disk",
                hint="pick another name, or replace it: fleetcast capture ... --replace",
            )
        previous = self._previous(live, client_id, name if replace else None, names)
        return CaptureBeginReply(
            image=name, replace=replace, max_have=MAX_HAVE, previous=previous
        ).model_dump()

    def _previous(
        self, live: _Live, client_id: int, replaced: str | None, names: set[str]
    ) -> PreviousImage | None:
        """The image a re-capture starts from -- the one it replaces, else the newest image captured from
        this client that still exists (format 2) -- with every pack of it leased, or None."""
        candidates = [replaced] if replaced in names else []
        with self.db.sessions() as s:
            recent = s.scalars(
                select(CaptureRow.image)
                .join(Target, Target.deployment_id == CaptureRow.deployment_id)
                .where(Target.client_id == client_id, CaptureRow.image_id.is_not(None))
                .order_by(CaptureRow.published_at.desc())
                .limit(PREVIOUS_CANDIDATES)
            )
            candidates += [n for n in recent if n in names]
        for name in candidates:
            assert name is not None
            with self.ingest.store.locked(exclusive=False, wait=True):  # no gc between read and lease
                try:
                    data = self.ingest.store.manifest_path(name).read_bytes()
                    m = Manifest.from_json(data)
                except (OSError, FleetcastError) as exc:
                    logger.info("capture: image %s cannot start a re-capture: %s", name, exc)
                    continue
                if m.index_info is None or any(p.hash is None for p in m.packs):
                    continue  # format 1: its packs carry no stored hash
                self._lease(live.capture_id, [p.id for p in m.packs])
            live.previous = (name, image_id(data))
            return PreviousImage(
                image=name,
                image_id=live.previous[1],
                entries=m.index_info.entries,
                index_size=m.index_info.size,
            )
        return None

    def previous_file(self, client_id: int, task_id: int, part: str) -> Path:
        """The manifest or index of the previous image begin named (409 when it changed since)."""
        live = self.session(client_id, task_id)
        if live.previous is None:
            raise NotFoundError(f"capture task {task_id} has no previous image (begin named none)")
        name, expected = live.previous
        path = self.ingest.store.manifest_path(name)
        try:
            found = image_id(path.read_bytes())
        except OSError:
            found = ""
        if found != expected:
            raise ConflictError(
                f"image {name!r} changed since the capture began; capture without it",
                hint="the agent asks the server about every chunk instead",
            )
        return path if part == "manifest" else path.parent / INDEX_FILE

    def previous_chunks(self, client_id: int, task_id: int, body: bytes) -> bytes:
        """Some chunks of the previous image (its inode tables, for a re-capture that skips unchanged
        files): ``protocol.chunk_requests`` in, ``chunk_answer`` out; only that image's chunks."""
        from fleetcast.store.previous import StorePrevious

        self.previous_file(client_id, task_id, "manifest")  # there, and unchanged since begin
        live = self.session(client_id, task_id)
        assert live.previous is not None  # (previous_file checked it)
        try:
            wanted = chunk_requests(body)
        except FleetcastError as exc:
            raise UsageError(exc.message) from exc
        name, expected = live.previous
        store = self.ingest.store
        with store.locked(exclusive=False, wait=True):  # no gc while its packs are read
            manifest = store.open(name)
            if manifest.image_id != expected:
                raise ConflictError(f"image {name!r} changed since the capture began; capture without it")
            return chunk_answer(wanted, StorePrevious(store, name, manifest).fetch(wanted))

    def have(self, client_id: int, task_id: int, body: bytes) -> dict[str, Any]:
        t0 = time.monotonic()
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
        live.have_requests += 1
        live.have_seconds += time.monotonic() - t0
        return reply.model_dump()

    def pack_status(
        self, client_id: int, task_id: int, pack_id: str, stored_hash: str, stored: int
    ) -> PackStatus:
        self.session(client_id, task_id)
        check_chunk_id(pack_id)
        if self.ingest.has_pack(pack_id, stored):
            return PackStatus(received=stored, complete=True)
        return PackStatus(received=self.uploads.received(upload_key(task_id, pack_id, stored_hash), stored))

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
        key = upload_key(task_id, pack_id, stored_hash)
        part = self.uploads.part(key, stored, memory=True)
        try:
            await self.uploads.receive(part, offset, request.stream(), live.count)
        except Superseded:
            raise ConflictError(f"pack {pack_id}: a newer upload of it took over") from None
        except ClientDisconnect:
            logger.info(
                "capture task %d: pack %s cut off at %d of %d bytes", task_id, pack_id, part.size, stored
            )
            return PackStatus(received=part.size)
        if part.size < stored:
            return PackStatus(received=part.size)
        # verified and stored (fsync) in threads of their own: in the loop's default executor (6 threads)
        # six packs being stored held up every have and status request behind them (seconds under load)
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        data = await loop.run_in_executor(self._store_pool, part.content)  # one pack: <= MAX_PACK_STORED
        try:
            await loop.run_in_executor(
                self._store_pool, functools.partial(self.ingest.put_pack, pack_id, data, stored_hash)
            )
        finally:
            self.uploads.drop(key)  # stored, or refused (the agent sends it again from the start)
        live.packs_stored += 1
        live.store_seconds += time.monotonic() - t0
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
        """The chunk index, streamed to its part file (never held in memory); resumable like a pack."""
        live = await asyncio.to_thread(self.session, client_id, task_id)
        if not 0 < stored <= MAX_INDEX_BYTES:
            raise UsageError(f"index size {stored} is not between 1 and {MAX_INDEX_BYTES}")
        part = self.uploads.part(index_key(task_id), stored)
        try:
            await self.uploads.receive(part, offset, request.stream(), live.count)
        except Superseded:
            raise ConflictError("index: a newer upload of it took over") from None
        except ClientDisconnect:
            pass
        return PackStatus(received=part.size, complete=part.complete)

    def index_status(self, client_id: int, task_id: int, stored: int) -> PackStatus:
        self.session(client_id, task_id)
        part = self.uploads.part(index_key(task_id), stored)
        return PackStatus(received=part.size, complete=part.complete)

    def publish(self, client_id: int, task_id: int, manifest: bytes, *, reused: int = 0) -> dict[str, Any]:
        """Publish the image; ``reused``: chunks the agent took from the previous image's index without
        asking (counted as known)."""
        live = self.session(client_id, task_id)
        with self._publish_lock:
            with self.db.sessions() as s:
                row = s.get(CaptureRow, live.capture_id)
                assert row is not None
                name, replace, done_id = row.image, row.replace, row.image_id
            if done_id is not None:  # a retried publish whose answer was lost
                return PublishReply(image=name, image_id=done_id).model_dump()
            expected = image_id(manifest)
            try:
                parsed = Manifest.from_json(manifest)
            except FleetcastError as exc:
                raise UsageError(f"capture task {task_id}: the manifest is not valid: {exc.message}") from exc
            if parsed.name != name:
                raise ForbiddenError(f"capture task {task_id} captures image {name!r}, not {parsed.name!r}")
            index = self.uploads.path(index_key(task_id))
            if not index.is_file():
                raise ConflictError(f"capture task {task_id}: no chunk index was uploaded before the publish")
            if name in self.orch.catalog.names() and self._published_id(name) == expected:
                new_id = expected  # published, and then the answer (or our bookkeeping) was lost
            elif not replace and name in self.orch.catalog.names():
                raise ConflictError(f"image {name!r} appeared on the server while it was being captured")
            else:
                new_id = self._publish(name, manifest, index, replace=replace)
            live.chunks_known += reused
            self._published(live, name, new_id, parsed.used_bytes)
            self.uploads.drop(index_key(task_id))
            logger.info(
                "capture task %d: published %s (%s); %d have requests answered in %.1f s, %d packs verified "
                "and stored in %.1f s", task_id, name, new_id[:16], live.have_requests, live.have_seconds,
                live.packs_stored, live.store_seconds,
            )  # fmt: skip
            return PublishReply(image=name, image_id=new_id).model_dump()

    def _published_id(self, name: str) -> str | None:
        try:
            return image_id(self.ingest.store.read_manifest_bytes(name))
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
            self._add_counts(row, live)
            s.execute(delete(CaptureLease).where(CaptureLease.capture_id == row.id))
            self.orch.bus.record(
                s, "capture-published", deployment_id=row.deployment_id, image=name, image_id=image_id,
                bytes_read=row.bytes_read, bytes_sent=row.bytes_received, chunks_new=row.chunks_new,
                chunks_known=row.chunks_known, packs_new=row.packs_new,
            )  # fmt: skip

    @staticmethod
    def _add_counts(row: CaptureRow, live: _Live) -> None:
        row.bytes_received += live.received
        row.chunks_new += live.chunks_new
        row.chunks_known += live.chunks_known
        live.reset()

    def flush_counters(self) -> None:
        """Persist the in-memory counters of captures no longer running (their totals stay visible)."""
        with self._lock:
            items = list(self._live.items())
        for task_id, live in items:
            if not any(live.counts()):
                continue
            with self.db.transaction() as s:
                t = s.get(Target, task_id)
                row = s.get(CaptureRow, live.capture_id)
                if row is None or t is None:
                    continue
                self._add_counts(row, live)
                if t.state != "running":
                    with self._lock:
                        self._live.pop(task_id, None)
