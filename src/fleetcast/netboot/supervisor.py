"""``NetbootService``: dnsmasq as a supervised child of ``fleetcast serve`` (or of the lab).

``check()`` refuses, before anything starts: an interface that does not exist or has no IPv4 address,
a bad range, and full DHCP where another DHCP server already answers (a DHCPDISCOVER probe on the
interface, unless ``force``). ``start()`` prepares the TFTP root, writes the configuration and spawns
``dnsmasq --keep-in-foreground --log-facility=-``; its log lines go to this module's logger; when it
dies it is started again after a growing pause (1, 2, 4 … 30 s). ``stop()`` ends it by PID.

dnsmasq outlives a SIGKILLed parent (it drops root, which clears a parent-death signal), so its PID and
configuration path are kept in ``state_dir/dnsmasq.pid``; the next ``start()`` with that state folder
ends the one left running (SIGTERM, then SIGKILL) when ``/proc/PID/cmdline`` shows it is dnsmasq with
this configuration, and logs it (``check()`` does it first, before the DHCP probe would see it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import IO

from fleetcast.errors import CommandError, UsageError
from fleetcast.netboot import dhcp
from fleetcast.netboot.dnsmasq import (
    DhcpMode,
    InterfaceInfo,
    NetbootConfig,
    check_range,
    grub_stub,
    interface_info,
    prepare_tftp_root,
    render,
)
from fleetcast.netboot.httpproxy import HttpBootProxy
from fleetcast.netboot.methods import HttpBoot
from fleetcast.run import spawn, which

logger = logging.getLogger(__name__)

# dnsmasq pings an address for 3 s before it first offers it (ISC dhcpd: 1 s); a probe that listens for
# less misses a real server that does that
PROBE_SECONDS = 4.0
START_WAIT = 5.0
STOP_WAIT = 5.0
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
STABLE_SECONDS = 30.0  # a dnsmasq that ran this long resets the backoff
_PREFIX = re.compile(r"^dnsmasq(?:-(\w+))?\[\d+\]: ")
_DETAIL = ("sent size:", "requested options:", "available DHCP", "vendor class:", "user class:", "tags:")


def _level(line: str) -> int:
    low = line.lower()
    if "failed" in low or "error" in low or "cannot" in low or "illegal" in low:
        return logging.WARNING
    if any(d in line for d in _DETAIL):
        return logging.DEBUG
    return logging.INFO


class NetbootService:
    """One dnsmasq for ``cfg``. Thread-safe start/stop/reconfigure; ``pid`` and ``restarts`` for status."""

    def __init__(self, cfg: NetbootConfig, *, force: bool = False, fallback_cmdline: str = "") -> None:
        self.cfg = cfg
        self.force = force
        self.fallback_cmdline = fallback_cmdline
        self.restarts = 0
        self.iface: InterfaceInfo | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self._tail: deque[str] = deque(maxlen=20)
        self._started = threading.Event()
        self._respawn = threading.Event()
        self._respawned = threading.Event()
        self._http_proxy: HttpBootProxy | None = None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    # ---- checks -------------------------------------------------------------------------------

    def check(self) -> InterfaceInfo:
        """Every refusal, before anything starts; returns the interface's addresses. First ends the
        dnsmasq an earlier, killed run with this state folder left (else the DHCP probe finds it)."""
        which("dnsmasq", package="dnsmasq-base")
        cfg = self.cfg
        stop_leftover(cfg.state_dir, cfg.conf_file)
        iface = interface_info(cfg.interface)
        if iface.ipv4 is None:
            raise UsageError(
                f"interface {iface.name} has no IPv4 address; network boot needs one (clients fetch from it)",
                hint=f"ip addr add 10.0.0.1/24 dev {iface.name}",
            )
        if cfg.mode is DhcpMode.FULL:
            if cfg.dhcp_range is None:
                raise UsageError(
                    "--dhcp full needs --range START-END", hint="for example --range 10.0.0.100-10.0.0.200"
                )
            check_range(cfg.dhcp_range, iface)
            if not self.force:
                offers = dhcp.probe(cfg.interface, timeout=PROBE_SECONDS)
                if offers:
                    servers = sorted({o.server_id or o.sender for o in offers})
                    raise UsageError(
                        f"another DHCP server answers on {cfg.interface} ({', '.join(servers)} offered "
                        f"{offers[0].yiaddr}): refusing to start a second one in full mode",
                        hint="use --dhcp proxy beside it (the default without --range), or --force "
                        "if you really mean to run two DHCP servers",
                    )
        elif cfg.dhcp_range is not None:
            raise UsageError(f"--range is only for --dhcp full (the mode is {cfg.mode.value})")
        self.iface = iface
        return iface

    # ---- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Check, prepare, start dnsmasq and wait until it says it started (CommandError if it exits)."""
        with self._lock:
            if self._proc is not None:
                return
            iface = self.iface or self.check()  # checked already by whoever built this service
            stop_leftover(self.cfg.state_dir, self.cfg.conf_file)
            self._write(iface)
            self._stopping.clear()
            self._spawn(first=True)
            self._monitor = threading.Thread(target=self._watch, name="dnsmasq-monitor", daemon=True)
            self._monitor.start()
            if self.cfg.mode is DhcpMode.PROXY and iface.ipv4 is not None:
                # dnsmasq's proxy answers PXEClient only: UEFI HTTP boot (HTTPClient) gets ours
                url = HttpBoot.boot_target(self.cfg.server_url)
                self._http_proxy = HttpBootProxy(self.cfg.interface, str(iface.ipv4.ip), url)
                if not self._http_proxy.start():
                    self._http_proxy = None
        logger.info(
            "network boot: dnsmasq (pid %s) on %s, DHCP %s%s, TFTP %s, server %s",
            self.pid, self.cfg.interface, self.cfg.mode.value,
            f" {self.cfg.dhcp_range}" if self.cfg.dhcp_range else "", self.cfg.tftp_root, self.cfg.server_url,
        )  # fmt: skip

    def _write(self, iface: InterfaceInfo) -> None:
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        prepare_tftp_root(self.cfg, grub_stub(self.cfg.server_url, self.fallback_cmdline))
        text = render(self.cfg, iface)
        tmp = self.cfg.conf_file.with_name(".dnsmasq.conf.tmp")
        tmp.write_text(text)
        os.replace(tmp, self.cfg.conf_file)
        if not iface.ipv6_global:
            logger.warning(
                "network boot: %s has no global IPv6 address, so no router advertisements: iPXE waits "
                "about 13 s for IPv6 (add one, e.g. ip -6 addr add fd00::1/64 dev %s)",
                iface.name, iface.name,
            )  # fmt: skip

    def _argv(self) -> list[str]:
        # (no parent-death signal: the kernel clears it when dnsmasq drops root; a SIGKILLed fleetcast
        # leaves its dnsmasq running, SIGTERM/SIGINT stop it)
        return [
            which("dnsmasq", package="dnsmasq-base"),
            f"--conf-file={self.cfg.conf_file}",
            "--keep-in-foreground",
            "--log-facility=-",
        ]

    def _spawn(self, *, first: bool) -> None:
        self._started.clear()
        self._tail.clear()
        proc = spawn(self._argv(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._proc = proc
        assert proc.stderr is not None
        threading.Thread(target=self._pump, args=(proc.stderr,), name="dnsmasq-log", daemon=True).start()
        deadline = time.monotonic() + START_WAIT
        while not self._started.is_set() and proc.poll() is None and time.monotonic() < deadline:
            self._started.wait(0.05)
        if proc.poll() is not None:
            time.sleep(0.1)  # let the pump read the last lines
            tail = "\n".join(self._tail) or "(no output)"
            self._proc = None
            error = CommandError(
                f"dnsmasq exited with status {proc.returncode} at start: {tail}",
                argv=self._argv(),
                returncode=proc.returncode,
                stderr=tail,
            )
            if first:
                raise error
            logger.error("network boot: %s", error.message)
            return
        self._write_pidfile(proc.pid)

    def _write_pidfile(self, pid: int) -> None:
        path = pidfile(self.cfg.state_dir)
        tmp = path.with_name(".dnsmasq.pid.tmp")
        info = {"pid": pid, "conf": str(self.cfg.conf_file), "tftp": str(self.cfg.tftp_root)}
        info["owner"] = os.getpid()
        tmp.write_text(json.dumps(info) + "\n")
        os.replace(tmp, path)

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = _PREFIX.sub("", raw.decode(errors="replace").rstrip())
            if not line:
                continue
            self._tail.append(line)
            if line.startswith("started, version"):
                self._started.set()
            logger.log(_level(line), "dnsmasq: %s", line)

    def _watch(self) -> None:
        """Every dnsmasq after the first is started here (restarts after a crash, and the new one of a
        reconfigure), so no request thread owns a child."""
        backoff = BACKOFF_FIRST
        while not self._stopping.is_set():
            proc = self._proc
            began = time.monotonic()
            if proc is not None:
                rc = proc.wait()
                if self._stopping.is_set():
                    return
                if self._respawn.is_set():  # reconfigure() ended it: start the new one at once
                    with self._lock:
                        self._respawn.clear()
                        self._spawn(first=False)
                    self._respawned.set()
                    continue
                logger.error(
                    "network boot: dnsmasq (pid %d) exited with status %s; starting it again in %.0f s",
                    proc.pid, rc, backoff,
                )  # fmt: skip
                if time.monotonic() - began > STABLE_SECONDS:
                    backoff = BACKOFF_FIRST
            if self._stopping.wait(backoff):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                if self._proc is None or self._proc.poll() is not None:
                    self.restarts += 1
                    self._spawn(first=False)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def reconfigure(self, *, secureboot_macs: tuple[str, ...]) -> None:
        """New per-MAC tags (registrations changed): rewrite the configuration and restart dnsmasq;
        returns when the new one has started (or after START_WAIT + STOP_WAIT)."""
        with self._lock:
            if tuple(secureboot_macs) == self.cfg.secureboot_macs:
                return
            self.cfg = replace(self.cfg, secureboot_macs=tuple(secureboot_macs))
            proc = self._proc
            if proc is None or self.iface is None or self._monitor is None:
                return
            self._write(self.iface)
            self._respawned.clear()
            self._respawn.set()
            _terminate(proc)
        self._respawned.wait(START_WAIT + STOP_WAIT)

    def stop(self) -> None:
        """End dnsmasq by its PID (SIGTERM, SIGKILL after 5 s); safe to call twice."""
        self._stopping.set()
        with self._lock:
            proc, self._proc = self._proc, None
            http_proxy, self._http_proxy = self._http_proxy, None
        if http_proxy is not None:
            http_proxy.stop()
        if proc is not None:
            _terminate(proc)
            logger.info("network boot: dnsmasq (pid %d) stopped", proc.pid)
        with contextlib.suppress(OSError):
            pidfile(self.cfg.state_dir).unlink()
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(timeout=STOP_WAIT)

    def __enter__(self) -> NetbootService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=STOP_WAIT)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def pidfile(state_dir: Path) -> Path:
    return state_dir / "dnsmasq.pid"


def read_pidfile(state_dir: Path) -> dict[str, object] | None:
    """What the last ``start()`` with ``state_dir`` wrote (pid, conf, tftp, owner), None without one."""
    try:
        data = json.loads(pidfile(state_dir).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def pid_alive(pid: int) -> bool:
    """A running process (a zombie, dead but not reaped yet, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def is_dnsmasq_for(pid: int, conf: Path) -> bool:
    """``pid`` runs dnsmasq with ``--conf-file=conf`` (so it is ours, not a reused PID)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.path.basename(argv[0]) == b"dnsmasq" and f"--conf-file={conf}".encode() in argv[1:]


def stop_leftover(state_dir: Path, conf: Path) -> int | None:
    """End the dnsmasq an earlier run with ``state_dir`` left running (its parent was SIGKILLed):
    only when the pidfile's PID is alive and is dnsmasq with ``conf``. Returns its PID, else None."""
    info = read_pidfile(state_dir)
    if info is None:
        return None
    pid = info["pid"]
    assert isinstance(pid, int)
    if not (pid_alive(pid) and is_dnsmasq_for(pid, conf)):
        with contextlib.suppress(OSError):
            pidfile(state_dir).unlink()
        return None
    owner = info.get("owner")
    if isinstance(owner, int) and owner != os.getpid() and pid_alive(owner):
        raise UsageError(
            f"dnsmasq (pid {pid}) with {conf} belongs to a fleetcast that is still running (pid {owner})",
            hint="stop that server first; two servers cannot share one data directory",
        )
    logger.warning(
        "network boot: dnsmasq (pid %d) of an earlier run (pid %s) is still running with %s: stopping it",
        pid, owner, conf,
    )  # fmt: skip
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid) and is_dnsmasq_for(pid, conf):
            logger.warning("network boot: dnsmasq (pid %d) ignored SIGTERM: SIGKILL", pid)
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid) and time.monotonic() < deadline + STOP_WAIT:
                time.sleep(0.05)
    except ProcessLookupError:
        pass
    with contextlib.suppress(OSError):
        pidfile(state_dir).unlink()
    return pid
