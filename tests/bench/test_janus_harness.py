"""The Janus harness of the SFU benchmark (bench/janus) against a real, loopback-only Janus.

Two publishers send 440 Hz and 660 Hz Opus tones through a VideoRoom; two subscribers each subscribe to both
feeds and must decode both tones on the right streams.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path

import pytest

# The harness is imported as the top-level package `janus` from bench/, as a script in bench/ imports it and
# as mypy names it (bench/ is not a package): `bench.janus` would make mypy see its files under two names.
BENCH = str(Path(__file__).resolve().parents[2] / "bench")
if BENCH not in sys.path:
    sys.path.append(BENCH)

from janus.client import JanusPluginError, JanusProtocolError, JanusSession, VideoRoom  # noqa: E402
from janus.peers import Publisher, Subscriber  # noqa: E402
from janus.server import JanusServer, janus_binary  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(janus_binary() is None, reason="janus is not installed (apt-get install janus)"),
    pytest.mark.skipif(
        shutil.which("cc") is None and shutil.which("gcc") is None,
        reason="no C compiler to build the loopback ICE shim Janus needs",
    ),
]

TONES = (440.0, 660.0)
TOLERANCE_HZ = 15.0
CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ", re.MULTILINE)


@pytest.mark.timeout(60)
async def test_two_tones_reach_two_subscribers() -> None:
    async with JanusServer() as janus, JanusSession(janus.http_url) as control:
        assert "janus.plugin.videoroom" in janus.server_info["plugins"]
        assert list(janus.server_info["transports"]) == ["janus.transport.http"]
        videoroom = await VideoRoom.attach(control)
        room = await videoroom.create_room(publishers=100)
        with pytest.raises(JanusPluginError, match="No such room"):
            await videoroom.join_publisher(room + 1)

        sessions = [await JanusSession.create(janus.http_url) for _ in range(4)]
        publishers = [Publisher(sessions[i], room, tone) for i, tone in enumerate(TONES)]
        subscribers: list[Subscriber] = []
        try:
            await asyncio.gather(*(p.start() for p in publishers))
            feeds = {p.feed_id: p.frequency for p in publishers}
            subscribers = [Subscriber(s, room, list(feeds)) for s in sessions[2:]]
            await asyncio.gather(*(s.start() for s in subscribers))
            await asyncio.gather(*(s.wait_frames(75) for s in subscribers))  # 1.5 s of audio per track

            for subscriber in subscribers:
                assert subscriber.subscription is not None
                # Janus announced loopback candidates only (see the LD_PRELOAD shim in bench/janus/server.py).
                assert set(CANDIDATE.findall(subscriber.subscription.offer_sdp)) == {"127.0.0.1"}
                heard = {t.feed_id: t.dominant_frequency(seconds=1.0) for t in subscriber.tracks.values()}
                assert set(heard) == set(feeds), heard
                for feed, tone in feeds.items():
                    hz = heard[feed]
                    assert hz is not None and abs(hz - tone) <= TOLERANCE_HZ, (heard, feeds)
                assert await subscriber.packets_received() >= 2 * 75
            participants = await videoroom.list_participants(room)
            assert {p["id"] for p in participants} == set(feeds)
        finally:
            peers: list[Publisher | Subscriber] = [*subscribers, *publishers]
            for peer in peers:
                await peer.close()
            for session in sessions:
                await session.destroy()
        await videoroom.destroy_room(room)
    assert janus.exit_code == 0, janus.exit_code


@pytest.mark.timeout(30)
async def test_keepalives_outlive_the_session_timeout() -> None:
    # The long poll alone does not keep a Janus session alive: only requests such as keepalives do.
    async with (
        JanusServer(session_timeout=2) as janus,
        JanusSession(janus.http_url, keepalive_interval=0.5) as kept,
        JanusSession(janus.http_url, keepalive_interval=3600) as idle,
    ):
        await asyncio.sleep(6)  # Janus's watchdog reaps sessions idle for 2 s within about 4 s
        assert kept.failure is None
        assert not await VideoRoom(await kept.attach()).exists(1234)
        assert isinstance(idle.failure, JanusProtocolError), idle.failure
        with pytest.raises(JanusProtocolError, match="timed out"):
            await idle.attach()
