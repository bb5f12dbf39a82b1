"""Tokens and credentials.

- The admin token and the enrollment token are random strings kept in ``DATA/secrets/`` (directory
  0700, files 0600), created on first use by whoever needs them first (``fleetcast admin token``,
  ``fleetcast admin enroll-token`` or the server at start).
- An agent exchanges the enrollment token for its own credential; the database keeps only the
  credential's SHA-256 (credentials are 256-bit random, so a plain hash is enough).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from fleetcast.errors import AuthError, ForbiddenError, UsageError

__all__ = ["AuthError", "ForbiddenError", "Tokens", "bearer", "hash_credential", "new_secret", "same"]

logger = logging.getLogger(__name__)

ADMIN_TOKEN_FILE = "admin-token"
ENROLL_TOKEN_FILE = "enroll-token"
TOKEN_BYTES = 32


TOKEN_PREFIX = "fc_"


def new_secret() -> str:
    """A 256-bit random token. The prefix keeps it from starting with "-" (``--token T`` must parse)
    and makes a leaked fleetcast token recognisable."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def hash_credential(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def rotate(secrets_dir: Path, filename: str) -> str:
    """Replace the token in ``secrets_dir/filename`` with a new one (0600, atomically) and return it.
    A running server notices the new file on the next request that needs it (no restart)."""
    read_or_create(secrets_dir, filename)
    path = secrets_dir / filename
    token = new_secret()
    tmp = path.with_name(f".{filename}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {exc.strerror}") from exc
    logger.info("rotated %s", path)
    return token


def read_or_create(secrets_dir: Path, filename: str) -> str:
    """The token in ``secrets_dir/filename``, creating it (mode 0600, atomically) if it is missing."""
    path = secrets_dir / filename
    try:
        secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(secrets_dir, 0o700)
    except OSError as exc:
        raise UsageError(
            f"cannot create the secrets directory {secrets_dir}: {exc.strerror}",
            hint="run as root or pick a writable --data directory",
        ) from exc
    for _ in range(2):
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
        else:
            if not text:
                raise UsageError(f"token file {path} is empty", hint="delete it to have a new token made")
            return text
        token = new_secret()
        tmp = path.with_name(f".{filename}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(token + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, path)  # fails if another process created it first: then read theirs
            logger.info("created %s", path)
        except FileExistsError:
            pass
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror}") from exc
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text().strip()


class Tokens:
    """The two shared tokens of one data directory, loaded (or made) once."""

    def __init__(self, secrets_dir: Path) -> None:
        self.secrets_dir = secrets_dir
        self.admin = read_or_create(secrets_dir, ADMIN_TOKEN_FILE)
        self._enroll = read_or_create(secrets_dir, ENROLL_TOKEN_FILE)
        self._enroll_stamp = self._stamp(ENROLL_TOKEN_FILE)

    def _stamp(self, filename: str) -> tuple[int, int]:
        try:
            st = (self.secrets_dir / filename).stat()
        except OSError:
            return (0, 0)
        return (st.st_ino, st.st_mtime_ns)

    @property
    def enroll(self) -> str:
        """The enrollment token, re-read when ``fleetcast admin rotate-enroll-token`` replaced it."""
        stamp = self._stamp(ENROLL_TOKEN_FILE)
        if stamp != self._enroll_stamp:
            try:
                text = (self.secrets_dir / ENROLL_TOKEN_FILE).read_text().strip()
            except OSError as exc:
                logger.warning("cannot re-read the enrollment token: %s; keeping the old one", exc.strerror)
                return self._enroll
            if text:
                self._enroll, self._enroll_stamp = text, stamp
                logger.info("the enrollment token was rotated")
        return self._enroll

    def check_admin(self, authorization: str | None) -> None:
        token = bearer(authorization)
        if not same(token, self.admin):
            raise AuthError(
                "the bearer token is not the admin token",
                hint="use the token printed by `fleetcast --data DIR admin token`",
            )

    def check_enroll(self, token: str) -> None:
        if not same(token, self.enroll):
            raise ForbiddenError(
                "the enrollment token is wrong",
                hint="use the token printed by `fleetcast --data DIR admin enroll-token`",
            )


def bearer(authorization: str | None) -> str:
    """The token from an ``Authorization: Bearer T`` header, or AuthError."""
    if not authorization:
        raise AuthError(
            "this endpoint needs an Authorization: Bearer token", hint="pass --token or the agent credential"
        )
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(f"expected 'Authorization: Bearer <token>', found a {scheme!r} header")
    return token.strip()
