"""Running one capture task: read the chosen disk as ``fleetcast image capture`` does, send the server only
what it lacks (issue 11, docs/agent-protocol.md "Capture").

The disk is opened read-only by the engine (``store.capture.capture``), which cuts, hashes and packs
chunks locally; ``RemoteSink`` is its ``CaptureSink`` over the agent API:

- ``have``: one request per batch of chunk digests (raw 32-byte digests in, JSON out);
- ``put_pack``: queued for one of ``UPLOADERS`` upload threads (compression goes on meanwhile; at most
  ``QUEUED_PACKS`` wait, and ``publish`` waits for all): the pack's status first (a pack the server
  already holds, or part of, is not sent again), then the rest from the offset that arrived. A network
  drop mid-body is retried from the new status, through outages of up to ``outage_limit`` seconds.
  The engine packs deterministically, so a capture restarted after a kill re-creates the same packs
  and sends only the missing ones;
- ``publish``: the chunk index (resumable like a pack), then the manifest; the server publishes atomically.

Nothing is written to the source disk: the engine opens it ``O_RDONLY`` and a capture never mounts it.
"""

from __future__ import annotations

import logging
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import blake3
import httpx
from pydantic import ValidationError

from fleetcast.errors import AgentError, FleetcastError, TransportError
from fleetcast.protocol import (
    CHUNK_REQUEST,
    MAX_CHUNK_REQUESTS,
    MAX_HAVE,
    CaptureBeginReply,
    HaveReply,
    PackStatus,
    PreviousImage,
    PublishReply,
    Task,
    describe,
    read_chunk_answer,
)
from fleetcast.store.index import Entry
from fleetcast.store.manifest import Manifest, PackRef
from fleetcast.store.source import KnownChunk
from fleetcast.transport.http import HttpStatusError, make_client, request

if TYPE_CHECKING:
    from fleetcast.agent.api import AgentApi
    from fleetcast.agent.runner import Reporter, TaskRunner

logger = logging.getLogger(__name__)

HAVE_THREADS = 4  # have requests in flight at once (the engine reads on meanwhile; answers used in order)
UPLOADERS = 6  # packs uploading at once (the server verifies each while the next ones arrive)
QUEUED_PACKS = 8  # packs compressed and waiting for an uploader: bounds the memory (~16 MiB each)
PREVIOUS_MAX_ENTRIES = 1_000_000  # chunks of a previous image held (40 B each, PreviousChunks)
_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 5.0


def _model(model: Any, response: httpx.Response, what: str) -> Any:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise AgentError(f"{what}: {describe(exc)}") from exc


@dataclass
class SinkStats:
    have_asked: int = 0
    have_known: int = 0
    packs_sent: int = 0
    packs_skipped: int = 0
    bytes_sent: int = 0  # request bodies: digests, pack bytes, index, manifest
    have_requests: int = 0
    reused: int = 0  # chunks found in the previous image's index (not asked)
    have_seconds: float = 0.0  # the engine's reading thread waiting for have answers
    wait_seconds: float = 0.0  # the engine waiting for an upload slot (the link is the bottleneck)
    publish_seconds: float = 0.0  # last uploads, index and manifest

    def add(self, **n: float) -> None:
        for k, v in n.items():
            setattr(self, k, getattr(self, k) + v)


class RemoteSink:
    """``store.source.CaptureSink`` over ``/api/agent/captures/{task_id}/``; thread-safe per pack, and
    ``have`` may run in ``have_threads`` threads at once (the engine asks ahead while it reads)."""

    have_threads = HAVE_THREADS

    def __init__(
        self,
        api: AgentApi,
        task_id: int,
        *,
        stop: Callable[[], bool] | None = None,
        max_have: int = MAX_HAVE,
        on_publish: Callable[[], None] | None = None,
        uploaders: int = UPLOADERS,
        queued: int = QUEUED_PACKS,
        previous: PreviousChunks | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.api = api
        # its own connections (run_capture passes a client with room for every upload and have request):
        # the agent's client has 8, and with 6 uploads holding theirs for seconds each, have requests
        # waited for a free one (37.6 s of have waits for 5.7 s of server work, bench at load 13)
        self.client = client if client is not None else api.client
        self.task_id = task_id
        self.base = f"/api/agent/captures/{task_id}"
        self.stop = stop
        self.max_have = max(1, min(max_have, MAX_HAVE))
        self.stats = SinkStats()
        self._lock = threading.Lock()
        self.published: PublishReply | None = None
        self.on_publish = on_publish
        self.previous = previous or PreviousChunks()  # where the previous image keeps its chunks (leased)
        # uploads run beside compression: put_pack queues a pack (at most ``queued`` wait) and returns
        self._pool = ThreadPoolExecutor(max(1, uploaders), thread_name_prefix=f"upload-{task_id}")
        self._slots = threading.BoundedSemaphore(max(1, queued))
        self._pending: list[Future[None]] = []

    def __enter__(self) -> RemoteSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # leaving without publish abandons the capture: the server shows nothing; its leases expire
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _raise_failed(self, *, wait: bool) -> None:
        """Re-raise the first failed upload; with ``wait``, after every queued one ended."""
        with self._lock:
            pending = list(self._pending)
        for fut in pending:
            if wait or fut.done():
                fut.result()
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()]

    def _request(self, method: str, url: str, what: str, **kw: Any) -> httpx.Response:
        return request(
            self.client, method, url, outage_limit=self.api.outage_limit, stop=self.stop, what=what, **kw
        )

    def _count(self, **n: float) -> None:
        with self._lock:
            self.stats.add(**n)

    # -- CaptureSink ------------------------------------------------------------------------------------
    def have(self, hashes: Sequence[bytes]) -> dict[bytes, KnownChunk]:
        out: dict[bytes, KnownChunk] = {}
        t0 = time.monotonic()
        ask: list[bytes] = []
        for h in hashes:
            k = self.previous.get(h)
            if k is None:
                ask.append(h)
            else:
                out[h] = k
        self._count(reused=len(hashes) - len(ask))
        for start in range(0, len(ask), self.max_have):
            batch = ask[start : start + self.max_have]
            body = b"".join(batch)
            response = self._request(
                "POST", f"{self.base}/have", "have request", content=body,
                headers={"Content-Type": "application/octet-stream"},
            )  # fmt: skip
            reply: HaveReply = _model(HaveReply, response, "have reply")
            for i, pack, offset in reply.known:
                info = reply.packs.get(pack)
                if not 0 <= i < len(batch) or info is None:
                    raise AgentError(f"have reply: entry {i} or pack {pack} is not part of the request")
                out[batch[i]] = KnownChunk(pack, offset, info.stored, info.hash)
            self._count(
                have_asked=len(batch), have_known=len(reply.known), bytes_sent=len(body), have_requests=1
            )
        self._count(have_seconds=time.monotonic() - t0)
        return out

    def put_pack(self, pack_id: str, stored: bytes) -> None:
        self._raise_failed(wait=False)
        t0 = time.monotonic()
        while not self._slots.acquire(timeout=1.0):
            self._raise_failed(wait=False)
        self._count(wait_seconds=time.monotonic() - t0)
        try:
            fut = self._pool.submit(self._put_pack, pack_id, stored)
        except BaseException:
            self._slots.release()
            raise
        fut.add_done_callback(lambda _: self._slots.release())
        with self._lock:
            self._pending.append(fut)

    def publish(self, manifest: bytes, index: Path) -> str:
        t0 = time.monotonic()
        self._raise_failed(wait=True)  # every pack is on the server before the manifest goes
        if self.on_publish is not None:
            self.on_publish()
        size = index.stat().st_size
        self._upload(
            f"{self.base}/index", size, lambda offset: _file_from(index, offset), "chunk index",
            {"stored": size}, pack=False,
        )  # fmt: skip
        response = self._request(
            "POST", f"{self.base}/publish", "publish", content=manifest, params={"reused": self.stats.reused},
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        self._count(bytes_sent=len(manifest))
        self.published = _model(PublishReply, response, "publish reply")
        self._count(publish_seconds=time.monotonic() - t0)
        return self.published.image_id

    def _put_pack(self, pack_id: str, data: bytes) -> None:
        params = {"stored": len(data), "stored_hash": blake3.blake3(data).hexdigest()}
        url = f"{self.base}/packs/{pack_id}"
        self._upload(url, len(data), lambda offset: data[offset:], f"pack {pack_id[:16]}", params, pack=True)

    # -- resumable upload -------------------------------------------------------------------------------
    def _status(self, url: str, params: dict[str, Any], what: str) -> PackStatus:
        """How much of it the server holds (the request itself rides out an outage)."""
        response = self._request("GET", url, f"{what} status", params=params)
        status: PackStatus = _model(PackStatus, response, f"{what} status")
        return status

    def _upload(
        self,
        url: str,
        size: int,
        body: Callable[[int], bytes | Iterator[bytes]],
        what: str,
        params: dict[str, Any],
        *,
        pack: bool,
    ) -> None:
        """``size`` bytes to ``url``, resumed from what the server says arrived; ``body(offset)`` gives the
        bytes from ``offset`` (bytes, or an iterator of pieces streamed from a file)."""
        status = self._status(url, params, what)
        if status.complete:
            self._count(packs_skipped=1 if pack else 0)
            return
        first_failure: float | None = None
        delay = _BACKOFF_FIRST
        while True:
            offset = min(status.received, size)
            try:
                response = self.client.put(
                    url, params={**params, "offset": offset}, content=body(offset),
                    headers={"Content-Type": "application/octet-stream"},
                )  # fmt: skip
                problem = f"status {response.status_code}"
                if response.is_success:
                    self._count(bytes_sent=size - offset)
                    status = _model(PackStatus, response, f"{what} upload")
                    if status.complete:
                        self._count(packs_sent=1 if pack else 0)
                        return
                    problem = f"only {status.received} of {size} bytes arrived"
                elif response.status_code in (422,):  # did not verify: send it all again
                    logger.warning(
                        "%s: the server refused it (%s); sending it again", what, response.text[:200]
                    )
                    status = PackStatus(received=0)
                    continue
                elif response.status_code not in (409, 408, 425, 429, 500, 502, 503, 504):
                    raise HttpStatusError(
                        f"{what}: server answered {response.status_code}: {response.text[:200]}",
                        status=response.status_code,
                    )
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            now = time.monotonic()
            if first_failure is None:
                first_failure = now
                logger.warning("%s upload interrupted (%s); continuing where it stopped", what, problem)
            elif now - first_failure > self.api.outage_limit:
                raise TransportError(f"{what}: upload failed for {now - first_failure:.0f} s: {problem}")
            if self.stop is not None and self.stop():
                raise TransportError(f"{what}: stopped during the upload ({problem})")
            time.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX)
            status = self._status(url, params, what)  # what arrived


def _file_from(path: Path, offset: int, piece: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of ``path`` from ``offset``, in pieces (a large index is never held in memory)."""
    with open(path, "rb") as f:
        f.seek(offset)
        while block := f.read(piece):
            yield block


class PreviousChunks:
    """The previous image's chunks, compact: one sorted ``bytes`` of 40-byte records (digest, pack number,
    offset) searched by bisection, and the image's pack list; a ``KnownChunk`` is made only on a hit (no
    Python object per chunk is kept: 1,000,000 chunks hold 40 MB)."""

    _REC = struct.Struct("<32sII")

    def __init__(self, records: bytes = b"", packs: Sequence[PackRef] = ()) -> None:
        self.records = records
        self.packs = tuple(packs)
        self.count = len(records) // self._REC.size

    def __len__(self) -> int:
        return self.count

    def get(self, digest: bytes) -> KnownChunk | None:
        recs, size = self.records, self._REC.size
        lo, hi = 0, self.count
        while lo < hi:
            mid = (lo + hi) // 2
            key = recs[mid * size : mid * size + 32]
            if key < digest:
                lo = mid + 1
            elif key > digest:
                hi = mid
            else:
                _, pack, offset = self._REC.unpack_from(recs, mid * size)
                ref = self.packs[pack]
                return KnownChunk(ref.id, offset, ref.stored, ref.hash or "")
        return None

    @classmethod
    def from_index(cls, entries: Iterator[Entry], packs: Sequence[PackRef]) -> PreviousChunks:
        pack = cls._REC.pack
        records = sorted(pack(e.hash, e.pack, e.offset) for e in entries if packs[e.pack].hash is not None)
        return cls(b"".join(records), packs)


def _download(api: AgentApi, url: str, path: Path) -> None:
    """A GET's body streamed into ``path`` in pieces (never held whole)."""
    try:
        with api.client.stream("GET", url) as response, open(path, "wb") as f:
            if not response.is_success:
                raise HttpStatusError(
                    f"GET {url}: server answered {response.status_code}", status=response.status_code
                )
            for piece in response.iter_bytes(1 << 20):
                f.write(piece)
    except httpx.HTTPError as exc:
        raise TransportError(f"GET {url}: {type(exc).__name__}: {exc}") from exc


@dataclass
class LoadedPrevious:
    """The previous image as the agent holds it: its chunks for ``have`` and, while ``keep`` (a directory
    the caller owns) exists, its manifest with its index for not reading unchanged files."""

    chunks: PreviousChunks
    manifest: Manifest | None = None


def load_previous(
    api: AgentApi, task_id: int, previous: PreviousImage, stop: Callable[[], bool] | None, keep: Path
) -> LoadedPrevious:
    """Where the previous image keeps each of its chunks, from its index (verified against its manifest and
    image id, the index kept in ``keep``); empty when it is too large to hold or cannot be had (every chunk
    is asked instead, every byte read)."""
    from fleetcast.store.manifest import load_image

    if previous.entries > PREVIOUS_MAX_ENTRIES:
        logger.info(
            "previous image %r: %d entries, more than the %d held in memory; asking the server about every "
            "chunk", previous.image, previous.entries, PREVIOUS_MAX_ENTRIES,
        )  # fmt: skip
        return LoadedPrevious(PreviousChunks())
    base = f"/api/agent/captures/{task_id}/previous"
    what = f"previous image {previous.image!r}"
    try:
        manifest = request(
            api.client, "GET", f"{base}/manifest", outage_limit=api.outage_limit, stop=stop,
            what=f"manifest of the {what}",
        ).content  # fmt: skip
        path = keep / "index"
        _download(api, f"{base}/index", path)
        m = load_image(manifest, path, expected_id=previous.image_id, what=what)
        if m.index is None:
            raise AgentError(f"{what}: expected a format-2 image with an index, found format {m.version}")
        known = PreviousChunks.from_index(m.index.entries(), m.packs)
    except FleetcastError as exc:
        logger.warning("%s: %s; asking the server about every chunk", what, exc.message)
        return LoadedPrevious(PreviousChunks())
    logger.info("task %d: %s: %d chunks known without asking", task_id, what, len(known))
    return LoadedPrevious(known, m)


class RemotePrevious:
    """``store.previous.PreviousSource`` over the agent API: the previous image's manifest (held by the
    agent) and ``fetch`` through ``POST previous/chunks`` (the engine checks every chunk's digest)."""

    def __init__(self, api: AgentApi, task_id: int, manifest: Manifest, stop: Callable[[], bool]) -> None:
        self.api, self.task_id, self.manifest, self.stop = api, task_id, manifest, stop
        self.fetched = 0  # bytes received

    def fetch(self, wanted: Sequence[tuple[bytes, int]]) -> Mapping[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        for at in range(0, len(wanted), MAX_CHUNK_REQUESTS):
            part = list(wanted[at : at + MAX_CHUNK_REQUESTS])
            response = request(
                self.api.client, "POST", f"/api/agent/captures/{self.task_id}/previous/chunks",
                outage_limit=self.api.outage_limit, stop=self.stop, what="previous image's chunks",
                content=b"".join(CHUNK_REQUEST.pack(d, n) for d, n in part),
                headers={"Content-Type": "application/octet-stream"},
            )  # fmt: skip
            self.fetched += len(response.content)
            out.update(read_chunk_answer(part, response.content))
        return out


def run_capture(
    runner: TaskRunner, task: Task, reporter: Reporter, cancel: threading.Event
) -> dict[str, Any]:
    """The capture task: disk chosen by the rule, read into image ``task.image`` on the server."""
    from fleetcast.disk.discovery import list_disks
    from fleetcast.disk.rules import parse_rule, select_disk
    from fleetcast.store.capture import CaptureStats, capture

    api = runner.api
    task_started = time.monotonic()
    reporter.update(phase="selecting-disk", urgent=True)
    rule = parse_rule(task.disk_rule)
    disk = select_disk(rule, list_disks(runner.allow), 0)
    source = Path(disk.path)
    reporter.update(disk=disk.path, urgent=True)

    def stopping() -> bool:
        return runner.stop.is_set() or cancel.is_set()

    begin = request(
        api.client, "POST", f"/api/agent/captures/{task.task_id}/begin", outage_limit=api.outage_limit,
        stop=stopping, what="capture begin",
    )  # fmt: skip
    info: CaptureBeginReply = _model(CaptureBeginReply, begin, "capture begin reply")
    runner._check(cancel)
    keep = tempfile.TemporaryDirectory(prefix="fleetcast-previous-")
    loaded = (
        load_previous(api, task.task_id, info.previous, stopping, Path(keep.name)) if info.previous else None
    )
    runner._check(cancel)
    client = make_client(api.server, api.credential, verify=api.verify, workers=UPLOADERS + HAVE_THREADS)
    remote = (
        RemotePrevious(api, task.task_id, loaded.manifest, stopping)
        if loaded is not None and loaded.manifest is not None
        else None
    )
    try:
        sink = RemoteSink(
            api, task.task_id, stop=stopping, max_have=info.max_have,
            on_publish=lambda: reporter.update(phase="publishing", urgent=True),
            previous=loaded.chunks if loaded is not None else None, client=client,
        )  # fmt: skip
        started = time.monotonic()
        before = started - task_started  # disk choice, begin, the previous image's manifest and index

        def progress(done: int, total: int) -> None:
            runner._check(cancel)
            first = reporter.snapshot.phase != "capturing"
            reporter.update(phase="capturing", bytes_done=done, bytes_total=total, urgent=first)

        logger.info(
            "task %d: capturing %s as %r (replace: %s)", task.task_id, source, task.image, info.replace
        )
        stats = CaptureStats()
        # the server checks the name (begin, publish); the agent has no store of its own
        # compression workers (--workers, at least 2); uploads run beside them in the sink's own threads
        workers = max(2, runner.workers)
        from fleetcast.identity.osinfo import start  # read-only: image details, the plan's network check

        probes = start(Path(source))  # they run while the disk is read
        probed = 0.0

        def os_info() -> dict[int, dict[str, Any]]:
            nonlocal probed
            t0 = time.monotonic()
            found = probes.result()
            probed = time.monotonic() - t0
            return found

        manifest = capture(
            source,
            task.image,
            None,
            progress=progress,
            stats=stats,
            sink=sink,
            workers=workers,
            os_info=os_info,
            previous=remote,
        )
        seconds = time.monotonic() - started
        runner._check(cancel)
        reporter.update(phase="finishing", urgent=True)
        s = sink.stats
        logger.info(
            "task %d: capture timing: %.1f s in all, %.1f s before it (disk, begin, previous image), "
            "%.1f s waiting for the OS probes, %.1f s in %d have requests, %.1f s waiting for upload slots, "
            "%.1f s publishing (uploads left, index, manifest); %d packs sent, %d skipped; %.1f MiB not "
            "read (unchanged since the previous image; %.1f MiB of its inode tables fetched)",
            task.task_id, seconds, before, probed, s.have_seconds, s.have_requests, s.wait_seconds,
            s.publish_seconds, s.packs_sent, s.packs_skipped, stats.unread_bytes / (1 << 20),
            (remote.fetched if remote else 0) / (1 << 20),
        )  # fmt: skip
    finally:
        client.close()
        keep.cleanup()
    lines = [
        f"capture: image {task.image!r} ({manifest.image_id[:16]}) from {disk.path}",
        f"capture: bytes_read {stats.read_bytes}, bytes_sent {s.bytes_sent}, chunks_new "
        f"{s.have_asked - s.have_known}, chunks_known {s.have_known + s.reused} ({s.reused} from the "
        f"previous image), packs sent {s.packs_sent}, packs the server had {s.packs_skipped}, "
        f"seconds {seconds:.1f}",
    ]
    return {"disk": disk.path, "changes": lines, "action": "none"}
