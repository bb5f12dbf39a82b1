"""Parsing tasks from the server with fleetcast.protocol (exact error texts) and the state file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleetcast.agent.state import StateStore, TaskState
from fleetcast.errors import AgentError
from fleetcast.protocol import parse_task

GOOD: dict[str, Any] = {
    "task_id": 1,
    "deployment_id": 2,
    "kind": "deploy",
    "image": "img",
    "image_size": 100,
    "disk_rule": "0",
    "grow": True,
    "name": "LAB-01",
    "ip": "10.0.0.101/24",
    "gateway": "10.0.0.1",
    "dns": ["10.0.0.2"],
    "then": "reboot",
    "resume_chunk": 4,
    "attempt": 2,
}


def test_parse_good() -> None:
    t = parse_task(GOOD)
    assert (t.task_id, t.deployment_id, t.image, t.grow, t.dns, t.then, t.resume_chunk) == (
        1,
        2,
        "img",
        True,
        ["10.0.0.2"],
        "reboot",
        4,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"task_id": None},
            "task from the server: field 'task_id': Input should be a valid integer (found NoneType)",
        ),
        (
            {"task_id": "1"},
            "task from the server: field 'task_id': Input should be a valid integer (found str)",
        ),
        (
            {"task_id": True},
            "task from the server: field 'task_id': Input should be a valid integer (found bool)",
        ),
        (
            {"kind": "backup"},
            "task kind 'backup' is not supported by this agent (supported: deploy, capture, personalize)",
        ),
        ({"then": "explode"}, "task field 'then': expected one of reboot, shutdown, none, found 'explode'"),
        ({"dns": [1]}, "task from the server: field 'dns.0': Input should be a valid string (found int)"),
        (
            {"resume_chunk": -1},
            "task from the server: field 'resume_chunk': "
            "Input should be greater than or equal to 0 (found int)",
        ),
        ({"grow": "yes"}, "task from the server: field 'grow': Input should be a valid boolean (found str)"),
    ],
)
def test_parse_bad(change: dict[str, Any], message: str) -> None:
    with pytest.raises(AgentError) as info:
        parse_task({**GOOD, **change})
    assert str(info.value) == message


def test_parse_not_object() -> None:
    with pytest.raises(AgentError) as info:
        parse_task([1])
    assert str(info.value) == "task from the server: expected an object, found list"


def test_state_round_trip(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "st")
    assert store.load() is None
    state = TaskState("http://s", 1, 2, "img", "/dev/loop9", 17)
    store.save(state)
    assert store.load() == state
    store.clear()
    assert store.load() is None


def test_state_garbage_is_ignored(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.path.write_text("{not json")
    assert store.load() is None
    store.path.write_text('{"server": "s"}')
    assert store.load() is None
