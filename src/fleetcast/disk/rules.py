"""Target-disk rules: which disk of a client a deployment overwrites.

A rule is one or more terms separated by commas; every term must hold:

- ``N`` -- the Nth *fixed* disk (0-based) in ``disk.discovery``'s documented order, counted among
  the disks that match the other terms (``0`` alone: the first fixed disk);
- ``serial=TEXT``, ``model=TEXT``, ``wwn=TEXT``, ``path=TEXT`` -- exact match, or a shell glob
  (``model=Samsung*``), case-insensitive;
- ``size>=SIZE``, ``size<=SIZE``, ``size>SIZE``, ``size<SIZE`` -- ``SIZE`` is a number with an
  optional unit: ``K``/``M``/``G``/``T`` (powers of 1000, as disks are sold: ``120G``) or
  ``KiB``/``MiB``/``GiB``/``TiB`` (powers of 1024); no unit means bytes.

``select_disk`` refuses -- before anything is written -- when the rule matches no disk, when it
matches several (without an index), or when the chosen disk is smaller than the image needs; the
message lists every disk it saw.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from fleetcast.disk.discovery import DiskInventory
from fleetcast.errors import DiskError

_UNITS = {
    "": 1,
    "B": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_TEXT_KEYS = ("serial", "model", "wwn", "path")
# at most 30 digits each side: larger is no disk size, and unbounded digit strings are slow to convert
_NUMBER = r"[0-9]{1,30}(?:\.[0-9]{1,30})?"
_SIZE_RE = re.compile(rf"^size\s*(>=|<=|>|<)\s*({_NUMBER})\s*([A-Za-z]*)$")
_INDEX_RE = re.compile(r"^[0-9]{1,9}$")
_TEXT_RE = re.compile(r"^([a-z]+)\s*=\s*(.*)$")
_RULE_HELP = "a disk rule is '0', 'serial=...', 'model=...', 'size>=120G', or several joined by commas"


@dataclass(frozen=True)
class SizeBound:
    op: str
    value: int

    def holds(self, size: int) -> bool:
        if self.op == ">=":
            return size >= self.value
        if self.op == "<=":
            return size <= self.value
        if self.op == ">":
            return size > self.value
        return size < self.value


@dataclass(frozen=True)
class DiskRule:
    """A parsed rule; ``text`` is what the technician typed, kept for messages."""

    text: str
    index: int | None = None
    patterns: tuple[tuple[str, str], ...] = ()
    sizes: tuple[SizeBound, ...] = ()

    def matches(self, disk: DiskInventory) -> bool:
        for key, pattern in self.patterns:
            value = str(getattr(disk, key) or "")
            if not fnmatch.fnmatchcase(value.lower(), pattern.lower()):
                return False
        return all(bound.holds(disk.size) for bound in self.sizes)


def parse_size(text: str) -> int:
    """``120G`` -> 120_000_000_000; ``512MiB`` -> 536_870_912."""
    m = re.fullmatch(rf"\s*({_NUMBER})\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise DiskError(
            f"size {text!r} is not understood: expected a number with an optional unit",
            hint="units: K, M, G, T (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)",
        )
    return _bytes(m.group(1), m.group(2))


def _bytes(number: str, unit: str) -> int:
    """Exact (Fraction, not float: no overflow to inf, no rounding of large byte counts)."""
    return int(Fraction(number) * _UNITS[unit.upper()])


def parse_rule(text: str) -> DiskRule:
    """Parse a disk rule; raise DiskError naming the bad term."""
    if not text or not text.strip():
        raise DiskError("disk rule is empty", hint=_RULE_HELP)
    index: int | None = None
    patterns: list[tuple[str, str]] = []
    sizes: list[SizeBound] = []
    for raw in text.split(","):
        term = raw.strip()
        if not term:
            raise DiskError(f"disk rule {text!r} has an empty term", hint=_RULE_HELP)
        if _INDEX_RE.match(term):
            if index is not None:
                raise DiskError(f"disk rule {text!r} has more than one disk number", hint=_RULE_HELP)
            index = int(term)
            continue
        m = _SIZE_RE.match(term)
        if m:
            unit = m.group(3).upper()
            if unit not in _UNITS:
                raise DiskError(
                    f"disk rule {text!r}: unknown size unit {m.group(3)!r} in {term!r}",
                    hint="units: K, M, G, T (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)",
                )
            sizes.append(SizeBound(m.group(1), _bytes(m.group(2), unit)))
            continue
        m = _TEXT_RE.match(term)
        if m and m.group(1) in _TEXT_KEYS:
            if not m.group(2).strip():
                raise DiskError(f"disk rule {text!r}: {m.group(1)}= needs a value", hint=_RULE_HELP)
            patterns.append((m.group(1), m.group(2).strip()))
            continue
        raise DiskError(f"disk rule {text!r}: term {term!r} is not understood", hint=_RULE_HELP)
    return DiskRule(text=text.strip(), index=index, patterns=tuple(patterns), sizes=tuple(sizes))


def _seen(disks: Sequence[DiskInventory]) -> str:
    return "; ".join(d.describe() for d in disks) if disks else "none"


def select_disk(rule: DiskRule, disks: Sequence[DiskInventory], needed_bytes: int) -> DiskInventory:
    """The one disk ``rule`` designates, at least ``needed_bytes`` large, or a DiskError."""
    matching = [d for d in disks if rule.matches(d)]
    if rule.index is not None:
        fixed = [d for d in matching if d.fixed]
        if rule.index >= len(fixed):
            raise DiskError(
                f"disk rule {rule.text!r} matches no disk: there are {len(fixed)} matching fixed disk(s), "
                f"so number {rule.index} does not exist; disks seen: {_seen(disks)}",
                hint="disk numbers count fixed disks from 0 in the order 'fleetcast agent' reports",
            )
        chosen = fixed[rule.index]
    elif not matching:
        raise DiskError(
            f"disk rule {rule.text!r} matches no disk; disks seen: {_seen(disks)}",
            hint="check the client's inventory ('fleetcast clients list') and adjust --disk",
        )
    elif len(matching) > 1:
        raise DiskError(
            f"disk rule {rule.text!r} matches {len(matching)} disks: {_seen(matching)}; "
            f"disks seen: {_seen(disks)}",
            hint="make the rule more specific (serial=..., or add a disk number such as ',0')",
        )
    else:
        chosen = matching[0]
    if chosen.size < needed_bytes:
        raise DiskError(
            f"disk {chosen.path} is {chosen.size} bytes ({chosen.size / 1e9:.1f} GB) but the image needs "
            f"at least {needed_bytes} bytes ({needed_bytes / 1e9:.1f} GB); disks seen: {_seen(disks)}",
            hint="pick a larger disk with --disk, or capture a smaller image",
        )
    return chosen
