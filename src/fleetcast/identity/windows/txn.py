"""One personalization run as a transaction over the volume.

Hives are written to ``NAME.fleetcast-new`` beside the original, reopened with hivex and checked with an
independent parser (regipy), and only when every hive of the run is staged are they renamed over the
originals; the originals (and their transaction logs) are kept as ``NAME.fleetcast-orig`` until the
whole run succeeds. Any failure before that point restores the volume as it was.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetcast.errors import FleetcastError, HiveError, IdentityError
from fleetcast.identity.windows.fsck import fsck, require_sound
from fleetcast.identity.windows.hive import Hive, read_base_block

logger = logging.getLogger(__name__)

NEW_SUFFIX = ".fleetcast-new"
ORIG_SUFFIX = ".fleetcast-orig"

Check = Callable[[Path], None]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RegipyView:
    """A hive read with regipy (independent of hivex) for the post-write checks."""

    def __init__(self, path: Path) -> None:
        from regipy.exceptions import RegipyException

        construct: Any = importlib.import_module("construct")  # regipy's parser library (no type stubs)
        registry: Any = importlib.import_module("regipy.registry")
        logging.getLogger("regipy").setLevel(logging.ERROR)  # it logs every undecodable string
        self.path = path
        try:
            self.reg: Any = registry.RegistryHive(str(path))
            self.keys = [k.path.lower() for k in self.reg.recurse_subkeys(fetch_values=False)]
        except (RegipyException, construct.ConstructError, ValueError, KeyError, OSError) as exc:
            # regipy parses with construct: a cell pointing outside the hive is a StreamError
            detail = " ".join(str(exc).split())
            raise HiveError(f"hive {path}: independent check with regipy failed: {detail}") from exc

    def value(self, key_path: str, name: str) -> object:
        """regipy's decoded value (str for strings, bytes for binary, int for dwords) or None."""
        from regipy.exceptions import RegipyException

        try:
            key = self.reg.get_key("\\" + key_path.lstrip("\\"))
        except RegipyException:
            return None
        want = (name or "(default)").lower()
        for v in key.iter_values(trim_values=False):
            if v.name.lower() == want:
                return v.value
        return None

    def subkeys(self, key_path: str) -> list[str]:
        from regipy.exceptions import RegipyException

        try:
            key = self.reg.get_key("\\" + key_path.lstrip("\\"))
        except RegipyException:
            return []
        return [k.name for k in key.iter_subkeys()]

    def expect(self, key_path: str, name: str, want: object) -> None:
        got = self.value(key_path, name)
        if got != want:
            raise HiveError(
                f"hive {self.path}: independent check failed at {key_path}\\{name or '(default)'}: "
                f"expected {want!r}, found {got!r}"
            )


@dataclass
class _Staged:
    original: Path
    staged: Path
    logs: list[Path]


@dataclass
class Transaction:
    staged: list[_Staged] = field(default_factory=list)
    files: list[tuple[Path, Path | None]] = field(default_factory=list)  # (target, backup or None=new)
    dirs: list[Path] = field(default_factory=list)  # folders stage_file created
    undo: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    committed: bool = False

    def stage_hive(
        self, original: Path, hive: Hive, *, logs: list[Path], check: Check, post: Check | None = None
    ) -> Path:
        """Commit ``hive`` to a temp copy beside ``original``, run ``post`` on it (the raw scrub),
        run ``check`` (the independent parser), the structural check (fsck: sound, and no more
        unreachable allocated cells than the hive read) and reopen it with hivex."""
        tmp = original.with_name(original.name + NEW_SUFFIX)
        try:
            leaked_before = len(fsck(hive.base.path).unreachable)
            hive.commit(tmp)
            if post is not None:
                post(tmp)
            check(tmp)
            read_base_block(tmp)
            require_sound(tmp, label=original, max_unreachable=leaked_before)
            Hive(tmp)  # reopens with hivex
            _fsync(tmp)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise HiveError(
                f"hive {original}: writing its new copy {tmp.name} failed: {exc.strerror or exc}",
                hint="check that the volume is mounted read-write and has free space",
            ) from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.staged.append(_Staged(original, tmp, logs))
        return tmp

    def stage_file(self, target: Path, data: bytes) -> None:
        """Write ``target`` now (temp + rename); the old content is kept as a backup until finish().
        Folders it creates are removed again by rollback()."""
        tmp = target.with_name(target.name + NEW_SUFFIX)
        backup: Path | None = None
        try:
            missing = [d for d in (target.parent, *target.parent.parents) if not d.exists()]
            target.parent.mkdir(parents=True, exist_ok=True)
            self.dirs += reversed(missing)  # parents first; rollback removes them deepest first
            tmp.write_bytes(data)
            _fsync(tmp)
            if target.exists():
                backup = target.with_name(target.name + ORIG_SUFFIX)
                os.replace(target, backup)
            os.replace(tmp, target)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
                if backup is not None and not target.exists():
                    os.replace(backup, target)
            except OSError as undo_exc:
                logger.error("undoing the write of %s failed: %s", target, undo_exc)
            raise IdentityError(
                f"writing {target} failed: {exc.strerror or exc}",
                hint="check that the volume is mounted read-write and has free space",
            ) from exc
        self.files.append((target, backup))

    def on_rollback(self, what: str, fn: Callable[[], None]) -> None:
        self.undo.append((what, fn))

    def apply_hives(self) -> None:
        """Rename every staged hive over its original (originals and logs kept as backups)."""
        done: list[tuple[Path, Path]] = []  # (current, backup) pairs to undo
        try:
            for st in self.staged:
                backup = st.original.with_name(st.original.name + ORIG_SUFFIX)
                os.replace(st.original, backup)
                done.append((st.original, backup))
                os.replace(st.staged, st.original)
                for log in st.logs:
                    lb = log.with_name(log.name + ORIG_SUFFIX)
                    os.replace(log, lb)
                    done.append((log, lb))
                    log.write_bytes(b"")  # Windows starts a fresh log; stale entries cannot replay
        except BaseException as exc:  # an interrupt between two renames must not leave a hive missing
            for current, backup in reversed(done):
                current.unlink(missing_ok=True)
                os.replace(backup, current)
            for st in self.staged:
                st.staged.unlink(missing_ok=True)
            self.staged.clear()
            if isinstance(exc, OSError):
                raise IdentityError(f"replacing hive {exc.filename} failed: {exc.strerror}") from exc
            raise
        # make the renames durable: a power cut now must not bring back the old hives
        for folder in {st.original.parent for st in self.staged}:
            try:
                _fsync(folder)
            except OSError as exc:  # ntfs-3g may refuse fsync on a directory; the data files are synced
                logger.debug("fsync of %s: %s", folder, exc)
        self.committed = True

    def rollback(self) -> None:
        """Put the volume back as it was; never raises (logs what it could not undo)."""
        for what, fn in reversed(self.undo):
            try:
                fn()
            except (OSError, FleetcastError) as exc:
                logger.error("rollback of %s failed: %s", what, exc)
        self.undo.clear()
        for target, backup in reversed(self.files):
            try:
                if backup is None:
                    target.unlink(missing_ok=True)
                else:
                    os.replace(backup, target)
            except OSError as exc:
                logger.error("rollback of %s failed: %s", target, exc)
        self.files.clear()
        for d in reversed(self.dirs):
            try:
                d.rmdir()
            except OSError as exc:
                logger.error("rollback of folder %s failed: %s", d, exc)
        self.dirs.clear()
        for st in reversed(self.staged):
            try:
                if self.committed:
                    for log in st.logs:
                        lb = log.with_name(log.name + ORIG_SUFFIX)
                        if lb.exists():
                            os.replace(lb, log)
                    backup = st.original.with_name(st.original.name + ORIG_SUFFIX)
                    if backup.exists():
                        os.replace(backup, st.original)
                st.staged.unlink(missing_ok=True)
            except OSError as exc:
                logger.error("rollback of %s failed: %s", st.original, exc)
        self.staged.clear()
        self.committed = False

    def finish(self) -> list[str]:
        """The whole run succeeded: drop the backups. The run stands even when one cannot be
        deleted (nothing can be rolled back any more): returns a warning line for each."""
        backups = [p.with_name(p.name + ORIG_SUFFIX) for st in self.staged for p in [st.original, *st.logs]]
        backups += [backup for _target, backup in self.files if backup is not None]
        warnings = []
        for backup in backups:
            try:
                backup.unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("cannot delete the backup %s: %s", backup, exc)
                warnings.append(
                    f"warning: the backup {backup} could not be deleted ({exc.strerror}): delete it"
                )
        self.staged.clear()
        self.files.clear()
        self.dirs.clear()
        self.undo.clear()
        return warnings
