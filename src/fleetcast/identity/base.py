"""The seam between the agent and the OS personalizers: a Protocol and a registry keyed by OsKind."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from fleetcast.errors import IdentityError


class OsKind(StrEnum):
    WINDOWS = "windows"
    LINUX = "linux"


@dataclass(frozen=True)
class IdentitySettings:
    """What makes one deployed machine itself. ``ip`` is CIDR ("10.0.0.101/24") or None for DHCP."""

    name: str | None = None
    ip: str | None = None
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    mac: str | None = None
    new_sid: bool = True
    sid_seed: str | None = None
    reset_ids: bool = True
    drivers: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)


class Personalizer(Protocol):
    """Personalizes a deployed system offline. ``root`` is the mounted system volume."""

    kind: OsKind

    def detect(self, root: Path) -> bool:
        """True when ``root`` holds a system of this kind."""
        ...

    def personalize(self, root: Path, settings: IdentitySettings) -> list[str]:
        """Apply the identity; return one human-readable line per change made."""
        ...


_REGISTRY: dict[OsKind, Personalizer] = {}


def register(personalizer: Personalizer) -> None:
    _REGISTRY[personalizer.kind] = personalizer


def get(kind: OsKind) -> Personalizer:
    try:
        return _REGISTRY[kind]
    except KeyError as exc:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise IdentityError(f"no personalizer registered for {kind!s}; registered: {known}") from exc


def registered() -> list[Personalizer]:
    return list(_REGISTRY.values())
