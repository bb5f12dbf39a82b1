"""Test kit: a fake one-image catalog, a server handle on TestClient and an agent that speaks the protocol."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from fleetcast.errors import ImageNotFound
from fleetcast.server.images import ImageCatalog, ImageInfo, check_chunk_id, check_name
from fleetcast.server.settings import ServerSettings

CHUNK_ID = "ab" * 32
CHUNK_BYTES = b"\x28\xb5\x2f\xfd stored chunk bytes"
IMAGE = "golden"
IMAGE_SIZE = 64 << 20


class FakeCatalog(ImageCatalog):
    """One image, ``golden``, with a manifest file and one chunk file on disk."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        (root / "images" / IMAGE).mkdir(parents=True)
        self.manifest = json.dumps({"name": IMAGE, "disk": {"size": IMAGE_SIZE}}).encode() + b"\n"
        (root / "images" / IMAGE / "manifest.json").write_bytes(self.manifest)
        (root / "chunks" / CHUNK_ID[:2]).mkdir(parents=True)
        (root / "chunks" / CHUNK_ID[:2] / CHUNK_ID).write_bytes(CHUNK_BYTES)
        self.os_hint: str | None = "linux"

    def info(self, name: str) -> ImageInfo:
        check_name(name)
        if name != IMAGE:
            raise ImageNotFound(f"image {name!r} does not exist in the store {self.root}")
        return ImageInfo(IMAGE, IMAGE_SIZE, 512, self.os_hint, "2026-01-01T00:00:00+00:00", 1, 20, 4096)

    def list(self) -> list[ImageInfo]:  # the real one reads the store's listing cache
        return [self.info(IMAGE)]

    def pack_ids(self, name: str) -> frozenset[str]:
        self.info(name)
        return frozenset({CHUNK_ID, "cd" * 32})

    def chunk_path(self, chunk_id: str) -> Path:
        check_chunk_id(chunk_id)
        path = self.root / "chunks" / chunk_id[:2] / chunk_id
        if not path.is_file():
            from fleetcast.server.images import ChunkNotFound

            raise ChunkNotFound(f"chunk {chunk_id} is not in the server's store")
        return path


@dataclass
class Server:
    http: TestClient
    admin: str
    enroll: str
    catalog: FakeCatalog
    settings: ServerSettings

    def get(self, path: str, **kw: Any) -> Any:
        r = self.http.get(path, headers={"Authorization": f"Bearer {self.admin}"}, **kw)
        assert r.status_code == 200, r.text
        return r.json()

    def post(self, path: str, body: Any = None, status: int = 200) -> Any:
        r = self.http.post(path, json=body, headers={"Authorization": f"Bearer {self.admin}"})
        assert r.status_code == status, r.text
        return r.json()

    def deploy(self, **body: Any) -> dict[str, Any]:
        body = {"image": IMAGE, "clients": "all", "disk": "0", "batch": 1, "then": "none", **body}
        result: dict[str, Any] = self.post("/api/deployments", body, status=201)
        return result

    def agent(self, mac: str, hostname: str = "pc") -> Agent:
        return Agent(self, mac, hostname)


def inventory(mac: str, hostname: str) -> dict[str, Any]:
    return {
        "macs": [mac],
        "hostname": hostname,
        "cpu": {"model": "test cpu", "cores": 2},
        "ram_bytes": 1 << 30,
        "dmi": {"vendor": "QEMU", "model": "Standard PC", "serial": mac},
        "disks": [
            {
                "path": "/dev/loop7",
                "size": 128 << 20,
                "logical_sector_size": 512,
                "physical_sector_size": 512,
                "model": None,
                "serial": None,
                "wwn": None,
                "removable": False,
                "rotational": False,
            }
        ],
        "agent_version": "0.1.0",
    }


class Agent:
    def __init__(self, server: Server, mac: str, hostname: str) -> None:
        self.server = server
        self.mac = mac
        self.hostname = hostname
        self.client_id = 0
        self.credential = ""
        self.enroll()

    def enroll(self) -> None:
        r = self.server.http.post(
            "/api/agent/enroll",
            json={
                "enroll_token": self.server.enroll,
                "inventory": inventory(self.mac, self.hostname),
                "credential": self.credential or None,  # what the real agent keeps in its state dir
            },
        )
        assert r.status_code == 200, r.text
        self.client_id = r.json()["client_id"]
        self.credential = r.json()["credential"]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credential}"}

    def call(self, path: str, body: Any, status: int = 200) -> Any:
        r = self.server.http.post(path, json=body, headers=self.headers)
        assert r.status_code == status, r.text
        return r.json()

    def heartbeat(self, task_id: int | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.call("/api/agent/heartbeat", {"inventory": None, "task_id": task_id})
        return result

    def progress(
        self,
        task_id: int,
        phase: str = "writing",
        done: int = 0,
        checkpoint: int = 0,
        disk: str = "/dev/loop7",
    ) -> dict[str, Any]:
        body = {
            "phase": phase,
            "bytes_done": done,
            "bytes_total": IMAGE_SIZE,
            "rate_bps": 1e6,
            "eta_seconds": 10.0,
            "checkpoint_chunk": checkpoint,
            "disk": disk,
        }
        result: dict[str, Any] = self.call(f"/api/agent/tasks/{task_id}/progress", body)
        return result

    def result(self, task_id: int, state: str = "done", error: str | None = None) -> None:
        body = {
            "state": state,
            "error": error,
            "disk": "/dev/loop7",
            "action": "none",
            "changes": ["hostname"],
        }
        assert self.call(f"/api/agent/tasks/{task_id}/result", body) == {}
