"""`VoiceClient`: a participant of a Voxa voice channel, in Python, speaking only docs/protocol.md.

One Phoenix socket (voxa.client.phoenix), one joined voice topic ``voice:<server>:<channel>``, and one
aiortc RTCPeerConnection to the channel's SFU, negotiated through the channel's ``sdp`` pushes with the
client as the **polite** peer. Used by the tests, the load generators and ``voxa client join``:

    async with VoiceClient("ws://127.0.0.1:4000/socket", token, "lobby", tone_hz=440) as client:
        sink = await client.wait_audio("bob")          # bob's track, once the SFU offered it
        level = await sink.measure(1.0)                # Level(hz=660.1, rms=0.34, ...)
        await client.mute()                            # stop + replaceTrack(None), then push `mute`

What it does, and why:

* ICE servers come from the join reply (or the `ice_servers` override). An empty list stays empty:
  aiortc would otherwise fall back to Google's public STUN server, which a private deployment neither
  needs nor wants to leak candidates to. The ICE transport policy comes from the join reply too, or
  from `ice_transport_policy` ("relay": TURN relay candidates only, as a client behind a strict
  firewall ends up using; the tests use it to prove media goes through the TURN gateway).
* aiortc does not trickle: its candidates are in the SDP once `setLocalDescription` returns, so the
  client never pushes ``ice``. The SFU does not trickle either.
* The SFU offers one m-section per other participant's track and reuses inactive ones; the stream id
  (msid) of each is the sender's presence `session_id`. aiortc keeps one remote track object per
  m-section whatever it later carries, so tracks are mapped to participants from every remote
  description (mid -> msid), not from aiortc's `track` events, and a reused m-section's receiver is
  told the new SSRC (see `_route_ssrcs`).
* Mute never renegotiates: the microphone track is taken off the sender (`replaceTrack(None)`) and then
  stopped, in that order, because aiortc ends a sender for good when its track raises
  MediaStreamError; unmute gives the sender a new track whose timestamps carry on from the old one.
* The client is audio-only: video m-sections the SFU offers are answered ``inactive``, so no VP8 is
  decoded for nothing. It still speaks the video parts of the protocol that make sense without
  decoding: `video_quality` (e.g. pause a participant's video for this session) and the presence
  `tracks`/`streaming` fields in ``presence_update``; a `publish_layers` push (only sent to publishers
  of video, which this client is not) is surfaced as an event.
* Glare (an SFU offer while our own is pending, or our offer answered ``{"ignored": true}``): the
  polite peer rolls its offer back, answers the SFU's, then offers again. aiortc has no rollback, so
  `rollback_local_offer` restores the two pieces of state a re-offer changes. In practice the client
  only ever offers on a fresh peer connection (the SFU cannot have an offer pending for a peer it does
  not have yet), so this is a safety net, exercised by the unit tests' fake server.
* `media_reset` (the channel moved to another SFU) and socket loss are recovered from: a new peer
  connection and a first offer; for a lost socket a new socket and join first, with capped exponential
  backoff (the first attempt within 50 ms: a replica that died is replaced by another at once). A
  lost socket does not stop media: the peer connection keeps running and the new join carries
  `resume` (the session id and the join reply's `resume_token`); `resumed: true` keeps it, with no
  renegotiation, `resumed: false` closes it and negotiates a new one. A refusal that cannot improve
  by retrying (bad token, missing permission) ends the client.
  A negotiation that fails on our side leaves the SFU's peer in an unknown state, and signaling would
  relay a fresh connection's offer to that peer as an ICE restart (refused): the client leaves and joins
  again, which gives it a new session and a new SFU peer.
* Deafening is the client's business (signaling does not tell the SFU): received audio is dropped, for
  a self deafen and for a moderator's `server_deafened` alike. `record=` mixes everything heard into
  one WAV file on a wall-clock timeline (media.WavMixer) until `leave()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aioice.ice
import jwt
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.rtcicetransport import parse_stun_turn_uri

from voxa.client.media import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    AudioSink,
    Level,
    PacedAudioTrack,
    SineTrack,
    WavMixer,
    WavTrack,
    read_wav_48k,
)
from voxa.client.phoenix import ClientChannel, ConnectRefused, PhoenixClient, PushError

log = logging.getLogger("voxa.client")

# Local commands travel through the channel's event queue, so that they are handled in order with the
# server's pushes by the one task that owns the peer connection; the names cannot be server events.
_OFFER = "voxa-client:offer!"
_SOCKET_CLOSED = "voxa-client:socket-closed!"
MEDIA_FAILED = "media negotiation failed"

SIGNALING_TIMEOUT_S = 15.0  # an `sdp` push waits for signaling *and* the SFU's HTTP API


# --- pure helpers ---------------------------------------------------------------------------------------
def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, read WITHOUT verifying it (the client only needs to know where it points;
    signaling verifies). ValueError when it is not a JWT at all."""
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise ValueError(f"not a JWT: {exc}") from None
    return claims


def server_id_from_token(token: str) -> str:
    """The voice server a token is for (its `server` claim); ValueError if it has none."""
    server = token_claims(token).get("server")
    if not isinstance(server, str) or not server:
        raise ValueError("the token has no `server` claim; pass server_id explicitly")
    return server


def voice_topic(server_id: str, channel_id: str) -> str:
    return f"voice:{server_id}:{channel_id}"


def socket_url(url: str) -> str:
    """Normalise a socket URL to what PhoenixClient takes (it appends ``/websocket``): accepts
    ``ws://host:4000/socket``, ``http://host:4000/socket`` and ``.../socket/websocket``."""
    url = url.strip().rstrip("/")
    if url.startswith("http://") or url.startswith("https://"):
        url = "ws" + url.removeprefix("http")
    return url.removesuffix("/websocket")


def ice_servers(entries: Iterable[RTCIceServer | Mapping[str, Any]]) -> list[RTCIceServer]:
    """Join-reply `ice_servers` entries (``{"urls", "username", "credential"}``) as aiortc RTCIceServers.

    URLs aiortc cannot parse are dropped (one bad entry must not stop the client from connecting with
    the others); entries left without URLs are dropped too. aiortc itself then uses the first STUN and
    the first TURN server only."""
    out: list[RTCIceServer] = []
    for entry in entries:
        if isinstance(entry, RTCIceServer):
            out.append(entry)
            continue
        raw = entry.get("urls")
        urls = [raw] if isinstance(raw, str) else [u for u in (raw or []) if isinstance(u, str)]
        usable = []
        for url in urls:
            try:
                parse_stun_turn_uri(url)
            except ValueError:
                log.warning("client.ice_url_ignored", extra={"url": url})
                continue
            usable.append(url)
        if usable:
            username, credential = entry.get("username"), entry.get("credential")
            out.append(
                RTCIceServer(
                    urls=usable,
                    username=str(username) if username is not None else None,
                    credential=str(credential) if credential is not None else None,
                )
            )
    return out


def rtc_configuration(
    entries: Iterable[RTCIceServer | Mapping[str, Any]], policy: str | None = "all"
) -> RTCConfiguration:
    """An RTCConfiguration with exactly these ICE servers: `iceServers=[]`, never None, when there are
    none (None makes aiortc use stun.l.google.com)."""
    try:
        transport_policy = RTCIceTransportPolicy(policy or "all")
    except ValueError:
        transport_policy = RTCIceTransportPolicy.ALL
    return RTCConfiguration(iceServers=ice_servers(entries), iceTransportPolicy=transport_policy)


_DEFAULT_HOST_ADDRESSES = aioice.ice.get_host_addresses


def use_host_addresses(addresses: Sequence[str] | None) -> None:
    """Gather ICE host candidates on exactly these local addresses, in every peer connection of this
    process; None restores aioice's default (every interface except loopback).

    aioice leaves 127.0.0.1 out, so without this a client could not reach an SFU that listens and
    accepts media on loopback only (a local `voxa demo`, the test suites). It is process-wide because
    aioice reads host addresses globally."""
    if addresses is None:
        aioice.ice.get_host_addresses = _DEFAULT_HOST_ADDRESSES
        return
    chosen = [ipaddress.ip_address(a) for a in addresses]

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [str(a) for a in chosen if (a.version == 4 and use_ipv4) or (a.version == 6 and use_ipv6)]

    aioice.ice.get_host_addresses = host_addresses


@dataclass(frozen=True)
class RemoteSection:
    """What one m-section of a remote description says about a track the SFU sends us."""

    mid: str
    kind: str
    direction: str
    stream_id: str | None
    ssrcs: tuple[int, ...]

    @property
    def sending(self) -> bool:
        """The SFU sends on it (from its side: sendonly or sendrecv)."""
        return self.direction in ("sendonly", "sendrecv")


def remote_sections(sdp: str) -> list[RemoteSection]:
    """The m-sections of an SDP with their stream ids: `a=msid:<stream> <track>`, else `a=ssrc:... msid:`."""
    description = aiortc_sdp.SessionDescription.parse(sdp)
    out = []
    for media in description.media:
        msid = media.msid or next((s.msid for s in media.ssrc if s.msid), None)
        stream = msid.split()[0] if msid else None
        out.append(
            RemoteSection(
                mid=str(media.rtp.muxId),
                kind=media.kind,
                direction=media.direction or "sendrecv",
                stream_id=stream if stream and stream != "-" else None,
                ssrcs=tuple(s.ssrc for s in media.ssrc),
            )
        )
    return out


def rollback_local_offer(pc: RTCPeerConnection) -> None:
    """Roll back a pending local offer: aiortc (1.16) has no `setLocalDescription({type: "rollback"})`.

    The polite peer must drop its own offer when the impolite one's offer collides with it. What an
    aiortc local offer changes is the signaling state, the pending local description, and the mids of
    transceivers that had none; this client only re-offers on a negotiated connection whose transceivers
    all have mids already, so restoring the first two is a complete rollback. The private names are
    checked by tests/unit/client/test_voice_pure.py against the pinned aiortc."""
    if pc.signalingState != "have-local-offer":
        return
    pc._RTCPeerConnection__pendingLocalDescription = None  # type: ignore[attr-defined]
    pc._RTCPeerConnection__setSignalingState("stable")  # type: ignore[attr-defined]


def _route_ssrcs(transceiver: RTCRtpTransceiver, ssrcs: Sequence[int]) -> None:
    """Point these SSRCs at this transceiver's receiver in aiortc's RTP router.

    aiortc registers a receiver's SSRCs once, when it starts; when the SFU reuses an m-section for
    another participant (a new SSRC) packets of the new SSRC would match several audio receivers by
    payload type and be dropped. Registering the SSRCs of every remote description fixes that."""
    receiver = transceiver.receiver
    router = getattr(receiver.transport, "_rtp_router", None)
    table = getattr(router, "ssrc_table", None)
    if isinstance(table, dict):
        for ssrc in ssrcs:
            table[ssrc] = receiver


# --- events ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VoiceEvent:
    """Something that happened to the client. `type` is one of:

    ``joined`` (topic, session_id, user, media_server, permissions, state), ``presence_join`` (user,
    session_id, name, state), ``presence_leave`` (user, session_id), ``presence_update`` (user,
    session_id, changes: fields other than speaking), ``speaking`` (user, session_id, speaking),
    ``track`` / ``track_ended`` (user, session_id, mid), ``media_state`` (state: aiortc's
    connectionState), ``media_reset`` (reason), ``reconnecting`` (attempt, delay_s, reason),
    ``resumed`` (session_id, resumed: whether the peer connection was kept after a lost socket),
    ``disconnected`` (by, reason), ``moved`` (by, channel_id), ``call_ended`` (call_id, reason: on a
    call's topic, the call is over or we left it), ``publish_layers`` (mid, active), ``error`` (reason,
    fatal), ``left``."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {"event": self.type, **self.data}


EventCallback = Callable[[VoiceEvent], None]
STATE_FIELDS = ("muted", "deafened", "server_muted", "server_deafened", "speaking", "video", "suppressed")
MEDIA_FIELDS = ("tracks", "streaming")
"""Presence fields the SFU fills (what the participant publishes): reported in ``presence_update``."""


@dataclass
class RemoteAudio:
    """A participant's audio as this client receives it."""

    session_id: str
    user_id: str | None
    mid: str
    sink: AudioSink


async def open_channel(
    url: str, token: str, topic: str, payload: Mapping[str, Any]
) -> tuple[PhoenixClient, ClientChannel, dict[str, Any]]:
    """A new socket joined to `topic`: (socket, channel, join reply). VoiceClientError when the
    socket (`status` set) or the join is refused; the socket is closed then."""
    phx = PhoenixClient(url, token)
    try:
        await phx.connect()
    except ConnectRefused as exc:
        raise VoiceClientError(exc.reason, exc.status) from None
    try:
        channel, reply = await phx.join(topic, payload)
    except PushError as exc:
        await phx.close()
        raise VoiceClientError(exc.reason, retry=bool(exc.response.get("retry"))) from None
    except BaseException:
        await phx.close()
        raise
    return phx, channel, reply


async def keep_alive(phx: PhoenixClient, interval_s: float) -> None:
    """Phoenix heartbeats (signaling closes silent sockets); a missed reply means a dead socket,
    which is closed so its reader ends and the owner reconnects."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await phx.heartbeat(timeout=10.0)
        except (PushError, TimeoutError, ConnectionError, aiohttp.ClientError, AssertionError):
            if phx.ws is not None:
                await phx.ws.close()
            return


class VoiceClientError(Exception):
    """The client cannot join (or stay): `reason` is the server's, `status` the HTTP status of a refused
    socket (0 for a refused join)."""

    def __init__(self, reason: str, status: int = 0, *, retry: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry = retry or status >= 500


# --- the client -----------------------------------------------------------------------------------------
class VoiceClient:
    """A participant of one voice channel. Start with `start()` (or `async with`), end with `close()`.

    `tone_hz` sends a sine tone, `play` a 16-bit PCM WAV file (`loop` to repeat it), neither: a
    sendrecv transceiver without a track (nothing sent until `unmute` has something to send — which is
    never, so such a client only listens). `record` writes everything heard, mixed, to a WAV file.
    """

    def __init__(
        self,
        url: str,
        token: str,
        channel: str | None,
        *,
        topic: str | None = None,
        server_id: str | None = None,
        tone_hz: float | None = None,
        play: str | Path | None = None,
        loop: bool = False,
        record: str | Path | None = None,
        ice_servers: Sequence[RTCIceServer | Mapping[str, Any]] | None = None,
        ice_transport_policy: str | None = None,
        muted: bool = False,
        deafened: bool = False,
        reconnect: bool = True,
        backoff_s: tuple[float, float] = (0.5, 10.0),
        max_reconnect_attempts: int | None = None,
        heartbeat_s: float = 25.0,
        keep_s: float = 10.0,
        on_event: EventCallback | None = None,
    ) -> None:
        if tone_hz is not None and play is not None:
            raise ValueError("pass tone_hz or play, not both")
        if (channel is None) == (topic is None):
            raise ValueError("pass a channel id or a topic (such as call:<call_id>), one of them")
        self.url = socket_url(url)
        self.token = token
        self.server_id = server_id or server_id_from_token(token)
        self.channel_id = channel or ""
        self._topic = topic or voice_topic(self.server_id, self.channel_id)
        self.tone_hz = tone_hz
        self.play = Path(play) if play is not None else None
        self.loop = loop
        self._pcm = read_wav_48k(play) if play is not None else None  # a bad file fails here, not later
        self.record = Path(record) if record is not None else None
        self._ice_override = list(ice_servers) if ice_servers is not None else None
        self._ice_policy_override = ice_transport_policy
        self.reconnect = reconnect
        self.backoff_s = backoff_s
        self.max_reconnect_attempts = max_reconnect_attempts
        self.heartbeat_s = heartbeat_s
        self.keep_s = keep_s
        self._callbacks: list[EventCallback] = [on_event] if on_event else []
        self._subscribers: list[asyncio.Queue[VoiceEvent]] = []

        self.phx: PhoenixClient | None = None
        self.channel: ClientChannel | None = None
        self.join_reply: dict[str, Any] = {}
        self.pc: RTCPeerConnection | None = None
        self._transceiver: RTCRtpTransceiver | None = None
        self._track: PacedAudioTrack | None = None
        self._wav_position = 0
        self._sinks: dict[str, AudioSink] = {}  # mid -> sink of that receiver's track
        self._streams: dict[str, str] = {}  # mid -> session id it currently carries
        self._generation = 0  # peer connections made; mixer sources are (generation, mid)
        self._mixer: WavMixer | None = None
        self._self_muted = muted
        self._self_deafened = deafened
        self._server_deafened = False
        self._offer_wanted = False
        self._snapshot: dict[str, dict[str, Any]] = {}
        self._owners: dict[str, str] = {}  # session id -> user id, remembered past a presence leave
        self._last_media_state = "closed"
        self._changed = asyncio.Event()
        self._clock0 = time.monotonic()
        self._supervisor: asyncio.Task[None] | None = None
        self._session_tasks: list[asyncio.Task[None]] = []
        self._retry_handle: asyncio.TimerHandle | None = None
        self._media_retry_s = 0.0
        self._resume: dict[str, str] | None = None
        """What the next join after a lost socket sends as `resume` (session id, resume token)."""
        self._resuming = False
        self._closing = False
        self.closed = asyncio.Event()
        self.close_reason: str | None = None

    # --- public state -----------------------------------------------------------------------------
    @property
    def topic(self) -> str:
        """The room joined: `voice:<server>:<channel>`, or a call's `call:<call_id>`."""
        return self._topic

    @property
    def session_id(self) -> str | None:
        value = self.join_reply.get("session_id")
        return str(value) if value is not None else None

    @property
    def user_id(self) -> str | None:
        user = self.join_reply.get("user") or {}
        return str(user["id"]) if "id" in user else None

    @property
    def self_muted(self) -> bool:
        return self._self_muted

    @property
    def self_deafened(self) -> bool:
        return self._self_deafened

    @property
    def deafened(self) -> bool:
        """Hearing nothing: deafened by oneself or by a moderator."""
        return self._self_deafened or self._server_deafened

    @property
    def media_state(self) -> str:
        return self.pc.connectionState if self.pc is not None else "closed"

    def members(self) -> dict[str, dict[str, Any]]:
        """user id -> latest presence meta (docs/protocol.md, Presence)."""
        return self.channel.members() if self.channel is not None else {}

    def me(self) -> dict[str, Any] | None:
        """This client's own presence meta."""
        user = self.user_id
        if self.channel is None or user is None:
            return None
        for meta in self.channel.presence.get(user, {}).get("metas", []):
            if meta.get("session_id") == self.session_id:
                return dict(meta)
        return None

    def session_owner(self, session_id: str) -> str | None:
        """The user a presence session id belongs to (a user on two devices has two)."""
        if self.channel is not None:
            for user, entry in self.channel.presence.items():
                if any(meta.get("session_id") == session_id for meta in entry.get("metas", [])):
                    self._owners[session_id] = user
                    return user
        return self._owners.get(session_id)

    @property
    def remote_tracks(self) -> dict[str, RemoteAudio]:
        """session id -> the audio this client receives from that participant."""
        return {
            session: RemoteAudio(session, self.session_owner(session), mid, self._sinks[mid])
            for mid, session in self._streams.items()
            if mid in self._sinks
        }

    def audio_from(self, user_id: str) -> AudioSink | None:
        """The sink of `user_id`'s audio (their newest session's, if on several devices)."""
        found = [r for r in self.remote_tracks.values() if r.user_id == user_id]
        if not found:
            return None
        metas = self.channel.presence.get(user_id, {}).get("metas", []) if self.channel else []
        order = {m.get("session_id"): i for i, m in enumerate(metas)}
        return max(found, key=lambda r: order.get(r.session_id, -1)).sink

    # --- events -----------------------------------------------------------------------------------
    def subscribe(self, maxsize: int = 0) -> asyncio.Queue[VoiceEvent]:
        """A queue that receives every event from now on (events are only kept for subscribers)."""
        queue: asyncio.Queue[VoiceEvent] = asyncio.Queue(maxsize)
        self._subscribers.append(queue)
        return queue

    def on_event(self, callback: EventCallback) -> None:
        self._callbacks.append(callback)

    def _emit(self, kind: str, **data: Any) -> None:
        event = VoiceEvent(kind, data)
        for queue in self._subscribers:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()  # a slow reader loses the oldest, never blocks the client
            queue.put_nowait(event)
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:
                log.exception("client.callback_failed")
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until `predicate()` holds; it is re-checked on every change and every 0.25 s."""
        async with asyncio.timeout(timeout):
            while True:
                changed = self._changed
                if predicate():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), 0.25)

    async def wait_media(self, timeout: float = 15.0) -> None:
        """Wait until the peer connection to the SFU is connected."""
        await self.wait_for(lambda: self.media_state == "connected", timeout)

    async def wait_member(self, user_id: str, timeout: float = 10.0) -> dict[str, Any]:
        await self.wait_for(lambda: user_id in self.members(), timeout)
        return self.members()[user_id]

    async def wait_audio(self, user_id: str, timeout: float = 15.0) -> AudioSink:
        """Wait until this client receives a track from `user_id`; returns its sink."""
        await self.wait_for(lambda: self.audio_from(user_id) is not None, timeout)
        sink = self.audio_from(user_id)
        assert sink is not None
        return sink

    async def measure(self, user_id: str, seconds: float = 1.0) -> Level:
        """What `user_id` sounded like over the next `seconds` (silence if no track arrives)."""
        sink = self.audio_from(user_id)
        if sink is None:
            await asyncio.sleep(seconds)
            return Level(None, 0.0, 0.0, 0, 0, SAMPLE_RATE)
        return await sink.measure(seconds)

    # --- lifecycle --------------------------------------------------------------------------------
    async def __aenter__(self) -> VoiceClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> dict[str, Any]:
        """Connect, join and start negotiating media; returns the join reply. Raises VoiceClientError when
        the socket or the join is refused (`status` 403 with the reason for a bad token)."""
        if self.record is not None and self._mixer is None:
            self._mixer = WavMixer(self.record)
        try:
            await self._connect_and_join()
        except VoiceClientError:
            self._finish("refused")
            raise
        self._supervisor = asyncio.create_task(self._supervise(), name=f"voxa-client-{self.topic}")
        return self.join_reply

    async def _connect_and_join(self) -> None:
        payload: dict[str, Any] = {
            "muted": self._self_muted or self._self_deafened,
            "deafened": self._self_deafened,
        }
        if self._resuming and self._resume is not None and self.pc is not None:
            payload["resume"] = dict(self._resume)
        phx, channel, reply = await open_channel(self.url, self.token, self.topic, payload)
        self.phx = phx
        self._joined(channel, reply)

    def _joined(self, channel: ClientChannel, reply: dict[str, Any]) -> None:
        """A join succeeded (first, after a reconnect, or again on the same socket): start the session."""
        assert self.phx is not None
        self.channel, self.join_reply = channel, reply
        session_id, token = reply.get("session_id"), reply.get("resume_token")
        self._resume = (
            {"session_id": session_id, "token": token}
            if isinstance(session_id, str) and isinstance(token, str)
            else None
        )
        resumed = bool(reply.get("resumed")) and self._resuming and self.pc is not None
        if self._resuming:
            self._emit("resumed", session_id=session_id, resumed=resumed)
        self._resuming = False
        self._emit(
            "joined",
            topic=self.topic,
            session_id=reply.get("session_id"),
            user=(reply.get("user") or {}).get("id"),
            media_server=reply.get("media_server"),
            permissions=reply.get("permissions", []),
            state=reply.get("state", {}),
        )
        self._session_tasks = [
            asyncio.create_task(self._watch_socket(self.phx, channel)),
            asyncio.create_task(keep_alive(self.phx, self.heartbeat_s)),
        ]
        if not resumed:
            channel.events.put_nowait((_OFFER, {}))  # negotiate once the presence_state is in

    async def leave(self) -> None:
        """Leave the channel (``phx_leave``) and stop media; the client cannot be restarted."""
        if self._closing:
            return
        self._closing = True
        if self._mixer is not None:
            self._mixer.close()  # the recording ends when we leave, not when the teardown is over
        await self._stop_supervisor()
        if self.channel is not None and self.phx is not None and not self.phx.closed.is_set():
            with contextlib.suppress(PushError, TimeoutError, ConnectionError, aiohttp.ClientError):
                await self.channel.leave(timeout=3.0)
        await self._close_media()
        if self.join_reply:
            self._emit("left")

    async def close(self) -> None:
        """Leave if still joined, close the socket and finish the recording."""
        await self.leave()
        await self._close_session()
        self._finish(self.close_reason or "closed")

    def _finish(self, reason: str) -> None:
        if self._mixer is not None:
            self._mixer.close()
        if self.close_reason is None:
            self.close_reason = reason
        self.closed.set()
        self._notify()

    async def _stop_supervisor(self) -> None:
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        task, self._supervisor = self._supervisor, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _close_session(self) -> None:
        for task in self._session_tasks:
            task.cancel()
        for task in self._session_tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._session_tasks = []
        if self.phx is not None:
            await self.phx.close()

    # --- the supervisor: one task owns the socket, the channel and the peer connection ------------
    async def _supervise(self) -> None:
        try:
            while not self._closing:
                outcome = await self._pump()
                # A lost socket keeps media running: the SFU forwards without signaling, and the
                # next join may resume this session (same peer connection, no renegotiation).
                keep = (
                    outcome.startswith("socket closed")
                    and self.reconnect
                    and self._resume is not None
                    and self.pc is not None
                )
                if not keep:
                    await self._close_media()
                if self._stopping():  # leave() may have run meanwhile
                    return
                if outcome in ("disconnected", "call_ended"):
                    await self._close_session()
                    why = "disconnected by a moderator" if outcome == "disconnected" else "call ended"
                    self._finish(why)
                    return
                socket_up = self.phx is not None and not self.phx.closed.is_set()
                if outcome == MEDIA_FAILED and socket_up and self.channel is not None:
                    with contextlib.suppress(PushError, TimeoutError, ConnectionError, aiohttp.ClientError):
                        await self.channel.leave(timeout=3.0)  # signaling removes our SFU peer
                    if await self._rejoin():
                        continue
                # Closed by the server without a `disconnected` (moved, crashed): join again, here.
                if outcome in ("phx_close", "phx_error") and socket_up and await self._rejoin():
                    continue
                await self._close_session()
                self._resuming = keep
                if not self.reconnect or not await self._reconnect(outcome):
                    await self._close_media()
                    self._finish(self.close_reason or f"connection lost ({outcome})")
                    return
                if self.pc is not None and not self.join_reply.get("resumed"):
                    # Not resumed (the session expired, or the SFU lost the peer): start over.
                    await self._close_media()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, not a network condition: report it instead of dying silently
            log.exception("client.supervisor_failed")
            self._emit("error", reason=f"{type(exc).__name__}: {exc}", fatal=True)
            await self._close_media()
            await self._close_session()
            self._finish("client error")

    def _stopping(self) -> bool:
        return self._closing

    async def _rejoin(self) -> bool:
        """Join (again, or the channel a moderator moved us to) on the same socket."""
        assert self.phx is not None
        for task in self._session_tasks:
            task.cancel()
        try:
            channel, reply = await self.phx.join(
                self.topic,
                {"muted": self._self_muted or self._self_deafened, "deafened": self._self_deafened},
            )
        except (PushError, TimeoutError) as exc:
            self._emit("error", reason=f"rejoin failed: {exc}", fatal=False)
            return False
        self._joined(channel, reply)
        return True

    async def _reconnect(self, why: str) -> bool:
        """New socket, new join, with capped exponential backoff. False when giving up."""
        first, cap = self.backoff_s
        attempt = 0
        while not self._closing:
            attempt += 1
            if self.max_reconnect_attempts is not None and attempt > self.max_reconnect_attempts:
                self.close_reason = f"gave up reconnecting after {attempt - 1} attempts"
                return False
            if attempt == 1:
                # Soon: a replica that died is replaced by another at once (the load balancer sends us
                # elsewhere), and media keeps flowing only while the session can still be resumed.
                # Jitter still spreads a whole replica's clients.
                delay = random.uniform(0.0, min(first, 0.5) * 0.1)
            else:
                delay = min(cap, first * 2 ** (attempt - 2)) * random.uniform(0.8, 1.2)
            self._emit("reconnecting", attempt=attempt, delay_s=round(delay, 2), reason=why)
            await asyncio.sleep(delay)
            try:
                await self._connect_and_join()
                return True
            except VoiceClientError as exc:
                self._emit("error", reason=exc.reason, status=exc.status, fatal=not exc.retry)
                if not exc.retry:
                    self.close_reason = exc.reason
                    return False
                why = exc.reason
            except (OSError, aiohttp.ClientError, TimeoutError) as exc:
                why = f"{type(exc).__name__}: {exc}"
        return False

    async def _watch_socket(self, phx: PhoenixClient, channel: ClientChannel) -> None:
        await phx.closed.wait()
        channel.events.put_nowait((_SOCKET_CLOSED, {"code": phx.close_code}))

    async def _pump(self) -> str:
        """Handle the channel's events in order until the session ends; returns why it ended."""
        channel = self.channel
        assert channel is not None
        while True:
            name, payload = await channel.events.get()
            try:
                if name in ("presence_state", "presence_diff"):
                    self._presence_changed()
                elif name == "sdp":
                    await self._on_sdp(payload)
                elif name == _OFFER:
                    await self._offer()
                elif name == "media_reset":
                    self._emit("media_reset", reason=payload.get("reason"))
                    await self._close_media()
                    await self._offer()
                elif name == "publish_layers":
                    self._emit("publish_layers", mid=payload.get("mid"), active=payload.get("active"))
                elif name == "disconnected":
                    self._emit("disconnected", by=payload.get("by"), reason=payload.get("reason"))
                    return "disconnected"
                elif name == "call_ended":  # a call's media: the call is over (or we left it)
                    self._emit("call_ended", call_id=payload.get("call_id"), reason=payload.get("reason"))
                    return "call_ended"
                elif name == "moved":
                    # The server closes this join next (phx_close); then we join the destination.
                    self._emit("moved", by=payload.get("by"), channel_id=payload.get("channel_id"))
                    dest = payload.get("channel_id")
                    if isinstance(dest, str) and dest:
                        self.channel_id = dest
                        self._topic = voice_topic(self.server_id, dest)
                elif name in ("phx_close", "phx_error"):
                    return name
                elif name == _SOCKET_CLOSED:
                    return "socket closed" + (f" ({payload['code']})" if payload.get("code") else "")
            except (ConnectionError, aiohttp.ClientError) as exc:
                log.info("client.send_failed", extra={"error": str(exc)})  # _SOCKET_CLOSED follows
            except Exception as exc:
                if self.phx is None or self.phx.closed.is_set():
                    continue  # _SOCKET_CLOSED is queued
                # A failed negotiation leaves the SFU's peer for this session in an unknown state, and
                # the SFU refuses a fresh peer connection's offer on it (an ICE restart): start over
                # with a new session, i.e. leave and join again.
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self._emit("error", reason=f"media negotiation failed ({name}): {reason}", fatal=False)
                return MEDIA_FAILED

    # --- presence ---------------------------------------------------------------------------------
    def _presence_changed(self) -> None:
        current = {user: dict(meta) for user, meta in self.members().items()}
        before = self._snapshot
        for user, meta in current.items():
            old = before.get(user)
            if old is None:
                self._emit(
                    "presence_join",
                    user=user,
                    session_id=meta.get("session_id"),
                    name=meta.get("name"),
                    state={k: meta.get(k) for k in STATE_FIELDS},
                )
                continue
            changes = {
                k: meta.get(k)
                for k in (*STATE_FIELDS, *MEDIA_FIELDS)
                if meta.get(k) != old.get(k) and k != "speaking"
            }
            if meta.get("session_id") != old.get("session_id"):
                changes["session_id"] = meta.get("session_id")
            if changes:
                self._emit("presence_update", user=user, session_id=meta.get("session_id"), changes=changes)
            if bool(meta.get("speaking")) != bool(old.get("speaking")):
                speaking = bool(meta.get("speaking"))
                self._emit("speaking", user=user, session_id=meta.get("session_id"), speaking=speaking)
        for user, old in before.items():
            if user not in current:
                self._emit("presence_leave", user=user, session_id=old.get("session_id"))
        self._snapshot = current
        me = self.me()
        server_deafened = bool(me and me.get("server_deafened"))
        if server_deafened != self._server_deafened:
            self._server_deafened = server_deafened
            self._apply_hearing()
        # Tracks arriving before their sender's presence entry get their user now.
        self._notify()

    # --- media: negotiation (runs in the supervisor task only) ------------------------------------
    def _new_pc(self) -> RTCPeerConnection:
        entries = self._ice_override
        if entries is None:
            entries = self.join_reply.get("ice_servers") or []
        policy = self._ice_policy_override or self.join_reply.get("ice_transport_policy")
        pc = RTCPeerConnection(rtc_configuration(entries, policy))
        self._generation += 1
        track = self._acquire_track() if not (self._self_muted or self._self_deafened) else None
        self._transceiver = pc.addTransceiver(track if track is not None else "audio", direction="sendrecv")

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc is self.pc:
                self._media_state(pc.connectionState)

        self.pc = pc
        return pc

    async def _offer(self) -> None:
        """Send an offer: the first on a new peer connection, or a re-offer if one is wanted."""
        channel = self.channel
        if channel is None or self._closing:
            return
        first = self.pc is None
        pc = self.pc or self._new_pc()
        if pc.signalingState != "stable":
            self._offer_wanted = True  # after the answer in progress
            return
        self._offer_wanted = False
        await pc.setLocalDescription(await pc.createOffer())
        try:
            reply = await channel.push(
                "sdp", {"type": "offer", "sdp": pc.localDescription.sdp}, timeout=SIGNALING_TIMEOUT_S
            )
        except PushError as exc:
            if first:
                # `no media server available` (retry: true), or the SFU could not take the peer: no
                # peer exists for this session, so a fresh peer connection can offer again later.
                self._emit("error", reason=f"offer refused: {exc.reason}", fatal=False)
                await self._retry_media(exc.reason)
                return
            raise
        self._media_retry_s = 0.0
        if reply.get("ignored"):
            # Glare: the SFU's offer is on its way (or queued behind this reply); _on_sdp rolls ours back
            # when it arrives, answers it, and offers again.
            self._offer_wanted = True

    async def _on_sdp(self, payload: Mapping[str, Any]) -> None:
        kind, sdp = payload.get("type"), payload.get("sdp")
        pc, channel = self.pc, self.channel
        if pc is None or channel is None or not isinstance(sdp, str):
            log.info("client.sdp_ignored", extra={"type": kind})
            return
        if kind == "offer":
            if pc.signalingState == "have-local-offer":
                # We are polite: our offer yields. aiortc cannot roll back; see rollback_local_offer.
                rollback_local_offer(pc)
                self._offer_wanted = True
            await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
            self._apply_remote(sdp, offer=True)
            await pc.setLocalDescription(await pc.createAnswer())
            await channel.push(
                "sdp", {"type": "answer", "sdp": pc.localDescription.sdp}, timeout=SIGNALING_TIMEOUT_S
            )
            if self._offer_wanted:
                await self._offer()
        elif kind == "answer":
            if pc.signalingState != "have-local-offer":
                # The answer to an offer we rolled back (or to a peer connection already replaced).
                log.info("client.stale_answer", extra={"state": pc.signalingState})
                return
            await pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
            self._apply_remote(sdp, offer=False)
        else:
            log.info("client.sdp_unknown_type", extra={"type": kind})

    def _apply_remote(self, sdp: str, *, offer: bool) -> None:
        """Map the SFU's m-sections to participants (mid -> stream id = session id) and read their tracks."""
        pc = self.pc
        assert pc is not None
        by_mid = {t.mid: t for t in pc.getTransceivers() if t.mid is not None}
        for section in remote_sections(sdp):
            transceiver = by_mid.get(section.mid)
            if transceiver is None or transceiver is self._transceiver:
                continue
            if section.kind != "audio":
                if offer and transceiver.direction != "inactive":
                    transceiver.direction = "inactive"  # audio-only client: answer video inactive
                continue
            previous = self._streams.get(section.mid)
            if section.sending and section.stream_id:
                track = transceiver.receiver.track
                if section.mid not in self._sinks and track is not None:
                    sink = AudioSink(track, keep_s=self.keep_s)
                    sink.enabled = not self.deafened
                    if self._mixer is not None:
                        sink.listeners.append(self._mixer.listener((self._generation, section.mid)))
                    self._sinks[section.mid] = sink
                if section.ssrcs:
                    _route_ssrcs(transceiver, section.ssrcs)
                if previous != section.stream_id:
                    if previous is not None:
                        self._track_ended(section.mid, previous)
                        if section.mid in self._sinks:
                            self._sinks[section.mid].clear()
                    self._streams[section.mid] = section.stream_id
                    self._emit(
                        "track",
                        user=self.session_owner(section.stream_id),
                        session_id=section.stream_id,
                        mid=section.mid,
                    )
            elif previous is not None:
                del self._streams[section.mid]
                self._track_ended(section.mid, previous)

    def _track_ended(self, mid: str, session_id: str) -> None:
        if self._mixer is not None:
            self._mixer.forget((self._generation, mid))
        self._emit("track_ended", user=self.session_owner(session_id), session_id=session_id, mid=mid)

    async def _retry_media(self, reason: str) -> None:
        """Drop the peer connection and offer again later (capped exponential backoff)."""
        await self._close_media()
        first, cap = self.backoff_s
        self._media_retry_s = min(cap, max(first, self._media_retry_s * 2 or first))
        channel = self.channel
        if channel is None or self._closing:
            return
        log.info("client.media_retry", extra={"reason": reason, "delay_s": self._media_retry_s})
        loop = asyncio.get_running_loop()
        self._retry_handle = loop.call_later(self._media_retry_s, channel.events.put_nowait, (_OFFER, {}))

    async def _close_media(self) -> None:
        pc, self.pc = self.pc, None
        for mid, session in list(self._streams.items()):
            self._track_ended(mid, session)
        self._streams.clear()
        sinks, self._sinks = list(self._sinks.values()), {}
        for sink in sinks:
            await sink.stop()
        self._release_track()
        self._transceiver = None
        self._offer_wanted = False
        if pc is not None:
            await pc.close()
            self._media_state("closed")

    def _media_state(self, state: str) -> None:
        if state != self._last_media_state:
            self._last_media_state = state
            self._emit("media_state", state=state)

    # --- media: the microphone ---------------------------------------------------------------------
    def _acquire_track(self) -> PacedAudioTrack | None:
        """A new sending track whose timestamps continue the wall clock of this client (see media.py)."""
        elapsed = int((time.monotonic() - self._clock0) * SAMPLE_RATE)
        pts = (elapsed // FRAME_SAMPLES + 1) * FRAME_SAMPLES
        track: PacedAudioTrack | None = None
        if self.tone_hz is not None:
            track = SineTrack(self.tone_hz, pts=pts)
        elif self._pcm is not None:
            track = WavTrack(self.play, loop=self.loop, start=self._wav_position, pts=pts, samples=self._pcm)
        self._track = track
        return track

    def _release_track(self) -> None:
        track, self._track = self._track, None
        if self._transceiver is not None:
            # Off the sender first, stopped second: aiortc ends a sender whose track raises.
            self._transceiver.sender.replaceTrack(None)
        if track is not None:
            if isinstance(track, WavTrack):
                self._wav_position = track.position
            track.stop()

    def _apply_hearing(self) -> None:
        for sink in self._sinks.values():
            sink.enabled = not self.deafened

    async def _push_state(self, event: str) -> dict[str, Any]:
        """Push a self-state event; while reconnecting the join payload carries the state instead."""
        channel = self.channel
        if channel is None or self.phx is None or self.phx.closed.is_set():
            return {}
        try:
            reply = await channel.push(event)
        except (ConnectionError, aiohttp.ClientError, TimeoutError):
            return {}
        state: dict[str, Any] = reply.get("state", {})
        return state

    async def mute(self) -> dict[str, Any]:
        """Stop sending (track released, transceiver untouched), then push `mute`; returns the state."""
        self._self_muted = True
        self._release_track()
        return await self._push_state("mute")

    async def unmute(self) -> dict[str, Any]:
        """A new track on the sender, then push `unmute`. A server mute stays in force (the SFU keeps
        dropping this client's audio) until a moderator lifts it."""
        self._self_muted = False
        if not self._self_deafened:
            self._resume_track()
        return await self._push_state("unmute")

    def _resume_track(self) -> None:
        if self._transceiver is not None and self._track is None:
            self._transceiver.sender.replaceTrack(self._acquire_track())

    async def deafen(self) -> dict[str, Any]:
        """Hear nothing (received audio is dropped) and, as deafening implies, send nothing."""
        self._self_deafened = True
        self._release_track()
        self._apply_hearing()
        return await self._push_state("deafen")

    async def undeafen(self) -> dict[str, Any]:
        """Hear again, and speak again unless muted before deafening. Signaling restores the earlier
        mute on `undeafen`; should a server keep the deafen's mute instead, this pushes `unmute`."""
        self._self_deafened = False
        self._apply_hearing()
        if not self._self_muted:
            self._resume_track()
        state = await self._push_state("undeafen")
        if not self._self_muted and state.get("muted"):
            state = await self._push_state("unmute") or state
        return state

    async def video_quality(
        self,
        track: str,
        *,
        max_width: int | None = None,
        max_height: int | None = None,
        paused: bool = False,
    ) -> dict[str, Any]:
        """`video_quality` push: the size this client would show `track` at (a producer id from presence
        `tracks`), or paused (the SFU then sends none of it). Raises PushError (`unknown track` ...)."""
        if self.channel is None:
            raise VoiceClientError("not joined")
        payload = {"track": track, "max_width": max_width, "max_height": max_height, "paused": paused}
        return await self.channel.push("video_quality", payload)

    async def moderate(self, target: str, action: str, channel: str | None = None) -> dict[str, Any]:
        """`moderate` push (needs the matching permission): mute/unmute, deafen/undeafen, disconnect, move."""
        if self.channel is None:
            raise VoiceClientError("not joined")
        payload: dict[str, Any] = {"target": target, "action": action}
        if channel is not None:
            payload["channel"] = channel
        return await self.channel.push("moderate", payload)
