"""The agent's personalization options: a task's Windows options become IdentitySettings, its driver
folder is unpacked safely, a given unattend.xml is written to a file; both are gone afterwards."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from fleetcast.agent.options import identity_settings, unpack_drivers
from fleetcast.errors import AgentError
from fleetcast.identity.windows.personalizer import Options
from fleetcast.protocol import Task


def _tar(entries: list[tuple[str, bytes | None, bytes]]) -> bytes:
    """(name, file bytes or None for a folder, tar type) entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, kind in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            if data is not None:
                info.size = len(data)
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


class FakeApi:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.asked: list[str] = []

    def drivers(self, name: str) -> bytes:
        self.asked.append(name)
        return self.data


def _task(**kw: object) -> Task:
    base = {"task_id": 4, "deployment_id": 2, "kind": "deploy", "image": "win", "disk_rule": "0",
            "name": "LAB-01", "ip": "10.0.0.11/24", "gateway": "10.0.0.1", "dns": ["10.0.0.1"]}  # fmt: skip
    return Task.model_validate({**base, **kw}, strict=False)


def test_task_options_become_identity_settings() -> None:
    data = _tar([("amd64", None, tarfile.DIRTYPE), ("amd64/stornvme.inf", b"[Version]\n", tarfile.REGTYPE)])
    api = FakeApi(data)
    task = _task(new_sid=True, reset_ids=False, drivers="nvme", unattend="<unattend/>")
    with identity_settings(task, api, "52:54:00:00:00:01") as s:
        assert (s.name, s.ip, s.gateway, s.dns) == ("LAB-01", "10.0.0.11/24", "10.0.0.1", ("10.0.0.1",))
        assert s.mac == "52:54:00:00:00:01"
        assert (s.new_sid, s.reset_ids) == (True, False)
        assert s.drivers is not None and (s.drivers / "amd64" / "stornvme.inf").read_bytes() == b"[Version]\n"
        unattend = Path(s.extra["unattend"])
        assert unattend.read_text() == "<unattend/>"
        opts = Options.from_settings(s)  # what the Windows personalizer gets
        assert (opts.new_sid, opts.reset_ids, opts.drivers, opts.unattend) == (
            True,
            False,
            s.drivers,
            str(unattend),
        )
        work = s.drivers.parent
    assert api.asked == ["nvme"]
    assert not work.exists()  # removed afterwards


def test_defaults_fetch_nothing() -> None:
    api = FakeApi(b"")
    with identity_settings(_task(), api, None) as s:
        assert (s.new_sid, s.reset_ids, s.drivers, s.extra) == (True, True, None, {"unattend": "auto"})
    assert api.asked == []


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([("../evil.inf", b"x", tarfile.REGTYPE)], "driver folder: entry '../evil.inf' leaves the folder"),
        ([("/abs.inf", b"x", tarfile.REGTYPE)], "driver folder: entry '/abs.inf' leaves the folder"),
        ([("link", None, tarfile.SYMTYPE)], "driver folder: entry 'link' is not a file or folder"),
    ],
)
def test_unsafe_tars_are_refused(
    tmp_path: Path, entries: list[tuple[str, bytes | None, bytes]], message: str
) -> None:
    with pytest.raises(AgentError) as info:
        unpack_drivers(_tar(entries), tmp_path)
    assert info.value.message == message
    assert list(tmp_path.iterdir()) == []
