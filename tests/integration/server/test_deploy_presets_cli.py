"""`fleetcast deploy --plan` with an IP list and Windows options against a real `fleetcast serve`: the
text it prints, and its JSON is what the console's wizard gets for the same body (one plan)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from servekit import SimAgent, cli, json_out, make_image, serve

pytestmark = pytest.mark.integration

MACS = ["52:54:00:12:35:02", "52:54:00:12:35:01"]


def test_deploy_plan_with_ip_list_and_windows_options(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_image(data / "store", "tiny")
    ip_list = tmp_path / "room.csv"
    ip_list.write_text(f"mac,name,ip\n{MACS[1]},PC-A,10.0.0.11/24\n{MACS[0]},,10.0.0.12/24\n")
    with serve(data) as server:
        for mac in MACS:
            SimAgent(server, mac).enroll()
        common = ["--server", server.url, "--token", server.admin, "--clients", "all", "--disk", "0"]
        common += ["--name", "LAB-{n:02}", "--ip-list", str(ip_list), "--gateway", "10.0.0.1", "--keep-ids"]
        text = cli("deploy", "tiny", *common, "--plan").stdout.splitlines()
        assert text[0] == "image tiny -> 2 client(s), disk rule '0'"
        assert text[-3:] == [
            "gateway 10.0.0.1, dns -",
            "windows: new machine SID, machine IDs kept, no drivers added, unattend.xml by fleetcast",
            "addresses from the IP list",
        ]
        plan = json_out(cli("deploy", "tiny", *common, "--plan", "--json"))
        assert [(c["mac"], c["name"], c["ip"]) for c in plan["clients"]] == [
            (MACS[1], "PC-A", "10.0.0.11/24"),
            (MACS[0], "LAB-02", "10.0.0.12/24"),
        ]
        # the wizard's body for the same choices gets the same plan
        body = {"image": "tiny", "clients": "all", "disk": "0", "name": "LAB-{n:02}", "ip": None,
                "ip_list": ip_list.read_text(), "gateway": "10.0.0.1", "dns": "", "new_sid": True,
                "reset_ids": False, "drivers": None, "unattend": "auto", "then": "reboot"}  # fmt: skip
        r = httpx.post(server.url + "/api/deployments/plan", json=body, headers=server.headers)
        assert r.status_code == 200, r.text
        assert r.json() == plan
        bad = cli("deploy", "tiny", *common, "--ip", "10.0.0.5/24", "--plan", check=False)
        assert (bad.returncode, bad.stderr.splitlines()[0]) == (
            2,
            "fleetcast: error: both an IP range (10.0.0.5/24) and an IP list are given",
        )
        not_xml = cli("deploy", "tiny", *common, "--unattend", str(ip_list), "--plan", check=False)
        assert not_xml.stderr.splitlines()[0] == (
            "fleetcast: error: unattend 'mac,name,ip\\n52:54:00:12:35:01,PC-A,10.0.' is not auto, none or an "
            "unattend.xml document"
        )
