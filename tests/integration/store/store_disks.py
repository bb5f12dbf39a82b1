"""Small real disks for the store's integration tests: GPT with FAT32 ESP, NTFS and ext4, real files.

Everything is built in pytest's tmp_path; loop devices are attached through fleetcast.disk.loop (always
detached) and every mount is unmounted in a finally block.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import random
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

from fleetcast.disk.loop import attach

MiB = 1 << 20
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
MSDATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
SRC = Path(__file__).resolve().parents[3] / "src" / "fleetcast"


def sh(*argv: str | os.PathLike[str], input: bytes | None = None) -> str:
    proc = subprocess.run([os.fspath(a) for a in argv], input=input, capture_output=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{argv} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode(errors="replace")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def parts_of(disk: Path) -> list[tuple[int, int]]:
    """(start, size) in bytes of each partition, by number."""
    import json

    pt = json.loads(sh("sfdisk", "--json", disk))["partitiontable"]
    return [(p["start"] * 512, p["size"] * 512) for p in pt["partitions"]]


def fill_tree(root: Path, seed: int, *, mb: int = 6) -> None:
    """Text, 'executables' (repeated binary), random (incompressible) data, zeros, a symlink, modes."""
    rnd = random.Random(seed)
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "os-release").write_text('ID=debian\nPRETTY_NAME="fleetcast test"\n')
    src_files = sorted(p for p in SRC.rglob("*.py"))[:40]
    for i, p in enumerate(src_files):
        d = root / "src" / f"d{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        (d / p.name).write_bytes(p.read_bytes())
    (root / "bin").mkdir(exist_ok=True)
    exe = Path("/usr/bin/python3").resolve().read_bytes()
    (root / "bin" / "tool").write_bytes(exe)
    (root / "bin" / "tool").chmod(0o755)
    (root / "data").mkdir(exist_ok=True)
    for i in range(mb):
        (root / "data" / f"blob{i}.bin").write_bytes(rnd.randbytes(MiB - rnd.randrange(4096)))
    (root / "data" / "zeros.bin").write_bytes(bytes(2 * MiB))
    (root / "secret").write_text("mode 600\n")
    (root / "secret").chmod(0o600)


def _mkfs_ntfs(dev: Path, label: str) -> None:
    sh("mkntfs", "-Q", "-F", "-L", label, dev)


@contextlib.contextmanager
def mounted(disk: Path, number: int, fstype: str, *, read_only: bool = True) -> Iterator[Path]:
    """Mount partition ``number`` of ``disk`` (ext4 natively, NTFS via ntfs-3g) at a temp dir."""
    import tempfile

    start, size = parts_of(disk)[number - 1]
    mnt = Path(tempfile.mkdtemp(prefix="fc-mnt-"))
    try:
        with attach(disk, offset=start, sizelimit=size, read_only=read_only) as dev:
            if fstype == "ntfs":
                sh("ntfs-3g", "-o", "ro" if read_only else "rw", dev, mnt)
            else:
                sh("mount", "-o", "ro" if read_only else "rw", dev, mnt)
            try:
                yield mnt
            finally:
                sh("umount", mnt)
    finally:
        mnt.rmdir()


def build_disk(path: Path, *, size_mb: int = 160, seed: int = 1) -> Path:
    """GPT: 1 FAT32 ESP 34 MiB, 2 NTFS 56 MiB, 3 ext4 rest; each with real files. Sparse file."""
    with open(path, "wb") as f:
        f.truncate(size_mb * MiB)
    sh("sfdisk", "-q", path, input=f"label: gpt\n,34M,{ESP}\n,56M,{MSDATA}\n,,{LINUX}\n".encode())
    # a fake BIOS boot stage in the post-MBR gap (must survive the round trip)
    with open(path, "r+b") as f:
        f.seek(40 * 512)
        f.write(b"GRUB core.img stand-in " * 100)
    (esp_start, esp_size), (ntfs_start, ntfs_size), (ext_start, ext_size) = parts_of(path)
    work = path.parent / f"{path.name}.tree"
    fill_tree(work, seed)
    # ext4 from a directory, no mount
    ext_img = path.parent / f"{path.name}.ext4"
    sh("mkfs.ext4", "-q", "-L", "root", "-d", work, ext_img, f"{ext_size // 1024}k")
    sh(
        "dd",
        f"if={ext_img}",
        f"of={path}",
        "bs=1M",
        f"seek={ext_start // MiB}",
        "conv=notrunc,sparse",
        "status=none",
    )
    ext_img.unlink()
    # FAT32 via mtools
    with attach(path, offset=esp_start, sizelimit=esp_size) as dev:
        sh(
            "mkfs.vfat", "-I", "-F", "32", "-n", "ESP", dev
        )  # -I: our own loop device (a stale holder of a reused loop number must not stop it)
        sh("mmd", "-i", dev, "::/EFI", "::/EFI/BOOT")
        sh("mcopy", "-i", dev, work / "bin" / "tool", "::/EFI/BOOT/BOOTX64.EFI")
        sh("mcopy", "-i", dev, work / "etc" / "os-release", "::/EFI/readme.txt")
    # NTFS via mkntfs + ntfs-3g
    with attach(path, offset=ntfs_start, sizelimit=ntfs_size) as dev:
        _mkfs_ntfs(dev, "WIN")
    with mounted(path, 2, "ntfs", read_only=False) as mnt:
        (mnt / "Windows" / "System32" / "config").mkdir(parents=True)
        (mnt / "Windows" / "System32" / "config" / "SYSTEM").write_bytes(
            random.Random(seed).randbytes(300_000)
        )
        sh("cp", "-r", work / "src", work / "data", mnt)
    sh("rm", "-rf", work)
    return path


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def ntfs_acl(path: Path) -> bytes:
    """system.ntfs_acl through libc (ntfs-3g answers a too-small buffer with EIO, so ask the size first)."""
    name = b"system.ntfs_acl"
    p = os.fsencode(path)
    size = _libc.lgetxattr(p, name, None, 0)
    if size < 0:
        return b""
    buf = ctypes.create_string_buffer(size)
    got = _libc.lgetxattr(p, name, buf, size)
    return buf.raw[:got] if got >= 0 else b""


def tree(root: Path, *, acl: bool = False) -> dict[str, tuple[object, ...]]:
    """path -> (type, mode, uid, gid, content hash or link target, ntfs acl)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirs, files in os.walk(root):
        for n in sorted(dirs + files):
            p = Path(dirpath) / n
            st = p.lstat()
            rel = str(p.relative_to(root))
            if rel.startswith("lost+found"):
                continue
            if stat.S_ISLNK(st.st_mode):
                content: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                content = sha256(p)
            else:
                content = None
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, content)
            if acl:
                out[rel] += (ntfs_acl(p),)
    return out


def fat_listing(disk: Path) -> dict[str, str]:
    """Every file of the FAT ESP (partition 1) with its sha256, read through mtools."""
    import tempfile

    start, _ = parts_of(disk)[0]
    with tempfile.TemporaryDirectory() as d:
        sh("mcopy", "-s", "-n", "-i", f"{disk}@@{start}", "::/", d)
        return {str(p.relative_to(d)): sha256(p) for p in Path(d).rglob("*") if p.is_file()}
