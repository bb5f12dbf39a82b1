"""The idle heartbeat, answered before the web framework (issue 12, Scale).

With the database out of the way (server/presence.py), an idle heartbeat still cost about 400 µs
of CPU inside FastAPI -- route matching over every route, dependency solving, request and
response models -- while the work itself (a dictionary lookup and a note in memory) takes a few
microseconds. At 2,000 agents that is most of a core. This ASGI middleware answers exactly that
request itself and hands everything else, unchanged, to the application:

``POST /api/agent/heartbeat`` with a ``Content-Length`` of at most ``MAX_BODY`` bytes and a bearer
credential the presence cache knows (authentication before the body is read, as in limits.py),
whose body ``HeartbeatRequest`` accepts (the same strict model the route uses) and that
``Orchestrator.fast_heartbeat`` can answer (no task id, no inventory, an idle online client).

A heartbeat with ``wait`` (a long poll, protocol.HeartbeatRequest) is held up to ``min(wait,
interval)`` seconds before that answer, and sent down the full path -- where the task is handed out
-- the moment a commit touches one of the client's targets (server/presence.py ``wait_for_work``):
an idle agent starts a new task at once instead of at its next heartbeat. One coroutine and one
timer per held request, no thread; requests stay one per agent per interval.

Anything else -- another path, an unknown credential, a body the model refuses, a busy client --
goes to the application with the body it already read replayed, so the route answers it exactly as
before (problem documents, 401, 422, the full heartbeat).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetcast.errors import FleetcastError
from fleetcast.protocol import HeartbeatRequest
from fleetcast.server.auth import bearer

logger = logging.getLogger(__name__)

PATH = "/api/agent/heartbeat"
MAX_BODY = 1024  # {"task_id": null} and friends; an inventory is larger and takes the full path


class FastLane:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.answered = 0  # for tests and the benchmark's curiosity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        orch = scope["app"].state.orchestrator if "app" in scope else None
        client_id = self._known(scope, orch)
        if client_id is None:
            await self.app(scope, receive, send)
            return
        messages, body = await _read(receive)
        reply, wait = (None, 0.0) if body is None else self._answer(orch, client_id, body, scope)
        if reply is not None and wait > 0 and orch is not None:
            hold = min(wait, float(reply["interval"]))
            if await orch.presence.wait_for_work(client_id, hold):
                reply = None  # a task may be there: the route hands it out
        if reply is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        self.answered += 1
        encoded = _encoded(reply)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(encoded)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": encoded})

    @staticmethod
    def _known(scope: Scope, orch: Any) -> int | None:
        """The client id of a known credential, when the body is small enough to read here."""
        if orch is None:
            return None
        length = authorization = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"authorization":
                authorization = value
        if length is None or authorization is None or not length.isdigit() or int(length) > MAX_BODY:
            return None
        try:
            credential = bearer(authorization.decode("latin-1"))
        except FleetcastError:
            return None
        client_id: int | None = orch.cached_client(credential)
        return client_id

    @staticmethod
    def _answer(orch: Any, client_id: int, body: bytes, scope: Scope) -> tuple[dict[str, Any] | None, float]:
        """The idle reply (None: the full path) and how long the agent lets it be held."""
        try:
            request = HeartbeatRequest.model_validate_json(body)
        except ValidationError:
            return None, 0.0  # the route answers 422 with the details
        client = scope.get("client")
        reply: dict[str, Any] | None = orch.fast_heartbeat(
            client_id,
            task_id=request.task_id,
            inventory=request.inventory is not None,
            address=client[0] if client else "",
        )
        return reply, request.wait


_ENCODED: dict[tuple[Any, ...], bytes] = {}


def _encoded(reply: dict[str, Any]) -> bytes:
    """The JSON of an idle reply: one of very few distinct dicts (the interval changes only with
    the room, server/pacing.py), so each is encoded once (json.dumps was 10 % of the server's CPU
    at 5,000 agents)."""
    key = tuple(reply.items())
    body = _ENCODED.get(key)
    if body is None:
        body = json.dumps(reply, separators=(",", ":")).encode()
        if len(_ENCODED) > 256:
            _ENCODED.clear()
        _ENCODED[key] = body
    return body


async def _read(receive: Receive) -> tuple[list[Message], bytes | None]:
    """The messages received and the whole body, or None for the body when it did not end within
    MAX_BODY bytes (a client that announced less than it sends) or the client went away."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        size += len(message.get("body", b""))
        if size > MAX_BODY:
            return messages, None
        if not message.get("more_body", False):
            return messages, b"".join(m.get("body", b"") for m in messages)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that first hands out what was already read, in order."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
