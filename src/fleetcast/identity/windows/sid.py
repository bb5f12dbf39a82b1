"""Security identifiers: parse and format (text and binary), random and seeded machine SIDs.

A machine (account domain) SID is ``S-1-5-21-a-b-c``: authority 5 (NT), sub-authority 21 and three
32-bit random numbers. Local accounts are that SID plus a RID (``S-1-5-21-a-b-c-1001``).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import struct
from dataclasses import dataclass

from fleetcast.errors import UsageError

_TEXT_RE = re.compile(r"S-1-([0-9]+)((?:-[0-9]+)*)", re.IGNORECASE)  # ASCII digits only
_SEED_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
MAX_SUBAUTHORITIES = 15
NT_AUTHORITY = 5
NT_NON_UNIQUE = 21


@dataclass(frozen=True, order=True)
class Sid:
    authority: int
    subauthorities: tuple[int, ...]
    revision: int = 1

    @classmethod
    def parse(cls, text: str) -> Sid:
        """``S-1-5-21-1-2-3`` -> Sid; raise UsageError naming what is wrong."""
        m = _TEXT_RE.fullmatch(text.strip())
        if m is None:
            raise UsageError(
                f"malformed SID {text!r}: expected S-1-<authority>-<sub-authority>..., e.g. S-1-5-21-1-2-3"
            )
        # compare digit counts before int(): a number of thousands of digits is refused, not converted
        digits = m.group(1).lstrip("0") or "0"
        if len(digits) > 15 or int(digits) >= 1 << 48:
            raise UsageError(f"malformed SID {text!r}: authority {digits} does not fit in 48 bits")
        authority = int(digits)
        sub_texts = m.group(2).split("-")[1:]
        if len(sub_texts) > MAX_SUBAUTHORITIES:
            raise UsageError(f"malformed SID {text!r}: {len(sub_texts)} sub-authorities, at most 15 allowed")
        subs = []
        for sub in sub_texts:
            digits = sub.lstrip("0") or "0"
            if len(digits) > 10 or int(digits) >= 1 << 32:
                raise UsageError(f"malformed SID {text!r}: sub-authority {digits} does not fit in 32 bits")
            subs.append(int(digits))
        return cls(authority, tuple(subs))

    @classmethod
    def from_bytes(cls, data: bytes, offset: int = 0) -> Sid:
        """The binary SID at ``offset``: revision, count, 6-byte big-endian authority, LE u32s."""
        if len(data) < offset + 8:
            raise ValueError(f"SID at offset {offset}: need 8 header bytes, have {len(data) - offset}")
        revision, count = data[offset], data[offset + 1]
        if revision != 1 or count > MAX_SUBAUTHORITIES:
            raise ValueError(
                f"SID at offset {offset}: expected revision 1 and at most {MAX_SUBAUTHORITIES} "
                f"sub-authorities, found revision {revision} and {count}"
            )
        end = offset + 8 + 4 * count
        if len(data) < end:
            raise ValueError(f"SID at offset {offset}: need {end - offset} bytes, have {len(data) - offset}")
        authority = int.from_bytes(data[offset + 2 : offset + 8], "big")
        subs = struct.unpack_from(f"<{count}I", data, offset + 8)
        return cls(authority, tuple(subs), revision)

    def to_bytes(self) -> bytes:
        return (
            bytes([self.revision, len(self.subauthorities)])
            + self.authority.to_bytes(6, "big")
            + struct.pack(f"<{len(self.subauthorities)}I", *self.subauthorities)
        )

    @property
    def size(self) -> int:
        return 8 + 4 * len(self.subauthorities)

    def __str__(self) -> str:
        return "-".join(["S", str(self.revision), str(self.authority), *map(str, self.subauthorities)])

    @property
    def is_machine(self) -> bool:
        """True for an account-domain SID S-1-5-21-a-b-c (no RID)."""
        return (
            self.authority == NT_AUTHORITY
            and len(self.subauthorities) == 4
            and self.subauthorities[0] == NT_NON_UNIQUE
        )

    def child(self, rid: int) -> Sid:
        return Sid(self.authority, (*self.subauthorities, rid), self.revision)

    def is_in_domain(self, domain: Sid) -> bool:
        """True when this SID is ``domain`` followed by exactly one RID."""
        return (
            self.authority == domain.authority
            and len(self.subauthorities) == len(domain.subauthorities) + 1
            and self.subauthorities[:-1] == domain.subauthorities
        )

    @property
    def rid(self) -> int:
        return self.subauthorities[-1]


def parse_machine_sid(text: str) -> Sid:
    sid = Sid.parse(text)
    if not sid.is_machine:
        raise UsageError(f"SID {text!r} is not a machine SID: expected S-1-5-21-<a>-<b>-<c> (no RID)")
    return sid


def _machine_from_words(words: tuple[int, int, int]) -> Sid:
    return Sid(NT_AUTHORITY, (NT_NON_UNIQUE, *words))


def random_machine_sid(like: Sid | None = None) -> Sid:
    """A fresh machine SID from the OS random source (what Sysprep /generalize does). With ``like``,
    each number has as many digits as ``like``'s: the SID's text keeps its length, so SID text inside
    values can be rewritten in place."""
    if like is None or len(like.subauthorities) != 4:
        words = tuple(secrets.randbelow(0xFFFFFFFF - 0x10000) + 0x10000 for _ in range(3))
        return _machine_from_words((words[0], words[1], words[2]))
    picked = []
    for w in like.subauthorities[1:]:
        digits = len(str(w))
        low, high = max(10 ** (digits - 1), 0x10000), min(10**digits - 1, 0xFFFFFFFF)
        if low > high:  # a number too short for a random machine word: keep the length rule off
            return random_machine_sid()
        picked.append(low + secrets.randbelow(high - low + 1))
    return _machine_from_words((picked[0], picked[1], picked[2]))


def replace_text_bytes(data: bytes, old: Sid, new: Sid) -> tuple[bytes, int]:
    """Replace ``old``'s text (and ``old-RID``) by ``new``'s inside raw bytes, UTF-16LE and ANSI, when
    both texts have the same length (in place: nothing moves). A longer number is not a match."""
    old_s, new_s = str(old), str(new)
    if len(old_s) != len(new_s):
        return data, 0
    count = 0
    for enc in ("utf-16-le", "ascii"):
        width = 2 if enc == "utf-16-le" else 1
        digit = b"[0-9]\\x00" if width == 2 else b"[0-9]"
        pat = re.compile(
            b"(?i)" + re.escape(old_s.encode(enc)) + b"(?!" + digit + b")",
        )
        data, n = pat.subn(new_s.encode(enc), data)
        count += n
    return data, count


def check_seed(seed: str) -> str:
    if not _SEED_RE.fullmatch(seed):
        raise UsageError(
            f"malformed SID seed {seed!r}: expected 1-64 characters from A-Z a-z 0-9 . _ : -",
            hint="for example --sid-seed lab-pc-01",
        )
    return seed


def seeded_machine_sid(seed: str) -> Sid:
    """The same machine SID for the same seed (tests, reproducible labs)."""
    digest = hashlib.sha256(b"fleetcast-machine-sid\0" + check_seed(seed).encode()).digest()
    words = struct.unpack_from("<3I", digest)
    fixed = tuple(w | 0x10000 for w in words)
    return _machine_from_words((fixed[0], fixed[1], fixed[2]))


def domain_pattern(domain: Sid) -> bytes:
    """Bytes that every binary SID inside ``domain`` carries after its revision and count bytes:
    the 6-byte authority and the domain's sub-authorities (21, a, b, c)."""
    return domain.authority.to_bytes(6, "big") + struct.pack(
        f"<{len(domain.subauthorities)}I", *domain.subauthorities
    )


def replace_binary(data: bytes, old: Sid, new: Sid) -> tuple[bytes, int]:
    """Replace every binary SID of ``old``'s domain (the domain itself and its accounts) by ``new``'s,
    in place (same length). Returns the new bytes and the number of SIDs replaced."""
    if len(old.subauthorities) != len(new.subauthorities) or old.authority != new.authority:
        raise ValueError(f"{old} and {new} differ in shape; binary replacement needs equal lengths")
    pat_old, pat_new = domain_pattern(old), domain_pattern(new)
    n_old = len(old.subauthorities)
    buf = bytearray(data)
    count = 0
    start = 0
    while True:
        i = buf.find(pat_old, start)
        if i < 0:
            break
        start = i + 1
        if i < 2:
            continue
        rev, cnt = buf[i - 2], buf[i - 1]
        if rev == 1 and cnt in (n_old, n_old + 1) and i + len(pat_old) + 4 * (cnt - n_old) <= len(buf):
            buf[i : i + len(pat_old)] = pat_new
            count += 1
    return bytes(buf), count


_SID_TEXT = re.compile(r"S-1-5-21-\d+-\d+-\d+", re.IGNORECASE)


def replace_text(text: str, old: Sid, new: Sid) -> tuple[str, int]:
    """Replace ``old`` (and ``old-RID``) in text by ``new``; a longer number is not a match."""
    old_s = str(old).upper()
    count = 0

    def sub(m: re.Match[str]) -> str:
        nonlocal count
        if m.group(0).upper() == old_s:
            count += 1
            return str(new)
        return m.group(0)

    out = re.sub(r"(?<![0-9-])" + _SID_TEXT.pattern + r"(?![0-9])", sub, text, flags=re.IGNORECASE)
    return out, count
