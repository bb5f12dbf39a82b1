"""Console sessions and who is asking: ``principal(request)`` for every admin API request.

- A bearer token (the admin token, for the CLI and scripts) is the actor ``admin`` with the admin role.
- Otherwise the ``fleetcast_session`` cookie (HTTP-only, SameSite=Strict, ``LIFETIME``): a random
  256-bit value whose SHA-256 is kept in ``console_sessions`` with the user, its CSRF token and the
  expiry. A request that changes something (not GET/HEAD/OPTIONS) must carry the session's CSRF
  token in ``X-CSRF-Token`` and must not come from another site (``Origin`` / ``Sec-Fetch-Site``).
  Viewers may not change anything.
- The event stream is a GET: the browser's ``EventSource`` sends the cookie; no token ever goes in a URL.
  A stream opened with a session ends when the session does (sign-out, expiry, user removed):
  ``until_ended`` looks again at least every ``RECHECK_SECONDS`` (the stream's keepalives give it the
  chance), so an open page does not outlive its sign-out.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from fastapi import Request
from sqlalchemy import String, delete
from sqlalchemy.orm import Mapped, mapped_column

from fleetcast.server.auth import AuthError, ForbiddenError, Tokens, hash_credential, same
from fleetcast.server.db import Base, Database, utcnow

COOKIE = "fleetcast_session"
LIFETIME = timedelta(hours=8)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
CSRF_HEADER = "x-csrf-token"
RECHECK_SECONDS = 10.0
ROLE_CAN_CHANGE = ("admin", "operator")


class SessionRow(Base):
    __tablename__ = "console_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user: Mapped[str] = mapped_column(String(64), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    csrf: str = ""  # empty for bearer tokens

    @property
    def can_change(self) -> bool:
        return self.role in ROLE_CAN_CHANGE


class Sessions:
    def __init__(self, db: Database, lifetime: timedelta = LIFETIME) -> None:
        self.db = db
        self.lifetime = lifetime

    def create(self, user: str) -> tuple[str, str]:
        """A new session for ``user``: (cookie value, CSRF token)."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = utcnow()
        with self.db.transaction() as s:
            s.execute(delete(SessionRow).where(SessionRow.expires_at < now))
            s.add(SessionRow(token_hash=hash_credential(token), user=user, csrf=csrf,
                             expires_at=now + self.lifetime))  # fmt: skip
        return token, csrf

    def lookup(self, token: str) -> SessionRow | None:
        with self.db.sessions() as s:
            row = s.get(SessionRow, hash_credential(token))
        if row is None or row.expires_at <= utcnow():
            return None
        return row

    def end(self, token: str) -> None:
        with self.db.transaction() as s:
            s.execute(delete(SessionRow).where(SessionRow.token_hash == hash_credential(token)))


def check_same_site(request: Request) -> None:
    """Refuse a state-changing request sent by another site's page."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise ForbiddenError("cross-site request refused", hint="use the console's own pages")
    origin = request.headers.get("origin")
    if origin and origin != "null":
        if urlsplit(origin).netloc != request.headers.get("host", ""):
            raise ForbiddenError(
                f"cross-site request refused: Origin {origin} is not this server",
                hint="use the console's own pages",
            )
    elif origin == "null":
        raise ForbiddenError("cross-site request refused: Origin null", hint="use the console's own pages")


def session_principal(request: Request) -> Principal | None:
    """The signed-in user of the cookie, or None (no cookie, unknown, ended or expired)."""
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    row = request.app.state.sessions.lookup(token)
    if row is None:
        return None
    role = request.app.state.users.role(row.user)
    if role is None:
        return None
    return Principal(row.user, role, row.csrf)


def principal(request: Request) -> Principal:
    """Who sends this admin API request (bearer token or console session), or AuthError/ForbiddenError."""
    authorization = request.headers.get("authorization")
    if authorization or COOKIE not in request.cookies:
        tokens: Tokens = request.app.state.tokens
        tokens.check_admin(authorization)
        who = Principal("admin", "admin")
    else:
        found = session_principal(request)
        if found is None:
            raise AuthError("the console session has expired or ended", hint="sign in again")
        if request.method not in SAFE_METHODS:
            check_same_site(request)
            if not same(request.headers.get(CSRF_HEADER, ""), found.csrf):
                raise ForbiddenError(
                    "the request has no valid CSRF token", hint="reload the page and try again"
                )
        who = found
    if request.method not in SAFE_METHODS and not who.can_change:
        raise ForbiddenError(
            f"{who.name} is a viewer: viewers cannot change anything",
            hint="ask an admin for the operator role",
        )
    request.state.principal = who
    return who


def actor(request: Request) -> str:
    """The audit log's actor of this request (set by ``principal``)."""
    who: Principal | None = getattr(request.state, "principal", None)
    return who.name if who is not None else "admin"


async def until_ended(
    stream: AsyncIterator[str], request: Request, every: float = RECHECK_SECONDS
) -> AsyncIterator[str]:
    """``stream`` while the request's console session lasts (checked again after ``every`` seconds,
    whenever the stream yields: events or its keepalives). Bearer-token streams are not wrapped."""
    checked = time.monotonic()
    try:
        async for chunk in stream:
            if time.monotonic() - checked >= every:
                checked = time.monotonic()
                if await asyncio.to_thread(session_principal, request) is None:
                    return  # the browser reconnects, gets 401, and console.js goes to sign-in
            yield chunk
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()  # the bus drops its subscriber


def is_session(request: Request) -> bool:
    """The request was authorized by a console session (not by a bearer token)."""
    who: Principal | None = getattr(request.state, "principal", None)
    return who is not None and bool(who.csrf)
