"""Errors -> JSON problem documents ``{"error", "message", "hint"}`` with an HTTP status, in one place."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleetcast.errors import FleetcastError, NotFoundError, ServerError, StoreError, UsageError
from fleetcast.server.auth import AuthError, ForbiddenError

logger = logging.getLogger(__name__)


REFUSALS_PER_MINUTE = 10


def status_for(exc: FleetcastError) -> int:
    explicit = getattr(exc, "http_status", None)
    if isinstance(explicit, int):
        return explicit
    if isinstance(exc, StoreError):
        return 503  # a damaged or unreadable store: the server's problem, said in words, not a 500
    if isinstance(exc, AuthError):
        return 401
    if isinstance(exc, ForbiddenError):
        return 403
    if isinstance(exc, UsageError):
        return 400
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ServerError):
        return 409
    return 500


def problem(status: int, error: str, message: str, hint: str | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        {"error": error, "message": message, "hint": hint}, status_code=status, headers=headers
    )


def _peer(request: Request) -> str:
    return request.client.host if request.client else "?"


class _RateLimit:
    """At most ``per_minute`` refusal lines a minute; then one line saying how many were left out
    (anyone can send requests without a token: they must not flood the log)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._lock = threading.Lock()
        self._window = 0.0
        self._count = 0
        self._dropped = 0

    def allow(self) -> tuple[bool, int]:
        """(log this one?, how many were dropped in the window that just ended)."""
        now = time.monotonic()
        with self._lock:
            dropped = 0
            if now - self._window >= 60:
                self._window, dropped, self._count, self._dropped = now, self._dropped, 0, 0
            self._count += 1
            if self._count > self.per_minute:
                self._dropped += 1
                return False, dropped
            return True, dropped


_refusals = _RateLimit(REFUSALS_PER_MINUTE)


def log_refusal(status: int, method: str, path: str, peer: str, exc: FleetcastError) -> None:
    if status in (401, 403, 413):
        ok, dropped = _refusals.allow()
        if dropped:
            logger.warning("%d more refused requests were not logged in the last minute", dropped)
        if not ok:
            return
    level = logging.WARNING if status < 500 else logging.ERROR
    logger.log(level, "%s %s from %s: %s %s", method, path, peer, status, exc)


async def _fleetcast_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FleetcastError)
    status = status_for(exc)
    log_refusal(status, request.method, request.url.path, _peer(request), exc)
    return problem(status, type(exc).__name__, exc.message, exc.hint)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """A database that cannot be written (disk full, server gone): 503 without the SQL text."""
    orig = getattr(exc, "orig", None) or exc
    logger.error("%s %s from %s: database error: %s", request.method, request.url.path, _peer(request), exc)
    return problem(
        503,
        "DatabaseError",
        f"the server's database refused the change: {type(orig).__name__}: {str(orig).splitlines()[0][:200]}",
        "check the server's data disk and database; the server log has the details",
    )


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [f"{_location(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
    message = "invalid request: " + "; ".join(details)
    logger.warning("%s %s from %s: 422 %s", request.method, request.url.path, _peer(request), message)
    return problem(422, "ValidationError", message, "see /api/openapi.json for the expected body")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return problem(exc.status_code, "HTTPError", str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("%s %s from %s failed", request.method, request.url.path, _peer(request))
    return problem(500, "InternalError", f"internal error: {exc.__class__.__name__}: {exc}")


def install(app: FastAPI) -> None:
    app.add_exception_handler(FleetcastError, _fleetcast_error)
    app.add_exception_handler(SQLAlchemyError, _database_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
