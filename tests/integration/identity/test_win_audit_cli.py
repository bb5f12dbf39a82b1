"""``fleetcast audit sids`` and the machine-SID column of ``fleetcast clients list`` against a real
``fleetcast serve`` on loopback, fed by enrollments and heartbeats whose inventories carry Windows
installations as the agent reports them (the agents themselves: tests/e2e/test_windows_deploy.py)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from tests.integration.server.servekit import Serve, cli, serve

from fleetcast.identity.windows.sidaudit import CONSEQUENCE, FIX

pytestmark = pytest.mark.integration

GOLD = "S-1-5-21-4070822719-3404542230-2541167049"
OTHER = "S-1-5-21-1111111111-2222222222-3333333333"
NEW = "S-1-5-21-1234567890-1234567890-1234567890"


def _win(sid: str | None, name: str, error: str | None = None) -> dict[str, Any]:
    return {
        "disk": "/dev/sda", "partition": 3, "machine_sid": sid, "computer_name": name,
        "version": "Windows 10 Pro, 22H2, build 19045", "domain": None, "error": error,
    }  # fmt: skip


def _inventory(mac: str, windows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"macs": [mac], "hostname": f"pc-{mac[-2:]}", "agent_version": "test", "windows": windows}


def _enroll(server: Serve, mac: str, windows: list[dict[str, Any]]) -> str:
    body = {"enroll_token": server.enroll, "inventory": _inventory(mac, windows), "credential": None}
    r = httpx.post(server.url + "/api/agent/enroll", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["credential"])


def _audit(server: Serve, *extra: str) -> tuple[int, str]:
    proc = cli("audit", "sids", "--server", server.url, "--token", server.admin, *extra, check=False)
    return proc.returncode, proc.stdout


def test_audit_lists_shared_sids_until_they_differ(tmp_path: Any) -> None:
    with serve(tmp_path / "data") as server:
        creds = {
            "52:54:00:00:00:01": _enroll(server, "52:54:00:00:00:01", [_win(GOLD, "GOLDEN")]),
            "52:54:00:00:00:02": _enroll(server, "52:54:00:00:00:02", [_win(GOLD, "GOLDEN")]),
            "52:54:00:00:00:03": _enroll(server, "52:54:00:00:00:03", [_win(OTHER, "LAB-03")]),
        }
        _enroll(server, "52:54:00:00:00:04", [_win(None, "", error="SAM is not a registry hive")])
        _enroll(server, "52:54:00:00:00:05", [])  # no Windows at all
        # an agent may not send a SID that is not a machine SID (the protocol's pattern)
        bad = {
            "enroll_token": server.enroll,
            "inventory": _inventory("52:54:00:00:00:06", [_win("S-1-5-18", "")]),
        }
        assert httpx.post(server.url + "/api/agent/enroll", json=bad, timeout=30).status_code == 422

        rc, out = _audit(server, "--json")
        assert rc == 1
        report = json.loads(out)
        assert report["installations"] == 3
        assert [(g["machine_sid"], [i["client"] for i in g["installations"]]) for g in report["groups"]] == [
            (GOLD, ["client 1 pc-01 (52:54:00:00:00:01)", "client 2 pc-02 (52:54:00:00:00:02)"])
        ]
        assert report["groups"][0]["installations"][0]["partition"] == "/dev/sda partition 3"
        assert report["groups"][0]["command"] == (
            "fleetcast personalize 52:54:00:00:00:01,52:54:00:00:00:02 --new-sid"
        )
        assert report["consequence"] == CONSEQUENCE and report["fix"] == FIX
        assert report["not_checked"] == [
            {"client": "client 4 pc-04 (52:54:00:00:00:04)", "partition": "/dev/sda partition 3",
             "error": "SAM is not a registry hive"}
        ]  # fmt: skip

        assert server.get("/api/audit/sids") == report  # the API gives the CLI's answer

        rc, text = _audit(server)
        assert rc == 1
        assert text.splitlines() == [
            "1 machine SID(s) shared among 3 Windows installation(s):",
            f"{GOLD}: 2 installations",
            "  client 1 pc-01 (52:54:00:00:00:01) /dev/sda partition 3: GOLDEN "
            "(Windows 10 Pro, 22H2, build 19045, workgroup)",
            "  client 2 pc-02 (52:54:00:00:00:02) /dev/sda partition 3: GOLDEN "
            "(Windows 10 Pro, 22H2, build 19045, workgroup)",
            "  fix: fleetcast personalize 52:54:00:00:00:01,52:54:00:00:00:02 --new-sid",
            f"consequence: {CONSEQUENCE}",
            f"fix: {FIX}",
            "not checked: client 4 pc-04 (52:54:00:00:00:04) /dev/sda partition 3: "
            "SAM is not a registry hive",
        ]
        listed = cli("clients", "list", "--server", server.url, "--token", server.admin).stdout
        rows = {line.split()[1]: line for line in listed.splitlines()[2:]}
        assert rows["52:54:00:00:00:01"].rstrip().endswith(f"{GOLD} (shared)")
        assert rows["52:54:00:00:00:03"].rstrip().endswith(OTHER)
        assert rows["52:54:00:00:00:04"].rstrip().endswith("unreadable")
        assert rows["52:54:00:00:00:05"].rstrip().endswith("-")
        assert listed.splitlines()[0].split()[-2:] == ["machine", "SID"]

        # client 2 got a new SID (as after a deploy): its next inventory ends the group
        inv = _inventory("52:54:00:00:00:02", [_win(NEW, "LAB-02")])
        r = httpx.post(
            server.url + "/api/agent/heartbeat", json={"inventory": inv, "task_id": None},
            headers={"Authorization": f"Bearer {creds['52:54:00:00:00:02']}"}, timeout=30,
        )  # fmt: skip
        assert r.status_code == 200, r.text
        rc, text = _audit(server)
        assert rc == 0
        assert text.splitlines()[0] == "no shared machine SID among 3 Windows installation(s)"
        clients = server.get("/api/clients")["clients"]
        assert [w["machine_sid"] for c in clients for w in c["windows"]] == [GOLD, NEW, OTHER, None]


def test_personalize_refuses_what_changes_nothing_or_no_client(tmp_path: Any) -> None:
    with serve(tmp_path / "data") as server:
        cred = _enroll(server, "52:54:00:00:00:01", [_win(GOLD, "GOLDEN")])
        args = ["--server", server.url, "--token", server.admin]
        proc = cli("personalize", "all", *args, check=False)
        assert proc.returncode == 2
        assert proc.stderr.splitlines() == [
            "fleetcast: error: nothing to personalize: no new SID, no ID reset and no name",
            "hint: add --new-sid (what clones sharing a machine SID need) or --name PATTERN",
        ]
        proc = cli("personalize", "52:54:00:00:00:09", "--new-sid", *args, check=False)
        assert proc.returncode != 0
        assert proc.stderr.splitlines()[0] == "fleetcast: error: client 52:54:00:00:00:09 is not enrolled"
        proc = cli("personalize", "all", "--new-sid", "--disk", "nonsense", *args, check=False)
        assert proc.returncode == 2 and "nonsense" in proc.stderr
        # queued: the one client gets a task of kind personalize with new_sid
        out = json.loads(
            cli("personalize", "all", "--new-sid", "--name", "LAB-{n:02}", *args, "--json").stdout
        )
        assert out["clients"] == ["52:54:00:00:00:01"]
        assert server.get("/api/deployments")["deployments"][0]["image"] == ""
        r = httpx.post(
            server.url + "/api/agent/heartbeat", json={"inventory": None, "task_id": None},
            headers={"Authorization": f"Bearer {cred}"}, timeout=30,
        )  # fmt: skip
        task = r.json()["task"]
        assert (task["kind"], task["name"], task["new_sid"], task["reset_ids"], task["disk_rule"]) == (
            "personalize", "LAB-01", True, False, "0",
        )  # fmt: skip
