"""``fleetcast serve``'s network boot: flags -> a checked :class:`NetbootService` plus the boot routes'
configuration, attached to the app before uvicorn starts and stopped after it ends.

Every refusal happens in :func:`netboot_from_args`, before the server opens its database or starts
anything: ``--dhcp``/``--range`` without ``--interface``, an unknown mode, an interface that does not
exist or has no IPv4 address, a bad range, a server that listens where the interface's clients cannot
reach it, and full DHCP where another DHCP server answers (unless ``--force``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from fleetcast import config
from fleetcast.errors import UsageError
from fleetcast.netboot.dnsmasq import DhcpMode, NetbootConfig, interface_info, parse_range, sync_mac_configs
from fleetcast.netboot.scripts import INITRD, KERNEL, kernel_cmdline
from fleetcast.netboot.supervisor import NetbootService, is_dnsmasq_for, pid_alive, read_pidfile
from fleetcast.server.settings import ServerSettings

logger = logging.getLogger(__name__)

UEFI_BOOT_CHOICES = ("ipxe", "shim")
GRUB_SYNC_SECONDS = 2.0


@dataclass
class ServeNetboot:
    """What serve runs beside the app: dnsmasq (None without ``--interface``) and the boot routes'
    settings."""

    service: NetbootService | None
    server_url: str | None
    bootenv_dir: Path | None
    app: FastAPI | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _sync: threading.Thread | None = None

    def attach(self, app: FastAPI) -> None:
        from fleetcast.server import boot

        self.app = app
        svc = self.service
        if svc is not None:
            with app.state.db.sessions() as s:
                macs = boot.secureboot_macs(s)
            svc.cfg = replace(svc.cfg, secureboot_macs=macs)
            if self.server_url is not None:
                tls = boot.tls_fingerprint(app)
                svc.fallback_cmdline = kernel_cmdline(
                    self.server_url, app.state.tokens.enroll, None, tls_fingerprint=tls
                )
        boot.configure(
            app,
            boot.BootConfig(
                server_url=self.server_url,
                bootenv_dir=self.bootenv_dir,
                on_registrations=(lambda m: svc.reconfigure(secureboot_macs=m)) if svc is not None else None,
            ),
        )

    def start(self) -> None:
        if self.service is not None:
            root = self.service.cfg.tftp_root
            if root.parent == TFTP_BASE:
                sweep_tftp_dirs(TFTP_BASE, keep=root)
            self.service.start()
            if root.parent == TFTP_BASE:
                info = {"pid": os.getpid(), "state_dir": str(self.service.cfg.state_dir)}
                owner_file(root).write_text(json.dumps(info) + "\n")
            self._stop.clear()
            self.sync_grub_configs()
            self._sync = threading.Thread(target=self._sync_loop, name="grub-configs", daemon=True)
            self._sync.start()

    def sync_grub_configs(self) -> int:
        """The per-MAC GRUB configs in the TFTP root, as the clients' states say now."""
        from fleetcast.server import boot

        if self.service is None or self.app is None or self.server_url is None:
            return 0
        app = self.app
        tls = boot.tls_fingerprint(app)
        configs = boot.grub_mac_configs(
            app.state.db, self.server_url, app.state.tokens.enroll, tls_fingerprint=tls
        )
        return sync_mac_configs(self.service.cfg.tftp_root, configs)

    def _sync_loop(self) -> None:
        while not self._stop.wait(GRUB_SYNC_SECONDS):
            try:
                changed = self.sync_grub_configs()
                if changed:
                    logger.debug("network boot: %d per-MAC GRUB config(s) changed", changed)
            except Exception:  # keep going: the next round may work (database busy, disk full)
                logger.exception("network boot: writing the per-MAC GRUB configs failed")

    def stop(self) -> None:
        self._stop.set()
        if self._sync is not None:
            self._sync.join(timeout=5)
        if self.service is not None:
            self.service.stop()
            root = self.service.cfg.tftp_root
            if root.parent == TFTP_BASE:  # ours, made at start (the copies of the boot files)
                shutil.rmtree(root, ignore_errors=True)
                with contextlib.suppress(OSError):
                    owner_file(root).unlink()


TFTP_BASE = Path("/run/fleetcast")


def tftp_dir_for(data_dir: Path) -> Path:
    """The TFTP root of the server of ``data_dir``: under /run (world-readable: dnsmasq drops root),
    one per data directory so two servers in two namespaces do not share one."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return TFTP_BASE / f"tftp-{digest}"


def owner_file(root: Path) -> Path:
    """``/run/fleetcast/tftp-X.owner`` beside the TFTP root (not in it: TFTP would serve it): the PID of
    the server that made it and its netboot state folder."""
    return root.with_name(root.name + ".owner")


def sweep_tftp_dirs(base: Path = TFTP_BASE, *, keep: Path | None = None) -> list[Path]:
    """Remove the ``tftp-*`` folders under ``base`` left by a server that was killed: its owner file
    names a PID that is no longer running and that server's dnsmasq (its state folder's pidfile) is not
    running either. Folders without an owner file (an older fleetcast's, or not ours) stay."""
    try:
        roots = sorted(p for p in base.glob("tftp-*") if p.is_dir() and not p.is_symlink())
    except OSError:
        return []
    removed = []
    for root in roots:
        if root == keep:
            continue
        try:
            info = json.loads(owner_file(root).read_text())
        except (OSError, ValueError):
            continue
        pid, state = (info.get("pid"), info.get("state_dir")) if isinstance(info, dict) else (None, None)
        if not isinstance(pid, int) or pid_alive(pid):
            continue
        left = read_pidfile(Path(state)) if isinstance(state, str) else None
        if left is not None:
            dpid, conf = left["pid"], left.get("conf")
            if isinstance(dpid, int) and isinstance(conf, str) and is_dnsmasq_for(dpid, Path(conf)):
                continue  # its dnsmasq still serves from it; the next start with that data ends it
        shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(OSError):
            owner_file(root).unlink()
        removed.append(root)
    if removed:
        logger.info("network boot: removed TFTP folders of servers no longer running: %s", removed)
    return removed


def check_bootenv(path: Path) -> Path:
    missing = [n for n in (KERNEL, INITRD) if not (path / n).is_file()]
    if missing:
        raise UsageError(
            f"boot environment {path} has no {' or '.join(missing)}",
            hint="give a folder made by fleetcast bootenv build (/var/cache/fleetcast/bootenv/KEY)",
        )
    return path.resolve()


def netboot_from_args(args: argparse.Namespace, settings: ServerSettings) -> ServeNetboot | None:
    """The network boot that serve's flags (and the config file) ask for; None when they ask nothing."""
    files: dict[str, Any] = config.file_values_from_args(args)

    def value(key: str) -> str:
        return config.resolve(key, getattr(args, key, None), files).strip()

    interface, dhcp, rng_text = value("interface"), value("dhcp"), value("dhcp_range")
    url, bootenv, uefi_boot = value("server_url"), value("bootenv"), value("uefi_boot") or "ipxe"
    force = bool(getattr(args, "force", False))
    if uefi_boot not in UEFI_BOOT_CHOICES:
        raise UsageError(f"--uefi-boot {uefi_boot!r} is not one of {', '.join(UEFI_BOOT_CHOICES)}")
    bootenv_dir = check_bootenv(Path(bootenv)) if bootenv else None
    if url and not url.startswith(("http://", "https://")):
        raise UsageError(f"--server-url {url!r} is not an http:// or https:// URL")
    if not interface:
        if dhcp or rng_text or force:
            raise UsageError(
                "--dhcp, --range and --force need --interface IF (where clients network-boot)",
                hint="for example --interface br0 --dhcp full --range 10.0.0.100-10.0.0.200",
            )
        if not (url or bootenv_dir):
            return None
        return ServeNetboot(None, url.rstrip("/") or None, bootenv_dir)
    try:
        mode = DhcpMode(dhcp or ("full" if rng_text else "proxy"))
    except ValueError as exc:
        raise UsageError(f"--dhcp {dhcp!r} is not one of full, proxy, off") from exc
    rng = parse_range(rng_text) if rng_text else None
    iface = interface_info(interface)
    if iface.ipv4 is None:
        raise UsageError(
            f"interface {interface} has no IPv4 address; network boot needs one (clients fetch from it)",
            hint=f"ip addr add 10.0.0.1/24 dev {interface}",
        )
    host = settings.host
    if host not in ("0.0.0.0", "::") and ipaddress.ip_address(host) != iface.ipv4.ip:
        raise UsageError(
            f"the server listens on {host} but clients on {interface} would reach it at {iface.ipv4.ip}",
            hint=f"--listen {iface.ipv4.ip}:{settings.port} or --listen 0.0.0.0:{settings.port}",
        )
    url = (url or f"http://{iface.ipv4.ip}:{settings.port}").rstrip("/")
    if bootenv_dir is None:
        from fleetcast.server.boot import newest_bootenv

        bootenv_dir = newest_bootenv()
        if bootenv_dir is None:
            logger.warning(
                "network boot: no boot environment built yet; clients will fail to load it until "
                "`fleetcast bootenv build` has run"
            )
    cfg = NetbootConfig(
        interface=interface,
        mode=mode,
        server_url=url,
        state_dir=settings.data_dir / "netboot",
        tftp_dir=tftp_dir_for(settings.data_dir),
        dhcp_range=rng,
        uefi_boot=uefi_boot,
        bootenv_dir=bootenv_dir,
    )
    service = NetbootService(cfg, force=force)
    service.check()
    return ServeNetboot(service, url, bootenv_dir)
