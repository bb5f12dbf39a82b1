"""Issue 12: what a client sends cannot coerce, overflow or smuggle (exact request, status, message)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serverkit import CHUNK_ID, IMAGE, Server, inventory


def _deploy_problem(server: Server, change: dict[str, Any], status: int) -> str:
    body = {"image": IMAGE, "clients": "all", "disk": "0", "batch": 1, "then": "none", **change}
    r = server.http.post(
        "/api/deployments/plan", json=body, headers={"Authorization": f"Bearer {server.admin}"}
    )
    assert r.status_code == status, r.text
    message: str = r.json()["message"]
    return message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch": "2"}, "invalid request: batch: Input should be a valid integer"),
        ({"batch": True}, "invalid request: batch: Input should be a valid integer"),
        ({"grow": "yes"}, "invalid request: grow: Input should be a valid boolean"),
        ({"bacth": 2}, "invalid request: bacth: Extra inputs are not permitted"),
    ],
)
def test_deployment_body_is_strict(server: Server, change: dict[str, Any], message: str) -> None:
    server.agent("52:54:00:00:00:01")
    assert _deploy_problem(server, change, 422) == message


def test_too_many_dns_servers(server: Server) -> None:
    server.agent("52:54:00:00:00:01")
    dns = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(10_000)]
    change = {"ip": "10.0.0.101/24", "dns": dns}
    assert _deploy_problem(server, change, 400) == "at most 8 DNS servers can be given, found 10000"


@pytest.mark.parametrize("number", ["1e999", "-1e999", "NaN", "Infinity"])
def test_progress_refuses_infinity_and_nan(server: Server, number: str) -> None:
    a = server.agent("52:54:00:00:00:01")
    server.deploy()
    task = a.heartbeat()["task"]
    r = server.http.post(
        f"/api/agent/tasks/{task['task_id']}/progress",
        content=f'{{"phase": "writing", "rate_bps": {number}}}',
        headers={**a.headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["message"].startswith("invalid request: rate_bps: Input should be")
    assert "finite" in r.json()["message"]


def test_inventory_extra_fields_refused(server: Server) -> None:
    inv = {**inventory("52:54:00:00:00:01", "pc"), "junk": "x" * 1000}
    r = server.http.post("/api/agent/enroll", json={"enroll_token": server.enroll, "inventory": inv})
    assert r.status_code == 422
    assert r.json()["message"] == "invalid request: inventory.junk: Extra inputs are not permitted"


def test_result_changes_are_bounded(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    server.deploy()
    task = a.heartbeat()["task"]
    body = {"state": "done", "changes": ["x"] * 1001}
    r = server.http.post(f"/api/agent/tasks/{task['task_id']}/result", json=body, headers=a.headers)
    assert r.status_code == 422
    assert (
        r.json()["message"]
        == "invalid request: changes: List should have at most 1000 items after validation, not 1001"
    )


def test_openapi_has_response_shapes(server: Server) -> None:
    spec = server.http.get("/api/openapi.json").json()
    hb = spec["paths"]["/api/agent/heartbeat"]["post"]["responses"]["200"]["content"]["application/json"]
    assert hb["schema"] == {"$ref": "#/components/schemas/HeartbeatReply"}


def test_chunk_id_with_a_newline_is_400(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    r = server.http.get(f"/api/agent/chunks/{CHUNK_ID}%0a", headers=a.headers)
    assert r.status_code == 400
    assert r.json()["message"] == f"chunk id '{CHUNK_ID}\\n' is not valid: expected 64 lower-case hex digits"


def test_name_pattern_with_a_huge_width_is_a_short_400(server: Server) -> None:
    server.agent("52:54:00:00:00:01")
    message = _deploy_problem(server, {"name": "{n:99999999}"}, 400)
    assert (
        message == "name pattern '{n:99999999}' uses {n:99999999}; only {n} or {n:0W} (W = 1-15) is allowed"
    )


def test_name_pattern_with_a_trailing_newline(server: Server) -> None:
    server.agent("52:54:00:00:00:01")
    message = _deploy_problem(server, {"name": "LAB-{n}\n"}, 400)
    assert message == "name pattern 'LAB-{n}\\n' gives 'LAB-1\\n', which is not a valid computer name"


@pytest.mark.parametrize(
    ("mac", "message"),
    [
        (
            "00:00:00:00:00:00",
            "MAC address 00:00:00:00:00:00 cannot identify a machine (all-zero or broadcast)",
        ),
        (
            "FF:FF:FF:FF:FF:FF",
            "MAC address ff:ff:ff:ff:ff:ff cannot identify a machine (all-zero or broadcast)",
        ),
        (
            "01:00:5e:00:00:01",
            "MAC address 01:00:5e:00:00:01 is a multicast address and cannot identify a machine",
        ),
    ],
)
def test_unusable_macs_cannot_enroll(server: Server, mac: str, message: str) -> None:
    inv = inventory(mac, "pc")
    r = server.http.post("/api/agent/enroll", json={"enroll_token": server.enroll, "inventory": inv})
    assert r.status_code == 400
    assert r.json()["message"] == message


def test_a_large_body_without_a_token_is_refused_before_reading(server: Server) -> None:
    body = b"[" + b"0," * 1_000_000 + b"0]"
    r = server.http.post("/api/deployments/plan", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["message"] == (
        f"request body for /api/deployments/plan is {len(body)} bytes; at most 1048576 bytes are accepted"
    )


def test_a_small_body_without_a_token_is_refused_before_parsing(server: Server) -> None:
    r = server.http.post(
        "/api/deployments/plan", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 401
    assert r.json()["message"] == "this endpoint needs an Authorization: Bearer token"
    r = server.http.post(
        "/api/agent/heartbeat", content=b"{not json", headers={"Authorization": "Bearer fc_x"}
    )
    assert r.status_code == 401
    assert r.json()["message"] == "the agent credential is not known (or was replaced by a newer enrollment)"


def test_enrollment_body_is_bounded(server: Server) -> None:
    inv = inventory("52:54:00:00:00:01", "pc")
    body = ('{"enroll_token": "x", "inventory": {"macs": [' + ",".join(['"a"'] * 100_000) + "]}}").encode()
    r = server.http.post("/api/agent/enroll", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["message"] == (
        f"request body for /api/agent/enroll is {len(body)} bytes; at most 262144 bytes are accepted"
    )
    assert inv  # the normal inventory still enrolls:
    server.agent("52:54:00:00:00:01")


def test_a_chunked_body_is_cut_off_at_the_limit(server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b" " * 65536

    r = server.http.post(
        "/api/deployments/plan",
        content=chunks(),
        headers={"Authorization": f"Bearer {server.admin}", "Content-Type": "application/json"},
    )
    assert r.status_code == 413
    assert r.json()["message"] == (
        "request body for /api/deployments/plan is over the limit (sent without Content-Length); "
        "at most 1048576 bytes are accepted"
    )


def test_an_agent_fetches_only_its_tasks_image(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    b = server.agent("52:54:00:00:00:02")
    hint = "an agent fetches only the image of its current task"
    for path, what in [
        (f"/api/agent/images/{IMAGE}/manifest", f"image '{IMAGE}'"),
        (f"/api/agent/images/{IMAGE}/index", f"image '{IMAGE}'"),
        (f"/api/agent/chunks/{CHUNK_ID}", f"pack {CHUNK_ID}"),
    ]:
        r = server.http.get(path, headers=a.headers)
        assert r.status_code == 403, path
        assert r.json() == {
            "error": "ForbiddenError",
            "message": f"client {a.client_id} has no running task, so it may not fetch {what}",
            "hint": hint,
        }
    server.deploy(clients="52:54:00:00:00:01")
    assert a.heartbeat()["task"]["image"] == IMAGE
    assert server.http.get(f"/api/agent/chunks/{CHUNK_ID}", headers=a.headers).status_code == 200
    # b has no task: still refused; a may not fetch a pack outside its image
    assert server.http.get(f"/api/agent/chunks/{CHUNK_ID}", headers=b.headers).status_code == 403
    other = "ef" * 32
    r = server.http.get(f"/api/agent/chunks/{other}", headers=a.headers)
    assert r.status_code == 403
    assert r.json()["message"] == (
        f"pack {other} is not part of image '{IMAGE}', which client {a.client_id}'s task deploys"
    )


def _enroll(server: Server, macs: list[str], **extra: Any) -> Any:
    inv = {**inventory(macs[0], "intruder"), "macs": macs}
    body = {"enroll_token": server.enroll, "inventory": inv, **extra}
    return server.http.post("/api/agent/enroll", json=body)


def test_a_known_mac_cannot_enroll_again_without_its_credential(server: Server) -> None:
    victim = server.agent("52:54:00:00:00:01", "victim")
    r = _enroll(server, ["52:54:00:00:00:01"])
    assert r.status_code == 409
    assert r.json() == {
        "error": "ConflictError",
        "message": f"client 52:54:00:00:00:01 (id {victim.client_id}) is already enrolled; enrolling it "
        "again needs its current credential or an admin's approval",
        "hint": f"if this is the same machine, run `fleetcast clients revoke {victim.client_id}` "
        "and start the agent again",
    }
    assert _enroll(server, ["52:54:00:00:00:01"], credential="fc_wrong").status_code == 409
    assert victim.heartbeat()["cancel"] is False  # the victim's credential still works
    # with its own credential the machine enrolls again (and the old credential stops working)
    old = victim.headers
    victim.enroll()
    assert server.http.post("/api/agent/heartbeat", json={}, headers=old).status_code == 401
    # after the admin revoked it, anyone with the enrollment token may enroll it again
    server.post(f"/api/clients/{victim.client_id}/revoke")
    assert server.http.post("/api/agent/heartbeat", json={}, headers=victim.headers).status_code == 401
    assert _enroll(server, ["52:54:00:00:00:01"]).json()["client_id"] == victim.client_id
    assert server.get("/api/audit")["audit"][0]["action"] == "client-revoke"


def test_a_secondary_mac_cannot_take_another_clients_place(server: Server) -> None:
    victim = server.agent("52:54:00:00:00:02", "victim")
    r = _enroll(server, ["52:54:00:00:00:01", "52:54:00:00:00:02"])
    assert r.status_code == 200
    intruder = r.json()["client_id"]
    assert server.get(f"/api/clients/{intruder}")["macs"] == ["52:54:00:00:00:01"]
    plan = server.post("/api/deployments/plan", {"image": IMAGE, "clients": "52:54:00:00:00:02"})
    assert [c["client_id"] for c in plan["clients"]] == [victim.client_id]


def test_the_boot_mac_is_the_identity(server: Server) -> None:
    inv = {**inventory("52:54:00:00:00:01", "pc"), "macs": ["52:54:00:00:00:01", "52:54:00:00:00:09"]}
    inv["boot_mac"] = "52:54:00:00:00:09"
    r = server.http.post("/api/agent/enroll", json={"enroll_token": server.enroll, "inventory": inv})
    assert r.status_code == 200
    c = server.get(f"/api/clients/{r.json()['client_id']}")
    assert (c["mac"], c["macs"]) == ("52:54:00:00:00:09", ["52:54:00:00:00:09", "52:54:00:00:00:01"])


def test_the_enrollment_token_rotates_without_a_restart(server: Server) -> None:
    from fleetcast.server.auth import rotate

    old = server.enroll
    a = server.agent("52:54:00:00:00:01")
    new = rotate(server.settings.secrets_dir, "enroll-token")
    assert new != old
    inv = inventory("52:54:00:00:00:02", "pc")
    r = server.http.post("/api/agent/enroll", json={"enroll_token": old, "inventory": inv})
    assert r.status_code == 403
    assert r.json()["message"] == "the enrollment token is wrong"
    r = server.http.post("/api/agent/enroll", json={"enroll_token": new, "inventory": inv})
    assert r.status_code == 200
    assert a.heartbeat()["cancel"] is False  # enrolled agents keep their credentials


def test_a_second_server_on_one_sqlite_data_directory_is_refused(tmp_path: Path) -> None:
    from fleetcast.errors import UsageError
    from fleetcast.server.settings import lock_data_dir

    code = (
        "import time; from pathlib import Path; from fleetcast.server.settings import lock_data_dir; "
        f"held = lock_data_dir(Path({str(tmp_path)!r})); print('held', flush=True); time.sleep(60)"
    )
    first = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None and first.stdout.readline() == "held\n"
        with pytest.raises(UsageError) as info:
            lock_data_dir(tmp_path)
        assert str(info.value) == (
            f"data directory {tmp_path} is already served by another fleetcast serve (PID {first.pid})"
        )
        assert (
            info.value.hint == "stop it first; several servers on one database need PostgreSQL (--database)"
        )
    finally:
        first.kill()
        first.wait()
        assert first.stdout is not None
        first.stdout.close()
    lock_data_dir(tmp_path).release()  # gone with the first server


def test_admin_answers_have_response_shapes_and_keep_every_key(server: Server) -> None:
    spec = server.http.get("/api/openapi.json").json()
    ok = spec["paths"]["/api/clients"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"] == {"$ref": "#/components/schemas/ClientList"}
    for name in ("ClientView", "ImageInfo", "PlanView", "DeploymentView", "TargetView", "AuditList"):
        assert name in spec["components"]["schemas"]
    a = server.agent("52:54:00:00:00:01")
    dep = server.deploy(name="LAB-{n:02}")
    assert dep["name"] == "LAB-{n:02}" and dep["clients"][0]["n"] == 1  # keys beyond the model stay
    listed = server.get("/api/deployments")["deployments"][0]
    assert "clients" not in listed and listed["deployment"] == dep["deployment"]
    assert server.get("/api/clients")["clients"][0]["id"] == a.client_id


def test_data_directory_and_database_are_private(server: Server) -> None:
    import stat

    data = server.settings.data_dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "fleetcast.db").stat().st_mode) == 0o600


def test_a_retried_enrollment_whose_answer_was_lost_gets_the_same_credential(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    old = a.credential
    first = _enroll(server, ["52:54:00:00:00:01"], credential=old)
    again = _enroll(server, ["52:54:00:00:00:01"], credential=old)  # the first answer never arrived
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert first.json()["credential"] != old


def test_plan_refuses_an_all_digit_windows_name_before_any_disk_is_written(server: Server) -> None:
    """Issue 12 item 12: '{n}' for a Windows image used to pass the plan and fail on the agent."""
    server.agent("52:54:00:00:00:01")
    server.catalog.os_hint = "windows"
    body = {"image": "golden", "clients": "all", "disk": "0", "name": "{n}"}
    r = server.http.post(
        "/api/deployments/plan", json=body, headers={"Authorization": f"Bearer {server.admin}"}
    )
    assert r.status_code == 400
    assert r.json()["message"] == (
        "client 52:54:00:00:00:01 would be named '1', which the image's personalizer refuses: "
        "computer name '1' is all digits; Windows needs at least one letter or hyphen"
    )
    body["name"] = "PC{n}"
    r = server.http.post(
        "/api/deployments/plan", json=body, headers={"Authorization": f"Bearer {server.admin}"}
    )
    assert r.status_code == 200
    assert r.json()["clients"][0]["name"] == "PC1"
