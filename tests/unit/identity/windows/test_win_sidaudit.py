"""The duplicate-SID audit's grouping and text, and the inventory of a real-hive tree (issue 13)."""

from __future__ import annotations

from tests.fixtures.windows_tree import TreeInfo

from fleetcast.identity.windows.sidaudit import (
    CONSEQUENCE,
    FIX,
    Installation,
    duplicate_groups,
    from_clients,
    inventory,
    render_text,
    to_json,
)

GOLD = "S-1-5-21-4070822719-3404542230-2541167049"


def _inst(client: str, sid: str, name: str) -> Installation:
    return Installation(client, "/dev/sda3", sid, name, "Windows 10 Pro 22H2 (build 19045)", None)


def test_groups_only_shared_sids_largest_first() -> None:
    installs = [
        _inst("pc-02", GOLD, "PC-02"),
        _inst("pc-01", GOLD.lower(), "PC-01"),
        _inst("pc-03", "S-1-5-21-1-2-3", "PC-03"),
        _inst("pc-04", "S-1-5-21-7-8-9", "PC-04"),
        _inst("pc-05", "S-1-5-21-7-8-9", "PC-05"),
        _inst("pc-06", GOLD, "PC-06"),
    ]
    groups = duplicate_groups(installs)
    assert [(g.machine_sid, [i.client for i in g.installations]) for g in groups] == [
        (GOLD, ["pc-01", "pc-02", "pc-06"]),
        ("S-1-5-21-7-8-9", ["pc-04", "pc-05"]),
    ]
    text = render_text(groups, len(installs))
    assert text.startswith("2 machine SID(s) shared among 6 Windows installation(s):\n")
    assert "  pc-01 /dev/sda3: PC-01 (Windows 10 Pro 22H2 (build 19045), workgroup)\n" in text
    assert f"consequence: {CONSEQUENCE}\nfix: {FIX}\n" in text
    assert to_json(groups)["groups"][1]["installations"][0]["client"] == "pc-04"
    assert render_text([], 3) == "no shared machine SID among 3 Windows installation(s)\n"


def test_inventory_of_a_tree(tree: TreeInfo) -> None:
    inv = inventory(tree.root)
    assert inv == {
        "machine_sid": GOLD,
        "computer_name": "WKS-WIN732BITA",  # the tree's SYSTEM comes from another machine than its SAM
        "version": "Windows 10 Pro, 22H2, build 19045.3803, edition Professional",
        "domain": "INTERNAL",
    }
    assert str(tree.machine_sid) == GOLD


def test_from_clients_marks_offline_clients_and_names_the_fix() -> None:
    def client(n: int, online: bool, windows: list[dict[str, object]]) -> dict[str, object]:
        return {"id": n, "hostname": f"pc-{n}", "mac": f"52:54:00:00:00:0{n}", "online": online,
                "windows": windows}  # fmt: skip

    win = {"disk": "/dev/sda", "partition": 3, "machine_sid": GOLD, "computer_name": "GOLDEN",
           "version": "Windows 10 Pro", "domain": None}  # fmt: skip
    installs, unreadable = from_clients([
        client(1, True, [win]), client(2, False, [win]),
        client(3, True, [{"disk": "/dev/sda", "partition": 2, "machine_sid": None, "error": "BitLocker"}]),
    ])  # fmt: skip
    (group,) = duplicate_groups(installs)
    assert group.command == "fleetcast personalize 52:54:00:00:00:01,52:54:00:00:00:02 --new-sid"
    lines = render_text([group], len(installs), unreadable).splitlines()
    assert lines[2:5] == [
        "  client 1 pc-1 (52:54:00:00:00:01) /dev/sda partition 3: GOLDEN (Windows 10 Pro, workgroup)",
        "  client 2 pc-2 (52:54:00:00:00:02) /dev/sda partition 3: GOLDEN (Windows 10 Pro, workgroup) "
        "[offline: as last reported]",
        "  fix: fleetcast personalize 52:54:00:00:00:01,52:54:00:00:00:02 --new-sid",
    ]
    assert lines[-1] == "not checked: client 3 pc-3 (52:54:00:00:00:03) /dev/sda partition 2: BitLocker"
