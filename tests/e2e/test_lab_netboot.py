"""Issue 8 in the virtual lab, the parts beside the demo flow (tests/e2e/test_lab_demo.py carries BIOS and
UEFI: netboot, deploy, boot from disk), in one lab of two QEMU machines — every boot here carries checks
no other boot in the suite makes:

- client1, Secure Boot (OVMF_CODE_4M.ms.fd + OVMF_VARS_4M.ms.fd, q35 smm=on), pre-registered from a CSV
  (MAC, name, IP, boot=secureboot): OVMF's own PXE gets Debian's signed shim by TFTP, shim the signed
  network GRUB, GRUB its per-MAC config and the signed kernel + initrd (the kernel reports Secure Boot
  enabled); the agent enrolls; the deployment (no name/IP pattern) gives it the CSV's name and IP; it
  reboots into its deployed disk with Secure Boot still on (the server's GRUB config chainloads the
  disk's shim), and once powered off and on again it boots from its disk, not the boot environment;
- client2, UEFI (the NIC ROM's iPXE, over HTTP), unknown, its disk a copy of the golden Debian disk: it
  appears as a client with its inventory and waits; a network capture of that disk (issue 11) is what
  client1 is deployed with.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import require

from fleetcast.lab import labdemo, vlab
from fleetcast.lab.golden import NAME, ensure_golden_disk
from fleetcast.lab.netns import LabError
from fleetcast.lab.qemu import Accel

pytestmark = pytest.mark.e2e

DISK = 4 << 30
SB_NAME, SB_IP = "LAB-SB", "10.78.0.41"
SB_ENABLED = "secureboot: Secure boot enabled"  # the Debian kernel's line
CAPTURED = "lab-captured"
WAIT = 2400.0


@dataclass
class Deployed:
    runs: list[labdemo.ClientRun]
    capture: dict[str, Any] = field(default_factory=dict)  # the last GET /api/captures/ID
    image: str = NAME  # what client1 was deployed with (the capture when it finished)
    script_before_capture: str = ""  # client2's /boot/ipxe script once it enrolled


def _boot_script(state: vlab.LabState, mac: str) -> str:
    def get() -> str:
        return httpx.get(f"{state.server_url}/boot/ipxe", params={"mac": mac}, trust_env=False).text

    return vlab.in_netns(state.netns, get)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[vlab.LabState]:
    require("qemu-system-x86_64")
    require("dnsmasq")
    state_dir = tmp_path_factory.mktemp("vlab") / "lab"
    state = vlab.up(
        2,
        "secureboot,uefi",
        disk_size="4G",
        state_dir=state_dir,
        accel=Accel.TCG,
        start=False,
        register_secureboot=False,
    )
    try:
        sb, golden = state.machines
        csv = f"mac,name,ip,boot\n{sb.mac},{SB_NAME},{SB_IP},secureboot\n"
        imported = vlab.api(state, "POST", "/api/registrations/import", {"csv": csv, "source": "lab.csv"})
        assert imported["imported"] == 1
        vlab.use_disk_image(state, golden, ensure_golden_disk())
        for m in state.machines:
            vlab.power_on(state, m)
        yield state
    finally:
        try:  # the lab serves the golden image's cached store: leave no captured image in it
            vlab.api(state, "DELETE", f"/api/images/{CAPTURED}")
        except LabError as exc:
            print(f"  {CAPTURED} not removed from the lab store: {exc.message}")
        vlab.down(state_dir)
    assert not Path(f"/run/netns/{state.netns}").exists()


def _capture(state: vlab.LabState, run: labdemo.ClientRun, result: Deployed) -> None:
    """Capture client2's disk over the network into CAPTURED (the capture's view in ``result``); with
    ``replace``, since the lab's store is a cache that an interrupted run may have left CAPTURED in."""
    body = {"client": run.mac, "name": CAPTURED, "disk": "0", "replace": True}
    view = vlab.api(state, "POST", "/api/captures", body)
    deadline = time.monotonic() + WAIT
    while view.get("state") not in ("done", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(labdemo.POLL)
        view = vlab.api(state, "GET", f"/api/captures/{view['capture']}")
    result.capture = view


@pytest.fixture(scope="module")
def deployed(lab: vlab.LabState) -> Deployed:
    """Both registered; client2's disk captured; client1 deployed (with the capture when it worked, else
    the golden image) and, as far as it got, booted from its disk (a client that did not get there keeps
    its last state and the reason in ``error``)."""
    runs = labdemo.runs_for(lab)
    sb, golden = runs
    result = Deployed(runs)
    labdemo.wait_registered(lab, [golden], WAIT, print)
    result.script_before_capture = _boot_script(lab, golden.mac)
    try:
        _capture(lab, golden, result)
    except LabError as exc:
        result.capture = {"state": "failed", "error": exc.message}
    if result.capture.get("state") == "done":
        result.image = CAPTURED
    labdemo.wait_registered(lab, [sb], WAIT, print)
    dep = labdemo.deploy(lab, [sb], names=False, image=result.image)
    try:
        labdemo.wait_booted(lab, [sb], dep, WAIT, print)
    except LabError as exc:
        sb.error = exc.message
    return result


@pytest.mark.timeout(5400)
def test_secure_boot_client_netboots_the_boot_environment_with_secure_boot_on(
    lab: vlab.LabState, deployed: Deployed
) -> None:
    sb, record = deployed.runs[0], lab.machines[0]
    assert sb.registered_at is not None  # its agent ran: shim -> signed GRUB -> signed kernel + initrd
    serial = lab.machine(record).serial_text()
    assert "NBP filename is bootx64.efi" in serial  # shim, from OVMF's own PXE client
    # the per-MAC GRUB config (registered, not yet enrolled: a new machine)
    assert f"fleetcast: {sb.mac}: new machine: starting the boot environment" in serial, serial[-3000:]
    assert "fleetcast: firmware UEFI, Secure Boot on" in serial, serial[-3000:]
    log = vlab.server_log(lab).read_text(errors="replace")
    for sent in (
        "bootx64.efi",
        "grubx64.efi",
        "grub/grub.cfg",
        f"grub/mac/{sb.mac}.cfg",
        "bootenv/initrd.img",
    ):
        assert f"/{sent} to 10.78.0." in log, sent  # dnsmasq: "sent /run/.../NAME to IP"


@pytest.mark.timeout(5400)
def test_secure_boot_client_netboots_deploys_and_boots_its_disk_with_secure_boot_on(
    lab: vlab.LabState, deployed: Deployed
) -> None:
    sb = deployed.runs[0]
    assert sb.firmware == "secureboot"
    assert sb.state == labdemo.BOOTED, sb.error
    assert (sb.hostname, sb.ip, sb.secure_boot) == (SB_NAME, SB_IP, True)
    reports = {r["mac"]: r for r in vlab.lab_reports(lab)}
    assert reports[sb.mac]["hostname"] == SB_NAME  # its own MAC in the report it POSTed
    serial = lab.machine(lab.machines[0]).serial_text()
    # the boot environment, network-booted through shim + GRUB, saw Secure Boot on ...
    netboot = serial[: serial.index("fleetcast-lab-report")]
    assert "fleetcast: firmware UEFI, Secure Boot on" in netboot, netboot[-3000:]
    # ... the server's GRUB config sent it to its disk, whose shim + GRUB booted the deployed kernel,
    # which saw Secure Boot on too (its GRUB has no "quiet")
    after = netboot[netboot.rindex("fleetcast boot environment") :]
    assert f"fleetcast: {sb.mac}: deployment done: booting from the local disk" in after
    assert SB_ENABLED in after, after[-3000:]


@pytest.mark.timeout(5400)
def test_pre_registered_mac_gets_its_csv_name_and_ip(lab: vlab.LabState, deployed: Deployed) -> None:
    sb = deployed.runs[0]
    assert sb.state == labdemo.BOOTED, sb.error
    assert (sb.hostname, sb.ip) == (SB_NAME, SB_IP)
    assert re.fullmatch(r"[0-9a-f]{32}", sb.machine_id or "")
    regs = {r["mac"]: r for r in vlab.api(lab, "GET", "/api/registrations")["registrations"]}
    assert (regs[sb.mac]["name"], regs[sb.mac]["ip"], regs[sb.mac]["boot"]) == (SB_NAME, SB_IP, "secureboot")


@pytest.mark.timeout(5400)
def test_unknown_machine_appears_with_its_inventory_and_waits(lab: vlab.LabState, deployed: Deployed) -> None:
    record = lab.machines[1]
    unknown = deployed.runs[1]
    clients = {c["mac"]: c for c in vlab.api(lab, "GET", "/api/clients")["clients"]}
    assert unknown.mac in clients
    c = clients[unknown.mac]
    assert c["disks"] and [d.get("size") for d in c["disks"]] == [DISK], c["disks"]
    assert c["ram_bytes"] and c["ram_bytes"] > 1 << 30
    # it came through the NIC's iPXE and its per-MAC script over HTTP, and the boot environment took the
    # address on the interface it booted from
    assert f"boot /boot/ipxe from {unknown.mac}" in vlab.server_log(lab).read_text(errors="replace")
    serial = lab.machine(record).serial_text()
    assert f"({unknown.mac}): asking for an address" in serial
    assert "fleetcast: firmware UEFI, Secure Boot off" in serial
    # enrolled with nothing to do: its next boot waits in the environment, not on its disk
    assert "registered: starting the boot environment" in deployed.script_before_capture
    # waiting: nothing queued or running for it, nothing deployed to it (a capture only reads its
    # disk), and it never booted its disk
    assert c["deployment_id"] is None, c
    for d in vlab.api(lab, "GET", "/api/deployments")["deployments"]:
        if d["kind"] == "deploy":
            targets = vlab.api(lab, "GET", f"/api/deployments/{d['deployment']}")["clients"]
            assert unknown.mac not in [t["mac"] for t in targets], d
    assert "fleetcast-lab-report" not in serial
    assert lab.machine(record).running()


@pytest.mark.timeout(5400)
def test_done_machine_boots_from_its_disk_on_next_power_on(lab: vlab.LabState, deployed: Deployed) -> None:
    sb, record = deployed.runs[0], lab.machines[0]
    assert sb.state == labdemo.BOOTED, sb.error
    machine = lab.machine(record)
    vlab.power_off(lab, record)
    since = len(machine.serial_text())
    vlab.power_on(lab, record)
    machine.wait_serial(rf"{SB_NAME} login:", 1200, since=since)
    after = machine.serial_text()[since:]
    assert "fleetcast boot environment" not in after
    # it did ask the server first (network before disk) ...
    assert f"fleetcast: {sb.mac}: deployment done: booting from the local disk" in after
    assert "lab-debian" in after  # ... and then GRUB's menu entry on its disk
    assert SB_ENABLED in after


@pytest.mark.timeout(5400)
def test_network_capture_of_a_netbooted_golden_machine(lab: vlab.LabState, deployed: Deployed) -> None:
    """Issue 11 in the lab (CAPTURE's check, riding on this lab's boots): client2, lab-debian on its disk,
    network-booted and captured over the network as lab-captured; the image is listed, and the Secure
    Boot client booted it (the asserts above)."""
    cap = deployed.capture
    assert cap["state"] == "done", cap.get("error")
    assert cap["image"] == CAPTURED and cap["image_id"], cap
    assert deployed.image == CAPTURED
    assert cap["client"] == lab.machines[1].mac
    assert cap["bytes_read"] > 100 << 20, cap
    # the golden disk is lab-debian's source, which the server's store holds: its chunks are all known,
    # so the capture sends little more than its index
    total = cap["chunks_known"] + cap["chunks_new"]
    assert total > 0 and cap["chunks_known"] >= 0.9 * total, cap
    assert cap["bytes_sent"] < cap["bytes_read"] // 20, cap
    names = [i["name"] for i in vlab.api(lab, "GET", "/api/images")["images"]]
    assert CAPTURED in names, names
