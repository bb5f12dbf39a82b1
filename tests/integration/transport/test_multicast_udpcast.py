"""Real udpcast between two network namespaces: a receiver keeps only the frames of its own session.

The sender streams, in one udp-sender session, the frames of *another* fleetcast session (a stray or
hostile stream on the same group and port) followed by the frames of this receiver's session; what the
receiver hands on (and so what a restore could write) is exactly its own session's packs.
"""

from __future__ import annotations

import os
import threading

import blake3
import pytest

from fleetcast.lab.netns import LabNetwork
from fleetcast.transport.multicast import (
    Channel,
    FrameStats,
    Receiver,
    Sender,
    frame_header,
    read_frames,
    stop,
)

pytestmark = pytest.mark.integration

MINE = "aa" * 16
OTHER = "bb" * 16
IMAGE = blake3.blake3(b"image").hexdigest()


def test_foreign_session_frames_write_nothing() -> None:
    foreign = [os.urandom(300_000) for _ in range(3)]
    mine = [os.urandom(200_000) for _ in range(2)]
    with LabNetwork(clients=1, prefix="fc-mc-") as net:
        server, client = net.server, net.clients[0]
        channel = Channel("239.255.42.200", 9400, "eth0")
        receiver = Receiver(channel, start_timeout=30)
        receiver.argv = client.cmd(receiver.argv)
        stream = receiver.start()
        got: list[tuple[str, bytes]] = []
        stats = FrameStats()

        def read() -> None:
            got.extend(read_frames(stream, MINE, IMAGE, stats=stats))

        reader = threading.Thread(target=read)
        reader.start()
        # one udp-sender stream: a foreign session's frames first, then ours (Sender frames what it is
        # given with its own session id, so the foreign part is built by a second Sender's framing)
        foreign_frames = b"".join(
            frame_header(OTHER, IMAGE, blake3.blake3(d).hexdigest(), len(d)) + d for d in foreign
        )
        packs = [(blake3.blake3(d).hexdigest(), (lambda d=d: d)) for d in mine]
        sender = Sender(
            channel, MINE, IMAGE, packs, min_receivers=1, max_wait=20, wrap=server.cmd,
            prefix=foreign_frames,
        )  # fmt: skip
        sender.start()
        try:
            reader.join(timeout=60)
            assert not reader.is_alive(), "the receiver did not finish"
            assert sender.finished.wait(30)
        finally:
            sender.stop()
            receiver.stop()
            stop(sender.proc)
    assert [p for p, _ in got] == [blake3.blake3(d).hexdigest() for d in mine]
    assert [d for _, d in got] == mine
    assert (stats.foreign, stats.foreign_bytes) == (3, sum(len(d) for d in foreign))
    assert sender.error is None
