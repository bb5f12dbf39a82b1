"""Errors -> JSON problem documents ``{"error", "message", "hint"}`` with an HTTP status, in one place."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleetcast.errors import FleetcastError, NotFoundError, ServerError, UsageError
from fleetcast.server.auth import AuthError, ForbiddenError

logger = logging.getLogger(__name__)


def status_for(exc: FleetcastError) -> int:
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


async def _fleetcast_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FleetcastError)
    status = status_for(exc)
    level = logging.WARNING if status < 500 else logging.ERROR
    logger.log(level, "%s %s from %s: %s %s", request.method, request.url.path, _peer(request), status, exc)
    return problem(status, type(exc).__name__, exc.message, exc.hint)


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
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
