"""The agent's settings from a kernel command line (``/proc/cmdline``), parsed by a pure function.

The server (or ``fleetcast.bootenv.BootEnv.cmdline``) writes these parameters; everything else on the
line belongs to the kernel and is ignored:

========================  =====================================================================
``fleetcast.server=URL``  server URL, ``http://`` or ``https://`` with a host
``fleetcast.token=TOK``   enrollment token (letters, digits and ``-._~+/=``, at most 512)
``BOOTIF=01-aa-bb-…``     the MAC the machine booted from (iPXE/PXELINUX form, hardware type 01)
``fleetcast.tls=HEX``     SHA-256 fingerprint of the server's certificate (64 hex digits, ``:``
                          separators and a ``sha256:`` prefix allowed)
========================  =====================================================================

A parameter given twice keeps its last value (as the kernel's own ``param=`` handling does). An
unknown ``fleetcast.*`` parameter is an error, so a typo does not silently leave a setting out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fleetcast.errors import AgentError

MAX_CMDLINE = 4096
MAX_TOKEN = 512
MAX_URL = 2048

KNOWN = ("fleetcast.server", "fleetcast.token", "fleetcast.tls", "BOOTIF")
_TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/=-]+")
_BOOTIF_RE = re.compile(r"01-([0-9a-fA-F]{2}(?:-[0-9a-fA-F]{2}){5})")
_URL_RE = re.compile(r"(https?)://([A-Za-z0-9._~%-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?(/[^\s]*)?")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class CmdlineSettings:
    """What the command line said; ``None`` where it said nothing."""

    server: str | None = None
    enroll_token: str | None = None
    boot_mac: str | None = None  # "aa:bb:cc:dd:ee:ff", lower case
    tls_fingerprint: str | None = None  # 64 lower-case hex digits


def split(text: str) -> list[str]:
    """Words of a kernel command line: whitespace separates, double quotes group (and are removed)."""
    words: list[str] = []
    current: list[str] = []
    quoted = False
    started = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
            started = True
        elif ch.isspace() and not quoted:
            if started:
                words.append("".join(current))
            current, started = [], False
        else:
            current.append(ch)
            started = True
    if quoted:
        raise AgentError(
            f"kernel command line: a double quote is not closed in {text[:80]!r}",
            hint='quote whole values: fleetcast.token="..."',
        )
    if started:
        words.append("".join(current))
    return words


def parse_server(value: str) -> str:
    if len(value) > MAX_URL:
        raise AgentError(
            f"kernel command line: fleetcast.server is {len(value)} characters, at most {MAX_URL}"
        )
    m = _URL_RE.fullmatch(value)
    if m is None:
        raise AgentError(
            f"kernel command line: fleetcast.server={value!r} is not an http:// or https:// URL with a host",
            hint="e.g. fleetcast.server=http://10.0.0.1:8080",
        )
    if m.group(3) is not None and not 0 < int(m.group(3)[1:]) < 65536:
        raise AgentError(
            f"kernel command line: fleetcast.server={value!r} has port {m.group(3)[1:]}, not 1-65535"
        )
    return value.rstrip("/")


def parse_token(value: str) -> str:
    if not value or len(value) > MAX_TOKEN or _TOKEN_RE.fullmatch(value) is None:
        raise AgentError(
            f"kernel command line: fleetcast.token must be 1-{MAX_TOKEN} characters of letters, digits and "
            f"'-._~+/=', found {value[:40]!r}" + ("…" if len(value) > 40 else "")
        )
    return value


def parse_bootif(value: str) -> str:
    m = _BOOTIF_RE.fullmatch(value)
    if m is None:
        raise AgentError(
            f"kernel command line: BOOTIF={value!r} is not 01- followed by six hex pairs joined by '-'",
            hint="iPXE writes it as BOOTIF=01-${netX/mac:hexhyp}",
        )
    return m.group(1).replace("-", ":").lower()


def parse_tls(value: str) -> str:
    hexpart = value[len("sha256:") :] if value.lower().startswith("sha256:") else value
    hexpart = hexpart.replace(":", "").lower()
    if _HEX64_RE.fullmatch(hexpart) is None:
        raise AgentError(
            f"kernel command line: fleetcast.tls={value[:80]!r} is not a SHA-256 fingerprint (64 hex digits)"
        )
    return hexpart


def parse(text: str) -> CmdlineSettings:
    """Parse a whole kernel command line; raise AgentError naming the bad parameter."""
    if len(text) > MAX_CMDLINE:
        raise AgentError(f"kernel command line is {len(text)} characters, at most {MAX_CMDLINE}")
    if "\x00" in text:
        raise AgentError("kernel command line contains a NUL byte")
    values: dict[str, str] = {}
    for word in split(text):
        key, eq, value = word.partition("=")
        if not (key.startswith("fleetcast.") or key == "BOOTIF"):
            continue
        if key not in KNOWN:
            raise AgentError(
                f"kernel command line: unknown parameter {key!r}",
                hint="known: " + ", ".join(KNOWN),
            )
        if not eq:
            raise AgentError(f"kernel command line: {key} has no value (expected {key}=...)")
        values[key] = value
    return CmdlineSettings(
        server=parse_server(values["fleetcast.server"]) if "fleetcast.server" in values else None,
        enroll_token=parse_token(values["fleetcast.token"]) if "fleetcast.token" in values else None,
        boot_mac=parse_bootif(values["BOOTIF"]) if "BOOTIF" in values else None,
        tls_fingerprint=parse_tls(values["fleetcast.tls"]) if "fleetcast.tls" in values else None,
    )


def read(path: Path = Path("/proc/cmdline")) -> CmdlineSettings:
    """Parse the running kernel's command line (or a file holding one)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AgentError(f"cannot read the kernel command line {path}: {exc.strerror}") from exc
    return parse(data.decode("utf-8", errors="replace"))
