"""TLS for ``fleetcast serve --tls-cert FILE --tls-key FILE`` (issue 12 item 13).

Plain HTTP let anyone on the lab network read the admin token and the agents' credentials off the
wire and answer as the server. With a certificate and its key the server speaks HTTPS only. A lab
server rarely has a certificate from a public authority, so agents pin the certificate instead:
the server prints its SHA-256 fingerprint at start (and ``fleetcast admin tls-fingerprint --tls-cert
FILE`` prints it again); it goes on the agent's kernel command line as
``fleetcast.tls=sha256:<64 hex>`` beside ``fleetcast.server=https://...`` (agent/tlspin.py pins it).

``check_pair`` loads both files into an ``ssl.SSLContext`` before anything starts, so a wrong path,
a key that does not match the certificate, or an expired certificate is a plain error, not a
traceback from uvicorn's worker.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fleetcast.errors import UsageError

logger = logging.getLogger(__name__)

FINGERPRINT_PREFIX = "sha256:"


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    fingerprint: str  # sha256:<64 lower-case hex> of the leaf certificate's DER bytes


def fingerprint_of_der(der: bytes) -> str:
    return FINGERPRINT_PREFIX + hashlib.sha256(der).hexdigest()


def _leaf_der(cert: Path) -> bytes:
    try:
        text = cert.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a PEM text file"
        raise UsageError(f"TLS certificate {cert} cannot be read: {reason}") from exc
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end = text.find("-----END CERTIFICATE-----", begin)
    if begin < 0 or end < 0:
        raise UsageError(
            f"TLS certificate {cert} has no PEM certificate (-----BEGIN CERTIFICATE-----)",
            hint="--tls-cert takes a PEM file: the server's certificate first, then any intermediates",
        )
    try:
        return ssl.PEM_cert_to_DER_cert(text[begin : end + len("-----END CERTIFICATE-----")])
    except ValueError as exc:
        raise UsageError(f"TLS certificate {cert}: the first PEM certificate is damaged: {exc}") from exc


def fingerprint(cert: Path) -> str:
    """``sha256:<hex>`` of the first certificate in the PEM file ``cert`` (the server's own)."""
    return fingerprint_of_der(_leaf_der(cert))


def check_pair(cert: Path | None, key: Path | None) -> TlsFiles | None:
    """Both or neither; both readable, the key matching the certificate; None for plain HTTP."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise UsageError(
            "--tls-cert and --tls-key go together: give both (or neither, for plain HTTP)",
            hint="--tls-cert server.pem --tls-key server.key",
        )
    der = _leaf_der(cert)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise UsageError(f"TLS key {key} cannot be read: {exc.strerror}") from exc
    except PermissionError as exc:
        raise UsageError(f"TLS key {key} cannot be read: {exc.strerror}") from exc
    except ssl.SSLError as exc:
        raise UsageError(
            f"TLS key {key} does not fit certificate {cert}: {exc.reason or exc}",
            hint="give the private key the certificate was made for (PEM, not encrypted)",
        ) from exc
    _check_dates(cert)
    mode = os.stat(key).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("TLS key %s is readable by others (mode %o): chmod 600 it", key, stat.S_IMODE(mode))
    return TlsFiles(cert, key, fingerprint_of_der(der))


def _check_dates(cert: Path) -> None:
    """Refuse a certificate that has expired: CLI clients verifying with authorities would refuse it
    with a worse message, and pinning agents (agent/tlspin.py, no date check) would go on trusting it."""
    try:
        info = ssl._ssl._test_decode_cert(str(cert))  # type: ignore[attr-defined]
    except (AttributeError, ssl.SSLError, OSError):  # not available: the agents will tell
        return
    not_after = info.get("notAfter")
    if not not_after:
        return
    expires = datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), UTC)
    if expires < datetime.now(UTC):
        raise UsageError(
            f"TLS certificate {cert} expired on {expires:%Y-%m-%d %H:%M} UTC",
            hint="make or get a new certificate",
        )
