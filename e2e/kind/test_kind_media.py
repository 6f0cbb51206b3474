"""Media from the host into real SFU pods only through the StunnerGateway: VoiceClients and Chromium
pages relay-only with the TURN credentials signaling issues, each hearing the other's tone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiortc import RTCPeerConnection

from e2e.browser.app_client import Client
from e2e.browser.conftest import ChromiumFactory
from e2e.kind.deployed import Stack
from e2e.kind.fixtures import KindEnv, deploy_stack
from voxa.client.voice import VoiceClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
A_HZ, B_HZ = 440.0, 660.0
TOLERANCE_HZ = 15.0


@pytest.fixture(scope="module")
def media_stack(voxa_kind: KindEnv) -> Iterator[Stack]:
    deployed = deploy_stack(voxa_kind, "kind-media", signaling_replicas=1)
    yield deployed
    deployed.delete()


def selected_pair(pc: RTCPeerConnection) -> tuple[str, str]:
    """(local candidate type, remote candidate address) of the connected ICE pair."""
    transport = pc.getTransceivers()[0].sender.transport
    assert transport is not None
    pair = transport.transport._connection._nominated.get(1)  # aioice: the nominated pair of RTP
    assert pair is not None, "no nominated candidate pair"
    return pair.local_candidate.type, pair.remote_candidate.host


async def test_voice_clients_on_the_host_hear_each_other_through_the_gateway(media_stack: Stack) -> None:
    turn = f"turn:127.0.0.1:{media_stack.ports.turn_a.host_port}?transport=udp"
    sfu_ips = {p["status"]["podIP"] for p in media_stack.pods("sfu")}
    async with (
        VoiceClient(media_stack.ws_url, media_stack.token("alice"), "lobby", tone_hz=A_HZ) as alice,
        VoiceClient(media_stack.ws_url, media_stack.token("bob"), "lobby", tone_hz=B_HZ) as bob,
    ):
        for client in (alice, bob):
            reply = client.join_reply
            assert reply["ice_transport_policy"] == "relay"
            assert [s["urls"] for s in reply["ice_servers"]] == [[turn]]
        heard_by_alice = await (await alice.wait_audio("bob", timeout=60)).measure(1.5)
        heard_by_bob = await (await bob.wait_audio("alice", timeout=60)).measure(1.5)
        assert heard_by_alice.hz is not None and abs(heard_by_alice.hz - B_HZ) <= TOLERANCE_HZ, heard_by_alice
        assert heard_by_bob.hz is not None and abs(heard_by_bob.hz - A_HZ) <= TOLERANCE_HZ, heard_by_bob
        for client in (alice, bob):
            assert client.pc is not None
            local, remote = selected_pair(client.pc)
            assert local == "relay" and remote in sfu_ips, (local, remote, sfu_ips)


async def test_chromium_pages_hear_each_other_through_the_gateway(
    chromium: ChromiumFactory, media_stack: Stack
) -> None:
    peers = await chromium(2, tone_hz=[A_HZ, B_HZ])
    alice = Client(peers, 0, "alice", media_stack)
    bob = Client(peers, 1, "bob", media_stack)
    await alice.open(media_stack.invite("alice"))
    await bob.open(media_stack.invite("bob"))
    await alice.wait_voice(timeout=60)
    await bob.wait_voice(timeout=60)
    await alice.hears("bob", B_HZ, timeout=60)
    await bob.hears("alice", A_HZ, timeout=60)
    sfu_ips = {p["status"]["podIP"] for p in media_stack.pods("sfu")}
    for page in (alice, bob):
        route = await page.js("window.voxa.route()")
        assert route is not None and route["policy"] == "relay" and route["local"] == "relay", route
        assert route["remote"] in sfu_ips, (route, sfu_ips)
