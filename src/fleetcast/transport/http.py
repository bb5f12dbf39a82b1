"""Packs over HTTP: ``HttpChunkSource`` implements ``store.source.PackSource`` (``packs(missing)``, and
the older in-order ``fetch_many``) against the server's agent API (``GET /api/agent/chunks/{id}``, where
"chunk" is the old word for a pack; docs/agent-protocol.md).

Two properties matter for a deployment to many machines:

- **prefetch**: ``fetch_many`` keeps up to ``prefetch`` requests in flight on a small thread pool, so
  the link stays busy while the restore decompresses, verifies and writes; chunks are still yielded
  in the order asked.
- **patience**: a server that is unreachable, restarting, or answering 5xx/429 is retried with
  exponential backoff (0.25 s doubling to 5 s) for up to ``outage_limit`` seconds (default 600) of
  continuous failure. A 30-second outage therefore only pauses the restore, which then continues
  from the chunk it was waiting for. 401/403/404 are not retried: they will not heal by waiting.

``request()`` is the same retry loop for the agent's JSON calls.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx

from fleetcast.errors import TransportError

logger = logging.getLogger(__name__)

DEFAULT_OUTAGE_LIMIT = 600.0
DEFAULT_WORKERS = 4
DEFAULT_PREFETCH = 16
_BACKOFF_FIRST = 0.25
_BACKOFF_MAX = 5.0
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class HttpStatusError(TransportError):
    """The server answered with a status that waiting will not fix."""

    def __init__(self, message: str, *, status: int, body: Any = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.body = body


def make_client(
    base_url: str,
    credential: str | None = None,
    *,
    connect_timeout: float = 5.0,
    read_timeout: float = 15.0,
    workers: int = DEFAULT_WORKERS,
    verify: ssl.SSLContext | bool = True,
) -> httpx.Client:
    """``verify``: the system's authorities (True) or a context, e.g. the agent's pinned one
    (agent/tlspin.py)."""
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    return httpx.Client(
        base_url=base_url.rstrip("/"),
        headers=headers,
        verify=verify,
        timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
        limits=httpx.Limits(max_connections=workers + 4, max_keepalive_connections=workers + 4),
        trust_env=False,
    )


def _problem(response: httpx.Response) -> tuple[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200], None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"]), body
    return response.text[:200], body


def request(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    outage_limit: float = DEFAULT_OUTAGE_LIMIT,
    stop: Callable[[], bool] | None = None,
    what: str | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """One HTTP request, retried through outages of up to ``outage_limit`` seconds.

    Returns the 2xx response; raises HttpStatusError for a status that retrying will not fix, and
    TransportError when the server stays unreachable longer than the limit (or ``stop()`` turns true).
    """
    what = what or f"{method} {url}"
    first_failure: float | None = None
    delay = _BACKOFF_FIRST
    attempt = 0
    while True:
        attempt += 1
        problem: str
        try:
            response = client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        else:
            if response.is_success:
                if first_failure is not None:
                    logger.info(
                        "%s: server reachable again after %.1f s", what, time.monotonic() - first_failure
                    )
                return response
            message, body = _problem(response)
            if response.status_code not in _RETRY_STATUSES:
                hint = None
                if response.status_code in (401, 403):
                    hint = "the credential or token was refused; enroll again or check the token"
                raise HttpStatusError(
                    f"{what}: server answered {response.status_code}: {message}",
                    status=response.status_code,
                    body=body,
                    hint=hint,
                )
            problem = f"status {response.status_code}: {message}"
        now = time.monotonic()
        if first_failure is None:
            first_failure = now
            logger.warning("%s failed (%s); retrying for up to %.0f s", what, problem, outage_limit)
        else:
            logger.debug("%s failed again (attempt %d): %s", what, attempt, problem)
        if now - first_failure >= outage_limit:
            raise TransportError(
                f"{what}: server unreachable for {now - first_failure:.0f} s "
                f"(limit {outage_limit:.0f} s): {problem}",
                hint="check the server and the network; raise the limit with --outage-limit",
            )
        if stop is not None and stop():
            raise TransportError(f"{what}: stopped while the server was unreachable ({problem})")
        time.sleep(min(delay, max(outage_limit - (now - first_failure), 0.0)))
        delay = min(delay * 2, _BACKOFF_MAX)


class HttpChunkSource:
    """``ChunkSource`` over the agent API; thread-safe; close() it (or use ``with``)."""

    def __init__(
        self,
        base_url: str,
        credential: str,
        *,
        workers: int = DEFAULT_WORKERS,
        prefetch: int = DEFAULT_PREFETCH,
        outage_limit: float = DEFAULT_OUTAGE_LIMIT,
        client: httpx.Client | None = None,
        stop: Callable[[], bool] | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        if workers < 1 or prefetch < 1:
            raise TransportError(
                f"HTTP chunk source needs workers >= 1 and prefetch >= 1, got {workers}/{prefetch}"
            )
        self.base_url = base_url.rstrip("/")
        self.workers = workers
        self.prefetch = max(prefetch, workers)
        self.outage_limit = outage_limit
        self._own_client = client is None
        self._client = client or make_client(self.base_url, credential, workers=workers, verify=verify)
        self._stop = stop
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._early: deque[tuple[str, Future[bytes]]] = deque()
        self.bytes_fetched = 0
        self.chunks_fetched = 0

    def fetch(self, chunk_id: str) -> bytes:
        response = request(
            self._client,
            "GET",
            f"/api/agent/chunks/{chunk_id}",
            outage_limit=self.outage_limit,
            stop=self._stop,
            what=f"chunk {chunk_id[:16]}",
        )
        data = response.content
        with self._lock:
            self.bytes_fetched += len(data)
            self.chunks_fetched += 1
        return data

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="chunk-fetch")
        return self._pool

    def warm(self, chunk_ids: Iterable[str]) -> None:
        """Start fetching the first ``prefetch`` distinct ids of these now (e.g. while the restore writes
        the partition table); a later ``fetch_many`` that starts with the same ids uses them, anything
        else is dropped."""
        pool = self._executor()
        seen = {cid for cid, _ in self._early}
        for chunk_id in chunk_ids:
            if len(self._early) >= self.prefetch:
                break
            if chunk_id not in seen:
                seen.add(chunk_id)
                self._early.append((chunk_id, pool.submit(self.fetch, chunk_id)))

    def _drop_early(self) -> None:
        while self._early:
            self._early.popleft()[1].cancel()

    def packs(self, wanted: Collection[str]) -> Iterator[tuple[str, bytes]]:
        """``store.source.PackSource``: the missing packs the restore asks for, fetched in the order
        given (the image's first-use order, so ``warm`` pays off) with ``prefetch`` in flight."""
        return self.fetch_many(list(wanted))

    def fetch_many(self, chunk_ids: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        pool = self._executor()
        window: deque[tuple[str, Future[bytes]]] = deque()
        try:
            for chunk_id in chunk_ids:
                if self._early and self._early[0][0] == chunk_id:
                    future = self._early.popleft()[1]
                else:
                    self._drop_early()
                    future = pool.submit(self.fetch, chunk_id)
                window.append((chunk_id, future))
                if len(window) >= self.prefetch:
                    head_id, head = window.popleft()
                    yield head_id, head.result()
            while window:
                head_id, head = window.popleft()
                yield head_id, head.result()
        finally:
            for _, future in window:
                future.cancel()

    def close(self) -> None:
        """Cancel what is still queued, wait for requests in flight, close the connections."""
        self._drop_early()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._own_client:
            self._client.close()

    def __enter__(self) -> HttpChunkSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
