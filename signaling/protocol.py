"""Phoenix Channels v2 wire format, pure: text frames in, typed messages out, and back.

A v2 frame is a JSON array ``[join_ref, ref, topic, event, payload]``. ``join_ref`` and ``ref`` are
strings or null, ``topic`` and ``event`` strings, ``payload`` an object. Encoding results are
``str`` so one broadcast frame can be encoded once and written to many sockets unchanged.
"""

from __future__ import annotations

import base64
from typing import Any, Final, NamedTuple

import orjson

# Channel lifecycle events of the Phoenix protocol.
PHX_JOIN: Final = "phx_join"
PHX_LEAVE: Final = "phx_leave"
PHX_REPLY: Final = "phx_reply"
PHX_CLOSE: Final = "phx_close"
PHX_ERROR: Final = "phx_error"
HEARTBEAT: Final = "heartbeat"
PHOENIX_TOPIC: Final = "phoenix"

# WebSocket close codes Voxa uses. Phoenix clients reconnect after any close they did not ask for.
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_UNSUPPORTED: Final = 1003
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_SERVICE_RESTART: Final = 1012
CLOSE_TRY_AGAIN: Final = 1013
CLOSE_IDLE: Final = 4000

AUTH_SUBPROTOCOL_PREFIX: Final = "base64url.bearer.phx."
MAX_REF_LEN: Final = 64
MAX_TOPIC_LEN: Final = 256
MAX_EVENT_LEN: Final = 64

_loads = orjson.loads
_dumps = orjson.dumps


class ProtocolError(ValueError):
    """A frame that is not a valid Phoenix v2 message. ``ref``/``topic`` are kept when they could be read,
    so the server can still address an error reply to the push that caused it."""

    def __init__(
        self, reason: str, join_ref: str | None = None, ref: str | None = None, topic: str | None = None
    ):
        super().__init__(reason)
        self.reason = reason
        self.join_ref = join_ref
        self.ref = ref
        self.topic = topic


class Message(NamedTuple):
    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: dict[str, Any]


def _ref(value: object, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and len(value) <= MAX_REF_LEN:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ProtocolError(f"{name} must be a string or null")


def decode(text: str | bytes) -> Message:
    """Parse one v2 frame; raise ProtocolError with a human-readable reason otherwise."""
    try:
        frame = _loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError("malformed JSON") from None
    if type(frame) is not list:
        raise ProtocolError("frame must be a JSON array [join_ref, ref, topic, event, payload]")
    if len(frame) != 5:
        raise ProtocolError(f"frame must have 5 elements, got {len(frame)}")
    join_ref_raw, ref_raw, topic, event, payload = frame
    join_ref = _ref(join_ref_raw, "join_ref")
    ref = _ref(ref_raw, "ref")
    if type(topic) is not str or not topic or len(topic) > MAX_TOPIC_LEN:
        raise ProtocolError("topic must be a non-empty string", join_ref, ref)
    if type(event) is not str or not event or len(event) > MAX_EVENT_LEN:
        raise ProtocolError("event must be a non-empty string", join_ref, ref, topic)
    if type(payload) is not dict:
        raise ProtocolError("payload must be a JSON object", join_ref, ref, topic)
    return Message(join_ref, ref, topic, event, payload)


def encode(join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any) -> str:
    return _dumps([join_ref, ref, topic, event, payload]).decode()


def reply(join_ref: str | None, ref: str | None, topic: str, status: str, response: Any) -> str:
    """A ``phx_reply`` to the push numbered ``ref``."""
    return _dumps([join_ref, ref, topic, PHX_REPLY, {"status": status, "response": response}]).decode()


def ok(join_ref: str | None, ref: str | None, topic: str, response: Any = None) -> str:
    return reply(join_ref, ref, topic, "ok", {} if response is None else response)


def error(join_ref: str | None, ref: str | None, topic: str, reason: str, **details: Any) -> str:
    return reply(join_ref, ref, topic, "error", {"reason": reason, **details})


def broadcast(topic: str, event: str, payload: Any) -> str:
    """A frame for every member of a topic; no join_ref, so it is valid for any join of the topic."""
    return _dumps([None, None, topic, event, payload]).decode()


def push(join_ref: str | None, topic: str, event: str, payload: Any) -> str:
    """A server push to one member (Phoenix `push/3`)."""
    return _dumps([join_ref, None, topic, event, payload]).decode()


def close(join_ref: str | None, topic: str) -> str:
    return _dumps([join_ref, join_ref, topic, PHX_CLOSE, {}]).decode()


def channel_error(join_ref: str | None, topic: str) -> str:
    return _dumps([join_ref, join_ref, topic, PHX_ERROR, {}]).decode()


def token_from_subprotocols(header: str | None) -> tuple[str | None, bool]:
    """Find the auth token in ``Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.<b64 token>``.

    Returns (token, wants_phoenix_subprotocol). The phoenix JS client encodes with plain base64 and
    strips padding, so both alphabets are accepted.
    """
    if not header:
        return None, False
    token: str | None = None
    wants_phoenix = False
    for item in (part.strip() for part in header.split(",")):
        if item == "phoenix":
            wants_phoenix = True
        elif item.startswith(AUTH_SUBPROTOCOL_PREFIX):
            encoded = item[len(AUTH_SUBPROTOCOL_PREFIX) :]
            padded = encoded + "=" * (-len(encoded) % 4)
            try:
                token = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                # binascii.Error, or ValueError for non-ASCII text (a header's bytes >= 0x80 arrive
                # as surrogate escapes): not a token.
                token = None
    return token, wants_phoenix
