"""The binary chunk index: round trip, block layout, and every damage refused naming the problem."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from fleetcast.errors import ManifestError
from fleetcast.store.index import Entry, IndexInfo, IndexReader, IndexWriter, write_index


def _entries(n: int, seed: int = 1) -> list[Entry]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        window = i * 65536
        k = rnd.choice([1, 1, 1, 2, 8, 16])
        step = 65536 // k
        ext = tuple((window + j * step, step - 512) for j in range(k))
        out.append(Entry(i % 3, i // 40, (i % 40) * 65536, window, rnd.randbytes(32), ext))
    return out


def test_round_trip_across_blocks(tmp_path: Path) -> None:
    entries = _entries(1000)
    path = tmp_path / "index"
    with open(path, "wb") as f:
        w = IndexWriter(f, block_records=64)
        for e in entries:
            w.add(e)
        info = w.close()
    assert info.size == path.stat().st_size and info.entries == 1000
    r = IndexReader.open(path, info)
    assert len(r.blocks) > 15
    assert list(r.entries()) == entries
    by_pack = r.blocks_of_pack()
    assert sorted(by_pack) == list(range(25))
    assert list(r.pack_entries(7, by_pack[7])) == [e for e in entries if e.pack == 7]


def test_flipped_byte_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index"
    info = write_index(path, _entries(300))
    data = bytearray(path.read_bytes())
    data[200] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"^the index: block 0 at byte 32 fails its checksum$"):
        IndexReader.open(path, info)
    with pytest.raises(ManifestError, match=r"^the index: block 0 at byte 32 fails its checksum$"):
        IndexReader.open(path, None)
    data[200] ^= 1
    data[-1] ^= 1  # the footer's padding: only the whole-file hash sees it
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"^the index hashes to [0-9a-f]{64} but the manifest records"):
        IndexReader.open(path, info)


def test_size_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "index"
    info = write_index(path, _entries(10))
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(ManifestError) as exc:
        IndexReader.open(path, info, what="image 'a' index")
    assert (
        exc.value.message == f"image 'a' index is {info.size + 1} bytes but the manifest records {info.size}"
    )
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ManifestError, match=r"does not end with its footer|cut off|bad header|runs into"):
        IndexReader.open(path, None)


def test_entry_count_must_match(tmp_path: Path) -> None:
    path = tmp_path / "index"
    info = write_index(path, _entries(10))
    with pytest.raises(ManifestError) as exc:
        IndexReader.open(path, IndexInfo(info.hash, info.size, 11))
    assert exc.value.message == "the index holds 10 entries but the manifest records 11"
