"""Drivers for different hardware ("universal restore"): INF packages parsed offline.

Boot-critical storage drivers (INF class SCSIAdapter or HDC) are installed as boot-start services:
their .sys copied to System32\\drivers and ``Services\\<name>`` created with Start=0 in every control
set (plus ``CriticalDeviceDatabase`` entries for their hardware IDs on Windows 7). The inbox storage
drivers storahci, stornvme and iaStorV get Start=0 and their StartOverride removed. Every other INF
package is staged under ``Windows\\fleetcast\\drivers`` and installed by pnputil at first boot.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from fleetcast.errors import UsageError
from fleetcast.identity.windows.hive import REG_DWORD, REG_EXPAND_SZ, REG_SZ, Hive, encode_sz

logger = logging.getLogger(__name__)

STORAGE_CLASSES = {
    "scsiadapter": "{4D36E97B-E325-11CE-BFC1-08002BE10318}",
    "hdc": "{4D36E96A-E325-11CE-BFC1-08002BE10318}",
}
INBOX_STORAGE = ("storahci", "stornvme", "iaStorV")
_SECTION_RE = re.compile(r"^\s*\[([^\]]+)\]\s*$")


def _decode(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace")
    return data.decode("cp1252", errors="replace")


def _strip_comment(line: str) -> str:
    out, quoted = [], False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            break
        out.append(ch)
    return "".join(out).strip()


@dataclass
class Inf:
    path: Path
    sections: dict[str, list[str]] = field(default_factory=dict)  # lower-case name -> lines
    strings: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, path: Path) -> Inf:
        try:
            text = _decode(path.read_bytes())
        except OSError as exc:
            raise UsageError(f"cannot read driver INF {path}: {exc.strerror}") from exc
        inf = cls(path)
        current: list[str] | None = None
        for raw in text.splitlines():
            m = _SECTION_RE.match(raw)
            if m:
                current = inf.sections.setdefault(m.group(1).strip().lower(), [])
                continue
            line = _strip_comment(raw)
            if line and current is not None:
                current.append(line)
        if "version" not in inf.sections:
            raise UsageError(f"{path} is not a driver INF: it has no [Version] section")
        for line in inf.sections.get("strings", []):
            k, _, v = line.partition("=")
            inf.strings[k.strip().lower()] = v.strip().strip('"')
        return inf

    def expand(self, text: str) -> str:
        return re.sub(r"%([^%]+)%", lambda m: self.strings.get(m.group(1).lower(), m.group(0)), text)

    def entries(self, section: str) -> list[tuple[str, list[str]]]:
        out = []
        for line in self.sections.get(section.lower(), []):
            key, sep, value = line.partition("=")
            fields = [self.expand(f.strip().strip('"')) for f in value.split(",")] if sep else []
            out.append((key.strip(), fields))
        return out

    def value(self, section: str, key: str) -> str | None:
        for k, fields in self.entries(section):
            if k.lower() == key.lower():
                return ",".join(fields)
        return None

    @property
    def driver_class(self) -> str:
        return (self.value("Version", "Class") or "").strip()

    @property
    def class_guid(self) -> str:
        return (self.value("Version", "ClassGuid") or "").strip().upper()

    @property
    def is_storage(self) -> bool:
        return self.driver_class.lower() in STORAGE_CLASSES or self.class_guid in STORAGE_CLASSES.values()

    def model_sections(self) -> list[str]:
        out = []
        for _name, fields in self.entries("Manufacturer"):
            if not fields:
                continue
            base, decorations = fields[0], fields[1:]
            out.append(base)
            out += [f"{base}.{d}" for d in decorations if d]
        return [s for s in out if s.lower() in self.sections]

    def hardware_ids(self) -> list[tuple[str, str]]:
        """(install section, hardware id) for every model line."""
        out = []
        for sec in self.model_sections():
            for _desc, fields in self.entries(sec):
                if len(fields) >= 2:
                    out += [(fields[0], hwid) for hwid in fields[1:] if hwid]
        return out

    def services(self) -> list[Service]:
        """AddService directives of the install sections, with their service-install sections."""
        found: dict[str, Service] = {}
        for install, _hwid in self.hardware_ids():
            candidates = [f"{install}.services"] + [
                s for s in self.sections if s.startswith(install.lower() + ".") and s.endswith(".services")
            ]
            for sec in candidates:
                for key, fields in self.entries(sec):
                    if key.lower() != "addservice" or len(fields) < 3:
                        continue
                    name, inst = fields[0], fields[2]
                    binary = self.value(inst, "ServiceBinary") or ""
                    found[name.lower()] = Service(
                        name=name,
                        binary=binary.replace("%12%", "System32\\drivers").lstrip("\\"),
                        service_type=int(self.value(inst, "ServiceType") or "1", 0),
                        error_control=int(self.value(inst, "ErrorControl") or "1", 0),
                        group=self.value(inst, "LoadOrderGroup"),
                    )
        return list(found.values())


@dataclass(frozen=True)
class Service:
    name: str
    binary: str  # relative to %SystemRoot%, e.g. System32\drivers\foo.sys
    service_type: int
    error_control: int
    group: str | None


def find_infs(directory: Path) -> list[Inf]:
    if not directory.is_dir():
        raise UsageError(f"driver folder {directory} does not exist or is not a folder")
    infs = [Inf.parse(p) for p in sorted(directory.rglob("*")) if p.suffix.lower() == ".inf" and p.is_file()]
    if not infs:
        raise UsageError(f"driver folder {directory} holds no .inf file")
    return infs


def _dword(n: int) -> bytes:
    return n.to_bytes(4, "little")


def inbox_boot_start(sysh: Hive, control_sets: list[str]) -> list[str]:
    changes = []
    for cs in control_sets:
        for svc in INBOX_STORAGE:
            path = f"{cs}\\Services\\{svc}"
            node = sysh.node(path)
            if node is None:
                continue
            start = sysh.get_dword(path, "Start")
            if start != 0:
                sysh.set_value(node, "Start", REG_DWORD, _dword(0))
                changes.append(f"SYSTEM {path}\\Start: {start} -> 0")
            override = sysh.child(node, "StartOverride")
            if override is not None:
                sysh.delete_key(override)
                changes.append(f"SYSTEM {path}\\StartOverride: deleted")
    return changes


def driver_files(inf: Inf) -> list[tuple[str, Path]]:
    """(file name in System32\\drivers, source file) for each service binary of ``inf``."""
    out = []
    for svc in inf.services():
        sys_name = Path(svc.binary.replace("\\", "/")).name
        src = next((p for p in inf.path.parent.rglob("*") if p.name.lower() == sys_name.lower()), None)
        if src is None:
            raise UsageError(f"driver INF {inf.path} installs {sys_name}, which is not in {inf.path.parent}")
        out.append((sys_name, src))
    return out


def install_storage(sysh: Hive, inf: Inf, control_sets: list[str], *, windows7: bool) -> list[str]:
    """Boot-start services for a storage INF (the caller copies ``driver_files``)."""
    changes = []
    for svc in inf.services():
        sys_name = Path(svc.binary.replace("\\", "/")).name
        for cs in control_sets:
            path = f"{cs}\\Services\\{svc.name}"
            node = sysh.ensure_path(path)
            sysh.set_value(node, "Type", REG_DWORD, _dword(svc.service_type))
            sysh.set_value(node, "Start", REG_DWORD, _dword(0))
            sysh.set_value(node, "ErrorControl", REG_DWORD, _dword(svc.error_control))
            sysh.set_value(node, "ImagePath", REG_EXPAND_SZ, encode_sz(f"System32\\drivers\\{sys_name}"))
            if svc.group:
                sysh.set_value(node, "Group", REG_SZ, encode_sz(svc.group))
            changes.append(f"SYSTEM {path}: boot-start service for {sys_name} (Start=0)")
            if windows7:
                for _install, hwid in inf.hardware_ids():
                    cdd = f"{cs}\\Control\\CriticalDeviceDatabase\\{hwid.replace(chr(92), '#').lower()}"
                    cnode = sysh.ensure_path(cdd)
                    sysh.set_value(cnode, "Service", REG_SZ, encode_sz(svc.name))
                    sysh.set_value(cnode, "ClassGUID", REG_SZ, encode_sz(inf.class_guid or "{}"))
                    changes.append(f"SYSTEM {cdd}: -> {svc.name}")
    return changes
