"""Compare two directory trees: names, types, contents, modes, owners, symlink targets and chosen xattrs.

Used by round-trip tests (capture → restore → mount both → compare). NTFS ACLs come from ntfs-3g's
``system.ntfs_acl`` xattr; ``os.getxattr`` cannot read it (ntfs-3g answers a too-small buffer with
EIO, not ERANGE), so xattrs are read through libc: ask for the size first (size 0), then read.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.lgetxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.lgetxattr.restype = ctypes.c_ssize_t

NTFS_ACL = "system.ntfs_acl"
_NO_ATTR = (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)


def read_xattr(path: Path, name: str) -> bytes | None:
    """The value of xattr ``name`` of ``path`` (not following symlinks), or None when it has none."""
    p, n = os.fsencode(path), name.encode()
    for _ in range(3):
        size = _libc.lgetxattr(p, n, None, 0)
        if size < 0:
            err = ctypes.get_errno()
            if err in _NO_ATTR:
                return None
            raise OSError(err, f"getxattr {name}: {os.strerror(err)}", str(path))
        buf = ctypes.create_string_buffer(max(size, 1))
        got = _libc.lgetxattr(p, n, buf, size)
        if got >= 0:
            return buf.raw[:got]
        err = ctypes.get_errno()
        if err != errno.ERANGE:  # the value grew between the two calls: try again
            raise OSError(err, f"getxattr {name}: {os.strerror(err)}", str(path))
    raise OSError(errno.ERANGE, f"getxattr {name}: value keeps changing", str(path))


@dataclass(frozen=True)
class Entry:
    kind: str  # file | dir | link | other
    mode: int
    uid: int
    gid: int
    size: int
    digest: str  # sha256 of contents (files) or link target (links)
    xattrs: tuple[tuple[str, bytes | None], ...]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def snapshot(
    root: Path, *, xattrs: Iterable[str] = (), ignore: Iterable[str] = ("lost+found",)
) -> dict[str, Entry]:
    """Every entry below ``root`` (relative path → Entry); top-level names in ``ignore`` are skipped."""
    root = Path(root)
    names = tuple(xattrs)
    skip = set(ignore)
    out: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        files = filenames
        if here == root:
            dirnames[:] = [d for d in dirnames if d not in skip]
            files = [f for f in filenames if f not in skip]
        dirnames.sort()
        for name in sorted(dirnames) + sorted(files):
            p = here / name
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                kind, digest = "link", os.readlink(p)
            elif stat.S_ISDIR(st.st_mode):
                kind, digest = "dir", ""
            elif stat.S_ISREG(st.st_mode):
                kind, digest = "file", _digest(p)
            else:
                kind, digest = "other", ""
            xs = tuple((x, read_xattr(p, x)) for x in names) if kind != "link" else ()
            size = st.st_size if kind == "file" else 0
            out[str(p.relative_to(root))] = Entry(
                kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, digest, xs
            )
    return out


def compare_trees(
    a: Path,
    b: Path,
    *,
    owners: bool = True,
    modes: bool = True,
    xattrs: Iterable[str] = (),
    ignore: Iterable[str] = ("lost+found",),
) -> list[str]:
    """Differences between two trees, one line each ("" list = identical)."""
    names = tuple(xattrs)
    left = snapshot(a, xattrs=names, ignore=ignore)
    right = snapshot(b, xattrs=names, ignore=ignore)
    diffs = [f"only in {a}: {p}" for p in sorted(left.keys() - right.keys())]
    diffs += [f"only in {b}: {p}" for p in sorted(right.keys() - left.keys())]
    for p in sorted(left.keys() & right.keys()):
        x, y = left[p], right[p]
        if x.kind != y.kind:
            diffs.append(f"{p}: {x.kind} vs {y.kind}")
            continue
        if x.digest != y.digest or x.size != y.size:
            what = "link target" if x.kind == "link" else "contents"
            diffs.append(f"{p}: {what} differ")
        if modes and x.kind != "link" and x.mode != y.mode:
            diffs.append(f"{p}: mode {x.mode:o} vs {y.mode:o}")
        if owners and (x.uid, x.gid) != (y.uid, y.gid):
            diffs.append(f"{p}: owner {x.uid}:{x.gid} vs {y.uid}:{y.gid}")
        for (name, xv), (_n, yv) in zip(x.xattrs, y.xattrs, strict=True):
            if xv != yv:
                diffs.append(f"{p}: xattr {name} differs")
    return diffs


def count_files(root: Path) -> int:
    return sum(1 for e in snapshot(root).values() if e.kind == "file")
