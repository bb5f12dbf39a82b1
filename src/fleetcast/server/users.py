"""Console users: a name, a role (admin | operator | viewer) and an scrypt password hash.

Viewers only look; operators also deploy and cancel; admins also manage users. There is no default
password: the first visit to the console sets the admin's (``needs_setup``).

Failed sign-ins are counted in the database (table ``console_signin_failures``), so a restart of the
server forgets nothing. Two counters per attempt: the name *from this address* (``FREE_FAILURES`` free,
then a wait doubling from ``FIRST_DELAY`` to ``MAX_DELAY``), and the name *from anywhere*
(``FREE_FAILURES_ANY`` free, then the same doubling) -- so a stranger failing on purpose makes a name
wait for their own address first, and guessing from many addresses is still slowed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, String, delete, func, select
from sqlalchemy.orm import Mapped, mapped_column

from fleetcast.errors import UsageError
from fleetcast.server.auth import AuthError
from fleetcast.server.db import Base, Database, isoformat, utcnow

ROLES = ("admin", "operator", "viewer")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
MIN_PASSWORD = 8
# scrypt: 2^15 x 8 x 128 B = 32 MiB and ~0.1 s per check on this machine's cores
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
# after this many failed sign-ins in a row a name waits, doubling from FIRST_DELAY up to MAX_DELAY
FREE_FAILURES = 3
FREE_FAILURES_ANY = 20
FIRST_DELAY = 2.0
MAX_DELAY = 300.0
ANYWHERE = "*"


class UserRow(Base):
    __tablename__ = "console_users"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FailureRow(Base):
    """Failed sign-ins in a row of one name from one address (``address`` = ``*``: from anywhere)."""

    __tablename__ = "console_signin_failures"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime] = mapped_column(default=utcnow)
    last_failure: Mapped[datetime] = mapped_column(default=utcnow)


def delay_after(failures: int, free: int) -> float:
    """Seconds a name waits after ``failures`` failures in a row when ``free`` are free."""
    if failures < free:
        return 0.0
    return min(FIRST_DELAY * 2.0 ** min(failures - free, 16), MAX_DELAY)


class SignInError(AuthError):
    """Wrong name or password, or too many failures (HTTP 401)."""


class SlowDown(SignInError):
    """Too many failed sign-ins for a name: it must wait (HTTP 429)."""


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    dk = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 << 20, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(dk).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, want = stored.split("$")
        if kind != "scrypt":
            return False
        dk = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=64 << 20,
            dklen=32,
        )
    except ValueError:
        return False
    return hmac.compare_digest(dk, base64.b64decode(want))


def check_new(name: str, role: str, password: str) -> None:
    if not NAME_RE.match(name):
        raise UsageError(
            f"user name {name!r} is not valid",
            hint="1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    if role not in ROLES:
        raise UsageError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD:
        raise UsageError(
            f"the password has {len(password)} characters; at least {MIN_PASSWORD} are needed",
            hint="a few words are easier to remember than symbols",
        )


class Users:
    """The users of one database, with the throttle of failed sign-ins (kept in the database)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[int, float]] = {}  # name -> (failures in a row, not before)

    def count(self) -> int:
        with self.db.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(UserRow)) or 0)

    def needs_setup(self) -> bool:
        return self.count() == 0

    def add(self, name: str, role: str, password: str, *, only_if_none: bool = False) -> dict[str, Any]:
        check_new(name, role, password)
        hashed = hash_password(password)
        with self._lock, self.db.transaction() as s:
            if only_if_none and s.scalar(select(func.count()).select_from(UserRow)):
                raise UsageError(
                    "the admin password is already set", hint="sign in, or ask an admin to add you"
                )
            if s.get(UserRow, name) is not None:
                raise UsageError(f"user {name!r} already exists", hint="pick another name")
            row = UserRow(name=name, role=role, password_hash=hashed)
            s.add(row)
        return user_dict(row)

    def list(self) -> list[dict[str, Any]]:
        with self.db.sessions() as s:
            return [user_dict(u) for u in s.scalars(select(UserRow).order_by(UserRow.name))]

    def role(self, name: str) -> str | None:
        with self.db.sessions() as s:
            row = s.get(UserRow, name)
            return row.role if row is not None else None

    def sign_in(self, name: str, password: str, address: str = "") -> str:
        """The user's role, or SignInError (SlowDown while the name must wait, from ``address``
        or from anywhere)."""
        name, address = name[:64], address[:64] or "?"
        keys = ((name, address, FREE_FAILURES), (name, ANYWHERE, FREE_FAILURES_ANY))
        now = utcnow()
        with self.db.sessions() as s:
            rows = [s.get(FailureRow, (n, a)) for n, a, _ in keys]
            wait = max(((r.not_before - now).total_seconds() for r in rows if r is not None), default=0.0)
            if wait > 0:
                raise SlowDown(
                    f"too many failed sign-ins for {name!r}: try again in {int(wait) + 1} s",
                    hint="the wait doubles with every further failure",
                )
            row = s.get(UserRow, name)
            stored = row.password_hash if row is not None else hash_password("")  # same time either way
            role = row.role if row is not None else None
        ok = role is not None and verify_password(password, stored)
        with self._lock, self.db.transaction() as s:
            if ok:
                for n, a, _ in keys:  # other addresses keep their count
                    s.execute(delete(FailureRow).where(FailureRow.name == n, FailureRow.address == a))
            else:
                now = utcnow()
                for n, a, free in keys:
                    failure = s.get(FailureRow, (n, a), with_for_update=True)  # one count per failure
                    if failure is None:
                        failure = FailureRow(name=n, address=a, failures=0)
                        s.add(failure)
                    failure.failures += 1
                    failure.last_failure = now
                    failure.not_before = now + timedelta(seconds=delay_after(failure.failures, free))
        if not ok or role is None:
            raise SignInError("wrong user name or password", hint="names and passwords are case-sensitive")
        return role

    def failures(self, name: str) -> dict[str, int]:
        """Failed sign-ins in a row of ``name`` per address (``*``: from anywhere)."""
        with self.db.sessions() as s:
            return {
                r.address: r.failures for r in s.scalars(select(FailureRow).where(FailureRow.name == name))
            }


def user_dict(row: UserRow) -> dict[str, Any]:
    return {"name": row.name, "role": row.role, "created_at": isoformat(row.created_at)}
