"""Pure planning: client selection and order, names, addresses; every refusal's exact text."""

from __future__ import annotations

import pytest

from fleetcast.errors import ClientNotFound, UsageError
from fleetcast.server.plan import (
    Assignment,
    Network,
    PlanClient,
    allocate_ips,
    check_assignments,
    make_plan,
    normalize_mac,
    parse_clients,
    render_names,
    select_clients,
)

ROOM = [
    PlanClient(3, "52:54:00:00:00:03", ("52:54:00:00:00:03", "52:54:00:00:10:03")),
    PlanClient(1, "52:54:00:00:00:01"),
    PlanClient(2, "52:54:00:00:00:02"),
]


def test_all_is_sorted_by_mac_and_a_list_keeps_its_order() -> None:
    assert [c.client_id for c in select_clients("all", ROOM)] == [1, 2, 3]
    assert [c.client_id for c in select_clients("all", list(reversed(ROOM)))] == [1, 2, 3]
    assert [c.client_id for c in select_clients("52:54:00:00:00:02, 52-54-00-00-00-01", ROOM)] == [2, 1]
    # a secondary MAC finds its client too
    assert [c.client_id for c in select_clients(["52:54:00:00:10:03"], ROOM)] == [3]


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("", UsageError, "no clients selected"),
        (" , ", UsageError, "no clients selected"),
        ("52:54:00:00:00:01,52:54:00:00:00:01", UsageError, "client 52:54:00:00:00:01 is listed twice"),
        (
            "52:54:00:00:00:03,52:54:00:00:10:03",
            UsageError,
            "client 52:54:00:00:10:03 is listed twice (it is client 52:54:00:00:00:03)",
        ),
        ("52:54:00:00:00:09", ClientNotFound, "client 52:54:00:00:00:09 is not enrolled"),
        (
            "52:54:00:00:00",
            UsageError,
            "client '52:54:00:00:00' is not a MAC address: expected aa:bb:cc:dd:ee:ff",
        ),
        (
            "52:54-00:00:00:01",
            UsageError,
            "client '52:54-00:00:00:01' is not a MAC address: expected aa:bb:cc:dd:ee:ff",
        ),
    ],
)
def test_client_selection_errors(spec: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        select_clients(spec, ROOM)
    assert str(info.value) == message


def test_all_with_nobody_enrolled() -> None:
    with pytest.raises(UsageError, match=r"^no clients are enrolled$"):
        select_clients("all", [])


def test_mac_forms() -> None:
    assert normalize_mac("AABBCCDDEEFF") == "aa:bb:cc:dd:ee:ff"
    assert normalize_mac(" aa-bb-cc-dd-ee-ff ") == "aa:bb:cc:dd:ee:ff"
    assert parse_clients("all") is None
    assert parse_clients(["all"]) is None


def test_names() -> None:
    assert render_names("LAB-{n:02}", 3) == ["LAB-01", "LAB-02", "LAB-03"]
    assert render_names("pc{n}", 11)[-1] == "pc11"
    assert render_names("SERVER", 1) == ["SERVER"]
    assert render_names("pc-{n:03}", 2) == ["pc-001", "pc-002"]
    assert render_names("{n}x{n:02}", 1) == ["1x01"]


@pytest.mark.parametrize(
    ("pattern", "count", "message"),
    [
        ("LAB-{n:02", 2, "name pattern 'LAB-{n:02' is not valid: '{' at position 4 is not closed"),
        ("LAB-{}", 2, "name pattern 'LAB-{}' uses {}; only {n} or {n:0W} (W = 1-15) is allowed"),
        ("{mac}", 2, "name pattern '{mac}' uses {mac}; only {n} or {n:0W} (W = 1-15) is allowed"),
        ("LAB", 3, "name pattern 'LAB' has no {n}: all 3 clients would get the same name"),
        ("LAB-{n:q}", 1, "name pattern 'LAB-{n:q}' uses {n:q}; only {n} or {n:0W} (W = 1-15) is allowed"),
        ("-{n}", 1, "name pattern '-{n}' gives '-1', which is not a valid computer name"),
        ("LAB {n}", 1, "name pattern 'LAB {n}' gives 'LAB 1', which is not a valid computer name"),
        (
            "x" * 63 + "{n}",
            1,
            f"name pattern '{'x' * 63}{{n}}' gives '{'x' * 63}1', which is not a valid computer name",
        ),
        ("LAB-{n:.0}", 2, "name pattern 'LAB-{n:.0}' uses {n:.0}; only {n} or {n:0W} (W = 1-15) is allowed"),
        # issue 12 item 5: a huge width is refused before anything is formatted; nested fields are text
        (
            "{n:99999999}",
            1,
            "name pattern '{n:99999999}' uses {n:99999999}; only {n} or {n:0W} (W = 1-15) is allowed",
        ),
        (
            "{n:{n.__class__.__base__.__subclasses__}}",
            1,
            "name pattern '{n:{n.__class__.__base__.__subclasses__}}' uses "
            "{n:{n.__class__.__base__.__subclasses__}; only {n} or {n:0W} (W = 1-15) is allowed",
        ),
        ("LAB-}{n}", 1, "name pattern 'LAB-}{n}' is not valid: '}' at position 4 has no '{'"),
        # issue 12 item 6: a trailing newline is not part of a valid name
        ("LAB-{n}\n", 1, "name pattern 'LAB-{n}\\n' gives 'LAB-1\\n', which is not a valid computer name"),
    ],
)
def test_name_errors(pattern: str, count: int, message: str) -> None:
    with pytest.raises(UsageError) as info:
        render_names(pattern, count)
    assert str(info.value) == message


def test_ips() -> None:
    net = allocate_ips("10.0.0.101/24", 3, "10.0.0.1", ["10.0.0.1", " 9.9.9.9"])
    assert net.addresses == ("10.0.0.101/24", "10.0.0.102/24", "10.0.0.103/24")
    assert net.gateway == "10.0.0.1"
    assert net.dns == ("10.0.0.1", "9.9.9.9")
    assert allocate_ips("10.0.0.253/24", 2, None, []).addresses == ("10.0.0.253/24", "10.0.0.254/24")
    assert allocate_ips(None, 4, None, []).addresses == ()
    assert allocate_ips("fd00::10/64", 2, "fd00::1", []).addresses == ("fd00::10/64", "fd00::11/64")


@pytest.mark.parametrize(
    ("ip", "count", "gateway", "dns", "message"),
    [
        (
            "10.0.0.101",
            1,
            None,
            [],
            "IP range '10.0.0.101' has no prefix length: expected START/PREFIX such as 10.0.0.101/24",
        ),
        (
            "10.0.0.300/24",
            1,
            None,
            [],
            "IP range '10.0.0.300/24' is not valid: expected START/PREFIX such as 10.0.0.101/24",
        ),
        (
            "10.0.0.1/33",
            1,
            None,
            [],
            "IP range '10.0.0.1/33' is not valid: expected START/PREFIX such as 10.0.0.101/24",
        ),
        ("10.0.0.0/24", 1, None, [], "IP range 10.0.0.0/24 starts at the network address 10.0.0.0"),
        ("10.0.0.255/24", 1, None, [], "IP range 10.0.0.255/24 starts at the broadcast address 10.0.0.255"),
        ("10.0.0.5/31", 1, None, [], "IP range 10.0.0.5/31: prefix /31 is too long, expected /30 or shorter"),
        (
            "10.0.0.250/24",
            8,
            None,
            [],
            "IP range 10.0.0.250/24 has room for 5 clients (10.0.0.250-10.0.0.254) but 8 are selected",
        ),
        (
            "10.0.0.1/30",
            3,
            None,
            [],
            "IP range 10.0.0.1/30 has room for 2 clients (10.0.0.1-10.0.0.2) but 3 are selected",
        ),
        (
            "10.0.0.1/24",
            4,
            "10.0.0.3",
            [],
            "IP range 10.0.0.1/24 for 4 clients (10.0.0.1-10.0.0.4) includes the gateway 10.0.0.3",
        ),
        (
            "10.0.0.10/24",
            4,
            "10.0.1.1",
            [],
            "gateway 10.0.1.1 is not in the network 10.0.0.0/24 of the IP range",
        ),
        ("10.0.0.10/24", 4, "router", [], "gateway 'router' is not an IP address"),
        ("10.0.0.10/24", 4, None, ["dns.example"], "DNS server 'dns.example' is not an IP address"),
        (None, 4, "10.0.0.1", [], "a gateway (10.0.0.1) only applies to static addresses"),
        (None, 4, None, ["10.0.0.1"], "DNS servers (10.0.0.1) only apply to static addresses"),
    ],
)
def test_ip_errors(ip: str | None, count: int, gateway: str | None, dns: list[str], message: str) -> None:
    with pytest.raises(UsageError) as info:
        allocate_ips(ip, count, gateway, dns)
    assert str(info.value) == message


def test_make_plan_pairs_names_and_addresses_in_order() -> None:
    clients = select_clients("all", ROOM)
    plan, _ = make_plan(clients, name_pattern="LAB-{n:02}", ip_range="10.0.0.101/24", gateway=None, dns=[])
    assert [(a.n, a.client_id, a.name, a.ip) for a in plan] == [
        (1, 1, "LAB-01", "10.0.0.101/24"),
        (2, 2, "LAB-02", "10.0.0.102/24"),
        (3, 3, "LAB-03", "10.0.0.103/24"),
    ]
    plain, _ = make_plan(clients, name_pattern=None, ip_range=None, gateway=None, dns=[])
    assert [(a.name, a.ip) for a in plain] == [(None, None)] * 3


@pytest.mark.parametrize(
    ("ip", "message"),
    [
        ("::/0", "IP range ::/0 is the whole address space (/0): give the LAN's prefix"),
        ("0.0.0.0/0", "IP range 0.0.0.0/0 is the whole address space (/0): give the LAN's prefix"),
        (
            "224.0.0.1/24",
            "IP range 224.0.0.1/24 is in a multicast range (224.0.0.0/24); clients cannot be given those "
            "addresses",
        ),
        (
            "127.0.0.2/8",
            "IP range 127.0.0.2/8 is in the loopback range (127.0.0.0/8); clients cannot be given those "
            "addresses",
        ),
        (
            "0.0.0.1/8",
            'IP range 0.0.0.1/8 is in the "this network" range (0.0.0.0/8); clients cannot be given those '
            "addresses",
        ),
        (
            "169.254.0.10/16",
            "IP range 169.254.0.10/16 is in a link-local range (169.254.0.0/16); clients cannot be given "
            "those addresses",
        ),
        (
            "fe80::1%eth0/64",
            "IP range fe80::1%eth0/64 has a zone (%eth0); a static address is set without one",
        ),
        (
            "fe80::10/64",
            "IP range fe80::10/64 is in a link-local range (fe80::/64); clients cannot be given those "
            "addresses",
        ),
        (
            "240.0.0.1/24",
            "IP range 240.0.0.1/24 is in a reserved range (240.0.0.0/24); clients cannot be given those "
            "addresses",
        ),
        (
            "ff02::1/64",
            "IP range ff02::1/64 is in a multicast range (ff02::/64); clients cannot be given those "
            "addresses",
        ),
    ],
)
def test_unusable_ranges_are_refused(ip: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        allocate_ips(ip, 2, None, [])
    assert str(info.value) == message


def test_usable_ranges_pass() -> None:
    assert allocate_ips("2001:db8::10/64", 2, None, []).addresses == ("2001:db8::10/64", "2001:db8::11/64")
    assert allocate_ips("192.168.1.10/24", 1, "192.168.1.1", []).addresses == ("192.168.1.10/24",)


@pytest.mark.parametrize(
    ("os_hint", "name", "message"),
    [
        (
            "windows",
            "1234",
            "client 52:54:00:00:00:01 would be named '1234', which the image's personalizer refuses: "
            "computer name '1234' is all digits; Windows needs at least one letter or hyphen",
        ),
        (
            "windows",
            "LAB_1",
            "client 52:54:00:00:00:01 would be named 'LAB_1', which the image's personalizer refuses: "
            "computer name 'LAB_1' contains characters Windows does not allow: '_'",
        ),
        (
            "linux",
            "-lab",
            "client 52:54:00:00:00:01 would be named '-lab', which the image's personalizer refuses: "
            "computer name '-lab' is not a valid host name",
        ),
    ],
)
def test_names_the_personalizer_refuses(os_hint: str, name: str, message: str) -> None:
    a = Assignment(1, 1, "52:54:00:00:00:01", name, None)
    with pytest.raises(UsageError) as info:
        check_assignments([a], Network((), None, ()), os_hint)
    assert str(info.value) == message


def test_duplicate_and_unusable_addresses_in_the_final_plan() -> None:
    a = Assignment(1, 1, "52:54:00:00:00:01", "a", "10.0.0.5/24")
    b = Assignment(2, 2, "52:54:00:00:00:02", "b", "10.0.0.5/24")
    with pytest.raises(UsageError) as info:
        check_assignments([a, b], Network((), None, ()), "linux")
    assert (
        str(info.value)
        == "clients 52:54:00:00:00:01 and 52:54:00:00:00:02 would both get the address 10.0.0.5"
    )
    c = Assignment(3, 3, "52:54:00:00:00:03", "c", "127.0.0.5/8")
    with pytest.raises(UsageError) as info:
        check_assignments([a, c], Network((), None, ()), "linux")
    assert str(info.value).startswith("IP range 127.0.0.5/8 is in the loopback range")
    with pytest.raises(UsageError) as info:
        check_assignments([a], Network((), None, ("224.0.0.251",)), "linux")
    assert str(info.value) == "DNS server 224.0.0.251 is not a usable address"
    check_assignments([a], Network((), None, ("10.0.0.1",)), "windows")


def test_static_ip_refused_when_the_image_has_no_network_stack() -> None:
    """Issue 12 item 12: the plan refuses what identity.linux.network.require_stack would refuse on
    the agent after the whole disk is written."""
    from fleetcast.server.plan import check_static_ip

    static = Assignment(1, 1, "52:54:00:00:00:01", "a", "10.0.0.5/24")
    dhcp = Assignment(2, 2, "52:54:00:00:00:02", "b", None)
    none = [{"os": "linux", "network_stack": None}]
    with pytest.raises(UsageError) as info:
        check_static_ip([dhcp, static], "minimal", none)
    assert str(info.value) == (
        "image 'minimal' uses no network stack fleetcast can configure (netplan, NetworkManager, "
        "systemd-networkd, ifupdown), so client 52:54:00:00:00:01 cannot get the static IP 10.0.0.5/24"
    )
    assert info.value.hint is not None and info.value.hint.startswith("deploy without --ip")
    check_static_ip([dhcp], "minimal", none)  # DHCP only: nothing to configure
    check_static_ip([static], "lab", [{"os": "linux", "network_stack": "netplan"}])
    check_static_ip([static], "old", [])  # captured before the stack was recorded: the agent decides
    check_static_ip([static], "win", [{"os": "windows", "version": "10.0"}])
    check_static_ip([static], "two", [*none, {"os": "linux", "network_stack": "ifupdown"}])
