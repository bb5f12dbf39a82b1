"""Helpers for the allocation-map tests: partclone's own map of a filesystem image."""

from __future__ import annotations

import subprocess
from pathlib import Path


def partclone_map(tool: str, img: Path, tmp: Path) -> list[tuple[int, int]]:
    """The used byte ranges ``tool`` (partclone.extfs, .xfs, ...) reports with -D (its domain file)."""
    mapfile = tmp / "domain.map"
    subprocess.run([tool, "-D", "-s", img, "-o", mapfile, "-q"], check=True, capture_output=True)
    out = []
    for line in mapfile.read_text().splitlines():
        parts = line.split()
        if line.startswith("0x") and len(parts) == 3 and parts[2] == "+":
            out.append((int(parts[0], 16), int(parts[1], 16)))
    return out


MiB = 1 << 20

FILL = """
mount -o loop "$1" "$2"
cp -r "$3"/. "$2"/
head -c 60000000 /dev/urandom > "$2"/deleted.bin
sync
rm "$2"/deleted.bin "$2"/sub/f*[02468]
umount "$2"
"""
HASHES = """
mount -o loop,ro,norecovery "$1" "$2"
(cd "$2" && find . -type f -exec sha256sum {} + | sort -k 2)
umount "$2"
"""


def blank(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def in_mount_ns(script: str, *args: object) -> str:
    """Run a shell script (arguments $1...) in a private mount namespace; its stdout."""
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-euc", script, "sh", *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
    )
    return proc.stdout


def make_tree(root: Path) -> Path:
    """20 MiB in one file and 300 small ones (FILL deletes every other small one and a 60 MB file)."""
    import random

    rng = random.Random(7)
    (root / "sub").mkdir(parents=True)
    (root / "big.bin").write_bytes(rng.randbytes(20 * MiB + 5))
    for i in range(300):
        (root / "sub" / f"f{i:03}").write_bytes(rng.randbytes(rng.randrange(1, 20000)))
    return root


def copy_extents(src: Path, dst: Path, extents: list[tuple[int, int]]) -> Path:
    """``dst``: zeros except the byte ranges ``extents`` of ``src``."""
    blank(dst, src.stat().st_size)
    with open(src, "rb") as i, open(dst, "r+b") as o:
        for start, length in extents:
            i.seek(start)
            o.seek(start)
            o.write(i.read(length))
    return dst


def blocks(extents: list[tuple[int, int]], bs: int = 1024) -> set[int]:
    """The ``bs``-byte blocks the extents touch."""
    out: set[int] = set()
    for start, length in extents:
        out.update(range(start // bs, -(-(start + length) // bs)))
    return out
