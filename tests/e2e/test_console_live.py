"""Console pages fed by many events, on a loopback `fleetcast serve` with simulated agents (cheap: no
namespaces, no disks); one server, one browser and one signed-in page for the whole module.

1. A room of 20 clients deploying: the dashboard follows every client's state and progress from the
   event payloads and reads /api/clients again only rarely (counted from the browser's requests).
2. Network capture from a client's inventory panel: the refusals in plain words (name exists before
   anything is read; no disk matches and BitLocker from the agent, with the real error text), and the
   progress (phase, bytes, rate, ETA) on the capture's page.
3. The deploy wizard's transport step (multicast, min clients, max wait, drop-out rate, repair) and the
   review; on the deployment page the waiting session, its start rules changed, Start now, and per
   client the transport it finished with and the packs it repaired.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from consolekit import browser, new_page, set_password, shot
from playwright.sync_api import Page, expect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration" / "server"))
from servekit import Serve, SimAgent, make_image, serve

pytestmark = pytest.mark.e2e

ROOM = 20
MACS = [f"52:54:00:cc:00:{i:02x}" for i in range(1, ROOM + 1)]


class Room:
    """The simulated agents; a thread heartbeats the idle ones (stale after 15 s otherwise). Whoever
    drives an agent holds ``lock``; a heartbeat that hands out a task leaves it in ``agent.task``."""

    def __init__(self, server: Serve) -> None:
        self.server = server
        self.agents = [SimAgent(server, mac) for mac in MACS]
        self.pool = ThreadPoolExecutor(8)  # a room talks at once
        self.each(SimAgent.enroll)
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(3):
            with self.lock:
                self.each(self.heartbeat, [a for a in self.agents if a.task is None])

    @staticmethod
    def heartbeat(a: SimAgent) -> dict[str, Any] | None:
        reply = a.post("/api/agent/heartbeat", {"inventory": None, "task_id": None})
        if reply["task"] is not None:
            a.task = reply["task"]
        return a.task

    def each(self, fn: Callable[[SimAgent], object], agents: list[SimAgent] | None = None) -> None:
        list(self.pool.map(fn, self.agents if agents is None else agents))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.pool.shutdown()

    def api(self, method: str, path: str, body: Any = None) -> Any:
        r = httpx.request(method, self.server.url + path, json=body, headers=self.server.headers, timeout=30)
        assert r.status_code in (200, 201), r.text
        return r.json()


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Room]:
    data = tmp_path_factory.mktemp("live") / "data"
    make_image(data / "store", "tiny")
    with serve(data) as server:
        r = Room(server)
        try:
            yield r
        finally:
            r.close()


@pytest.fixture(scope="module")
def page(room: Room) -> Iterator[Page]:
    with browser() as b:
        p = new_page(b)
        set_password(p, room.server.url)
        yield p


def _dashboard(page: Page, url: str) -> None:
    page.goto(url + "/")
    page.locator("body[data-ready]").wait_for()
    expect(page.locator("#connected")).to_have_text(f"{ROOM} clients connected")


def _take(room: Room, a: SimAgent, kind: str) -> dict[str, Any]:
    """Heartbeat until the agent holds a task of ``kind`` (called with room.lock held)."""
    for _ in range(100):
        task = a.task or room.heartbeat(a)
        if task is not None:
            assert task["kind"] == kind, task
            return task
        time.sleep(0.1)
    raise AssertionError(f"{a.mac} got no {kind} task")


def _result(a: SimAgent, state: str, error: str | None = None, changes: list[str] | None = None) -> None:
    assert a.task is not None
    body = {"state": state, "error": error, "disk": None, "action": "none", "changes": changes or []}
    a.post(f"/api/agent/tasks/{a.task['task_id']}/result", body)
    a.task = None


def test_dashboard_follows_a_room_from_the_events(room: Room, page: Page) -> None:
    url = room.server.url
    _dashboard(page, url)
    rereads: list[str] = []
    page.on("request", lambda r: rereads.append(r.url) if "/api/clients" in r.url else None)
    body = {"image": "tiny", "clients": "all", "batch": ROOM, "then": "none"}
    dep = room.api("POST", "/api/deployments", body)["deployment"]

    def events() -> int:
        return len(room.server.get("/api/events/log", deployment_id=dep)["events"])

    events_before = events()
    with room.lock:
        room.each(lambda a: _take(room, a, "deploy"))
        for step in range(1, 4):  # three progress reports from every client
            room.each(lambda a: a.progress("writing", step, 4))  # noqa: B023 (used at once)
    rows = page.locator("#clients tbody tr")
    expect(page.locator('#clients tbody tr[data-state="deploying"]')).to_have_count(ROOM)
    expect(rows.first).to_contain_text("75 %")
    shot(page, "live-01-room-deploying")
    with room.lock:
        room.each(lambda a: _result(a, "done"), room.agents[: ROOM // 2])
        room.each(lambda a: _result(a, "failed", "disk /dev/sim too small"), room.agents[ROOM // 2 :])
    expect(page.locator('#clients tbody tr[data-state="done"]')).to_have_count(ROOM // 2)
    expect(page.locator('#clients tbody tr[data-state="failed"]')).to_have_count(ROOM - ROOM // 2)
    shot(page, "live-02-room-finished")
    seen = events() - events_before
    assert seen >= 5 * ROOM, seen
    # every change came from an event's payload: at most the 15 s poll read the list meanwhile
    # (the console used to read it again after every state event, twice a second in a busy room)
    assert len(rereads) <= 2, rereads


def _open_capture_form(page: Page, name: str) -> None:
    page.get_by_role("button", name=name, exact=True).click()
    page.get_by_role("button", name="Capture this disk…").click()
    expect(page.locator("#capture-form")).to_be_visible()


def test_capture_from_the_console_refusals_and_progress(room: Room, page: Page) -> None:
    from fleetcast.disk.discovery import DiskInventory
    from fleetcast.disk.filesystems.raw import BitLocker
    from fleetcast.disk.rules import parse_rule, select_disk
    from fleetcast.errors import FleetcastError

    url = room.server.url
    golden = room.agents[0]
    _dashboard(page, url)
    _open_capture_form(page, "sim-01")
    form = page.locator("#capture-form")
    # an image of that name exists: refused before anything is read
    form.get_by_label("Image name").fill("tiny")
    form.get_by_role("button", name="Start capture").click()
    expect(form.locator('.error[data-for="capture-name"]')).to_have_text(
        "An image named tiny is already on the server. "
        "Pick another name, or tick “Replace the image of that name”."
    )
    shot(page, "live-03-capture-name-exists")

    def agent_error(fn: Callable[[], object]) -> str:  # the agent's words for a refusal (agent/runner.py)
        try:
            fn()
        except FleetcastError as exc:
            return exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
        raise AssertionError("no refusal")

    # no disk matches the rule: the agent refuses, the capture's page says so in plain words
    form.get_by_label("Image name").fill("golden-a")
    form.get_by_label("Disk rule").fill("serial=NOPE")
    form.get_by_role("button", name="Start capture").click()
    page.wait_for_url(re.compile(r".*/deployments/\d+$"))
    page.locator("body[data-ready]").wait_for()
    expect(page.locator("h1")).to_contain_text("Capture")
    disks = [DiskInventory(path="/dev/sim01", size=1 << 30)]
    with room.lock:
        _take(room, golden, "capture")
        golden.progress("selecting-disk", 0, 0)
        _result(golden, "failed", agent_error(lambda: select_disk(parse_rule("serial=NOPE"), disks, 0)))
    expect(page.locator("#capture-refusal")).to_have_text(
        re.compile(r"^No disk of this client matches the disk rule serial=NOPE\. Its disks: /dev/sim01 .*")
    )
    shot(page, "live-04-capture-no-disk")

    # progress like a deployment's, then BitLocker found on a partition
    _dashboard(page, url)
    _open_capture_form(page, "sim-01")
    page.get_by_label("Image name").fill("golden-b")
    page.get_by_role("button", name="Start capture").click()
    page.wait_for_url(re.compile(r".*/deployments/\d+$"))
    page.locator("body[data-ready]").wait_for()
    with room.lock:
        _take(room, golden, "capture")
        golden.progress("capturing", 300 << 20, 1200 << 20)
    row = page.locator("#targets tbody tr")
    expect(row).to_have_attribute("data-state", "running")
    expect(row).to_contain_text("capturing")
    expect(row).to_contain_text("25 %")
    expect(row).to_contain_text("300.0 MiB of 1.2 GiB")
    expect(row).to_contain_text("1.0 MB/s")
    expect(row.locator("td").nth(8)).to_have_text("0:01")  # ETA
    expect(page.locator("#capture h2")).to_have_text(f"Network capture of sim-01 ({golden.mac})")
    shot(page, "live-05-capture-progress")
    with room.lock:
        error = agent_error(lambda: BitLocker().check_capturable(None, 0, 40 << 30, "partition 3"))  # type: ignore[arg-type]
        _result(golden, "failed", error)
    expect(page.locator("#capture-refusal")).to_have_text(
        "Partition 3 (40.0 GiB, BitLocker) is encrypted with BitLocker, so fleetcast cannot read which "
        "blocks are used. Turn BitLocker off in Windows (manage-bde -off C:, then wait for the decryption "
        "to end) and capture again."
    )
    expect(row).to_have_attribute("data-state", "failed")
    shot(page, "live-06-capture-bitlocker")
    captures = room.api("GET", "/api/captures")["captures"]
    assert [(c["image"], c["state"], c["disk_rule"]) for c in captures[:2]] == [
        ("golden-b", "failed", "0"),
        ("golden-a", "failed", "serial=NOPE"),
    ]


def test_multicast_wizard_rules_start_now_and_results(room: Room, page: Page) -> None:
    url = room.server.url
    three = room.agents[:3]
    page.goto(url + "/deploy?clients=" + ",".join(a.mac for a in three))
    page.locator("body[data-ready]").wait_for()
    page.get_by_label("Image to deploy").select_option("tiny")

    def to_review(first: int) -> None:
        for step in range(first, 9):
            page.get_by_role("button", name="Next").click()
            expect(page.locator(f'fieldset[data-step="{step + 1}"]')).to_be_visible()

    def back_to_step_4() -> None:
        for step in range(9, 4, -1):
            page.get_by_role("button", name="Back").click()
            expect(page.locator(f'fieldset[data-step="{step - 1}"]')).to_be_visible()

    # auto with the server's defaults (multicast from 4): a batch of 3 goes unicast
    to_review(1)
    back_to_step_4()
    page.get_by_label("Clients writing at once").fill("3")
    page.get_by_role("radio", name="Auto").check()
    to_review(4)
    expect(page.locator("#review-transport")).to_have_text(
        "Transport: unicast (auto: batches of 3 clients (multicast from 4))."
    )
    back_to_step_4()
    for step in range(4, 9):
        if step == 4:
            page.get_by_label("Multicast (one stream for a batch)").check()
            page.get_by_label("Start the stream when this many clients have joined").fill("0")
            page.get_by_role("button", name="Next").click()
            expect(page.locator('.error[data-for="transport"]')).to_have_text(
                "The stream needs at least 1 client to start: "
                "give 1 or more, or leave it empty for the batch's size."
            )
            page.get_by_label("Start the stream when this many clients have joined").fill("5")
            page.get_by_label("Or after waiting this many seconds at most").fill("600")
            page.get_by_label("Drop a client that holds the stream below this rate").fill("-1")
            page.get_by_role("button", name="Next").click()
            expect(page.locator('.error[data-for="transport"]')).to_have_text(
                "The drop-out rate is 0 or more Mbit/s (0: never drop a client)."
            )
            page.get_by_label("Drop a client that holds the stream below this rate").fill("50")
            page.get_by_label("Late joiners and missing packs").select_option("cycle")
            shot(page, "live-07-wizard-transport")
        page.get_by_role("button", name="Next").click()
        expect(page.locator(f'fieldset[data-step="{step + 1}"]')).to_be_visible()
    expect(page.locator("#review-transport")).to_have_text(
        "Transport: multicast, one stream per batch; it starts when 5 clients have joined, "
        "or after 10:00 (min:s) at most. A client below 50 Mbit/s is dropped and finishes by HTTP. "
        "Late joiners and missing packs: the next cycle of the stream."
    )
    shot(page, "live-08-review-multicast")
    page.get_by_role("button", name="Start deployment").click()
    page.wait_for_url(re.compile(r".*/deployments/\d+$"))
    page.locator("body[data-ready]").wait_for()
    dep = int(page.url.rsplit("/", 1)[1])
    assert room.api("GET", f"/api/deployments/{dep}")["transport"] == "multicast"
    options = room.api("GET", f"/api/deployments/{dep}/multicast")["options"]
    assert (options["drop_below"], options["repair"]) == (50 * 125_000, "cycle")  # Mbit/s -> bytes/s
    panel = page.locator("#multicast")
    expect(panel.locator("#multicast-session")).to_contain_text("No session yet")
    with room.lock:
        sessions = []
        for a in three:
            task = _take(room, a, "deploy")
            sessions.append(a.post(f"/api/agent/multicast/{task['task_id']}/join", {}))
    assert {s["state"] for s in sessions} == {"waiting"}
    expect(panel.locator("#multicast-session")).to_contain_text("Waiting: 3 of 5 clients joined")
    expect(panel.locator("#multicast-session")).to_contain_text("or 10:00 (min:s) after the first joined")
    shot(page, "live-09-multicast-waiting")
    # change the start rules while it waits
    panel.get_by_label("Or this many seconds after the first joined, at most").fill("900")
    panel.get_by_role("button", name="Change the start rules").click()
    expect(panel.locator("#multicast-status")).to_have_text("Start rules changed.")
    expect(panel.locator("#multicast-session")).to_contain_text("or 15:00 (min:s) after the first joined")
    view = room.api("GET", f"/api/deployments/{dep}/multicast")
    assert (view["sessions"][0]["min_clients"], view["sessions"][0]["max_wait"]) == (5, 900)
    # start now: with the 3 that joined
    panel.get_by_role("button", name="Start now").click()
    expect(panel.locator("#multicast-status")).to_have_text("Starting the stream now with 3 clients.")
    expect(panel.locator("#multicast-session")).not_to_have_attribute("data-state", "waiting")
    expect(panel.locator("#mc-rules")).to_have_count(0)
    shot(page, "live-10-multicast-started")
    types = [e["type"] for e in room.server.get("/api/events/log", deployment_id=dep)["events"]]
    assert types.count("multicast-rules-changed") == 2, types
    # per client: the transport it finished with and the packs it repaired
    finished = [
        ("multicast", 3, 0, "received"),
        ("multicast", 2, 1, "received"),
        ("unicast", 0, 3, "dropped"),
    ]
    with room.lock:
        for a, s, (transport, mc, repaired, outcome) in zip(three, sessions, finished, strict=True):
            assert a.task is not None
            done = {"transport": transport, "packs_multicast": mc, "packs_repaired": repaired}
            report = {"session": s["session"], "done": {**done, "outcome": outcome}}
            a.post(f"/api/agent/multicast/{a.task['task_id']}/report", report)
            line = f"transport: {transport} ({mc} packs by multicast, {repaired} repaired by HTTP; "
            line += f"multicast {outcome})"
            _result(a, "done", changes=[line])
    rows = page.locator("#targets tbody tr")
    expect(page.locator('#targets tbody tr[data-state="done"]')).to_have_count(3)
    column = page.locator("#targets thead th").all_inner_texts().index("Transport")
    expect(rows.nth(0).locator("td").nth(column)).to_have_text("multicast, 0 packs repaired by HTTP")
    expect(rows.nth(1).locator("td").nth(column)).to_have_text("multicast, 1 pack repaired by HTTP")
    expect(rows.nth(2).locator("td").nth(column)).to_have_text(
        "unicast, 3 packs repaired by HTTP (multicast dropped)"
    )
    shot(page, "live-11-multicast-results")
    # the same words after a reload (from each client's result line, the events not needed)
    page.reload()
    page.locator("body[data-ready]").wait_for()
    expect(rows.nth(1).locator("td").nth(column)).to_have_text("multicast, 1 pack repaired by HTTP")
