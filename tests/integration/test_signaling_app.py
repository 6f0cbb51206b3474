"""The signaling app over real WebSockets on loopback: protocol behaviour, rights, bad input, operations."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time

import aiohttp
import orjson
import pytest

from conftest import JWT_SECRET, SFU_SECRET
from tests.integration.conftest import AppFactory, AppServer, token
from voxa.client.phoenix import PhoenixClient, PushError
from voxa.common.claims import ChannelOverride, Permission, VoiceClaims
from voxa.common.testing.wait import scaled
from voxa.common.tokens import mint_token

TOPIC = "voice:g1:lobby"


async def connect(
    app: AppServer, user: str = "alice", grant: str = "connect,speak", **kw: object
) -> PhoenixClient:
    client = PhoenixClient(app.ws, token(user, grant=grant, **kw))  # type: ignore[arg-type]
    await client.connect()
    return client


async def next_frame(client: PhoenixClient, timeout: float = 3.0) -> list[object]:
    async with asyncio.timeout(timeout):
        return await client.unmatched.get()


async def test_join_presence_state_and_diffs(app_factory: AppFactory) -> None:
    app = await app_factory()
    alice = await connect(app, "alice")
    ch_a, reply = await alice.join(TOPIC)
    assert reply["user"] == {"id": "alice", "name": "Alice"}
    assert reply["permissions"] == ["connect", "speak"]
    assert reply["state"]["muted"] is False and reply["state"]["suppressed"] is False
    # As in Phoenix: the join reply, then presence_state, and no diff of one's own join before it.
    first_event, state = await ch_a.events.get()
    assert first_event == "presence_state" and set(state) == {"alice"}
    await ch_a.wait_presence(lambda m: set(m) == {"alice"})
    bob = await connect(app, "bob", grant="connect")
    ch_b, reply_b = await bob.join(TOPIC, {"muted": True})
    # The next thing alice's socket carries is bob's join: nothing (no diff of her own join) came before.
    async with asyncio.timeout(scaled(5.0)):
        next_event, diff = await ch_a.events.get()
    assert next_event == "presence_diff" and set(diff["joins"]) == {"bob"} and not diff["leaves"], (
        next_event,
        diff,
    )
    assert reply_b["state"]["muted"] is True and reply_b["state"]["suppressed"] is True
    await ch_a.wait_presence(lambda m: set(m) == {"alice", "bob"} and m["bob"]["muted"])
    await ch_b.wait_presence(lambda m: set(m) == {"alice", "bob"})
    await ch_b.push("unmute")
    await ch_a.wait_presence(lambda m: m["bob"]["muted"] is False)
    await ch_b.push("deafen")
    await ch_a.wait_presence(lambda m: m["bob"]["deafened"] and m["bob"]["muted"])
    await ch_b.push("undeafen")  # back to unmuted, as before deafening
    await ch_a.wait_presence(lambda m: not m["bob"]["deafened"] and not m["bob"]["muted"])
    await ch_b.leave()
    await ch_a.wait_presence(lambda m: set(m) == {"alice"})
    await alice.close()
    await bob.close()


async def test_leave_replies_then_closes_channel(app_factory: AppFactory) -> None:
    app = await app_factory()
    client = await connect(app)
    channel, _ = await client.join(TOPIC)
    await channel.wait_event("presence_state")
    await client.push(TOPIC, "phx_leave", {}, join_ref=channel.join_ref)
    assert await channel.wait_event("phx_close") == {}
    with pytest.raises(PushError, match="unmatched topic"):
        await client.push(TOPIC, "mute", {}, join_ref=channel.join_ref)
    await client.close()


async def test_heartbeat(app_factory: AppFactory) -> None:
    app = await app_factory()
    client = await connect(app)
    await client.heartbeat()
    await client.close()


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("room:lobby", "unmatched topic"),
        ("voice:g1", "invalid voice topic; expected voice:<server_id>:<channel_id>"),
        ("voice:g1:bad/chan", "invalid voice topic; expected voice:<server_id>:<channel_id>"),
        ("voice:other:lobby", "token is for another voice server"),
    ],
)
async def test_join_refusals(app_factory: AppFactory, topic: str, reason: str) -> None:
    app = await app_factory()
    client = await connect(app)
    with pytest.raises(PushError) as info:
        await client.join(topic)
    assert info.value.reason == reason
    await client.heartbeat()  # the socket is still fine
    await client.close()


async def test_join_needs_connect_in_that_channel(app_factory: AppFactory) -> None:
    app = await app_factory()
    client = await connect(app, channels={"vip": ChannelOverride(deny=frozenset({Permission.CONNECT}))})
    with pytest.raises(PushError, match="missing permission 'connect'"):
        await client.join("voice:g1:vip")
    await client.join(TOPIC)
    await client.close()


async def test_channel_capacity(app_factory: AppFactory) -> None:
    app = await app_factory(max_channel_members=2)
    clients = [await connect(app, f"u{i}") for i in range(3)]
    await clients[0].join(TOPIC)
    await clients[1].join(TOPIC)
    with pytest.raises(PushError) as info:
        await clients[2].join(TOPIC)
    assert info.value.response == {"reason": "channel is full", "capacity": 2}
    for c in clients:
        await c.close()


async def test_push_to_unjoined_topic(app_factory: AppFactory) -> None:
    app = await app_factory()
    client = await connect(app)
    with pytest.raises(PushError, match="unmatched topic"):
        await client.push(TOPIC, "mute", {})
    await client.close()


async def test_unknown_event_and_bad_payload(app_factory: AppFactory) -> None:
    app = await app_factory()
    client = await connect(app)
    channel, _ = await client.join(TOPIC)
    with pytest.raises(PushError, match="unknown event 'fly'"):
        await channel.push("fly")
    with pytest.raises(PushError, match="enabled must be a boolean"):
        await channel.push("video", {"enabled": "yes"})
    with pytest.raises(PushError, match="missing permission 'video'"):
        await channel.push("video", {"enabled": True})
    await client.close()


async def test_malformed_frames_get_error_replies_and_lose_nothing(app_factory: AppFactory) -> None:
    app = await app_factory()
    bystander = await connect(app, "bob")
    bystander_ch, _ = await bystander.join(TOPIC)
    client = await connect(app)
    channel, _ = await client.join(TOPIC)
    await bystander_ch.wait_presence(lambda m: set(m) == {"alice", "bob"})
    cases = [
        (
            "not json",
            [
                None,
                None,
                "phoenix",
                "phx_reply",
                {"status": "error", "response": {"reason": "malformed JSON"}},
            ],
        ),
        (
            '["1","2","t"]',
            [
                None,
                None,
                "phoenix",
                "phx_reply",
                {"status": "error", "response": {"reason": "frame must have 5 elements, got 3"}},
            ],
        ),
    ]
    for frame, expected in cases:
        await client.send_raw(frame)
        assert await next_frame(client) == expected
    # An error about a joined topic's push is addressed to that push (same join_ref and ref).
    await client.send_raw(f'["{channel.join_ref}","9","{TOPIC}","mute",[]]')
    reply = await channel.wait_event("phx_reply")
    assert reply == {"status": "error", "response": {"reason": "payload must be a JSON object"}}
    await channel.push("mute")  # the channel still works
    await bystander_ch.wait_presence(lambda m: m["alice"]["muted"])
    await client.close()
    await bystander.close()


async def test_too_many_malformed_frames_close_the_socket(app_factory: AppFactory) -> None:
    app = await app_factory()
    client = await connect(app)
    for _ in range(30):
        await client.send_raw("{")
    await asyncio.wait_for(client.closed.wait(), 5)
    assert client.close_code == 1008


async def test_oversized_frame_closes_only_that_socket(app_factory: AppFactory) -> None:
    app = await app_factory(max_frame_bytes=2048)
    bystander = await connect(app, "bob")
    ch, _ = await bystander.join(TOPIC)
    client = await connect(app)
    await client.send_raw(orjson.dumps([None, "1", "phoenix", "heartbeat", {"pad": "x" * 4096}]).decode())
    await asyncio.wait_for(client.closed.wait(), 5)
    assert client.close_code == 1009
    await bystander.heartbeat()
    await ch.push("mute")
    await bystander.close()


async def test_binary_frame_is_refused(app_factory: AppFactory) -> None:
    app = await app_factory()
    client = await connect(app)
    await client.send_raw(b"\x00\x01binary")
    await asyncio.wait_for(client.closed.wait(), 5)
    assert client.close_code == 1003


async def test_join_flood_is_bounded(app_factory: AppFactory) -> None:
    app = await app_factory(max_channels_per_socket=3, joins_per_10s=5)
    client = await connect(app)
    for i in range(3):
        await client.join(f"voice:g1:c{i}")
    with pytest.raises(PushError, match="too many channels on this socket"):
        await client.join("voice:g1:c3")
    client2 = await connect(app, "bob")
    results = []
    for _ in range(8):
        try:
            await client2.join("voice:g1:same")
            results.append("ok")
        except PushError as exc:
            results.append(exc.reason)
    assert results.count("ok") == 5 and results.count("join rate limit exceeded") == 3
    await client.close()
    await client2.close()


async def test_message_rate_limit(app_factory: AppFactory) -> None:
    app = await app_factory(messages_per_s=5, message_burst=10)
    bystander = await connect(app, "bob")
    client = await connect(app)
    for i in range(40):
        await client.send_raw(orjson.dumps([None, str(i), "phoenix", "heartbeat", {}]).decode())
    await asyncio.wait_for(client.closed.wait(), 5)
    assert client.close_code == 1008
    reasons = []
    while not client.unmatched.empty():
        reasons.append(client.unmatched.get_nowait()[4]["response"].get("reason"))
    assert "rate limited" in reasons
    await bystander.heartbeat()
    await bystander.close()


async def test_stale_join_ref_is_ignored_and_duplicate_join_replaces(app_factory: AppFactory) -> None:
    app = await app_factory()
    watcher = await connect(app, "bob")
    w_ch, _ = await watcher.join(TOPIC)
    client = await connect(app)
    first, _ = await client.join(TOPIC)
    old_ref = first.join_ref
    second, _ = await client.join(TOPIC)
    # The first join is closed (phx_close with its join_ref) and its presence replaced.
    frame = await next_frame(client)
    assert frame == [old_ref, old_ref, TOPIC, "phx_close", {}]
    await w_ch.wait_presence(lambda m: "alice" in m and len(w_ch.presence["alice"]["metas"]) == 1)
    # A push carrying the stale join_ref gets no reply and changes nothing.
    with pytest.raises(TimeoutError):
        await client.push(TOPIC, "mute", {}, join_ref=old_ref, timeout=0.5)
    assert w_ch.members()["alice"]["muted"] is False
    await second.push("mute")
    await w_ch.wait_presence(lambda m: m["alice"]["muted"])
    await client.close()
    await watcher.close()


async def test_socket_close_removes_presence(app_factory: AppFactory) -> None:
    app = await app_factory()
    watcher = await connect(app, "bob")
    ch, _ = await watcher.join(TOPIC)
    client = await connect(app)
    await client.join(TOPIC)
    await ch.wait_presence(lambda m: "alice" in m)
    await client.close()
    await ch.wait_presence(lambda m: set(m) == {"bob"})
    await watcher.close()


async def test_idle_socket_is_closed(app_factory: AppFactory) -> None:
    app = await app_factory(idle_timeout_s=0.5)
    client = await connect(app)
    await asyncio.wait_for(client.closed.wait(), 5)
    assert client.close_code == 4000


async def test_shutdown_closes_with_reconnect_code(app_factory: AppFactory) -> None:
    app = await app_factory()
    client = await connect(app)
    await client.join(TOPIC)
    await app.ctx.shutdown()
    await asyncio.wait_for(client.closed.wait(), 5)
    assert client.close_code == 1012


# --- upgrade checks ----------------------------------------------------------------------------------
async def upgrade_status(url: str, params: dict[str, str], origin: str | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, params=params, origin=origin):
                return 101, ""
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status, exc.message


async def test_upgrade_refusals(app_factory: AppFactory) -> None:
    app = await app_factory(allowed_origins=["https://app.example"])
    url = app.ws + "/websocket"
    good = token()
    assert (await upgrade_status(url, params={"vsn": "2.0.0", "token": good}))[0] == 101
    assert (await upgrade_status(url, params={"vsn": "2.0.0", "token": good}, origin="https://app.example"))[
        0
    ] == 101
    assert (await upgrade_status(url, params={"vsn": "2.0.0", "token": good}, origin="https://evil.example"))[
        0
    ] == 403
    assert (await upgrade_status(url, params={"vsn": "1.0.0", "token": good}))[0] == 400
    assert (await upgrade_status(url, params={"vsn": "2.0.0"}))[0] == 403
    expired = mint_token(VoiceClaims(sub="a", server="g1"), JWT_SECRET, ttl_s=1, now=time.time() - 120)
    assert (await upgrade_status(url, params={"vsn": "2.0.0", "token": expired}))[0] == 403


async def test_upgrade_refusal_bodies(app_factory: AppFactory) -> None:
    app = await app_factory()
    expired = mint_token(VoiceClaims(sub="a", server="g1"), JWT_SECRET, ttl_s=1, now=time.time() - 120)
    async with aiohttp.ClientSession() as session:
        for tok, reason in [
            (None, "missing token"),
            ("x.y.z", "malformed token"),
            (expired, "token expired"),
        ]:
            params = {"vsn": "2.0.0", **({"token": tok} if tok else {})}
            headers = {
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
            }
            async with session.get(app.ws + "/websocket", params=params, headers=headers) as resp:
                assert resp.status == 403
                assert (await resp.text()).strip() == reason


async def test_token_in_subprotocol(app_factory: AppFactory) -> None:
    app = await app_factory()
    encoded = base64.b64encode(token().encode()).decode().replace("=", "")
    client = PhoenixClient(app.ws)
    await client.connect(protocols=("phoenix", f"base64url.bearer.phx.{encoded}"))
    assert client.ws is not None and client.ws.protocol == "phoenix"
    await client.join(TOPIC)
    await client.close()


# --- HTTP endpoints ------------------------------------------------------------------------------------
async def test_health_ready_metrics(app_factory: AppFactory) -> None:
    app = await app_factory()
    client = await connect(app)
    await client.join(TOPIC)
    async with aiohttp.ClientSession() as s:
        async with s.get(app.http + "/healthz") as r:
            assert r.status == 200
        async with s.get(app.http + "/readyz") as r:
            assert r.status == 200 and (await r.json())["ready"] is True
        async with s.get(app.http + "/metrics") as r:
            text = await r.text()
    assert "voxa_signaling_sockets 1.0" in text
    assert 'voxa_signaling_joins_total{result="ok"} 1.0' in text
    assert "voxa_signaling_channel_members 1.0" in text
    await client.close()


async def test_ice_endpoint(app_factory: AppFactory) -> None:
    app = await app_factory(
        turn_secret="turn-shared-secret", turn_uris=["turn:127.0.0.1:3478?transport=udp"], turn_ttl_s=300
    )
    async with aiohttp.ClientSession() as s:
        async with s.get(app.http + "/ice") as r:
            assert r.status == 401 and (await r.json())["error"] == "missing token"
        before = int(time.time())
        async with s.get(app.http + "/ice", headers={"Authorization": f"Bearer {token('carol')}"}) as r:
            body = await r.json()
    assert body["iceTransportPolicy"] == "all"
    (server,) = body["iceServers"]
    assert server["urls"] == ["turn:127.0.0.1:3478?transport=udp"]
    expiry, user = server["username"].split(":")
    assert user == "carol" and before + 300 <= int(expiry) <= int(time.time()) + 300
    expected = base64.b64encode(
        hmac.new(b"turn-shared-secret", server["username"].encode(), hashlib.sha1).digest()
    ).decode()
    assert server["credential"] == expected
    client = await connect(app, "carol")
    _, reply = await client.join(TOPIC)
    assert reply["ice_servers"][0]["urls"] == ["turn:127.0.0.1:3478?transport=udp"]
    await client.close()


async def test_media_server_registry_api(app_factory: AppFactory) -> None:
    app = await app_factory()
    base = app.http + "/internal/servers/g1"
    auth = {"Authorization": f"Bearer {SFU_SECRET}"}
    body = {
        "id": "sfu-a",
        "server_id": "g1",
        "url": "http://127.0.0.1:9100",
        "capacity": 100,
        "load": {"peers": 4, "routers": 1},
    }
    async with aiohttp.ClientSession() as s:
        async with s.put(base + "/media-servers/sfu-a", json=body) as r:
            assert r.status == 401
        async with s.put(
            base + "/media-servers/sfu-a", json=body, headers={"Authorization": "Bearer nope"}
        ) as r:
            assert r.status == 401
        async with s.put(base + "/media-servers/sfu-a", json={**body, "capacity": -1}, headers=auth) as r:
            assert r.status == 422
            assert (await r.json())["details"][0]["loc"] == "capacity"
        async with s.put(base + "/media-servers/sfu-a", json=body, headers=auth) as r:
            assert r.status == 200
            assert (await r.json())["draining"] is False
        async with s.put(
            base + "/media-servers/sfu-b", json={**body, "id": "sfu-b", "load": {"peers": 1}}, headers=auth
        ) as r:
            assert r.status == 200
        async with s.get(base + "/media-servers", headers=auth) as r:
            assert [m["id"] for m in (await r.json())["media_servers"]] == ["sfu-a", "sfu-b"]
        async with s.get(base + "/channels/lobby/media-server", headers=auth) as r:
            assert (await r.json())["media_server"]["id"] == "sfu-b"
        async with s.put(base + "/media-servers/sfu-b/drain", json={"draining": True}, headers=auth) as r:
            assert r.status == 200
        async with s.put(base + "/media-servers/sfu-b", json={**body, "id": "sfu-b"}, headers=auth) as r:
            assert (await r.json())["draining"] is True
        # The channel keeps its draining SFU; a new channel goes to the other one.
        async with s.get(base + "/channels/lobby/media-server", headers=auth) as r:
            assert (await r.json())["media_server"]["id"] == "sfu-b"
        async with s.get(base + "/channels/other/media-server", headers=auth) as r:
            assert (await r.json())["media_server"]["id"] == "sfu-a"
        async with s.delete(base + "/media-servers/sfu-b", headers=auth) as r:
            assert r.status == 200
        async with s.get(base + "/channels/lobby/media-server", headers=auth) as r:
            assert (await r.json())["media_server"]["id"] == "sfu-a"
    client = await connect(app)
    _, reply = await client.join(TOPIC)
    assert reply["media_server"] == "sfu-a"
    await client.close()


async def test_registry_disabled_without_secret(app_factory: AppFactory) -> None:
    app = await app_factory(sfu_secret=None)
    async with aiohttp.ClientSession() as s, s.get(app.http + "/internal/servers/g1/media-servers") as r:
        assert r.status == 404


# --- moderation ------------------------------------------------------------------------------------------
async def test_server_mute_cannot_be_undone_by_target_and_survives_rejoin(app_factory: AppFactory) -> None:
    app = await app_factory()
    mod = await connect(app, "mod", grant="connect,speak,mute_members,deafen_members")
    mod_ch, _ = await mod.join(TOPIC)
    bob = await connect(app, "bob")
    bob_ch, _ = await bob.join(TOPIC)
    with pytest.raises(PushError, match="missing permission 'mute_members'"):
        await bob_ch.push("moderate", {"target": "mod", "action": "mute"})
    assert await mod_ch.push("moderate", {"target": "bob", "action": "mute"}) == {
        "target": "bob",
        "action": "mute",
    }
    await bob_ch.wait_presence(lambda m: m["bob"]["server_muted"])
    reply = await bob_ch.push("unmute")
    assert reply["state"]["server_muted"] is True
    await bob_ch.leave()
    bob_ch, again = await bob.join(TOPIC)
    assert again["state"]["server_muted"] is True
    await mod_ch.push("moderate", {"target": "bob", "action": "unmute"})
    await mod_ch.wait_presence(lambda m: m["bob"]["server_muted"] is False)
    await mod_ch.push("moderate", {"target": "bob", "action": "deafen"})
    await mod_ch.wait_presence(lambda m: m["bob"]["server_deafened"])
    with pytest.raises(PushError, match="target is not in this channel"):
        await mod_ch.push("moderate", {"target": "nobody", "action": "mute"})
    with pytest.raises(PushError, match="action must be one of"):
        await mod_ch.push("moderate", {"target": "bob", "action": "ban"})
    await mod.close()
    await bob.close()


async def test_disconnect_and_move(app_factory: AppFactory) -> None:
    app = await app_factory()
    mod = await connect(app, "mod", grant="connect,move_members")
    mod_ch, _ = await mod.join(TOPIC)
    bob = await connect(app, "bob")
    bob_ch, _ = await bob.join(TOPIC)
    await mod_ch.wait_presence(lambda m: "bob" in m)
    await mod_ch.push("moderate", {"target": "bob", "action": "move", "channel": "afk"})
    moved = await bob_ch.wait_event("moved")
    assert moved == {"by": "mod", "channel_id": "afk", "topic": "voice:g1:afk"}
    await bob_ch.wait_event("phx_close")
    await mod_ch.wait_presence(lambda m: "bob" not in m)
    bob_ch, _ = await bob.join(TOPIC)
    await mod_ch.wait_presence(lambda m: "bob" in m)
    await mod_ch.push("moderate", {"target": "bob", "action": "disconnect"})
    assert (await bob_ch.wait_event("disconnected"))["by"] == "mod"
    await bob_ch.wait_event("phx_close")
    await mod_ch.wait_presence(lambda m: "bob" not in m)
    with pytest.raises(PushError, match="move needs a destination"):
        await mod_ch.push("moderate", {"target": "mod", "action": "move"})
    await mod.close()
    await bob.close()
