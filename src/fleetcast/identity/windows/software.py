"""The SOFTWARE hive: version and edition, ImageState, ProfileList, machine identifiers
(MachineGuid, WSUS, SQM), SkipRearm, pending-reboot markers and provisioned Appx packages."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from fleetcast.identity.windows.hive import REG_SZ, Hive, encode_sz, rewrite_sids
from fleetcast.identity.windows.sid import Sid

logger = logging.getLogger(__name__)

CURRENT_VERSION = "Microsoft\\Windows NT\\CurrentVersion"
PROFILE_LIST = f"{CURRENT_VERSION}\\ProfileList"
PROFILE_GUID = f"{CURRENT_VERSION}\\ProfileGuid"
SETUP_STATE = "Microsoft\\Windows\\CurrentVersion\\Setup\\State"
CRYPTOGRAPHY = "Microsoft\\Cryptography"
WSUS = "Microsoft\\Windows\\CurrentVersion\\WindowsUpdate"
SQM = "Microsoft\\SQMClient"
SPP = f"{CURRENT_VERSION}\\SoftwareProtectionPlatform"
REBOOT_REQUIRED = "Microsoft\\Windows\\CurrentVersion\\WindowsUpdate\\Auto Update\\RebootRequired"
REBOOT_PENDING = "Microsoft\\Windows\\CurrentVersion\\Component Based Servicing\\RebootPending"
APPX_STORE = "Microsoft\\Windows\\CurrentVersion\\Appx\\AppxAllUserStore"
WSUS_IDS = ("SusClientId", "SusClientIdValidation", "PingID", "AccountDomainSid")
GENERALIZED_STATES = ("IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE", "IMAGE_STATE_GENERALIZE_RESEAL_TO_AUDIT")


@dataclass(frozen=True)
class Version:
    product: str | None
    edition: str | None
    build: str | None
    display_version: str | None
    ubr: int | None
    installation_type: str | None

    def describe(self) -> str:
        parts = [self.product or "Windows (product unknown)"]
        if self.display_version:
            parts.append(self.display_version)
        if self.build:
            parts.append(f"build {self.build}" + (f".{self.ubr}" if self.ubr is not None else ""))
        if self.edition:
            parts.append(f"edition {self.edition}")
        return ", ".join(parts)

    @property
    def is_windows7(self) -> bool:
        return self.build is not None and self.build.isdigit() and int(self.build) < 9200


def version(soft: Hive) -> Version:
    build = soft.get_string(CURRENT_VERSION, "CurrentBuildNumber") or soft.get_string(
        CURRENT_VERSION, "CurrentBuild"
    )
    return Version(
        product=soft.get_string(CURRENT_VERSION, "ProductName"),
        edition=soft.get_string(CURRENT_VERSION, "EditionID"),
        build=build,
        display_version=soft.get_string(CURRENT_VERSION, "DisplayVersion")
        or soft.get_string(CURRENT_VERSION, "ReleaseId"),
        ubr=soft.get_dword(CURRENT_VERSION, "UBR"),
        installation_type=soft.get_string(CURRENT_VERSION, "InstallationType"),
    )


def image_state(soft: Hive) -> str | None:
    return soft.get_string(SETUP_STATE, "ImageState")


def is_generalized(state: str | None) -> bool:
    return state in GENERALIZED_STATES


@dataclass(frozen=True)
class Profile:
    sid: str
    path: str | None


def profiles(soft: Hive) -> list[Profile]:
    node = soft.node(PROFILE_LIST)
    if node is None:
        return []
    out = []
    for c in soft.children(node):
        p = soft.value(c, "ProfileImagePath")
        out.append(Profile(soft.name(c), p.string() if p is not None else None))
    return out


def rename_profiles(soft: Hive, old: Sid, new: Sid) -> list[str]:
    """ProfileList ``<old>-RID`` keys renamed to ``<new>-RID``, their Sid values (binary) and the
    ProfileGuid SidString values rewritten; nothing else in SOFTWARE."""
    changes = rewrite_sids(soft, old, new, under=PROFILE_LIST)
    changes += rewrite_sids(soft, old, new, under=PROFILE_GUID)
    return [f"SOFTWARE {c}" for c in changes]


def reset_ids(soft: Hive, *, guid: uuid.UUID | None = None) -> list[str]:
    """WSUS client identity deleted (Windows Update makes a new one), a new MachineGuid, the SQM
    (telemetry) MachineId deleted."""
    changes = []
    node = soft.node(WSUS)
    if node is not None:
        for name in WSUS_IDS:
            if soft.delete_value(node, name):
                changes.append(f"SOFTWARE {WSUS}\\{name}: deleted")
    crypto = soft.node(CRYPTOGRAPHY)
    if crypto is not None:
        new = str(guid or uuid.uuid4())
        old = soft.value(crypto, "MachineGuid")
        soft.set_value(crypto, "MachineGuid", old.type if old else REG_SZ, encode_sz(new))
        changes.append(f"SOFTWARE {CRYPTOGRAPHY}\\MachineGuid: {old.string() if old else '(none)'} -> {new}")
    sqm = soft.node(SQM)
    if sqm is not None and soft.delete_value(sqm, "MachineId"):
        changes.append(f"SOFTWARE {SQM}\\MachineId: deleted")
    return changes


def skip_rearm(soft: Hive) -> int | None:
    return soft.get_dword(SPP, "SkipRearm")


def reboot_markers(soft: Hive) -> list[str]:
    out = []
    for path in (REBOOT_REQUIRED, REBOOT_PENDING):
        if soft.node(path) is not None:
            out.append(path)
    return out


def appx_not_provisioned(soft: Hive) -> list[str]:
    """Packages installed for a user (AppxAllUserStore\\<user SID>\\<package>) that are not in the
    provisioned set (AppxAllUserStore\\Applications) -- what makes Sysprep /generalize fail."""
    store = soft.node(APPX_STORE)
    if store is None:
        return []
    provisioned_node = soft.child(store, "Applications")
    provisioned = set()
    if provisioned_node is not None:
        provisioned = {_family(soft.name(c)) for c in soft.children(provisioned_node)}
    staged = soft.child(store, "Staged")
    if staged is not None:
        provisioned |= {_family(soft.name(c)) for c in soft.children(staged)}
    found = set()
    for c in soft.children(store):
        if not soft.name(c).upper().startswith("S-1-5-21-"):
            continue
        for pkg in soft.children(c):
            name = soft.name(pkg)
            if _family(name) not in provisioned:
                found.add(name)
    return sorted(found)


def _family(package_full_name: str) -> str:
    """Microsoft.Foo_1.2.3.0_x64__8wekyb3d8bbwe -> microsoft.foo (name without version)."""
    return package_full_name.split("_", 1)[0].lower()
