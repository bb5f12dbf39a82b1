"""``fleetcast windows ...`` through the CLI entry point: output, exit codes, exact error texts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.fixtures.windows_tree import TreeInfo, build_windows_tree, unpack

from fleetcast.cli.main import main


def test_unattend_prints_xml(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["windows", "unattend", "--name", "PC-1", "--ip", "10.0.0.1/24", "--mac", "52:54:00:00:00:01",
               "--timezone", "UTC", "--locale", "en-US", "--admin-password", "pw", "--skip-oobe"])  # fmt: skip  # noqa: E501
    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith('<?xml version="1.0" encoding="utf-8"?>\n<unattend')
    assert "<ComputerName>PC-1</ComputerName>" in out and "<HideEULAPage>true</HideEULAPage>" in out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["windows", "unattend", "--name", "bad name"], 2,
         "fleetcast: error: computer name 'bad name' contains characters Windows does not allow: ' '"),
        (["windows", "personalize", "/nonexistent-vol", "--name", "PC-1"], 1,
         "fleetcast: error: volume /nonexistent-vol is not a readable folder"),
        (["windows", "personalize", "/nonexistent-vol", "--name", "PC-1", "--sid-seed", "a b"], 2,
         "fleetcast: error: malformed SID seed 'a b': expected 1-64 characters from A-Z a-z 0-9 . _ : -"),
        (["windows", "personalize", "/nonexistent-vol", "--name", "PC-1", "--sid", "S-1-5-21-1-2"], 2,
         "fleetcast: error: SID 'S-1-5-21-1-2' is not a machine SID: expected S-1-5-21-<a>-<b>-<c> (no RID)"),
        (["windows", "personalize", "/nonexistent-vol", "--name", "PC-1", "--sid", "S-1-5-x"], 2,
         "fleetcast: error: malformed SID 'S-1-5-x': expected S-1-<authority>-<sub-authority>..., e.g. S-1-5-21-1-2-3"),  # noqa: E501
        (["windows", "personalize", "/nonexistent-vol", "--name", "PC-1", "--mac", "52:54:00:00:00:01"], 2,
         "fleetcast: error: --gateway, --dns and --mac go with --ip"),
        (["windows", "unattend", "--name", "PC-1", "--gateway", "10.0.0.1"], 2,
         "fleetcast: error: --gateway, --dns and --mac go with --ip"),
    ],
)  # fmt: skip
def test_errors(argv: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == code
    assert capsys.readouterr().err.splitlines()[0] == message


def test_personalize_inspect_doctor(tree: TreeInfo, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tree.root)
    assert main(["windows", "personalize", root, "--name", "CLI-1", "--sid-seed", "cli", "--json"]) == 0
    changes = json.loads(capsys.readouterr().out)["changes"]
    assert "SECURITY Policy\\PolAcDmN: STUDENT-PC8 -> CLI-1" in changes
    assert main(["windows", "inspect", root]) == 0
    text = capsys.readouterr().out
    assert "    ControlSet002: ComputerName=CLI-1; NV Hostname=CLI-1, Hostname=CLI-1" in text
    assert main(["windows", "doctor", root, "--json"]) == 1  # domain member: a blocker
    doc = json.loads(capsys.readouterr().out)
    assert [b["code"] for b in doc["blockers"]] == ["domain-member"]


def test_inspect_flags_sid_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.fixtures.windows_tree import build_windows_tree

    info = build_windows_tree(tmp_path / "m", sam_pair="regipy", with_acls=False)
    assert main(["windows", "inspect", str(info.root), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["sid_mismatch"] is True
    assert rep["machine_sid_sam"] == "S-1-5-21-1760460187-1592185332-161725925"
    assert rep["machine_sid_security"] == "S-1-5-21-1786693902-1815088602-2777321892"
    assert [h["dirty"] for h in rep["hives"]] == [False, False, False, True]
    assert rep["users"] == [
        {"rid": 500, "name": "Administrator"},
        {"rid": 501, "name": "Guest"},
        {"rid": 1000, "name": "Preston"},
    ]


def test_inspect_says_personalize_refuses_a_dirty_hive_without_logs(tmp_path: Path) -> None:
    """Issue 13 finding 7."""
    from fleetcast.identity.windows.inspect import inspect

    info = build_windows_tree(tmp_path / "d", sam_pair="winreg-kb", with_acls=False)
    unpack("regipy/SECURITY.xz", info.root / "Windows/System32/config/SECURITY")  # dirty, no logs
    assert (
        "SECURITY: dirty (sequence 107/106; no logs): personalize will refuse this hive: boot this Windows "
        "once and shut it down completely (Fast Startup off), or copy its .LOG1/.LOG2 beside it"
    ) in inspect(info.root).warnings


def test_personalize_wait_names_the_sid_change() -> None:
    """`fleetcast personalize --wait` prints the machine SID change from the agent's change lines."""
    from fleetcast.cli.personalize import sid_change

    changes = [
        "windows: SAM SAM\\Domains\\Account\\Users\\000001F4: V: S-1-5-21-1-2-3 -> S-1-5-21-4-5-6",
        "windows: SAM SAM\\Domains\\Account: V: S-1-5-21-1-2-3 -> S-1-5-21-4-5-6",
    ]
    assert sid_change(changes) == "machine SID S-1-5-21-1-2-3 -> S-1-5-21-4-5-6"
    assert sid_change(["windows: SYSTEM ...: ComputerName: A -> B"]) is None
