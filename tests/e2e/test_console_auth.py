"""Issue 9, sign-in and sessions: a real `fleetcast serve` (loopback) with 3 simulated agents, Debian's
Chromium through Playwright. First visit sets the admin password; wrong passwords refused and slowed;
a viewer cannot start a deployment; an expired session goes back to sign-in; the API without a token
and a cross-site POST are refused; bearer tokens keep working."""

from __future__ import annotations

import re
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from consolekit import PASSWORD, browser, new_page, set_password, shot, sign_in
from playwright.sync_api import expect

from fleetcast.progress import human_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration" / "server"))
from servekit import FLEETCAST, SimAgent, make_image, serve

pytestmark = pytest.mark.e2e

MACS = ["52:54:00:aa:00:01", "52:54:00:aa:00:02", "52:54:00:aa:00:03"]


def _add_user(data: Path, name: str, role: str, password: str) -> None:
    import subprocess

    proc = subprocess.run(
        [str(FLEETCAST), "admin", "user", "add", name, "--role", role, "--data", str(data)],
        input=password + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"user {name} added with role {role}\n"


WINDOWS_FACTS = {"product": "Windows 11 Pro", "edition": "Professional", "version": "23H2", "build": "22631",
                 "generalized": False, "machine_sid": "S-1-5-21-1004336348-1177238915-682003330",
                 "computer_name": "GOLDEN-PC"}  # fmt: skip


def _windows_image(store_root: Path) -> None:
    """A GPT disk with one NTFS-typed partition of random bytes, captured with the facts an OS
    inspection records at capture (``os_info`` of partition 1)."""
    import os
    import subprocess

    from fleetcast.store.capture import capture
    from fleetcast.store.images import ImageStore

    raw = store_root.parent / "win11.raw"
    with raw.open("wb") as fh:
        fh.truncate(16 << 20)
    table = "label: gpt\n,8M,EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n"
    subprocess.run(["sfdisk", "-q", str(raw)], input=table, text=True, check=True)
    with raw.open("r+b") as fh:
        fh.seek(2 << 20)
        fh.write(os.urandom(1 << 20))
    capture(raw, "win11", ImageStore(store_root), os_info={1: WINDOWS_FACTS})
    raw.unlink()


def test_sign_in_roles_sessions_and_refusals(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_image(data / "store", "tiny")
    _windows_image(data / "store")
    with serve(data) as server, browser() as b:
        agents = [SimAgent(server, mac) for mac in MACS]
        for agent in agents:
            agent.enroll()

        def heartbeats() -> None:  # the test outlasts stale_after (15 s) on a loaded machine
            for agent in agents:
                agent.step()  # no task: one heartbeat

        url = server.url
        # the API without a token (and without a session) is refused
        r = httpx.get(url + "/api/clients")
        assert r.status_code == 401
        assert r.json()["message"] == "this endpoint needs an Authorization: Bearer token"
        assert httpx.get(url + "/api/clients", headers=server.headers).status_code == 200

        page = new_page(b)
        page.goto(url + "/")
        page.wait_for_url("**/setup")
        shot(page, "01-setup")
        set_password(page, url)
        heartbeats()
        expect(page.locator("#connected")).to_have_text("3 clients connected")
        expect(page.locator("#clients tbody tr")).to_have_count(3)
        shot(page, "02-dashboard")
        # inventory on click
        page.get_by_role("button", name="sim-01").click()
        expect(page.locator("#inventory")).to_contain_text("Inventory of sim-01")
        expect(page.locator("#inventory")).to_contain_text("/dev/sim01")
        capture_button = page.locator("#client-actions").get_by_role("button", name="Capture this disk…")
        expect(capture_button).to_be_visible()
        shot(page, "03-inventory")
        # images: details, verify, delete
        page.get_by_role("link", name="Images").click()
        page.get_by_role("button", name="tiny").click()
        detail = page.locator("#image-detail")
        details = server.get("/api/images/tiny/details")
        assert details["unique_bytes"] == details["stored_bytes"] > 0  # the only image: all its packs
        expect(detail).to_contain_text(f"Bytes unique to this image{human_bytes(details['unique_bytes'])}")
        expect(detail.locator("#partitions tbody tr")).to_have_count(len(details["partitions"]))
        shot(page, "03-image-details")
        page.get_by_role("button", name="win11").click()
        expect(detail.locator("h2")).to_have_text("win11")
        facts = [("Windows version", "Windows 11 Pro 23H2 build 22631"), ("Edition", "Professional"),
                 ("Generalized (Sysprep)", "no"), ("Machine SID", WINDOWS_FACTS["machine_sid"]),
                 ("Computer name", "GOLDEN-PC")]  # fmt: skip
        for label, value in facts:
            expect(detail.locator(f'dt:text-is("{label}") + dd')).to_have_text(str(value))
        expect(detail.locator("#partitions tbody tr")).to_have_count(1)
        expect(detail.locator("#partitions tbody tr")).to_contain_text("8.0 MiB")
        shot(page, "03-image-details-windows")
        page.get_by_role("button", name="tiny").click()
        expect(detail.locator("h2")).to_have_text("tiny")  # its panel, not win11's, before Verify
        page.get_by_role("button", name="Verify").click()
        expect(page.locator("#image-detail [role=status]")).to_have_text(
            re.compile(r"^Image tiny is intact: \d+ chunks, [\d.]+ MiB verified\.$")
        )
        shot(page, "03-image-verified")
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Delete").click()
        expect(page.locator("#images tbody tr")).to_have_count(1)
        expect(page.locator("#images tbody")).not_to_contain_text("tiny")
        assert [(a["actor"], a["action"]) for a in server.get("/api/audit")["audit"]] == [
            ("admin", "image-delete"),
            ("admin", "console-setup"),
        ]
        make_image(data / "store", "tiny")  # back for the rest of the test
        # the setup page is gone once a password is set
        page.goto(url + "/setup")
        page.wait_for_url("**/signin")

        # a cross-site POST with the admin's cookie is refused, and so is one without the CSRF token
        cookie = next(c for c in page.context.cookies() if c["name"] == "fleetcast_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        jar = {"fleetcast_session": cookie["value"]}
        body = {"image": "tiny", "clients": "all", "disk": "0"}
        r = httpx.post(
            url + "/api/deployments", json=body, cookies=jar, headers={"Origin": "http://evil.example"}
        )
        assert r.status_code == 403
        assert (
            r.json()["message"] == "cross-site request refused: Origin http://evil.example is not this server"
        )
        r = httpx.post(url + "/api/deployments", json=body, cookies=jar)
        assert r.status_code == 403
        assert r.json()["message"] == "the request has no valid CSRF token"
        r = httpx.post(url + "/signin", data={"name": "admin", "password": PASSWORD},
                       headers={"Origin": "http://evil.example"})  # fmt: skip
        assert r.status_code == 403
        # the event stream takes the cookie (no token in the URL)
        r = httpx.get(url + "/api/events", params={"follow": "false", "since": "0"}, cookies=jar)
        assert r.status_code == 200
        assert "event: client-enrolled" in r.text

        # sign out: the session ends (its cookie no longer works)
        page.goto(url + "/")
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url("**/signin")
        assert httpx.get(url + "/api/clients", cookies=jar).status_code == 401

        # wrong passwords: refused, and after 3 in a row the name must wait (even with the right one)
        for _ in range(3):
            sign_in(page, url, "admin", "not the password")
            expect(page.locator("#password-error")).to_have_text("wrong user name or password.")
        shot(page, "04-wrong-password")
        audit = server.get("/api/audit")["audit"]
        assert [(a["actor"], a["action"], a["target"]) for a in audit[:5]] == [
            *[("", "signin-failed", "user 'admin'")] * 3,
            ("admin", "signout", "user admin"),
            ("admin", "image-delete", "image tiny"),
        ]
        # the counts are rows in the database (a restarted server still makes the name wait): 3 from
        # this address and 3 from anywhere, so the name waits 2 s now. Not on time: the rows are set to
        # a wait of 60 s (what more failures reach), and even the right password is refused
        db = sqlite3.connect(data / "fleetcast.db")
        rows = db.execute(
            "SELECT address, failures, not_before FROM console_signin_failures ORDER BY address"
        )
        assert [(a, n) for a, n, _ in rows.fetchall()] == [("*", 3), ("127.0.0.1", 3)]
        later = (datetime.now(UTC) + timedelta(seconds=60)).strftime("%Y-%m-%d %H:%M:%S.%f")
        with db:
            db.execute("UPDATE console_signin_failures SET not_before = ?", (later,))
        db.close()
        sign_in(page, url, "admin", PASSWORD)
        expect(page.locator("#password-error")).to_have_text(
            re.compile(r"^too many failed sign-ins for 'admin': try again in (5\d|60) s\.$")
        )
        shot(page, "05-slowed")

        # a viewer sees the clients but no deploy button, and the API refuses it a deployment
        _add_user(data, "viewer1", "viewer", "viewer password")
        heartbeats()
        sign_in(page, url, "viewer1", "viewer password")
        page.wait_for_url(url + "/")
        expect(page.locator("#connected")).to_have_text("3 clients connected")
        assert page.get_by_role("link", name="Deploy", exact=True).count() == 0
        assert page.get_by_role("button", name="Deploy to selected").count() == 0
        page.get_by_role("button", name="sim-01").click()  # its inventory: no capture for a viewer
        expect(page.locator("#inventory")).to_contain_text("Inventory of sim-01")
        expect(page.locator("#client-actions button")).to_have_count(0)
        shot(page, "06-viewer")
        post = """async ([path, body]) => {
            const csrf = document.querySelector('meta[name="csrf-token"]').content;
            const r = await fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json',
                'X-CSRF-Token': csrf}, body: JSON.stringify(body)});
            return [r.status, (await r.json()).message];
        }"""
        refused = (403, "viewer1 is a viewer: viewers cannot change anything")
        assert page.evaluate(post, ["/api/deployments", {"image": "tiny"}]) == list(refused)
        capture = {"client": MACS[0], "name": "by-a-viewer"}
        assert page.evaluate(post, ["/api/captures", capture]) == list(refused)
        page.goto(url + "/deploy")
        expect(page.locator("#wizard")).to_have_count(1)  # the page renders; Start is refused by the API

        # an expired session sends the browser to sign-in (leave the page first: its scripts would
        # also go to sign-in on their next 401 and abort the navigation below)
        page.goto("about:blank")
        db = sqlite3.connect(data / "fleetcast.db")
        with db:
            db.execute("UPDATE console_sessions SET expires_at = '2000-01-01 00:00:00.000000'")
        db.close()
        page.goto(url + "/images")
        page.wait_for_url("**/signin?expired=1")
        expect(page.locator(".note")).to_have_text("Your session has ended. Sign in again.")
        shot(page, "07-expired")

        # the bearer token keeps working for the CLI and scripts
        assert len(server.get("/api/clients")["clients"]) == 3

        # what an agent sends is shown as text, never as HTML
        evil = '<img src=x onerror="window.pwned=1">'
        windows = {"disk": "/dev/sda", "partition": 2, "machine_sid": "S-1-5-21-11-22-33",
                   "computer_name": "<i>PC</i>", "version": "Windows 10 Pro 22H2"}  # fmt: skip
        inventory = {"macs": ["52:54:00:aa:00:09"], "hostname": evil, "dmi": {"model": "<b>bold</b>"},
                     "windows": [windows]}  # fmt: skip
        r = httpx.post(
            url + "/api/agent/enroll", json={"enroll_token": server.enroll, "inventory": inventory}
        )
        assert r.status_code == 200, r.text
        heartbeats()
        sign_in(page, url, "viewer1", "viewer password")
        page.wait_for_url(url + "/")
        expect(page.locator("#connected")).to_have_text("4 clients connected")
        row = page.locator('#clients tbody tr[data-mac="52:54:00:aa:00:09"]')
        expect(row.get_by_role("button", name=evil)).to_have_count(1)
        expect(row).to_contain_text("<b>bold</b>")
        assert row.locator("img, b").count() == 0
        assert page.evaluate("window.pwned") is None
        # its inventory: the Windows installation its agent found (machine SID), as text
        row.get_by_role("button", name=evil).click()
        installs = page.locator("#windows-installs tbody tr")
        expect(installs).to_have_count(1)
        expect(installs).to_have_text("/dev/sda2<i>PC</i>Windows 10 Pro 22H2S-1-5-21-11-22-33")
        assert page.locator("#inventory i").count() == 0
        shot(page, "08-escaped")

        # a live page whose session ends goes to sign-in: its stream is refused (401), /api/me decides
        body = {"image": "tiny", "clients": "all", "disk": "0", "then": "none"}
        r = httpx.post(url + "/api/deployments", json=body, headers=server.headers)
        assert r.status_code == 201, r.text
        page.route(
            "**/api/events?*",
            lambda route: route.fulfill(
                status=401, content_type="application/json", body='{"message": "no"}'
            ),
        )
        page.goto(f"{url}/deployments/{r.json()['deployment']}")
        page.locator("body[data-ready]").wait_for()
        expect(page.locator("#targets tbody tr")).to_have_count(4)
        db = sqlite3.connect(data / "fleetcast.db")
        with db:
            db.execute("UPDATE console_sessions SET expires_at = '2000-01-01 00:00:00.000000'")
        db.close()
        page.wait_for_url("**/signin?expired=1", timeout=10_000)  # the deployment page has no timer

        # ... and an open stream does not outlive its session: the server ends it (checked every 10 s
        # at the latest keepalive), the browser's reconnect is refused, the page goes to sign-in
        page.unroute("**/api/events?*")
        sign_in(page, url, "viewer1", "viewer password")
        page.wait_for_url(url + "/")
        page.goto(f"{url}/deployments/{r.json()['deployment']}")
        page.locator("body[data-ready]").wait_for()
        db = sqlite3.connect(data / "fleetcast.db")
        with db:
            db.execute("DELETE FROM console_sessions")  # signed out elsewhere
        db.close()
        page.wait_for_url("**/signin?expired=1", timeout=60_000)
