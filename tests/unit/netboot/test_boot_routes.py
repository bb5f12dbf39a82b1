"""The boot routes on a real app (SQLite): per-MAC iPXE/GRUB answers by client state, boot files,
registrations (single and CSV, all or nothing) and lab reports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fleetcast.server import boot
from fleetcast.server.app import create_app
from fleetcast.server.db import Client, Deployment, Target, utcnow
from fleetcast.server.settings import ServerSettings

MAC = "52:54:00:12:34:56"


class Kit:
    def __init__(self, http: TestClient, admin: str, enroll: str, app: Any) -> None:
        self.http, self.admin, self.enroll, self.app = http, admin, enroll, app

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin}"}

    def client_with_target(self, mac: str, state: str | None, dep_state: str = "running") -> None:
        with self.app.state.db.transaction() as s:
            c = Client(mac=mac, inventory={"macs": [mac]})
            s.add(c)
            s.flush()
            if state is None:
                return
            d = Deployment(image="golden", disk_rule="0", batch=1, state=dep_state, created_at=utcnow())
            s.add(d)
            s.flush()
            s.add(Target(deployment_id=d.id, client_id=c.id, position=1, mac=mac, state=state))


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    env = tmp_path / "bootenv"
    env.mkdir()
    (env / "vmlinuz").write_bytes(b"KERNEL" * 10)
    (env / "initrd.img").write_bytes(b"INITRD" * 10)
    settings = ServerSettings(data_dir=tmp_path / "data")
    app = create_app(settings)
    boot.configure(app, boot.BootConfig(bootenv_dir=env))
    with TestClient(app, base_url="http://10.0.0.1:8080") as http:
        admin = (settings.secrets_dir / "admin-token").read_text().strip()
        enroll = (settings.secrets_dir / "enroll-token").read_text().strip()
        yield Kit(http, admin, enroll, app)


def test_unknown_machine_boots_the_environment(kit: Kit) -> None:
    r = kit.http.get("/boot/ipxe", params={"mac": MAC.upper().replace(":", "-")})
    assert r.status_code == 200
    text = r.text
    assert text.startswith("#!ipxe\n")
    kernel = next(line for line in text.splitlines() if line.startswith("kernel "))
    words = kernel.split()
    assert words[1] == "http://10.0.0.1:8080/boot/file/vmlinuz"
    assert "fleetcast.server=http://10.0.0.1:8080" in words
    assert f"fleetcast.token={kit.enroll}" in words
    assert "BOOTIF=01-52-54-00-12-34-56" in words
    assert "initrd=initrd.img" in words
    assert "initrd http://10.0.0.1:8080/boot/file/initrd.img || goto failed" in text
    assert "new machine" in text
    # what the agent reads back from that line
    from fleetcast.agent.cmdline import parse

    got = parse(" ".join(words[2:]))
    assert (got.server, got.enroll_token, got.boot_mac) == ("http://10.0.0.1:8080", kit.enroll, MAC)


@pytest.mark.parametrize(
    ("state", "dep_state", "expect_exit", "word"),
    [
        (None, "running", False, "registered"),
        ("queued", "running", False, "deployment pending"),
        ("running", "running", False, "deployment pending"),
        ("done", "done", True, "deployment done"),
        ("failed", "failed", False, "registered"),
    ],
)
def test_script_by_state(kit: Kit, state: str | None, dep_state: str, expect_exit: bool, word: str) -> None:
    kit.client_with_target(MAC, state, dep_state)
    text = kit.http.get("/boot/ipxe", params={"mac": MAC}).text
    assert ("\niseq ${platform} efi && exit 1 || exit\n" in text) is expect_exit
    assert ("kernel " in text) is not expect_exit
    assert word in text
    grub = kit.http.get("/boot/grub", params={"mac": MAC}).text
    # root is set to the disk before the chainloader: GRUB builds the image's device path from $root
    local = "    set root=$fcdisk\n    chainloader /EFI/BOOT/BOOTX64.EFI\n"
    assert (local in grub) is expect_exit
    assert ("\nexit 1\n" in grub) is expect_exit
    if not expect_exit:
        assert "linux (http,10.0.0.1:8080)/boot/file/vmlinuz console=tty0" in grub
        assert "initrd (http,10.0.0.1:8080)/boot/file/initrd.img" in grub
    configs = boot.grub_mac_configs(kit.app.state.db, "http://10.0.0.1:8080", kit.enroll)
    assert list(configs) == [MAC]
    assert ("\nexit 1\n" in configs[MAC]) is expect_exit
    if not expect_exit:
        assert "linux (tftp,10.0.0.1)/bootenv/vmlinuz console=tty0" in configs[MAC]
        assert "BOOTIF=01-52-54-00-12-34-56" in configs[MAC]


def test_no_mac_chains_with_it(kit: Kit) -> None:
    for params in ({}, {"mac": "nonsense"}):
        r = kit.http.get("/boot/ipxe", params=params)
        assert r.text == "#!ipxe\nchain http://10.0.0.1:8080/boot/ipxe?mac=${net0/mac}\n"


def test_boot_files(kit: Kit) -> None:
    assert kit.http.get("/boot/file/vmlinuz").content == b"KERNEL" * 10
    r = kit.http.get("/boot/file/initrd.img", headers={"Range": "bytes=0-5"})
    assert r.status_code == 206 and r.content == b"INITRD"
    r = kit.http.get("/boot/file/passwd")
    assert r.status_code == 404
    assert r.json()["message"] == "boot file 'passwd' does not exist (there are vmlinuz and initrd.img)"
    r = kit.http.get("/boot/tftp/ipxe.efi")
    assert r.status_code == 200 and r.content[:2] == b"MZ"
    assert kit.http.get("/boot/tftp/..%2f..%2fetc%2fpasswd").status_code == 404


def test_lab_report_round_trip(kit: Kit) -> None:
    body = {"mac": MAC, "hostname": "LAB-01", "ip": "10.0.0.51", "machine_id": "ab" * 16, "secure_boot": True}
    r = kit.http.post("/api/lab/report", json=body)
    assert r.status_code == 200 and r.json() == {"ok": True, "mac": MAC}
    assert kit.http.get("/api/lab/reports").status_code == 401
    reports = kit.http.get("/api/lab/reports", headers=kit.auth).json()["reports"]
    assert len(reports) == 1
    assert {k: reports[0][k] for k in body} == body
    r = kit.http.post("/api/lab/report", json={**body, "mac": "not-a-mac"})
    assert r.status_code == 400


def test_register_single_and_duplicates(kit: Kit) -> None:
    r = kit.http.post(
        "/api/registrations", json={"mac": MAC, "name": "LAB-01", "ip": "10.0.0.51"}, headers=kit.auth
    )
    assert r.status_code == 201, r.text
    assert r.json()["mac"] == MAC
    r = kit.http.post("/api/registrations", json={"mac": MAC, "name": "LAB-09"}, headers=kit.auth)
    assert r.status_code == 409
    assert r.json()["message"] == f"MAC {MAC} is already registered (name LAB-01)"
    r = kit.http.post(
        "/api/registrations", json={"mac": "52:54:00:00:00:02", "name": "lab-01"}, headers=kit.auth
    )
    assert r.json()["message"] == f"name lab-01 is already registered to {MAC}"
    r = kit.http.post(
        "/api/registrations", json={"mac": "52:54:00:00:00:02", "ip": "10.0.0.400"}, headers=kit.auth
    )
    assert r.status_code == 400
    assert r.json()["message"] == "IP address '10.0.0.400' is not an IPv4 address (A.B.C.D or A.B.C.D/PREFIX)"


def test_csv_import_all_or_nothing(kit: Kit) -> None:
    kit.http.post("/api/registrations", json={"mac": MAC, "name": "LAB-01"}, headers=kit.auth)
    bad = "mac,name,ip\n52:54:00:00:00:02,LAB-02,10.0.0.52\n52:54:00:00:00:03,LAB-01,10.0.0.53\n"
    r = kit.http.post("/api/registrations/import", json={"csv": bad, "source": "lab.csv"}, headers=kit.auth)
    assert r.status_code == 400
    assert r.json()["message"] == (
        "lab.csv: 1 problem, nothing imported:\nline 3: name LAB-01 is already registered to " + MAC
    )
    regs = kit.http.get("/api/registrations", headers=kit.auth).json()["registrations"]
    assert [x["mac"] for x in regs] == [MAC]
    good = "52:54:00:00:00:02,LAB-02,10.0.0.52\n52:54:00:00:00:03,LAB-03,10.0.0.53/16,secureboot\n"
    r = kit.http.post("/api/registrations/import", json={"csv": good}, headers=kit.auth)
    assert r.status_code == 201 and r.json()["imported"] == 2
    regs = kit.http.get("/api/registrations", headers=kit.auth).json()["registrations"]
    assert [(x["mac"], x["name"], x["ip"], x["boot"]) for x in regs] == [
        ("52:54:00:00:00:02", "LAB-02", "10.0.0.52", "auto"),
        ("52:54:00:00:00:03", "LAB-03", "10.0.0.53/16", "secureboot"),
        (MAC, "LAB-01", None, "auto"),
    ]
    r = kit.http.delete("/api/registrations/52-54-00-00-00-02", headers=kit.auth)
    assert r.status_code == 200
    assert kit.http.delete("/api/registrations/52-54-00-00-00-02", headers=kit.auth).status_code == 404


def test_registrations_hook_gets_secure_boot_macs(kit: Kit, tmp_path: Path) -> None:
    seen: list[tuple[str, ...]] = []
    boot.configure(kit.app, boot.BootConfig(bootenv_dir=tmp_path, on_registrations=seen.append))
    kit.http.post("/api/registrations", json={"mac": MAC, "boot": "secureboot"}, headers=kit.auth)
    kit.http.post("/api/registrations", json={"mac": "52:54:00:00:00:02"}, headers=kit.auth)
    assert seen == [(MAC,), (MAC,)]


def test_registered_name_and_ip_go_into_a_deployment_without_patterns(kit: Kit) -> None:
    from fleetcast.server.plan import Assignment

    csv = f"{MAC},LAB-07,10.0.0.57\n52:54:00:00:00:02,,10.1.0.9/16\n"
    kit.http.post("/api/registrations/import", json={"csv": csv}, headers=kit.auth)
    plan = [
        Assignment(n=1, client_id=1, mac=MAC, name=None, ip=None),
        Assignment(n=2, client_id=2, mac="52:54:00:00:00:02", name=None, ip=None),
        Assignment(n=3, client_id=3, mac="52:54:00:00:00:03", name=None, ip=None),
    ]
    with kit.app.state.db.sessions() as s:
        got = boot.apply_registrations(s, plan, names=True, ips=True)
        assert [(a.name, a.ip) for a in got] == [
            ("LAB-07", "10.0.0.57/24"),
            (None, "10.1.0.9/16"),
            (None, None),
        ]
        listed = [Assignment(n=1, client_id=1, mac=MAC, name="LIST-1", ip="10.2.0.1/24")]  # from an IP list
        assert boot.apply_registrations(s, listed, names=True, ips=False) == listed
        pattern = [Assignment(n=1, client_id=1, mac=MAC, name="PC-01", ip="10.9.0.1/24")]
        assert boot.apply_registrations(s, pattern, names=False, ips=False) == pattern
        with pytest.raises(Exception, match="registered with the name 'LAB-07' \\(6 characters\\)"):
            boot.apply_registrations(s, plan, names=True, ips=False, max_name_length=5)


def test_boot_actions_in_bulk_match_one_by_one(kit: Kit) -> None:
    states = [None, "queued", "running", "done", "failed"]
    for i, state in enumerate(states):
        kit.client_with_target(f"52:54:00:00:01:{i:02x}", state, "done" if state == "done" else "running")
    kit.http.post("/api/registrations", json={"mac": "52:54:00:00:02:01"}, headers=kit.auth)
    with kit.app.state.db.sessions() as s:
        bulk = boot.boot_actions(s)
        single = {mac: boot.boot_action(s, mac) for mac in bulk}
    assert bulk == single
    assert [bulk[f"52:54:00:00:01:{i:02x}"].value for i in range(5)] == [
        "wait",
        "deploy",
        "deploy",
        "local",
        "wait",
    ]
    assert bulk["52:54:00:00:02:01"].value == "register"


def test_https_server_puts_its_certificate_fingerprint_on_the_kernel_line() -> None:
    from types import SimpleNamespace

    from fleetcast.agent.cmdline import parse
    from fleetcast.netboot.scripts import BootAction, grub_config, ipxe_script

    fp = "sha256:" + "ab" * 32
    app = SimpleNamespace(state=SimpleNamespace(settings=SimpleNamespace(tls_fingerprint=fp)))
    assert boot.tls_fingerprint(app) == fp  # type: ignore[arg-type]
    plain = SimpleNamespace(state=SimpleNamespace(settings=SimpleNamespace(tls_fingerprint=None)))
    assert boot.tls_fingerprint(plain) is None  # type: ignore[arg-type]
    url = "https://10.0.0.1:8443"
    for text in (
        ipxe_script(BootAction.WAIT, url, "tok", MAC, tls_fingerprint=fp),
        grub_config(BootAction.WAIT, url, "tok", MAC, tftp=True, tls_fingerprint=fp),
    ):
        line = next(ln for ln in text.splitlines() if ln.startswith(("kernel ", "linux ")))
        words = line.split(" ", 2)[2]
        assert f" fleetcast.tls={fp} " in f" {words} "
        assert parse(words).tls_fingerprint == "ab" * 32  # what the agent pins
    assert "fleetcast.tls" not in ipxe_script(BootAction.WAIT, url, "tok", MAC)
