"""User hives (NTUSER.DAT, UsrClass.dat) of local accounts: their keys' security descriptors name the
user's SID, so after a machine-SID change they are rewritten too (sk cells only, in place: same
length, nothing else in the hive changes). Without this the user would lose access to their own
HKEY_CURRENT_USER and Windows would log them on with a temporary profile."""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleetcast.errors import UsageError
from fleetcast.identity.windows import layout, logs
from fleetcast.identity.windows.fsck import fsck, require_sound
from fleetcast.identity.windows.hive import Hive, scrub
from fleetcast.identity.windows.sid import Sid, replace_text
from fleetcast.identity.windows.software import Profile
from fleetcast.identity.windows.txn import RegipyView, Transaction

logger = logging.getLogger(__name__)

USER_HIVES = ("NTUSER.DAT", "AppData/Local/Microsoft/Windows/UsrClass.dat")


@dataclass(frozen=True)
class UserHive:
    sid: str
    path: Path


def profile_dir(root: Path, image_path: str) -> Path | None:
    """``C:\\Users\\bob`` or ``%SystemDrive%\\Users\\bob`` -> ROOT/Users/bob (None elsewhere)."""
    rel = re.sub(r"^(%systemdrive%|[A-Za-z]:)", "", image_path, flags=re.IGNORECASE).replace("\\", "/")
    if rel.startswith("%") or not rel.strip("/"):
        return None
    return layout.find(root, rel.strip("/"))


def user_hives(root: Path, profiles: list[Profile], old: Sid) -> list[UserHive]:
    out = []
    for p in profiles:
        try:
            sid = Sid.parse(p.sid)
        except UsageError:  # a key name that is not a SID is not a profile of ours
            continue
        if not sid.is_in_domain(old) or p.path is None:
            continue
        home = profile_dir(root, p.path)
        if home is None:
            continue
        for rel in USER_HIVES:
            found = layout.find(home, rel)
            if found is not None and found.is_file():
                out.append(UserHive(p.sid, found))
    return out


def rewrite(hive: Path, old: Sid, new: Sid, workdir: Path) -> tuple[bytes, int, tuple[str, ...]] | None:
    """The user hive with its security descriptors rewritten, their count and what the log replay
    applied (or None when nothing names ``old``). A dirty hive is replayed first; one without logs
    raises HiveError with the way out."""
    st = logs.state(hive)
    copy, replayed = logs.working_copy(st, workdir)
    notes = logs.replay_notes(copy) if replayed else ()
    Hive(copy, label=hive)  # parses, or raises naming the hive
    work = workdir / (hive.name + ".sk")
    shutil.copyfile(copy, work)
    res = scrub(work, old=old, new=new, all_cells=False)
    if res.sk_sids_replaced == 0 and not st.dirty:
        return None
    Hive(work, label=hive)
    RegipyView(work)
    require_sound(work, label=hive, max_unreachable=len(fsck(copy).unreachable))
    return work.read_bytes(), res.sk_sids_replaced, notes


def _renamer(src: Path, dst: Path) -> Callable[[], None]:
    def undo() -> None:
        src.rename(dst)

    return undo


# Folders whose names are a local account's SID (S-1-5-21-<machine>-RID), searched to a depth:
# - Users\Public\AccountPictures\<SID>: the account pictures; SAM's UserTile names the folder in its
#   text, so it is renamed only when that text was rewritten too (same length);
# - $Recycle.Bin\<SID>: each user's recycle bin (Windows would start a new one, the old one orphaned);
# - ProgramData\...\<SID> (e.g. Microsoft\Windows\SystemData\<SID>, the user's lock-screen
#   images): profile-keyed folders of Windows and applications.
# Files named after a SID (e.g. AppRepository's <SID>.pckgdep) are left: the databases naming them
# (StateRepository) keep the old SID, see "What is not changed".
SID_FOLDERS: tuple[tuple[str, int, bool], ...] = (
    ("Users/Public/AccountPictures", 1, True),
    ("$Recycle.Bin", 1, False),
    ("ProgramData", 6, False),
)


def _sid_dirs(base: Path, depth: int, old: Sid) -> list[Path]:
    """Directories below ``base`` (to ``depth`` levels, no symlinks or junctions followed) whose name
    is the SID of one of ``old``'s accounts, deepest first."""
    found: list[tuple[int, Path]] = []
    level = [base]
    for d in range(1, depth + 1):
        nxt = []
        for parent in level:
            try:
                entries = list(os.scandir(parent))
            except OSError as exc:
                logger.debug("%s not searched for SID folders: %s", parent, exc)
                continue
            for e in entries:
                if not e.is_dir(follow_symlinks=False):
                    continue
                path = Path(e.path)
                if e.name.upper().startswith("S-1-5-21-"):
                    try:
                        sid = Sid.parse(e.name)
                    except UsageError:
                        sid = None
                    if sid is not None and sid.is_in_domain(old):
                        found.append((d, path))
                        continue
                nxt.append(path)
        level = nxt
    return [p for _, p in sorted(found, key=lambda x: -x[0])]


def rename_sid_folders(root: Path, old: Sid, new: Sid, tx: Transaction) -> list[str]:
    """Rename the folders named after ``old``'s accounts (``SID_FOLDERS``) to ``new``'s; undone by
    ``tx``'s rollback. The account pictures only when the SID text keeps its length: then the values
    naming those folders were rewritten in place, and folder and value stay in step."""
    out = []
    same_length = len(str(old)) == len(str(new))
    for rel, depth, named_in_sam in SID_FOLDERS:
        base = layout.find(root, rel)
        if base is None or not base.is_dir():
            continue
        if named_in_sam and not same_length:
            out.append(f"folders in {rel} named after {old}: kept (the new SID's text has another length)")
            continue
        for child in _sid_dirs(base, depth, old):
            renamed, n = replace_text(child.name, old, new)
            if not n:
                continue
            target = child.with_name(renamed)
            if target.exists():
                out.append(f"warning: folder {child.relative_to(root)} kept: {renamed} exists")
                continue
            child.rename(target)
            tx.on_rollback(f"folder {target}", _renamer(target, child))
            out.append(f"folder {child.relative_to(root)}: renamed to {renamed}")
    return out
