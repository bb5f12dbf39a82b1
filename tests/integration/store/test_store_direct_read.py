"""A block device is read with O_DIRECT (CAPTURE's ask, issue 11): the same chunks, index and packs as a
buffered read of the same bytes from the image file."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetcast.disk import loop
from fleetcast.store import reader as reader_mod
from fleetcast.store.capture import capture
from fleetcast.store.images import ImageStore
from fleetcast.store.manifest import INDEX_FILE

pytestmark = pytest.mark.integration


def test_direct_reads_of_a_block_device_capture_what_the_file_holds(
    golden: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ImageStore(tmp_path / "store")
    from_file = capture(golden, "file", store)
    directs: list[bool] = []
    real = reader_mod.Reader.__init__

    def spy(self: reader_mod.Reader, fd: int, source: Path, *, block: bool) -> None:
        real(self, fd, source, block=block)
        directs.append(self.direct is not None)

    monkeypatch.setattr(reader_mod.Reader, "__init__", spy)
    with loop.attach(golden, read_only=True) as dev:
        from_dev = capture(dev, "dev", ImageStore(tmp_path / "store2"))
    assert directs and all(directs)  # the device was read with O_DIRECT (a reader per read thread)
    assert len(directs) <= reader_mod.READ_THREADS
    assert from_dev.pack_ids() == from_file.pack_ids()
    assert [a.to_dict_v2() for a in from_dev.areas] == [a.to_dict_v2() for a in from_file.areas]
    index = (store.images_dir / "file" / INDEX_FILE).read_bytes()
    assert (tmp_path / "store2" / "images" / "dev" / INDEX_FILE).read_bytes() == index
