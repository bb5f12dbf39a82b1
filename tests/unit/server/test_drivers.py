"""Driver folders: listed for the wizard, fetched as a tar only by an agent whose running task names them."""

from __future__ import annotations

import io
import os
import tarfile

from serverkit import Server

MAC_A, MAC_B = "52:54:00:00:00:01", "52:54:00:00:00:02"


def test_driver_folder_list_and_agent_fetch(server: Server) -> None:
    folder = server.settings.data_dir / "drivers" / "nvme"
    (folder / "amd64").mkdir(parents=True)
    inf = b"[Version]\nSignature=$Windows NT$\n"
    (folder / "amd64" / "stornvme.inf").write_bytes(inf)
    (folder / "amd64" / "stornvme.sys").write_bytes(b"MZ" + bytes(1000))
    os.symlink("/etc/passwd", folder / "leak")  # never sent
    assert server.get("/api/drivers") == {
        "drivers": [{"name": "nvme", "infs": 1, "files": 2, "bytes": 1002 + len(inf)}]
    }
    a, b = server.agent(MAC_A), server.agent(MAC_B)
    # no running task: refused
    r = server.http.get("/api/agent/drivers/nvme", headers=a.headers)
    assert (r.status_code, r.json()["message"]) == (
        403,
        f"client {a.client_id}'s running task does not use the driver folder 'nvme'",
    )
    server.catalog.os_hint = "windows"
    server.deploy(clients=MAC_A, drivers="nvme")
    assert a.heartbeat()["task"]["drivers"] == "nvme"
    r = server.http.get("/api/agent/drivers/nvme", headers=a.headers)
    assert r.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        assert sorted(tar.getnames()) == ["amd64", "amd64/stornvme.inf", "amd64/stornvme.sys"]
        member = tar.extractfile("amd64/stornvme.sys")
        assert member is not None and member.read() == b"MZ" + bytes(1000)
    # another client, or without a credential, or a name that walks out: refused
    assert server.http.get("/api/agent/drivers/nvme", headers=b.headers).status_code == 403
    assert server.http.get("/api/agent/drivers/nvme").status_code == 401
    r = server.http.get("/api/agent/drivers/..", headers=a.headers)
    assert r.status_code in (400, 404)
