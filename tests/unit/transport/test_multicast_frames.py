"""Frames of the multicast stream: a receiver keeps only its own session's and image's packs."""

from __future__ import annotations

import io

import blake3
import pytest

from fleetcast.transport.multicast import (
    HEADER,
    FrameError,
    FrameStats,
    end_frame,
    frame_header,
    parse_header,
    read_frames,
)

SESSION = "11" * 16
OTHER = "22" * 16
IMAGE = blake3.blake3(b"manifest").hexdigest()


def _frame(session: str, image: str, data: bytes) -> bytes:
    return frame_header(session, image, blake3.blake3(data).hexdigest(), len(data)) + data


def test_only_this_sessions_frames_are_kept() -> None:
    mine, foreign, other_image = b"a" * 1000, b"b" * 5000, b"c" * 300
    stream = io.BytesIO(
        _frame(OTHER, IMAGE, foreign)
        + _frame(SESSION, IMAGE, mine)
        + _frame(SESSION, blake3.blake3(b"x").hexdigest(), other_image)
        + end_frame(SESSION, IMAGE)
        + _frame(SESSION, IMAGE, b"after the end")
    )
    stats = FrameStats()
    got = list(read_frames(stream, SESSION, IMAGE, stats=stats))
    assert got == [(blake3.blake3(mine).hexdigest(), mine)]
    assert (stats.foreign, stats.foreign_bytes, stats.bytes) == (2, 5300, 1000)


def test_unwanted_packs_are_skipped() -> None:
    a, b = b"a" * 10, b"b" * 20
    stream = io.BytesIO(_frame(SESSION, IMAGE, a) + _frame(SESSION, IMAGE, b))
    want = blake3.blake3(b).hexdigest()
    assert list(read_frames(stream, SESSION, IMAGE, wanted=lambda p: p == want)) == [(want, b)]


def test_broken_streams_have_exact_errors() -> None:
    with pytest.raises(FrameError, match=r"^multicast frame header is 3 bytes, expected 96$"):
        parse_header(b"abc")
    with pytest.raises(FrameError, match=r"^multicast frame starts with b'XXXXXXXX', expected b'FCMCAST1'$"):
        parse_header(b"XXXXXXXX" + bytes(HEADER.size - 8))
    cut = _frame(SESSION, IMAGE, b"z" * 100)[:-10]
    with pytest.raises(FrameError, match=r"^multicast stream ended inside a frame \(90 of 100 bytes\)$"):
        list(read_frames(io.BytesIO(cut), SESSION, IMAGE))
    huge = frame_header(SESSION, IMAGE, "00" * 31 + "01", 1 << 40)
    with pytest.raises(FrameError, match=r"claims 1099511627776 bytes \(limit 1073741824\)$"):
        list(read_frames(io.BytesIO(huge), SESSION, IMAGE))
