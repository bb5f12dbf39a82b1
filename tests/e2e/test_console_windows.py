"""Issue 9, the wizard's Windows options end to end: an NTFS image holding a Windows tree, one
`fleetcast agent` in a network namespace on a loop-device disk, Debian's Chromium through Playwright.
The wizard gives the client its address from an IP list, keeps the machine IDs, adds a storage driver
from the server's drivers folder and copies a given unattend.xml; the review says so in the words of
`deploy --plan`; on the written disk: the new name and SID, the driver installed, the answer file
copied, MachineGuid untouched."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from consolekit import browser, new_page, relay, set_password, shot
from playwright.sync_api import expect
from tests.fixtures.windows_tree import build_windows_tree

from fleetcast.identity.windows.inspect import inspect
from fleetcast.lab.deploy_demo import PORT, FleetLab
from fleetcast.lab.sample_disk import MiB, build_sample_disk, mount_partition

pytestmark = pytest.mark.e2e

STORAGE_INF = """[Version]
Signature="$WINDOWS NT$"
Class=SCSIAdapter
ClassGuid={4D36E97B-E325-11CE-BFC1-08002BE10318}
Provider=%ACME%
[Manufacturer]
%ACME% = Acme, NTamd64
[Acme.NTamd64]
%Ctrl.Desc% = acmestor_Inst, PCI\\VEN_1AF4&DEV_1001
[acmestor_Inst.NTamd64]
CopyFiles = acmestor.CopyFiles
[acmestor_Inst.NTamd64.Services]
AddService = acmestor, 0x00000002, acmestor_Service
[acmestor_Service]
ServiceType    = 1
StartType      = 0
ErrorControl   = 1
ServiceBinary  = %12%\\acmestor.sys
LoadOrderGroup = SCSI miniport
[Strings]
ACME = "Acme Storage"
Ctrl.Desc = "Acme Storage Controller"
"""
UNATTEND = (
    '<?xml version="1.0" encoding="utf-8"?>\n'
    '<unattend xmlns="urn:schemas-microsoft-com:unattend"><settings pass="oobeSystem"/></unattend>\n'
)


@pytest.fixture
def windows_lab(tmp_path: Path) -> Iterator[tuple[FleetLab, str]]:
    golden = tmp_path / "golden-win.img"
    build_sample_disk(golden, size=128 * MiB, fill=0.05, layout="gpt-esp-ntfs-ext4")
    with mount_partition(golden, 2) as root:
        golden_sid = str(build_windows_tree(root).machine_sid)
    with FleetLab(tmp_path, 1, disk_size=128 * MiB) as lab:
        lab.capture_image(golden, "win")
        golden.unlink()
        drivers = lab.data / "drivers" / "acme"
        drivers.mkdir(parents=True)
        (drivers / "acmestor.inf").write_text(STORAGE_INF)
        (drivers / "acmestor.sys").write_bytes(b"MZ-acme-storage-driver")
        lab.start_server()
        lab.add_disks()
        lab.start_agents()
        lab.wait_enrolled(1)
        yield lab, golden_sid


def test_wizard_windows_options_reach_the_disk(windows_lab: tuple[FleetLab, str]) -> None:
    lab, golden_sid = windows_lab
    (agent,) = lab.agents
    with relay(lab.net.server.name, lab.net.server.ip, PORT) as url, browser() as b:
        page = new_page(b)
        set_password(page, url)
        expect(page.locator("#connected")).to_have_text("1 client connected")
        page.get_by_role("link", name="Deploy", exact=True).click()
        page.get_by_label("Image to deploy").select_option("win")
        for step in range(1, 8):
            if step == 5:
                page.locator("#name").fill("WIN-{n:02}")
            if step == 6:
                page.get_by_label("A list (CSV)").check()
                page.get_by_label("IP list: one line per client", exact=False).fill(
                    f"{agent.node.mac},,10.77.0.121/24\n"
                )
                page.get_by_label("Gateway").fill("10.77.0.1")
                expect(page.locator("#ip-preview")).to_contain_text("10.77.0.121/24")
                page.set_viewport_size({"width": 768, "height": 1024})
                shot(page, "windows-06-ip-list-tablet")
                page.set_viewport_size({"width": 1366, "height": 768})
            if step == 7:
                page.get_by_label("Reset machine IDs", exact=False).uncheck()
                page.get_by_label("Drivers folder", exact=False).select_option("acme")
                page.get_by_label("This one:").check()
                page.get_by_label("unattend.xml document").fill(UNATTEND)
                shot(page, "windows-07-options")
                page.set_viewport_size({"width": 768, "height": 1024})  # a tablet
                shot(page, "windows-07-options-tablet")
                page.set_viewport_size({"width": 1366, "height": 768})
            page.get_by_role("button", name="Next").click()
            expect(page.locator(f'fieldset[data-step="{step + 1}"]')).to_be_visible()
        page.get_by_label("Nothing").check()
        page.get_by_role("button", name="Next").click()
        expect(page.locator("#review-windows")).to_have_text(
            "Windows: new machine SID, machine IDs kept, drivers from acme (1 INF), "
            f"unattend.xml given ({len(UNATTEND.encode())} B)"
        )
        shot(page, "windows-09-review")
        page.get_by_role("button", name="Start deployment").click()
        page.wait_for_url(re.compile(r".*/deployments/1$"))
        expect(page.locator("#dep-state")).to_have_text("done", timeout=600_000)
        expect(page.locator("#targets tbody tr")).to_contain_text("WIN-01")
        expect(page.locator("#targets tbody tr")).to_contain_text("10.77.0.121/24")
        shot(page, "windows-deployment-done")

    view = lab.get("/api/deployments/1")
    assert view["windows"] == {"new_sid": True, "reset_ids": False, "drivers": "acme", "drivers_infs": 1,
                               "unattend": "custom", "unattend_bytes": len(UNATTEND.encode())}  # fmt: skip
    changes = view["clients"][0]["changes"]
    assert "windows: file Windows/Panther/unattend.xml: copied from" in " ".join(changes)
    assert any("acmestor" in c for c in changes), changes
    assert not any("MachineGuid" in c for c in changes), changes  # reset IDs was off
    with mount_partition(agent.backing, 2, read_only=True) as root:
        assert (root / "Windows" / "Panther" / "unattend.xml").read_text() == UNATTEND
        assert (
            root / "Windows" / "System32" / "drivers" / "acmestor.sys"
        ).read_bytes() == b"MZ-acme-storage-driver"
        rep = inspect(root)
        assert {n["computer_name"] for n in rep.names} == {"WIN-01"}
        assert rep.machine_sid_sam == rep.machine_sid_security != golden_sid
