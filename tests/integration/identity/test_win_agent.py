"""The agent's Windows personalizer on deployed disks: a GPT disk whose NTFS partition holds a
Windows tree is captured, restored to two targets (as two agents do) and personalized by the agent's
step (loop device with offset, ntfs-3g): two different names and machine SIDs, file ACLs following."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.fixtures.windows_tree import build_windows_tree

from fleetcast.agent.personalize import personalize
from fleetcast.identity.base import IdentitySettings, OsKind
from fleetcast.identity.windows import acl
from fleetcast.identity.windows.inspect import inspect
from fleetcast.identity.windows.sid import Sid
from fleetcast.lab.sample_disk import MiB, build_sample_disk, mount_partition
from fleetcast.store.capture import capture
from fleetcast.store.images import ImageStore
from fleetcast.store.restore import restore

pytestmark = pytest.mark.integration


def test_two_agents_get_two_names_and_sids(tmp_path: Path) -> None:
    golden = tmp_path / "golden.img"
    build_sample_disk(golden, size=128 * MiB, fill=0.05, layout="gpt-esp-ntfs-ext4")
    with mount_partition(golden, 2) as root:
        info = build_windows_tree(root)
        assert info.acls_set
        owned = [p.relative_to(root) for p in info.owned_files]
    store = ImageStore(tmp_path / "store")
    store.ensure()
    manifest = capture(golden, "win", store)
    seen = []
    for n in (1, 2):
        target = tmp_path / f"client{n}.img"
        with open(target, "wb") as f:
            f.truncate(128 * MiB)
        restore(manifest, store.source(), target)
        settings = IdentitySettings(
            name=f"WIN-{n:02}", ip=f"10.30.0.{n}/24", gateway="10.30.0.254", dns=("10.30.0.254",),
            mac=f"52:54:00:30:00:{n:02x}",
        )  # fmt: skip
        kind, changes = personalize(target, manifest, settings)
        assert kind is OsKind.WINDOWS
        assert f"SECURITY Policy\\PolAcDmN: STUDENT-PC8 -> WIN-{n:02}" in changes
        with mount_partition(target, 2, read_only=True) as root:
            rep = inspect(root)
            assert {x["computer_name"] for x in rep.names} == {f"WIN-{n:02}"}
            assert rep.machine_sid_sam == rep.machine_sid_security
            assert rep.machine_sid_sam is not None and rep.machine_sid_sam != str(info.machine_sid)
            new = Sid.parse(rep.machine_sid_sam)
            for rel in owned:
                sd = acl.get_sd(root / rel)
                assert (
                    sd is not None and new.to_bytes()[8:] in sd and info.machine_sid.to_bytes()[8:] not in sd
                )
            script = (root / "Windows/Setup/Scripts/fleetcast-firstboot.cmd").read_text()
            assert f"-IPAddress 10.30.0.{n} -PrefixLength 24" in script
            seen.append((rep.names[0]["computer_name"], rep.machine_sid_sam))
    assert seen[0][0] != seen[1][0] and seen[0][1] != seen[1][1]
