"""`fleetcast deployments list | show | cancel` against a real `fleetcast serve` process."""

from __future__ import annotations

from pathlib import Path

import pytest
from servekit import SimAgent, cli, json_out, make_image, serve

pytestmark = pytest.mark.integration


def test_list_show_and_cancel_a_deployment(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_image(data / "store")
    with serve(data) as server:
        agents = [SimAgent(server, mac) for mac in ("52:54:00:aa:00:01", "52:54:00:aa:00:02")]
        for a in agents:
            a.enroll()
        auth = ["--server", server.url, "--token", server.admin]
        started = json_out(
            cli("deploy", "tiny", *auth, "--clients", "all", "--disk", "0", "--batch", "1", "--json")
        )
        dep = started["deployment"]

        listed = json_out(cli("deployments", "list", *auth, "--json"))
        assert [(d["deployment"], d["image"], d["state"]) for d in listed["deployments"]] == [
            (dep, "tiny", "running")
        ]
        shown = json_out(cli("deployments", "show", str(dep), *auth, "--json"))
        assert sorted(shown) == ["clients", "deployment"]
        assert [c["state"] for c in shown["clients"]] == ["queued", "queued"]

        cancelled = cli("deployments", "cancel", str(dep), *auth, "--json", check=False)
        assert cancelled.returncode == 0, cancelled.stderr
        assert {c["state"] for c in json_out(cancelled)["clients"]} == {"cancelled"}
        after = cli("deployments", "show", str(dep), *auth)
        assert f"deployment {dep}: cancelled" in after.stdout
        waited = cli("deployments", "show", str(dep), "--wait", *auth, check=False)
        assert waited.returncode == 1  # finished, but not every client is done

        audit = server.get("/api/audit")
        actions = [r["action"] for r in audit.get("audit", audit.get("entries", []))]
        assert any("cancel" in a for a in actions), audit


def test_bad_deployment_ids_are_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serve(data) as server:
        auth = ["--server", server.url, "--token", server.admin]
        bad = cli("deployments", "show", "x1", *auth, check=False)
        assert bad.returncode == 2
        assert "argument ID: expected a deployment number, found 'x1'" in bad.stderr
        missing = cli("deployments", "cancel", "42", *auth, check=False)
        assert missing.returncode == 3
        assert "deployment 42 does not exist" in missing.stderr
