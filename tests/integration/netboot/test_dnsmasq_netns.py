"""Real dnsmasq under `fleetcast serve` in network namespaces: the boot file each firmware gets, proxy
mode beside a site DHCP server, refusals, TFTP and the per-MAC script over the LAN."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nbkit import FLEETCAST, api, lan, serve, site_dhcp

pytestmark = pytest.mark.integration

MAC = "52:54:00:fc:81:01"
SB_MAC = "52:54:00:fc:81:02"


def _dnsmasq_pids(data: Path) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-f", "--", f"--conf-file={data}/netboot/dnsmasq.conf"],
        capture_output=True,
        text=True,
        check=False,
    )
    return [int(p) for p in out.stdout.split()]


def test_full_mode_boot_file_per_firmware(tmp_path: Path) -> None:
    with lan(1) as net:
        served = serve(
            net, tmp_path, "--interface", "br0", "--dhcp", "full", "--range", f"{net.ip(100)}-{net.ip(120)}"
        )
        url = served.url
        bios = net.discover(MAC, arch=0)
        assert len(bios) == 1, bios
        offer = bios[0]
        assert offer["server"] == net.server_ip
        assert offer["yiaddr"].startswith(f"10.81.{net.subnet}.")
        assert 100 <= int(offer["yiaddr"].rsplit(".", 1)[1]) <= 120
        assert (offer["file"], offer["siaddr"]) == ("undionly.kpxe", net.server_ip)
        assert [o["file"] for o in net.discover(MAC, arch=7)] == ["snponly.efi"]
        assert [o["file"] for o in net.discover(MAC, arch=9)] == ["snponly.efi"]
        assert [o["file"] for o in net.discover(MAC, arch=0, user_class="iPXE")] == [
            f"{url}/boot/ipxe?mac=${{net0/mac}}"
        ]
        http = net.discover(MAC, arch=16)
        assert [(o["file"], o["vendor"]) for o in http] == [(f"{url}/boot/tftp/ipxe.efi", "HTTPClient")]
        # Secure Boot is per MAC: registering it restarts dnsmasq with the new tag
        r = api(
            net, served, "POST", "/api/registrations", {"mac": SB_MAC, "name": "SB-01", "boot": "secureboot"}
        )
        assert r.status_code == 201, r.text
        assert [o["file"] for o in net.discover(SB_MAC, arch=7)] == ["bootx64.efi"]
        assert [o["file"] for o in net.discover(MAC, arch=7)] == ["snponly.efi"]
        # the client, with the address it was offered, fetches iPXE by TFTP and its script by HTTP
        net.run(net.cli, ["ip", "addr", "add", f"{offer['yiaddr']}/24", "dev", "eth0"])
        got = tmp_path / "undionly.kpxe"
        net.run(
            net.cli,
            ["curl", "-sf", "--max-time", "20", "-o", str(got), f"tftp://{net.server_ip}/undionly.kpxe"],
        )
        assert got.read_bytes() == Path("/usr/lib/ipxe/undionly.kpxe").read_bytes()
        shim = tmp_path / "bootx64.efi"
        net.run(
            net.cli,
            ["curl", "-sf", "--max-time", "20", "-o", str(shim), f"tftp://{net.server_ip}/bootx64.efi"],
        )
        assert shim.read_bytes() == Path("/usr/lib/shim/shimx64.efi.signed").read_bytes()
        cfg = net.run(net.cli, ["curl", "-sf", f"tftp://{net.server_ip}/grub/grub.cfg"]).stdout
        assert f"set fc=(tftp,{net.server_ip})" in cfg
        mac_cfg = net.run(net.cli, ["curl", "-sf", f"tftp://{net.server_ip}/grub/mac/{SB_MAC}.cfg"]).stdout
        assert f"linux (tftp,{net.server_ip})/bootenv/vmlinuz console=tty0" in mac_cfg
        assert "BOOTIF=01-52-54-00-fc-81-02" in mac_cfg
        script = net.run(net.cli, ["curl", "-sf", f"{url}/boot/ipxe?mac={MAC}"]).stdout
        assert script.startswith("#!ipxe\n")
        assert f"kernel {url}/boot/file/vmlinuz " in script
        assert "BOOTIF=01-52-54-00-fc-81-01" in script
        pids = _dnsmasq_pids(served.data)
        assert len(pids) == 1
        assert net.stop(served.proc) == 0
        assert _dnsmasq_pids(served.data) == []  # stopped with the server
        log = served.log.read_text()
        assert "DHCPOFFER(br0)" in log  # dnsmasq's log is in fleetcast's
        assert "router advertisement" in log.lower()


def test_proxy_mode_never_offers_an_address(tmp_path: Path) -> None:
    with lan(2, site=True) as net:
        site_dhcp(net, tmp_path)
        served = serve(net, tmp_path, "--interface", "br0")  # no --range: proxy is the default
        offers = net.discover(MAC, arch=0)
        by_server = {o["server"]: o for o in offers}
        assert set(by_server) == {net.ip(2), net.server_ip}, offers
        site, ours = by_server[net.ip(2)], by_server[net.server_ip]
        assert 150 <= int(site["yiaddr"].rsplit(".", 1)[1]) <= 160
        assert ours["yiaddr"] == "0.0.0.0"
        assert ours["file"] == "undionly.kpxe"
        for arch, uc in ((7, None), (9, None), (0, "iPXE"), (7, "iPXE"), (16, None)):
            for o in net.discover(MAC, arch=arch, user_class=uc):
                if o["server"] == net.server_ip:
                    assert o["yiaddr"] == "0.0.0.0", (arch, uc, o)
        # UEFI HTTP boot (HTTPClient): dnsmasq's proxy ignores it; fleetcast's own responder answers
        http = [o for o in net.discover(MAC, arch=16) if o["server"] == net.server_ip]
        assert [(o["yiaddr"], o["file"], o["vendor"]) for o in http] == [
            ("0.0.0.0", f"http://{net.server_ip}:8080/boot/tftp/ipxe.efi", "HTTPClient")
        ], http
        ipxe = [o for o in net.discover(MAC, arch=7, user_class="iPXE") if o["server"] == net.server_ip]
        assert [o["file"] for o in ipxe] == [f"http://{net.server_ip}:8080/boot/ipxe?mac=${{net0/mac}}"]
        # UEFI PXE asks the proxy again on port 4011, from the address the site gave it
        net.run(net.cli, ["ip", "addr", "add", f"{site['yiaddr']}/24", "dev", "eth0"])
        ack = net.pxe_request(MAC, site["yiaddr"], arch=7)
        assert ack == {"yiaddr": "0.0.0.0", "file": "snponly.efi", "type": 5}
        # a MAC registered for Secure Boot gets shim from the proxy too
        r = api(net, served, "POST", "/api/registrations", {"mac": SB_MAC, "boot": "secureboot"})
        assert r.status_code == 201, r.text
        ack = net.pxe_request(SB_MAC, site["yiaddr"], arch=7)
        assert ack == {"yiaddr": "0.0.0.0", "file": "bootx64.efi", "type": 5}


def test_full_mode_refused_beside_another_dhcp_server(tmp_path: Path) -> None:
    with lan(3, site=True) as net:
        site_dhcp(net, tmp_path)
        data = tmp_path / "data"
        argv = [str(FLEETCAST), "serve", "--data", str(data), "--interface", "br0", "--dhcp", "full",
                "--range", f"{net.ip(100)}-{net.ip(120)}"]  # fmt: skip
        r = net.run(net.srv, argv, check=False)
        assert r.returncode == 2, r.stderr
        assert (
            f"fleetcast: error: another DHCP server answers on br0 ({net.ip(2)} offered 10.81.3.15"
            in r.stderr
        )
        assert "refusing to start a second one in full mode" in r.stderr
        assert "hint: use --dhcp proxy beside it" in r.stderr
        assert not data.exists()  # nothing started, nothing written
        assert _dnsmasq_pids(data) == []
        forced = serve(net, tmp_path, "--interface", "br0", "--dhcp", "full", "--force",
                       "--range", f"{net.ip(100)}-{net.ip(120)}")  # fmt: skip
        assert len(_dnsmasq_pids(forced.data)) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interface", "nosuch9"], "fleetcast: error: network interface 'nosuch9' does not exist"),
        (["--interface", "br0", "--dhcp", "full"], "fleetcast: error: --dhcp full needs --range START-END"),
        (
            ["--interface", "br0", "--dhcp", "dhcp"],
            "fleetcast: error: --dhcp 'dhcp' is not one of full, proxy, off",
        ),
        (
            ["--interface", "br0", "--range", "10.81.4.200-10.81.4.100"],
            "fleetcast: error: DHCP range '10.81.4.200-10.81.4.100': the end 10.81.4.100 comes before the "
            "start",
        ),
        (
            ["--interface", "br0", "--range", "10.81.5.100-10.81.5.120"],
            "fleetcast: error: DHCP range 10.81.5.100-10.81.5.120: 10.81.5.100 is not in br0's subnet "
            "10.81.4.0/24",
        ),
        (
            ["--interface", "br0", "--dhcp", "proxy", "--range", "10.81.4.100-10.81.4.120"],
            "fleetcast: error: --range is only for --dhcp full (the mode is proxy)",
        ),
        (["--dhcp", "full"], "fleetcast: error: --dhcp, --range and --force need --interface IF"),
        (
            ["--interface", "br0", "--listen", "127.0.0.1:8080"],
            "fleetcast: error: the server listens on 127.0.0.1 but clients on br0 would reach it at "
            "10.81.4.1",
        ),
    ],
)
def test_refusals_start_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    with lan(4) as net:
        data = tmp_path / "data"
        r = net.run(net.srv, [str(FLEETCAST), "serve", "--data", str(data), *args], check=False)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith(message), r.stderr
        assert not data.exists()


def test_csv_import_errors_name_lines(tmp_path: Path) -> None:
    csv = tmp_path / "room.csv"
    csv.write_text(
        "mac,name,ip\n52:54:00:00:00:01,PC-01,10.0.0.1\n52:54:00:00:00:01,PC-02,10.0.0.2\nnope,PC-03,\n"
    )
    r = subprocess.run(
        [str(FLEETCAST), "clients", "import", str(csv), "--server", "http://127.0.0.1:9", "--token", "x"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr == (
        f"fleetcast: error: {csv}: 2 problems, nothing imported:\n"
        "line 3: MAC 52:54:00:00:00:01 is also on line 2\n"
        "line 4: 'nope' is not a MAC address: expected aa:bb:cc:dd:ee:ff\n"
        "hint: fix the lines named and import the whole file again\n"
    )


SUPERVISE = """
import json, os, signal, sys, time
from pathlib import Path
from fleetcast.netboot.dnsmasq import DhcpMode, NetbootConfig
from fleetcast.netboot.supervisor import NetbootService

state = Path(sys.argv[1])
tftp = Path(sys.argv[3])  # readable by dnsmasq's user "nobody" (pytest's tmp_path is 0700)
svc = NetbootService(NetbootConfig("br0", DhcpMode.OFF, sys.argv[2], state, tftp_dir=tftp))
svc.start()
first = svc.pid
os.kill(first, signal.SIGKILL)
deadline = time.monotonic() + 15
while time.monotonic() < deadline and (svc.pid is None or svc.pid == first):
    time.sleep(0.1)
second = svc.pid
svc.reconfigure(secureboot_macs=("52:54:00:fc:81:09",))
third = svc.pid
conf = (state / "dnsmasq.conf").read_text()
svc.stop()
print(json.dumps({"first": first, "second": second, "third": third, "restarts": svc.restarts,
                  "after_stop": svc.pid, "tagged": "dhcp-mac=set:sb,52:54:00:fc:81:09" in conf}))
"""


def test_supervisor_restarts_dnsmasq_and_stops_it(tmp_path: Path) -> None:
    """The Python API the lab can use: a killed dnsmasq is started again (after ~1 s), a reconfigure
    restarts it with the new tags, stop() ends it."""
    import json

    tftp = Path(f"/run/fleetcast/tftp-test-{os.getpid()}")
    try:
        with lan(5) as net:
            url = f"http://{net.server_ip}:8080"
            out = net.run(
                net.srv, [sys.executable, "-c", SUPERVISE, str(tmp_path / "nb"), url, str(tftp)]
            ).stdout
    finally:
        shutil.rmtree(tftp, ignore_errors=True)
    got = json.loads(out.strip().splitlines()[-1])
    assert got["first"] and got["second"] and got["third"]
    assert len({got["first"], got["second"], got["third"]}) == 3
    assert got["restarts"] == 1
    assert got["after_stop"] is None
    assert got["tagged"]
    for pid in (got["first"], got["second"], got["third"]):
        cmdline = Path(f"/proc/{pid}/cmdline")
        assert not cmdline.exists() or b"dnsmasq" not in cmdline.read_bytes()


def test_uefi_boot_shim_sends_every_uefi_client_the_signed_chain(tmp_path: Path) -> None:
    with lan(8) as net:
        serve(
            net,
            tmp_path,
            "--interface",
            "br0",
            "--range",
            f"{net.ip(100)}-{net.ip(120)}",
            "--uefi-boot",
            "shim",
        )
        assert [o["file"] for o in net.discover(MAC, arch=7)] == ["bootx64.efi"]
        assert [o["file"] for o in net.discover(MAC, arch=9)] == ["bootx64.efi"]
        assert [o["file"] for o in net.discover(MAC, arch=0)] == ["undionly.kpxe"]


def test_sigkilled_serve_leaves_a_dnsmasq_the_next_start_ends(tmp_path: Path) -> None:
    """`fleetcast serve` SIGKILLed: its dnsmasq keeps running (the pidfile says which); the next serve
    with the same data ends it before starting its own, and a clean stop leaves nothing behind."""
    import json
    import signal
    import time

    from fleetcast.netboot.service import owner_file, tftp_dir_for

    with lan(9) as net:
        args = ("--interface", "br0", "--dhcp", "full", "--range", f"{net.ip(100)}-{net.ip(120)}")
        first = serve(net, tmp_path, *args)
        tftp = tftp_dir_for(first.data)
        try:
            (old,) = _dnsmasq_pids(first.data)
            info = json.loads((first.data / "netboot" / "dnsmasq.pid").read_text())
            assert info["pid"] == old and info["owner"] == first.proc.pid
            assert json.loads(owner_file(tftp).read_text())["pid"] == first.proc.pid
            os.kill(first.proc.pid, signal.SIGKILL)
            first.proc.wait()
            time.sleep(0.5)
            assert _dnsmasq_pids(first.data) == [old]  # the leftover: still there, still answering
            assert [o["file"] for o in net.discover(MAC, arch=0)] == ["undionly.kpxe"]
            second = serve(net, tmp_path, *args)
            (new,) = _dnsmasq_pids(first.data)
            assert new != old
            assert not Path(f"/proc/{old}/cmdline").exists() or not Path(f"/proc/{old}/cmdline").read_bytes()
            log = second.log.read_text()
            assert f"dnsmasq (pid {old}) of an earlier run (pid {first.proc.pid})" in log, log
            assert [o["file"] for o in net.discover(MAC, arch=0)] == ["undionly.kpxe"]
            assert json.loads((first.data / "netboot" / "dnsmasq.pid").read_text())["pid"] == new
            net.stop(second.proc)
            assert second.proc.returncode == 0, second.log.read_text()
            assert _dnsmasq_pids(first.data) == []
            assert not (first.data / "netboot" / "dnsmasq.pid").exists()
            assert not tftp.exists() and not owner_file(tftp).exists()
        finally:
            for pid in _dnsmasq_pids(first.data):  # a failed run: end what this test left
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(tftp, ignore_errors=True)
            owner_file(tftp).unlink(missing_ok=True)
