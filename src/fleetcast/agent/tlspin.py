"""Certificate pinning: the agent trusts the one server certificate whose SHA-256 it was given.

A lab server's certificate is usually self-signed, so the system's authorities cannot vouch for it.
``fleetcast serve --tls-cert`` prints the certificate's fingerprint (``sha256:<64 hex>``); it reaches
the agent on the kernel command line (``fleetcast.tls=``, written by the server into the network
boot script; read whenever the server URL there is the one the agent uses) or as ``fleetcast agent
--tls-fingerprint``; the agent keeps it for that URL in its state directory (agent/state.py
``save_pin``/``load_pin``), so a restart without it still checks the pin. ``pinned_context`` makes
an ``ssl.SSLContext`` whose sockets compare the SHA-256 of the server's leaf certificate (its DER
bytes, what ``server/tls.fingerprint`` hashes) with the pin right after the handshake, before a byte
of the request -- the credential in its header included -- is sent. Chain and host name are not checked:
the pin is the whole trust, as with SSH host keys.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import ssl

from fleetcast.errors import AgentError

PREFIX = "sha256:"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def normalize(fingerprint: str) -> str:
    """``sha256:<64 lower-case hex>`` from the forms people paste (prefix optional, ``:`` separators,
    any case); AgentError otherwise."""
    text = fingerprint.strip()
    body = text[len(PREFIX) :] if text.lower().startswith(PREFIX) else text
    body = body.replace(":", "").lower()
    if _HEX64.fullmatch(body) is None:
        raise AgentError(
            f"TLS fingerprint {fingerprint[:80]!r} is not a SHA-256 fingerprint (64 hex digits)",
            hint="copy it from the server's start line or `fleetcast admin tls-fingerprint --tls-cert FILE`",
        )
    return PREFIX + body


class _PinnedSocket(ssl.SSLSocket):
    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        pin: str = getattr(self.context, "fleetcast_pin", "")
        der = self.getpeercert(binary_form=True)
        found = PREFIX + hashlib.sha256(der or b"").hexdigest()
        if not hmac.compare_digest(found, pin):
            self.close()
            raise ssl.SSLCertVerificationError(
                f"the server's certificate {found} is not the pinned {pin} (fleetcast.tls=): "
                "another machine answers at the server's address, or the server has a new certificate"
            )


class _PinnedContext(ssl.SSLContext):
    sslsocket_class = _PinnedSocket
    fleetcast_pin: str


def pinned_context(fingerprint: str) -> ssl.SSLContext:
    """A client context that accepts exactly the certificate with SHA-256 ``fingerprint``."""
    context = _PinnedContext(ssl.PROTOCOL_TLS_CLIENT)
    context.fleetcast_pin = normalize(fingerprint)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the pin replaces chain and name checks
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def verify_for(server: str, fingerprint: str | None) -> ssl.SSLContext | bool:
    """What the agent's HTTP clients verify with: the pin for ``https://`` with a fingerprint, the
    system's authorities for ``https://`` without one; a pin for ``http://`` is refused (there is
    no certificate to pin: the pin would protect nothing)."""
    if fingerprint is None:
        return True
    if not server.startswith("https://"):
        raise AgentError(
            f"a TLS fingerprint is set but the server URL {server!r} is not https://",
            hint="use fleetcast.server=https://... with fleetcast.tls=",
        )
    return pinned_context(fingerprint)
