"""``fleetcast serve``: the server (REST API, agent endpoints, event stream) under uvicorn."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

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
    for key in ("interface", "dhcp", "dhcp_range", "server_url", "bootenv", "uefi_boot"):
        config.add_flag(p, key, dest=key)  # network boot (docs/boot-chain.md)
    p.add_argument(
        "--force",
        action="store_true",
        help="start full DHCP even when another DHCP server answers on --interface",
    )
    for key in ("tls_cert", "tls_key"):  # HTTPS (server/tls.py); also config keys tls_cert/tls_key
        config.add_flag(p, key, dest=key)
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


def _exit_on_sigterm() -> None:
    import signal

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)


def _tls_files(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """--tls-cert/--tls-key, else the config file's tls_cert/tls_key (the settings table)."""
    from fleetcast import config

    path = getattr(args, "config", None)
    files = config.load_config_file(Path(path) if path else None)
    cert = config.resolve("tls_cert", getattr(args, "tls_cert", None), files)
    key = config.resolve("tls_key", getattr(args, "tls_key", None), files)
    return (Path(cert) if cert else None), (Path(key) if key else None)


KEEP_ALIVE_SECONDS = 120  # longer than any heartbeat interval the server tells (server/pacing.py)


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
    from fleetcast.server.tls import check_pair

    tls = check_pair(*_tls_files(args))
    from fleetcast.netboot.service import netboot_from_args

    netboot = netboot_from_args(args, settings)  # every refusal before anything starts
    lock = None
    if not settings.database_url or settings.database_url.startswith("sqlite"):
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = lock_data_dir(settings.data_dir)
    if tls is not None:  # for the network boot's kernel command line (fleetcast.tls=)
        settings = dataclasses.replace(settings, tls_fingerprint=tls.fingerprint)
    app = create_app(settings)
    if netboot is not None:
        netboot.attach(app)
    debug = bool(getattr(args, "debug", False))
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(
        f"fleetcast server: {'https' if tls else 'http'}://{host}:{settings.port}/api "
        f"(data {settings.data_dir}, store {settings.store})\n"
        + (f"TLS certificate fingerprint: {tls.fingerprint}\n" if tls else "")
        + f"admin token: fleetcast --data {settings.data_dir} admin token; "
        f"enroll token: fleetcast --data {settings.data_dir} admin enroll-token",
        file=sys.stderr,
        flush=True,
    )
    if netboot is not None:
        _exit_on_sigterm()  # uvicorn re-raises the signal after shutdown: end through finally (dnsmasq)
    try:
        if netboot is not None:
            netboot.start()
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            log_level="debug" if debug else "info",
            access_log=debug,
            timeout_graceful_shutdown=5,
            # an agent keeps its one connection between heartbeats, which the server may stretch
            # past uvicorn's 5 s default (server/pacing.py): each close cost a new connection
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            proxy_headers=False,  # X-Forwarded-For is not trusted: audit addresses are the real peers
            ssl_certfile=str(tls.cert) if tls else None,
            ssl_keyfile=str(tls.key) if tls else None,
        )
    finally:
        if netboot is not None:
            netboot.stop()
    if lock is not None:
        lock.release()
    return 0
