"""The server's settings: one frozen dataclass built once at start-up (by ``fleetcast serve`` or a test)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetcast import config
from fleetcast.errors import UsageError
from fleetcast.pidlock import PidLock
from fleetcast.server import multicast_settings
from fleetcast.server.configtables import check_table
from fleetcast.server.multicast_settings import MulticastSettings
from fleetcast.server.pacing import DEFAULT_MAX_HEARTBEATS_PER_SECOND

logger = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_INTERVAL = 2.0
DEFAULT_STALE_AFTER = 15.0
DEFAULT_TASK_TIMEOUT = 300.0

# Keys accepted in the config file's [server] table, with their defaults (seconds).
SERVER_TABLE_KEYS: dict[str, float] = {
    "heartbeat_interval": DEFAULT_HEARTBEAT_INTERVAL,
    "stale_after": DEFAULT_STALE_AFTER,
    "task_timeout": DEFAULT_TASK_TIMEOUT,
    "max_heartbeats_per_second": DEFAULT_MAX_HEARTBEATS_PER_SECOND,  # not seconds: server/pacing.py
}


@dataclass(frozen=True)
class ServerSettings:
    """Everything the server needs; ``database_url`` empty means a SQLite file ``DATA/fleetcast.db``.

    ``stale_after``: a client not heard from for this long is shown offline.
    ``task_timeout``: a writing client not heard from for this long is failed and its place freed.
    """

    data_dir: Path
    store_dir: Path | None = None
    database_url: str = ""
    host: str = "0.0.0.0"
    port: int = 8080
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    stale_after: float = DEFAULT_STALE_AFTER
    task_timeout: float = DEFAULT_TASK_TIMEOUT
    # heartbeats stretch (interval and stale_after alike) when the online clients would send more
    max_heartbeats_per_second: float = DEFAULT_MAX_HEARTBEATS_PER_SECOND
    multicast: MulticastSettings = field(default_factory=MulticastSettings)  # the [multicast] table
    tls_fingerprint: str | None = None  # sha256:<hex> of --tls-cert, what agents pin (fleetcast.tls=)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def store(self) -> Path:
        return self.store_dir if self.store_dir is not None else self.data_dir / "store"

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'fleetcast.db'}"


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (IPv6 as ``[::1]:8080``) -> (host, port), with exact error texts."""
    value = text.strip()
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text:
        raise UsageError(
            f"listen address {text!r} is not ADDR:PORT", hint="for example --listen 127.0.0.1:8080"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise UsageError(f"listen address {text!r}: port must be 1-65535, found {port_text!r}")
    return host, port


def _seconds(table: Mapping[str, Any], key: str, source: str, unit: str = "seconds") -> float:
    value = table.get(key, SERVER_TABLE_KEYS[key])
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise UsageError(f"{source}: server.{key} must be a positive number of {unit}, found {value!r}")
    return float(value)


def build(
    *,
    data: str | None,
    listen: str | None,
    database: str | None,
    config_file: str | None,
    store: str | None = None,
) -> ServerSettings:
    """Settings from flags and the config file (flags override the file, the file overrides defaults)."""
    path = Path(config_file) if config_file else None
    file_values = config.load_config_file(path)
    source = f"config file {path or config.DEFAULT_CONFIG_FILE}"
    data_dir = Path(config.resolve("data", data, file_values))
    host, port = parse_listen(config.resolve("listen", listen, file_values))
    server_table = check_table("server", file_values.get("server", {}), sorted(SERVER_TABLE_KEYS), source)
    return ServerSettings(
        data_dir=data_dir,
        store_dir=config.store_path(store, data, file_values),
        database_url=config.resolve("database", database, file_values),
        host=host,
        port=port,
        heartbeat_interval=_seconds(server_table, "heartbeat_interval", source),
        stale_after=_seconds(server_table, "stale_after", source),
        task_timeout=_seconds(server_table, "task_timeout", source),
        max_heartbeats_per_second=_seconds(
            server_table, "max_heartbeats_per_second", source, "heartbeats a second"
        ),
        multicast=multicast_settings.from_table(file_values.get("multicast", {}), source),
    )


LOCK_FILE = "serve.lock"


def lock_data_dir(data_dir: Path) -> PidLock:
    """``DATA/serve.lock``, held by the one ``fleetcast serve`` of a SQLite data directory: a second
    server on it would write the same database and each live stream would miss the other's events."""
    lock = PidLock(data_dir / LOCK_FILE)
    try:
        other = lock.acquire()
    except OSError as exc:
        raise UsageError(f"cannot open {lock.path}: {exc.strerror}") from exc
    if other is not None:
        raise UsageError(
            f"data directory {data_dir} is already served by another fleetcast serve (PID {other})",
            hint="stop it first; several servers on one database need PostgreSQL (--database)",
        )
    return lock
