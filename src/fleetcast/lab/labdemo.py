"""``fleetcast lab demo``: the virtual lab from power-on to every client running its own deployed Debian.

1. ``lab up``: namespace, server with full DHCP on the lab bridge, N blank QEMU machines network-booting;
2. wait until every machine's agent registered (from the boot environment);
3. deploy ``lab-debian`` to them: names ``LAB-01``.., static IPs from 10.78.0.11, ``--then reboot``;
4. each client reboots, the server's boot script says ``exit`` (its deployment is done), the firmware
   boots the disk, and the deployed Debian's first boot reports hostname, IP, machine-id and Secure
   Boot state (serial line ``fleetcast-lab-report {json}`` and ``POST /api/lab/report``);
5. one row per client, and the lab stays up (``--once``: everything is removed).

Times are seconds from the machine's power-on: to registered (the server's ``enrolled_at``), to done
(the deployment target's ``finished_at``), to booted (the report).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetcast.lab import vlab
from fleetcast.lab.golden import LAB_SUBNET, NAME
from fleetcast.lab.netns import LabError
from fleetcast.lab.qemu import Accel

logger = logging.getLogger(__name__)

BOOTED = "booted-from-disk"
JSON_KEYS = (
    "client",
    "firmware",
    "state",
    "hostname",
    "ip",
    "machine_id",
    "secure_boot",
    "seconds_to_registered",
    "seconds_total",
)
NAME_PATTERN = "LAB-{n:02}"
POLL = 2.0


@dataclass
class ClientRun:
    client: str
    firmware: str
    mac: str
    powered_on_at: float
    state: str = "unregistered"
    hostname: str | None = None
    ip: str | None = None
    machine_id: str | None = None
    secure_boot: bool | None = None
    registered_at: float | None = None
    done_at: float | None = None
    booted_at: float | None = None
    error: str | None = None

    def since_power_on(self, at: float | None) -> float | None:
        return None if at is None else round(at - self.powered_on_at, 1)

    def as_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "firmware": self.firmware,
            "state": self.state,
            "hostname": self.hostname,
            "ip": self.ip,
            "machine_id": self.machine_id,
            "secure_boot": self.secure_boot,
            "seconds_to_registered": self.since_power_on(self.registered_at),
            "seconds_total": self.since_power_on(self.booted_at),
        }


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        dt = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def runs_for(state: vlab.LabState) -> list[ClientRun]:
    return [ClientRun(m.name, m.firmware, m.mac, m.powered_on_at or time.time()) for m in state.machines]


def wait_registered(
    state: vlab.LabState, runs: list[ClientRun], timeout: float, progress: Callable[[str], None]
) -> None:
    """Until every machine's MAC is an enrolled client; LabError naming the missing ones (and the
    tail of their serial log) when not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        clients = {c["mac"]: c for c in vlab.api(state, "GET", "/api/clients")["clients"]}
        for r in runs:
            c = clients.get(r.mac)
            if c is not None and r.registered_at is None:
                r.registered_at = _epoch(c.get("enrolled_at")) or time.time()
                r.state = "registered"
                progress(
                    f"  {r.client} ({r.firmware}, {r.mac}) registered after "
                    f"{r.since_power_on(r.registered_at)} s"
                )
        missing = [r for r in runs if r.registered_at is None]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise LabError(_missing("registered", state, missing, timeout))
        _check_running(state, missing)
        time.sleep(POLL)


def _missing(what: str, state: vlab.LabState, missing: list[ClientRun], timeout: float) -> str:
    lines = [f"{len(missing)} client(s) not {what} within {timeout:.0f} s:"]
    for r in missing:
        machine = state.machine(state.find(r.client))
        tail = machine.serial_text().splitlines()[-8:]
        lines.append(f"{r.client} ({r.firmware}, {r.mac}), serial {machine.serial_log}:")
        lines += [f"    {t}" for t in tail]
    return "\n".join(lines)


def _check_running(state: vlab.LabState, runs: list[ClientRun]) -> None:
    for r in runs:
        record = state.find(r.client)
        if not state.machine(record).running():
            raise LabError(_missing("running (QEMU exited)", state, [r], 0))
    if not vlab.server_running(state):
        raise LabError(f"the lab server is no longer running; see {vlab.server_log(state)}")


def deploy(
    state: vlab.LabState,
    runs: list[ClientRun],
    *,
    then: str = "reboot",
    names: bool = True,
    image: str = NAME,
) -> int:
    """Start the deployment of ``image`` (the golden image) to ``runs`` (in their order: LAB-01 is the
    first). ``names=False``: no name/IP pattern, so registered clients get their registered name and IP."""
    body: dict[str, Any] = {
        "image": image,
        "clients": ",".join(r.mac for r in runs),
        "disk": "0",
        "batch": len(runs),
        "name": NAME_PATTERN,
        "ip": f"{LAB_SUBNET}.{vlab.FIRST_STATIC}/24",
        "gateway": vlab.SERVER_IP,
        "dns": [vlab.SERVER_IP],
        "grow": False,
        "then": then,
    }
    if not names:  # (a gateway/DNS without --ip is refused: registered IPs come without them)
        body.update(name=None, ip=None, gateway=None, dns=[])
    view = vlab.api(state, "POST", "/api/deployments", body)
    return int(view["deployment"])


def _apply_report(r: ClientRun, report: dict[str, Any], at: float) -> None:
    if r.booted_at is not None:
        return
    r.booted_at = at
    r.state = BOOTED
    r.hostname = report.get("hostname")
    r.ip = report.get("ip")
    r.machine_id = report.get("machine_id")
    sb = report.get("secure_boot")
    r.secure_boot = sb if isinstance(sb, bool) else None


def wait_booted(
    state: vlab.LabState,
    runs: list[ClientRun],
    deployment: int,
    timeout: float,
    progress: Callable[[str], None],
    *,
    serial_since: dict[str, int] | None = None,
) -> None:
    """Until every client finished its deployment and reported from its deployed disk (or failed)."""
    deadline = time.monotonic() + timeout
    since = serial_since or {}
    while True:
        view = vlab.api(state, "GET", f"/api/deployments/{deployment}")
        targets = {t["mac"]: t for t in view.get("clients") or []}
        api_reports = {rep.get("mac"): rep for rep in vlab.lab_reports(state)}
        for r in runs:
            t = targets.get(r.mac, {})
            if r.done_at is None and t.get("state") == "done":
                r.done_at = _epoch(t.get("finished_at")) or time.time()
                r.state = "done"
                progress(
                    f"  {r.client} deployed ({t.get('name')}, {t.get('ip')}) "
                    f"after {r.since_power_on(r.done_at)} s"
                )
            elif t.get("state") in ("failed", "cancelled") and r.error is None:
                r.state = str(t["state"])
                r.error = t.get("error") or r.state
                progress(f"  {r.client} {r.state}: {r.error}")
            elif r.done_at is None and t.get("state") and r.state != t["state"]:
                r.state = str(t["state"])
            if r.booted_at is None and r.done_at is not None:
                rep = api_reports.get(r.mac)
                machine = state.machine(state.find(r.client))
                serial = vlab.serial_reports(machine, since.get(r.client, 0))
                if rep is not None and (_epoch(rep.get("received_at")) or 0) >= r.done_at - 1:
                    _apply_report(r, rep, _epoch(rep.get("received_at")) or time.time())
                elif serial:
                    _apply_report(r, serial[-1], time.time())
                if r.booted_at is None and _stuck_in_setup(machine.serial_text()):
                    r.error = "the firmware stopped at its setup menu (UiApp) instead of booting the disk"
                    progress(f"  {r.client}: {r.error}")
                if r.booted_at is not None:
                    progress(
                        f"  {r.client} booted its disk: {r.hostname} {r.ip} machine-id {r.machine_id} "
                        f"secure boot {'on' if r.secure_boot else 'off'} "
                        f"after {r.since_power_on(r.booted_at)} s"
                    )
        pending = [r for r in runs if r.booted_at is None and r.error is None]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise LabError(_missing("booted from disk", state, pending, timeout))
        _check_running(state, pending)
        time.sleep(POLL)


def _stuck_in_setup(serial: str) -> bool:
    """OVMF opened its setup menu after the server said "boot your disk" (no boot option left)."""
    i = serial.rfind("booting from the local disk")
    return i >= 0 and 'starting Boot0000 "UiApp"' in serial[i:]


def rows(runs: list[ClientRun]) -> list[list[str]]:
    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    return [
        [
            r.client,
            r.firmware,
            r.state,
            s(r.since_power_on(r.registered_at)),
            s(r.since_power_on(r.done_at)),
            s(r.since_power_on(r.booted_at)),
            r.hostname or "-",
            r.ip or "-",
            r.machine_id or "-",
        ]
        for r in runs
    ]


HEADERS = [
    "client",
    "firmware",
    "state",
    "s to registered",
    "s to done",
    "s to booted",
    "hostname",
    "IP",
    "machine-id",
]


def demo(
    clients: int,
    firmware: str = vlab.MIXED,
    *,
    state_dir: Path = vlab.DEFAULT_STATE,
    once: bool = False,
    disk_size: str = "4G",
    accel: Accel = Accel.AUTO,
    timeout: float = 1800.0,
    progress: Callable[[str], None] = print,
) -> list[ClientRun]:
    """The whole demo; the per-client results (a client that did not get there keeps the last state
    seen, and the reason is in ``error``). With ``once`` the lab is removed at the end (also on
    failure); without, it stays up (also on failure, to look at: ``fleetcast lab down`` removes it)."""
    state = vlab.up(
        clients, firmware, disk_size=disk_size, state_dir=state_dir, accel=accel, progress=progress
    )
    runs = runs_for(state)
    try:
        started = time.monotonic()
        progress(f"waiting for {clients} client(s) to network-boot and register ...")
        wait_registered(state, runs, timeout, progress)
        dep = deploy(state, runs)
        targets = ", ".join(r.client for r in runs)
        progress(f"deployment {dep}: {NAME} -> {targets} (names {NAME_PATTERN}), then reboot")
        left = max(60.0, timeout - (time.monotonic() - started))
        wait_booted(state, runs, dep, left, progress)
    except LabError as exc:
        progress(f"lab demo: {exc.message}")
        for r in runs:
            if r.state != BOOTED and r.error is None:
                r.error = exc.message.splitlines()[0]
    finally:
        if once:
            vlab.down(state_dir)
    return runs
