"""Issues 9, 10 and 11 end to end: `fleetcast serve` in a network namespace, 3 `fleetcast agent`s in 3 others,
each on its own loop-device disk; Debian's Chromium (Playwright) reaches the server through a relay. One lab,
one relay and one browser serve every test of the module (in file order; each signs in on its own page).

1. Set the admin password, add an operator on the Users page, sign in as them, see 3 clients connect, run
   the whole wizard (errors shown beside their fields on the way), watch every client reach done live on
   the deployment page, check the names and IPs shown; a second deployment cancelled; the audit log names
   the operator.
2. Capture a client's disk from its inventory panel: a name that exists and a disk rule that matches no
   disk refused in plain words (the second by the real agent), then a capture to done with its numbers.
3. A multicast deployment from the wizard that waits for 5 clients: 3 join, *Start now*, every client
   done with the transport it finished with and the packs it repaired.
4. Retry of a failed client (its disk does not match the rule)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from consolekit import PASSWORD, browser, new_page, relay, set_password, shot, sign_in
from playwright.sync_api import Browser, Page, expect

from fleetcast.lab.deploy_demo import PORT, FleetLab, build_golden
from fleetcast.lab.sample_disk import MiB
from fleetcast.progress import human_bytes

pytestmark = pytest.mark.e2e

CLIENTS = 3
RATE = "60mbit"
NAMES = ["LAB-01", "LAB-02", "LAB-03"]
IPS = ["10.77.0.101/24", "10.77.0.102/24", "10.77.0.103/24"]
DISKS = [256 * MiB, 256 * MiB, 288 * MiB]  # the third one does not match "size<270M" (test 4)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetLab]:
    tmp_path = tmp_path_factory.mktemp("console")
    golden = tmp_path / "golden.img"
    build_golden(golden, size=256 * MiB, extra_mib=24)
    with FleetLab(tmp_path, len(DISKS), disk_sizes=DISKS) as lab:
        lab.capture_image(golden, "linux", pack_size=1 * MiB)
        golden.unlink()
        lab.start_server()
        lab.add_disks()
        lab.start_agents()
        lab.wait_enrolled(len(DISKS))
        lab.net.limit(lab.net.server, RATE)
        yield lab


@pytest.fixture(scope="module")
def url(lab: FleetLab) -> Iterator[str]:
    with relay(lab.net.server.name, lab.net.server.ip, PORT) as u:
        yield u


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with browser() as b:
        yield b


def _admin(b: Browser, url: str) -> Page:
    """A page of its own, signed in as admin (the first visit sets the password)."""
    page = new_page(b)
    page.goto(url + "/")
    if page.url.endswith("/setup"):
        set_password(page, url)
    else:
        sign_in(page, url, "admin", PASSWORD)
        page.wait_for_url(url + "/")
    page.locator("body[data-ready]").wait_for()
    return page


def _next(page: Page, step: int, name: str) -> None:
    shot(page, f"deploy-{step:02}-{name}")
    page.get_by_role("button", name="Next").click()
    expect(page.locator(f'fieldset[data-step="{step + 1}"]')).to_be_visible()


def test_console_wizard_deploys_three_clients(lab: FleetLab, url: str, chromium: Browser) -> None:
    b = chromium  # the lab, the relay and the browser are the module's
    page = new_page(b)
    set_password(page, url)
    expect(page.locator("#connected")).to_have_text("3 clients connected")

    # an operator, added on the Users page
    page.get_by_role("link", name="Users").click()
    page.get_by_label("User name").fill("op1")
    page.get_by_label("Role").select_option("operator")
    page.get_by_label("Password (at least 8 characters)").fill("short")
    page.get_by_role("button", name="Add user").click()
    expect(page.locator('.error[data-for="password"]')).to_have_text(
        "The password has 5 characters; at least 8 are needed. "
        "A few words are easier to remember than symbols."
    )
    page.get_by_label("Password (at least 8 characters)").fill("operator password")
    page.get_by_role("button", name="Add user").click()
    expect(page.locator("#users tbody")).to_contain_text("op1")
    shot(page, "users")
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, url, "op1", "operator password")
    page.wait_for_url(url + "/")
    expect(page.locator("#connected")).to_have_text("3 clients connected")
    expect(page.locator('#clients tbody tr[data-state="idle"]')).to_have_count(3)
    shot(page, "dashboard-operator")
    tablet = new_page(b, 768, 1024)
    tablet.context.add_cookies(page.context.cookies())
    tablet.goto(url + "/")
    expect(tablet.locator("#connected")).to_have_text("3 clients connected")
    shot(tablet, "dashboard-tablet")
    tablet.close()

    # the wizard, in AID's order
    page.get_by_role("button", name="Select all").click()
    page.get_by_role("button", name="Deploy to selected").click()
    page.wait_for_url("**/deploy?clients=*")
    page.get_by_label("Image to deploy").select_option("linux")
    _next(page, 1, "image")
    expect(page.locator("#client-choices input:checked")).to_have_count(3)
    _next(page, 2, "clients")
    page.get_by_label("Disk rule").fill("0")
    _next(page, 3, "disk")
    page.get_by_label("Clients writing at once").fill("2")
    _next(page, 4, "batch")
    name = page.locator("#name")
    name.fill("LAB")
    page.get_by_role("button", name="Next").click()
    expect(page.locator('.error[data-for="name"]')).to_contain_text(
        "Name pattern 'LAB' has no {n}: all 3 clients would get the same name"
    )
    shot(page, "deploy-05-name-error")
    name.fill("LAB-{n:02}")
    expect(page.locator("#name-preview")).to_contain_text("LAB-03")
    _next(page, 5, "names")
    # an IP list first: one client missing, then one given another client's current address
    clients = sorted(lab.get("/api/clients")["clients"], key=lambda c: c["mac"])
    page.get_by_label("A list (CSV)").check()
    ip_list = page.get_by_label("IP list: one line per client", exact=False)
    ip_list.fill(f"mac,name,ip\n{clients[0]['mac']},,10.77.0.101/24\n")
    page.get_by_role("button", name="Next").click()
    expect(page.locator('.error[data-for="ip_list"]')).to_have_text(
        f"Client {clients[1]['mac']} (number 2) has no line in the IP list. "
        "Add a line MAC,NAME,IP for it, or leave it out of the deployment."
    )
    taken = clients[2]["address"]
    ip_list.fill(
        "mac,name,ip\n"
        + "".join(f"{c['mac']},,{ip}\n" for c, ip in zip(clients, [f"{taken}/24", *IPS[1:]], strict=True))
    )
    conflicts = page.locator("#ip-conflicts")
    holder = clients[2]["mac"] + (f" ({clients[2]['hostname']})" if clients[2]["hostname"] else "")
    expect(conflicts).to_have_text(
        f"Conflict: {taken} (for LAB-01) is the current address of client {holder}."
    )
    expect(page.locator("#ip-preview")).to_contain_text(f"{taken}/24")
    shot(page, "deploy-06-ip-list-conflict")
    page.get_by_label("A range").check()
    page.get_by_label("First address / prefix").fill("10.77.0.253/24")
    page.get_by_label("Gateway").fill("10.77.0.1")
    page.get_by_label("DNS servers (comma-separated)").fill("10.77.0.1")
    page.get_by_role("button", name="Next").click()
    expect(page.locator('.error[data-for="ip"]')).to_contain_text(
        "IP range 10.77.0.253/24 has room for 2 clients (10.77.0.253-10.77.0.254) but 3 are selected"
    )
    shot(page, "deploy-06-ip-conflict")
    page.get_by_label("First address / prefix").fill("10.77.0.101/24")
    expect(page.locator("#ip-preview")).to_contain_text("10.77.0.103/24")
    expect(conflicts).to_be_hidden()
    _next(page, 6, "ip")
    # Windows options: an unattend.xml for a Linux image is refused beside its field
    page.get_by_label("This one:").check()
    page.get_by_label("unattend.xml document").fill('<unattend xmlns="urn:schemas-microsoft-com:unattend"/>')
    page.get_by_role("button", name="Next").click()
    expect(page.locator('.error[data-for="unattend"]')).to_have_text(
        "An unattend.xml only applies to Windows images, and this image holds linux. "
        "Leave the Windows options at their defaults for this image."
    )
    shot(page, "deploy-07-windows-refused")
    page.get_by_label("Made by fleetcast (name, IP)").check()
    _next(page, 7, "windows")
    page.get_by_label("Nothing").check()
    _next(page, 8, "after")
    review = page.locator("#review")
    for n, ip in zip(NAMES, IPS, strict=True):
        expect(review).to_contain_text(n)
        expect(review).to_contain_text(ip)
    expect(page.locator("#review-windows")).to_have_text(
        "Windows: new machine SID, machine IDs reset, no drivers added, unattend.xml by fleetcast"
    )
    # the same plan as `fleetcast deploy --plan` with these options
    args = [
        "deploy", "linux", "--server", lab.url, f"--token={lab.admin_token}", "--clients", "all",
        "--disk", "0", "--name", "LAB-{n:02}", "--ip", "10.77.0.101/24", "--gateway", "10.77.0.1",
        "--dns", "10.77.0.1", "--plan",
    ]  # fmt: skip
    cli_plan = lab.cli(*args, "--json")
    assert cli_plan.returncode == 0, cli_plan.stderr
    planned = json.loads(cli_plan.stdout)
    shown_rows = [
        [cell.inner_text() for cell in row.locator("td").all()] for row in review.locator("tbody tr").all()
    ]
    assert shown_rows == [[str(c["n"]), c["mac"], c["name"], c["ip"]] for c in planned["clients"]]
    text = lab.cli(*args).stdout.decode().splitlines()
    windows = page.locator("#review-windows").inner_text()
    assert f"w{windows[1:]}" in text
    shot(page, "deploy-09-review")
    page.get_by_role("button", name="Start deployment").click()
    page.wait_for_url(re.compile(r".*/deployments/\d+$"))

    # live: every client reaches done without a reload
    rows = page.locator("#targets tbody tr")
    expect(rows).to_have_count(3)
    page.locator('#targets tbody tr[data-state="running"]').first.wait_for(timeout=300_000)
    shot(page, "deployment-running")
    expect(page.locator('#targets tbody tr[data-state="done"]')).to_have_count(3, timeout=600_000)
    expect(page.locator("#dep-state")).to_have_text("done")
    shot(page, "deployment-done")
    shown = [(r.locator("td").nth(1).inner_text(), r.locator("td").nth(2).inner_text()) for r in rows.all()]
    assert shown == list(zip(NAMES, IPS, strict=True))
    expect(page.locator("#log")).to_contain_text("client-done")
    # one client's log
    page.get_by_role("button", name="log of LAB-02").click()
    expect(page.locator("#log-title")).to_have_text("Log of LAB-02")
    shown_log = page.locator("#log li:visible")
    expect(shown_log.filter(has_text="client-done")).to_have_count(1)
    expect(shown_log.filter(has_text="phase writing")).to_have_count(1)
    assert all("LAB-02" in line for line in shown_log.all_inner_texts())
    shot(page, "deployment-client-log")
    page.get_by_role("button", name="Show every client's log").click()
    expect(page.locator("#log li:visible").filter(has_text="client-done")).to_have_count(3)

    page.get_by_role("link", name="Clients").click()
    expect(page.locator('#clients tbody tr[data-state="done"]')).to_have_count(3)
    for agent, n, ip in zip(sorted(lab.agents, key=lambda a: a.node.mac), NAMES, IPS, strict=True):
        expect(page.locator(f'#clients tbody tr[data-mac="{agent.node.mac}"]')).to_contain_text(f"{n} {ip}")
    shot(page, "dashboard-done")
    page.get_by_role("link", name="Deployments").click()
    expect(page.locator("#deployments tbody")).to_contain_text("op1")
    shot(page, "deployments")
    page.get_by_role("link", name="Images").click()
    page.get_by_role("button", name="linux").click()
    expect(page.locator("#image-detail")).to_contain_text("linux")
    shot(page, "images")

    # a second deployment, one at a time, cancelled from its page: the queued clients never start.
    # Slower link (about 13 s per client): the deployment cannot finish before the page is ready
    # on a loaded machine
    lab.net.limit(lab.net.server, "16mbit")
    page.get_by_role("link", name="Deploy", exact=True).click()
    page.get_by_label("Image to deploy").select_option("linux")
    for step in range(1, 9):
        if step == 4:
            page.get_by_label("Clients writing at once").fill("1")
        page.get_by_role("button", name="Next").click()
        expect(page.locator(f'fieldset[data-step="{step + 1}"]')).to_be_visible()
    page.get_by_role("button", name="Start deployment").click()
    page.wait_for_url(re.compile(r".*/deployments/\d+$"))
    # wait on state, not time: the page's handlers are in place and the deployment runs
    page.locator("body[data-ready]").wait_for()
    expect(page.locator("#dep-state")).to_have_text("running")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel deployment").click()
    expect(page.locator("#dep-state")).to_have_text(re.compile("^cancell(ing|ed)$"))
    expect(page.locator("#dep-state")).to_have_text("cancelled", timeout=300_000)
    expect(page.locator('#targets tbody tr[data-state="cancelled"]')).not_to_have_count(0)
    shot(page, "deployment-cancelled")

    audit = lab.get("/api/audit")["audit"]
    assert [(a["actor"], a["action"]) for a in audit] == [
        ("op1", "deployment-cancel"),
        ("op1", "deployment-create"),
        ("op1", "deployment-create"),
        ("op1", "signin"),
        ("admin", "signout"),
        ("admin", "user-add"),
        ("admin", "console-setup"),
    ]
    assert PASSWORD  # the admin's password was set by the first visit


def _dd(page: Page, box: str, term: str) -> str:
    return page.locator(f'{box} dt:text-is("{term}") + dd').inner_text()


def test_console_captures_a_client(lab: FleetLab, url: str, chromium: Browser) -> None:
    """Issue 11 from the console: the client deployed as LAB-02 is captured back to the server."""
    lab.net.limit(lab.net.server, RATE)
    page = _admin(chromium, url)
    mac = sorted(a.node.mac for a in lab.agents)[1]

    def open_form() -> None:
        page.locator(f'#clients tbody tr[data-mac="{mac}"] button.link').click()
        page.get_by_role("button", name="Capture this disk…").click()
        expect(page.locator("#capture-form")).to_be_visible()

    open_form()
    page.get_by_label("Image name").fill("linux")
    page.get_by_role("button", name="Start capture").click()
    expect(page.locator('.error[data-for="capture-name"]')).to_have_text(
        "An image named linux is already on the server. "
        "Pick another name, or tick “Replace the image of that name”."
    )
    # a rule that matches no disk: the real agent refuses before it reads anything
    page.get_by_label("Image name").fill("lab-02")
    page.get_by_label("Disk rule").fill("serial=NO-SUCH-DISK")
    page.get_by_role("button", name="Start capture").click()
    page.wait_for_url(re.compile(r".*/deployments/\d+$"))
    expect(page.locator("#capture-refusal")).to_have_text(
        re.compile(
            r"^No disk of this client matches the disk rule serial=NO-SUCH-DISK\. Its disks: /dev/loop"
        ),
        timeout=120_000,
    )
    expect(page.locator("h1")).to_contain_text("Capture")
    shot(page, "capture-refused-no-disk")

    page.get_by_role("link", name="Clients").click()
    page.locator("body[data-ready]").wait_for()
    open_form()
    page.get_by_label("Image name").fill("lab-02")
    page.get_by_role("button", name="Start capture").click()
    page.wait_for_url(re.compile(r".*/deployments/\d+$"))
    capture_id = int(page.url.rsplit("/", 1)[1])
    row = page.locator("#targets tbody tr")
    expect(row).to_have_attribute("data-state", "done", timeout=300_000)
    expect(page.locator("#capture-done")).to_have_text("Image lab-02 is on the server: see it in Images.")
    view = lab.get(f"/api/captures/{capture_id}")
    assert view["state"] == "done" and view["image"] == "lab-02", view
    expect(page.locator("#capture")).to_contain_text(human_bytes(view["bytes_sent"]))
    assert _dd(page, "#capture", "Sent to the server") == human_bytes(view["bytes_sent"])
    assert (
        _dd(page, "#capture", "Chunks")
        == f"{view['chunks_new']} new, {view['chunks_known']} already on the server"
    )
    # it was deployed from "linux": most of it was on the server already
    assert view["chunks_known"] > view["chunks_new"], view
    shot(page, "capture-done")
    page.get_by_role("link", name="see it in Images").click()
    expect(page.locator("#images tbody")).to_contain_text("lab-02")
    assert [(a["actor"], a["action"]) for a in lab.get("/api/audit")["audit"][:3]] == [
        ("admin", "capture-create"),
        ("admin", "capture-create"),
        ("admin", "signin"),
    ]


def test_console_multicast_waits_then_starts_now(lab: FleetLab, url: str, chromium: Browser) -> None:
    """Issue 10 from the console: a multicast deployment waits for 5 clients; 3 join; Start now."""
    lab.net.limit(lab.net.server, RATE)
    page = _admin(chromium, url)
    page.get_by_role("link", name="Deploy", exact=True).click()
    page.get_by_label("Image to deploy").select_option("linux")
    for step in range(1, 9):
        if step == 4:
            page.get_by_label("Clients writing at once").fill("3")
            page.get_by_label("Multicast (one stream for a batch)").check()
            page.get_by_label("Start the stream when this many clients have joined").fill("5")
            page.get_by_label("Or after waiting this many seconds at most").fill("600")
        if step == 8:
            page.get_by_label("Nothing").check()
        page.get_by_role("button", name="Next").click()
        expect(page.locator(f'fieldset[data-step="{step + 1}"]')).to_be_visible()
    expect(page.locator("#review-transport")).to_have_text(
        "Transport: multicast, one stream per batch; it starts when 5 clients have joined, "
        "or after 10:00 (min:s) at most."
    )
    page.get_by_role("button", name="Start deployment").click()
    page.wait_for_url(re.compile(r".*/deployments/\d+$"))
    dep = int(page.url.rsplit("/", 1)[1])
    session = page.locator("#multicast-session")
    expect(session).to_contain_text("Waiting: 3 of 5 clients joined", timeout=180_000)
    shot(page, "multicast-waiting")
    page.get_by_role("button", name="Start now").click()
    expect(page.locator("#multicast-status")).to_have_text("Starting the stream now with 3 clients.")
    expect(page.locator('#targets tbody tr[data-state="done"]')).to_have_count(3, timeout=600_000)
    expect(page.locator("#dep-state")).to_have_text("done")
    view = lab.get(f"/api/deployments/{dep}")
    assert view["transport"] == "multicast"
    column = page.locator("#targets thead th").all_inner_texts().index("Transport")
    for c in view["clients"]:  # the words the page shows are those of each client's result line
        (line,) = [x for x in c["changes"] if x.startswith("transport: ")]
        m = re.match(r"transport: (\w+) \((\d+) packs by multicast, (\d+) repaired by HTTP", line)
        assert m, line
        repaired = int(m[3])
        words = f"{m[1]}, {repaired} pack{'' if repaired == 1 else 's'} repaired by HTTP"
        cell = page.locator(f'#targets tbody tr[data-mac="{c["mac"]}"] td').nth(column)
        expect(cell).to_have_text(re.compile("^" + re.escape(words)))
    assert [s["state"] for s in lab.get(f"/api/deployments/{dep}/multicast")["sessions"]] == ["finished"]
    expect(session).to_contain_text("Finished:")
    shot(page, "multicast-done")


def test_console_retries_the_failed_client(lab: FleetLab, url: str, chromium: Browser) -> None:
    """The third client's disk does not match the rule size<270M: it fails, the others are done; *Retry the
    failed clients* starts a new deployment of that client alone, with its name and IP."""
    lab.net.limit(lab.net.server, RATE)
    page = _admin(chromium, url)
    big = next(a for a in lab.agents if a.backing.stat().st_size == DISKS[2])
    page.get_by_role("link", name="Deploy", exact=True).click()
    page.get_by_label("Image to deploy").select_option("linux")
    for step in range(1, 9):
        if step == 3:
            page.get_by_label("Disk rule").fill("size<270M")
        if step == 4:
            page.get_by_label("Clients writing at once").fill("3")
        if step == 5:
            page.locator("#name").fill("LAB-{n:02}")
        if step == 6:
            page.get_by_label("A range").check()
            page.get_by_label("First address / prefix").fill("10.77.0.101/24")
        page.get_by_role("button", name="Next").click()
        expect(page.locator(f'fieldset[data-step="{step + 1}"]')).to_be_visible()
    page.get_by_role("button", name="Start deployment").click()
    page.wait_for_url(re.compile(r".*/deployments/\d+$"))
    first = page.url
    expect(page.locator("#dep-state")).to_have_text("failed", timeout=300_000)
    failed = page.locator('#targets tbody tr[data-state="failed"]')
    expect(failed).to_have_count(1)
    expect(failed).to_have_attribute("data-mac", big.node.mac)
    expect(failed).to_contain_text("matches no disk")
    name, ip = (failed.locator("td").nth(i).inner_text() for i in (1, 2))
    assert name in NAMES and ip in IPS, (name, ip)
    shot(page, "deployment-failed")
    page.get_by_role("button", name="Retry the failed clients").click()
    page.wait_for_url(lambda u: u != first and re.match(r".*/deployments/\d+$", u) is not None)
    rows = page.locator("#targets tbody tr")
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text(name)
    expect(rows).to_contain_text(ip)
    expect(page.locator("#dep-state")).to_have_text(
        "failed", timeout=300_000
    )  # the rule still does not match
    shot(page, "deployment-retried")
    assert [(a["actor"], a["action"]) for a in lab.get("/api/audit")["audit"][:3]] == [
        ("admin", "deployment-retry"),
        ("admin", "deployment-create"),
        ("admin", "signin"),
    ]
