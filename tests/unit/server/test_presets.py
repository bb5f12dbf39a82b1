"""Deployment presets: the IP list (CSV), address conflicts, Windows options; every refusal's exact text."""

from __future__ import annotations

from pathlib import Path

import pytest
from serverkit import IMAGE, Server

from fleetcast.errors import UsageError
from fleetcast.server.plan import Assignment, PlanClient
from fleetcast.server.presets import (
    WindowsOptions,
    apply_ip_list,
    check_unattend,
    check_windows,
    conflicts,
    list_driver_folders,
    parse_ip_list,
    unused_lines,
)

A, B, C = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"
PLAN = [Assignment(1, 1, A, "LAB-01", None), Assignment(2, 2, B, "LAB-02", None)]


def test_ip_list_lines_header_comments_and_names() -> None:
    text = (
        "mac,name,ip\n# the lab\n52-54-00-00-00-02, , 10.0.0.12/24\n\n52:54:00:00:00:01,PC-A,10.0.0.11/24\n"
    )
    entries = parse_ip_list(text)
    assert [(e.line, e.mac, e.name, e.ip) for e in entries] == [
        (3, B, None, "10.0.0.12/24"),
        (5, A, "PC-A", "10.0.0.11/24"),
    ]
    assert parse_ip_list("\ufeff" + text.replace("\n", "\r\n")) == entries  # spreadsheet CSV: BOM, CRLF
    planned = apply_ip_list(PLAN, entries, "10.0.0.1")
    assert [(a.n, a.name, a.ip) for a in planned] == [
        (1, "PC-A", "10.0.0.11/24"),
        (2, "LAB-02", "10.0.0.12/24"),
    ]
    assert unused_lines(entries, PLAN[:1]) == [f"IP list line 3 ({B}) is for a client not in this deployment"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the IP list is empty"),
        (f"{A},x", "IP list line 1 has 2 columns: expected MAC,NAME,IP"),
        (f"{A},,10.0.0.5", "IP list line 1: IP '10.0.0.5' has no prefix length"),
        (
            f"{A},,10.0.0.300/24",
            "IP list line 1: IP '10.0.0.300/24' is not an address/prefix such as 10.0.0.101/24",
        ),
        (f"{A},,10.0.0.0/24", "IP list line 1: 10.0.0.0/24 is the network address of 10.0.0.0/24"),
        (f"{A},,10.0.0.255/24", "IP list line 1: 10.0.0.255/24 is the broadcast address of 10.0.0.0/24"),
        (f"{A},,10.0.0.5/24\n{A},,10.0.0.6/24", f"IP list line 2: client {A} is already on line 1"),
        (
            f"{A},,10.0.0.5/24\n{B},,10.0.0.5/24",
            "IP list line 2: address 10.0.0.5 is already given to line 1",
        ),
        (
            "01:00:5e:00:00:01,,10.0.0.5/24",
            "IP list line 1: MAC address 01:00:5e:00:00:01 is a multicast address "
            "and cannot identify a machine",
        ),
        (f"{A},-bad-,10.0.0.5/24", "IP list line 1: computer name '-bad-' is not valid"),
        (f"{A},PC-{{n}},10.0.0.5/24", "IP list line 1: computer name 'PC-{n}' is not valid"),  # no pattern
    ],
)
def test_ip_list_refusals(text: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_ip_list(text)
    assert info.value.message == message


def test_ip_list_against_the_plan() -> None:
    entries = parse_ip_list(f"{A},,10.0.0.11/24\n")
    with pytest.raises(UsageError, match=rf"^client {B} \(number 2\) has no line in the IP list$"):
        apply_ip_list(PLAN, entries, None)
    both = parse_ip_list(f"{A},,10.0.0.11/24\n{B},,10.0.1.12/24\n")
    with pytest.raises(UsageError) as info:
        apply_ip_list(PLAN, both, "10.0.0.1")
    assert (
        info.value.message
        == "IP list line 2: gateway 10.0.0.1 is not in the network 10.0.1.0/24 of 10.0.1.12/24"
    )
    gw = parse_ip_list(f"{A},,10.0.0.1/24\n{B},,10.0.0.12/24\n")
    with pytest.raises(UsageError, match=r"^IP list line 1: 10.0.0.1/24 is the gateway's address$"):
        apply_ip_list(PLAN, gw, "10.0.0.1")
    same = parse_ip_list(f"{A},PC,10.0.0.11/24\n{B},PC,10.0.0.12/24\n")
    with pytest.raises(UsageError, match=r"^the computer name 'PC' is given to more than one client$"):
        apply_ip_list(PLAN, same, None)


def test_conflicts_name_the_client_that_has_the_address_now() -> None:
    enrolled = [PlanClient(1, A), PlanClient(2, B), PlanClient(3, C, hostname="spare")]
    planned = [Assignment(1, 1, A, "LAB-01", "10.0.0.11/24"), Assignment(2, 2, B, None, "10.0.0.12/24")]
    # client 1 keeping its own address is no conflict; client 3 holding 10.0.0.12 is
    found = conflicts(planned, enrolled, {1: "10.0.0.11", 2: "10.0.0.50", 3: "10.0.0.12"})
    assert found == [f"10.0.0.12 (for {B}) is the current address of client {C} (spare)"]
    assert conflicts(planned, enrolled, {3: ""}) == []


def test_unattend_values() -> None:
    assert check_unattend(" auto ") == "auto"
    assert check_unattend("none") == "none"
    doc = '<?xml version="1.0"?><unattend xmlns="urn:schemas-microsoft-com:unattend"/>'
    assert check_unattend(doc) == doc
    assert check_unattend(f"\n  {doc}\n") == f"{doc}\n"  # the document as given, from its first '<'
    with pytest.raises(UsageError) as info:
        check_unattend("<unattend><settings></unattend>")
    assert (
        info.value.message == "the unattend.xml is not well-formed XML: mismatched tag at line 1, column 23"
    )
    with pytest.raises(UsageError, match=r"^the unattend.xml has a DTD"):
        check_unattend('<!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>')
    with pytest.raises(
        UsageError, match=r"^unattend 'yes please' is not auto, none or an unattend.xml document$"
    ):
        check_unattend("yes please")


def test_windows_options_and_driver_folders(tmp_path: Path) -> None:
    (tmp_path / "drivers" / "nvme" / "sub").mkdir(parents=True)
    (tmp_path / "drivers" / "nvme" / "sub" / "stornvme.INF").write_text("[Version]\n")
    (tmp_path / "drivers" / "nvme" / "stornvme.sys").write_bytes(b"MZ")
    (tmp_path / "drivers" / "empty").mkdir()
    opts, infs = check_windows(WindowsOptions(drivers="nvme"), os_hint="windows", data_dir=tmp_path)
    assert infs == 1
    assert opts.summary(infs) == {
        "new_sid": True,
        "reset_ids": True,
        "drivers": "nvme",
        "drivers_infs": 1,
        "unattend": "auto",
        "unattend_bytes": 0,
    }
    assert [d["name"] for d in list_driver_folders(tmp_path)] == ["empty", "nvme"]
    cases = [
        (WindowsOptions(drivers="empty"), "windows", "driver folder 'empty' holds no .inf file"),
        (
            WindowsOptions(drivers="gone"),
            "windows",
            f"driver folder 'gone' does not exist on the server "
            f"(expected the folder {tmp_path / 'drivers' / 'gone'})",
        ),
        (
            WindowsOptions(drivers="../etc"),
            "windows",
            "driver folder name '../etc' is not valid: expected "
            "letters, digits, '.', '_' or '-' (at most 128)",
        ),
        (
            WindowsOptions(drivers="nvme", unattend="none"),
            "linux",
            "a driver folder and an unattend.xml only apply to Windows images, and this image holds linux",
        ),
    ]
    for options, os_hint, message in cases:
        with pytest.raises(UsageError) as info:
            check_windows(options, os_hint=os_hint, data_dir=tmp_path)
        assert info.value.message == message
    # SID and ID choices are fine on any image (a Linux personalizer resets its machine-id)
    assert check_windows(WindowsOptions(new_sid=False), os_hint="linux", data_dir=tmp_path)[1] is None


# -- through the API: body -> plan -> deployment -> the agent's task ----------------------------


def test_api_ip_list_windows_options_reach_the_task(server: Server) -> None:
    agents = [server.agent(m, f"pc{i}") for i, m in enumerate((A, B), start=1)]
    for agent in agents:
        agent.enroll()
    server.catalog.os_hint = "windows"
    drivers = server.settings.data_dir / "drivers" / "nvme"
    drivers.mkdir(parents=True)
    (drivers / "stornvme.inf").write_text("[Version]\n")
    ip_list = f"mac,name,ip\n{A},,10.0.0.11/24\n{B},SPARE-7,10.0.0.12/24\n{C},,10.0.0.13/24\n"
    unattend = '<unattend xmlns="urn:schemas-microsoft-com:unattend"/>'
    body = {"image": IMAGE, "clients": "all", "disk": "0", "name": "LAB-{n:02}", "ip_list": ip_list,
            "gateway": "10.0.0.1", "dns": "10.0.0.1", "new_sid": True, "reset_ids": False, "drivers": "nvme",
            "unattend": unattend}  # fmt: skip
    plan = server.post("/api/deployments/plan", body)
    assert [(c["name"], c["ip"]) for c in plan["clients"]] == [
        ("LAB-01", "10.0.0.11/24"),
        ("SPARE-7", "10.0.0.12/24"),
    ]
    assert (plan["ip_source"], plan["gateway"], plan["dns"]) == ("list", "10.0.0.1", ["10.0.0.1"])
    assert plan["notes"] == [f"IP list line 4 ({C}) is for a client not in this deployment"]
    assert plan["conflicts"] == []
    assert plan["windows"] == {"new_sid": True, "reset_ids": False, "drivers": "nvme", "drivers_infs": 1,
                               "unattend": "custom", "unattend_bytes": len(unattend)}  # fmt: skip
    dep = server.post("/api/deployments", {**body, "then": "none"}, status=201)
    assert dep["windows"]["unattend"] == "custom"
    assert server.get(f"/api/deployments/{dep['deployment']}")["windows"]["drivers"] == "nvme"
    task = agents[0].heartbeat()["task"]
    assert (task["name"], task["ip"], task["gateway"]) == ("LAB-01", "10.0.0.11/24", "10.0.0.1")
    assert (task["new_sid"], task["reset_ids"], task["drivers"], task["unattend"]) == (
        True,
        False,
        "nvme",
        unattend,
    )
    # a retry of the failed clients keeps the Windows options
    agents[0].result(task["task_id"], "failed", "disk too small")
    task_b = agents[1].heartbeat()["task"]
    agents[1].result(task_b["task_id"], "done")
    again = server.post(f"/api/deployments/{dep['deployment']}/retry", status=201)
    assert again["windows"] == plan["windows"]
    retried = agents[0].heartbeat()["task"]
    assert (retried["ip"], retried["drivers"], retried["reset_ids"]) == ("10.0.0.11/24", "nvme", False)


def test_api_plan_refusals(server: Server) -> None:
    for mac in (A, B):
        server.agent(mac).enroll()
    base = {"image": IMAGE, "clients": "all", "disk": "0"}
    auth = {"Authorization": f"Bearer {server.admin}"}
    both = {**base, "ip": "10.0.0.5/24", "ip_list": f"{A},,10.0.0.5/24"}
    r = server.http.post("/api/deployments/plan", json=both, headers=auth)
    assert (r.status_code, r.json()["message"]) == (
        400,
        "both an IP range (10.0.0.5/24) and an IP list are given",
    )
    r = server.http.post("/api/deployments/plan", json={**base, "drivers": "nvme"}, headers=auth)
    assert r.json()["message"] == "a driver folder only applies to Windows images, and this image holds linux"
    r = server.http.post("/api/deployments/plan", json={**base, "ip_list": f"{A},,10.0.0.5/24"}, headers=auth)
    assert r.json()["message"] == f"client {B} (number 2) has no line in the IP list"
    r = server.http.post("/api/deployments/plan", json={**base, "sid": "S-1-5-21-1-2-3"}, headers=auth)
    assert r.status_code == 422  # unknown keys are still refused
    plan = server.post("/api/deployments/plan", base)
    assert plan["windows"]["unattend"] == "auto" and plan["ip_source"] is None


def test_api_conflict_with_a_running_deployment(server: Server) -> None:
    for mac in (A, B):
        server.agent(mac).enroll()
    first = server.deploy(clients=A, ip="10.0.0.11/24")
    plan = server.post("/api/deployments/plan", {"image": IMAGE, "clients": B, "disk": "0",
                                                 "ip_list": f"{B},,10.0.0.11/24"})  # fmt: skip
    assert plan["conflicts"] == [
        f"10.0.0.11 (for {B}) is given to client {A} by deployment {first['deployment']}, "
        "which is still running"
    ]
    server.post(f"/api/deployments/{first['deployment']}/cancel")
    # cancelled before it started: nothing will write 10.0.0.11 any more
    again = server.post(
        "/api/deployments/plan", {"image": IMAGE, "clients": B, "disk": "0", "ip": "10.0.0.11/24"}
    )
    assert again["conflicts"] == []


def test_deploy_plan_lines_and_body(tmp_path: Path) -> None:
    """What `fleetcast deploy --plan` prints for the presets, and the body its flags make."""
    import argparse

    from fleetcast.cli.presets import plan_lines, presets_body

    plan = {"ip_source": "list", "conflicts": ["10.0.0.12 (for LAB-02) is the current address of client x"],
            "notes": ["IP list line 4 (y) is for a client not in this deployment"],
            "windows": {"new_sid": False, "reset_ids": True, "drivers": "nvme", "drivers_infs": 2,
                        "unattend": "custom", "unattend_bytes": 512}}  # fmt: skip
    assert plan_lines(plan) == [
        "windows: machine SID kept, machine IDs reset, drivers from nvme (2 INF), unattend.xml given (512 B)",
        "addresses from the IP list",
        "conflict: 10.0.0.12 (for LAB-02) is the current address of client x",
        "note: IP list line 4 (y) is for a client not in this deployment",
    ]
    xml = tmp_path / "unattend.xml"
    xml.write_bytes(b"\xef\xbb\xbf<unattend/>")
    args = argparse.Namespace(keep_sid=True, keep_ids=False, drivers="nvme", unattend=str(xml), ip_list=None)
    assert presets_body(args) == {
        "new_sid": False,
        "reset_ids": True,
        "drivers": "nvme",
        "unattend": "<unattend/>",
    }
    args.unattend, args.ip_list = "none", tmp_path / "missing.csv"
    with pytest.raises(UsageError, match=r"^cannot read the IP list .*missing.csv"):
        presets_body(args)


def test_api_registered_addresses_are_checked_and_list_names_win(server: Server) -> None:
    for mac in (A, B):
        server.agent(mac).enroll()
    first = server.deploy(clients=A, ip="10.0.0.50/24")
    server.post("/api/registrations", {"mac": B, "name": "REG-B", "ip": "10.0.0.50"}, status=201)
    plan = server.post("/api/deployments/plan", {"image": IMAGE, "clients": B, "disk": "0"})
    assert [(c["name"], c["ip"]) for c in plan["clients"]] == [("REG-B", "10.0.0.50/24")]  # registered
    assert plan["conflicts"] == [
        f"10.0.0.50 (for REG-B) is given to client {A} by deployment {first['deployment']}, "
        "which is still running"
    ]
    listed = server.post(
        "/api/deployments/plan",
        {"image": IMAGE, "clients": B, "disk": "0", "ip_list": f"{B},LIST-B,10.0.0.60/24"},
    )
    assert [(c["name"], c["ip"]) for c in listed["clients"]] == [("LIST-B", "10.0.0.60/24")]
    assert listed["conflicts"] == []
