"""The agent's side of docs/agent-protocol.md: one method per endpoint, every call outage-tolerant."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any

import httpx

from fleetcast.agent.tlspin import normalize, verify_for
from fleetcast.errors import AgentError, TransportError
from fleetcast.protocol import (
    EnrollReply,
    EnrollRequest,
    HeartbeatReply,
    HeartbeatRequest,
    ProgressReply,
    ProgressReport,
    bounded_result,
    parse,
)
from fleetcast.transport.http import (
    DEFAULT_OUTAGE_LIMIT,
    HttpChunkSource,
    HttpStatusError,
    make_client,
    request,
)

logger = logging.getLogger(__name__)


def _json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise AgentError(f"{what}: the server's answer is not JSON: {response.text[:120]!r}") from exc
    if not isinstance(body, dict):
        raise AgentError(f"{what}: expected a JSON object from the server, found {type(body).__name__}")
    return body


class AgentApi:
    """Talks to ``fleetcast serve``. ``credential`` is set by ``enroll``."""

    def __init__(
        self,
        server: str,
        *,
        outage_limit: float = DEFAULT_OUTAGE_LIMIT,
        stop: Callable[[], bool] | None = None,
        transport: httpx.BaseTransport | None = None,
        tls_fingerprint: str | None = None,
    ) -> None:
        """``tls_fingerprint``: the server certificate's SHA-256, pinned (agent/tlspin.py)."""
        if not server.startswith(("http://", "https://")):
            raise AgentError(
                f"server URL {server!r} does not start with http:// or https://",
                hint="e.g. --server http://10.0.0.1:8080",
            )
        self.server = server.rstrip("/")
        self.tls_fingerprint = normalize(tls_fingerprint) if tls_fingerprint else None
        self._verify = verify_for(self.server, self.tls_fingerprint)
        self.outage_limit = outage_limit
        self.stop = stop
        self._transport = transport
        self.credential: str | None = None
        self.client_id: int | None = None
        self._no_wait = False  # the server refused a heartbeat's "wait" (older than it): not sent again
        self._client = self._make_client()

    @property
    def client(self) -> httpx.Client:
        """The agent's authenticated HTTP client (replaced after an enrollment: read it each time)."""
        return self._client

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What a new client of this agent's must verify the server with (the pinned context under TLS)."""
        return self._verify

    def _make_client(self) -> httpx.Client:
        if self._transport is not None:
            headers = {"Authorization": f"Bearer {self.credential}"} if self.credential else {}
            return httpx.Client(base_url=self.server, transport=self._transport, headers=headers)
        return make_client(self.server, self.credential, verify=self._verify)

    def _call(
        self, method: str, url: str, what: str, *, limit: float | None = None, **kw: Any
    ) -> dict[str, Any]:
        response = request(
            self._client,
            method,
            url,
            outage_limit=self.outage_limit if limit is None else limit,
            stop=self.stop,
            what=what,
            **kw,
        )
        return _json_object(response, what)

    def enroll(self, enroll_token: str, inventory: dict[str, Any], *, credential: str | None = None) -> int:
        """Enroll; ``credential`` (the one this agent had) proves a re-enrollment is the same machine."""
        raw = {"enroll_token": enroll_token, "inventory": inventory, "credential": credential}
        request = parse(EnrollRequest, raw, "enroll")
        reply = parse(
            EnrollReply,
            self._call("POST", "/api/agent/enroll", "enroll", json=request.model_dump()),
            "enroll",
        )
        self.credential, self.client_id = reply.credential, reply.client_id
        client_id = reply.client_id
        self._client.close()
        self._client = self._make_client()
        return client_id

    def heartbeat(
        self,
        inventory: dict[str, Any] | None,
        task_id: int | None,
        *,
        limit: float | None = None,
        wait: float = 0.0,
    ) -> HeartbeatReply:
        """``wait`` > 0: the server may hold the reply that long (a long poll, see ``HeartbeatRequest``);
        the read timeout grows by it. A server that refuses the field (422: older than it) is sent
        heartbeats without it from then on."""
        wait = 0.0 if self._no_wait else wait
        request = parse(
            HeartbeatRequest, {"inventory": inventory, "task_id": task_id, "wait": wait}, "heartbeat"
        )
        extra: dict[str, Any] = {}
        if wait > 0:
            timeout = self._client.timeout
            extra["timeout"] = httpx.Timeout(
                timeout.connect, read=(timeout.read or 0) + wait, write=timeout.write, pool=timeout.pool
            )
        body_json = request.model_dump(exclude={"wait"} if wait == 0 else None)  # no "wait" unless used
        try:
            body = self._call(
                "POST", "/api/agent/heartbeat", "heartbeat", json=body_json, limit=limit, **extra
            )
        except HttpStatusError as exc:
            if exc.status != 422 or wait == 0:
                raise
            logger.info("the server does not take the heartbeat's wait (422); heartbeating without it")
            self._no_wait = True
            return self.heartbeat(inventory, task_id, limit=limit)
        return parse(HeartbeatReply, body, "heartbeat reply")

    def progress(self, task_id: int, report: dict[str, Any], *, limit: float | None = None) -> bool:
        """Post a progress report; True when the server asks the agent to cancel."""
        body = self._call(
            "POST",
            f"/api/agent/tasks/{task_id}/progress",
            "progress",
            json=parse(ProgressReport, report, "progress report").model_dump(),
            limit=limit,
        )
        return parse(ProgressReply, body, "progress reply").cancel

    def result(self, task_id: int, result: dict[str, Any]) -> None:
        body = bounded_result(
            str(result.get("state")), result.get("error"), result.get("disk"), result.get("action"),
            [str(c) for c in result.get("changes") or []],
        )  # fmt: skip
        self._call("POST", f"/api/agent/tasks/{task_id}/result", "result", json=body.model_dump())

    def _get_bytes(self, path: str, what: str) -> bytes:
        """The body of a GET on the server (through outages, up to ``outage_limit``)."""
        response = request(
            self._client, "GET", path, outage_limit=self.outage_limit, stop=self.stop, what=what
        )
        return response.content

    def manifest(self, image: str) -> bytes:
        return self._get_bytes(f"/api/agent/images/{image}/manifest", f"manifest of image {image!r}")

    def index(self, image: str) -> bytes:
        """The binary chunk index of a format-2 image (its manifest records its hash and size)."""
        return self._get_bytes(f"/api/agent/images/{image}/index", f"chunk index of image {image!r}")

    def drivers(self, name: str) -> bytes:
        """The driver folder ``name`` of the current task as a tar (agent/options.py unpacks it)."""
        return self._get_bytes(f"/api/agent/drivers/{name}", f"driver folder {name!r}")

    def chunk_source(
        self, *, workers: int, prefetch: int, stop: Callable[[], bool] | None = None
    ) -> HttpChunkSource:
        if self.credential is None:
            raise TransportError("the agent has not enrolled yet: no credential for chunks")
        client = self._make_client() if self._transport is not None else None
        return HttpChunkSource(
            self.server,
            self.credential,
            workers=workers,
            prefetch=prefetch,
            outage_limit=self.outage_limit,
            client=client,
            stop=stop or self.stop,
            verify=self._verify,
        )

    def close(self) -> None:
        self._client.close()
