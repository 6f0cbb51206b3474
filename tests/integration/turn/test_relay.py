"""Media through a TURN gateway, for both TURN servers Voxa supports: stunnerd (STUNner's dataplane, the
gateway the operator deploys) and coturn.

* A call: real Redis, `voxa signaling` issuing TURN credentials (VOXA_TURN_SECRET/VOXA_TURN_URIS), a
  real `voxa sfu` whose media listens on 127.0.0.2, and Python VoiceClients that take their ICE
  servers from signaling's GET /ice and gather relay candidates only. Each hears the other's tone,
  and the ICE pair in use is the client's relay candidate to the SFU.
* Credentials: expired (correctly signed) and forged (wrong HMAC) ones cannot allocate.
* Peers: the gateway relays only to the allowed endpoints (127.0.0.2 here); a permission, channel
  binding or packet for 127.0.0.3 is refused.
* Secret rotation: the operator's two-slot rotation on a real gateway pod drops no call; and what
  each server does when its secret changes (see docs/turn.md, "Rotating the secret"), pinned so a
  change of behaviour in a new version shows up here.

The error codes differ between the servers and are part of what is pinned: stunnerd (pion/turn)
answers bad credentials with 400 and an unsigned response, coturn with 401; a refused permission is
an error response without ERROR-CODE from stunnerd and 403 from coturn; a refused channel binding is
401 from stunnerd and 403 from coturn.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioice import stun
from aioice.ice import CandidatePair
from aioice.turn import TurnClientProtocol, create_turn_endpoint

from conftest import RedisServer, SignalingFactory, SignalingProcess
from e2e.turn.fixtures import SFU_HOST, CoturnFactory, StunnerdFactory
from e2e.turn.probe import FIRST_CHANNEL, TurnProbe, TurnResult, TurnTimeout, UdpPeer
from e2e.turn.servers import (
    LOOPBACK,
    CoturnProcess,
    GatewayPod,
    StunnerdProcess,
    TurnServerProcess,
    self_signed_certificate,
    stunnerd_is_built,
)
from tests.integration.conftest import token
from tests.integration.sfu.test_control_api import SfuProcess
from tests.integration.test_media_signaling import registered
from tests.integration.test_voice_clients import TOLERANCE_HZ, hears
from voxa.client.voice import VoiceClient
from voxa.common.ports import free_port
from voxa.common.testing.wait import scaled
from voxa.common.turn import turn_credentials
from voxa.operator.render.stunnerd_config import Listener
from voxa.operator.slots import SIGNALING_ROLL_S

# The first test builds stunnerd when it is not cached yet (about three minutes on a cold Go cache).
pytestmark = pytest.mark.timeout(120 if stunnerd_is_built() else 900)

OUTSIDE_HOST = "127.0.0.3"  # not an allowed peer of either server
REFUSED_CREDENTIALS = {"stunnerd": 400, "coturn": 401}
REFUSED_PERMISSION: dict[str, int | None] = {"stunnerd": None, "coturn": 403}
REFUSED_CHANNEL_BIND = {"stunnerd": 401, "coturn": 403}


@pytest.fixture(params=["stunnerd", "stunnerd-operator-config", "coturn"])
def turn(request: pytest.FixtureRequest) -> TurnServerProcess:
    """One TURN server of each kind, default secret, relaying to 127.0.0.2 only."""
    if request.param == "stunnerd":
        server: TurnServerProcess = request.getfixturevalue("stunnerd")
    elif request.param == "stunnerd-operator-config":
        # The config the operator renders for a StunnerGateway, loaded by the real stunnerd: the active
        # slot of a gateway pod.
        pod: GatewayPod = request.getfixturevalue("gateway_pod")
        server = pod.active
    else:
        server = request.getfixturevalue("coturn")
    return server


async def allocate(server: TurnServerProcess, credentials: tuple[str, str]) -> TurnResult:
    """Allocate on a fresh 5-tuple and release the socket."""
    probe = await TurnProbe.open(server.address, *credentials)
    try:
        return await probe.allocate()
    finally:
        probe.close()


@pytest.fixture
async def echo_peers() -> AsyncIterator[Callable[[str], Awaitable[UdpPeer]]]:
    peers: list[UdpPeer] = []

    async def open_peer(host: str) -> UdpPeer:
        # A port in the SFU's media range (40000-49999), as a real SFU peer would use: the config the
        # operator renders lets the gateway relay only to those ports.
        for port in random.sample(range(40000, 50000), 50):
            try:
                peer = await UdpPeer.open(host, port=port)
            except OSError:
                continue
            peers.append(peer)
            return peer
        raise RuntimeError(f"no free UDP port in 40000-49999 on {host}")

    yield open_peer
    for peer in peers:
        peer.close()


@pytest.fixture
async def probes() -> AsyncIterator[Callable[[TurnServerProcess, tuple[str, str]], Awaitable[TurnProbe]]]:
    opened: list[TurnProbe] = []

    async def open_probe(server: TurnServerProcess, credentials: tuple[str, str]) -> TurnProbe:
        probe = await TurnProbe.open(server.address, *credentials)
        opened.append(probe)
        return probe

    yield open_probe
    for probe in opened:
        probe.close()


ProbeFactory = Callable[[TurnServerProcess, tuple[str, str]], Awaitable[TurnProbe]]
PeerFactory = Callable[[str], Awaitable[UdpPeer]]


# --- a call through the gateway ---------------------------------------------------------------------------
@dataclass
class TurnStack:
    turn: TurnServerProcess
    signaling: SignalingProcess
    sfu: SfuProcess

    async def ice(self, user: str) -> dict[str, Any]:
        """What a client gets from signaling's GET /ice with its token."""
        headers = {"Authorization": f"Bearer {token(user)}"}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.signaling.url}/ice", headers=headers) as r,
        ):
            assert r.status == 200, await r.text()
            body: dict[str, Any] = await r.json()
            return body

    async def client(self, user: str, hz: float) -> VoiceClient:
        """A relay-only VoiceClient with the ICE servers signaling issued to `user`."""
        ice = await self.ice(user)
        return VoiceClient(
            self.signaling.ws_url,
            token(user),
            "lobby",
            tone_hz=hz,
            loop=True,
            ice_servers=ice["iceServers"],
            ice_transport_policy="relay",
        )


@pytest.fixture
async def turn_stack(
    turn: TurnServerProcess,
    redis_server: RedisServer,
    signaling_factory: SignalingFactory,
    tmp_path: Path,
) -> AsyncIterator[TurnStack]:
    signaling = signaling_factory(
        redis_server.url,
        media_server_ttl_s="3",
        turn_secret=turn.signing_secret(),
        turn_uris=turn.uri,
        turn_ttl_s="600",
    )
    sfu = SfuProcess(tmp_path / "sfu", signaling_url=signaling.url, env={"VOXA_SFU_RTC_LISTEN_IP": SFU_HOST})
    try:
        await sfu.ready()
        await registered(signaling.url, "sfu-a")
        yield TurnStack(turn, signaling, sfu)
    finally:
        sfu.stop()


def selected_pair(client: VoiceClient) -> CandidatePair:
    """The ICE candidate pair the client's media flows on (aiortc keeps its aioice Connection private)."""
    assert client.pc is not None
    ice = client.pc.getTransceivers()[0].sender.transport.transport
    pair = ice._connection._nominated.get(1)
    assert pair is not None, "no nominated candidate pair"
    return pair


async def test_a_relay_only_call_goes_through_the_turn_server(
    turn_stack: TurnStack, loopback_ice: list[tuple[str, int]]
) -> None:
    turn = turn_stack.turn
    ice = await turn_stack.ice("alice")
    [server] = ice["iceServers"]
    assert server["urls"] == [turn.uri]
    expiry, _, user = server["username"].partition(":")
    assert user == "alice" and int(expiry) > 0

    tones = {"alice": 440.0, "bob": 660.0}
    clients = {user: await turn_stack.client(user, hz) for user, hz in tones.items()}
    try:
        for client in clients.values():
            await client.start()
        for user, client in clients.items():
            other = next(u for u in tones if u != user)
            level = await hears(client, other, tones[other], timeout=20)
            assert level.hz is not None and abs(level.hz - tones[other]) < TOLERANCE_HZ

        for client in clients.values():
            assert client.pc is not None
            ice_transport = client.pc.getTransceivers()[0].sender.transport.transport
            gathered = ice_transport._connection.local_candidates
            assert gathered and {c.type for c in gathered} == {"relay"}
            pair = selected_pair(client)
            assert pair.local_candidate.type == "relay"
            assert pair.local_candidate.host == LOOPBACK  # the gateway's relay address
            assert pair.remote_candidate.host == SFU_HOST  # straight to the SFU's media address

        assert not [addr for addr in loopback_ice if addr[0] == SFU_HOST]  # the SFU's checks got through
        if isinstance(turn, StunnerdProcess):
            assert turn.allocation_count >= 2
        else:
            log = turn.log_text()
            for user in tones:
                assert f":{user}>: incoming packet ALLOCATE processed, success" in log
    finally:
        for client in clients.values():
            await client.close()


def turn_allocation(client: VoiceClient) -> TurnClientProtocol:
    """The TURN allocation the client's media flows through (aioice keeps it private)."""
    transport = selected_pair(client).protocol.transport
    inner: TurnClientProtocol = transport._TurnTransport__inner_protocol  # type: ignore[attr-defined]
    return inner


async def refresh_now(allocation: TurnClientProtocol) -> None:
    """What the client would do within minutes on its own: refresh the allocation (signed with the
    credentials it allocated with), and refresh its channel bindings on the next packet sent."""
    request = stun.Message(message_method=stun.Method.REFRESH, message_class=stun.Class.REQUEST)
    request.attributes["LIFETIME"] = allocation.lifetime
    response, _ = await allocation.request_with_retry(request)
    assert "LIFETIME" in response.attributes
    for channel in allocation.channel_refresh_at:
        allocation.channel_refresh_at[channel] = 0.0


async def test_a_secret_rotation_on_the_gateway_drops_no_call(
    gateway_pod: GatewayPod,
    redis_server: RedisServer,
    signaling_factory: SignalingFactory,
    probes: ProbeFactory,
    tmp_path: Path,
) -> None:
    """The rotation the operator performs, on a real gateway pod (one stunnerd per slot, configs as
    the operator renders them). Calls made before it keep refreshing with their old credentials on
    their slot and keep their media; signaling, rolled with the new slot's URIs and secret, puts new
    calls on the other slot; each slot accepts its own secret only; one lifetime later the old slot
    adopts the new secret."""
    pod = gateway_pod
    old_secret, new_secret = pod.secret, "rotated-secret-9876543210"
    old_slot = pod.server("a")

    def signaling_for(slot: StunnerdProcess) -> SignalingProcess:
        """A signaling replica as the operator configures it: the active slot's URIs and secret."""
        return signaling_factory(
            redis_server.url,
            media_server_ttl_s="3",
            turn_secret=slot.secret,
            turn_uris=slot.uri,
            turn_ttl_s="600",
        )

    signaling = signaling_for(old_slot)
    sfu = SfuProcess(tmp_path / "sfu", signaling_url=signaling.url, env={"VOXA_SFU_RTC_LISTEN_IP": SFU_HOST})
    clients: list[VoiceClient] = []
    try:
        await sfu.ready()
        await registered(signaling.url, "sfu-a")
        before = TurnStack(old_slot, signaling, sfu)
        alice, bob = await before.client("alice", 440.0), await before.client("bob", 660.0)
        clients += [alice, bob]
        await alice.start()
        await bob.start()
        assert await hears(alice, "bob", 660.0, timeout=20) and await hears(bob, "alice", 440.0)
        assert old_slot.allocation_count >= 2

        changes = pod.rotate(new_secret)
        assert [c.reason for c in changes] == ["TurnSecretRotating", "TurnSecretRotated"]
        assert pod.slots.active == "b" and pod.slot_secret("a") == old_secret
        new_slot = pod.server("b")
        assert new_slot.secret == new_secret and old_slot.secret == old_secret

        # Signaling rolls: a replica with the new slot's URIs and secret, beside the old one.
        after = TurnStack(new_slot, signaling_for(new_slot), sfu)
        ice = await after.ice("carol")
        assert ice["iceServers"][0]["urls"] == [new_slot.uri]

        # The calls from before refresh with their own credentials, and their media goes on.
        for client in (alice, bob):
            await refresh_now(turn_allocation(client))
        assert await hears(alice, "bob", 660.0) and await hears(bob, "alice", 440.0)
        assert alice.media_state == "connected" and bob.media_state == "connected"

        # A new call joins through the new slot and hears the others, who hear it.
        carol = await after.client("carol", 880.0)
        clients.append(carol)
        await carol.start()
        assert await hears(carol, "alice", 440.0, timeout=20) and await hears(alice, "carol", 880.0)
        assert turn_allocation(carol).server[1] == new_slot.port
        assert new_slot.allocation_count >= 1

        # Each slot checks its own secret only.
        refused = REFUSED_CREDENTIALS["stunnerd"]
        for slot, secret in ((new_slot, old_secret), (old_slot, new_secret)):
            result = await (await probes(slot, turn_credentials(secret, "mallory", 600))).allocate()
            assert not result.ok and result.code == refused, (slot.port, result)

        # One credential lifetime later the old slot adopts the new secret: the old one is dead. (The
        # calls hang up first: their goodbye, a Refresh signed with the old secret, would be refused.)
        for client in clients:
            await client.close()
        clients.clear()
        retired = pod.rotate(new_secret, now=time.time() + pod.ttl_s + SIGNALING_ROLL_S)
        assert [c.reason for c in retired] == ["PreviousSecretRetired"]
        result = await (await probes(old_slot, turn_credentials(old_secret, "mallory", 600))).allocate()
        assert not result.ok and result.code == refused, result
        assert (await (await probes(old_slot, turn_credentials(new_secret, "dave", 600))).allocate()).ok
    finally:
        for client in clients:
            await client.close()
        sfu.stop()


# --- credentials --------------------------------------------------------------------------------------------
async def test_expired_and_forged_credentials_are_refused(turn: TurnServerProcess) -> None:
    refused = REFUSED_CREDENTIALS[turn.kind]
    valid = turn.credentials("alice")
    assert (await allocate(turn, valid)).ok

    expired = turn.credentials("alice", ttl_s=-60)  # signed with the right secret, expiry in the past
    result = await allocate(turn, expired)
    assert not result.ok and result.code == refused, result

    forged = (valid[0], turn_credentials("not-the-secret", "alice", 600)[1])
    assert forged[1] != valid[1]
    result = await allocate(turn, forged)
    assert not result.ok and result.code == refused, result

    # A username without the expiry prefix is not a TURN REST credential at all.
    result = await allocate(turn, ("alice", valid[1]))
    assert not result.ok and result.code == refused, result


# --- allowed peers ------------------------------------------------------------------------------------------
async def test_relaying_outside_the_allowed_peers_is_refused(
    turn: TurnServerProcess, probes: ProbeFactory, echo_peers: PeerFactory
) -> None:
    sfu_side, outside = await echo_peers(SFU_HOST), await echo_peers(OUTSIDE_HOST)
    probe = await probes(turn, turn.credentials("mallory"))
    assert (await probe.allocate()).ok

    permission = await probe.create_permission(OUTSIDE_HOST)
    assert not permission.ok and permission.code == REFUSED_PERMISSION[turn.kind], permission
    binding = await probe.channel_bind(FIRST_CHANNEL + 1, outside.address)
    assert not binding.ok and binding.code == REFUSED_CHANNEL_BIND[turn.kind], binding
    probe.send_indication(outside.address, b"let me out")

    # The allowed peer, on the same allocation, works: the refusals are about the address.
    assert (await probe.create_permission(SFU_HOST)).ok
    assert (await probe.channel_bind(FIRST_CHANNEL, sfu_side.address)).ok
    assert await probe.echo(FIRST_CHANNEL, b"to the sfu")
    await asyncio.sleep(scaled(0.3))  # a negative check: time for a wrongly relayed datagram to land
    assert outside.received == []
    assert {data for _, data in sfu_side.received} == {b"to the sfu"}


# --- secret rotation: stunnerd ------------------------------------------------------------------------------
async def test_stunnerd_secret_change_keeps_allocations_but_only_new_credentials_authenticate(
    stunnerd: StunnerdProcess, probes: ProbeFactory, echo_peers: PeerFactory
) -> None:
    """stunnerd holds one secret. A new one in the watched config applies within milliseconds and
    restarts nothing: existing allocations keep relaying, but from then on every authenticated request
    (Allocate, Refresh, CreatePermission, ChannelBind) must be signed with the new secret, including
    the refreshes of allocations made with the old one. Such an allocation is not tied to the username
    it was made with: a Refresh signed with any valid new credential keeps it."""
    old, new = stunnerd.secret, "rotated-secret-9876543210"
    peer = await echo_peers(SFU_HOST)
    probe = await probes(stunnerd, turn_credentials(old, "alice", 600))
    assert (await probe.allocate()).ok
    assert (await probe.channel_bind(FIRST_CHANNEL, peer.address)).ok
    assert await probe.echo(FIRST_CHANNEL, b"before")

    stunnerd.reconfigure(secret=new)
    assert stunnerd.allocation_count == 1
    assert await probe.echo(FIRST_CHANNEL, b"after")  # the allocation and its channel survived

    refused = REFUSED_CREDENTIALS["stunnerd"]
    for result in (
        await probe.refresh(),
        await probe.create_permission(SFU_HOST),
        await probe.channel_bind(FIRST_CHANNEL, peer.address),
        await allocate(stunnerd, turn_credentials(old, "bob", 600)),
    ):
        assert not result.ok and result.code == refused, result
    assert (await allocate(stunnerd, turn_credentials(new, "bob", 600))).ok

    probe.use_credentials(*turn_credentials(new, "someone-else", 600))
    assert (await probe.refresh()).ok
    assert (await probe.create_permission(SFU_HOST)).ok
    assert await probe.echo(FIRST_CHANNEL, b"still here")


async def test_stunnerd_realm_change_restarts_the_listener_and_drops_allocations(
    stunnerd: StunnerdProcess, probes: ProbeFactory, echo_peers: PeerFactory
) -> None:
    peer = await echo_peers(SFU_HOST)
    probe = await probes(stunnerd, stunnerd.credentials("alice"))
    assert (await probe.allocate()).ok
    assert (await probe.channel_bind(FIRST_CHANNEL, peer.address)).ok
    assert await probe.echo(FIRST_CHANNEL, b"before")

    stunnerd.reconfigure(realm="elsewhere.test")
    assert stunnerd.allocation_count == 0
    assert not await probe.echo(FIRST_CHANNEL, b"after", timeout=1.0)
    with pytest.raises(TurnTimeout):  # pion/turn does not answer requests for unknown allocations
        await probe.refresh(timeout=1.0)
    fresh = await probes(stunnerd, stunnerd.credentials("alice"))
    assert (await fresh.allocate()).ok
    assert fresh.realm == "elsewhere.test"


async def test_stunnerd_follows_cluster_changes_without_dropping_allocations(
    stunnerd: StunnerdProcess, probes: ProbeFactory, echo_peers: PeerFactory
) -> None:
    """What the operator does when SFU pods come and go: rewrite the endpoints."""
    first, second = await echo_peers(SFU_HOST), await echo_peers(OUTSIDE_HOST)
    probe = await probes(stunnerd, stunnerd.credentials("alice"))
    assert (await probe.allocate()).ok
    assert (await probe.channel_bind(FIRST_CHANNEL, first.address)).ok
    assert not (await probe.channel_bind(FIRST_CHANNEL + 1, second.address)).ok

    stunnerd.reconfigure(endpoints=[OUTSIDE_HOST])
    assert stunnerd.allocation_count == 1
    assert (await probe.channel_bind(FIRST_CHANNEL + 1, second.address)).ok
    assert await probe.echo(FIRST_CHANNEL + 1, b"new endpoint")
    # Relaying to a peer no longer allowed stops at once, even on a channel bound before.
    assert not await probe.echo(FIRST_CHANNEL, b"old endpoint", timeout=1.0)
    assert not (await probe.create_permission(SFU_HOST)).ok


# --- secret rotation: coturn --------------------------------------------------------------------------------
async def test_coturn_accepts_every_static_auth_secret(coturn_factory: CoturnFactory) -> None:
    """Several `static-auth-secret` lines are all valid at once (read at start only)."""
    server = coturn_factory(secrets=("new-secret-1", "old-secret-0"))
    for secret in ("new-secret-1", "old-secret-0"):
        assert (await allocate(server, turn_credentials(secret, "alice", 600))).ok, secret
    result = await allocate(server, turn_credentials("unknown-secret", "alice", 600))
    assert not result.ok and result.code == REFUSED_CREDENTIALS["coturn"]


async def test_coturn_database_secrets_rotate_live_and_keep_allocations(
    coturn_factory: CoturnFactory, probes: ProbeFactory, echo_peers: PeerFactory
) -> None:
    """With the secrets in coturn's database instead of the config file, adding and removing one takes
    effect at once, without a restart; an allocation made with a removed secret keeps refreshing (coturn
    keeps the key of the session)."""
    server = coturn_factory(secrets=("old-secret-0",), secrets_in_db=True)
    assert isinstance(server, CoturnProcess)
    peer = await echo_peers(SFU_HOST)
    probe = await probes(server, turn_credentials("old-secret-0", "alice", 600))
    assert (await probe.allocate()).ok
    assert (await probe.channel_bind(FIRST_CHANNEL, peer.address)).ok

    server.set_db_secrets(["new-secret-1", "old-secret-0"])
    assert (await allocate(server, turn_credentials("new-secret-1", "bob", 600))).ok
    assert (await allocate(server, turn_credentials("old-secret-0", "bob", 600))).ok

    server.set_db_secrets(["new-secret-1"])
    result = await allocate(server, turn_credentials("old-secret-0", "carol", 600))
    assert not result.ok and result.code == REFUSED_CREDENTIALS["coturn"], result
    assert (await probe.refresh()).ok
    assert (await probe.channel_bind(FIRST_CHANNEL, peer.address)).ok
    assert await probe.echo(FIRST_CHANNEL, b"still relayed")
    assert server.running


# --- TLS ----------------------------------------------------------------------------------------------------
class _Relayed(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def test_stunnerd_serves_turn_over_tls_with_a_rendered_certificate(
    stunnerd_factory: StunnerdFactory,
) -> None:
    """The renderer's TURN-TLS listener (cert and key as base64 PEM) is what stunnerd expects: a client
    that trusts exactly that certificate allocates over TLS."""
    cert_pem, key_pem = self_signed_certificate(LOOPBACK)
    port = free_port()
    tls = Listener("tls", "TURN-TLS", LOOPBACK, port, cert_pem=cert_pem, key_pem=key_pem)
    gateway = stunnerd_factory(extra_listeners=[tls])
    context = ssl.create_default_context(cadata=cert_pem)
    transport, protocol = await create_turn_endpoint(
        _Relayed, (LOOPBACK, port), *gateway.credentials("alice"), ssl=context, transport="tcp"
    )
    try:
        relayed = transport.get_extra_info("sockname")
        assert relayed[0] == LOOPBACK and gateway.allocation_count == 1
    finally:
        transport.close()
        await asyncio.wait_for(protocol.lost, 10)
