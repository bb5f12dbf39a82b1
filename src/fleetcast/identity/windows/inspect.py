"""``fleetcast windows inspect``: what a Windows volume is and who it thinks it is, read-only.

Dirty hives with logs are read through a replayed copy in a temporary folder; nothing on the volume
is written.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fleetcast.errors import HiveError, IdentityError
from fleetcast.identity.windows import layout, logs, sam, security, software, system
from fleetcast.identity.windows.hive import Hive

logger = logging.getLogger(__name__)

HIBERNATION_MAGICS = (b"hibr", b"HIBR", b"wake", b"WAKE", b"RSTR", b"rstr")
BITLOCKER_SIGNATURE = b"-FVE-FS-"


@dataclass
class Report:
    root: str
    version: dict[str, Any] = field(default_factory=dict)
    image_state: str | None = None
    generalized: bool = False
    select: dict[str, int] = field(default_factory=dict)
    names: list[dict[str, Any]] = field(default_factory=list)
    account_domain: str | None = None
    machine_sid_sam: str | None = None
    machine_sid_security: str | None = None
    sid_mismatch: bool = False
    users: list[dict[str, Any]] = field(default_factory=list)
    domain: dict[str, Any] = field(default_factory=dict)
    setup: dict[str, Any] = field(default_factory=dict)
    skip_rearm: int | None = None
    hives: list[dict[str, Any]] = field(default_factory=list)
    volume: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_readonly(path: Path, workdir: Path) -> tuple[Hive, logs.HiveState]:
    st = logs.state(path)
    if st.dirty and st.logs:
        copy = logs.replay(st, workdir)
        return Hive(copy, label=path), st
    return Hive(path), st


def hibernated(root: Path) -> bool:
    hib = layout.find(root, "hiberfil.sys")
    if hib is None:
        return False
    try:
        with hib.open("rb") as fh:
            return fh.read(4) in HIBERNATION_MAGICS
    except OSError:
        return False


def mount_source(root: Path) -> tuple[str, str] | None:
    """(fstype, source) of the mount holding ``root``, from /proc/self/mountinfo."""
    try:
        target = os.path.realpath(root)
        best: tuple[int, str, str] | None = None
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                mnt = left.split()[4].replace("\\040", " ")
                fstype, source = right.split()[:2]
                if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and (
                    best is None or len(mnt) > best[0]
                ):
                    best = (len(mnt), fstype, source)
    except (OSError, IndexError, ValueError):
        return None
    return (best[1], best[2]) if best else None


def bitlocker_signature(source: str) -> bool | None:
    """True when the device behind the mount carries BitLocker's boot-sector signature."""
    if not source.startswith("/"):
        return None
    try:
        with open(source, "rb") as fh:
            return fh.read(11)[3:11] == BITLOCKER_SIGNATURE
    except OSError:
        return None


def inspect(root: Path) -> Report:
    cfg = layout.config_dir(root)
    rep = Report(root=str(root))
    with tempfile.TemporaryDirectory(prefix="fleetcast-inspect-") as tmp:
        work = Path(tmp)
        opened: dict[str, Hive] = {}
        for name in layout.HIVES:
            path = layout.find(cfg, name)
            if path is None or not path.is_file():
                rep.warnings.append(f"{name} hive missing from Windows\\System32\\config")
                continue
            h, st = open_readonly(path, work)
            opened[name] = h
            rep.hives.append(
                {
                    "name": name,
                    "dirty": st.dirty,
                    "sequence": [st.base.seq1, st.base.seq2],
                    "logs": [p.name for p in st.logs],
                    "replayed_for_reading": st.dirty and bool(st.logs),
                }
            )
            if st.dirty:
                how = (
                    "its logs were replayed into a temporary copy for reading"
                    if st.logs
                    else "personalize will refuse this hive: boot this Windows once and shut it down "
                    "completely (Fast Startup off), or copy its .LOG1/.LOG2 beside it"
                )
                rep.warnings.append(f"{st.describe()}: {how}")
        if "SYSTEM" not in opened:
            raise HiveError(f"{root}: SYSTEM hive missing from Windows\\System32\\config")
        sysh = opened["SYSTEM"]
        rep.select = system.select(sysh)
        rep.names = [asdict(n) for n in system.names(sysh)]
        setup = system.setup_state(sysh)
        rep.setup = asdict(setup)
        soft = opened.get("SOFTWARE")
        if soft is not None:
            rep.version = asdict(software.version(soft))
            rep.version["description"] = software.version(soft).describe()
            rep.image_state = software.image_state(soft)
            rep.generalized = software.is_generalized(rep.image_state)
            rep.skip_rearm = software.skip_rearm(soft)
        state_ini = layout.find(root, "Windows/Setup/State/State.ini")
        if rep.image_state is None and state_ini is not None:
            try:
                state_text = state_ini.read_text(errors="replace")
            except OSError as exc:
                raise IdentityError(
                    f"cannot read {state_ini}: {exc.strerror or exc}",
                    hint="check that the Windows volume is mounted and readable",
                ) from exc
            for line in state_text.splitlines():
                if line.strip().lower().startswith("imagestate="):
                    rep.image_state = line.split("=", 1)[1].strip()
                    rep.generalized = software.is_generalized(rep.image_state)
        if "SAM" in opened:
            rep.machine_sid_sam = str(sam.machine_sid(opened["SAM"]))
            rep.users = [{"rid": u.rid, "name": u.name} for u in sam.users(opened["SAM"])]
        if "SECURITY" in opened:
            doms = security.domains(opened["SECURITY"])
            rep.account_domain = doms.account_name
            rep.machine_sid_security = str(doms.account_sid) if doms.account_sid else None
            rep.domain = {
                "joined": doms.joined,
                "name": doms.primary_name,
                "sid": str(doms.primary_sid) if doms.primary_sid else None,
                "dns_name": doms.dns_domain or None,
            }
        if (
            rep.machine_sid_sam
            and rep.machine_sid_security
            and rep.machine_sid_sam != rep.machine_sid_security
        ):
            rep.sid_mismatch = True
            rep.warnings.append(
                f"machine SID mismatch: SAM has {rep.machine_sid_sam}, "
                f"SECURITY has {rep.machine_sid_security}"
            )
    ms = mount_source(root)
    rep.volume = {
        "hibernated": hibernated(root),
        "mount": {"fstype": ms[0], "source": ms[1]} if ms else None,
        "bitlocker_signature": bitlocker_signature(ms[1]) if ms else None,
        "bitlocker_boot_status": setup.bitlocker_boot_status,
    }
    if rep.volume["hibernated"]:
        rep.warnings.append("hiberfil.sys holds a hibernation image (hibernated or Fast Startup)")
    return rep


def render_text(rep: Report) -> str:
    out = [f"Windows volume {rep.root}"]
    if rep.version:
        out.append(f"  version:        {rep.version.get('description')}")
    out.append(
        f"  image state:    {rep.image_state or 'unknown'} "
        f"(generalized: {'yes' if rep.generalized else 'no'})"
    )
    sel = ", ".join(f"{k}={v}" for k, v in rep.select.items())
    out.append(f"  control sets:   Select {sel}")
    for n in rep.names:
        hosts = ", ".join(f"{k}={v}" for k, v in n["hostnames"].items()) or "no hostname values"
        out.append(f"    {n['control_set']}: ComputerName={n['computer_name']}; {hosts}")
    out.append(f"  account domain: {rep.account_domain}")
    mark = "  << MISMATCH" if rep.sid_mismatch else ""
    out.append(f"  machine SID:    SAM {rep.machine_sid_sam}; SECURITY {rep.machine_sid_security}{mark}")
    for u in rep.users:
        out.append(f"    user {u['rid']:>5}  {u['name']}")
    if rep.domain:
        if rep.domain["joined"]:
            out.append(
                f"  domain:         member of {rep.domain['name']} ({rep.domain['dns_name']}), "
                f"SID {rep.domain['sid']}"
            )
        else:
            out.append(f"  domain:         workgroup {rep.domain['name']}")
    s = rep.setup
    out.append(
        f"  sysprep:        GeneralizationState={s.get('generalization_state')} "
        f"CleanupState={s.get('cleanup_state')} SkipRearm={rep.skip_rearm} upgraded={s.get('upgraded')}"
    )
    for h in rep.hives:
        state = "dirty" if h["dirty"] else "clean"
        logs_txt = ", ".join(h["logs"]) or "no logs"
        out.append(
            f"  hive {h['name']:<9} {state} (sequence {h['sequence'][0]}/{h['sequence'][1]}; {logs_txt})"
        )
    v = rep.volume
    out.append(
        f"  volume:         hibernated={'yes' if v.get('hibernated') else 'no'} "
        f"bitlocker={'yes' if v.get('bitlocker_signature') else 'no'}"
    )
    out += [f"  warning: {w}" for w in rep.warnings]
    return "\n".join(out)
