"""``fleetcast serve``: the server (REST API, agent endpoints, event stream) under uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "serve",
        parents=[parent],
        help="run the fleetcast server",
        description=(
            "Run the server: REST API (/api, OpenAPI at /api/openapi.json), agent endpoints, image chunks, "
            "event stream. Settings: flags > environment > config file (/etc/fleetcast/fleetcast.toml or "
            "--config) > defaults (docs/configuration.md)."
        ),
    )
    from fleetcast import config

    for key in ("listen", "database", "store"):
        config.add_flag(p, key)
    p.set_defaults(func=_serve)


def check_bind(host: str, port: int) -> None:
    """Fail early, with a plain message, when the address is taken or not ours."""
    import socket

    from fleetcast.errors import UsageError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {host}:{port}: {exc.strerror}",
                hint="pick another --listen address or stop what uses it",
            ) from exc


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from fleetcast.server.app import create_app
    from fleetcast.server.settings import build, lock_data_dir

    settings = build(
        data=getattr(args, "data", None),
        listen=args.listen,
        database=args.database,
        config_file=getattr(args, "config", None),
        store=args.store,
    )
    check_bind(settings.host, settings.port)
    lock = None
    if not settings.database_url or settings.database_url.startswith("sqlite"):
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = lock_data_dir(settings.data_dir)
    app = create_app(settings)
    debug = bool(getattr(args, "debug", False))
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(
        f"fleetcast server: http://{host}:{settings.port}/api "
        f"(data {settings.data_dir}, store {settings.store})\n"
        f"admin token: fleetcast --data {settings.data_dir} admin token; "
        f"enroll token: fleetcast --data {settings.data_dir} admin enroll-token",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level="debug" if debug else "info",
        access_log=debug,
        timeout_graceful_shutdown=5,
        proxy_headers=False,  # X-Forwarded-For is not trusted: audit addresses are the real peers
    )
    if lock is not None:
        lock.release()
    return 0
