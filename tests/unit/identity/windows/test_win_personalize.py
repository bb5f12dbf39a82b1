"""personalize on a plain directory tree, checked with python-registry and regipy."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
from regipy import registry as _regipy
from Registry import Registry
from tests.fixtures.windows_tree import TreeInfo, build_windows_tree
from tests.unit.identity.windows.win_dumps import Dump, dump

from fleetcast.errors import HiveError, IdentityError, UsageError
from fleetcast.identity.base import IdentitySettings, OsKind, get
from fleetcast.identity.windows import personalize
from fleetcast.identity.windows.personalizer import Options
from fleetcast.identity.windows.sid import Sid, seeded_machine_sid
from fleetcast.identity.windows.unattend import StaticIp

RegistryHive: Any = _regipy.RegistryHive  # regipy has no type hints

CONFIG = "Windows/System32/config"
NAME = "LAB-PC-07"


def _hives(root: Path) -> dict[str, Dump]:
    return {h: dump(root / CONFIG / h) for h in ("SYSTEM", "SOFTWARE", "SAM", "SECURITY")}


def _sub(data: bytes, old: Sid, new: Sid) -> bytes:
    return data.replace(old.to_bytes()[8:], new.to_bytes()[8:])


def _expected(before: dict[str, Dump], old: Sid, new: Sid, name: str) -> dict[str, Dump]:
    """What the dumps must look like after: the intended changes applied to the 'before' dumps by
    code independent of the product's."""
    out: dict[str, Dump] = {}
    lo, ln = str(old).lower(), str(new).lower()
    for hive, d in before.items():
        e: Dump = {}
        for key, vals in d.items():
            nv = {}
            for vname, (t, data) in vals.items():
                new_data = data
                if hive in ("SAM", "SECURITY") or "profilelist" in key or "profileguid" in key:
                    new_data = _sub(data, old, new)
                    if t == 1:
                        new_data = (
                            new_data.decode("utf-16-le").replace(str(old), str(new)).encode("utf-16-le")
                        )
                nv[vname] = (t, new_data)
            new_key = key.replace(lo, ln) if hive in ("SAM", "SECURITY") or "profilelist" in key else key
            e[new_key] = nv
        out[hive] = e
    sz = (name.upper() + "\0").encode("utf-16-le")
    for key, vals in out["SYSTEM"].items():
        if key.endswith("control\\computername\\computername"):
            vals["ComputerName"] = (vals["ComputerName"][0], sz)
        if key.endswith("services\\tcpip\\parameters"):
            for v in list(vals):
                if v.lower() in ("hostname", "nv hostname"):
                    vals[v] = (vals[v][0], (name + "\0").encode("utf-16-le"))
    raw = name.upper().encode("utf-16-le")
    out["SECURITY"]["policy\\polacdmn"]["(default)"] = (
        0,
        struct.pack("<HHI", len(raw), len(raw) + 2, 8) + raw + b"\0\0",
    )
    return out


def test_personalize_changes_exactly_what_it_should(tree: TreeInfo) -> None:
    root = tree.root
    before = _hives(root)
    ntuser = root / "Users" / "gold_administrator" / "NTUSER.DAT"
    ntuser_before = dump(ntuser)
    domain_ntuser = (root / "Users" / "student" / "NTUSER.DAT").read_bytes()
    old = tree.machine_sid
    new = seeded_machine_sid("pc07")
    changes = personalize(root, Options(name=NAME, new_sid=True, sid_seed="pc07"))
    assert any("ComputerName" in c for c in changes)
    assert f"file ACLs: skipped, {root} is not an ntfs-3g mount (no system.ntfs_acl)" in changes
    assert "user hive Users/gold_administrator/NTUSER.DAT: 2 security descriptor SID(s) rewritten" in changes
    # the user hive: same keys and values, its descriptors name the user's new SID
    assert dump(ntuser) == ntuser_before
    assert (root / "Users" / "student" / "NTUSER.DAT").read_bytes() == domain_ntuser  # domain user untouched
    raw = ntuser.read_bytes()
    assert old.child(1001).to_bytes() not in raw and new.child(1001).to_bytes() in raw
    after = _hives(root)
    domain_profile = "s-1-5-21-226059406-2984137831-1201299043-1107"
    assert f"microsoft\\windows nt\\currentversion\\profilelist\\{domain_profile}" in after["SOFTWARE"]
    expected = _expected(before, old, new, NAME)
    for hive in after:
        assert after[hive].keys() == expected[hive].keys(), hive
        for key in after[hive]:
            assert after[hive][key] == expected[hive][key], (hive, key)
    # no backups or temp files left
    assert sorted(p.name for p in (root / CONFIG).iterdir()) == ["SAM", "SECURITY", "SOFTWARE", "SYSTEM"]


def test_new_name_and_sid_read_by_regipy(tree: TreeInfo) -> None:
    root = tree.root
    personalize(root, Options(name=NAME, new_sid=True, sid_seed="pc07"))
    new = seeded_machine_sid("pc07")
    system = RegistryHive(str(root / CONFIG / "SYSTEM"))
    for cs in ("ControlSet001", "ControlSet002"):
        vals = {
            v.name: v.value
            for v in system.get_key(f"\\{cs}\\Control\\ComputerName\\ComputerName").iter_values()
        }
        assert vals["ComputerName"] == NAME
        tcp = {v.name: v.value for v in system.get_key(f"\\{cs}\\Services\\Tcpip\\Parameters").iter_values()}
        assert tcp["Hostname"] == NAME and tcp["NV Hostname"] == NAME
    sec = RegistryHive(str(root / CONFIG / "SECURITY"))
    pol = next(sec.get_key("\\Policy\\PolAcDmS").iter_values(trim_values=False))
    assert pol.value == new.to_bytes()
    sam = Registry.Registry(str(root / CONFIG / "SAM"))
    v = sam.open("SAM\\Domains\\Account").value("V").raw_data()
    assert new.to_bytes() == v[-24:]
    # both hives agree, and nothing of the old SID is left, free cells included
    for hive in ("SAM", "SECURITY"):
        raw = (root / CONFIG / hive).read_bytes()
        assert tree.machine_sid.to_bytes()[8:] not in raw
        assert str(tree.machine_sid).encode() not in raw
        assert str(tree.machine_sid).encode("utf-16-le") not in raw
    soft = Registry.Registry(str(root / CONFIG / "SOFTWARE"))
    names = [k.name() for k in soft.open("Microsoft\\Windows NT\\CurrentVersion\\ProfileList").subkeys()]
    assert f"{new}-1001" in names and f"{new}-500" in names
    assert not any(str(tree.machine_sid) in n for n in names)
    key = soft.open(f"Microsoft\\Windows NT\\CurrentVersion\\ProfileList\\{new}-1001")
    assert key.value("Sid").raw_data() == new.child(1001).to_bytes()
    assert key.value("Sid").value_type() == 3
    # SAM Names keys still carry the RID as the value type
    names_key = sam.open("SAM\\Domains\\Account\\Users\\Names\\gold_administrator")
    assert names_key.value("(default)").value_type() == 1001


def test_two_seeds_give_two_machines(tmp_path: Path) -> None:
    sids = []
    for i in (1, 2):
        info = build_windows_tree(tmp_path / f"v{i}", with_acls=False)
        personalize(info.root, Options(name=f"PC-{i}", sid_seed=f"seed-{i}", reset_ids=True))
        from fleetcast.identity.windows.inspect import inspect

        rep = inspect(info.root)
        assert rep.names[0]["computer_name"] == f"PC-{i}"
        assert rep.machine_sid_sam == rep.machine_sid_security
        sids.append(rep.machine_sid_sam)
    assert sids[0] != sids[1]


def test_reset_ids(tree: TreeInfo) -> None:
    changes = personalize(tree.root, Options(name=NAME, reset_ids=True, sid_seed="ids"))
    soft = Registry.Registry(str(tree.root / CONFIG / "SOFTWARE"))
    wu = {v.name() for v in soft.open("Microsoft\\Windows\\CurrentVersion\\WindowsUpdate").values()}
    assert wu == {"LastWaitTimeout"}
    guid = soft.open("Microsoft\\Cryptography").value("MachineGuid").value()
    assert guid != "3f2504e0-4f89-11d3-9a0c-0305e82c3301" and len(guid) == 36
    assert [v.name() for v in soft.open("Microsoft\\SQMClient").values()] == []
    assert "SOFTWARE Microsoft\\SQMClient\\MachineId: deleted" in changes


def test_static_ip_on_a_non_generalized_image_uses_the_first_boot_script(tree: TreeInfo) -> None:
    ip = StaticIp.parse("10.0.0.7/24", "10.0.0.1", ["10.0.0.2,10.0.0.3"], "52:54:00:ab:cd:ef")
    personalize(tree.root, Options(name=NAME, ip=ip))
    script = (tree.root / "Windows/Setup/Scripts/fleetcast-firstboot.cmd").read_bytes().decode("ascii")
    assert "MacAddress -eq '52-54-00-AB-CD-EF'" in script
    assert "-IPAddress 10.0.0.7 -PrefixLength 24 -DefaultGateway 10.0.0.1" in script
    assert "-ServerAddresses '10.0.0.2','10.0.0.3'" in script
    assert "\r\n" in script
    system = Registry.Registry(str(tree.root / CONFIG / "SYSTEM"))
    setup = system.open("Setup")
    assert (
        setup.value("CmdLine").value() == "cmd.exe /c %SystemRoot%\\Setup\\Scripts\\fleetcast-firstboot.cmd"
    )
    assert setup.value("SetupType").value() == 2
    assert not (tree.root / "Windows/Panther/unattend.xml").exists()


def test_generalized_image_gets_unattend(tmp_path: Path) -> None:
    info = build_windows_tree(
        tmp_path / "g", with_acls=False, image_state="IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"
    )
    ip = StaticIp.parse("10.0.0.8/24", "10.0.0.1", [], "52:54:00:00:00:08")
    changes = personalize(info.root, Options(name="GEN-8", ip=ip))
    xml = (info.root / "Windows/Panther/unattend.xml").read_text()
    assert "<ComputerName>GEN-8</ComputerName>" in xml and "<Identifier>52-54-00-00-00-08</Identifier>" in xml
    assert (
        "file Windows/Panther/unattend.xml: written (ImageState IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE)"
        in changes
    )
    system = Registry.Registry(str(info.root / CONFIG / "SYSTEM"))
    assert system.open("Setup").value("SetupType").value() == 0  # OOBE owns Setup; no first-boot hook


def test_unattend_none_and_file(tree: TreeInfo, tmp_path: Path) -> None:
    mine = tmp_path / "my.xml"
    mine.write_text("<unattend/>")
    personalize(tree.root, Options(name=NAME, unattend=str(mine)))
    assert (tree.root / "Windows/Panther/unattend.xml").read_text() == "<unattend/>"


def test_dirty_system_hive_is_replayed_then_logs_emptied(tmp_path: Path) -> None:
    info = build_windows_tree(tmp_path / "d", system="dirty", with_acls=False)
    changes = personalize(info.root, Options(name="DIRTY-1"))
    assert changes[:3] == [
        "SYSTEM: dirty hive, transaction logs replayed (SYSTEM.LOG1, SYSTEM.LOG2)",
        "SYSTEM: SYSTEM.LOG1: entries 2107-2110 applied (no entry at offset 57344)",
        "SYSTEM: SYSTEM.LOG2: entries 2111-2130 applied (no entry at offset 2715648)",
    ]
    cfg = info.root / CONFIG
    assert (cfg / "SYSTEM.LOG1").stat().st_size == 0 and (cfg / "SYSTEM.LOG2").stat().st_size == 0
    system = Registry.Registry(str(cfg / "SYSTEM"))
    assert (
        system.open("ControlSet001\\Control\\ComputerName\\ComputerName").value("ComputerName").value()
        == "DIRTY-1"
    )


def test_dirty_hive_without_logs_refuses_and_writes_nothing(tmp_path: Path) -> None:
    info = build_windows_tree(tmp_path / "r", sam_pair="regipy", with_acls=False)
    cfg = info.root / CONFIG
    before = {p.name: p.read_bytes() for p in cfg.iterdir()}
    with pytest.raises(HiveError) as exc:
        personalize(info.root, Options(name="X-1", new_sid=True))
    assert str(exc.value).endswith(
        "is dirty (sequence numbers 107 and 106 differ) and its transaction logs (.LOG1/.LOG2) are missing"
    )
    assert {p.name: p.read_bytes() for p in cfg.iterdir()} == before


def test_failure_after_hives_are_replaced_rolls_everything_back(
    tree: TreeInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tree.root / CONFIG
    before = {p.name: p.read_bytes() for p in cfg.iterdir()}
    from fleetcast.identity.windows import txn

    def boom(self: txn.Transaction, target: Path, data: bytes) -> None:
        raise IdentityError("disk full (simulated)")

    monkeypatch.setattr(txn.Transaction, "stage_file", boom)
    ip = StaticIp.parse("10.0.0.9/24", None, [], "52:54:00:00:00:09")
    with pytest.raises(IdentityError, match="simulated"):
        personalize(tree.root, Options(name="ROLL-1", new_sid=True, ip=ip))
    assert {p.name: p.read_bytes() for p in cfg.iterdir()} == before


def test_corrupted_system_hive_writes_nothing(tree: TreeInfo, tmp_path: Path) -> None:
    from tests.fixtures.windows_tree import unpack

    cfg = tree.root / CONFIG
    unpack("regipy/corrupted_system_hive.xz", cfg / "SYSTEM")
    before = {p.name: p.read_bytes() for p in cfg.iterdir()}
    with pytest.raises(HiveError) as exc:
        personalize(tree.root, Options(name=NAME, new_sid=True))
    assert (
        str(exc.value) == f"hive {cfg / 'SYSTEM'} is damaged: hivex cannot parse it (Operation not supported)"
    )
    assert {p.name: p.read_bytes() for p in cfg.iterdir()} == before


def test_missing_config_folder(tmp_path: Path) -> None:
    (tmp_path / "Windows").mkdir()
    with pytest.raises(HiveError) as exc:
        personalize(tmp_path, Options(name=NAME))
    assert (
        str(exc.value)
        == f"{tmp_path} is not a Windows system volume: it has no Windows\\System32\\config folder"
    )


def test_unreadable_volume(tmp_path: Path) -> None:
    with pytest.raises(IdentityError) as exc:
        personalize(tmp_path / "not-mounted", Options(name=NAME))
    assert str(exc.value) == f"volume {tmp_path / 'not-mounted'} is not a readable folder"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "A-VERY-LONG-NAME-01",
            "computer name 'A-VERY-LONG-NAME-01' is 19 characters long; NetBIOS allows at most 15",
        ),
        ("LAB PC", "computer name 'LAB PC' contains characters Windows does not allow: ' '"),
        ("lab_pc*1", "computer name 'lab_pc*1' contains characters Windows does not allow: '*' '_'"),
        ("12345", "computer name '12345' is all digits; Windows needs at least one letter or hyphen"),
        ("-LAB", "computer name '-LAB' starts or ends with a hyphen; Windows does not allow that"),
    ],
)
def test_bad_names(tree: TreeInfo, name: str, message: str) -> None:
    with pytest.raises(UsageError) as exc:
        personalize(tree.root, Options(name=name))
    assert str(exc.value) == message


def test_registered_personalizer(tree: TreeInfo, tmp_path: Path) -> None:
    p = get(OsKind.WINDOWS)
    assert p.detect(tree.root) and not p.detect(tmp_path)
    lower = tmp_path / "lower"
    shutil.copytree(tree.root, lower)
    (lower / "Windows").rename(lower / "WINDOWS")
    assert p.detect(lower)
    changes = p.personalize(tree.root, IdentitySettings(name="AGENT-1", sid_seed="agent-1"))
    assert "SECURITY Policy\\PolAcDmN: STUDENT-PC8 -> AGENT-1" in changes


def test_hibernated_windows_is_refused(tree: TreeInfo) -> None:
    (tree.root / "hiberfil.sys").write_bytes(b"HIBR" + bytes(4092))
    cfg = tree.root / CONFIG
    before = {p.name: p.read_bytes() for p in cfg.iterdir()}
    with pytest.raises(IdentityError) as exc:
        personalize(tree.root, Options(name=NAME))
    assert str(exc.value) == (
        f"Windows on {tree.root} is hibernated (hiberfil.sys holds a resume image): changes made now would "
        "be lost or corrupt the volume when it resumes"
    )
    assert {p.name: p.read_bytes() for p in cfg.iterdir()} == before
    (tree.root / "hiberfil.sys").write_bytes(bytes(4096))  # a cleared header is fine
    assert personalize(tree.root, Options(name=NAME))


def test_io_error_while_staging_a_hive_is_a_hive_error_and_writes_nothing(
    tree: TreeInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tree.root / CONFIG
    before = {p.name: p.read_bytes() for p in cfg.iterdir()}
    from fleetcast.identity.windows import personalizer

    def eio(path: Path, **_kw: object) -> None:
        raise OSError(5, "Input/output error", str(path))

    monkeypatch.setattr(personalizer, "scrub", eio)
    with pytest.raises(HiveError) as exc:
        personalize(tree.root, Options(name="EIO-1", sid_seed="eio"))
    assert str(exc.value) == (
        f"hive {cfg / 'SYSTEM'}: writing its new copy SYSTEM.fleetcast-new failed: Input/output error"
    )
    assert {p.name: p.read_bytes() for p in cfg.iterdir()} == before


def test_io_error_after_the_hives_are_replaced_is_an_identity_error_and_rolled_back(
    tree: TreeInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tree.root / CONFIG
    before = {p.name: p.read_bytes() for p in cfg.iterdir()}
    from fleetcast.identity.windows import profiles

    def eio(hive: Path, *_a: object) -> None:
        raise OSError(5, "Input/output error", str(hive))

    monkeypatch.setattr(profiles, "rewrite", eio)
    with pytest.raises(IdentityError) as exc:
        personalize(tree.root, Options(name="EIO-2", sid_seed="eio"))
    ntuser = tree.root / "Users" / "gold_administrator" / "NTUSER.DAT"
    assert str(exc.value) == f"personalizing {tree.root} failed at {ntuser}: Input/output error"
    assert {p.name: p.read_bytes() for p in cfg.iterdir()} == before


def test_new_sid_alone_rewrites_key_descriptors_in_system(tree: TreeInfo) -> None:
    # the Windows 7 SYSTEM's keys are owned by its own machine's Administrator/None: make that
    # machine the SAM's one, as on a real installation
    system = tree.root / CONFIG / "SYSTEM"
    foreign = struct.pack("<4I", 21, 100689374, 1717798114, 2601648136)
    old_words = tree.machine_sid.to_bytes()[8:]
    raw = system.read_bytes()
    assert raw.count(foreign) == 6
    system.write_bytes(raw.replace(foreign, old_words))
    changes = personalize(tree.root, Options(sid_seed="sk-1"))  # no name: SYSTEM has no value to change
    assert "SYSTEM: 6 key security descriptor SID(s) rewritten" in changes
    raw = system.read_bytes()
    assert old_words not in raw and raw.count(seeded_machine_sid("sk-1").to_bytes()[8:]) == 6


def test_account_picture_folders_follow_the_new_sid_and_roll_back(
    tree: TreeInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13 finding 3: Users\\Public\\AccountPictures\\<SID> folders are renamed with the SID (random
    SID: same text length), and put back when the run fails."""
    from fleetcast.identity.windows import sam, txn
    from fleetcast.identity.windows.hive import Hive

    pics = tree.root / "Users" / "Public" / "AccountPictures"
    old_dir = pics / f"{tree.machine_sid}-1001"
    old_dir.mkdir(parents=True)
    (old_dir / "image192.jpg").write_bytes(b"jpeg")
    other = pics / "S-1-5-21-1-2-3-1001"  # another machine's: untouched
    other.mkdir()
    changes = personalize(tree.root, Options(new_sid=True))
    new = sam.machine_sid(Hive(tree.root / CONFIG / "SAM"))
    assert f"folder Users/Public/AccountPictures/{tree.machine_sid}-1001: renamed to {new}-1001" in changes
    assert sorted(p.name for p in pics.iterdir()) == sorted([f"{new}-1001", other.name])
    assert (pics / f"{new}-1001" / "image192.jpg").read_bytes() == b"jpeg"

    def boom(self: txn.Transaction, target: Path, data: bytes) -> None:
        raise IdentityError("disk full (simulated)")

    monkeypatch.setattr(txn.Transaction, "stage_file", boom)
    with pytest.raises(IdentityError, match="simulated"):
        personalize(tree.root, Options(new_sid=True))
    assert sorted(p.name for p in pics.iterdir()) == sorted([f"{new}-1001", other.name])


def test_recycle_bin_and_programdata_sid_folders_follow_the_new_sid(
    tree: TreeInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13 finding 3: $Recycle.Bin\\<SID> and ProgramData's profile-keyed folders
    (Microsoft\\Windows\\SystemData\\<SID>) are renamed with the SID whatever its text length; other
    machines' SIDs, well-known SIDs, files named after a SID and folders below a junction are not."""
    from fleetcast.identity.windows import txn

    old = tree.machine_sid
    root = tree.root
    made = {
        "recycle": root / "$Recycle.Bin" / f"{old}-1001",
        "systemdata": root / "ProgramData/Microsoft/Windows/SystemData" / f"{old}-1000",
        "deep": root / "ProgramData/Vendor/App/Users/Data" / f"{old}-500",
        "other": root / "ProgramData/Microsoft/Windows/SystemData/S-1-5-21-1-2-3-1001",
        "well-known": root / "ProgramData/Microsoft/Windows/SystemData/S-1-5-18",
        "machine": root / "ProgramData/Vendor" / str(old),  # the machine SID itself, no RID
    }
    for path in made.values():
        path.mkdir(parents=True)
        (path / "keep.txt").write_text("x")
    elsewhere = root / "elsewhere" / f"{old}-1001"
    elsewhere.mkdir(parents=True)
    (root / "ProgramData/Link").symlink_to(root / "elsewhere", target_is_directory=True)
    pckgdep = root / "ProgramData/Microsoft/Windows/AppRepository/Packages/P" / f"{old}-1001.pckgdep"
    pckgdep.parent.mkdir(parents=True)
    pckgdep.write_text("x")
    new = Sid.parse("S-1-5-21-111-222-333")  # another text length: the account pictures' rule differs
    changes = personalize(root, Options(sid=new))
    assert f"folder $Recycle.Bin/{old}-1001: renamed to {new}-1001" in changes
    assert f"folder ProgramData/Microsoft/Windows/SystemData/{old}-1000: renamed to {new}-1000" in changes
    assert f"folder ProgramData/Vendor/App/Users/Data/{old}-500: renamed to {new}-500" in changes
    assert (root / "$Recycle.Bin" / f"{new}-1001" / "keep.txt").read_text() == "x"
    assert not made["recycle"].exists() and not made["systemdata"].exists() and not made["deep"].exists()
    for kept in ("other", "well-known", "machine"):
        assert made[kept].is_dir(), kept
    assert pckgdep.exists() and elsewhere.is_dir()

    def boom(self: txn.Transaction, target: Path, data: bytes) -> None:
        raise IdentityError("disk full (simulated)")

    monkeypatch.setattr(txn.Transaction, "stage_file", boom)
    with pytest.raises(IdentityError, match="simulated"):
        personalize(root, Options(sid=seeded_machine_sid("again")))
    assert (root / "$Recycle.Bin" / f"{new}-1001").is_dir()  # rolled back to the names before the run
    assert sorted(p.name for p in (root / "$Recycle.Bin").iterdir()) == [f"{new}-1001"]


def test_dirty_user_hive_replay_and_log_emptying_are_reported(tree: TreeInfo) -> None:
    """Issue 13 findings 2 and 7, on a real dirty user hive (format 1.5, 567/566) with a stale second
    log, put where the profile's NTUSER.DAT is: LOG1's entries are replayed and said, LOG2 is not."""
    from tests.fixtures.windows_tree import unpack

    from fleetcast.identity.windows.hive import read_base_block

    home = tree.root / "Users" / "gold_administrator"
    unpack("regipy/transactions_NTUSER.DAT.xz", home / "NTUSER.DAT")
    unpack("regipy/transactions_ntuser.dat.log1.xz", home / "NTUSER.DAT.LOG1")
    unpack("regipy/transactions_ntuser.dat.log2.xz", home / "NTUSER.DAT.LOG2")
    changes = personalize(tree.root, Options(new_sid=True, sid_seed="dirty-user"))
    rel = "Users/gold_administrator/NTUSER.DAT"
    i = changes.index(
        f"user hive {rel}: dirty hive, transaction logs replayed (NTUSER.DAT.LOG1, NTUSER.DAT.LOG2)"
    )
    assert (
        changes[i + 1]
        == f"user hive {rel}: NTUSER.DAT.LOG1: entries 566-588 applied (end of file at offset 1126400)"
    )
    assert f"user hive {rel}: log NTUSER.DAT.LOG1 emptied" in changes
    assert (home / "NTUSER.DAT.LOG2").stat().st_size == 0
    assert not read_base_block(home / "NTUSER.DAT").dirty
