"""Kit for the network-boot tests: a LAN of network namespaces that this test creates and removes.

    srv  (fleetcast serve + its dnsmasq; bridge br0 = 10.81.N.1/24, fd81:N::1/64)
     ├── veth ── cli   (the PXE client: eth0, no address; DHCP client = fleetcast.netboot.dhcp)
     └── veth ── site  (optional: the site's own DHCP server, a second dnsmasq; eth0 = 10.81.N.2/24)

Every process started here is ended by its PID, and the namespaces are deleted, also on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

FLEETCAST = Path(sys.executable).parent / "fleetcast"
PYTHON = sys.executable


@dataclass
class Lan:
    tag: str
    subnet: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    @property
    def srv(self) -> str:
        return f"{self.tag}-srv"

    @property
    def cli(self) -> str:
        return f"{self.tag}-cli"

    @property
    def site(self) -> str:
        return f"{self.tag}-site"

    @property
    def server_ip(self) -> str:
        return f"10.81.{self.subnet}.1"

    def ip(self, host: int) -> str:
        return f"10.81.{self.subnet}.{host}"

    def run(
        self, ns: str, argv: list[str], *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{ns}: {' '.join(argv)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def spawn(self, ns: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as fh:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=fh, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10) -> int:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def discover(
        self, mac: str, *, arch: int | None = 0, user_class: str | None = None, timeout: float = 4.5
    ) -> list[dict[str, Any]]:
        """A DHCPDISCOVER from the client namespace; every offer as a dict."""
        code = (
            "import json, sys\n"
            "from fleetcast.netboot import dhcp\n"
            f"uc = {user_class!r}\n"
            f"offers = dhcp.discover('eth0', {mac!r}, arch={arch!r}, user_class=uc.encode() if uc else None,"
            f" timeout={timeout})\n"
            "print(json.dumps([{'server': o.server_id, 'yiaddr': o.yiaddr, 'siaddr': o.siaddr,"
            " 'file': o.boot_file, 'vendor': o.vendor_class} for o in offers]))\n"
        )
        out = self.run(self.cli, [PYTHON, "-c", code], timeout=timeout + 20).stdout
        result: list[dict[str, Any]] = json.loads(out)
        return result

    def pxe_request(self, mac: str, ciaddr: str, *, arch: int = 7) -> dict[str, Any] | None:
        """The port-4011 request a UEFI PXE client sends a proxyDHCP server (from ``ciaddr``)."""
        code = (
            "import json\n"
            "from fleetcast.netboot import dhcp\n"
            f"r = dhcp.pxe_request({self.server_ip!r}, {mac!r}, {ciaddr!r}, arch={arch}, timeout=4)\n"
            "print(json.dumps(r and {'yiaddr': r.yiaddr, 'file': r.boot_file, 'type': r.message_type}))\n"
        )
        found: dict[str, Any] | None = json.loads(self.run(self.cli, [PYTHON, "-c", code]).stdout)
        return found


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@contextmanager
def lan(subnet: int, *, site: bool = False, client_ip: bool = False) -> Iterator[Lan]:
    """The namespaces above; ``site`` adds the site namespace, ``client_ip`` gives cli 10.81.N.50/24."""
    tag = f"fc-nb-{os.getpid() % 100000}-{subnet}"  # the area prefix of the team rules
    net = Lan(tag=tag, subnet=subnet)
    try:
        for ns in (net.srv, net.cli, *([net.site] if site else [])):
            _sh("ip", "netns", "add", ns)
            net.namespaces.append(ns)
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _sh(
            "ip",
            "-n",
            net.srv,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        )
        _sh("ip", "-n", net.srv, "addr", "add", f"{net.server_ip}/24", "dev", "br0")
        _sh("ip", "-n", net.srv, "addr", "add", f"fd81:{subnet}::1/64", "dev", "br0", "nodad")
        _sh("ip", "-n", net.srv, "link", "set", "br0", "up")
        peers = [(net.cli, "c")] + ([(net.site, "s")] if site else [])
        for ns, letter in peers:
            outer = f"nb{os.getpid() % 10000}{subnet}{letter}"
            _sh(
                "ip", "-n", net.srv, "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", ns
            )
            _sh("ip", "-n", net.srv, "link", "set", outer, "master", "br0", "up")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
        if site:
            _sh("ip", "-n", net.site, "addr", "add", f"{net.ip(2)}/24", "dev", "eth0")
        if client_ip:
            _sh("ip", "-n", net.cli, "addr", "add", f"{net.ip(50)}/24", "dev", "eth0")
        yield net
    finally:
        for proc in net.procs:
            net.stop(proc)
        for ns in net.namespaces:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


SITE_CONF = """port=0
interface=eth0
bind-interfaces
dhcp-range={start},{end},255.255.255.0,1h
dhcp-leasefile={leases}
pid-file=
no-ping
log-dhcp
"""


def site_dhcp(net: Lan, tmp: Path) -> subprocess.Popen[bytes]:
    """The site's DHCP server (a second dnsmasq) in the site namespace, leasing .150-.160."""
    conf = tmp / "site.conf"
    conf.write_text(SITE_CONF.format(start=net.ip(150), end=net.ip(160), leases=tmp / "site.leases"))
    proc = net.spawn(
        net.site,
        [shutil.which("dnsmasq") or "/usr/sbin/dnsmasq", f"--conf-file={conf}", "--keep-in-foreground",
         "--log-facility=-"],
        tmp / "site.log",
    )  # fmt: skip
    time.sleep(0.5)
    assert proc.poll() is None, (tmp / "site.log").read_text()
    return proc


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    data: Path
    url: str
    log: Path

    @property
    def admin(self) -> str:
        return (self.data / "secrets" / "admin-token").read_text().strip()


def serve(net: Lan, tmp: Path, *args: str, port: int = 8080, wait: float = 40) -> Served:
    """``fleetcast serve`` in the server namespace; waits until /api/health answers (from cli)."""
    data = tmp / "data"
    log = tmp / "serve.log"
    argv = [str(FLEETCAST), "serve", "--data", str(data), "--listen", f"0.0.0.0:{port}", *args]
    proc = net.spawn(net.srv, argv, log)
    url = f"http://{net.server_ip}:{port}"
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}:\n{log.read_text()}")
        r = net.run(net.srv, ["curl", "-sf", "--max-time", "2", f"{url}/api/health"], check=False)
        if r.returncode == 0:
            return Served(proc, data, url, log)
        time.sleep(0.3)
    raise AssertionError(f"serve did not answer within {wait} s:\n{log.read_text()}")


def api(net: Lan, served: Served, method: str, path: str, body: Any = None) -> httpx.Response:
    """An admin request from inside the server namespace (curl; the test process is outside it)."""
    argv = ["curl", "-s", "-X", method, "-H", f"Authorization: Bearer {served.admin}", "-w", "\n%{http_code}"]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
    out = net.run(net.srv, [*argv, f"{served.url}{path}"]).stdout
    text, _, code = out.rpartition("\n")
    return httpx.Response(int(code), content=text.encode())
