from __future__ import annotations

import pytest

from fleetcast.errors import UsageError
from fleetcast.identity.windows.sid import (
    Sid,
    check_seed,
    parse_machine_sid,
    random_machine_sid,
    replace_binary,
    replace_text,
    seeded_machine_sid,
)

EXPECTED = "expected S-1-<authority>-<sub-authority>..., e.g. S-1-5-21-1-2-3"
MACHINE = "S-1-5-21-4070822719-3404542230-2541167049"
MACHINE_BYTES = bytes.fromhex("0104000000000005150000003fd3a3f21631edcac9217797")


def test_parse_format_and_binary_round_trip() -> None:
    sid = Sid.parse(MACHINE)
    assert str(sid) == MACHINE
    assert sid.to_bytes() == MACHINE_BYTES
    assert Sid.from_bytes(MACHINE_BYTES) == sid
    assert sid.is_machine
    user = sid.child(1001)
    assert str(user) == MACHINE + "-1001"
    assert user.is_in_domain(sid) and not sid.is_in_domain(sid)
    assert not Sid.parse("S-1-5-32-544").is_machine


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("S-1-5-21-1-2", None),
        (
            "X-1-5-21",
            f"malformed SID 'X-1-5-21': {EXPECTED}",
        ),
        (
            "S-1-5-21-1-2-x",
            f"malformed SID 'S-1-5-21-1-2-x': {EXPECTED}",
        ),
        (
            "S-1-5-21-1-2-4294967296",
            "malformed SID 'S-1-5-21-1-2-4294967296': sub-authority 4294967296 does not fit in 32 bits",
        ),
        ("", f"malformed SID '': {EXPECTED}"),
    ],
)
def test_malformed_sid_errors(text: str, message: str | None) -> None:
    if message is None:
        assert str(Sid.parse(text)) == text
        with pytest.raises(UsageError) as exc:
            parse_machine_sid(text)
        assert str(exc.value) == f"SID {text!r} is not a machine SID: expected S-1-5-21-<a>-<b>-<c> (no RID)"
        return
    with pytest.raises(UsageError) as exc:
        Sid.parse(text)
    assert str(exc.value) == message


def test_from_bytes_rejects_short_data() -> None:
    with pytest.raises(ValueError, match="need 24 bytes, have 20"):
        Sid.from_bytes(MACHINE_BYTES[:20])


def test_seeded_sid_is_reproducible_and_random_differs() -> None:
    a, b = seeded_machine_sid("lab-1"), seeded_machine_sid("lab-1")
    assert a == b and a.is_machine
    assert seeded_machine_sid("lab-2") != a
    assert random_machine_sid() != random_machine_sid()


@pytest.mark.parametrize("seed", ["", "has space", "x" * 65, "semi;colon"])
def test_malformed_seed(seed: str) -> None:
    with pytest.raises(UsageError) as exc:
        check_seed(seed)
    assert str(exc.value) == (
        f"malformed SID seed {seed!r}: expected 1-64 characters from A-Z a-z 0-9 . _ : -"
    )


def test_replace_binary_replaces_domain_and_accounts_only() -> None:
    old, new = Sid.parse(MACHINE), seeded_machine_sid("n")
    other = Sid.parse("S-1-5-21-226059406-2984137831-1201299043")
    data = b"xx" + old.to_bytes() + old.child(500).to_bytes() + other.child(500).to_bytes() + b"yy"
    out, n = replace_binary(data, old, new)
    assert n == 2
    assert out == b"xx" + new.to_bytes() + new.child(500).to_bytes() + other.child(500).to_bytes() + b"yy"


def test_replace_text_respects_number_boundaries() -> None:
    old, new = Sid.parse("S-1-5-21-1-2-3"), Sid.parse("S-1-5-21-7-8-9")
    text = "S-1-5-21-1-2-3-1001 S-1-5-21-1-2-34 xS-1-5-21-1-2-3 s-1-5-21-1-2-3"
    out, n = replace_text(text, old, new)
    assert out == "S-1-5-21-7-8-9-1001 S-1-5-21-1-2-34 xS-1-5-21-7-8-9 S-1-5-21-7-8-9"
    assert n == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # int() would raise ValueError past 4300 digits: the digit count is checked first
        ("S-1-5-21-" + "9" * 5000, f"sub-authority {'9' * 5000} does not fit in 32 bits"),
        ("S-1-" + "7" * 5000 + "-21", f"authority {'7' * 5000} does not fit in 48 bits"),
        # non-ASCII digits (Arabic-Indic one) are not a SID, though int() would read them
        ("S-1-5-21-\u0661-2-3", EXPECTED),
    ],
)
def test_hostile_sid_text_is_a_usage_error(text: str, message: str) -> None:
    with pytest.raises(UsageError) as exc:
        Sid.parse(text)
    assert str(exc.value) == f"malformed SID {text!r}: {message}"


def test_leading_zeros_parse_to_the_same_sid() -> None:
    assert Sid.parse("S-1-05-0021-" + "0" * 5000 + "1-2-3") == Sid.parse("S-1-5-21-1-2-3")


def test_seed_with_trailing_newline_is_malformed() -> None:
    with pytest.raises(UsageError) as exc:
        check_seed("lab-1\n")
    assert str(exc.value) == (
        "malformed SID seed 'lab-1\\n': expected 1-64 characters from A-Z a-z 0-9 . _ : -"
    )


def test_from_bytes_names_a_bad_header() -> None:
    with pytest.raises(ValueError) as exc:
        Sid.from_bytes(b"\0\0" + bytes([2, 16]) + MACHINE_BYTES[2:], 2)
    assert str(exc.value) == (
        "SID at offset 2: expected revision 1 and at most 15 sub-authorities, found revision 2 and 16"
    )
