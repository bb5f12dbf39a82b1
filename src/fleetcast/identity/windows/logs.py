"""Dirty hives: detection (base-block sequence numbers, .LOG1/.LOG2 beside the hive) and replay.

A hive whose primary and secondary sequence numbers differ has changes that only its transaction logs
hold. Editing it and leaving the logs behind would let Windows replay stale log data over the edit, so
the logs are replayed first, by fleetcast's own reader of both log formats (replay.py: entries in
sequence, hashes checked, stale logs left out) and, when the edited hive is put in place, the logs are
emptied.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path

from fleetcast.errors import HiveError
from fleetcast.identity.windows.hive import BaseBlock, read_base_block

logger = logging.getLogger(__name__)

LOG_SUFFIXES = (".LOG1", ".LOG2", ".LOG")


def find_logs(hive: Path) -> list[Path]:
    """Non-empty transaction logs beside ``hive`` (matched case-insensitively), LOG1 first."""
    found: dict[str, Path] = {}
    try:
        siblings = list(hive.parent.iterdir())
    except OSError:
        return []
    names = {s.name.lower(): s for s in siblings}
    for suffix in LOG_SUFFIXES:
        p = names.get((hive.name + suffix).lower())
        if p is not None and p.is_file() and p.stat().st_size > 0:
            found[suffix] = p
    return list(found.values())


@dataclass(frozen=True)
class HiveState:
    path: Path
    base: BaseBlock
    logs: list[Path]

    @property
    def dirty(self) -> bool:
        """Sequence numbers that differ, or a base block whose checksum is wrong (the format's rule:
        Windows then takes the base block from a log)."""
        return self.base.dirty or not self.base.checksum_ok

    def why_dirty(self) -> str:
        if not self.base.checksum_ok:
            return "its base block checksum is wrong"
        return f"sequence numbers {self.base.seq1} and {self.base.seq2} differ"

    def describe(self) -> str:
        state = "dirty" if self.dirty else "clean"
        if not self.base.checksum_ok:
            state += ", base block checksum wrong"
        logs = ", ".join(p.name for p in self.logs) or "no logs"
        return f"{self.path.name}: {state} (sequence {self.base.seq1}/{self.base.seq2}; {logs})"


def state(hive: Path) -> HiveState:
    return HiveState(hive, read_base_block(hive), find_logs(hive))


def _log_seq(log: Path) -> int:
    with log.open("rb") as fh:
        head = fh.read(12)
    if len(head) < 12 or head[:4] != b"regf":
        return -1
    return int(struct.unpack_from("<I", head, 4)[0])


def _log_name(log: Path) -> str:
    with log.open("rb") as fh:
        head = fh.read(112)
    return _base_name(head[48:112].decode("utf-16-le", errors="replace").split("\0", 1)[0])


def _base_name(name: str) -> str:
    """The file name in a base block's name field (the last 31 characters of the hive's path)."""
    return name.rsplit("\\", 1)[-1]


def usable_logs(st: HiveState) -> tuple[list[Path], list[str]]:
    """The logs that may be replayed into ``st``'s hive, and a warning for each one ignored.

    A log is ignored when it has no ``regf`` base block, when the hive name in its base block is not
    the hive's (a log of another hive), or when its sequence number is below the hive's secondary
    sequence number: its entries precede the hive's last complete write (a stale log; replaying it
    writes old pages over newer ones)."""
    keep: list[Path] = []
    warnings_: list[str] = []
    for log in st.logs:
        seq = _log_seq(log)
        if seq < 0:
            warnings_.append(f"warning: {log.name} ignored: it has no 'regf' base block")
        elif not st.base.checksum_ok:
            keep.append(log)  # the hive's name and numbers are not to be trusted: replay.py decides
        elif st.base.name and _log_name(log).lower() != _base_name(st.base.name).lower():
            warnings_.append(
                f"warning: {log.name} ignored: it is the log of hive {_log_name(log)!r}, "
                f"not of {_base_name(st.base.name)!r}"
            )
        elif seq < st.base.seq2:
            warnings_.append(
                f"warning: {log.name} ignored: stale (sequence {seq}, the hive was written up to "
                f"{st.base.seq2})"
            )
        else:
            keep.append(log)
    for w in warnings_:
        logger.warning("%s: %s", st.path, w)
    return keep, warnings_


def replay(st: HiveState, workdir: Path) -> Path:
    """Replay ``st``'s logs into a copy in ``workdir``; return the copy (clean, checksum fixed).

    Raises HiveError with the way out when the hive is dirty and no usable log is there."""
    hive = st.path
    usable, ignored = usable_logs(st)
    if not usable:
        why = (
            "are missing"
            if not ignored
            else "do not belong to it or are stale ("
            + "; ".join(w.removeprefix("warning: ") for w in ignored)
            + ")"
        )
        raise HiveError(
            f"hive {hive} is dirty ({st.why_dirty()}) and its transaction logs (.LOG1/.LOG2) {why}",
            hint="boot this Windows once and shut it down completely (shutdown /s /t 0, Fast Startup off), "
            "or copy the hive's .LOG1/.LOG2 files beside it, then retry",
        )
    from fleetcast.identity.windows.replay import replay as replay_logs

    out = workdir / (hive.name + ".replayed")
    try:
        result = replay_logs(hive.read_bytes(), [(p.name, p.read_bytes()) for p in usable])
    except OSError as exc:
        raise HiveError(
            f"hive {hive} is dirty and its logs cannot be read: {exc.strerror or exc}",
            hint="check the volume: run ntfsfix or chkdsk, or mount it again",
        ) from exc
    except HiveError as exc:
        raise HiveError(
            f"hive {hive} is dirty and its transaction logs cannot be replayed: {exc.message}",
            hint="boot this Windows once and shut it down completely (shutdown /s /t 0, Fast Startup off), "
            "then retry",
        ) from exc
    out.write_bytes(result.data)
    _check_replayed(hive, out)
    _NOTES[str(out)] = result.notes
    logger.info(
        "replayed %d page(s) of %s from %s (sequence %d): %s",
        result.pages, hive, ", ".join(result.applied), result.seq, "; ".join(result.notes),
    )  # fmt: skip
    return out


_NOTES: dict[str, tuple[str, ...]] = {}


def replay_notes(copy: Path) -> tuple[str, ...]:
    """What the replay into ``copy`` applied and left ("SYSTEM.LOG1: entries 566-588 applied (...)")."""
    return _NOTES.get(str(copy), ())


def _check_replayed(hive: Path, out: Path) -> None:
    """The replayed copy must be readable whole by hivex (every key and value) and by regipy before
    anything is built on it."""
    from fleetcast.identity.windows.fsck import require_sound
    from fleetcast.identity.windows.hive import Hive
    from fleetcast.identity.windows.txn import RegipyView

    try:
        require_sound(out)
        h = Hive(out)
        for _path, node in h.walk():
            h.values(node)
        RegipyView(out)
    except HiveError as exc:
        raise HiveError(
            f"hive {hive} is dirty and its logs replay into a damaged hive ({exc.message}); "
            "nothing was written",
            hint="boot this Windows once and shut it down completely (shutdown /s /t 0, Fast Startup off), "
            "then retry",
        ) from exc


def working_copy(st: HiveState, workdir: Path) -> tuple[Path, bool]:
    """The file to open for editing: a replayed copy in ``workdir`` for a dirty hive, else the hive
    itself (hivex reads it whole into memory and closes it; commits go to another file).
    Returns (path, replayed)."""
    if st.dirty:
        return replay(st, workdir), True
    return st.path, False
