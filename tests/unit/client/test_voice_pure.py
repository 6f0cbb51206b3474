"""The pure parts of voxa.client.voice: token claims, URLs, ICE server conversion, SDP reading, and the
private aiortc surface the client relies on (rollback, SSRC routing), checked against the pinned aiortc."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.rtcdtlstransport import RtpRouter

from voxa.client.media import SineTrack
from voxa.client.voice import (
    ice_servers,
    remote_sections,
    rollback_local_offer,
    rtc_configuration,
    server_id_from_token,
    socket_url,
    token_claims,
    voice_topic,
)
from voxa.common.claims import VoiceClaims, parse_permissions
from voxa.common.tokens import mint_token


def test_server_claim_is_read_without_verification() -> None:
    token = mint_token(
        VoiceClaims(sub="alice", server="guild1", perms=parse_permissions("connect")),
        "some-secret-0123456789-abcdefghijk",
    )
    assert server_id_from_token(token) == "guild1"
    assert token_claims(token)["sub"] == "alice"
    # Expired tokens and foreign signatures still tell where they point; signaling is the judge.
    expired = jwt.encode({"sub": "a", "server": "g2", "exp": 1}, "other-secret-0123456789abcdefghijkl")
    assert server_id_from_token(expired) == "g2"


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b.c"])
def test_malformed_tokens_are_value_errors(token: str) -> None:
    with pytest.raises(ValueError, match="not a JWT"):
        token_claims(token)


def test_token_without_server_claim() -> None:
    with pytest.raises(ValueError, match="no `server` claim"):
        server_id_from_token(jwt.encode({"sub": "a"}, "k" * 32))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("ws://127.0.0.1:4000/socket", "ws://127.0.0.1:4000/socket"),
        ("ws://127.0.0.1:4000/socket/", "ws://127.0.0.1:4000/socket"),
        ("ws://h/socket/websocket", "ws://h/socket"),
        ("http://h:4000/socket", "ws://h:4000/socket"),
        ("https://voice.example/socket", "wss://voice.example/socket"),
    ],
)
def test_socket_url(given: str, expected: str) -> None:
    assert socket_url(given) == expected


def test_voice_topic() -> None:
    assert voice_topic("guild1", "lobby") == "voice:guild1:lobby"


def test_ice_servers_from_the_join_reply() -> None:
    reply: list[dict[str, Any]] = [
        {"urls": ["stun:stun.example:3478"]},
        {
            "urls": ["turn:turn.example:3478?transport=udp", "turns:turn.example:5349?transport=tcp"],
            "username": "1767225600:alice",
            "credential": "base64-hmac",
        },
        {"urls": "stun:single.example"},
    ]
    servers = ice_servers(reply)
    assert servers == [
        RTCIceServer(urls=["stun:stun.example:3478"]),
        RTCIceServer(
            urls=["turn:turn.example:3478?transport=udp", "turns:turn.example:5349?transport=tcp"],
            username="1767225600:alice",
            credential="base64-hmac",
        ),
        RTCIceServer(urls=["stun:single.example"]),
    ]


def test_unusable_ice_urls_are_dropped() -> None:
    servers = ice_servers([{"urls": ["http://nope", "stun:ok.example"]}, {"urls": ["bogus:x"]}, {"urls": []}])
    assert servers == [RTCIceServer(urls=["stun:ok.example"])]
    given = RTCIceServer(urls="stun:kept.example")
    assert ice_servers([given]) == [given]


def test_no_ice_servers_means_none_not_googles() -> None:
    config = rtc_configuration([])
    assert config.iceServers == []  # None would make aiortc use stun:stun.l.google.com:19302
    assert config.iceTransportPolicy is RTCIceTransportPolicy.ALL
    assert rtc_configuration([], "relay").iceTransportPolicy is RTCIceTransportPolicy.RELAY
    assert rtc_configuration([], "bogus").iceTransportPolicy is RTCIceTransportPolicy.ALL
    assert rtc_configuration([], None).iceTransportPolicy is RTCIceTransportPolicy.ALL


SFU_OFFER = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 c0 c1\r\n"
    "a=msid-semantic: WMS *\r\n"
    "m=audio 40000 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 127.0.0.1\r\na=mid:0\r\na=recvonly\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=setup:active\r\n"
    "a=fingerprint:sha-256 00:11\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 127.0.0.1\r\na=mid:c0\r\na=sendonly\r\n"
    "a=msid:sessA sessA:0\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n"
    "a=ssrc:5000 cname:voxa-sessA\r\na=ssrc:5000 msid:sessA sessA:0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 127.0.0.1\r\na=mid:c1\r\na=inactive\r\n"
    "a=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n"
)


def test_remote_sections_read_stream_ids_and_ssrcs() -> None:
    own, consumer, free = remote_sections(SFU_OFFER)
    assert (own.mid, own.direction, own.stream_id, own.sending) == ("0", "recvonly", None, False)
    assert (consumer.mid, consumer.stream_id, consumer.ssrcs, consumer.sending) == (
        "c0",
        "sessA",
        (5000,),
        True,
    )
    assert (free.mid, free.direction, free.stream_id, free.sending) == ("c1", "inactive", None, False)


def test_stream_id_from_ssrc_lines_when_there_is_no_msid_attribute() -> None:
    sdp = SFU_OFFER.replace("a=msid:sessA sessA:0\r\n", "")
    assert remote_sections(sdp)[1].stream_id == "sessA"


async def test_rollback_of_a_local_offer_lets_the_remote_offer_in() -> None:
    """Perfect negotiation's polite side on aiortc: our re-offer collides with theirs; we roll back (no
    native rollback in aiortc), answer theirs, and offer again; both sides end stable."""
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        client.addTrack(SineTrack(440))
        await client.setLocalDescription(await client.createOffer())
        await server.setRemoteDescription(client.localDescription)
        await server.setLocalDescription(await server.createAnswer())
        await client.setRemoteDescription(server.localDescription)
        # Both offer at once.
        await client.setLocalDescription(await client.createOffer())
        server.addTransceiver(SineTrack(660), direction="sendonly")
        await server.setLocalDescription(await server.createOffer())
        assert client.signalingState == "have-local-offer"
        with pytest.raises(Exception, match="signaling state"):
            await client.setRemoteDescription(server.localDescription)
        rollback_local_offer(client)
        assert client.signalingState == "stable"
        await client.setRemoteDescription(RTCSessionDescription(server.localDescription.sdp, "offer"))
        await client.setLocalDescription(await client.createAnswer())
        await server.setRemoteDescription(client.localDescription)
        assert (client.signalingState, server.signalingState) == ("stable", "stable")
        # And the polite side's offer goes through afterwards.
        await client.setLocalDescription(await client.createOffer())
        await server.setRemoteDescription(client.localDescription)
        await server.setLocalDescription(await server.createAnswer())
        await client.setRemoteDescription(server.localDescription)
        assert (client.signalingState, server.signalingState) == ("stable", "stable")
        assert len(client.getTransceivers()) == 2
        rollback_local_offer(client)  # a no-op when stable
        assert client.signalingState == "stable"
    finally:
        await client.close()
        await server.close()


def test_ssrc_routing_internals_exist() -> None:
    """_route_ssrcs writes aiortc's RtpRouter.ssrc_table; fail loudly if an upgrade renames it."""
    router = RtpRouter()
    assert isinstance(router.ssrc_table, dict)
    import inspect

    from aiortc import RTCDtlsTransport

    assert "_rtp_router" in inspect.getsource(RTCDtlsTransport.__init__)
