"""Chunk naming, compression, verification, and how capture cuts windows and elides zero blocks."""

from __future__ import annotations

import os

import pytest

from fleetcast.errors import ChunkCorrupt, StoreError
from fleetcast.store.chunkstore import ChunkStore, chunk_hash, compress, decompress_verify
from fleetcast.store.reader import split_zeros, windows

KiB = 1024
MiB = 1 << 20


def test_chunk_id_is_blake3_of_uncompressed_content() -> None:
    assert chunk_hash(b"") == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    data = os.urandom(100_000)
    assert chunk_hash(compress(data, 1)) != chunk_hash(data)
    assert chunk_hash(memoryview(data)) == chunk_hash(data)


def test_compress_round_trip_and_verify() -> None:
    data = b"fleetcast " * 10_000
    stored = compress(data)
    assert len(stored) < len(data) // 10
    assert decompress_verify(chunk_hash(data), stored, len(data), what="image 'x'") == data


def test_flipped_byte_is_named() -> None:
    data = b"".join(i.to_bytes(4, "little") for i in range(20_000))
    cid = chunk_hash(data)
    stored = bytearray(compress(data))
    stored[len(stored) // 2] ^= 0x01
    with pytest.raises(ChunkCorrupt) as err:
        decompress_verify(cid, bytes(stored), len(data), what="image 'win'")
    assert str(err.value).startswith(f"image 'win': chunk {cid} is corrupt: ")


def test_wrong_content_is_named() -> None:
    cid = chunk_hash(b"right")
    with pytest.raises(ChunkCorrupt) as err:
        decompress_verify(cid, compress(b"wrong"), 5, what="image 'win'")
    assert (
        str(err.value) == f"image 'win': chunk {cid} is corrupt: its content hashes to {chunk_hash(b'wrong')}"
    )


def test_wrong_length_is_named() -> None:
    cid = chunk_hash(b"right")
    with pytest.raises(ChunkCorrupt) as err:
        decompress_verify(cid, compress(b"right"), 6, what="image 'win'")
    assert str(err.value).startswith(f"image 'win': chunk {cid} is corrupt: ")


def test_chunk_path_rejects_non_ids(tmp_path: os.PathLike[str]) -> None:
    store = ChunkStore(tmp_path)  # type: ignore[arg-type]
    with pytest.raises(StoreError) as err:
        store.path("../x")
    assert str(err.value) == "chunk id must be 64 lower-case hex digits; found '../x'"
    assert store.path("ab" + "0" * 62).parent.name == "ab"


def test_windows_cut_extents_at_fixed_offsets() -> None:
    used = [(0, 4 * KiB), (MiB - 4 * KiB, 8 * KiB), (3 * MiB, 4 * KiB)]
    assert list(windows(list(used), 4 * MiB, MiB)) == [
        (0, [(0, 4 * KiB), (MiB - 4 * KiB, 4 * KiB)]),
        (MiB, [(MiB, 4 * KiB)]),
        (3 * MiB, [(3 * MiB, 4 * KiB)]),
    ]


def test_windows_split_a_long_extent() -> None:
    assert list(windows([(512, 3 * MiB)], 4 * MiB, MiB)) == [
        (0, [(512, MiB - 512)]),
        (MiB, [(MiB, MiB)]),
        (2 * MiB, [(2 * MiB, MiB)]),
        (3 * MiB, [(3 * MiB, 512)]),
    ]


def test_windows_clip_to_area_end() -> None:
    assert list(windows([(MiB, 100)], MiB + 100, MiB)) == [(MiB, [(MiB, 100)])]


def test_split_zeros_elides_aligned_zero_blocks() -> None:
    block = b"x" * 4096
    zero = bytes(4096)
    data = block + zero + zero + block
    nonzero, zeros = split_zeros(data, 8192, [(8192, len(data))], 4096)
    assert nonzero == [(8192, 4096), (20480, 4096)]
    assert zeros == [(12288, 8192)]


def test_split_zeros_fast_path_and_partial_blocks() -> None:
    data = os.urandom(10_000)
    assert split_zeros(data, 0, [(0, 10_000)], 4096) == ([(0, 10_000)], [])
    # an extent not aligned to the zero block: its pieces are clipped, a short zero tail still counts as zero
    data = b"a" * 100 + bytes(4096 + 3996)
    nonzero, zeros = split_zeros(data, 0, [(0, len(data))], 4096)
    assert nonzero == [(0, 4096)]
    assert zeros == [(4096, 4096)]


def test_split_zeros_all_zero() -> None:
    assert split_zeros(bytes(MiB), 0, [(0, 512), (4096, MiB - 4096)], 4096) == (
        [],
        [(0, 512), (4096, MiB - 4096)],
    )


def test_huge_declared_size_is_corrupt_not_allocated() -> None:
    data = b"a" * 100
    cid = chunk_hash(data)
    stored = compress(data)
    assert stored[4] == 0x20  # single segment, 1-byte content size
    forged = stored[:4] + bytes([0xE0]) + (1 << 40).to_bytes(8, "little") + stored[6:]
    with pytest.raises(ChunkCorrupt) as err:
        decompress_verify(cid, forged, None, what="image 'win'")
    assert str(err.value) == (
        f"image 'win': chunk {cid} is corrupt: its header declares {1 << 40} bytes of content, "
        f"more than the {256 << 20} a stored object may hold"
    )
    with pytest.raises(ChunkCorrupt) as err:
        decompress_verify(cid, b"not zstd", None, what="image 'win'")
    assert str(err.value).startswith(f"image 'win': chunk {cid} is corrupt: it does not decompress (")
