"""Tasks as the server hands them out (docs/agent-protocol.md ``Task``), parsed at the edge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleetcast.errors import AgentError

THEN_ACTIONS = ("reboot", "shutdown", "none")


@dataclass(frozen=True)
class Task:
    task_id: int
    deployment_id: int
    kind: str
    image: str
    image_size: int
    disk_rule: str
    grow: bool
    name: str | None
    ip: str | None
    gateway: str | None
    dns: tuple[str, ...]
    then: str
    resume_chunk: int
    attempt: int


def _get(raw: dict[str, Any], key: str, types: type | tuple[type, ...], *, optional: bool = False) -> Any:
    if key not in raw or raw[key] is None:
        if optional:
            return None
        raise AgentError(f"task from the server lacks {key!r}")
    value = raw[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise AgentError(f"task field {key!r}: expected {_names(types)}, found bool")
    if not isinstance(value, types):
        raise AgentError(f"task field {key!r}: expected {_names(types)}, found {type(value).__name__}")
    return value


def _names(types: type | tuple[type, ...]) -> str:
    seq = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in seq)


def parse_task(raw: object) -> Task:
    """Validate a task dict; raise AgentError naming the field, what was expected and what was found."""
    if not isinstance(raw, dict):
        raise AgentError(f"task from the server: expected an object, found {type(raw).__name__}")
    kind = _get(raw, "kind", str)
    if kind != "deploy":
        raise AgentError(f"task kind {kind!r} is not supported by this agent (supported: deploy)")
    then = _get(raw, "then", str, optional=True) or "none"
    if then not in THEN_ACTIONS:
        raise AgentError(f"task field 'then': expected one of {', '.join(THEN_ACTIONS)}, found {then!r}")
    dns = _get(raw, "dns", list, optional=True) or []
    if not all(isinstance(d, str) for d in dns):
        raise AgentError("task field 'dns': expected a list of strings")
    task = Task(
        task_id=_get(raw, "task_id", int),
        deployment_id=_get(raw, "deployment_id", int),
        kind=kind,
        image=_get(raw, "image", str),
        image_size=_get(raw, "image_size", int, optional=True) or 0,
        disk_rule=_get(raw, "disk_rule", str),
        grow=bool(_get(raw, "grow", bool, optional=True)),
        name=_get(raw, "name", str, optional=True),
        ip=_get(raw, "ip", str, optional=True),
        gateway=_get(raw, "gateway", str, optional=True),
        dns=tuple(dns),
        then=then,
        resume_chunk=_get(raw, "resume_chunk", int, optional=True) or 0,
        attempt=_get(raw, "attempt", int, optional=True) or 1,
    )
    if task.resume_chunk < 0:
        raise AgentError(f"task field 'resume_chunk': expected >= 0, found {task.resume_chunk}")
    return task
