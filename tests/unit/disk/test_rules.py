"""disk.rules: parsing (with exact error texts) and selection."""

from __future__ import annotations

import pytest

from fleetcast.disk.discovery import DiskInventory
from fleetcast.disk.rules import SizeBound, parse_rule, parse_size, select_disk
from fleetcast.errors import DiskError

SDA = DiskInventory(path="/dev/sda", size=256_000_000_000, model="Samsung SSD 870", serial="S1")
SDB = DiskInventory(path="/dev/sdb", size=1_000_000_000_000, model="WDC WD10", serial="W1", rotational=True)
USB = DiskInventory(path="/dev/sdc", size=64_000_000_000, model="Cruzer", serial="U1", usb=True)
DISKS = [SDA, SDB, USB]


def test_parse_index() -> None:
    assert parse_rule("0").index == 0
    assert parse_rule(" 2 ").index == 2


def test_parse_combo() -> None:
    rule = parse_rule("model=Samsung*, size>=120G,size<2TiB")
    assert rule.index is None
    assert rule.patterns == (("model", "Samsung*"),)
    assert rule.sizes == (SizeBound(">=", 120_000_000_000), SizeBound("<", 2 * 2**40))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "disk rule is empty"),
        ("  ", "disk rule is empty"),
        ("0,,1", "disk rule '0,,1' has an empty term"),
        ("0,1", "disk rule '0,1' has more than one disk number"),
        ("-1", "disk rule '-1': term '-1' is not understood"),
        ("first", "disk rule 'first': term 'first' is not understood"),
        ("colour=red", "disk rule 'colour=red': term 'colour=red' is not understood"),
        ("serial=", "disk rule 'serial=': serial= needs a value"),
        ("size>=12X", "disk rule 'size>=12X': unknown size unit 'X' in 'size>=12X'"),
        ("size=>12G", "disk rule 'size=>12G': term 'size=>12G' is not understood"),
        ("size>=", "disk rule 'size>=': term 'size>=' is not understood"),
        # a digit that is not 0-9 was an index for str.isdigit() and then a ValueError from int()
        ("\u00b2", "disk rule '\u00b2': term '\u00b2' is not understood"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(DiskError) as info:
        parse_rule(text)
    assert str(info.value) == message


def test_parse_size_units() -> None:
    assert parse_size("120G") == 120_000_000_000
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("1.5T") == 1_500_000_000_000
    assert parse_size("4096") == 4096
    with pytest.raises(DiskError) as info:
        parse_size("lots")
    assert str(info.value) == "size 'lots' is not understood: expected a number with an optional unit"


def test_sizes_are_exact_and_bounded() -> None:
    # float() made 400 digits inf and int(inf) an OverflowError escaping the parser
    huge = "9" * 400
    with pytest.raises(DiskError) as info:
        parse_rule(f"size>={huge}T")
    assert str(info.value) == f"disk rule 'size>={huge}T': term 'size>={huge}T' is not understood"
    with pytest.raises(DiskError) as info:
        parse_size(huge)
    assert str(info.value).startswith("size '999")
    with pytest.raises(DiskError) as info:
        parse_rule("1" * 400)
    assert str(info.value).endswith("is not understood")
    assert parse_rule(f"size<{'9' * 30}T").sizes == (SizeBound("<", int("9" * 30) * 10**12),)
    # float() also rounded large byte counts: 2**53 + 1 bytes
    assert parse_size("9007199254740993") == 9007199254740993
    assert parse_size("0.1G") == 100_000_000


def test_select_index_counts_fixed_disks_only() -> None:
    assert select_disk(parse_rule("0"), DISKS, 1) is SDA
    assert select_disk(parse_rule("1"), DISKS, 1) is SDB
    with pytest.raises(DiskError) as info:
        select_disk(parse_rule("2"), DISKS, 1)
    assert str(info.value) == (
        "disk rule '2' matches no disk: there are 2 matching fixed disk(s), so number 2 does not exist; "
        "disks seen: /dev/sda (256.0 GB, model 'Samsung SSD 870', serial 'S1'); "
        "/dev/sdb (1000.0 GB, model 'WDC WD10', serial 'W1'); "
        "/dev/sdc (64.0 GB, model 'Cruzer', serial 'U1', removable)"
    )


def test_select_by_serial_model_size() -> None:
    assert select_disk(parse_rule("serial=w1"), DISKS, 1) is SDB
    assert select_disk(parse_rule("model=samsung*"), DISKS, 1) is SDA
    assert select_disk(parse_rule("size>=500G"), DISKS, 1) is SDB
    assert select_disk(parse_rule("serial=U1"), DISKS, 1) is USB  # explicit: removable allowed
    assert select_disk(parse_rule("size>=100G,1"), DISKS, 1) is SDB


def test_select_no_match() -> None:
    with pytest.raises(DiskError) as info:
        select_disk(parse_rule("serial=NOPE"), DISKS, 1)
    assert str(info.value).startswith(
        "disk rule 'serial=NOPE' matches no disk; disks seen: /dev/sda (256.0 GB"
    )


def test_select_several() -> None:
    with pytest.raises(DiskError) as info:
        select_disk(parse_rule("size>=100G"), DISKS, 1)
    message = str(info.value)
    assert message.startswith(
        "disk rule 'size>=100G' matches 2 disks: /dev/sda (256.0 GB, model 'Samsung SSD 870', serial 'S1'); "
        "/dev/sdb (1000.0 GB, model 'WDC WD10', serial 'W1'); disks seen: "
    )
    assert info.value.hint is not None


def test_select_too_small() -> None:
    with pytest.raises(DiskError) as info:
        select_disk(parse_rule("0"), DISKS, 300_000_000_000)
    assert str(info.value).startswith(
        "disk /dev/sda is 256000000000 bytes (256.0 GB) but the image needs at least 300000000000 bytes "
        "(300.0 GB); disks seen: "
    )


def test_select_no_disks_at_all() -> None:
    with pytest.raises(DiskError) as info:
        select_disk(parse_rule("0"), [], 1)
    assert str(info.value) == (
        "disk rule '0' matches no disk: there are 0 matching fixed disk(s), so number 0 does not exist; "
        "disks seen: none"
    )
