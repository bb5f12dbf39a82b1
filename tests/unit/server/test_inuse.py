"""Images in use (issue 12 item 9): a deployment that reads an image keeps it from ``image rm``
and its packs from ``store gc``, until its last target ends or ``--force`` cancels it."""

from __future__ import annotations

from typing import Any

import pytest
from serverkit import CHUNK_ID, IMAGE, Server

from fleetcast.errors import ConflictError
from fleetcast.server import inuse
from fleetcast.server.orchestrator import Orchestrator


def orch(server: Server) -> Orchestrator:
    o: Orchestrator = server.http.app.state.orchestrator
    return o


class Store:
    """The two calls protected_packs makes of an ImageStore."""

    class Manifest:
        def pack_ids(self) -> list[str]:
            return [CHUNK_ID]

    def open(self, name: str) -> Any:
        assert name == IMAGE
        return self.Manifest()


def test_an_image_in_use_is_refused_with_the_deployment_named(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    server.agent("52:54:00:00:00:02")
    dep = server.deploy()["deployment"]
    a.heartbeat()  # one running, one queued
    db = orch(server).db
    with pytest.raises(ConflictError) as err:
        inuse.check_removable(db, IMAGE)
    assert err.value.message == (
        f"image 'golden' is in use by deployment {dep} (running): its agents are still fetching it"
    )
    assert err.value.hint == (
        f"wait for it, or cancel it first: --force (or POST /api/deployments/{dep}/cancel)"
    )
    assert inuse.protected_packs(db, Store()) == {CHUNK_ID}
    inuse.check_removable(db, "other")  # another image is free


def test_the_lease_ends_with_the_last_target(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    server.deploy()
    task = a.heartbeat()["task"]
    db = orch(server).db
    assert [u.image for u in inuse.users(db)] == [IMAGE]
    a.result(task["task_id"], "done")
    assert inuse.users(db) == []
    inuse.check_removable(db, IMAGE)
    assert inuse.protected_packs(db, Store()) == set()


def test_force_cancels_first(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    server.agent("52:54:00:00:00:02")
    dep = server.deploy()["deployment"]
    task = a.heartbeat()["task"]
    assert inuse.release(orch(server), IMAGE, actor="cli") == [dep]
    view = server.get(f"/api/deployments/{dep}")
    assert view["state"] == "cancelling"
    assert [c["state"] for c in view["clients"]] == ["running", "cancelled"]
    with pytest.raises(ConflictError):  # the running agent has not stopped yet
        inuse.check_removable(orch(server).db, IMAGE)
    assert a.heartbeat(task["task_id"])["cancel"] is True
    a.result(task["task_id"], "cancelled", "cancelled")
    inuse.check_removable(orch(server).db, IMAGE)


def test_guard_remove(server: Server) -> None:
    server.agent("52:54:00:00:00:01")
    dep = server.deploy()["deployment"]
    db = orch(server).db
    with pytest.raises(ConflictError):
        inuse.guard_remove(db, server.settings.store, IMAGE, force=False, actor="root")
    assert inuse.guard_remove(db, server.settings.store, IMAGE, force=True, actor="root") == [dep]
    assert server.get(f"/api/deployments/{dep}")["state"] == "cancelled"  # nothing was running
    inuse.guard_remove(db, server.settings.store, IMAGE, force=False, actor="root")
    found = inuse.server_database(
        data=str(server.settings.data_dir), config_file=None, store=None, store_root=server.settings.store
    )
    assert found is not None and found.url == db.url
    found.close()
    other = inuse.server_database(
        data=str(server.settings.data_dir), config_file=None, store=None, store_root=server.settings.data_dir
    )
    assert other is None


def test_agent_is_told_its_image_is_gone_without_the_store_path(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    server.deploy()
    a.heartbeat()
    (server.settings.store / "images" / IMAGE / "manifest.json").unlink()
    r = server.http.get(f"/api/agent/images/{IMAGE}/manifest", headers=a.headers)
    assert r.status_code == 404
    assert r.json() == {
        "error": "ImageNotFound",
        "message": "image 'golden' is no longer on the server (removed while this task ran)",
        "hint": "ask the server's administrator; `fleetcast image list` there shows the images",
    }
    assert str(server.settings.store) not in r.text
