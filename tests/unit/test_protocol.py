"""The Phoenix v2 codec, on its own."""

from __future__ import annotations

import base64

import orjson
import pytest

from voxa.signaling import protocol
from voxa.signaling.protocol import ProtocolError, decode


def test_decode_join_frame() -> None:
    msg = decode('["1","1","voice:g:c","phx_join",{"muted":true}]')
    assert msg == protocol.Message("1", "1", "voice:g:c", "phx_join", {"muted": True})


def test_decode_heartbeat_with_null_join_ref() -> None:
    msg = decode('[null,"7","phoenix","heartbeat",{}]')
    assert msg.join_ref is None and msg.ref == "7" and msg.topic == "phoenix"


def test_integer_refs_are_read_as_strings() -> None:
    assert decode('[3,4,"t","e",{}]')[:2] == ("3", "4")


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("not json", "malformed JSON"),
        ('{"topic":"t"}', "frame must be a JSON array [join_ref, ref, topic, event, payload]"),
        ('["1","1","t","e"]', "frame must have 5 elements, got 4"),
        ('["1","1","t","e",{},1]', "frame must have 5 elements, got 6"),
        ('["1","1",5,"e",{}]', "topic must be a non-empty string"),
        ('["1","1","","e",{}]', "topic must be a non-empty string"),
        ('["1","1","t",null,{}]', "event must be a non-empty string"),
        ('["1","1","t","e",[]]', "payload must be a JSON object"),
        ('["1","1","t","e","x"]', "payload must be a JSON object"),
        ('[{},"1","t","e",{}]', "join_ref must be a string or null"),
        ('["1",true,"t","e",{}]', "ref must be a string or null"),
    ],
)
def test_decode_rejects_with_reason(frame: str, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    assert info.value.reason == reason


def test_error_keeps_refs_for_the_reply() -> None:
    with pytest.raises(ProtocolError) as info:
        decode('["j","r","voice:g:c","mute",[1]]')
    assert (info.value.join_ref, info.value.ref, info.value.topic) == ("j", "r", "voice:g:c")


def test_oversized_topic_is_rejected() -> None:
    with pytest.raises(ProtocolError):
        decode(orjson.dumps(["1", "1", "t" * 1000, "e", {}]))


def test_reply_shape() -> None:
    frame = orjson.loads(protocol.ok("1", "2", "voice:g:c", {"a": 1}))
    assert frame == ["1", "2", "voice:g:c", "phx_reply", {"status": "ok", "response": {"a": 1}}]
    err = orjson.loads(protocol.error("1", "3", "t", "nope", retry=True))
    assert err[4] == {"status": "error", "response": {"reason": "nope", "retry": True}}


def test_broadcast_push_close_shapes() -> None:
    assert orjson.loads(protocol.broadcast("t", "presence_diff", {})) == [
        None,
        None,
        "t",
        "presence_diff",
        {},
    ]
    assert orjson.loads(protocol.push("5", "t", "moved", {"x": 1})) == ["5", None, "t", "moved", {"x": 1}]
    assert orjson.loads(protocol.close("5", "t")) == ["5", "5", "t", "phx_close", {}]
    assert orjson.loads(protocol.channel_error("5", "t")) == ["5", "5", "t", "phx_error", {}]


def test_roundtrip() -> None:
    text = protocol.encode("1", "2", "voice:a:b", "mute", {"k": [1, 2]})
    assert decode(text) == protocol.Message("1", "2", "voice:a:b", "mute", {"k": [1, 2]})


def _as_js_client_does(token: str) -> str:
    # phoenix.js: `${prefix}${btoa(token).replace(/=/g, "")}`
    return protocol.AUTH_SUBPROTOCOL_PREFIX + base64.b64encode(token.encode()).decode().replace("=", "")


@pytest.mark.parametrize("token", ["a.b.c", "eyJhbGciOi.x-y_z.sig", "ab", "abc?>>"])
def test_token_from_subprotocols(token: str) -> None:
    found, wants = protocol.token_from_subprotocols(f"phoenix, {_as_js_client_does(token)}")
    assert (found, wants) == (token, True)


def test_token_from_subprotocols_urlsafe_alphabet() -> None:
    encoded = base64.urlsafe_b64encode(b"abc?>>").decode().rstrip("=")
    assert protocol.token_from_subprotocols(protocol.AUTH_SUBPROTOCOL_PREFIX + encoded) == ("abc?>>", False)


def test_token_from_subprotocols_garbage() -> None:
    assert protocol.token_from_subprotocols("phoenix, base64url.bearer.phx.!!!") == (None, True)
    assert protocol.token_from_subprotocols(None) == (None, False)
