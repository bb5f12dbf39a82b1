"""The image store: where images live, how a capture publishes one atomically, how gc stays out of its way.

Layout::

    STORE/lock                      flock: captures hold it shared, gc holds it exclusive
    STORE/chunks/ab/abcd...         zstd frames named by the blake3 of their content
    STORE/images/NAME/manifest.json an image is visible exactly when this file exists
    STORE/tmp/cap-*/                one directory per running capture (its own lock file inside)

Atomic publish (``CaptureTransaction.commit``): new packs are written into the capture's tmp directory
and fsynced as they are written (by the capture's worker threads); at the end they are renamed into
``chunks/`` and the directories they were renamed into are fsynced, then the index and manifest are written
to ``tmp/cap-*/image/`` and fsynced, and the ``image`` directory renamed to ``images/NAME`` (then
``images/`` is fsynced). Only what the capture wrote is flushed, never the whole store filesystem.
A capture killed at any moment leaves a tmp directory and possibly unreferenced chunks, never a visible
image; ``store check`` reports them and ``store gc`` removes them.

Concurrency: a capture holds ``STORE/lock`` shared from before its first dedupe look-up until its manifest
is published, so the chunks it found already present cannot be collected under it; ``gc`` takes the lock
exclusive (and refuses when a capture is running). ``check`` tells a live capture's tmp directory from a
leftover by trying its lock file.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

from fleetcast.errors import CaptureError, ImageNotFound, ManifestError, StoreError, UsageError
from fleetcast.store.chunkstore import ChunkStore, copy_durable, fsync_dir, write_file_durable
from fleetcast.store.manifest import INDEX_FILE, Manifest, image_id, load_image, valid_name

if TYPE_CHECKING:
    from fleetcast.store.maintenance import CheckReport, GcReport, Protect, VerifyReport

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TMP_PREFIX = "cap-"


class ImageUsage(NamedTuple):
    """Bytes of the packs an image references (each once) and of those no other image references."""

    stored_bytes: int
    unique_bytes: int


def summary(m: Manifest, usage: ImageUsage | None = None) -> dict[str, Any]:
    """What ``image info --json`` / ``image list --json`` and the server's image details show of an image:
    sizes (``stored_bytes``: every pack it references, once; ``unique_bytes``: packs no other image
    references, None when ``usage`` is not given), partitions, and per area ``os_info`` when captured."""
    return {
        "name": m.name,
        "image_id": m.image_id,
        "created": m.created,
        "tool_version": m.tool_version,
        "disk_size": m.disk_size,
        "logical_sector_size": m.logical_sector_size,
        "physical_sector_size": m.physical_sector_size,
        "table_label": m.table.label,
        "os_hint": m.os_hint,
        "used_bytes": m.used_bytes,
        "data_bytes": m.data_bytes,
        "stored_bytes": usage.stored_bytes if usage is not None else m.stored_bytes,
        "unique_bytes": usage.unique_bytes if usage is not None else None,
        "chunks": m.entry_count,
        "packs": len(m.pack_ids()),
        "partitions": [
            {
                "number": a.number,
                "kind": a.kind,
                "start": a.start,
                "size": a.size,
                "fstype": a.fstype,
                "os_hint": a.os_hint,
                "used_bytes": a.used,
                "data_bytes": a.data_bytes,
                "chunks": a.entry_count,
                "os_info": a.os_info,
            }
            for a in m.areas
            if a.kind != "gap"
        ],
    }


def check_name(name: str) -> str:
    if not valid_name(name):
        raise UsageError(
            f"image name {name!r} is not valid: expected 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


class LocalChunkSource:
    """``ChunkSource`` over the local store's files."""

    def __init__(self, chunks: ChunkStore) -> None:
        self.chunks = chunks

    def fetch(self, chunk_id: str) -> bytes:
        return self.chunks.read(chunk_id)

    def fetch_many(self, chunk_ids: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        for cid in chunk_ids:
            yield cid, self.chunks.read(cid)


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.chunks = ChunkStore(self.root / "chunks")
        self.images_dir = self.root / "images"
        self.tmp_dir = self.root / "tmp"
        self.lock_path = self.root / "lock"

    def __repr__(self) -> str:
        return f"ImageStore({str(self.root)!r})"

    def ensure(self) -> None:
        """Create the store's directories (a capture does this; reading commands never create a store)."""
        try:
            for d in (self.root, self.chunks.root, self.images_dir, self.tmp_dir):
                d.mkdir(parents=True, exist_ok=True)
            self.lock_path.touch(exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the image store at {self.root}: {exc.strerror}") from exc

    # -- images -----------------------------------------------------------------------------------------
    def manifest_path(self, name: str) -> Path:
        return self.images_dir / check_name(name) / MANIFEST

    def names(self) -> list[str]:
        if not self.images_dir.is_dir():
            return []
        # a directory whose name no image can have (".snapshot", "a b") is not an image: skip it rather
        # than fail every listing, check and gc on it
        return sorted(
            p.name for p in self.images_dir.iterdir() if valid_name(p.name) and (p / MANIFEST).is_file()
        )

    def exists(self, name: str) -> bool:
        return self.manifest_path(name).is_file()

    def open(self, name: str, *, lazy: bool = False) -> Manifest:
        """Image ``name``, validated; ``lazy``: its (v2) index is verified only when first used, so
        listings read nothing but the small manifest."""
        return self._load(name, lazy=lazy)[0]

    def _load(self, name: str, *, lazy: bool = False) -> tuple[Manifest, bytes]:
        """The manifest of image ``name`` and its bytes as stored, read once and validated."""
        path = self.manifest_path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise ImageNotFound(
                f"image {name!r} does not exist in the store {self.root}",
                hint="'fleetcast image list' shows the images in this store",
            ) from exc
        except OSError as exc:
            raise StoreError(f"cannot read the manifest of image {name!r}: {exc.strerror}") from exc
        try:
            manifest = load_image(data, path.parent / INDEX_FILE, lazy=lazy)  # v2: its index, verified
        except ManifestError as exc:
            raise ManifestError(
                f"image {name!r} has an invalid manifest: {exc.message}", hint=exc.hint
            ) from exc
        if manifest.name != name:
            raise ManifestError(f"image {name!r} has an invalid manifest: it names image {manifest.name!r}")
        return manifest, data

    def read_manifest_bytes(self, name: str) -> bytes:
        """The manifest exactly as stored (what the server hands to agents), validated."""
        return self._load(name)[1]

    def list(self, *, lazy: bool = True) -> list[Manifest]:
        """Every readable image, by name, read lazily (the index of each is verified when first used);
        damaged manifests are skipped here (``check`` reports them), and so is an image removed while
        this runs."""
        out: list[Manifest] = []
        for name in self.names():
            try:
                out.append(self.open(name, lazy=lazy))
            except ImageNotFound:
                continue
            except StoreError as exc:
                logger.warning("skipping image %s: %s", name, exc)
        return out

    def summaries(self) -> builtins.list[dict[str, Any]]:
        """``summary(m, usage)`` of every image, as ``image list --json`` shows them, without parsing each
        manifest's pack list on every call: per image the summary is cached in the dedupe index (keyed by
        the manifest file's inode, size and mtime and by its image id) and the unique bytes come from its
        pack table (a count of owners per pack). Images the index has not taken in (or edited since) are
        read in full; with no dedupe index at all this is ``summary`` over ``list()`` and ``usage()``."""
        from fleetcast.store.dedupe import DedupeIndex, db_path

        if not db_path(self).exists():
            images = self.list()
            usage = self.usage(images)
            return [summary(m, usage[m.name]) for m in images]
        try:
            dx = DedupeIndex.open(self, sync=False, create=False)
        except StoreError:
            images = self.list()
            usage = self.usage(images)
            return [summary(m, usage[m.name]) for m in images]
        with dx:
            indexed = dx.image_ids()
            cached = dx.summaries()
            out: builtins.list[dict[str, Any]] = []
            fresh: builtins.list[tuple[str, str, str, str]] = []
            for name in self.names():
                try:
                    st = self.manifest_path(name).stat()
                except OSError:
                    continue  # removed meanwhile
                stamp = f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
                hit = cached.get(name)
                if hit is not None and hit[1] == stamp and indexed.get(name) == hit[0]:
                    out.append(json.loads(hit[2]))
                    continue
                try:
                    m = self.open(name, lazy=True)
                except ImageNotFound:
                    continue
                except StoreError as exc:
                    logger.warning("skipping image %s: %s", name, exc)
                    continue
                if indexed.get(name) != m.image_id:  # not (or differently) indexed: the slow, exact way
                    images = self.list()
                    usage = self.usage(images)
                    return [summary(i, usage[i.name]) for i in images]
                one = summary(m, None)
                fresh.append((name, m.image_id, stamp, json.dumps(one)))
                out.append(one)
            unique = dx.unique_bytes()
            for one in out:
                one["unique_bytes"] = unique.get(one["name"], 0)
            try:
                dx.put_summaries(fresh)
            except StoreError as exc:  # a read-only store still lists
                logger.debug("listing cache not written: %s", exc.message)
        return out

    def usage(self, manifests: Iterable[Manifest] | None = None) -> dict[str, ImageUsage]:
        """Per image: bytes of the packs it references (each once) and bytes of the packs no other image
        references (what removing it and running gc would free). ``manifests``: all the store's images
        (default: ``list()``), since uniqueness is relative to every other image."""
        images = self.list() if manifests is None else builtins.list(manifests)
        owners: dict[str, int] = {}
        for m in images:
            for p in m.pack_refs():
                owners[p.id] = owners.get(p.id, 0) + 1
        out: dict[str, ImageUsage] = {}
        for m in images:
            refs = m.pack_refs()
            unique = [p.stored for p in refs if owners[p.id] == 1]
            out[m.name] = ImageUsage(stored_bytes=sum(p.stored for p in refs), unique_bytes=sum(unique))
        return out

    def remove(self, name: str) -> None:
        """Unpublish an image (its chunks stay until ``gc``). Atomic: the directory is renamed away first.

        An image whose manifest is damaged can be removed too (gc refuses to run until it is)."""
        if not self.exists(name):
            self.open(name)  # raises ImageNotFound naming the image
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        trash = self.tmp_dir / f"rm-{name}-{secrets.token_hex(4)}"
        try:
            os.rename(self.images_dir / name, trash)
            fsync_dir(self.images_dir)
            # unpublished now; the files go best-effort (a gc running meanwhile may take them as leftovers)
            shutil.rmtree(trash, ignore_errors=True)
        except OSError as exc:
            raise StoreError(f"cannot remove image {name!r}: {exc.strerror}") from exc
        _forget(self, name)
        logger.info("removed image %s", name)

    # -- chunks -----------------------------------------------------------------------------------------
    def chunk_path(self, chunk_id: str) -> Path:
        return self.chunks.path(chunk_id)

    def source(self) -> LocalChunkSource:
        return LocalChunkSource(self.chunks)

    # -- maintenance (implemented in store.maintenance) --------------------------------------------------
    def verify(self, name: str, *, expected_id: str | None = None) -> VerifyReport:
        from fleetcast.store.maintenance import verify_image

        return verify_image(self, name, expected_id=expected_id)

    def check(self, *, repair: bool = False) -> CheckReport:
        from fleetcast.store.maintenance import check_store

        return check_store(self, repair=repair)

    def gc(self, *, protect: Protect = None) -> GcReport:
        """See ``maintenance.gc_store`` (``protect``: pack ids leased by the server)."""
        from fleetcast.store.maintenance import gc_store

        return gc_store(self, protect=protect)

    # -- locking ----------------------------------------------------------------------------------------
    @contextmanager
    def locked(self, *, exclusive: bool, wait: bool = False) -> Iterator[None]:
        self.ensure()
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open the store's lock file {self.lock_path}: {exc.strerror}") from exc
        try:
            flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
            try:
                fcntl.flock(fd, flags)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise StoreError(
                        f"the store {self.root} is busy: a capture is running",
                        hint="wait for the capture to finish, then retry",
                    ) from exc
                raise StoreError(f"cannot lock the store {self.root}: {exc.strerror}") from exc
            yield
        finally:
            os.close(fd)

    def begin_capture(self, name: str, *, replace: bool = False) -> CaptureTransaction:
        return CaptureTransaction(self, name, replace=replace)

    def tmp_entries(self) -> builtins.list[tuple[Path, bool]]:
        """Everything in tmp/ as (path, live): live means a running capture holds its lock."""
        if not self.tmp_dir.is_dir():
            return []
        out = []
        for p in sorted(self.tmp_dir.iterdir()):
            out.append((p, _is_live(p)))
        return out


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def rename_exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (Linux renameat2 with RENAME_EXCHANGE); OSError when it cannot."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _forget(store: ImageStore, name: str) -> None:
    """Drop a removed image from the dedupe index's image table (best effort: its next sync does too)."""
    from fleetcast.store.dedupe import DedupeIndex, db_path

    if not db_path(store).exists():
        return
    try:
        with DedupeIndex.open(store, sync=False, create=False) as dx:
            dx.drop_image(name)
    except StoreError as exc:
        logger.warning("removed %s; the dedupe index was not told: %s", name, exc.message)


def _announce(store: ImageStore, name: str, iid: str) -> None:
    """Tell the dedupe index this publish is coming (so it is not taken for an edit if we crash before
    the index update); a store whose index cannot be written still publishes."""
    from fleetcast.store.dedupe import announce_publish

    try:
        announce_publish(store, name, iid)
    except StoreError as exc:
        logger.warning("publishing %s without announcing it to the dedupe index: %s", name, exc.message)


def _is_live(tmp: Path) -> bool:
    lock = tmp / "lock"
    if not tmp.is_dir() or not lock.is_file():
        return False
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


class CaptureTransaction:
    """A capture in progress: new chunks go to its tmp directory; ``commit`` publishes the image atomically.

    Used as a context manager; leaving it without ``commit`` (an error) removes the tmp directory.
    """

    def __init__(self, store: ImageStore, name: str, *, replace: bool = False) -> None:
        self.store = store
        self.name = check_name(name)
        self.replace = replace
        self.dir = store.tmp_dir / f"{TMP_PREFIX}{name}-{os.getpid()}-{secrets.token_hex(4)}"
        self.new_dir = self.dir / "chunks"
        self.new_chunks: dict[str, int] = {}
        self._fds: list[int] = []
        self.committed = False

    def __enter__(self) -> CaptureTransaction:
        store = self.store
        store.ensure()
        if store.exists(self.name) and not self.replace:
            raise CaptureError(
                f"image {self.name!r} already exists in the store {store.root}",
                hint=f"pick another name, or remove it first: fleetcast image rm {self.name}",
            )
        lock_fd = os.open(store.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        self._fds.append(lock_fd)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_SH)  # waits while gc runs
            self.new_dir.mkdir(parents=True)
            own = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
            self._fds.append(own)
            fcntl.flock(own, fcntl.LOCK_EX)
        except OSError as exc:
            self._close()
            raise StoreError(f"cannot start a capture in the store {store.root}: {exc.strerror}") from exc
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.committed:
            shutil.rmtree(self.dir, ignore_errors=True)
        self._close()

    def _close(self) -> None:
        while self._fds:
            os.close(self._fds.pop())

    def known(self, chunk_id: str) -> bool:
        """True when the chunk is already in the store or in this capture."""
        return chunk_id in self.new_chunks or self.store.chunks.has(chunk_id)

    def stored_size(self, chunk_id: str) -> int:
        if chunk_id in self.new_chunks:
            return self.new_chunks[chunk_id]
        return self.store.chunks.size(chunk_id)

    def add_chunk(self, chunk_id: str, stored: bytes) -> None:
        """Write a new pack into the tmp directory and fsync it (thread-safe for distinct ids; the worker
        threads of a capture call this, so the fsyncs overlap with reading)."""
        try:
            write_file_durable(self.new_dir / chunk_id, stored)
        except OSError as exc:
            raise StoreError(f"cannot write chunk {chunk_id} in {self.dir}: {exc.strerror}") from exc
        self.new_chunks[chunk_id] = len(stored)

    def _exchange(self, image_dir: Path, final: Path) -> None:
        """Replace a published image atomically: the new directory and the old one swap places
        (renameat2 RENAME_EXCHANGE), so readers see the old image or the new one, never neither; the
        old one is then deleted. Where the filesystem cannot exchange, the old one is renamed away
        first (a moment without the image)."""
        try:
            rename_exchange(image_dir, final)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            logger.warning("%s cannot exchange directories atomically; replacing in two steps", final)
            os.rename(final, image_dir.with_name("old"))
            os.rename(image_dir, final)
            return
        # image_dir now holds the old image

    def commit(self, manifest: Manifest, *, extra: dict[str, Path] | None = None) -> None:
        """Publish; ``extra`` files (name -> path, e.g. a v2 image's index) go beside the manifest."""
        store = self.store
        if manifest.name != self.name:
            raise CaptureError(f"manifest names image {manifest.name!r}, expected {self.name!r}")
        try:
            # fsync only what this capture wrote: each new pack was fsynced when written; here the renames
            # (their directories), the image's files and directory, then the publishing rename
            subdirs: set[Path] = set()
            new_subdirs = False
            for cid in self.new_chunks:
                final = store.chunks.path(cid)
                if final.parent not in subdirs:
                    if not final.parent.is_dir():
                        final.parent.mkdir(parents=True, exist_ok=True)
                        new_subdirs = True
                    subdirs.add(final.parent)
                os.rename(self.new_dir / cid, final)
            for d in sorted(subdirs):
                fsync_dir(d)
            if new_subdirs:
                fsync_dir(store.chunks.root)
            image_dir = self.dir / "image"
            image_dir.mkdir()
            for fname, src in (extra or {}).items():
                copy_durable(src, image_dir / fname)
            data = manifest.to_json()
            write_file_durable(image_dir / MANIFEST, data)
            fsync_dir(image_dir)
            _announce(store, self.name, image_id(data))
            final = store.images_dir / self.name
            try:
                if self.replace and final.exists():
                    self._exchange(image_dir, final)
                else:
                    os.rename(image_dir, final)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise CaptureError(
                        f"image {self.name!r} appeared in the store while this capture ran",
                        hint="pick another name",
                    ) from exc
                raise
            fsync_dir(store.images_dir)
        except OSError as exc:
            raise StoreError(f"cannot publish image {self.name!r} in {store.root}: {exc.strerror}") from exc
        self.committed = True
        shutil.rmtree(self.dir, ignore_errors=True)  # with replace: the old image's files, swapped out
        logger.info("published image %s (%d new chunks)", self.name, len(self.new_chunks))
