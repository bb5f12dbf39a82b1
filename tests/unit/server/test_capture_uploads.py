"""server/capture_uploads.py: packs are received in memory up to a limit (files beyond it and for the
index), a cut-off body keeps what arrived, a resumed upload continues at its offset, an older request is
superseded, and the parts of tasks that ended are pruned."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleetcast.errors import ConflictError
from fleetcast.server.capture_uploads import Part, Superseded, Uploads


class Cut(Exception):
    pass


async def _body(pieces: list[bytes], *, cut: bool = False) -> AsyncIterator[bytes]:
    for p in pieces:
        yield p
    if cut:
        raise Cut


def _receive(uploads: Uploads, part: Part, offset: int, pieces: list[bytes], *, cut: bool = False) -> None:
    asyncio.run(uploads.receive(part, offset, _body(pieces, cut=cut), lambda n: None))


@pytest.mark.parametrize("memory", [True, False])
def test_a_cut_upload_keeps_what_arrived_and_resumes(tmp_path: Path, memory: bool) -> None:
    uploads = Uploads(tmp_path / "parts")
    data = bytes(range(256)) * 4096  # 1 MiB
    part = uploads.part("7-pack-abc", len(data), memory=memory)
    assert (part.data is not None) is memory
    with pytest.raises(Cut):
        _receive(uploads, part, 0, [data[:300_000], data[300_000:400_000]], cut=True)
    assert uploads.received("7-pack-abc", len(data)) == 400_000
    with pytest.raises(ConflictError, match="upload offset 500000 is past the 400000 bytes received"):
        _receive(uploads, part, 500_000, [data[500_000:]])
    _receive(uploads, part, 350_000, [data[350_000:]])  # resent from an earlier offset: truncated there
    assert part.complete and part.content() == data
    assert (tmp_path / "parts" / "7-pack-abc.part").is_file() is not memory
    uploads.drop("7-pack-abc")
    assert uploads.received("7-pack-abc", len(data)) == 0


def test_packs_beyond_the_memory_limit_go_to_files_and_ended_tasks_are_pruned(tmp_path: Path) -> None:
    uploads = Uploads(tmp_path / "parts", memory_limit=3 << 20)
    a = uploads.part("1-a-x", 2 << 20, memory=True)
    b = uploads.part("1-b-x", 2 << 20, memory=True)  # 4 MiB announced > 3 MiB: a file
    c = uploads.part("2-c-x", 1 << 20, memory=True)
    assert a.data is not None and b.data is None and c.data is not None
    _receive(uploads, b, 0, [b"x" * 10])
    uploads.prune(running={2})  # task 1 ended
    assert uploads.received("1-a-x", 2 << 20) == 0 and not (tmp_path / "parts" / "1-b-x.part").exists()
    assert uploads.part("3-d-x", 2 << 20, memory=True).data is not None  # a's room is free again


def test_an_older_request_stops_when_a_newer_one_takes_over(tmp_path: Path) -> None:
    uploads = Uploads(tmp_path / "parts")
    part = uploads.part("5-p-x", 100, memory=True)
    old = uploads.begin(part, 0)
    uploads.begin(part, 0)  # the agent's retry on a new connection
    with pytest.raises(Superseded):
        uploads._append(part, old, b"late")


def test_a_stopping_server_keeps_partial_in_memory_packs_for_after_its_restart(tmp_path: Path) -> None:
    uploads = Uploads(tmp_path / "parts")
    data = bytes(range(256)) * 4096
    part = uploads.part("7-pack-abc", len(data), memory=True)
    done = uploads.part("7-pack-def", 10, memory=True)
    with pytest.raises(Cut):
        _receive(uploads, part, 0, [data[:300_000]], cut=True)
    _receive(uploads, done, 0, [b"0123456789"])  # complete: being stored, not spilled
    assert uploads.spill() == 1
    restarted = Uploads(tmp_path / "parts")  # the server process after its restart
    assert restarted.received("7-pack-abc", len(data)) == 300_000
    again = restarted.part("7-pack-abc", len(data), memory=True)
    assert again.data is None and again.size == 300_000  # continued in its part file
    _receive(restarted, again, 300_000, [data[300_000:]])
    assert again.complete and again.content() == data
    assert restarted.received("7-pack-def", 10) == 0
    assert not list((tmp_path / "parts").glob("*.spill"))
