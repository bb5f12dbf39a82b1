"""Personalize a Windows volume offline: name, machine SID, machine IDs, static IP, drivers,
unattend.xml -- one transaction (see ``txn``): any failure leaves the volume as it was."""

from __future__ import annotations

import hashlib
import logging
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fleetcast.errors import IdentityError, UsageError
from fleetcast.identity.base import IdentitySettings, OsKind, register
from fleetcast.identity.windows import (
    acl,
    drivers,
    inspect,
    layout,
    logs,
    profiles,
    sam,
    security,
    software,
    system,
    unattend,
)
from fleetcast.identity.windows.hive import Hive, scrub
from fleetcast.identity.windows.sid import (
    Sid,
    check_seed,
    random_machine_sid,
    seeded_machine_sid,
)
from fleetcast.identity.windows.txn import RegipyView, Transaction

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    name: str | None = None
    new_sid: bool = False
    sid: Sid | None = None
    sid_seed: str | None = None
    reset_ids: bool = False
    ip: unattend.StaticIp | None = None
    drivers: Path | None = None
    unattend: str = "auto"  # "auto", "none" or a file to copy
    unattend_opts: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if self.name is not None:
            system.check_name(self.name)
        if self.sid_seed is not None:
            check_seed(self.sid_seed)
        if self.sid is not None and not self.sid.is_machine:
            raise UsageError(f"SID {self.sid} is not a machine SID: expected S-1-5-21-<a>-<b>-<c>")
        if self.unattend not in ("auto", "none") and not Path(self.unattend).is_file():
            raise UsageError(f"unattend file {self.unattend} does not exist", hint="use auto, none or a file")
        if self.drivers is not None and not self.drivers.is_dir():
            raise UsageError(f"driver folder {self.drivers} does not exist or is not a folder")

    @property
    def wants_sid(self) -> bool:
        return self.new_sid or self.sid is not None or self.sid_seed is not None

    @classmethod
    def from_settings(cls, s: IdentitySettings) -> Options:
        ip = unattend.StaticIp.parse(s.ip, s.gateway, s.dns, s.mac) if s.ip else None
        return cls(
            name=s.name,
            new_sid=s.new_sid,
            sid_seed=s.sid_seed,
            reset_ids=s.reset_ids,
            ip=ip,
            drivers=s.drivers,
            unattend=s.extra.get("unattend", "auto"),
        )


def _new_sid(opts: Options, old: Sid) -> Sid:
    if opts.sid is not None:
        new = opts.sid
    elif opts.sid_seed is not None:
        new = seeded_machine_sid(opts.sid_seed)
    else:
        new = random_machine_sid(like=old)  # same text length: SID text is rewritten in place
    if new == old:
        raise UsageError(f"the new machine SID {new} is the image's own SID", hint="pick another seed")
    return new


def _guid(opts: Options) -> uuid.UUID | None:
    if opts.sid_seed is None:
        return None
    digest = hashlib.sha256(b"fleetcast-machine-guid\0" + opts.sid_seed.encode()).digest()
    return uuid.UUID(bytes=digest[:16], version=4)


@dataclass
class _Open:
    path: Path
    hive: Hive
    logs: list[Path]
    replayed: bool
    notes: tuple[str, ...] = ()  # what the replay applied and left (replay.py)


class _Hives:
    def __init__(self, root: Path, workdir: Path) -> None:
        self.root = root
        self.workdir = workdir
        self.opened: dict[str, _Open] = {}

    def open(self, name: str) -> Hive:
        if name in self.opened:
            return self.opened[name].hive
        path = layout.hive_path(self.root, name)
        assert path is not None
        st = logs.state(path)
        copy, replayed = logs.working_copy(st, self.workdir)
        hive = Hive(copy, write=True, label=path)
        notes = logs.replay_notes(copy) if replayed else ()
        self.opened[name] = _Open(path, hive, logs.find_logs(path), replayed, notes)
        return hive


def personalize(root: Path, opts: Options) -> list[str]:
    """Apply ``opts`` to the Windows volume at ``root``; return one line per change made."""
    opts.validate()
    layout.config_dir(root)
    if inspect.hibernated(root):
        raise IdentityError(
            f"Windows on {root} is hibernated (hiberfil.sys holds a resume image): changes made now "
            "would be lost or corrupt the volume when it resumes",
            hint="boot it and shut down fully (shutdown /s /t 0; powercfg /h off turns Fast Startup "
            "off), then capture the image again",
        )
    changes: list[str] = []
    tx = Transaction()
    with tempfile.TemporaryDirectory(prefix="fleetcast-win-") as tmp:
        hives = _Hives(root, Path(tmp))
        try:
            _run(root, opts, hives, tx, changes)
        except OSError as exc:  # one not translated closer to its cause: still a clean error, rolled back
            tx.rollback()
            raise IdentityError(
                f"personalizing {root} failed at {exc.filename or 'an unnamed file'}: {exc.strerror or exc}",
                hint="nothing was changed; check the volume (ntfsfix or chkdsk) and retry",
            ) from exc
        except BaseException:
            tx.rollback()
            raise
        changes += tx.finish()
    return changes


def _run(root: Path, opts: Options, hives: _Hives, tx: Transaction, changes: list[str]) -> None:
    sysh = hives.open("SYSTEM")
    soft = hives.open("SOFTWARE")
    state = software.image_state(soft)
    generalized = software.is_generalized(state)
    version = software.version(soft)
    sets = system.control_sets(sysh)
    checks: dict[str, list[Callable[[RegipyView], None]]] = {
        "SYSTEM": [],
        "SOFTWARE": [],
        "SAM": [],
        "SECURITY": [],
    }
    files: list[tuple[str, bytes]] = []  # (path below root, content)
    old_sid: Sid | None = None
    new_sid: Sid | None = None
    sec_old_sid: Sid | None = None  # SECURITY's own, when it differs from SAM's
    user_hives: list[profiles.UserHive] = []
    for name, o in hives.opened.items():
        if o.replayed:
            changes.append(
                f"{name}: dirty hive, transaction logs replayed ({', '.join(p.name for p in o.logs)})"
            )
            changes += [f"{name}: {note}" for note in o.notes]

    if opts.name is not None:
        netbios = opts.name.upper()
        changes += system.set_name(sysh, opts.name)
        sec = hives.open("SECURITY")
        changes += security.set_name(sec, netbios)

        def check_name(v: RegipyView, sets: list[str] = sets) -> None:
            for cs in sets:
                v.expect(f"{cs}\\Control\\ComputerName\\ComputerName", "ComputerName", netbios)

        checks["SYSTEM"].append(check_name)

        def check_acdmn(v: RegipyView) -> None:
            v.expect("Policy\\PolAcDmN", "", security.encode_unicode_string(netbios))

        checks["SECURITY"].append(check_acdmn)

    if opts.wants_sid:
        samh = hives.open("SAM")
        sec = hives.open("SECURITY")
        old_sid = sam.machine_sid(samh)
        sec_old = security.machine_sid(sec)
        new_sid = _new_sid(opts, old_sid)
        if sec_old != old_sid:
            # SECURITY's SIDs are rewritten from its own (the raw pass below): the pair ends coherent
            sec_old_sid = sec_old
            changes.append(
                f"warning: SAM machine SID {old_sid} and SECURITY PolAcDmS {sec_old} differed; "
                f"both now hold {new_sid}"
            )
        user_hives = profiles.user_hives(root, software.profiles(soft), old_sid)
        changes += sam.set_machine_sid(samh, new_sid)
        changes += security.set_machine_sid(sec, new_sid)
        changes += software.rename_profiles(soft, old_sid, new_sid)
        nsid = new_sid

        def check_sam(v: RegipyView) -> None:
            data = v.value(sam.ACCOUNT, "V")
            if not isinstance(data, bytes):
                v.expect(sam.ACCOUNT, "V", "binary V value")
                return
            off, _ = sam.sid_location(data)
            if Sid.from_bytes(data, off) != nsid:
                v.expect(sam.ACCOUNT, "V", f"a V holding {nsid}")

        checks["SAM"].append(check_sam)
        checks["SECURITY"].append(lambda v: v.expect("Policy\\PolAcDmS", "", nsid.to_bytes()))
        old_text = str(old_sid).lower()

        def check_profiles(v: RegipyView) -> None:
            stale = [k for k in v.subkeys(software.PROFILE_LIST) if k.lower().startswith(old_text + "-")]
            if stale:
                v.expect(software.PROFILE_LIST, stale[0], "key renamed")

        checks["SOFTWARE"].append(check_profiles)

    if opts.reset_ids:
        guid = _guid(opts)
        changes += software.reset_ids(soft, guid=guid)
        new_guid = soft.get_string(software.CRYPTOGRAPHY, "MachineGuid")
        if new_guid is not None:
            checks["SOFTWARE"].append(lambda v: v.expect(software.CRYPTOGRAPHY, "MachineGuid", new_guid))

    staged_drivers = False
    if opts.drivers is not None:
        changes += drivers.inbox_boot_start(sysh, sets)
        for inf in drivers.find_infs(opts.drivers):
            if inf.is_storage and inf.services():
                changes += drivers.install_storage(sysh, inf, sets, windows7=version.is_windows7)
                for sys_name, src in drivers.driver_files(inf):
                    files.append((f"Windows/System32/drivers/{sys_name}", src.read_bytes()))
            else:
                base = opts.drivers
                for f in sorted(inf.path.parent.rglob("*")):
                    if f.is_file():
                        rel = f.relative_to(base).as_posix()
                        files.append((f"{unattend.STAGED_DRIVERS}/{rel}", f.read_bytes()))
                staged_drivers = True
                changes.append(f"driver {inf.path.name}: staged, pnputil installs it at first boot")

    firstboot = (opts.ip is not None and not generalized) or staged_drivers
    if firstboot:
        script = unattend.firstboot_script(
            None if generalized else opts.ip, drivers=staged_drivers, reset_setup=not generalized
        )
        files.append((unattend.FIRSTBOOT_SCRIPT, script.encode("ascii")))
        if not generalized:
            changes += system.set_first_boot_command(sysh, unattend.FIRSTBOOT_COMMAND)
        changes.append(f"file {unattend.FIRSTBOOT_SCRIPT}: first-boot script")

    if opts.unattend == "auto":
        if generalized:
            uo = unattend.UnattendOptions(
                name=opts.name, ip=opts.ip, run_firstboot=staged_drivers, arch=_arch(version, sysh)
            )
            files.append(("Windows/Panther/unattend.xml", unattend.render(uo).encode()))
            changes.append(f"file Windows/Panther/unattend.xml: written (ImageState {state})")
        else:
            changes.append(f"unattend.xml: not written, the image is not generalized (ImageState {state})")
    elif generalized and (opts.ip is not None or staged_drivers):
        changes.append(
            f"warning: the image is generalized and --unattend is {opts.unattend}: the static IP and staged "
            "drivers take effect only if your answer file applies them"
        )
    if opts.unattend not in ("auto", "none"):
        files.append(("Windows/Panther/unattend.xml", Path(opts.unattend).read_bytes()))
        changes.append(f"file Windows/Panther/unattend.xml: copied from {opts.unattend}")

    # stage every changed hive: temp copy -> scrub -> reopen -> regipy check
    for name, o in hives.opened.items():
        # a new SID reaches the key security descriptors (sk cells) of SYSTEM and SOFTWARE too: keys
        # owned by or granted to local accounts (Administrator, None) exist on real installations
        if not o.hive.changed and not o.replayed and new_sid is None:
            continue
        is_sid_hive = name in ("SAM", "SECURITY")
        scrub_old = sec_old_sid if name == "SECURITY" and sec_old_sid is not None else old_sid
        post = _scrubber(name, scrub_old, new_sid, all_cells=is_sid_hive, changes=changes)
        hive_checks = checks[name]

        def check(path: Path, hive_checks: list[Callable[[RegipyView], None]] = hive_checks) -> None:
            view = RegipyView(path)
            for c in hive_checks:
                c(view)

        tx.stage_hive(o.path, o.hive, logs=o.logs, check=check, post=post)
    tx.apply_hives()

    if old_sid is not None and new_sid is not None:
        if acl.supported(root):

            def record(path: Path, sd: bytes) -> None:
                tx.on_rollback(f"ACL of {path}", lambda: acl.set_sd(path, sd))

            res = acl.rewrite_tree(root, old_sid, new_sid, record=record)
            changes.append(
                f"file ACLs: {res.sids_replaced} local-account SID(s) in {res.files_changed} of "
                f"{res.files_seen} files rewritten to {new_sid}"
            )
        else:
            changes.append(f"file ACLs: skipped, {root} is not an ntfs-3g mount (no system.ntfs_acl)")

        changes += profiles.rename_sid_folders(root, old_sid, new_sid, tx)
        for uh in user_hives:
            rewritten = profiles.rewrite(uh.path, old_sid, new_sid, hives.workdir)
            if rewritten is None:
                continue
            data, n, notes = rewritten
            rel_hive = uh.path.relative_to(root)
            user_logs = logs.find_logs(uh.path)
            if logs.state(uh.path).dirty:
                names = ", ".join(p.name for p in user_logs)
                changes.append(f"user hive {rel_hive}: dirty hive, transaction logs replayed ({names})")
                changes += [f"user hive {rel_hive}: {note}" for note in notes]
            for log in user_logs:
                tx.stage_file(log, b"")
                changes.append(f"user hive {rel_hive}: log {log.name} emptied")
            tx.stage_file(uh.path, data)
            changes.append(f"user hive {rel_hive}: {n} security descriptor SID(s) rewritten")

    for rel, data in files:
        tx.stage_file(layout.target(root, rel), data)


def _arch(version: software.Version, sysh: Hive) -> str:
    cs = system.current_set(sysh)
    arch = sysh.get_string(f"{cs}\\Control\\Session Manager\\Environment", "PROCESSOR_ARCHITECTURE")
    return {"AMD64": "amd64", "x86": "x86", "ARM64": "arm64"}.get(arch or "AMD64", "amd64")


def _scrubber(
    name: str, old: Sid | None, new: Sid | None, *, all_cells: bool, changes: list[str]
) -> Callable[[Path], None]:
    def post(path: Path) -> None:
        res = scrub(path, old=old, new=new, all_cells=all_cells)
        logger.debug("scrubbed %s: %s", path, res)
        if res.sk_sids_replaced:
            changes.append(f"{name}: {res.sk_sids_replaced} key security descriptor SID(s) rewritten")

    return post


class WindowsPersonalizer:
    """The agent's hook: ``identity.base.get(OsKind.WINDOWS)``."""

    kind = OsKind.WINDOWS

    def detect(self, root: Path) -> bool:
        return layout.is_windows(root)

    def personalize(self, root: Path, settings: IdentitySettings) -> list[str]:
        return personalize(root, Options.from_settings(settings))


register(WindowsPersonalizer())
