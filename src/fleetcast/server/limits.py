"""Request bodies are bounded before they are read, and authenticated before they are parsed.

An ASGI middleware in front of the whole application (issue 12 item 1):

- a ``Content-Length`` beyond the route's limit is answered 413 without reading a byte; a body
  without one (chunked) is counted as it arrives and cut off at the limit with the same 413;
- a request with a body to the API (everything under ``/api/`` but enrollment) is authenticated
  from its headers first -- an agent credential under ``/api/agent/``, the admin token or a console
  session elsewhere -- so nobody without a credential makes the server read or parse a body.

Limits: ``AGENT_LIMIT`` for enrollment, heartbeats and progress (an inventory of 256 disks is
about 80 KiB), ``RESULT_LIMIT`` for a task result (1,000 change lines of up to 1,000 characters),
``BODY_LIMIT`` for everything else.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetcast.errors import BodyTooLarge, FleetcastError, UsageError
from fleetcast.server import problems
from fleetcast.server.auth import bearer

logger = logging.getLogger(__name__)

BODY_LIMIT = 1 << 20
AGENT_LIMIT = 256 << 10
RESULT_LIMIT = 2 << 20
UNAUTHENTICATED = ("/api/agent/enroll", "/api/lab/report")  # the lab report: a first-boot script (boot.py)
LAB_REPORT_LIMIT = 4096
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")


CAPTURE_LIMIT = 4 << 30  # capture uploads (packs, the chunk index): their routes check sizes themselves


def limit_for(path: str) -> int:
    if path == "/api/lab/report":
        return LAB_REPORT_LIMIT
    if path.startswith("/api/agent/captures/"):
        return CAPTURE_LIMIT
    if path.startswith("/api/agent/tasks/") and path.endswith("/result"):
        return RESULT_LIMIT
    if path.startswith("/api/agent/"):
        return AGENT_LIMIT
    return BODY_LIMIT


def _too_large(path: str, limit: int, found: str) -> BodyTooLarge:
    return BodyTooLarge(
        f"request body for {path} is {found}; at most {limit} bytes are accepted",
        hint="send a smaller body",
    )


def authenticate(request: Request) -> None:
    """The credential a request to ``request.url.path`` needs, from its headers only."""
    path = request.url.path
    if path.startswith("/api/agent/"):
        request.app.state.orchestrator.authenticate(bearer(request.headers.get("authorization")))
        return
    from fleetcast.server.sessions import principal

    principal(request)


def known_agent(request: Request) -> bool:
    """An agent credential the presence cache knows (checked without a thread or a query)."""
    if not request.url.path.startswith("/api/agent/"):
        return False
    try:
        credential = bearer(request.headers.get("authorization"))
    except FleetcastError:
        return False
    return request.app.state.orchestrator.cached_client(credential) is not None


class BodyLimit:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = limit_for(path)
        try:
            length = self._length(scope, path, limit)
            if scope["method"] in BODY_METHODS and path.startswith("/api/") and path not in UNAUTHENTICATED:
                request = Request(scope)
                if not known_agent(request):
                    await asyncio.to_thread(authenticate, request)
        except FleetcastError as exc:
            await self._refuse(scope, receive, send, exc)
            return
        if length is not None:
            await self.app(scope, receive, send)
            return
        await self._counted(scope, receive, send, path, limit)

    @staticmethod
    def _length(scope: Scope, path: str, limit: int) -> int | None:
        for name, value in scope["headers"]:
            if name == b"content-length":
                text = value.decode("latin-1")
                if not text.isdigit() or len(text) > 19:
                    raise UsageError(f"Content-Length {text[:40]!r} is not a number of bytes")
                if int(text) > limit:
                    raise _too_large(path, limit, f"{int(text)} bytes")
                return int(text)
        return None

    async def _counted(self, scope: Scope, receive: Receive, send: Send, path: str, limit: int) -> None:
        """Count a body without Content-Length; past the limit, the app's answer (FastAPI turns the
        error into "error parsing the body") is replaced by the 413."""
        seen = 0
        refused: BodyTooLarge | None = None
        replaced = False

        async def counting_receive() -> Message:
            nonlocal seen, refused
            if refused is not None:
                raise refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    refused = _too_large(path, limit, "over the limit (sent without Content-Length)")
                    raise refused
            return message

        async def replacing_send(message: Message) -> None:
            nonlocal replaced
            if refused is None:
                await send(message)
            elif not replaced:
                replaced = True
                await self._refuse(scope, receive, send, refused)

        try:
            await self.app(scope, counting_receive, replacing_send)
        except BodyTooLarge as exc:
            if not replaced:
                await self._refuse(scope, receive, send, exc)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, exc: FleetcastError) -> None:
        status = problems.status_for(exc)
        client: Any = scope.get("client")
        problems.log_refusal(status, scope["method"], scope["path"], client[0] if client else "?", exc)
        response = problems.problem(status, type(exc).__name__, exc.message, exc.hint)
        await response(scope, receive, send)
