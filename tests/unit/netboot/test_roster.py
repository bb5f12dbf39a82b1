"""CSV registrations: every bad line named with its number, nothing imported if one is bad."""

from __future__ import annotations

import pytest

from fleetcast.errors import UsageError
from fleetcast.netboot import roster


def test_good_csv_with_header_comments_and_blank_lines() -> None:
    text = "\ufeffMAC,name,IP\n# room 12\n\n52-54-00-00-00-01,LAB-01,10.0.0.51\n525400000002,,\n"
    entries = roster.parse_csv(text)
    assert [e.to_dict() for e in entries] == [
        {"mac": "52:54:00:00:00:01", "name": "LAB-01", "ip": "10.0.0.51", "boot": "auto"},
        {"mac": "52:54:00:00:00:02", "name": None, "ip": None, "boot": "auto"},
    ]
    assert [e.line for e in entries] == [4, 5]


def test_every_bad_line_is_named() -> None:
    text = (
        "52:54:00:00:00:01,LAB-01,10.0.0.51\n"
        "52:54:00:00:00:zz,LAB-02,10.0.0.52\n"
        "52:54:00:00:00:03,LAB_03,10.0.0.53\n"
        "52:54:00:00:00:04,LAB-04,10.0.0.300\n"
        "52:54:00:00:00:01,LAB-05,10.0.0.55\n"
        "52:54:00:00:00:06,lab-01,10.0.0.51\n"
        "52:54:00:00:00:07,LAB-07,10.0.0.57,pxe\n"
        "52:54:00:00:00:08,LAB-08,10.0.0.58,auto,extra\n"
        "01:00:5e:00:00:01,LAB-09,\n"
        ",LAB-10,10.0.0.60\n"
    )
    with pytest.raises(roster.RosterError) as err:
        roster.parse_csv(text, source="room12.csv")
    assert err.value.problems == [
        "line 2: '52:54:00:00:00:zz' is not a MAC address: expected aa:bb:cc:dd:ee:ff",
        "line 3: name 'LAB_03' is not a valid computer name (letters, digits and '-', at most 63, "
        "not starting or ending with '-')",
        "line 4: IP address '10.0.0.300' is not an IPv4 address (A.B.C.D or A.B.C.D/PREFIX)",
        "line 5: MAC 52:54:00:00:00:01 is also on line 1",
        "line 6: name lab-01 is also on line 1",
        "line 6: IP 10.0.0.51 is also on line 1",
        "line 7: boot method 'pxe' is not one of auto, secureboot",
        "line 8: 5 columns, expected MAC,name,IP",
        "line 9: MAC address 01:00:5e:00:00:01 is a multicast address and cannot identify a machine",
        "line 10: the MAC is empty: expected aa:bb:cc:dd:ee:ff",
    ]
    assert err.value.message.startswith("room12.csv: 10 problems, nothing imported:\nline 2: ")
    assert err.value.hint == "fix the lines named and import the whole file again"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "CSV holds no registrations"),
        ("mac,name,ip\n", "CSV holds no registrations"),
        ("52:54:00:00:00:01\x00", "CSV contains a NUL byte: is it a text file?"),
    ],
)
def test_empty_or_binary(text: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        roster.parse_csv(text)
    assert err.value.message == message


@pytest.mark.parametrize(
    ("ip", "message"),
    [
        ("10.0.0.0/24", "IP address '10.0.0.0/24' is the network or broadcast address of 10.0.0.0/24"),
        ("10.0.0.5/31", "IP address '10.0.0.5/31': prefix /31 is too long, expected /30 or shorter"),
        ("224.0.0.5", "IP address '224.0.0.5' cannot be a client's address"),
        ("0.0.0.0", "IP address '0.0.0.0' cannot be a client's address"),
    ],
)
def test_bad_ips(ip: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        roster.check_ip(ip)
    assert err.value.message == message


def test_ip_with_prefix_is_kept() -> None:
    assert roster.registration("52:54:00:00:00:01", " LAB-1 ", "10.1.2.3/16").ip == "10.1.2.3/16"
