"""The virtual lab: QEMU machines that network-boot from a fleetcast server, all inside one network
namespace (``fleetcast lab up | status | console | down``; ``fleetcast lab demo`` in lab/labdemo.py).

Inside the namespace ``fc-nb-lab-XXXXXX`` (XXXXXX from the state folder, so two labs never meet):

    br0 10.78.0.1/24 + fd78::1/64 ── fctap1 ── QEMU client1 (52:54:00:fc:00:01)
                                  ── fctap2 ── QEMU client2 (52:54:00:fc:00:02) ...
    fleetcast serve --listen 10.78.0.1:8080 --dhcp full --interface br0 --range 10.78.0.100-10.78.0.199

Nothing is created in the host's namespace: the bridge and taps live in the lab's namespace, the server
and dnsmasq answer only there, and the lab process talks to the server from a thread that joined the
namespace (:func:`in_netns`). The state folder (default ``/var/lib/fleetcast-lab``) holds
``state.json`` (namespace, server PID and URL, tokens, machines), the server's data folder and one folder
per machine (disk, NVRAM, serial log, PID file). The golden image's store is a cache beside the boot
environment's (``/var/cache/fleetcast/lab-store/<golden key>``), so a second ``up`` does not capture
again. ``down`` ends QEMU and the server by PID, deletes the namespace and the state folder; a failure
half-way through ``up`` does the same.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from fleetcast.errors import CommandError
from fleetcast.lab.golden import LAB_SERVER_URL, LAB_SUBNET
from fleetcast.lab.netns import LabError
from fleetcast.lab.qemu import Accel, Firmware, Machine, MachineSpec, lab_mac, parse_size, pid_alive, stop_pid
from fleetcast.run import run, spawn, which

logger = logging.getLogger(__name__)

DEFAULT_STATE = Path("/var/lib/fleetcast-lab")
STORE_CACHE = Path("/var/cache/fleetcast/lab-store")
BRIDGE = "br0"
SERVER_IP = f"{LAB_SUBNET}.1"
PORT = 8080
DHCP_RANGE = f"{LAB_SUBNET}.100-{LAB_SUBNET}.199"
FIRST_STATIC = 11  # LAB-01 gets .11
IPV6 = "fd78::1/64"  # router advertisements spare iPXE its ~13 s IPv6 wait (lab-notes.md)
FLEETCAST = Path(sys.executable).parent / "fleetcast"
MIXED = "mixed"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def parse_firmware(text: str, clients: int) -> list[Firmware]:
    """``bios|uefi|secureboot|mixed`` or a comma list (``bios,secureboot``) -> one firmware per client.
    ``mixed`` alternates bios and uefi; a list shorter than ``clients`` repeats."""
    if clients < 1 or clients > 50:
        raise LabError(f"the lab runs 1 to 50 clients, not {clients}")
    names = ["bios", "uefi"] if text == MIXED else [n.strip() for n in text.split(",") if n.strip()]
    try:
        kinds = [Firmware(n) for n in names]
    except ValueError as exc:
        raise LabError(
            f"firmware {text!r} is not one of bios, uefi, secureboot, mixed",
            hint="e.g. --firmware mixed or --firmware bios,secureboot",
        ) from exc
    if not kinds:
        raise LabError("no firmware given")
    return [kinds[i % len(kinds)] for i in range(clients)]


# -- the namespace ----------------------------------------------------------------------------------


def in_netns(netns: str, fn: Callable[[], T]) -> T:
    """``fn()`` run in a thread that joined network namespace ``netns`` (sockets it opens stay there)."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise LabError(f"cannot join network namespace {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


@dataclass
class MachineRecord:
    index: int
    name: str  # client1, client2, ...
    firmware: str
    mac: str
    tap: str
    workdir: str
    powered_on_at: float | None = None  # wall clock (time.time()) of the last power-on


@dataclass
class LabState:
    state_dir: str
    netns: str
    server_url: str = LAB_SERVER_URL
    server_pid: int | None = None
    admin_token: str = ""
    enroll_token: str = ""
    bootenv: str = ""
    store: str = ""
    accel: str = "tcg"
    disk_size: int = 0
    created_at: str = ""
    namespace_made: bool = False
    machines: list[MachineRecord] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return Path(self.state_dir) / "state.json"

    @property
    def data_dir(self) -> Path:
        return Path(self.state_dir) / "data"

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.chmod(0o600)
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, state_dir: Path) -> LabState:
        path = state_dir / "state.json"
        try:
            data = json.loads(path.read_text())
            machines = [MachineRecord(**m) for m in data.pop("machines")]
            return cls(**data, machines=machines)
        except FileNotFoundError as exc:
            raise LabError(
                f"no lab is up (no {path})", hint="start one with 'fleetcast lab up --clients 2'"
            ) from exc
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise LabError(
                f"lab state {path} is unreadable: {exc}", hint="'fleetcast lab down' removes it"
            ) from exc

    def machine(self, record: MachineRecord) -> Machine:
        return Machine(
            MachineSpec(
                name=record.name,
                firmware=Firmware(record.firmware),
                mac=record.mac,
                workdir=Path(record.workdir),
                tap=record.tap,
                netns=self.netns,
                accel=Accel(self.accel),
            )
        )

    def find(self, client: str) -> MachineRecord:
        """A machine by name (``client2``), number (``2``) or MAC."""
        for m in self.machines:
            if client in (m.name, str(m.index), m.mac) or client.lower() == m.mac:
                return m
        names = ", ".join(m.name for m in self.machines) or "none"
        raise LabError(f"the lab has no client {client!r} (clients: {names})")


def netns_name(state_dir: Path) -> str:
    import hashlib

    return "fc-nb-lab-" + hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:6]


def _ip(netns: str, *args: str) -> None:
    run(["ip", "-n", netns, *args])


def _make_network(state: LabState) -> None:
    ns = state.netns
    run(["ip", "netns", "add", ns])
    state.namespace_made = True
    state.save()
    _ip(ns, "link", "set", "lo", "up")
    _ip(ns, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0")
    _ip(ns, "addr", "add", f"{SERVER_IP}/24", "dev", BRIDGE)
    _ip(ns, "-6", "addr", "add", IPV6, "dev", BRIDGE, "nodad")
    _ip(ns, "link", "set", BRIDGE, "up")
    for m in state.machines:
        _ip(ns, "tuntap", "add", "dev", m.tap, "mode", "tap")
        _ip(ns, "link", "set", m.tap, "master", BRIDGE, "up")


# -- the server ------------------------------------------------------------------------------------


def api(state: LabState, method: str, path: str, body: Any = None, *, timeout: float = 30.0) -> Any:
    """One admin API call to the lab's server (from inside the namespace); the decoded JSON body.
    LabError for a transport error or a status >= 400."""
    import httpx

    def call() -> httpx.Response:
        return httpx.request(
            method,
            f"{state.server_url}{path}",
            headers={"Authorization": f"Bearer {state.admin_token}"},
            json=body,
            timeout=timeout,
            trust_env=False,
        )

    try:
        r = in_netns(state.netns, call)
    except httpx.HTTPError as exc:
        raise LabError(f"lab server {state.server_url}: {method} {path}: {exc}") from exc
    if r.status_code >= 400:
        raise LabError(f"lab server: {method} {path}: HTTP {r.status_code}: {r.text[:300]}")
    return r.json() if r.content else None


# Servers this process started (still running after `lab up` returns): down() reaps them, so no zombie
# or "subprocess still running" is left behind when up and down run in one process (tests, bench).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def server_log(state: LabState) -> Path:
    return Path(state.state_dir) / "server.log"


def server_running(state: LabState) -> bool:
    return state.server_pid is not None and pid_alive(state.server_pid, str(state.data_dir))


def _start_server(state: LabState, timeout: float) -> None:
    data = state.data_dir
    data.mkdir(parents=True, exist_ok=True)
    for name, attr in (("token", "admin_token"), ("enroll-token", "enroll_token")):
        out = run([FLEETCAST, "--data", data, "admin", name]).stdout.decode().strip()
        setattr(state, attr, out)
    argv: list[str | os.PathLike[str]] = [
        FLEETCAST,
        "serve",
        "--data",
        data,
        "--store",
        state.store,
        "--listen",
        f"{SERVER_IP}:{PORT}",
    ]
    argv += ["--dhcp", "full", "--interface", BRIDGE, "--range", DHCP_RANGE, "--server-url", state.server_url]
    argv += ["--bootenv", state.bootenv]
    with open(server_log(state), "ab") as log:
        # setsid: the server outlives this command and a Ctrl-C in its terminal (ended by PID at down)
        proc = spawn(
            ["setsid", "ip", "netns", "exec", state.netns, *argv],
            stdout=log.fileno(),
            stderr=subprocess.STDOUT,
        )
    state.server_pid = proc.pid
    _CHILDREN[proc.pid] = proc  # reaped by down() when it runs in this process
    state.save()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(server_log(state).read_text(errors="replace").splitlines()[-15:])
            raise LabError(f"the lab server exited with status {proc.returncode}:\n{tail}")
        try:
            api(state, "GET", "/api/clients", timeout=3)
            return
        except LabError:
            time.sleep(0.5)
    raise LabError(f"the lab server did not answer within {timeout:.0f} s; see {server_log(state)}")


# -- up / down / status ----------------------------------------------------------------------------


def _say(progress: Callable[[str], None] | None, line: str) -> None:
    logger.info("%s", line)
    if progress is not None:
        progress(line)


def ensure_inputs(progress: Callable[[str], None] | None = None) -> tuple[Path, Path]:
    """The boot environment folder and the golden image's store, built/captured when missing (cached)."""
    from fleetcast.bootenv import BootEnvOptions, ensure
    from fleetcast.lab.golden import NAME, ensure_golden, golden_key

    t = time.monotonic()
    env = ensure(BootEnvOptions(), progress=lambda s: _say(progress, f"  {s}"))
    _say(progress, f"boot environment {env.key}: {env.root} ({time.monotonic() - t:.0f} s)")
    t = time.monotonic()
    store = STORE_CACHE / golden_key()
    store.mkdir(parents=True, exist_ok=True)
    ensure_golden(store)
    _say(progress, f"golden image {NAME}: {store} ({time.monotonic() - t:.0f} s)")
    return env.root, store


def up(
    clients: int,
    firmware: str = MIXED,
    *,
    disk_size: str = "4G",
    state_dir: Path = DEFAULT_STATE,
    accel: Accel = Accel.AUTO,
    register_secureboot: bool = True,
    start: bool = True,
    progress: Callable[[str], None] | None = None,
    server_timeout: float = 120.0,
    bootenv: Path | None = None,
) -> LabState:
    """Build the lab and power on its machines (``start=False``: machines made but off).
    ``bootenv``: a folder with ``vmlinuz`` + ``initrd.img`` that machines boot instead of fleetcast's
    boot environment (bench/lab.py boots Debian's installer this way); the golden image is then not
    prepared."""
    kinds = parse_firmware(firmware, clients)
    size = parse_size(disk_size)
    state_dir = _check_can_start(state_dir)
    if bootenv is None:
        bootenv, store = ensure_inputs(progress)
    else:
        store = state_dir / "store"
    state = _new_state(state_dir, kinds, bootenv=bootenv, store=store, accel=accel, disk_size=size)
    try:
        _bring_up(state, register_secureboot=register_secureboot, progress=progress, timeout=server_timeout)
        if start:
            for m in state.machines:
                power_on(state, m)
            _say(
                progress,
                f"{clients} machine(s) powered on ({', '.join(k.value for k in kinds)}; {state.accel})",
            )
    except BaseException:
        try:
            down(state_dir)
        except Exception:
            logger.exception("cleaning up the half-built lab failed")
        raise
    return state


def _check_can_start(state_dir: Path) -> Path:
    """Root, the tools, and no lab in ``state_dir`` yet; the state folder's absolute path."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, taps)", hint="run it with sudo")
    for tool, package in (
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("dnsmasq", "dnsmasq-base"),
        ("ip", "iproute2"),
    ):
        which(tool, package=package)
    state_dir = state_dir.resolve() if state_dir.exists() else state_dir.absolute()
    if (state_dir / "state.json").exists():
        raise LabError(
            f"a lab is already up in {state_dir}",
            hint="'fleetcast lab status', or 'fleetcast lab down' first",
        )
    return state_dir


def _new_state(
    state_dir: Path, kinds: list[Firmware], *, bootenv: Path, store: Path, accel: Accel, disk_size: int
) -> LabState:
    """The lab's state folder and ``state.json`` with one record per machine (nothing started yet)."""
    from fleetcast.lab.qemu import resolve_accel

    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    state = LabState(
        state_dir=str(state_dir),
        netns=netns_name(state_dir),
        bootenv=str(bootenv),
        store=str(store),
        accel=resolve_accel(accel).value,
        disk_size=disk_size,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    for i, kind in enumerate(kinds, start=1):
        state.machines.append(
            MachineRecord(
                index=i,
                name=f"client{i}",
                firmware=kind.value,
                mac=lab_mac(i),
                tap=f"fctap{i}",
                workdir=str(state_dir / "machines" / f"client{i}"),
            )
        )
    state.save()
    return state


def _bring_up(
    state: LabState, *, register_secureboot: bool, progress: Callable[[str], None] | None, timeout: float
) -> None:
    """Namespace, bridge and taps, the server, Secure Boot registrations, blank disks (the caller removes
    everything when this raises)."""
    taken = subprocess.run(["ip", "netns", "pids", state.netns], capture_output=True, check=False)
    if taken.returncode == 0:
        hint = "'fleetcast lab down' removes it"
        raise LabError(f"network namespace {state.netns} already exists", hint=hint)
    _make_network(state)
    _say(progress, f"namespace {state.netns}: bridge {BRIDGE} {SERVER_IP}/24, {len(state.machines)} tap(s)")
    t = time.monotonic()
    _start_server(state, timeout)
    _say(
        progress,
        f"server {state.server_url} (pid {state.server_pid}, DHCP {DHCP_RANGE} on {BRIDGE}) "
        f"in {time.monotonic() - t:.1f} s",
    )
    if register_secureboot:
        for m in state.machines:
            if m.firmware == Firmware.SECUREBOOT:
                register(state, m.mac, boot="secureboot")
    for m in state.machines:
        state.machine(m).create_disk(state.disk_size)


def register(
    state: LabState,
    mac: str,
    *,
    name: str | None = None,
    ip: str | None = None,
    boot: str | None = None,
    replace: bool = False,
) -> None:
    """Register ``mac`` with the server ahead of its boot (name, IP, ``boot="secureboot"``)."""
    body: dict[str, Any] = {"mac": mac, "replace": replace}
    for key, value in (("name", name), ("ip", ip), ("boot", boot)):
        if value is not None:
            body[key] = value
    api(state, "POST", "/api/registrations", body)


def use_disk_image(state: LabState, record: MachineRecord, image: Path) -> Path:
    """Give a powered-off machine a disk that starts as ``image`` (an existing raw or qcow2 disk image,
    e.g. the golden disk from ``fleetcast.lab.golden.ensure_golden_disk()``) instead of its blank one: a
    copy-on-write overlay of the lab's disk size (at least the image's), so ``image`` is never written.
    Call it after ``up(..., start=False)`` and before ``power_on``."""
    machine = state.machine(record)
    if machine.running():
        raise LabError(f"machine {record.name} is running: power it off before changing its disk")
    size = max(state.disk_size, image.stat().st_size) if image.is_file() else state.disk_size
    return machine.create_disk(size, backing=image)


def power_on(state: LabState, record: MachineRecord) -> int:
    pid = state.machine(record).start()
    record.powered_on_at = time.time()
    state.save()
    return pid


def power_off(state: LabState, record: MachineRecord) -> None:
    state.machine(record).stop()


def down(state_dir: Path = DEFAULT_STATE) -> list[str]:
    """Remove the lab in ``state_dir``: machines and server (by PID), the namespace, the state folder.
    Idempotent; returns what it removed."""
    done: list[str] = []
    path = state_dir / "state.json"
    if not path.exists():
        ns = netns_name(state_dir)
        if Path(f"/run/netns/{ns}").exists():
            run(["ip", "netns", "del", ns])
            done.append(f"namespace {ns}")
        if state_dir.exists() and (state_dir / "machines").exists():
            shutil.rmtree(state_dir)
            done.append(f"state {state_dir}")
        return done
    state = LabState.load(state_dir)
    for m in state.machines:
        machine = state.machine(m)
        if machine.running():
            machine.stop()
            done.append(f"{m.name} (qemu)")
    if server_running(state) and state.server_pid is not None:
        stop_pid(state.server_pid, str(state.data_dir), timeout=15)
        done.append(f"server (pid {state.server_pid})")
    if state.server_pid in _CHILDREN:
        _CHILDREN.pop(state.server_pid).wait(timeout=15)
    if Path(f"/run/netns/{state.netns}").exists():
        leftover = subprocess.run(
            ["ip", "netns", "pids", state.netns], capture_output=True, text=True, check=False
        )
        for word in leftover.stdout.split():
            if not pid_alive(int(word), ""):  # a zombie waiting for its parent
                continue
            logger.warning("process %s still in namespace %s after down: ending it", word, state.netns)
            stop_pid(int(word), "")
        try:
            run(["ip", "netns", "del", state.netns])
        except CommandError as exc:
            raise LabError(f"could not delete namespace {state.netns}: {exc.message}") from exc
        done.append(f"namespace {state.netns}")
    shutil.rmtree(state_dir, ignore_errors=True)
    done.append(f"state {state_dir}")
    return done


def status(state_dir: Path = DEFAULT_STATE) -> dict[str, Any]:
    """What the lab holds now: server, and per machine firmware, MAC, power, what the server knows."""
    state = LabState.load(state_dir)
    clients: dict[str, dict[str, Any]] = {}
    reports: dict[str, dict[str, Any]] = {}
    up_ = server_running(state)
    if up_:
        try:
            clients = {c["mac"]: c for c in api(state, "GET", "/api/clients", timeout=10)["clients"]}
        except LabError as exc:
            logger.warning("%s", exc)
        reports = {r["mac"]: r for r in lab_reports(state)}
    for m in state.machines:
        for r in serial_reports(state.machine(m)):
            reports.setdefault(m.mac, r)
    rows = []
    for m in state.machines:
        c = clients.get(m.mac, {})
        rep = reports.get(m.mac)
        rows.append(
            {
                "client": m.name,
                "firmware": m.firmware,
                "mac": m.mac,
                "power": "on" if state.machine(m).running() else "off",
                "state": "booted-from-disk" if rep else c.get("state", "unregistered"),
                "hostname": (rep or {}).get("hostname") or c.get("hostname"),
                "ip": (rep or {}).get("ip") or c.get("address"),
                "serial_log": str(Path(m.workdir) / "serial.log"),
            }
        )
    return {
        "netns": state.netns,
        "server": state.server_url,
        "server_running": up_,
        "server_pid": state.server_pid,
        "accel": state.accel,
        "clients": rows,
    }


# -- what booted machines report ------------------------------------------------------------------

REPORT_PREFIX = "fleetcast-lab-report "


def serial_reports(machine: Machine, since: int = 0) -> list[dict[str, Any]]:
    """The ``fleetcast-lab-report {json}`` lines the deployed Debian printed on the serial port."""
    out = []
    for line in machine.serial_text()[since:].splitlines():
        i = line.find(REPORT_PREFIX)
        if i < 0:
            continue
        try:
            data = json.loads(line[i + len(REPORT_PREFIX) :].strip())
        except ValueError:
            continue
        if isinstance(data, dict):
            out.append(data)
    return out


def lab_reports(state: LabState) -> list[dict[str, Any]]:
    """What machines POSTed to the server's /api/lab/report (empty when the route is missing)."""
    try:
        reports = api(state, "GET", "/api/lab/reports", timeout=10)
    except LabError as exc:
        logger.debug("no lab reports: %s", exc)
        return []
    return list(reports.get("reports", [])) if isinstance(reports, dict) else []


def follow(path: Path, *, lines: int = 40, poll: float = 0.5) -> Iterator[str]:
    """The last ``lines`` lines of ``path``, then what is appended (tail -f)."""
    with open(path, errors="replace") as fh:
        for line in fh.readlines()[-lines:]:
            yield line
        while True:
            line = fh.readline()
            if line:
                yield line
            else:
                time.sleep(poll)
