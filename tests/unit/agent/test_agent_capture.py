"""agent/capture.py's RemoteSink against the real server app (in process): the engine captures a disk file
through it, the image appears on the server only at publish, restores to the same bytes, and a second
capture sends nothing the server has."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fleetcast.agent.api import AgentApi
from fleetcast.agent.capture import RemoteSink
from fleetcast.errors import TransportError
from fleetcast.server.app import create_app
from fleetcast.server.settings import ServerSettings
from fleetcast.store.capture import capture
from fleetcast.store.images import ImageStore
from fleetcast.store.restore import restore

sys.path.insert(0, str(Path(__file__).parents[1] / "server"))
from serverkit import Server

MiB = 1 << 20


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Server, TestClient]]:
    settings = ServerSettings(data_dir=tmp_path / "data", heartbeat_interval=0.5)
    app = create_app(settings)
    with TestClient(app) as http:
        admin = (settings.secrets_dir / "admin-token").read_text().strip()
        enroll = (settings.secrets_dir / "enroll-token").read_text().strip()
        yield Server(http, admin, enroll, app.state.catalog, settings), http


def _task(server: Server, name: str, agent: Any = None) -> tuple[Any, int, int]:
    agent = agent or server.agent("02:00:00:00:00:01", "golden")
    r = server.http.post(
        "/api/captures",
        json={"client": "golden", "name": name},
        headers={"Authorization": f"Bearer {server.admin}"},
    )
    assert r.status_code == 200, r.text
    task = agent.heartbeat()["task"]
    return agent, int(task["task_id"]), int(r.json()["capture"])


def _api(http: TestClient, credential: str) -> AgentApi:
    """An AgentApi whose HTTP client is a TestClient of the same app (requests from several threads)."""
    api = AgentApi("http://testserver", outage_limit=5)
    api.credential = credential
    api._client.close()
    client: Any = TestClient(http.app, headers={"Authorization": f"Bearer {credential}"})
    api._client = client
    return api


def test_capture_through_the_sink_publishes_and_dedupes(
    server: tuple[Server, TestClient], tmp_path: Path
) -> None:
    srv, http = server
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(3 * MiB) + bytes(2 * MiB) + os.urandom(MiB))
    store = ImageStore(srv.settings.store)

    agent, task_id, _ = _task(srv, "first")
    with RemoteSink(_api(http, agent.credential), task_id) as sink:
        capture(disk, "first", None, sink=sink, pack_size=MiB)
        assert sink.published is not None and sink.published.image == "first"
    first = sink.stats
    assert first.packs_sent >= 4 and first.have_known == 0
    assert store.names() == ["first"]
    out = tmp_path / "out.raw"
    restore(store.open("first"), store.source(), out)
    assert out.read_bytes() == disk.read_bytes()
    agent.result(task_id)

    agent, task_id, cid = _task(srv, "second", agent)
    with RemoteSink(_api(http, agent.credential), task_id) as sink:
        capture(disk, "second", None, sink=sink, pack_size=MiB)
    assert sink.stats.packs_sent == 0 and sink.stats.have_known == first.have_asked
    assert sink.stats.bytes_sent < first.bytes_sent / 20
    view = srv.get(f"/api/captures/{cid}")
    assert (view["chunks_new"], view["chunks_known"]) == (0, first.have_asked)


def test_leaving_without_publish_shows_nothing(server: tuple[Server, TestClient], tmp_path: Path) -> None:
    srv, http = server
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(2 * MiB))
    agent, task_id, _ = _task(srv, "abandoned")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), RemoteSink(_api(http, agent.credential), task_id) as sink:
        sink.have([b"\x00" * 32])
        raise Boom
    assert ImageStore(srv.settings.store).names() == []
    assert srv.get("/api/images")["images"] == []


def test_a_refused_task_stops_the_upload(server: tuple[Server, TestClient], tmp_path: Path) -> None:
    srv, http = server
    agent, task_id, _ = _task(srv, "refused")
    agent.result(task_id, state="failed", error="stopped")  # the task is no longer running
    with RemoteSink(_api(http, agent.credential), task_id) as sink, pytest.raises(TransportError) as err:
        sink.have([b"\x01" * 32])
    assert f"capture task {task_id} is failed, not running" in err.value.message


def test_a_re_capture_starts_from_the_previous_image_without_asking(
    server: tuple[Server, TestClient], tmp_path: Path
) -> None:
    """begin names the client's newest captured image; its index answers every unchanged chunk locally
    (no have request), its packs are leased for gc, and the counters still say how many were known."""
    from fleetcast.agent.capture import load_previous
    from fleetcast.protocol import CaptureBeginReply
    from fleetcast.server.capture import leased_packs

    srv, http = server
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(3 * MiB) + bytes(MiB) + os.urandom(2 * MiB))
    agent, task_id, _ = _task(srv, "gen1")
    api = _api(http, agent.credential)
    begin = CaptureBeginReply.model_validate_json(
        api._client.post(f"/api/agent/captures/{task_id}/begin").content
    )
    assert begin.previous is None  # the client's first capture
    with RemoteSink(api, task_id) as sink:
        capture(disk, "gen1", None, sink=sink, pack_size=MiB)
    first = sink.stats
    agent.result(task_id)

    with open(disk, "r+b") as f:  # one MiB of six changes
        f.seek(MiB)
        f.write(os.urandom(MiB))
    agent, task_id, cid = _task(srv, "gen2", agent)
    api = _api(http, agent.credential)
    begin = CaptureBeginReply.model_validate_json(
        api._client.post(f"/api/agent/captures/{task_id}/begin").content
    )
    assert begin.previous is not None and begin.previous.image == "gen1"
    gen1 = ImageStore(srv.settings.store).open("gen1")
    assert {p.id for p in gen1.packs} <= leased_packs(_db_of(http))
    loaded = load_previous(api, task_id, begin.previous, None, tmp_path)
    previous = loaded.chunks
    assert len(previous) == gen1.entry_count
    assert loaded.manifest is not None and loaded.manifest.image_id == gen1.image_id
    with RemoteSink(api, task_id, previous=previous) as sink:
        capture(disk, "gen2", None, sink=sink, pack_size=MiB)
    s = sink.stats
    assert s.reused == first.have_asked - 16 and s.have_asked == 16  # 16 windows of 64 KiB changed
    assert s.have_requests == 1 and s.packs_sent == 1
    view = srv.get(f"/api/captures/{cid}")
    assert (view["chunks_new"], view["chunks_known"]) == (16, first.have_asked - 16)
    out = tmp_path / "out.raw"
    store = ImageStore(srv.settings.store)
    restore(store.open("gen2"), store.source(), out)
    assert out.read_bytes() == disk.read_bytes()


def _db_of(http: TestClient) -> Any:
    app: Any = http.app
    return app.state.db


def test_previous_chunks_are_found_by_bisection() -> None:
    from fleetcast.agent.capture import PreviousChunks
    from fleetcast.store.index import Entry
    from fleetcast.store.manifest import PackRef

    packs = [PackRef("a" * 64, 10, "b" * 64), PackRef("c" * 64, 20, None)]  # format 1 pack: not usable
    digests = [bytes([i]) * 32 for i in range(0, 200, 3)]
    entries = [Entry(0, 0, i * 65536, i, d, ((0, 1),)) for i, d in enumerate(digests)]
    entries.append(Entry(0, 1, 0, 999, b"\xff" * 32, ((0, 1),)))
    prev = PreviousChunks.from_index(iter(entries), packs)
    assert len(prev) == len(digests)
    for i, d in enumerate(digests):
        assert prev.get(d) == ("a" * 64, i * 65536, 10, "b" * 64)
    assert prev.get(b"\x01" * 32) is None and prev.get(b"\xff" * 32) is None
    assert PreviousChunks().get(digests[0]) is None


def test_a_re_capture_of_ext4_does_not_read_unchanged_files_and_fetches_the_old_inode_tables(
    server: tuple[Server, TestClient], tmp_path: Path
) -> None:
    """Over the agent API: the previous image's inode-table chunks come from POST previous/chunks, the
    unchanged files' data is not read, and the published image restores to the disk as it is now."""
    from tests.fixtures.ext4_files import in_private_mount, make_ext4, random_files

    from fleetcast.agent.capture import RemotePrevious, load_previous
    from fleetcast.protocol import CaptureBeginReply
    from fleetcast.store.capture import CaptureStats

    srv, http = server
    tree = tmp_path / "tree"
    random_files(tree, 24, [300_000, 700_000])
    disk = make_ext4(tmp_path / "disk.img", tree, "32M")
    agent, task_id, _ = _task(srv, "e1")
    api = _api(http, agent.credential)
    api._client.post(f"/api/agent/captures/{task_id}/begin")
    with RemoteSink(api, task_id) as sink:
        capture(disk, "e1", None, sink=sink)
    agent.result(task_id)
    in_private_mount(disk, "printf 'new bytes' | dd of=d1/f1 bs=1 seek=5000 conv=notrunc status=none")

    agent, task_id, _ = _task(srv, "e2", agent)
    api = _api(http, agent.credential)
    begin = CaptureBeginReply.model_validate_json(
        api._client.post(f"/api/agent/captures/{task_id}/begin").content
    )
    assert begin.previous is not None
    loaded = load_previous(api, task_id, begin.previous, None, tmp_path)
    assert loaded.manifest is not None
    remote = RemotePrevious(api, task_id, loaded.manifest, lambda: False)
    stats = CaptureStats()
    with RemoteSink(api, task_id, previous=loaded.chunks) as sink:
        capture(disk, "e2", None, sink=sink, previous=remote, stats=stats)
    assert stats.unread_bytes > 10 * MiB  # 23 of the 24 files were not read
    assert remote.fetched > 0  # the changed inode's table window came from the server
    out = tmp_path / "out.img"
    store = ImageStore(srv.settings.store)
    restore(store.open("e2"), store.source(), out)
    assert out.read_bytes() == disk.read_bytes()
