"""The store's persistent dedupe index: chunk hash -> (pack, offset), answered in batches.

A SQLite file ``STORE/dedupe.sqlite`` (WAL) with three tables::

    packs(n INTEGER PRIMARY KEY, id TEXT UNIQUE, stored INTEGER, hash TEXT)  (hash NULL: v1, not hashed yet)
    chunks(hash BLOB, pack INTEGER, offset INTEGER, PRIMARY KEY (hash, pack)) WITHOUT ROWID
    images(name TEXT PRIMARY KEY, image_id TEXT)                               (the images taken in)
    pending(name TEXT, image_id TEXT)          (announced by a publish just before its rename)

It is a cache of what the images' own (verified) indexes say, so it can always be rebuilt from them:

- **built** from every image when the file is missing, unreadable or of another schema;
- **brought up to date** (``sync``) when opened for a capture: images published since (a capture killed
  between its publish and its index update) are added, images removed are dropped from ``images`` -- their
  packs stay answerable until gc removes them (a capture that reuses one holds the store lock, so gc cannot
  remove it under it; the server leases what it answers);
- **updated in one SQLite transaction** when an image is published (``add_image``);
- **kept consistent by gc**: the rows of the packs gc removes are deleted before their files are
  (``forget_packs``), so a crash in between leaves rows only for packs that were not removed;
- ``have`` answers only packs whose file is present with the recorded stored size, so a pack deleted behind
  the store's back is never answered (its rows are dropped);
- ``fleetcast store check --repair`` deletes the file and builds it again.

A hash may have rows in several packs (two captures stored the same chunk at once): removing one pack keeps
the others' rows, so lookups keep agreeing with a scan of every manifest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import blake3

from fleetcast.errors import StoreError
from fleetcast.store.manifest import image_id
from fleetcast.store.source import KnownChunk

if TYPE_CHECKING:
    from fleetcast.store.images import ImageStore
    from fleetcast.store.manifest import Manifest, PackRef

logger = logging.getLogger(__name__)

DB_FILE = "dedupe.sqlite"
SCHEMA = 5
QUERY_BATCH = 500  # hashes per SELECT (SQLite's variable limit is far above)
INSERT_BATCH = 20_000

_DDL = (
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS packs(n INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
    "stored INTEGER NOT NULL, hash TEXT, owners INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS chunks(hash BLOB NOT NULL, pack INTEGER NOT NULL, offset INTEGER NOT NULL, "
    "PRIMARY KEY (hash, pack)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS images(name TEXT PRIMARY KEY, image_id TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS image_packs(name TEXT NOT NULL, pack INTEGER NOT NULL, "
    "PRIMARY KEY (name, pack)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS summaries(name TEXT PRIMARY KEY, image_id TEXT NOT NULL, "
    "stamp TEXT NOT NULL, summary TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pending(name TEXT NOT NULL, image_id TEXT NOT NULL, "
    "PRIMARY KEY (name, image_id)) WITHOUT ROWID",
)


@dataclass
class SyncReport:
    added: int = 0
    dropped: int = 0
    skipped: int = 0  # images that could not be read (store check reports them)
    rebuilt: bool = False


@dataclass
class IndexStats:
    images: int
    packs: int
    entries: int
    bytes: int


def announce_publish(store: ImageStore, name: str, iid: str) -> None:
    """``DedupeIndex.announce`` for a publish (creates the index file when there is none yet)."""
    with DedupeIndex.open(store, sync=False) as dx:
        dx.announce(name, iid)


def db_path(store: ImageStore) -> Path:
    return store.root / DB_FILE


def remove_db(store: ImageStore) -> None:
    """Delete the index file (and its WAL); the next open builds it again."""
    base = db_path(store)
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{base}{suffix}")


class DedupeIndex:
    """An open dedupe index. Thread-safe (one connection, one lock); a context manager closes it."""

    def __init__(self, store: ImageStore, conn: sqlite3.Connection, *, rebuilt: bool) -> None:
        self.store = store
        self.conn = conn
        self.rebuilt = rebuilt
        self._lock = threading.Lock()
        self._pack_ok: dict[str, bool] = {}

    # -- opening ---------------------------------------------------------------------------------------
    @classmethod
    def open(cls, store: ImageStore, *, sync: bool = True, create: bool = True) -> DedupeIndex:
        """Open (creating or rebuilding when needed) and, with ``sync``, bring it up to date with the
        store's images. Raises StoreError when the file cannot be created at all."""
        path = db_path(store)
        if not create and not path.exists():
            raise StoreError(f"the store {store.root} has no dedupe index yet")
        rebuilt = False
        try:
            conn = _connect(path)
            if not _schema_ok(conn):
                conn.close()
                raise sqlite3.DatabaseError("other schema")
        except sqlite3.DatabaseError as exc:
            if path.exists():
                logger.warning("dedupe index %s is unreadable (%s): rebuilding it", path, exc)
            remove_db(store)
            rebuilt = True
            try:
                conn = _connect(path)
                _create(conn)
            except sqlite3.Error as exc2:
                raise StoreError(f"cannot create the dedupe index {path}: {exc2}") from exc2
        dx = cls(store, conn, rebuilt=rebuilt)
        if sync:
            dx.sync()
        return dx

    @classmethod
    def rebuild(cls, store: ImageStore) -> tuple[DedupeIndex, SyncReport]:
        """Delete the file and build it from every image (``store check --repair``)."""
        remove_db(store)
        dx = cls.open(store, sync=False)
        report = dx.sync()
        report.rebuilt = True
        return dx, report

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> DedupeIndex:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- keeping up with the store ---------------------------------------------------------------------
    def sync(self) -> SyncReport:
        """Add the images published since the last update, drop the images removed since."""
        from fleetcast.errors import NotFoundError

        report = SyncReport(rebuilt=self.rebuilt)
        tampered = self.changed_since_publish()
        for message in tampered.values():
            logger.warning("dedupe index: not taking in %s", message)
        present: dict[str, str] = {}
        for name in self.store.names():
            try:
                present[name] = image_id(self.store.manifest_path(name).read_bytes())
            except OSError:
                continue  # removed while we looked: not an image any more
        with self._lock:
            known = dict(self._q("SELECT name, image_id FROM images").fetchall())
        for name in tampered:  # keep what was published; store check reports the edit
            present.pop(name, None)
            known.pop(name, None)
        gone = [n for n, iid in known.items() if present.get(n) != iid]
        if gone:
            with self._lock, self._txn():
                for n in gone:
                    self._unown(n)
                self.conn.executemany("DELETE FROM images WHERE name = ?", [(n,) for n in gone])
            report.dropped = len([n for n in gone if n not in present])
        for name, iid in present.items():
            if known.get(name) == iid:
                continue
            try:
                manifest = self.store.open(name)
            except NotFoundError:
                continue
            except StoreError as exc:
                logger.warning("dedupe index: skipping image %s: %s", name, exc.message)
                report.skipped += 1
                continue
            self.add_image(manifest)
            report.added += 1
        if report.added or report.dropped:
            logger.info("dedupe index: %d images added, %d dropped", report.added, report.dropped)
        return report

    def add_image(self, manifest: Manifest, *, chunks: bool = True) -> None:
        """Take in a published image's entries, in one transaction (its ``images`` row last).
        ``chunks=False`` (benchmarks of the listing only) records the image and its packs, not its chunks."""
        refs = manifest.pack_refs()
        try:
            with self._lock, self._txn():
                for p in refs:
                    self.conn.execute(
                        "INSERT INTO packs(id, stored, hash) VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE "
                        "SET hash = COALESCE(packs.hash, excluded.hash)",
                        (p.id, p.stored, p.hash),
                    )
                numbers = (
                    dict(
                        self.conn.execute(
                            f"SELECT id, n FROM packs WHERE id IN ({','.join('?' * len(refs))})",
                            [p.id for p in refs],
                        ).fetchall()
                    )
                    if refs
                    else {}
                )
                by_index = [numbers[p.id] for p in refs]
                rows: list[tuple[bytes, int, int]] = []
                for h, pack_no, off in _entry_rows(manifest, by_index, numbers) if chunks else ():
                    rows.append((h, pack_no, off))
                    if len(rows) >= INSERT_BATCH:
                        self._insert(rows)
                self._insert(rows)
                self.conn.execute(
                    "INSERT OR REPLACE INTO images(name, image_id) VALUES (?, ?)",
                    (manifest.name, manifest.image_id),
                )
                self.conn.execute("DELETE FROM pending WHERE name = ?", (manifest.name,))
                self._unown(manifest.name)
                self.conn.executemany(
                    "INSERT OR IGNORE INTO image_packs(name, pack) VALUES (?, ?)",
                    [(manifest.name, n) for n in by_index],
                )
                self.conn.execute(
                    "UPDATE packs SET owners = owners + 1 WHERE n IN "
                    "(SELECT pack FROM image_packs WHERE name = ?)",
                    (manifest.name,),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot update the dedupe index of {self.store.root}: {exc}") from exc
        for p in refs:
            self._pack_ok.pop(p.id, None)

    def _unown(self, name: str) -> None:
        """Forget which packs image ``name`` uses and its cached summary (inside a transaction)."""
        self.conn.execute(
            "UPDATE packs SET owners = owners - 1 WHERE n IN (SELECT pack FROM image_packs WHERE name = ?)",
            (name,),
        )
        self.conn.execute("DELETE FROM image_packs WHERE name = ?", (name,))
        self.conn.execute("DELETE FROM summaries WHERE name = ?", (name,))

    def drop_image(self, name: str) -> None:
        """An image was removed (its packs stay answerable until gc removes them)."""
        try:
            with self._lock, self._txn():
                self._unown(name)
                for table in ("images", "pending"):
                    self.conn.execute(f"DELETE FROM {table} WHERE name = ?", (name,))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot update the dedupe index of {self.store.root}: {exc}") from exc

    def note_pack(self, ref: PackRef) -> None:
        """Remember a pack's stored size and hash (an uploaded pack, before an image names it)."""
        try:
            with self._lock, self._txn():
                self.conn.execute(
                    "INSERT INTO packs(id, stored, hash) VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE "
                    "SET stored = excluded.stored, hash = excluded.hash",
                    (ref.id, ref.stored, ref.hash),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot update the dedupe index of {self.store.root}: {exc}") from exc
        self._pack_ok.pop(ref.id, None)

    def _insert(self, rows: list[tuple[bytes, int, int]]) -> None:
        self.conn.executemany("INSERT OR IGNORE INTO chunks(hash, pack, offset) VALUES (?, ?, ?)", rows)
        rows.clear()

    def forget_packs(self, pack_ids: Iterable[str]) -> int:
        """Delete every row of these packs (gc calls this before it deletes their files)."""
        ids = list(pack_ids)
        if not ids:
            return 0
        try:
            with self._lock, self._txn():
                self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS gone(n INTEGER PRIMARY KEY)")
                self.conn.execute("DELETE FROM gone")
                for i in range(0, len(ids), QUERY_BATCH):
                    part = ids[i : i + QUERY_BATCH]
                    marks = ",".join("?" * len(part))
                    self.conn.execute(f"INSERT INTO gone SELECT n FROM packs WHERE id IN ({marks})", part)
                cur = self.conn.execute("DELETE FROM chunks WHERE pack IN (SELECT n FROM gone)")
                removed = cur.rowcount
                self.conn.execute("DELETE FROM image_packs WHERE pack IN (SELECT n FROM gone)")
                self.conn.execute("DELETE FROM packs WHERE n IN (SELECT n FROM gone)")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot update the dedupe index of {self.store.root}: {exc}") from exc
        for pid in ids:
            self._pack_ok.pop(pid, None)
        return removed

    # -- lookups ---------------------------------------------------------------------------------------
    def have(self, hashes: Sequence[bytes]) -> dict[bytes, KnownChunk]:
        """The subset of these chunk hashes (32-byte blake3 digests) the store keeps, with where."""
        out: dict[bytes, KnownChunk] = {}
        missing_packs: set[str] = set()
        try:
            with self._lock:
                for i in range(0, len(hashes), QUERY_BATCH):
                    part = list(hashes[i : i + QUERY_BATCH])
                    rows = self.conn.execute(
                        "SELECT c.hash, p.id, c.offset, p.stored, p.hash, p.n FROM chunks c "
                        f"JOIN packs p ON p.n = c.pack WHERE c.hash IN ({','.join('?' * len(part))})",
                        part,
                    ).fetchall()
                    for h, pid, off, stored, recorded, n in rows:
                        if h in out:
                            continue
                        if not self._present(pid, stored):
                            missing_packs.add(pid)
                            continue
                        phash = recorded if recorded is not None else self._hash_pack(n, pid)
                        if phash is None:
                            missing_packs.add(pid)
                            continue
                        out[bytes(h)] = KnownChunk(pid, off, stored, phash)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the dedupe index of {self.store.root}: {exc}") from exc
        if missing_packs:
            logger.warning(
                "dedupe index: %d pack(s) are missing or have another size (first %s); not reusing them",
                len(missing_packs),
                sorted(missing_packs)[0],
            )
            self.forget_packs(missing_packs)
        return out

    def _present(self, pid: str, stored: int) -> bool:
        ok = self._pack_ok.get(pid)
        if ok is None:
            try:
                ok = self.store.chunks.path(pid).stat().st_size == stored
            except OSError:
                ok = False
            self._pack_ok[pid] = ok
        return ok

    def _hash_pack(self, n: int, pid: str) -> str | None:
        """A v1 pack's stored hash, computed once and remembered (caller holds the lock)."""
        try:
            h = str(blake3.blake3(self.store.chunks.path(pid).read_bytes()).hexdigest())
        except OSError:
            return None
        with self._txn():
            self.conn.execute("UPDATE packs SET hash = ? WHERE n = ?", (h, n))
        return h

    def pack_hash(self, pid: str) -> str | None:
        """The stored hash the index records for a pack (None: unknown pack or not hashed yet)."""
        with self._lock:
            row = self._q("SELECT hash FROM packs WHERE id = ?", (pid,)).fetchone()
        return None if row is None else row[0]

    def stats(self) -> IndexStats:
        with self._lock:
            images = self._q("SELECT count(*) FROM images").fetchone()[0]
            packs = self._q("SELECT count(*) FROM packs").fetchone()[0]
            entries = self._q("SELECT count(*) FROM chunks").fetchone()[0]
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                size += os.stat(f"{db_path(self.store)}{suffix}").st_size
        return IndexStats(images, packs, entries, size)

    # -- listing cache (image list without parsing every pack list) -----------------------------------
    def unique_bytes(self) -> dict[str, int]:
        """name -> stored bytes of its packs that no other image the index took in uses."""
        with self._lock:
            rows = self._q(
                "SELECT ip.name, SUM(p.stored) FROM image_packs ip JOIN packs p ON p.n = ip.pack "
                "WHERE p.owners = 1 GROUP BY ip.name"
            ).fetchall()
        return {n: int(b) for n, b in rows}

    def summaries(self) -> dict[str, tuple[str, str, str]]:
        """name -> (image id, manifest stamp, summary JSON) cached by a listing."""
        with self._lock:
            rows = self._q("SELECT name, image_id, stamp, summary FROM summaries").fetchall()
        return {n: (i, st, sm) for n, i, st, sm in rows}

    def put_summaries(self, rows: Sequence[tuple[str, str, str, str]]) -> None:
        """Cache (name, image id, stamp, summary JSON) rows; only for images the index has taken in."""
        if not rows:
            return
        try:
            with self._lock, self._txn():
                self.conn.executemany(
                    "INSERT OR REPLACE INTO summaries(name, image_id, stamp, summary) "
                    "SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM images WHERE name = ?1 AND image_id = ?2)",
                    rows,
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot update the dedupe index of {self.store.root}: {exc}") from exc

    def image_ids(self) -> dict[str, str]:
        with self._lock:
            return dict(self._q("SELECT name, image_id FROM images").fetchall())

    def announce(self, name: str, iid: str) -> None:
        """A publish of ``name`` with image id ``iid`` is about to happen (called before the rename that
        makes it visible): a later mismatch between this index and the store is then a publish that
        crashed before its index update, not an edit."""
        try:
            with self._lock, self._txn():
                self.conn.execute("INSERT OR IGNORE INTO pending(name, image_id) VALUES (?, ?)", (name, iid))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot update the dedupe index of {self.store.root}: {exc}") from exc

    def changed_since_publish(self) -> dict[str, str]:
        """Images whose manifest (and so index) is not the one published under that name: the id differs
        from the recorded one and no publish announced it -- an edit, not a re-capture. name -> message."""
        with self._lock:
            known = dict(self._q("SELECT name, image_id FROM images").fetchall())
            pending = set(self._q("SELECT name, image_id FROM pending").fetchall())
        out: dict[str, str] = {}
        for name, iid in known.items():
            try:
                now = image_id(self.store.manifest_path(name).read_bytes())
            except OSError:
                continue
            if now != iid and (name, now) not in pending:
                out[name] = (
                    f"image {name!r} changed since it was published: its manifest and index now have id "
                    f"{now}, it was published as {iid}"
                )
        return out

    def rows(self) -> Iterator[tuple[bytes, str, int]]:
        """Every (hash, pack id, offset) row (tests and check compare them with the manifests)."""
        with self._lock:
            sql = "SELECT c.hash, p.id, c.offset FROM chunks c JOIN packs p ON p.n = c.pack"
            got = self._q(sql).fetchall()
        for h, pid, off in got:
            yield bytes(h), pid, off

    # -- plumbing --------------------------------------------------------------------------------------
    def _q(self, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the dedupe index of {self.store.root}: {exc}") from exc

    @contextlib.contextmanager
    def _txn(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")


def _entry_rows(
    manifest: Manifest, by_index: list[int], numbers: dict[str, int]
) -> Iterator[tuple[bytes, int, int]]:
    """(hash, pack number in the db, offset) of every entry, streamed from the image's index."""
    index = manifest.open_index()
    if index is not None:
        for e in index.entries():
            yield e.hash, by_index[e.pack], e.offset
        return
    for _, c in manifest.entries():  # format 1
        yield bytes.fromhex(c.hash), numbers[c.id], c.offset


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # the index is rebuilt from the images after a crash that loses its last transaction (sync adds the
    # image again), so NORMAL is enough
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _schema_ok(conn: sqlite3.Connection) -> bool:
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables == 0:  # a new, empty file
                _create(conn)
                return True
        return False
    return row is not None and row[0] == str(SCHEMA)


def _create(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    for ddl in _DDL:
        conn.execute(ddl)
    conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?)", (str(SCHEMA),))
    conn.execute("COMMIT")
