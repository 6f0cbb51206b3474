"""The native data plane's shared port (sfu/webrtc_server.py): one UDP port per worker for every peer,
ICE-lite checks against each peer's password, and no Python code per media packet."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from aioice import stun

from tests.integration.sfu.conftest import Harness
from voxa.common.testing.wait import eventually_async
from voxa.sfu.peer import Peer
from voxa.sfu.router import Consumer, Producer


def udp_sockets() -> int:
    """UDP sockets this process holds (from /proc/net/udp* inodes matched against our fds)."""
    inodes = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as f:
            next(f)
            count += sum(1 for line in f if line.split()[9] in inodes)
    return count


async def test_every_peer_shares_the_workers_one_port_and_no_python_runs_per_packet(
    sfu: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sfu.worker.server is not None, "the native data plane is the default"

    def per_packet(*args: object) -> None:
        raise AssertionError("Python code ran for a media packet")

    for cls, name in ((Producer, "receive"), (Consumer, "forward"), (Peer, "on_rtp"), (Peer, "on_rtcp")):
        monkeypatch.setattr(cls, name, per_packet)
    before = udp_sockets()
    room = sfu.worker.create_router("lobby")
    tones = {"a": 440.0, "b": 660.0, "c": 880.0}
    clients = [await sfu.join(room, name, hz) for name, hz in tones.items()]
    ports = {c.pc.remoteDescription.sdp.split("m=audio ")[1].split()[0] for c in clients}
    assert ports == {str(sfu.worker.media_port)}
    assert all("a=ice-lite" in c.pc.remoteDescription.sdp for c in clients)
    await eventually_async(lambda: all(len(c.sinks) == 2 for c in clients))
    heard = await clients[0].sink_from("b").measure(1.0)
    assert heard.hz is not None and abs(heard.hz - 660) < 15
    # The SFU's side opened no socket per peer (the clients' own aiortc sockets are the growth).
    clients_sockets = sum(len(c.pc.getTransceivers()) >= 1 for c in clients)
    assert udp_sockets() - before <= clients_sockets * 2
    assert sfu.worker.forwarded_total() > 0


async def test_a_check_with_the_wrong_password_is_not_answered(sfu: Harness) -> None:
    assert sfu.worker.server is not None
    room = sfu.worker.create_router("lobby")
    client = await sfu.join(room, "a", 440.0)
    ufrag = client.pc.remoteDescription.sdp.split("a=ice-ufrag:")[1].split()[0]
    engine = sfu.worker.server.engine
    rejected = engine.counters()["stun_rejected"]

    def request(password: str) -> stun.Message:
        msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        msg.attributes["USERNAME"] = f"{ufrag}:probe"
        msg.attributes["PRIORITY"] = 1
        msg.attributes["ICE-CONTROLLING"] = 1
        msg.add_message_integrity(password.encode())
        msg.add_fingerprint()
        return msg

    good_password = client.pc.remoteDescription.sdp.split("a=ice-pwd:")[1].split()[0]
    bad, good = request("not-the-password-at-all"), request(good_password)
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        probe.setblocking(False)
        probe.sendto(bytes(bad), ("127.0.0.1", sfu.worker.server.port))
        await eventually_async(lambda: engine.counters()["stun_rejected"] > rejected)
        probe.sendto(bytes(good), ("127.0.0.1", sfu.worker.server.port))
        data = await asyncio.wait_for(loop.sock_recv(probe, 2048), 10)
    answer = stun.parse_message(data)
    assert answer.transaction_id == good.transaction_id  # the bad one got nothing
    assert answer.message_class == stun.Class.RESPONSE
    assert answer.attributes["XOR-MAPPED-ADDRESS"][0] == "127.0.0.1"
    assert (
        answer.check_message_integrity(good_password.encode())
        if hasattr(answer, "check_message_integrity")
        else True
    )
