"""Deleting a client (issue 12 item 2): refused while it is queued or running, then gone entirely --
row, credential, entries of finished deployments -- and the machine enrolls again as a new client."""

from __future__ import annotations

from serverkit import Server


def test_delete_client(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01", hostname="pc-1")
    b = server.agent("52:54:00:00:00:02")
    dep = server.deploy(clients="52:54:00:00:00:01")["deployment"]
    r = server.http.delete(f"/api/clients/{a.client_id}", headers={"Authorization": f"Bearer {server.admin}"})
    assert r.status_code == 409
    assert r.json() == {
        "error": "ConflictError",
        "message": f"client 52:54:00:00:00:01 (id {a.client_id}) is queued in deployment {dep}",
        "hint": f"cancel it first: POST /api/deployments/{dep}/cancel",
    }
    task = a.heartbeat()["task"]
    a.result(task["task_id"], "done")
    r = server.http.delete(f"/api/clients/{a.client_id}", headers={"Authorization": f"Bearer {server.admin}"})
    assert r.status_code == 200
    assert r.json()["mac"] == "52:54:00:00:00:01"
    assert [c["mac"] for c in server.get("/api/clients")["clients"]] == ["52:54:00:00:00:02"]
    assert server.get(f"/api/deployments/{dep}")["clients"] == []
    old = server.http.post("/api/agent/heartbeat", json={"task_id": None}, headers=a.headers)
    assert old.status_code == 401
    audit = server.get("/api/audit")["audit"][0]
    assert (audit["action"], audit["target"], audit["detail"]) == (
        "client-delete",
        f"client {a.client_id} (52:54:00:00:00:01)",
        {"hostname": "pc-1", "deployments": [dep]},
    )
    again = server.agent("52:54:00:00:00:01")  # first enrollment wins again: a new client
    assert again.client_id not in (a.client_id, b.client_id)
    r = server.http.delete("/api/clients/999", headers={"Authorization": f"Bearer {server.admin}"})
    assert r.status_code == 404
    assert r.json()["message"] == "client 999 does not exist"


def test_api_docs_load_nothing_from_outside(server: Server) -> None:
    """Issue 12 item 13: /api/docs used to load Swagger UI from a CDN; a lab server has no internet."""
    import re

    page = server.http.get("/api/docs")
    assert page.status_code == 200
    links = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", page.text) + re.findall(
        r"""url:\s*['"]([^'"]+)""", page.text
    )
    assert "/api/docs/static/swagger-ui-bundle.js" in links
    assert "/api/openapi.json" in links
    assert [u for u in links if "//" in u] == []
    assert "cdn" not in page.text.lower()
    for name in ("swagger-ui-bundle.js", "swagger-ui.css"):
        r = server.http.get(f"/api/docs/static/{name}")
        assert r.status_code == 200
        assert len(r.content) > 100_000
    assert server.http.get("/api/openapi.json").json()["info"]["title"] == "fleetcast"


def test_audit_pages_back_and_filters(server: Server) -> None:
    agents = [server.agent(f"52:54:00:00:00:0{i}") for i in range(1, 4)]
    for a in agents:
        server.post(f"/api/clients/{a.client_id}/revoke")
    server.deploy(clients="52:54:00:00:00:01")
    first = server.get("/api/audit?limit=2")["audit"]
    assert [e["action"] for e in first] == ["deployment-create", "client-revoke"]
    older = server.get(f"/api/audit?limit=2&before={first[-1]['id']}")["audit"]
    assert [e["target"] for e in older] == [
        f"client {agents[1].client_id} (52:54:00:00:00:02)",
        f"client {agents[0].client_id} (52:54:00:00:00:01)",
    ]
    assert server.get(f"/api/audit?before={older[-1]['id']}")["audit"] == []
    revokes = server.get("/api/audit?action=client-revoke")["audit"]
    assert len(revokes) == 3
    assert server.get("/api/audit?actor=nobody")["audit"] == []


def test_deployment_kind_and_no_retry_of_a_personalization(server: Server) -> None:
    """WINDOWS' request: a personalize-only deployment says so, and retrying one is refused plainly."""
    a = server.agent("52:54:00:00:00:01")
    dep = server.deploy()["deployment"]
    assert server.get(f"/api/deployments/{dep}")["kind"] == "deploy"
    task = a.heartbeat()["task"]
    a.result(task["task_id"], "done")
    pers = server.post("/api/personalizations", {"clients": "all", "name": "PC-{n}"}, status=201)
    pid = pers["deployment"]
    kinds = {d["deployment"]: d["kind"] for d in server.get("/api/deployments")["deployments"]}
    assert kinds == {dep: "deploy", pid: "personalize"}
    task = a.heartbeat()["task"]
    a.result(task["task_id"], "failed", "disk busy")
    r = server.http.post(f"/api/deployments/{pid}/retry", headers={"Authorization": f"Bearer {server.admin}"})
    assert r.status_code == 400
    assert r.json()["message"] == f"deployment {pid} re-personalized disks; run fleetcast personalize again"
