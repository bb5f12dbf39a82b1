"""Sample disks with real filesystems and realistic files, for tests, the demo and the benchmark.

``build_sample_disk`` makes a "golden Windows+Linux" style disk (GPT: FAT32 ESP, NTFS, ext4 -- or an MBR
or bare-filesystem variant) filled to about ``fill`` of each filesystem with a deterministic mix (from
``seed``): text from words, ELF executables and libraries copied from this machine, already-compressed
data (gzip, random "media" files), zero-filled files, many small files and a few big ones, nested
directories; varied owners and modes on ext4, a few explicit NTFS ACLs (``system.ntfs_acl``) on NTFS.

``build_linux_disk`` makes a minimal installed-Linux disk (small ESP + ext4 labelled "root") for the
identity tests. ``mount_partition`` mounts a partition of a disk file (ext natively, NTFS via ntfs-3g).

Everything is written through loop devices with offset/sizelimit (this kernel parses no partition
tables), FAT through mtools at ``IMG@@OFFSET``; all loop devices and mounts are released on exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fleetcast.disk import loop
from fleetcast.disk.filesystems import FsType, detect
from fleetcast.disk.partitions import Partition, PartitionTable, read_table
from fleetcast.errors import DiskError
from fleetcast.run import run

logger = logging.getLogger(__name__)

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
ALIGN = MiB

ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
MSDATA_TYPE = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"

LAYOUTS = ("gpt-esp-ntfs-ext4", "gpt-esp-ext4-ntfs", "mbr-ntfs-ext4", "bare-ext4", "bare-ntfs", "bare-fat")

_WORDS_TEXT = (
    "the of and to in is was for on that with as by at from it be this are or which an not have his "
    "disk image partition network client server deploy capture restore machine system boot kernel file "
    "data block cluster sector volume driver window linux registry update install service user group "
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore "
    "et dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip"
)
WORDS = tuple(_WORDS_TEXT.split())


@dataclass(frozen=True)
class FileSpec:
    path: str  # relative, "/"-separated
    kind: str  # text | elf | gzip | random | zeros | small
    size: int


@dataclass
class PartitionContent:
    number: int  # 0 for a bare filesystem
    fstype: FsType
    label: str
    files: list[FileSpec] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class SampleDisk:
    path: Path
    table: PartitionTable
    contents: list[PartitionContent]

    def content(self, number: int) -> PartitionContent:
        for c in self.contents:
            if c.number == number:
                return c
        raise KeyError(number)


# ---------------------------------------------------------------------------------------------- content


def plan_files(rng: random.Random, budget: int, *, prefix: str = "") -> list[FileSpec]:
    """A deterministic list of files totalling about ``budget`` bytes.

    By bytes: ~25 % text, ~20 % executables, ~25 % compressed (gzip + random media), ~10 % zeros,
    ~20 % small files (≤ 16 KiB) in many directories; a few big files carry most of the bytes.
    """
    specs: list[FileSpec] = []
    shares = {"text": 0.25, "elf": 0.20, "gzip": 0.10, "random": 0.15, "zeros": 0.10, "small": 0.20}
    dirs = [f"{prefix}{top}/{sub}" for top in ("docs", "apps", "media", "data") for sub in ("a", "b", "c")]
    counter = 0
    for kind, share in shares.items():
        want = int(budget * share)
        used = 0
        big_done = False
        while used < want:
            left = want - used
            if kind == "small":
                size = min(rng.randrange(64, 16 * KiB), left)
                d = f"{prefix}small/{rng.randrange(40):02}"
            elif not big_done and left > 4 * MiB:
                size = max(left // 2, MiB)  # one big file per kind
                big_done = True
                d = rng.choice(dirs)
            else:
                size = min(rng.randrange(4 * KiB, 2 * MiB), left)
                d = rng.choice(dirs)
            if size <= 0:
                break
            ext = {
                "text": "txt",
                "elf": "bin",
                "gzip": "gz",
                "random": "jpg",
                "zeros": "img",
                "small": "cfg",
            }[kind]
            specs.append(FileSpec(f"{d}/{kind}{counter:05}.{ext}", kind, size))
            counter += 1
            used += size
    return specs


_SENTENCES: list[bytes] = []


def _sentences() -> list[bytes]:
    """4096 fixed sentences made of WORDS; text files are random sequences of them (fast, deterministic)."""
    if not _SENTENCES:
        rng = random.Random(20261124)
        for _ in range(4096):
            words = rng.choices(WORDS, k=rng.randrange(6, 24))
            _SENTENCES.append((" ".join(words).capitalize() + rng.choice([". ", ".\n", ", ", "? "])).encode())
    return _SENTENCES


def _text(rng: random.Random, size: int) -> bytes:
    pool = _sentences()
    out = bytearray()
    while len(out) < size:
        out += b"".join(rng.choices(pool, k=min(max(size // 64, 16), 16384)))
    return bytes(out[:size])


_ELF_CACHE: list[Path] = []


def _elf_files() -> list[Path]:
    if not _ELF_CACHE:
        found = []
        for d in ("/usr/bin", "/usr/sbin", "/usr/lib/x86_64-linux-gnu"):
            with contextlib.suppress(OSError):
                for entry in sorted(os.scandir(d), key=lambda e: e.name):
                    if entry.is_file(follow_symlinks=False) and entry.stat().st_size > 16 * KiB:
                        with open(entry.path, "rb") as f:
                            if f.read(4) == b"\x7fELF":
                                found.append(Path(entry.path))
        _ELF_CACHE.extend(found)
    return _ELF_CACHE


def _write_elf(rng: random.Random, f: object, size: int) -> None:
    """Concatenated real ELF files (binaries and libraries of this machine), cut to ``size``."""
    assert hasattr(f, "write")
    elves = _elf_files()
    left = size
    while left > 0:
        if elves:
            src = elves[rng.randrange(len(elves))]
            data = src.read_bytes()[:left]
        else:
            data = _text(rng, min(left, MiB))
        f.write(data)
        left -= len(data)


def write_file(rng: random.Random, path: Path, spec: FileSpec) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = spec.size
        if spec.kind == "elf":
            _write_elf(rng, f, left)
            return
        if spec.kind == "gzip":
            z = zlib.compressobj(1, zlib.DEFLATED, 31)  # a gzip stream, cut at the planned size
            out = bytearray()
            while len(out) < spec.size:
                out += z.compress(_text(rng, min(3 * spec.size, MiB)))
            f.write(out[: spec.size])
            return
        while left > 0:
            n = min(left, MiB)
            if spec.kind == "text":
                f.write(_text(rng, n))
            elif spec.kind == "small":
                f.write(_text(rng, n // 2) + rng.randbytes(n - n // 2))
            elif spec.kind == "zeros":
                f.write(bytes(n))
            else:
                f.write(rng.randbytes(n))
            left -= n


def fill_tree(root: Path, specs: list[FileSpec], seed: int, *, owners: bool = False) -> None:
    """Write ``specs`` under ``root``; with ``owners`` also vary uid/gid and modes, and add symlinks."""
    rng = random.Random(seed)
    modes = (0o644, 0o600, 0o755, 0o640, 0o444)
    ids = ((0, 0), (1000, 1000), (1001, 100), (33, 33))
    for i, spec in enumerate(specs):
        path = root / spec.path
        write_file(rng, path, spec)
        if owners:
            os.chmod(path, modes[i % len(modes)])
            uid, gid = ids[i % len(ids)]
            os.chown(path, uid, gid)
            if i % 50 == 7:
                link = path.with_name(path.name + ".link")
                link.symlink_to(path.name)
                os.lchown(link, uid, gid)
    if owners:
        for d in sorted(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()):
            if d.name in ("a", "b"):
                os.chmod(d, 0o750 if d.name == "a" else 0o775)
                os.chown(d, 1000, 1000)


# -------------------------------------------------------------------------------------------- NTFS ACLs

_SID_EVERYONE = (1, (0,))
_SID_ADMINS = (5, (32, 544))
_SID_SYSTEM = (5, (18,))
_SID_USERS = (5, (32, 545))


def _sid(authority: int, subs: tuple[int, ...]) -> bytes:
    return (
        struct.pack("<BB", 1, len(subs)) + authority.to_bytes(6, "big") + struct.pack(f"<{len(subs)}I", *subs)
    )


def ntfs_acl(rng: random.Random) -> bytes:
    """A self-relative security descriptor: owner Administrators, group SYSTEM, a DACL of 2-3 ACEs."""
    aces = b""
    entries = [(_SID_ADMINS, 0x1F01FF), (_SID_SYSTEM, 0x1F01FF)]
    entries.append((rng.choice([_SID_USERS, _SID_EVERYONE]), rng.choice([0x1200A9, 0x1301BF])))
    for (auth, subs), mask in entries:
        sid = _sid(auth, subs)
        aces += struct.pack("<BBHI", 0, 0, 8 + len(sid), mask) + sid  # ACCESS_ALLOWED, no inheritance flags
    acl = struct.pack("<BBHHH", 2, 0, 8 + len(aces), len(entries), 0) + aces
    owner, group = _sid(*_SID_ADMINS), _sid(*_SID_SYSTEM)
    header = 20
    owner_ofs = header
    group_ofs = owner_ofs + len(owner)
    dacl_ofs = group_ofs + len(group)
    control = 0x8004  # SE_SELF_RELATIVE | SE_DACL_PRESENT
    return struct.pack("<BBHIIII", 1, 0, control, owner_ofs, group_ofs, 0, dacl_ofs) + owner + group + acl


# ------------------------------------------------------------------------------------------- filesystems


def _mkfs_ext4(dev: Path, label: str) -> None:
    run(["mkfs.ext4", "-q", "-F", "-L", label, dev])


def _mkntfs(dev: Path, label: str, start_sector: int) -> None:
    run(["mkntfs", "-Q", "-q", "-F", "-L", label, "-p", str(start_sector), "-H", "255", "-S", "63", dev])


def _mkfat(img: Path, offset: int, size: int, label: str) -> int:
    """mkfs.vfat into [offset, offset+size) of ``img``: FAT32 when big enough, else FAT16 (returned)."""
    bits = 32 if size >= 64 * MiB else 16
    # enough clusters for a by-the-book FAT32 (>= 65525; mtools and Windows count them)
    spc = 1
    while bits == 32 and spc < 64 and size // 512 // (spc * 2) >= 66000:
        spc *= 2
    cluster = ["-s", str(spc)] if bits == 32 else []
    run(
        [
            "mkfs.vfat",
            "-F",
            str(bits),
            *cluster,
            "-n",
            label,
            "--offset",
            str(offset // 512),
            img,
            str(size // KiB),
        ]
    )
    return bits


def _free_bytes(mnt: Path) -> int:
    st = os.statvfs(mnt)
    return st.f_bavail * st.f_frsize


def _capacity(mnt: Path) -> int:
    st = os.statvfs(mnt)
    return st.f_blocks * st.f_frsize


@contextlib.contextmanager
def _mounted(dev: Path, fstype: FsType, *, read_only: bool = False) -> Iterator[Path]:
    mnt = Path(tempfile.mkdtemp(prefix="fleetcast-mnt-"))
    try:
        if fstype is FsType.NTFS:
            run(["ntfs-3g", "-o", "ro" if read_only else "big_writes", dev, mnt])
        elif fstype is FsType.EXT:
            run(["mount", *(["-o", "ro,noload"] if read_only else []), dev, mnt])
        else:
            raise DiskError(
                f"cannot mount {dev}: {fstype} is not mountable on this machine",
                hint="FAT has no kernel driver here; read it with mtools (mcopy -i IMG@@OFFSET)",
            )
        try:
            yield mnt
        finally:
            run(["umount", mnt])
    finally:
        with contextlib.suppress(OSError):
            mnt.rmdir()


@contextlib.contextmanager
def mount_partition(disk: Path, number: int, *, read_only: bool = False) -> Iterator[Path]:
    """Mount partition ``number`` of a disk file (0 = a bare filesystem on the whole disk) and yield the
    mount point; unmounts and detaches on exit. ext is mounted natively, NTFS through ntfs-3g."""
    disk = Path(disk)
    table = read_table(disk)
    if number == 0:
        if table.label != "none":
            raise DiskError(f"disk {disk} has a {table.label} partition table; give a partition number")
        offset, size = 0, disk.stat().st_size
    else:
        part = table.partition(number)
        offset, size = part.start * table.sector_size, part.size * table.sector_size
    with open(disk, "rb") as f:
        fstype = detect(f, offset, size)
    with (
        loop.attach(disk, offset=offset, sizelimit=size, read_only=read_only) as dev,
        _mounted(dev, fstype, read_only=read_only) as mnt,
    ):
        yield mnt


def _fill_mounted(
    mnt: Path, fill: float, seed: int, *, owners: bool, acls: bool, prefix: str = ""
) -> list[FileSpec]:
    budget = max(int(_capacity(mnt) * fill) - (_capacity(mnt) - _free_bytes(mnt)), 0)
    specs = plan_files(random.Random(seed), budget, prefix=prefix)
    fill_tree(mnt, specs, seed, owners=owners)
    if acls:
        rng = random.Random(seed + 99)
        for spec in specs[:: max(len(specs) // 6, 1)][:6]:
            os.setxattr(mnt / spec.path, "system.ntfs_acl", ntfs_acl(rng))
    return specs


def _fill_fat(img: Path, offset: int, size: int, fill: float, seed: int) -> list[FileSpec]:
    budget = int(size * fill)
    specs = plan_files(random.Random(seed), budget)
    # an ESP-like tree plus the planned files
    with tempfile.TemporaryDirectory(prefix="fleetcast-fat-") as stage:
        root = Path(stage)
        boot = root / "EFI" / "BOOT"
        boot.mkdir(parents=True)
        (boot / "BOOTX64.EFI").write_bytes(b"MZ" + random.Random(seed).randbytes(64 * KiB))
        fill_tree(root, specs, seed)
        run(["mcopy", "-s", "-Q", "-i", f"{img}@@{offset}", *sorted(root.iterdir()), "::/"])
    return [FileSpec("EFI/BOOT/BOOTX64.EFI", "random", 64 * KiB + 2), *specs]


# ------------------------------------------------------------------------------------------------ disks


def _create(path: Path, size: int) -> None:
    if size < 32 * MiB:
        raise DiskError(f"a sample disk needs at least 32 MiB; asked for {size} bytes")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def _partition(path: Path, label: str, parts: list[tuple[int, str, str]]) -> PartitionTable:
    """Write a table with partitions of (size in bytes or 0 = rest, type, name) 1 MiB aligned."""
    lines = [f"label: {label}", "unit: sectors", ""]
    for size, ptype, name in parts:
        fields = [f"size={size // 512}" if size else "size=+", f"type={ptype}"]
        if label == "gpt" and name:
            fields.append(f'name="{name}"')
        if label == "dos" and ptype == "7":
            fields.append("bootable")
        lines.append(", ".join(fields))
    run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", path], input=("\n".join(lines) + "\n").encode())
    return read_table(path)


def build_sample_disk(
    path: Path,
    *,
    size: int = 2 * GiB,
    esp_mib: int = 256,
    fill: float = 0.6,
    seed: int = 0,
    layout: str = "gpt-esp-ntfs-ext4",
) -> SampleDisk:
    """Build a disk-image file at ``path`` (see the module docstring). Deterministic from ``seed``."""
    if layout not in LAYOUTS:
        raise DiskError(f"unknown sample-disk layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if not 0 <= fill <= 0.9:
        raise DiskError(f"sample-disk fill must be between 0 and 0.9; got {fill}")
    path = Path(path)
    _create(path, size)
    contents: list[PartitionContent] = []
    if layout.startswith("bare-"):
        kind = layout.removeprefix("bare-")
        contents.append(_build_fs(path, 0, 0, size, kind, fill, seed, "DATA"))
        return SampleDisk(path, read_table(path), contents)
    if layout.startswith("gpt-"):
        esp = min(esp_mib * MiB, max(size // 4 // MiB, 16) * MiB)
        rest = size - esp - 2 * MiB
        half = rest // 2 // MiB * MiB
        win = (MSDATA_TYPE, "Windows", "ntfs")
        lin = (LINUX_TYPE, "linux", "ext4")
        middle, last = (win, lin) if layout == "gpt-esp-ntfs-ext4" else (lin, win)
        table = _partition(
            path,
            "gpt",
            [(esp, ESP_TYPE, "EFI system partition"), (half, middle[0], middle[1]), (0, last[0], last[1])],
        )
        kinds = ["fat", middle[2], last[2]]
        labels = ["ESP", middle[1], last[1]]
    else:
        rest = size - MiB
        ntfs = rest // 2 // MiB * MiB
        table = _partition(path, "dos", [(ntfs, "7", ""), (0, "83", "")])
        kinds = ["ntfs", "ext4"]
        labels = ["Windows", "linux"]
    for part, kind, label in zip(table.partitions, kinds, labels, strict=True):
        ss = table.sector_size
        contents.append(
            _build_fs(
                path, part.number, part.start * ss, part.size * ss, kind, fill, seed + part.number, label
            )
        )
    logger.info("sample disk %s: %s, %d bytes of files", path, layout, sum(c.bytes for c in contents))
    return SampleDisk(path, table, contents)


def _build_fs(  # noqa: PLR0917
    path: Path, number: int, offset: int, size: int, kind: str, fill: float, seed: int, label: str
) -> PartitionContent:
    if kind == "fat":
        _mkfat(path, offset, size, label.upper()[:11])
        return PartitionContent(number, FsType.FAT, label, _fill_fat(path, offset, size, fill, seed))
    with loop.attach(path, offset=offset, sizelimit=size) as dev:
        if kind == "ntfs":
            _mkntfs(dev, label, offset // 512)
            with _mounted(dev, FsType.NTFS) as mnt:
                specs = _fill_mounted(mnt, fill, seed, owners=False, acls=True)
            return PartitionContent(number, FsType.NTFS, label, specs)
        _mkfs_ext4(dev, label)
        with _mounted(dev, FsType.EXT) as mnt:
            specs = _fill_mounted(mnt, fill, seed, owners=True, acls=False)
        return PartitionContent(number, FsType.EXT, label, specs)


# ------------------------------------------------------------------------------------------ Linux disk

NETSTACKS = ("netplan", "networkmanager", "ifupdown", "networkd")

_NET_FILES = {
    "netplan": (
        "etc/netplan/01-netcfg.yaml",
        "network:\n  version: 2\n  renderer: networkd\n  ethernets:\n    enp1s0:\n      dhcp4: true\n",
        0o600,
    ),
    "networkmanager": (
        "etc/NetworkManager/system-connections/Wired.nmconnection",
        "[connection]\nid=Wired\nuuid=5f0b6f4e-7d5e-4a8e-9b1e-2f7f1c3d9a10\ntype=ethernet\n"
        "interface-name=enp1s0\n\n[ethernet]\n\n[ipv4]\nmethod=auto\n\n[ipv6]\nmethod=auto\n",
        0o600,
    ),
    "ifupdown": (
        "etc/network/interfaces",
        "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n\n"
        "allow-hotplug enp1s0\niface enp1s0 inet dhcp\n",
        0o644,
    ),
    "networkd": (
        "etc/systemd/network/20-wired.network",
        "[Match]\nName=enp1s0\n\n[Network]\nDHCP=yes\n",
        0o644,
    ),
}

OS_RELEASE = """PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
"""


def linux_tree(root: Path, *, hostname: str, netstack: str, seed: int = 0) -> None:
    """A minimal installed-Debian tree under ``root`` (owned by root unless noted)."""
    if netstack not in NETSTACKS:
        raise DiskError(f"unknown network stack {netstack!r}; expected one of {', '.join(NETSTACKS)}")
    rng = random.Random(seed)

    def put(rel: str, text: str | bytes, mode: int = 0o644) -> Path:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text.encode() if isinstance(text, str) else text)
        os.chmod(p, mode)
        return p

    put("etc/os-release", OS_RELEASE)
    put("etc/hostname", hostname + "\n")
    put(
        "etc/hosts",
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )
    put("etc/machine-id", f"{rng.getrandbits(128):032x}\n", 0o444)
    (root / "var/lib/dbus").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dbus/machine-id").symlink_to("/etc/machine-id")
    put("etc/fstab", "LABEL=root / ext4 errors=remount-ro 0 1\nLABEL=ESP /boot/efi vfat umask=0077 0 1\n")
    rel, text, mode = _NET_FILES[netstack]
    put(rel, text, mode)
    ssh = root / "etc/ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    put("etc/ssh/sshd_config", "Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\n")
    for kind in ("rsa", "ed25519"):
        key = ssh / f"ssh_host_{kind}_key"
        if shutil.which("ssh-keygen"):
            bits = ["-b", "2048"] if kind == "rsa" else []
            run(["ssh-keygen", "-q", "-t", kind, *bits, "-N", "", "-C", f"root@{hostname}", "-f", key])
        else:
            put(str(key.relative_to(root)), f"dummy {kind} private key\n", 0o600)
            put(str(key.relative_to(root)) + ".pub", f"ssh-{kind} AAAAdummy root@{hostname}\n")
    for i, src in enumerate(_elf_files()[:6]):
        dst = root / "usr/bin" / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o755)
        if i == 0:
            (root / "usr/bin/sample-link").symlink_to(src.name)
    put("usr/share/doc/fleetcast-sample/README", _text(rng, 20 * KiB).decode())
    home = root / "home/user"
    put("home/user/.profile", "# ~/.profile\nexport PATH=$HOME/bin:$PATH\n")
    put("home/user/notes.txt", _text(rng, 8 * KiB).decode(), 0o600)
    for p in [home, *home.rglob("*")]:
        os.lchown(p, 1000, 1000)
    os.chmod(home, 0o750)
    for d in ("tmp", "root", "var/log", "boot/efi", "proc", "sys", "dev", "run"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "root", 0o700)


def build_linux_disk(
    path: Path,
    *,
    size: int = 512 * MiB,
    hostname: str = "golden",
    netstack: str = "netplan",
    seed: int = 0,
) -> SampleDisk:
    """A GPT disk: 32 MiB ESP (FAT16, EFI/BOOT/BOOTX64.EFI) and an ext4 root labelled "root" holding a
    minimal Debian tree (see :func:`linux_tree`). Partition 2 is the root."""
    path = Path(path)
    _create(path, size)
    table = _partition(path, "gpt", [(32 * MiB, ESP_TYPE, "EFI system partition"), (0, LINUX_TYPE, "root")])
    esp, rootp = table.partitions
    ss = table.sector_size
    _mkfat(path, esp.start * ss, esp.size * ss, "ESP")
    with tempfile.TemporaryDirectory(prefix="fleetcast-esp-") as stage:
        boot = Path(stage) / "EFI" / "BOOT"
        boot.mkdir(parents=True)
        (boot / "BOOTX64.EFI").write_bytes(b"MZ" + random.Random(seed).randbytes(32 * KiB))
        run(["mcopy", "-s", "-Q", "-i", f"{path}@@{esp.start * ss}", Path(stage) / "EFI", "::/"])
    with tempfile.TemporaryDirectory(prefix="fleetcast-root-") as stage:
        linux_tree(Path(stage), hostname=hostname, netstack=netstack, seed=seed)
        with loop.attach(path, offset=rootp.start * ss, sizelimit=rootp.size * ss) as dev:
            run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", stage, dev])
    contents = [
        PartitionContent(1, FsType.FAT, "ESP", [FileSpec("EFI/BOOT/BOOTX64.EFI", "random", 32 * KiB + 2)]),
        PartitionContent(2, FsType.EXT, "root"),
    ]
    return SampleDisk(path, table, contents)


def partition_bytes(table: PartitionTable, part: Partition) -> tuple[int, int]:
    """(byte offset, byte size) of ``part`` in its disk."""
    return part.start * table.sector_size, part.size * table.sector_size
