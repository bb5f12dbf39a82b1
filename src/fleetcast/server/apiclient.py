"""A small HTTP client of the admin API for the CLI (``fleetcast deploy``, ``fleetcast clients``).

Problem documents from the server come back as the matching FleetcastError, so the CLI's one error
wrapper prints the server's message and hint and picks the exit code.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx

from fleetcast.errors import (
    ClientNotFound,
    FleetcastError,
    ImageNotFound,
    NotFoundError,
    ServerError,
    TransportError,
    UsageError,
)

logger = logging.getLogger(__name__)

_BY_NAME: dict[str, type[FleetcastError]] = {
    "ImageNotFound": ImageNotFound,
    "ClientNotFound": ClientNotFound,
}


def error_from_response(response: httpx.Response) -> FleetcastError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "message" in body:
        message, hint, name = str(body["message"]), body.get("hint"), str(body.get("error", ""))
    else:
        message, hint, name = f"HTTP {response.status_code}: {response.text[:200]}", None, ""
    status = response.status_code
    if status == 401:
        return UsageError(f"the server refused the token: {message}", hint=hint)
    if name in _BY_NAME:
        return _BY_NAME[name](message, hint=hint)
    if status == 404:
        return NotFoundError(message, hint=hint)
    if status in (400, 403, 422):
        return UsageError(message, hint=hint)
    return ServerError(message, hint=hint)


class ApiClient:
    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise UsageError(
                f"server URL {base_url!r} must start with http:// or https://",
                hint="for example --server http://10.0.0.1:8080",
            )
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, json: Any = None, params: Any = None) -> Any:
        try:
            response = self.http.request(method, path, json=json, params=params)
        except httpx.HTTPError as exc:
            raise TransportError(
                f"cannot reach the fleetcast server at {self.base_url}: {exc.__class__.__name__}: {exc}",
                hint="check --server and that `fleetcast serve` runs",
            ) from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        try:
            return response.json()
        except ValueError as exc:
            raise ServerError(
                f"{method} {path}: the server answered with something that is not JSON"
            ) from exc

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def get_patiently(self, path: str, *, patience: float = 60.0) -> Any:
        """GET that rides out a server restart or a short network outage (``--wait`` polling)."""
        deadline = time.monotonic() + patience
        while True:
            try:
                return self.get(path)
            except TransportError:
                if time.monotonic() >= deadline:
                    raise
                logger.warning("server unreachable; retrying")
                time.sleep(2.0)
