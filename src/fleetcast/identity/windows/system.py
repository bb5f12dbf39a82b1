"""The SYSTEM hive: control sets (``Select``), computer names, setup and Sysprep state, pending
operations, BitLocker status, and the first-boot command (``Setup\\CmdLine``)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from fleetcast.errors import HiveError, UsageError
from fleetcast.identity.windows.hive import REG_DWORD, REG_SZ, Hive, encode_sz

logger = logging.getLogger(__name__)

SELECT_VALUES = ("Current", "Default", "LastKnownGood", "Failed")
_CONTROL_SET_RE = re.compile(r"^ControlSet(\d{3})$", re.IGNORECASE)
NETBIOS_MAX = 15
# NetBIOS computer names: letters, digits and hyphens are what every Windows tool accepts; a name
# may not be all digits and may not start or end with a hyphen (DNS host label rules).
_NAME_RE = re.compile(r"^[A-Za-z0-9-]+$")
HOSTNAME_SPELLINGS = ("Hostname", "NV Hostname")


def check_name(name: str) -> str:
    """Validate a computer name against the NetBIOS/DNS rules Windows enforces; return it."""
    if not name:
        raise UsageError("computer name is empty")
    if len(name) > NETBIOS_MAX:
        raise UsageError(
            f"computer name {name!r} is {len(name)} characters long; NetBIOS allows at most {NETBIOS_MAX}",
            hint=f"shorten it, e.g. {name[:NETBIOS_MAX].rstrip('-')!r}",
        )
    bad = sorted({c for c in name if not re.match(r"[A-Za-z0-9-]", c)})
    if bad or not _NAME_RE.match(name):
        shown = " ".join(repr(c) for c in bad)
        raise UsageError(
            f"computer name {name!r} contains characters Windows does not allow: {shown}",
            hint="use letters A-Z, digits 0-9 and hyphens",
        )
    if name.isdigit():
        raise UsageError(f"computer name {name!r} is all digits; Windows needs at least one letter or hyphen")
    if name.startswith("-") or name.endswith("-"):
        raise UsageError(f"computer name {name!r} starts or ends with a hyphen; Windows does not allow that")
    return name


def control_sets(sysh: Hive) -> list[str]:
    """The control sets to personalize: every set named in ``Select`` plus any other ``ControlSetNNN``
    present (Windows may fall back to it), in numeric order."""
    found: dict[int, str] = {}
    for c in sysh.children(sysh.root()):
        m = _CONTROL_SET_RE.match(sysh.name(c))
        if m:
            found[int(m.group(1))] = sysh.name(c)
    sel = select(sysh)
    missing = sorted({n for n in sel.values() if n and n not in found})
    if missing:
        raise HiveError(
            f"SYSTEM hive {sysh.path}: Select names ControlSet{missing[0]:03d}, which does not exist",
            hint="the hive is inconsistent; boot Windows once or restore the hive from a backup",
        )
    if not found:
        raise HiveError(f"SYSTEM hive {sysh.path} has no ControlSetNNN key", hint="is this a SYSTEM hive?")
    return [found[n] for n in sorted(found)]


def select(sysh: Hive) -> dict[str, int]:
    out = {}
    for name in SELECT_VALUES:
        v = sysh.get_dword("Select", name)
        if v is not None:
            out[name] = v
    return out


def current_set(sysh: Hive) -> str:
    cur = select(sysh).get("Current") or select(sysh).get("Default") or 1
    return f"ControlSet{cur:03d}"


@dataclass(frozen=True)
class Names:
    control_set: str
    computer_name: str | None
    active_computer_name: str | None
    hostnames: dict[str, str]  # value name as spelled in the hive -> value


def names(sysh: Hive) -> list[Names]:
    out = []
    for cs in control_sets(sysh):
        tcp = sysh.node(f"{cs}\\Services\\Tcpip\\Parameters")
        hostnames: dict[str, str] = {}
        if tcp is not None:
            for v in sysh.values(tcp):
                if v.name.lower() in (h.lower() for h in HOSTNAME_SPELLINGS):
                    hostnames[v.name] = v.string()
        out.append(
            Names(
                cs,
                sysh.get_string(f"{cs}\\Control\\ComputerName\\ComputerName", "ComputerName"),
                sysh.get_string(f"{cs}\\Control\\ComputerName\\ActiveComputerName", "ComputerName"),
                hostnames,
            )
        )
    return out


def set_name(sysh: Hive, name: str) -> list[str]:
    """ComputerName (upper case, NetBIOS) and Tcpip Hostname / NV Hostname (as given, every spelling
    present) in every control set."""
    check_name(name)
    netbios = name.upper()
    changes = []
    for cs in control_sets(sysh):
        for sub in ("ComputerName", "ActiveComputerName"):
            path = f"{cs}\\Control\\ComputerName\\{sub}"
            node = sysh.node(path)
            if node is None:
                if sub == "ComputerName":
                    node = sysh.ensure_path(path)
                else:
                    continue
            old = sysh.value(node, "ComputerName")
            if old is None or old.string() != netbios:
                sysh.set_value(node, "ComputerName", old.type if old else REG_SZ, encode_sz(netbios))
                changes.append(
                    f"SYSTEM {path}\\ComputerName: {old.string() if old else '(none)'} -> {netbios}"
                )
        tpath = f"{cs}\\Services\\Tcpip\\Parameters"
        tcp = sysh.node(tpath)
        if tcp is None:
            continue
        present = [v for v in sysh.values(tcp) if v.name.lower() in (h.lower() for h in HOSTNAME_SPELLINGS)]
        if not present:
            present_names = list(HOSTNAME_SPELLINGS)
            types = [REG_SZ, REG_SZ]
            olds = ["(none)", "(none)"]
        else:
            present_names = [v.name for v in present]
            types = [v.type for v in present]
            olds = [v.string() for v in present]
        for vname, vtype, old_s in zip(present_names, types, olds, strict=True):
            if old_s != name:
                sysh.set_value(tcp, vname, vtype, encode_sz(name))
                changes.append(f"SYSTEM {tpath}\\{vname}: {old_s} -> {name}")
    return changes


@dataclass(frozen=True)
class SetupState:
    system_setup_in_progress: int | None
    oobe_in_progress: int | None
    setup_type: int | None
    cmdline: str | None
    upgraded: bool
    generalization_state: int | None
    cleanup_state: int | None
    pending_file_renames: list[tuple[str, str]]  # (source, destination); "" = delete
    bitlocker_boot_status: int | None


def pending_operations(data: bytes) -> list[tuple[str, str]]:
    """PendingFileRenameOperations: NUL-terminated (source, destination) pairs, an empty destination
    meaning delete; the list ends at an empty source. Empty strings are data here, never dropped."""
    parts = data[: len(data) // 2 * 2].decode("utf-16-le", errors="replace").split("\0")
    out = []
    for i in range(0, len(parts), 2):
        if not parts[i]:
            break
        out.append((parts[i], parts[i + 1] if i + 1 < len(parts) else ""))
    return out


def setup_state(sysh: Hive) -> SetupState:
    cs = current_set(sysh)
    pfro = sysh.get(f"{cs}\\Control\\Session Manager", "PendingFileRenameOperations")
    pfro2 = sysh.get(f"{cs}\\Control\\Session Manager", "PendingFileRenameOperations2")
    renames = [op for v in (pfro, pfro2) if v is not None for op in pending_operations(v.data)]
    upgraded = sysh.node("Setup\\Upgrade") is not None or sysh.get("Setup", "Upgrade") is not None
    return SetupState(
        system_setup_in_progress=sysh.get_dword("Setup", "SystemSetupInProgress"),
        oobe_in_progress=sysh.get_dword("Setup", "OOBEInProgress"),
        setup_type=sysh.get_dword("Setup", "SetupType"),
        cmdline=sysh.get_string("Setup", "CmdLine"),
        upgraded=upgraded,
        generalization_state=sysh.get_dword("Setup\\Status\\SysprepStatus", "GeneralizationState"),
        cleanup_state=sysh.get_dword("Setup\\Status\\SysprepStatus", "CleanupState"),
        pending_file_renames=renames,
        bitlocker_boot_status=sysh.get_dword(f"{cs}\\Control\\BitLockerStatus", "BootStatus"),
    )


def set_first_boot_command(sysh: Hive, command: str) -> list[str]:
    """Make Winlogon run ``command`` as SYSTEM once before the logon screen (SetupType 2 + CmdLine);
    the command resets both when it is done. Refuses when another setup command is pending."""
    node = sysh.node("Setup")
    if node is None:
        raise HiveError(f"SYSTEM hive {sysh.path} has no Setup key")
    st = setup_state(sysh)
    if st.cmdline and st.cmdline != command and (st.setup_type or 0) != 0:
        raise HiveError(
            f"SYSTEM hive {sysh.path}: Setup\\CmdLine already runs {st.cmdline!r} at next boot",
            hint="let that setup finish (boot once), or generalize the image and use --unattend",
        )
    sysh.set_value(node, "CmdLine", REG_SZ, encode_sz(command))
    sysh.set_value(node, "SetupType", REG_DWORD, (2).to_bytes(4, "little"))
    return [f"SYSTEM Setup\\CmdLine: {command} (SetupType 2: runs once before logon)"]
