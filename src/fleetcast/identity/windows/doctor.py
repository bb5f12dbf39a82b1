"""``fleetcast windows doctor``: why Sysprep /generalize fails on this volume, and how to fix it.

Reads ``Windows/System32/Sysprep/Panther/setupact.log`` and ``setuperr.log`` and the offline registry;
nothing is written. Each finding names its evidence and its fix; blockers make the command exit 1.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fleetcast.errors import HiveError, IdentityError
from fleetcast.identity.windows import inspect, layout, security, software, system
from fleetcast.identity.windows.hive import Hive

logger = logging.getLogger(__name__)

PANTHER = "Windows/System32/Sysprep/Panther"
_APPX_RE = re.compile(
    r"Package\s+(\S+)\s+was installed for a user, but not provisioned for all users", re.IGNORECASE
)
_REARM_RE = re.compile(r"0xc004d307|rearm", re.IGNORECASE)
_UPGRADE_RE = re.compile(r"will not run on an upgraded OS|Upgrade.*Sysprep_Clean_Validate", re.IGNORECASE)
_BITLOCKER_RE = re.compile(r"BitLocker|0x80310039", re.IGNORECASE)
_REBOOT_RE = re.compile(r"reboot.*(pending|required)|pending.*reboot|0x800f0975", re.IGNORECASE)
_ERROR_RE = re.compile(r"\b(Error|Fatal)\b")


@dataclass(frozen=True)
class Finding:
    code: str
    blocker: bool
    title: str
    evidence: str
    fix: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_log(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IdentityError(
            f"cannot read the Sysprep log {path}: {exc.strerror or exc}",
            hint="check that the Windows volume is mounted and readable (ntfs-3g -o ro is enough)",
        ) from exc
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16", errors="replace")
    elif data[1:2] == b"\0":
        text = data.decode("utf-16-le", errors="replace")
    else:
        text = data.decode("utf-8", errors="replace")
    return text.splitlines()


def _log_lines(root: Path) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name in ("setupact.log", "setuperr.log"):
        p = layout.find(root, f"{PANTHER}/{name}")
        if p is not None and p.is_file():
            out += [(name, line.strip()) for line in read_log(p)]
    return out


def _first(lines: list[tuple[str, str]], pattern: re.Pattern[str], errors_only: bool = True) -> str | None:
    for name, line in lines:
        if pattern.search(line) and (not errors_only or _ERROR_RE.search(line)):
            return f"{name}: {line[:300]}"
    return None


def diagnose(root: Path) -> list[Finding]:
    cfg = layout.config_dir(root)
    lines = _log_lines(root)
    out: list[Finding] = []
    with tempfile.TemporaryDirectory(prefix="fleetcast-doctor-") as tmp:
        work = Path(tmp)

        def hive(name: str) -> Hive | None:
            p = layout.find(cfg, name)
            return inspect.open_readonly(p, work)[0] if p is not None and p.is_file() else None

        def required(name: str) -> Hive:
            h = hive(name)
            if h is None:  # the checks need it: refuse as inspect does, never report "no cause found"
                raise HiveError(f"{root}: {name} hive missing from Windows\\System32\\config")
            return h

        sysh = required("SYSTEM")
        soft = required("SOFTWARE")
        sec = hive("SECURITY")

        # Appx packages installed for a user but not provisioned
        seen: set[str] = set()
        for name, line in lines:
            m = _APPX_RE.search(line)
            if m and m.group(1) not in seen:
                seen.add(m.group(1))
                out.append(_appx(m.group(1), f"{name}: {line[:300]}"))
        if soft is not None:
            for pkg in software.appx_not_provisioned(soft):
                if pkg not in seen:
                    seen.add(pkg)
                    out.append(_appx(pkg, "SOFTWARE ...\\Appx\\AppxAllUserStore: installed for a user only"))

        # rearm limit
        skip = software.skip_rearm(soft) if soft is not None else None
        ev = _first(lines, _REARM_RE)
        if ev:
            out.append(
                Finding(
                    "rearm-limit",
                    True,
                    "the Windows licensing rearm limit is reached (SkipRearm is " + str(skip) + ")",
                    ev,
                    "set SkipRearm=1: in SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\"
                    "SoftwareProtectionPlatform (reg add ... /v SkipRearm /t REG_DWORD /d 1 /f) and as "
                    "Microsoft-Windows-Security-SPP SkipRearm=1 in the generalize pass of the answer file",
                )
            )
        elif skip not in (None, 1):
            out.append(
                Finding(
                    "skip-rearm",
                    False,
                    f"SkipRearm is {skip}: each /generalize uses one of the few licensing rearms",
                    "SOFTWARE ...\\SoftwareProtectionPlatform\\SkipRearm",
                    "set SkipRearm=1 if this image is generalized repeatedly",
                )
            )

        if sysh is not None:
            st = system.setup_state(sysh)
            if st.generalization_state is not None and st.generalization_state != 7:
                out.append(
                    Finding(
                        "generalization-state",
                        True,
                        f"GeneralizationState is {st.generalization_state}, Sysprep needs 7",
                        "SYSTEM\\Setup\\Status\\SysprepStatus\\GeneralizationState",
                        "set HKLM\\SYSTEM\\Setup\\Status\\SysprepStatus GeneralizationState=7 and "
                        "CleanupState=2 (REG_DWORD), restart, then run Sysprep again",
                    )
                )
            if st.upgraded or _first(lines, _UPGRADE_RE, errors_only=False):
                out.append(
                    Finding(
                        "upgraded",
                        True,
                        "this installation was upgraded from an earlier Windows; Sysprep refuses upgraded "
                        "installations",
                        "SYSTEM\\Setup\\Upgrade" if st.upgraded else str(_first(lines, _UPGRADE_RE, False)),
                        "build the reference image from a clean install; or, when the upgrade is complete, "
                        "delete HKLM\\SYSTEM\\Setup\\Upgrade (key and value) and retry",
                    )
                )
            pending = []
            if st.pending_file_renames:
                ops = "; ".join(
                    f"rename {src} to {dst}" if dst else f"delete {src}"
                    for src, dst in st.pending_file_renames
                )
                pending.append(f"PendingFileRenameOperations ({len(st.pending_file_renames)} file(s): {ops})")
            if soft is not None:
                pending += software.reboot_markers(soft)
            if pending:
                out.append(
                    Finding(
                        "pending-reboot",
                        True,
                        "a reboot is pending (updates or file operations not finished)",
                        "; ".join(pending),
                        "boot this Windows and restart it (twice if updates install), then run Sysprep",
                    )
                )
        ev = _first(lines, _REBOOT_RE)
        if ev and not any(f.code == "pending-reboot" for f in out):
            out.append(
                Finding(
                    "pending-reboot",
                    True,
                    "Sysprep reported a pending reboot",
                    ev,
                    "restart Windows, then retry",
                )
            )

        ms = inspect.mount_source(root)
        bl_sig = inspect.bitlocker_signature(ms[1]) if ms else None
        ev = _first(lines, _BITLOCKER_RE)
        if bl_sig or ev:
            out.append(
                Finding(
                    "bitlocker",
                    True,
                    "BitLocker is on for the system volume; Sysprep /generalize refuses encrypted volumes",
                    ev or f"{ms[1] if ms else root}: BitLocker signature -FVE-FS-",
                    "turn it off and wait for decryption (manage-bde -off C:, check manage-bde -status), "
                    "then run Sysprep",
                )
            )

        if sec is not None:
            doms = security.domains(sec)
            if doms.joined:
                out.append(
                    Finding(
                        "domain-member",
                        True,
                        f"the machine is a member of domain {doms.primary_name} "
                        f"({doms.dns_domain or 'no DNS name'})",
                        f"SECURITY Policy\\PolPrDmS = {doms.primary_sid}",
                        "leave the domain before generalizing (Remove-Computer -WorkgroupName WORKGROUP, "
                        "restart); deployed machines join again through unattend --join-domain",
                    )
                )
    if inspect.hibernated(root):
        out.append(
            Finding(
                "hibernated",
                False,
                "hiberfil.sys holds a hibernation image (hibernated or Fast Startup)",
                "hiberfil.sys header",
                "boot Windows and shut down fully (shutdown /s /t 0); "
                "turn off Fast Startup (powercfg /h off)",
            )
        )
    return out


def _appx(package: str, evidence: str) -> Finding:
    return Finding(
        "appx-not-provisioned",
        True,
        f"Appx package {package} is installed for a user but not provisioned for all users",
        evidence,
        f"remove it for every user: Get-AppxPackage -AllUsers '{package.split('_', maxsplit=1)[0]}*' | "
        "Remove-AppxPackage -AllUsers (and Remove-AppxProvisionedPackage -Online if it is provisioned), "
        "then run Sysprep again",
    )


def render_text(root: Path, findings: list[Finding]) -> str:
    blockers = [f for f in findings if f.blocker]
    out = [f"Sysprep doctor for {root}: {len(blockers)} blocker(s), {len(findings) - len(blockers)} note(s)"]
    for f in findings:
        out.append(f"{'BLOCKER' if f.blocker else 'note'}: {f.title}")
        out.append(f"  evidence: {f.evidence}")
        out.append(f"  fix:      {f.fix}")
    if not findings:
        out.append("no known cause of a failing Sysprep /generalize found")
    return "\n".join(out)
