"""Windows-like trees for tests: real hives (from ``tests/data/windows-hives``) plus a SOFTWARE hive
built here, user profiles, and files owned by local accounts. Reusable by the agent's e2e tests::

    from fleetcast.identity.windows.testtree import build_windows_tree
    info = build_windows_tree(mounted_ntfs_root)   # -> TreeInfo (machine SID, users, files)

Not used by the product itself.
"""

from __future__ import annotations

import lzma
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from fleetcast.identity.windows import acl, sam
from fleetcast.identity.windows.hive import (
    BASE_BLOCK_SIZE,
    REG_BINARY,
    REG_DWORD,
    REG_EXPAND_SZ,
    REG_SZ,
    Hive,
    base_block_checksum,
    encode_sz,
)
from fleetcast.identity.windows.sid import Sid

HIVES_DIR = Path(__file__).resolve().parents[4] / "tests" / "data" / "windows-hives"
SYSTEM_SOURCES = {
    "win7": "regipy/SYSTEM.xz",
    "win10": "regipy/SYSTEM_WIN_10_1709.xz",
    "dirty": "regipy/SYSTEM_B.xz",
}
LOCAL_SYSTEM = Sid.parse("S-1-5-18")
ADMINISTRATORS = Sid.parse("S-1-5-32-544")
EVERYONE = Sid.parse("S-1-1-0")
_FILETIME_EPOCH = 116444736000000000
# the winreg-kb machine's domain (INTERNAL) user whose NTUSER.DAT is in tests/data
DOMAIN_USER_SID = "S-1-5-21-226059406-2984137831-1201299043-1107"


def _filetime() -> int:
    return _FILETIME_EPOCH + int(time.time() * 10_000_000)


def empty_hive(
    path: Path, *, file_name: str = "SOFTWARE", root_name: str = "ROOT", user: Sid | None = None
) -> None:
    """A valid, empty hive (base block + one hive bin: root key, its security descriptor, free space);
    hivex cannot create one from nothing. With ``user``, the descriptor is a user hive's (the user
    owns it and has full control)."""
    aces = [(0, 0x02, 0x000F003F, LOCAL_SYSTEM), (0, 0x02, 0x000F003F, ADMINISTRATORS)]
    if user is not None:
        aces.insert(0, (0, 0x02, 0x000F003F, user))
    else:
        aces.append((0, 0x02, 0x00020019, EVERYONE))
    sd = acl.build_sd(user or ADMINISTRATORS, LOCAL_SYSTEM, aces)
    name = root_name.encode("ascii")
    nk_len = (4 + 76 + len(name) + 7) & ~7
    nk_off = 0x20
    sk_off = nk_off + nk_len
    sk_len = (4 + 20 + len(sd) + 7) & ~7
    nk = (
        struct.pack(
            "<2sHQIIIIIIIIIIIIIIIHH",
            b"nk",
            0x2C,
            _filetime(),
            0,
            0xFFFFFFFF,
            0,
            0,
            0xFFFFFFFF,
            0xFFFFFFFF,
            0,
            0xFFFFFFFF,
            sk_off,
            0xFFFFFFFF,
            0,
            0,
            0,
            0,
            0,
            len(name),
            0,
        )
        + name
    )
    sk = struct.pack("<2sHIIII", b"sk", 0, sk_off, sk_off, 1, len(sd)) + sd
    hbin = bytearray(4096)
    hbin[0:32] = struct.pack("<4sIIQQI", b"hbin", 0, 4096, 0, _filetime(), 0)
    struct.pack_into("<i", hbin, nk_off, -nk_len)
    hbin[nk_off + 4 : nk_off + 4 + len(nk)] = nk
    struct.pack_into("<i", hbin, sk_off, -sk_len)
    hbin[sk_off + 4 : sk_off + 4 + len(sk)] = sk
    free_off = sk_off + sk_len
    struct.pack_into("<i", hbin, free_off, 4096 - free_off)
    base = bytearray(BASE_BLOCK_SIZE)
    struct.pack_into("<4sIIQIIIIIII", base, 0, b"regf", 1, 1, _filetime(), 1, 5, 0, 1, nk_off, 4096, 1)
    fname = file_name.encode("utf-16-le")[:62]
    base[48 : 48 + len(fname)] = fname
    struct.pack_into("<I", base, 508, base_block_checksum(bytes(base)))
    path.write_bytes(bytes(base) + bytes(hbin))


@dataclass
class SoftwareSpec:
    machine_sid: Sid
    users: list[tuple[int, str]]  # (RID, user name) with a profile
    product: str = "Windows 10 Pro"
    edition: str = "Professional"
    build: str = "19045"
    display_version: str = "22H2"
    image_state: str = "IMAGE_STATE_COMPLETE"
    machine_guid: str = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
    skip_rearm: int | None = 0
    extra_users: list[tuple[str, str]] = field(default_factory=list)  # (domain SID-RID text, name)


def _set(h: Hive, path: str, values: list[tuple[str, int, bytes]]) -> None:
    node = h.ensure_path(path)
    for name, t, data in values:
        h.set_value(node, name, t, data)


def _dword(n: int) -> bytes:
    return n.to_bytes(4, "little")


def build_software(path: Path, spec: SoftwareSpec) -> None:
    """A small SOFTWARE hive holding the keys the Windows personalizer reads and changes."""
    empty_hive(path, file_name="SOFTWARE")
    h = Hive(path, write=True)
    cv = "Microsoft\\Windows NT\\CurrentVersion"
    _set(
        h,
        cv,
        [
            ("ProductName", REG_SZ, encode_sz(spec.product)),
            ("EditionID", REG_SZ, encode_sz(spec.edition)),
            ("CurrentBuild", REG_SZ, encode_sz(spec.build)),
            ("CurrentBuildNumber", REG_SZ, encode_sz(spec.build)),
            ("DisplayVersion", REG_SZ, encode_sz(spec.display_version)),
            ("UBR", REG_DWORD, _dword(3803)),
            ("InstallationType", REG_SZ, encode_sz("Client")),
        ],
    )
    pl = f"{cv}\\ProfileList"
    _set(h, pl, [("ProfilesDirectory", REG_EXPAND_SZ, encode_sz("%SystemDrive%\\Users"))])
    for well_known, folder in (
        ("S-1-5-18", "systemprofile"),
        ("S-1-5-19", "LocalService"),
        ("S-1-5-20", "NetworkService"),
    ):
        _set(
            h,
            f"{pl}\\{well_known}",
            [
                ("Flags", REG_DWORD, _dword(12)),
                ("ProfileImagePath", REG_EXPAND_SZ, encode_sz(f"%systemroot%\\system32\\config\\{folder}")),
                ("State", REG_DWORD, _dword(0)),
            ],
        )
    users = [(str(spec.machine_sid.child(rid)), name) for rid, name in spec.users] + spec.extra_users
    for i, (sid_text, name) in enumerate(users):
        sid = Sid.parse(sid_text)
        guid = f"{{6b3a1c5e-0000-4000-8000-{i:012x}}}"
        _set(
            h,
            f"{pl}\\{sid_text}",
            [
                ("ProfileImagePath", REG_EXPAND_SZ, encode_sz(f"C:\\Users\\{name}")),
                ("Flags", REG_DWORD, _dword(0)),
                ("State", REG_DWORD, _dword(0)),
                ("Sid", REG_BINARY, sid.to_bytes()),
                ("Guid", REG_SZ, encode_sz(guid)),
                ("FullProfile", REG_DWORD, _dword(1)),
            ],
        )
        _set(h, f"{cv}\\ProfileGuid\\{guid}", [("SidString", REG_SZ, encode_sz(sid_text))])
    _set(h, "Microsoft\\Cryptography", [("MachineGuid", REG_SZ, encode_sz(spec.machine_guid))])
    _set(
        h,
        "Microsoft\\Windows\\CurrentVersion\\WindowsUpdate",
        [
            ("SusClientId", REG_SZ, encode_sz("b2a8d2f4-7c1e-4a59-9d3e-5c6f7a8b9c0d")),
            ("SusClientIdValidation", REG_BINARY, bytes(range(6, 70))),
            ("PingID", REG_SZ, encode_sz("9a1c3e5f-2b4d-4f6a-8c0e-1d3f5a7b9c2e")),
            ("AccountDomainSid", REG_SZ, encode_sz(str(spec.machine_sid))),
            ("LastWaitTimeout", REG_SZ, encode_sz("2025-09-10T08:00:00Z")),
        ],
    )
    _set(
        h,
        "Microsoft\\SQMClient",
        [("MachineId", REG_SZ, encode_sz("{8C1F2A3B-4D5E-6F70-8192-A3B4C5D6E7F8}"))],
    )
    _set(
        h,
        "Microsoft\\Windows\\CurrentVersion\\Setup\\State",
        [("ImageState", REG_SZ, encode_sz(spec.image_state))],
    )
    if spec.skip_rearm is not None:
        _set(h, f"{cv}\\SoftwareProtectionPlatform", [("SkipRearm", REG_DWORD, _dword(spec.skip_rearm))])
    _set(
        h,
        "Microsoft\\Windows\\CurrentVersion\\Run",
        [("SecurityHealth", REG_EXPAND_SZ, encode_sz("%windir%\\system32\\SecurityHealthSystray.exe"))],
    )
    tmp = path.with_name(path.name + ".tmp")
    h.commit(tmp)
    tmp.replace(path)


def build_user_hive(path: Path, user: Sid, name: str) -> None:
    """A small NTUSER.DAT whose keys' security descriptor names ``user`` (as Windows makes them)."""
    empty_hive(path, file_name="ntuser.dat", root_name="ROOT", user=user)
    h = Hive(path, write=True)
    _set(h, "Environment", [("TEMP", REG_EXPAND_SZ, encode_sz("%USERPROFILE%\\AppData\\Local\\Temp"))])
    _set(h, "Volatile Environment", [("USERNAME", REG_SZ, encode_sz(name))])
    _set(h, "Software\\Microsoft\\Windows\\CurrentVersion\\Explorer", [("ShellState", REG_BINARY, bytes(36))])
    tmp = path.with_name(path.name + ".tmp")
    h.commit(tmp)
    tmp.replace(path)


def unpack(rel: str, dest: Path, hives_dir: Path = HIVES_DIR) -> Path:
    """Decompress ``hives_dir/rel`` (an .xz hive) to ``dest``."""
    src = hives_dir / rel
    dest.write_bytes(lzma.decompress(src.read_bytes()))
    return dest


@dataclass
class TreeInfo:
    root: Path
    machine_sid: Sid
    users: list[tuple[int, str]]
    owned_files: list[Path]
    acls_set: bool


def build_windows_tree(
    root: Path,
    *,
    system: str = "win7",
    sam_pair: str = "winreg-kb",
    image_state: str = "IMAGE_STATE_COMPLETE",
    with_acls: bool | None = None,
    hives_dir: Path = HIVES_DIR,
) -> TreeInfo:
    """Assemble ``root/Windows/System32/config/{SYSTEM,SAM,SECURITY,SOFTWARE}`` (SYSTEM from ``system``:
    win7, win10 or dirty (with its .LOG1/.LOG2); SAM and SECURITY from ``sam_pair``: winreg-kb (one
    machine) or regipy (two machines)), a SOFTWARE hive with profiles for the SAM's users,
    ``Users/<name>/NTUSER.DAT`` (built for local users; the real winreg-kb one for a domain user
    ``student``, whose profile must stay untouched) and files owned by local accounts (descriptors set through
    ``system.ntfs_acl`` when ``root`` is an ntfs-3g mount, or when ``with_acls`` says so)."""
    config = root / "Windows" / "System32" / "config"
    config.mkdir(parents=True, exist_ok=True)
    unpack(SYSTEM_SOURCES[system], config / "SYSTEM", hives_dir)
    if system == "dirty":
        unpack("regipy/SYSTEM_B.LOG1.xz", config / "SYSTEM.LOG1", hives_dir)
        unpack("regipy/SYSTEM_B.LOG2.xz", config / "SYSTEM.LOG2", hives_dir)
    unpack(f"{sam_pair}/SAM.xz", config / "SAM", hives_dir)
    unpack(f"{sam_pair}/SECURITY.xz", config / "SECURITY", hives_dir)
    samh = Hive(config / "SAM")
    machine = sam.machine_sid(samh)
    users = [(u.rid, u.name) for u in sam.users(samh) if u.rid != 501]
    domain_user = (DOMAIN_USER_SID, "student")
    build_software(
        config / "SOFTWARE", SoftwareSpec(machine, users, image_state=image_state, extra_users=[domain_user])
    )
    student = root / "Users" / "student"
    student.mkdir(parents=True, exist_ok=True)
    unpack("winreg-kb/NTUSER.DAT.xz", student / "NTUSER.DAT", hives_dir)  # a real domain user's hive
    (root / "Windows" / "Panther").mkdir(parents=True, exist_ok=True)
    (root / "Windows" / "System32" / "drivers").mkdir(parents=True, exist_ok=True)
    owned: list[Path] = []
    for _rid, name in users:
        home = root / "Users" / name
        (home / "Documents").mkdir(parents=True, exist_ok=True)
        build_user_hive(home / "NTUSER.DAT", machine.child(_rid), name)
        doc = home / "Documents" / "notes.txt"
        doc.write_text(f"{name}'s notes\n")
        owned += [home, home / "Documents", doc]
    shared = root / "Data"
    shared.mkdir(exist_ok=True)
    (shared / "report.txt").write_text("shared\n")
    owned.append(shared / "report.txt")
    use_acls = acl.supported(root) if with_acls is None else with_acls
    if use_acls:
        for path in owned:
            rid = next((r for r, n in users if f"/Users/{n}" in path.as_posix()), users[0][0])
            account = machine.child(rid)
            sd = acl.build_sd(
                account,
                machine.child(513),
                [
                    (0, 0x13 if path.is_dir() else 0, 0x001F01FF, account),
                    (0, 0x13 if path.is_dir() else 0, 0x001F01FF, LOCAL_SYSTEM),
                    (0, 0x13 if path.is_dir() else 0, 0x001F01FF, ADMINISTRATORS),
                ],
            )
            acl.set_sd(path, sd)
    return TreeInfo(root, machine, users, owned, use_acls)
