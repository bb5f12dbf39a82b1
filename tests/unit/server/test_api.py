"""The HTTP surface: auth, OpenAPI, bad input answered with exact problem documents, image data, events."""

from __future__ import annotations

import json

import pytest
from serverkit import CHUNK_BYTES, CHUNK_ID, IMAGE, IMAGE_SIZE, Server

ADMIN_GETS = [
    "/api/clients",
    "/api/clients/1",
    "/api/images",
    "/api/images/golden",
    "/api/deployments",
    "/api/deployments/1",
    "/api/events",
    "/api/events/log",
    "/api/audit",
]


@pytest.mark.parametrize("path", ADMIN_GETS)
def test_admin_endpoints_need_the_admin_token(server: Server, path: str) -> None:
    r = server.http.get(path)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json() == {
        "error": "AuthError",
        "message": "this endpoint needs an Authorization: Bearer token",
        "hint": "pass --token or the agent credential",
    }
    r = server.http.get(path, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert r.json()["message"] == "the bearer token is not the admin token"
    r = server.http.get(path, headers={"Authorization": f"Basic {server.admin}"})
    assert r.json()["message"] == "expected 'Authorization: Bearer <token>', found a 'Basic' header"


def test_agent_credential_is_not_an_admin_token(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    r = server.http.get("/api/clients", headers=a.headers)
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/deployments"),
        ("POST", "/api/deployments/plan"),
        ("POST", "/api/deployments/1/cancel"),
        ("POST", "/api/agent/heartbeat"),
        ("POST", "/api/agent/tasks/1/progress"),
        ("POST", "/api/agent/tasks/1/result"),
        ("GET", f"/api/agent/images/{IMAGE}/manifest"),
        ("GET", f"/api/agent/chunks/{CHUNK_ID}"),
    ],
)
def test_writes_and_agent_data_need_a_credential(server: Server, method: str, path: str) -> None:
    r = server.http.request(method, path, json={})
    assert r.status_code == 401, r.text


def test_openapi_and_health_are_public(server: Server) -> None:
    spec = server.http.get("/api/openapi.json").json()
    assert spec["info"]["title"] == "fleetcast"
    for path in ("/api/clients", "/api/deployments", "/api/agent/enroll", "/api/events"):
        assert path in spec["paths"]
    assert server.http.get("/api/health").json()["ok"] is True


def test_enroll_with_a_wrong_token_is_forbidden(server: Server) -> None:
    r = server.http.post(
        "/api/agent/enroll", json={"enroll_token": "wrong", "inventory": {"macs": ["52:54:00:00:00:01"]}}
    )
    assert r.status_code == 403
    assert r.json() == {
        "error": "ForbiddenError",
        "message": "the enrollment token is wrong",
        "hint": "use the token printed by `fleetcast --data DIR admin enroll-token`",
    }
    assert server.get("/api/clients") == {"clients": []}


def test_enroll_rejects_a_bad_mac_and_a_missing_inventory(server: Server) -> None:
    r = server.http.post(
        "/api/agent/enroll",
        json={"enroll_token": server.enroll, "inventory": {"macs": ["52:54:00:zz:00:01"]}},
    )
    assert r.status_code == 400
    assert (
        r.json()["message"] == "client '52:54:00:zz:00:01' is not a MAC address: expected aa:bb:cc:dd:ee:ff"
    )
    r = server.http.post("/api/agent/enroll", json={"enroll_token": server.enroll})
    assert r.status_code == 422
    assert r.json()["message"] == "invalid request: inventory: Field required"


def test_reenroll_keeps_client_id_and_mac_is_normalized(server: Server) -> None:
    a = server.agent("52-54-00-AA-BB-01", "first")
    server.post(f"/api/clients/{a.client_id}/revoke")  # the admin approves a second enrollment
    b = server.agent("52:54:00:aa:bb:01", "second")
    assert a.client_id == b.client_id
    clients = server.get("/api/clients")["clients"]
    assert len(clients) == 1
    assert clients[0]["mac"] == "52:54:00:aa:bb:01"
    assert clients[0]["hostname"] == "second"
    assert clients[0]["disks"][0]["path"] == "/dev/loop7"
    assert clients[0]["state"] == "idle"
    assert clients[0]["online"] is True
    one = server.get(f"/api/clients/{a.client_id}")
    assert one["mac"] == clients[0]["mac"]
    r = server.http.get("/api/clients/999", headers={"Authorization": f"Bearer {server.admin}"})
    assert r.status_code == 404
    assert r.json()["message"] == "client 999 does not exist"


def test_images(server: Server) -> None:
    images = server.get("/api/images")["images"]
    assert [i["name"] for i in images] == [IMAGE]
    assert server.get(f"/api/images/{IMAGE}")["disk_size"] == IMAGE_SIZE
    r = server.http.get("/api/images/nope", headers={"Authorization": f"Bearer {server.admin}"})
    assert r.status_code == 404
    assert r.json()["error"] == "ImageNotFound"


def test_manifest_and_chunks_served_exactly(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    server.deploy()
    assert a.heartbeat()["task"]["image"] == IMAGE
    r = server.http.get(f"/api/agent/images/{IMAGE}/manifest", headers=a.headers)
    assert r.status_code == 200
    assert r.content == server.catalog.manifest
    r = server.http.get(f"/api/agent/chunks/{CHUNK_ID}", headers=a.headers)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.content == CHUNK_BYTES


def test_bad_chunk_and_image_requests_fail_alone(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    server.deploy()
    assert a.heartbeat()["task"]["image"] == IMAGE
    cases = [
        (f"/api/agent/chunks/{'cd' * 32}", 404, f"chunk {'cd' * 32} is not in the server's store"),
        ("/api/agent/chunks/..%2F..%2Fsecrets", 404, None),
        ("/api/agent/chunks/ABC", 400, "chunk id 'ABC' is not valid: expected 64 lower-case hex digits"),
        ("/api/agent/images/nope/manifest", 403, "client 1's task deploys image 'golden', not 'nope'"),
        ("/api/agent/images/nope/index", 403, None),
        ("/api/agent/images/..%2Fsecrets/manifest", 404, None),
        ("/api/agent/images/.hidden/manifest", 400, None),
    ]
    for path, status, message in cases:
        r = server.http.get(path, headers=a.headers)
        assert r.status_code == status, (path, r.text)
        if message:
            assert r.json()["message"] == message
        # the server keeps serving after each failed request
        ok = server.http.get(f"/api/agent/chunks/{CHUNK_ID}", headers=a.headers)
        assert ok.content == CHUNK_BYTES


def deploy_error(server: Server, **body: object) -> tuple[int, dict[str, object]]:
    full = {"image": IMAGE, "clients": "all", "disk": "0", "batch": 1, **body}
    r = server.http.post("/api/deployments", json=full, headers={"Authorization": f"Bearer {server.admin}"})
    return r.status_code, r.json()


BAD_INPUT = [
    ({"image": "nope"}, 404, "image 'nope' does not exist in the store {root}"),
    ({"clients": "52:54:00:00:00:99"}, 404, "client 52:54:00:00:00:99 is not enrolled"),
    ({"clients": "xx"}, 400, "client 'xx' is not a MAC address: expected aa:bb:cc:dd:ee:ff"),
    (
        {"name": "LAB-{x}"},
        400,
        "name pattern 'LAB-{x}' uses {x}; only {n} or {n:0W} (W = 1-15) is allowed",
    ),
    ({"name": "LAB"}, 400, "name pattern 'LAB' has no {n}: all 2 clients would get the same name"),
    ({"name": "LAB-{n"}, 400, "name pattern 'LAB-{n' is not valid: '{' at position 4 is not closed"),
    ({"name": "LAB_{n}"}, 400, "name pattern 'LAB_{n}' gives 'LAB_1', which is not a valid computer name"),
    (
        {"ip": "10.0.0.254/24"},
        400,
        "IP range 10.0.0.254/24 has room for 1 client (10.0.0.254-10.0.0.254) but 2 are selected",
    ),
    ({"ip": "10.0.0.1/24", "gateway": "10.0.0.2"}, 400, None),
    ({"disk": "biggest"}, 400, "disk rule 'biggest': term 'biggest' is not understood"),
    ({"disk": ""}, 400, "disk rule is empty"),
    ({"batch": 0}, 400, "batch must be at least 1, found 0"),
    ({"batch": 2**40}, 400, "batch must be at most 100000, found 1099511627776"),
    ({"then": "hibernate"}, 400, "post action 'hibernate' is not one of reboot, shutdown, none"),
    ({"gateway": "10.0.0.1"}, 400, "a gateway (10.0.0.1) only applies to static addresses"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_INPUT)
def test_bad_deployments_are_refused_before_anything_is_created(
    server: Server, body: dict[str, object], status: int, message: str | None
) -> None:
    server.agent("52:54:00:00:00:01")
    server.agent("52:54:00:00:00:02")
    got_status, problem = deploy_error(server, **body)
    assert got_status == status, problem
    if message is not None:
        assert problem["message"] == message.replace("{root}", str(server.catalog.root))
    assert set(problem) == {"error", "message", "hint"}
    assert server.get("/api/deployments") == {"deployments": []}
    assert server.get("/api/audit") == {"audit": []}
    # the plan endpoint gives the same answer
    r = server.http.post(
        "/api/deployments/plan",
        json={"image": IMAGE, "clients": "all", "disk": "0", "batch": 1, **body},
        headers={"Authorization": f"Bearer {server.admin}"},
    )
    assert (r.status_code, r.json()) == (got_status, problem)


def test_deploy_to_nobody_is_refused(server: Server) -> None:
    status, problem = deploy_error(server)
    assert status == 400
    assert problem["message"] == "no clients are enrolled"


def test_body_validation_is_a_problem_document(server: Server) -> None:
    status, problem = deploy_error(server, batch="two")
    assert status == 422
    assert problem["error"] == "ValidationError"
    assert str(problem["message"]).startswith("invalid request: batch: ")


def test_windows_names_are_limited_to_15_characters(server: Server) -> None:
    server.agent("52:54:00:00:00:01")
    server.catalog.os_hint = "windows"
    status, problem = deploy_error(server, name="CLASSROOM-PC-{n:03}")
    assert status == 400
    assert problem["message"] == (
        "name pattern 'CLASSROOM-PC-{n:03}' gives 'CLASSROOM-PC-001' (16 characters); "
        "this image's computer names may have at most 15"
    )


def test_plan_shows_assignments_in_stable_order_and_stores_nothing(server: Server) -> None:
    for mac in ("52:54:00:00:00:03", "52:54:00:00:00:01", "52:54:00:00:00:02"):
        server.agent(mac)
    body = {"image": IMAGE, "clients": "all", "disk": "size>=60M", "batch": 2, "name": "LAB-{n:02}"}
    plan = server.post("/api/deployments/plan", {**body, "ip": "10.0.0.101/24", "gateway": "10.0.0.1"})
    assert [(c["n"], c["mac"], c["name"], c["ip"]) for c in plan["clients"]] == [
        (1, "52:54:00:00:00:01", "LAB-01", "10.0.0.101/24"),
        (2, "52:54:00:00:00:02", "LAB-02", "10.0.0.102/24"),
        (3, "52:54:00:00:00:03", "LAB-03", "10.0.0.103/24"),
    ]
    assert plan["gateway"] == "10.0.0.1"
    assert plan["image_size"] == IMAGE_SIZE
    assert (
        server.post("/api/deployments/plan", {**body, "ip": "10.0.0.101/24", "gateway": "10.0.0.1"}) == plan
    )
    listed = server.post("/api/deployments/plan", {**body, "clients": "52:54:00:00:00:03,52:54:00:00:00:01"})
    assert [(c["mac"], c["name"], c["ip"]) for c in listed["clients"]] == [
        ("52:54:00:00:00:03", "LAB-01", None),
        ("52:54:00:00:00:01", "LAB-02", None),
    ]
    assert server.get("/api/deployments") == {"deployments": []}
    dep = server.deploy(batch=2, name="LAB-{n:02}", ip="10.0.0.101/24", gateway="10.0.0.1")
    saved = server.get(f"/api/deployments/{dep['deployment']}")
    assert [(c["mac"], c["name"], c["ip"]) for c in saved["clients"]] == [
        (c["mac"], c["name"], c["ip"]) for c in plan["clients"]
    ]
    assert saved["name"] == "LAB-{n:02}"
    assert saved["ip"] == "10.0.0.101/24"
    assert server.get("/api/deployments")["deployments"][0]["deployment"] == dep["deployment"]


def test_event_log_and_sse_replay(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    dep = server.deploy()
    t = a.heartbeat()["task"]
    a.progress(t["task_id"], done=100)
    log = server.get("/api/events/log")["events"]
    types = [e["type"] for e in log]
    assert types == [
        "client-enrolled",
        "deployment-created",
        "client-queued",
        "client-assigned",
        "client-started",
        "client-progress",
    ]
    assert log[-1]["bytes_done"] == 100
    assert log[-1]["deployment_id"] == dep["deployment"]
    assert log[-1]["mac"] == "52:54:00:00:00:01"
    since = server.get("/api/events/log", params={"since": log[2]["id"]})["events"]
    assert [e["id"] for e in since] == [e["id"] for e in log[3:]]

    r = server.http.get(
        "/api/events", params={"follow": "false"}, headers={"Authorization": f"Bearer {server.admin}"}
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in r.text.split("\n\n") if f.strip()]
    assert len(frames) == len(log)
    first = dict(line.split(": ", 1) for line in frames[0].splitlines())
    assert first["event"] == "client-enrolled"
    assert first["id"] == str(log[0]["id"])
    assert json.loads(first["data"]) == log[0]
    r = server.http.get(
        "/api/events",
        params={"follow": "false", "deployment_id": dep["deployment"]},
        headers={"Authorization": f"Bearer {server.admin}", "Last-Event-ID": str(log[3]["id"])},
    )
    ids = [int(line[4:]) for line in r.text.splitlines() if line.startswith("id: ")]
    assert ids == [log[4]["id"], log[5]["id"]]


def test_agent_reports_out_of_range_are_refused_and_change_nothing(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    dep = server.deploy()["deployment"]
    task_id = a.heartbeat()["task"]["task_id"]
    url = f"/api/agent/tasks/{task_id}"
    problem = a.call(f"{url}/progress", {"phase": "writing", "disk": "/dev/" + "x" * 300}, status=422)
    assert problem["message"] == "invalid request: disk: String should have at most 255 characters"
    problem = a.call(f"{url}/progress", {"phase": "writing", "bytes_done": 2**63}, status=422)
    assert problem["message"] == (
        "invalid request: bytes_done: Input should be less than or equal to 9223372036854775807"
    )
    problem = a.call(f"{url}/progress", {"phase": "writing", "checkpoint_chunk": 2**31}, status=422)
    assert problem["message"].startswith("invalid request: checkpoint_chunk: ")
    body = {"state": "done", "action": "explode", "changes": []}
    problem = a.call(f"{url}/result", body, status=400)
    assert problem["message"] == "post action 'explode' is not one of reboot, shutdown, none"
    client = server.get(f"/api/deployments/{dep}")["clients"][0]
    assert (client["state"], client["disk"], client["bytes"], client["action"]) == ("running", None, 0, None)


def test_ids_out_of_range_are_not_found(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    big = 2**64
    r = server.http.get(f"/api/deployments/{big}", headers={"Authorization": f"Bearer {server.admin}"})
    assert (r.status_code, r.json()["message"]) == (404, f"deployment {big} does not exist")
    r = server.http.get(f"/api/clients/{big}", headers={"Authorization": f"Bearer {server.admin}"})
    assert (r.status_code, r.json()["message"]) == (404, f"client {big} does not exist")
    problem = a.call(f"/api/agent/tasks/{big}/progress", {"phase": "writing"}, status=404)
    assert problem["message"] == f"task {big} does not exist"
    assert a.heartbeat(task_id=big)["cancel"] is True
    assert server.get("/api/events/log", params={"since": big}) == {"events": []}
    assert server.get("/api/events/log", params={"deployment_id": big}) == {"events": []}


def test_deployment_body_takes_the_multicast_repair_mode(server: Server) -> None:
    """``repair`` in POST /api/deployments, as the console's wizard sends it (MULTICAST's request)."""
    for mac in ("52:54:00:00:07:01", "52:54:00:00:07:02"):
        server.agent(mac)
    body = {"image": IMAGE, "clients": "all", "disk": "0", "batch": 2, "transport": "multicast"}
    dep = server.post("/api/deployments", {**body, "repair": "http"}, status=201)["deployment"]
    assert server.get(f"/api/deployments/{dep}/multicast")["options"]["repair"] == "http"
    server.post(f"/api/deployments/{dep}/cancel")
    bad = server.post("/api/deployments", {**body, "repair": "pigeon"}, status=400)
    assert "repair must be one of sooner, cycle, http, found 'pigeon'" in bad["message"]
