"""The deployment flow driven as agents drive it: batch limit, queue, resume, cancel, failures, timeouts."""

from __future__ import annotations

from datetime import datetime

from serverkit import IMAGE_SIZE, Server


def running_count(server: Server, dep: int) -> int:
    view = server.get(f"/api/deployments/{dep}")
    return sum(1 for c in view["clients"] if c["state"] == "running")


def max_writing_in_log(server: Server, dep: int) -> int:
    """Replays the event log: the most clients between client-started and their end at any time."""
    writing: set[str] = set()
    most = 0
    for ev in server.get("/api/events/log", params={"deployment_id": dep})["events"]:
        if ev["type"] == "client-started":
            writing.add(ev["mac"])
        elif ev["type"] in ("client-done", "client-failed", "client-cancelled"):
            writing.discard(ev["mac"])
        most = max(most, len(writing))
    return most


def test_batch_limit_and_queue(server: Server) -> None:
    agents = [server.agent(f"52:54:00:00:00:0{i}", f"pc{i}") for i in range(1, 5)]
    dep = server.deploy(batch=2, name="LAB-{n:02}", ip="10.0.0.101/24", gateway="10.0.0.1", dns="10.0.0.1")
    assert [c["name"] for c in dep["clients"]] == ["LAB-01", "LAB-02", "LAB-03", "LAB-04"]
    assert [c["state"] for c in dep["clients"]] == ["queued"] * 4

    tasks = {a.mac: a.heartbeat()["task"] for a in agents}
    given = {mac: t for mac, t in tasks.items() if t is not None}
    assert len(given) == 2
    assert running_count(server, dep["deployment"]) == 2
    first = next(iter(given.values()))
    assert first["resume_chunk"] == 0
    assert first["attempt"] == 1
    assert first["kind"] == "deploy"
    assert first["image_size"] == IMAGE_SIZE
    assert first["then"] == "none"
    assert first["gateway"] == "10.0.0.1"
    assert first["dns"] == ["10.0.0.1"]
    assert first["ip"].endswith("/24")

    by_mac = {a.mac: a for a in agents}
    waiting = [a for a in agents if a.mac not in given]
    # queued ones keep getting nothing while both places are taken, however often they ask
    for a in waiting:
        assert a.heartbeat()["task"] is None
    for mac, task in given.items():
        assert by_mac[mac].progress(task["task_id"], done=1 << 20) == {"cancel": False}
        assert by_mac[mac].heartbeat(task["task_id"]) == {"task": None, "cancel": False, "interval": 0.5}
    # one finishes: exactly one queued client gets the freed place
    done_mac, done_task = next(iter(given.items()))
    by_mac[done_mac].result(done_task["task_id"])
    new_tasks = [a.heartbeat()["task"] for a in waiting]
    assert sum(t is not None for t in new_tasks) == 1
    assert running_count(server, dep["deployment"]) == 2
    # finish everything
    for mac, task in list(given.items())[1:]:
        by_mac[mac].result(task["task_id"])
    for a in waiting:
        task = a.heartbeat()["task"]
        if task is not None:
            a.progress(task["task_id"], done=2 << 20)
            a.result(task["task_id"])
    for a in waiting:
        task = a.heartbeat()["task"]
        if task is not None:
            a.progress(task["task_id"], done=2 << 20)
            a.result(task["task_id"])
    view = server.get(f"/api/deployments/{dep['deployment']}")
    assert view["state"] == "done"
    assert [c["state"] for c in view["clients"]] == ["done"] * 4
    assert max_writing_in_log(server, dep["deployment"]) == 2
    for c in view["clients"]:
        started = datetime.fromisoformat(c["started_at"])
        finished = datetime.fromisoformat(c["finished_at"])
        assert started.tzinfo is not None
        assert started <= finished
        assert c["bytes"] == IMAGE_SIZE
    types = [e["type"] for e in server.get("/api/events/log")["events"]]
    assert types.count("deployment-finished") == 1
    assert types[-1] == "deployment-finished"


def test_started_at_is_first_writing_report_not_assignment(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    dep = server.deploy()
    task = a.heartbeat()["task"]
    a.progress(task["task_id"], phase="selecting-disk")
    view = server.get(f"/api/deployments/{dep['deployment']}")
    assert view["clients"][0]["state"] == "running"
    assert view["clients"][0]["started_at"] is None
    a.progress(task["task_id"], phase="writing", done=4096)
    view = server.get(f"/api/deployments/{dep['deployment']}")
    assert view["clients"][0]["started_at"] is not None
    assert view["clients"][0]["disk"] == "/dev/loop7"
    assert view["clients"][0]["finished_at"] is None


def test_reenrolled_agent_resumes_at_checkpoint(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    dep = server.deploy()
    task = a.heartbeat()["task"]
    a.progress(task["task_id"], done=10 << 20, checkpoint=7)
    old_credential = a.credential
    a.enroll()  # the agent was killed and started again
    assert a.credential != old_credential
    again = a.heartbeat()["task"]
    assert again["task_id"] == task["task_id"]
    assert again["resume_chunk"] == 7
    assert again["attempt"] == 2
    events = server.get("/api/events/log")["events"]
    resumed = [e for e in events if e["type"] == "client-resumed"]
    assert len(resumed) == 1
    assert resumed[0]["resume_chunk"] == 7
    assert resumed[0]["mac"] == "52:54:00:00:00:01"
    view = server.get(f"/api/deployments/{dep['deployment']}")
    assert view["clients"][0]["resumes"] == 1
    assert view["clients"][0]["restarts"] == 0
    a.result(again["task_id"])
    assert server.get(f"/api/deployments/{dep['deployment']}")["state"] == "done"


def test_old_credential_stops_working_after_reenroll(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    old = a.credential
    a.enroll()
    r = server.http.post("/api/agent/heartbeat", json={}, headers={"Authorization": f"Bearer {old}"})
    assert r.status_code == 401
    assert r.json()["message"] == "the agent credential is not known (or was replaced by a newer enrollment)"


def test_restart_without_checkpoint_is_recorded_as_restart(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    dep = server.deploy()
    task = a.heartbeat()["task"]
    a.enroll()
    again = a.heartbeat()["task"]
    assert again["resume_chunk"] == 0
    assert again["attempt"] == 2
    view = server.get(f"/api/deployments/{dep['deployment']}")
    assert view["clients"][0]["restarts"] == 1
    assert task["task_id"] == again["task_id"]
    types = [e["type"] for e in server.get("/api/events/log")["events"]]
    assert "client-restarted" in types
    assert "client-resumed" not in types


def test_failed_client_does_not_stop_the_others(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    b = server.agent("52:54:00:00:00:02")
    dep = server.deploy(batch=2)
    ta, tb = a.heartbeat()["task"], b.heartbeat()["task"]
    a.progress(ta["task_id"])
    a.result(ta["task_id"], "failed", "disk rule '0' matches no disk; disks seen: none")
    assert b.progress(tb["task_id"]) == {"cancel": False}
    view = server.get(f"/api/deployments/{dep['deployment']}")
    assert view["state"] == "running"
    b.result(tb["task_id"])
    view = server.get(f"/api/deployments/{dep['deployment']}")
    assert view["state"] == "failed"
    states = {c["mac"]: (c["state"], c["error"]) for c in view["clients"]}
    assert states == {
        "52:54:00:00:00:01": ("failed", "disk rule '0' matches no disk; disks seen: none"),
        "52:54:00:00:00:02": ("done", None),
    }


def test_failure_without_reason_gets_one(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    dep = server.deploy()
    t = a.heartbeat()["task"]
    a.result(t["task_id"], "failed", None)
    view = server.get(f"/api/deployments/{dep['deployment']}")
    assert view["clients"][0]["error"] == "the agent reported a failure without a reason"


def test_cancel_stops_running_and_queued(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    b = server.agent("52:54:00:00:00:02")
    dep = server.deploy(batch=1)
    ta = a.heartbeat()["task"]
    runner = a
    assert ta is not None
    assert b.heartbeat()["task"] is None
    server.post(f"/api/deployments/{dep['deployment']}/cancel")
    view = server.get(f"/api/deployments/{dep['deployment']}")
    assert view["state"] == "cancelling"
    assert sorted(c["state"] for c in view["clients"]) == ["cancelled", "running"]
    assert runner.progress(ta["task_id"]) == {"cancel": True}
    assert runner.heartbeat(ta["task_id"])["cancel"] is True
    runner.result(ta["task_id"], "cancelled", "cancelled by the server")
    view = server.get(f"/api/deployments/{dep['deployment']}")
    assert view["state"] == "cancelled"
    assert [c["state"] for c in view["clients"]] == ["cancelled", "cancelled"]
    # nothing more is handed out
    assert a.heartbeat()["task"] is None
    assert b.heartbeat()["task"] is None
    r = server.http.post(
        f"/api/deployments/{dep['deployment']}/cancel", headers={"Authorization": f"Bearer {server.admin}"}
    )
    assert r.status_code == 409
    assert r.json()["message"] == f"deployment {dep['deployment']} is already cancelled; nothing to cancel"
    audit = server.get("/api/audit")["audit"]
    assert [x["action"] for x in audit] == ["deployment-cancel", "deployment-create"]
    assert audit[0]["address"] == "testclient"
    assert audit[0]["actor"] == "admin"


def test_cancel_with_idle_agent_finishes_its_target(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    dep = server.deploy()
    t = a.heartbeat()["task"]
    assert t is not None
    server.post(f"/api/deployments/{dep['deployment']}/cancel")
    a.enroll()  # restarted agent, idle: its cancelled target must not come back
    assert a.heartbeat()["task"] is None
    assert server.get(f"/api/deployments/{dep['deployment']}")["state"] == "cancelled"


def test_client_in_running_deployment_cannot_be_deployed_twice(server: Server) -> None:
    server.agent("52:54:00:00:00:01")
    dep = server.deploy()
    r = server.http.post(
        "/api/deployments",
        json={"image": "golden", "clients": "all", "disk": "0", "batch": 1},
        headers={"Authorization": f"Bearer {server.admin}"},
    )
    assert r.status_code == 409
    assert r.json() == {
        "error": "ServerError",
        "message": f"client 52:54:00:00:00:01 is already in deployment {dep['deployment']}, "
        "which is still running",
        "hint": f"wait for it or cancel it: POST /api/deployments/{dep['deployment']}/cancel",
    }


def test_stale_task_fails_and_frees_its_place(tmp_path: object, server: Server) -> None:
    from datetime import timedelta

    from fleetcast.server.db import Target, utcnow

    a = server.agent("52:54:00:00:00:01")
    b = server.agent("52:54:00:00:00:02")
    dep = server.deploy(batch=1)
    ta = a.heartbeat()["task"]
    assert ta is not None
    assert b.heartbeat()["task"] is None
    orch = server.http.app.state.orchestrator  # type: ignore[attr-defined]
    with orch.db.transaction() as s:
        s.get(Target, ta["task_id"]).last_report = utcnow() - timedelta(seconds=3600)
    orch.sweep()  # what the app's background sweeper does every few seconds
    tb = b.heartbeat()["task"]
    assert tb is not None
    view = server.get(f"/api/deployments/{dep['deployment']}")
    first = next(c for c in view["clients"] if c["task_id"] == ta["task_id"])
    assert first["state"] == "failed"
    assert first["error"].startswith("no report from the agent for 300 s (last at ")
    # the agent comes back with its old task: it is told to stop
    assert a.heartbeat(ta["task_id"])["cancel"] is True
    assert a.progress(ta["task_id"]) == {"cancel": True}


def test_stale_client_is_shown_offline_then_seen(server: Server) -> None:
    from datetime import timedelta

    from fleetcast.server.db import Client, utcnow

    a = server.agent("52:54:00:00:00:01")
    b = server.agent("52:54:00:00:00:02")
    orch = server.http.app.state.orchestrator  # type: ignore[attr-defined]
    with orch.db.transaction() as s:
        s.get(Client, a.client_id).last_seen = utcnow() - timedelta(seconds=60)
    orch.sweep()
    clients = {c["mac"]: c for c in server.get("/api/clients")["clients"]}
    assert clients[a.mac]["online"] is False
    assert clients[b.mac]["online"] is True
    a.heartbeat()
    assert server.get(f"/api/clients/{a.client_id}")["online"] is True
    types = [e["type"] for e in server.get("/api/events/log")["events"]]
    assert types[-2:] == ["client-stale", "client-seen"]


def test_task_of_another_client_is_forbidden(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    b = server.agent("52:54:00:00:00:02")
    server.deploy(clients="52:54:00:00:00:01")
    t = a.heartbeat()["task"]
    r = b.call(f"/api/agent/tasks/{t['task_id']}/progress", {"phase": "writing"}, status=403)
    assert r["message"] == f"task {t['task_id']} belongs to another client"
    r = b.call("/api/agent/tasks/9999/result", {"state": "done"}, status=404)
    assert r["message"] == "task 9999 does not exist"
    r = a.call(f"/api/agent/tasks/{t['task_id']}/progress", {"phase": "copying"}, status=400)
    assert r["message"] == (
        "phase 'copying' is not one of selecting-disk, writing, verifying, growing, personalizing, "
        "finishing, capturing, publishing"
    )
    r = a.call(f"/api/agent/tasks/{t['task_id']}/result", {"state": "ok"}, status=400)
    assert r["message"] == "result state 'ok' is not one of done, failed, cancelled"


def test_late_result_is_ignored(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    dep = server.deploy()
    t = a.heartbeat()["task"]
    a.result(t["task_id"], "failed", "boom")
    a.result(t["task_id"], "done")
    view = server.get(f"/api/deployments/{dep['deployment']}")
    assert view["clients"][0]["state"] == "failed"
    assert view["clients"][0]["error"] == "boom"


def test_server_restart_gives_running_tasks_a_grace_period(server: Server) -> None:
    from datetime import timedelta

    from fastapi.testclient import TestClient

    from fleetcast.server.app import create_app
    from fleetcast.server.db import Target, utcnow

    a = server.agent("52:54:00:00:00:01")
    dep = server.deploy()
    t = a.heartbeat()["task"]
    a.progress(t["task_id"], done=1 << 20, checkpoint=3)
    orch = server.http.app.state.orchestrator  # type: ignore[attr-defined]
    with orch.db.transaction() as s:  # the server was down for an hour while the agent kept writing
        s.get(Target, t["task_id"]).last_report = utcnow() - timedelta(seconds=3600)
    restarted = create_app(server.settings, catalog=server.catalog)
    with TestClient(restarted) as http:
        headers = {"Authorization": f"Bearer {a.credential}"}
        r = http.post(f"/api/agent/tasks/{t['task_id']}/progress", json={"phase": "writing"}, headers=headers)
        assert r.json() == {"cancel": False}
        view = http.get(
            f"/api/deployments/{dep['deployment']}", headers={"Authorization": f"Bearer {server.admin}"}
        )
        assert view.json()["clients"][0]["state"] == "running"
        assert view.json()["clients"][0]["checkpoint_chunk"] == 3


def test_retry_failed_clients_keeps_names_and_ips(server: Server) -> None:
    a = server.agent("52:54:00:00:00:01")
    b = server.agent("52:54:00:00:00:02")
    dep = server.deploy(batch=2, name="LAB-{n:02}", ip="10.0.0.101/24", gateway="10.0.0.1")
    ta, tb = a.heartbeat()["task"], b.heartbeat()["task"]
    early = server.post(f"/api/deployments/{dep['deployment']}/retry", status=409)
    assert early["message"] == (
        f"deployment {dep['deployment']} is still running; "
        "its failed clients can be retried when it has finished"
    )
    b.result(tb["task_id"], "failed", "boom")
    a.result(ta["task_id"])
    again = server.post(f"/api/deployments/{dep['deployment']}/retry", status=201)
    assert [(c["mac"], c["n"], c["name"], c["ip"], c["state"]) for c in again["clients"]] == [
        ("52:54:00:00:00:02", 2, "LAB-02", "10.0.0.102/24", "queued")
    ]
    assert again["deployment"] != dep["deployment"]
    task = b.heartbeat()["task"]
    assert task is not None
    server.post(f"/api/deployments/{again['deployment']}/retry", status=409)  # still running
    assert [x["action"] for x in server.get("/api/audit")["audit"]][:1] == ["deployment-retry"]
