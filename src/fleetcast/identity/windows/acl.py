"""File owners and ACLs on an ntfs-3g mount: the ``system.ntfs_acl`` extended attribute holds each
file's self-relative security descriptor. Local-account SIDs (the old machine SID plus a RID) are
rewritten to the new machine SID; well-known and domain SIDs are left alone.

ntfs-3g answers a too-small buffer with EIO (not ERANGE), so ``os.getxattr`` fails on it: ask libc
for the size first (size 0), then read into a buffer of that size.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fleetcast.errors import IdentityError
from fleetcast.identity.windows.sid import Sid

logger = logging.getLogger(__name__)

XATTR = "system.ntfs_acl"
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.lgetxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.lgetxattr.restype = ctypes.c_ssize_t
_libc.lsetxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.lsetxattr.restype = ctypes.c_int

# ACE types whose body is ACCESS_MASK followed directly by the SID
_SIMPLE_ACES = {0x00, 0x01, 0x02, 0x03, 0x09, 0x0A, 0x0D, 0x0E, 0x11, 0x12, 0x13}
# object ACEs: mask, flags, optional GUIDs, then the SID
_OBJECT_ACES = {0x05, 0x06, 0x07, 0x08, 0x0B, 0x0C, 0x0F, 0x10}


def get_sd(path: Path) -> bytes | None:
    """The security descriptor of ``path`` (not following symlinks), None when the attribute is absent."""
    p, name = os.fsencode(path), XATTR.encode()
    size = _libc.lgetxattr(p, name, None, 0)
    if size < 0:
        err = ctypes.get_errno()
        if err in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise OSError(err, os.strerror(err), str(path))
    buf = ctypes.create_string_buffer(size)
    got = _libc.lgetxattr(p, name, buf, size)
    if got < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return buf.raw[:got]


def set_sd(path: Path, sd: bytes) -> None:
    buf = ctypes.create_string_buffer(sd, len(sd))
    if _libc.lsetxattr(os.fsencode(path), XATTR.encode(), buf, len(sd), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))


def supported(root: Path) -> bool:
    """True when ``root`` is on ntfs-3g (it exposes ``system.ntfs_acl``)."""
    try:
        return get_sd(root) is not None
    except OSError:
        return False


def _sid_at(sd: bytearray, off: int, old: Sid, new: Sid, end: int | None = None) -> int:
    """Rewrite the SID at ``off`` when it is ``old``'s; it must end by ``end`` (its ACE's end)."""
    if off == 0:
        return 0
    sid = Sid.from_bytes(bytes(sd[:end]), off)
    if sid == old or sid.is_in_domain(old):
        repl = Sid(new.authority, (*new.subauthorities, *sid.subauthorities[len(old.subauthorities) :]))
        sd[off : off + sid.size] = repl.to_bytes()
        return 1
    return 0


def _rewrite_acl(sd: bytearray, off: int, old: Sid, new: Sid) -> int:
    if off == 0:
        return 0
    if off + 8 > len(sd):
        raise ValueError(f"ACL at {off} runs past the {len(sd)}-byte descriptor")
    _rev, _sbz, acl_size, count, _ = struct.unpack_from("<BBHHH", sd, off)
    if off + acl_size > len(sd):
        raise ValueError(f"ACL at {off} of {acl_size} bytes runs past the {len(sd)}-byte descriptor")
    n = 0
    pos = off + 8
    for _ in range(count):
        if pos + 4 > off + acl_size:
            raise ValueError(f"ACE at {pos} runs past its ACL")
        ace_type, _flags, ace_size = struct.unpack_from("<BBH", sd, pos)
        if ace_size < 8 or pos + ace_size > off + acl_size:
            raise ValueError(f"ACE at {pos} has a bad size {ace_size}")
        ace_end = pos + ace_size
        if ace_type in _SIMPLE_ACES:
            n += _sid_at(sd, pos + 8, old, new, ace_end)
        elif ace_type in _OBJECT_ACES:
            if ace_size < 12:
                raise ValueError(f"object ACE at {pos} has a bad size {ace_size}")
            (oflags,) = struct.unpack_from("<I", sd, pos + 8)
            sid_off = pos + 12 + (16 if oflags & 1 else 0) + (16 if oflags & 2 else 0)
            n += _sid_at(sd, sid_off, old, new, ace_end)
        pos += ace_size
    return n


def rewrite_sd(sd: bytes, old: Sid, new: Sid) -> tuple[bytes, int]:
    """Replace SIDs in ``old``'s domain by the same RID in ``new``'s, in owner, group, SACL and DACL
    of a self-relative security descriptor. Same length out as in."""
    if len(sd) < 20:
        raise ValueError(f"security descriptor of {len(sd)} bytes is shorter than its 20-byte header")
    buf = bytearray(sd)
    owner, group, sacl, dacl = struct.unpack_from("<IIII", buf, 4)
    n = _sid_at(buf, owner, old, new) + _sid_at(buf, group, old, new)
    n += _rewrite_acl(buf, sacl, old, new) + _rewrite_acl(buf, dacl, old, new)
    return bytes(buf), n


def _walk(root: Path) -> Iterator[Path]:
    yield root
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError as exc:
            raise IdentityError(f"cannot list {d}: {exc.strerror}") from exc
        for e in entries:
            p = Path(e.path)
            yield p
            if e.is_dir(follow_symlinks=False):
                stack.append(p)


@dataclass
class AclResult:
    files_seen: int = 0
    files_changed: int = 0
    sids_replaced: int = 0


def rewrite_tree(
    root: Path, old: Sid, new: Sid, *, record: Callable[[Path, bytes], None] | None = None
) -> AclResult:
    """Rewrite every file's descriptor under ``root``; ``record(path, old_sd)`` is called before each
    change so the caller can undo it."""
    res = AclResult()
    for path in _walk(root):
        res.files_seen += 1
        try:
            sd = get_sd(path)
            if sd is None:
                continue
            new_sd, n = rewrite_sd(sd, old, new)
        except (OSError, ValueError) as exc:
            raise IdentityError(f"cannot read the security descriptor of {path}: {exc}") from exc
        if not n:
            continue
        if record is not None:
            record(path, sd)
        try:
            set_sd(path, new_sd)
        except OSError as exc:
            raise IdentityError(f"cannot write the security descriptor of {path}: {exc.strerror}") from exc
        res.files_changed += 1
        res.sids_replaced += n
    return res


def build_sd(owner: Sid, group: Sid, aces: list[tuple[int, int, int, Sid]]) -> bytes:
    """A self-relative descriptor (owner, group, DACL of (type, flags, mask, sid) ACEs) -- for tests
    and for files the personalizer creates."""
    ace_bytes = b""
    for ace_type, flags, mask, sid in aces:
        body = struct.pack("<I", mask) + sid.to_bytes()
        ace_bytes += struct.pack("<BBH", ace_type, flags, 4 + len(body)) + body
    dacl = struct.pack("<BBHHH", 2, 0, 8 + len(ace_bytes), len(aces), 0) + ace_bytes
    ob, gb = owner.to_bytes(), group.to_bytes()
    off_owner = 20
    off_group = off_owner + len(ob)
    off_dacl = off_group + len(gb)
    control = 0x8004  # SE_SELF_RELATIVE | SE_DACL_PRESENT
    header = struct.pack("<BBHIIII", 1, 0, control, off_owner, off_group, 0, off_dacl)
    return header + ob + gb + dacl
