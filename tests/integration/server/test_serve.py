"""`fleetcast serve` as a real process on 127.0.0.1 with its SQLite file: tokens, 401s, the whole
deploy flow through the CLI with simulated agents, live SSE."""

from __future__ import annotations

import json
import stat
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from servekit import cli, deploy_flow, make_image, serve

pytestmark = pytest.mark.integration


def test_serve_sqlite_deploy_flow(tmp_path: Path) -> None:
    data = tmp_path / "data"
    token_before = cli("--data", str(data), "admin", "token").stdout.strip()
    manifest = make_image(data / "store")
    with serve(data) as server:
        assert server.admin == token_before
        assert stat.S_IMODE((data / "secrets" / "admin-token").stat().st_mode) == 0o600
        assert (data / "fleetcast.db").is_file()
        r = httpx.get(server.url + "/api/clients")
        assert r.status_code == 401
        assert r.json()["error"] == "AuthError"
        assert httpx.get(server.url + "/api/openapi.json").json()["info"]["title"] == "fleetcast"
        assert server.get("/api/images")["images"][0]["chunks"] == len(manifest.chunk_ids())

        live: list[dict[str, Any]] = []

        def listen() -> None:
            with httpx.stream("GET", server.url + "/api/events", headers=server.headers, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        live.append(json.loads(line[6:]))
                        if live[-1]["type"] == "deployment-finished":
                            return

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        result = deploy_flow(server)
        listener.join(30)
        assert not listener.is_alive()

        assert [c["name"] for c in result["clients"]] == ["LAB-01", "LAB-02", "LAB-03"]
        assert [c["state"] for c in result["clients"]] == ["done"] * 3
        for c in result["clients"]:
            assert datetime.fromisoformat(c["started_at"]) <= datetime.fromisoformat(c["finished_at"])
            assert c["error"] is None
        logged = server.get("/api/events/log")["events"]
        tail = [e for e in logged if e["id"] >= live[0]["id"]]
        assert [e["id"] for e in live] == [e["id"] for e in tail]
        # the server answered the whole time and still does
        assert server.proc.poll() is None
        assert server.get("/api/deployments")["deployments"][0]["state"] == "done"


def test_serve_refuses_a_bad_listen_address(tmp_path: Path) -> None:
    proc = cli("serve", "--data", str(tmp_path), "--listen", "localhost", check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-2:] == [
        "fleetcast: error: listen address 'localhost' is not ADDR:PORT",
        "hint: for example --listen 127.0.0.1:8080",
    ]


def test_serve_refuses_a_taken_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = cli("serve", "--data", str(tmp_path), "--listen", f"127.0.0.1:{port}", check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-2:] == [
        f"fleetcast: error: cannot listen on 127.0.0.1:{port}: Address already in use",
        "hint: pick another --listen address or stop what uses it",
    ]
