"""Property-based fuzzing of the codec and of the channel router behind a real socket (bounded in CI).

Whatever arrives, the codec raises only ProtocolError, and the server answers or closes the socket
with a code; it never crashes a channel, and other sockets keep working.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import JWT_SECRET
from tests.integration.conftest import token
from voxa.client.phoenix import PhoenixClient
from voxa.signaling import protocol
from voxa.signaling.app import CTX, create_app
from voxa.signaling.settings import SignalingSettings

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
refs = st.none() | st.text(max_size=8) | st.integers(-5, 10**6) | st.booleans()
topics = st.sampled_from(
    ["phoenix", "voice:g1:lobby", "voice:g1:other", "voice:zz:lobby", "voice:", ""]
) | st.text(max_size=30)
events = st.sampled_from(
    ["phx_join", "phx_leave", "heartbeat", "mute", "unmute", "deafen", "undeafen", "video", "moderate", "x"]
) | st.text(max_size=12)
payloads = (
    st.fixed_dictionaries(
        {},
        optional={
            "enabled": json_values,
            "muted": json_values,
            "target": st.sampled_from(["alice", "bob", ""]) | json_values,
            "action": st.sampled_from(["mute", "unmute", "deafen", "undeafen", "disconnect", "move", "join"])
            | json_values,
            "channel": st.sampled_from(["lobby", "afk", "bad/id"]) | json_values,
        },
    )
    | json_values
)
frames = st.one_of(
    st.builds(lambda *f: orjson.dumps(list(f)).decode(), refs, refs, topics, events, payloads),
    st.builds(lambda v: orjson.dumps(v).decode(), json_values),
    st.text(max_size=100),
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200), json_values.map(orjson.dumps)))
def test_decode_raises_only_protocol_errors(data: Any) -> None:
    try:
        msg = protocol.decode(data)
    except protocol.ProtocolError as exc:
        assert exc.reason
    else:
        assert isinstance(msg.topic, str) and isinstance(msg.event, str) and isinstance(msg.payload, dict)


@settings(max_examples=300, deadline=None)
@given(
    refs,
    refs,
    st.text(min_size=1, max_size=50),
    st.text(min_size=1, max_size=20),
    st.dictionaries(st.text(), json_values),
)
def test_encode_decode_roundtrip(
    join_ref: Any, ref: Any, topic: str, event: str, payload: dict[str, Any]
) -> None:
    if not (isinstance(join_ref, str | None) and isinstance(ref, str | None)):
        return
    if join_ref is not None and len(join_ref) > protocol.MAX_REF_LEN:
        return
    assert protocol.decode(protocol.encode(join_ref, ref, topic, event, payload)) == (
        join_ref,
        ref,
        topic,
        event,
        payload,
    )


class LiveServer:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda loop, context: self.errors.append(context))
        app_settings = SignalingSettings(
            jwt_secret=JWT_SECRET, messages_per_s=10_000, message_burst=10_000, joins_per_10s=10_000
        )
        self.server = TestServer(create_app(app_settings), host="127.0.0.1")
        self.loop.run_until_complete(self.server.start_server())
        self.bystander = PhoenixClient(self.ws, token("bob", grant="all"))
        self.loop.run_until_complete(self.bystander.connect())
        self.bystander_ch, _ = self.loop.run_until_complete(self.bystander.join("voice:g1:lobby"))

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/socket"

    def close(self) -> None:
        self.loop.run_until_complete(self.bystander.close())
        self.loop.run_until_complete(self.server.close())
        self.loop.close()


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    server = LiveServer()
    yield server
    server.close()


async def _session(live: LiveServer, sequence: list[str]) -> None:
    client = PhoenixClient(live.ws, token("alice", grant="all"))
    client._refs = itertools.count(10**9)  # refs the generated frames cannot use
    await client.connect()
    for frame in sequence:
        if client.closed.is_set():
            break
        await client.send_raw(frame)
    # Either every frame was handled and the socket still answers, or the server closed it with a code.
    heartbeat = asyncio.ensure_future(client.heartbeat(timeout=10))
    closed = asyncio.ensure_future(client.closed.wait())
    done, _ = await asyncio.wait({heartbeat, closed}, return_when=asyncio.FIRST_COMPLETED)
    if heartbeat in done and heartbeat.exception() is None:
        closed.cancel()
    else:
        heartbeat.cancel()
        await closed
        assert client.close_code in (1003, 1008, 1009, 1013), client.close_code
    await client.close()
    await live.bystander.heartbeat(timeout=5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(frames, max_size=25))
def test_router_survives_any_frames(live: LiveServer, sequence: list[str]) -> None:
    live.loop.run_until_complete(asyncio.wait_for(_session(live, sequence), 20))
    metrics = live.server.app[CTX].metrics
    assert metrics.errors.labels("crash")._value.get() == 0
    assert live.errors == []
