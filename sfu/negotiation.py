"""One peer's offer/answer state, pure: which m-sections exist, what each carries, and the SDP for them.

The SFU is the impolite peer of perfect negotiation: while its own offer is unanswered it ignores a
colliding client offer (the polite client rolls back, answers, and offers again). m-sections are never
renumbered: a mid keeps its payload types and extension ids, and a consumer's m-section that is no
longer needed goes inactive and is reused by the next consumer of the same kind instead of growing the
session forever.

What the SFU negotiates beyond one codec per section depends on its data plane (`Features`): the
native one takes simulcast (RFC 8853 rids, lowest layer first), RTX both ways (RFC 4588) and writes
transport-wide sequence numbers for transport-cc feedback on the sections it sends; the Python
reference data plane takes simulcast (and forwards only its lowest layer) and none of the rest.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

from voxa.sfu import sdp
from voxa.sfu.sdp import Codec, LocalMedia, LocalTransport, RemoteDescription, SdpError

VIDEO_FEEDBACK = ("nack", "nack pli", "ccm fir", "goog-remb")
AUDIO_FEEDBACK: tuple[str, ...] = ()
TRANSPORT_CC_FEEDBACK = "transport-cc"
MAX_LAYERS = 3
"""Simulcast layers taken from one section. A longer `a=simulcast:send` list is truncated to its
first three streams (the lowest, as Voxa clients order them): the answer lists only those, and a
browser then stops encoding the rest (RFC 8853 §5.3 lets the answerer remove streams)."""
SUPPORTED = {
    "audio": ("opus",),
    "video": ("vp8", "h264"),
}
DEFAULT_PT = {"opus": 111, "vp8": 96, "h264": 102}


class State(enum.StrEnum):
    NEW = "new"
    STABLE = "stable"
    HAVE_LOCAL_OFFER = "have-local-offer"


class NegotiationError(SdpError):
    """A description that is valid SDP but cannot be applied to this session."""


@dataclass(frozen=True, slots=True)
class Features:
    """What the data plane behind this negotiation can do, so the SDP promises nothing it cannot keep."""

    rtx: bool = True
    """Publisher RTX is unwrapped, and subscribers' NACKs are answered with RTX packets."""
    transport_cc: bool = True
    """The SFU writes transport-wide sequence numbers on its sections and reads the feedback."""
    publisher_transport_cc: bool = False
    """Accept transport-cc on client (publishing) sections: only when the data plane sends feedback
    to publishers, since a browser whose transport-cc gets no feedback cannot estimate its uplink."""


NATIVE_FEATURES = Features(publisher_transport_cc=True)
PYTHON_FEATURES = Features(rtx=False, transport_cc=False)


@dataclass(frozen=True, slots=True)
class Layer:
    """One simulcast layer of a producer: rid ("" without rids), SSRC and RTX SSRC (0 = unknown:
    the data plane learns them from the rid / repaired-rid header extensions)."""

    rid: str
    ssrc: int = 0
    rtx_ssrc: int = 0


@dataclass(frozen=True, slots=True)
class ProducerSpec:
    """A track the client sends on one of its m-sections."""

    mid: str
    kind: str
    codec: Codec  # the one codec negotiated for the section
    ssrcs: tuple[int, ...]
    extensions: dict[str, int]  # the client's ids
    sending: bool
    layers: tuple[Layer, ...] = ()  # simulcast, lowest first; () for audio and single-layer video without RTX
    rtx_payload_types: tuple[tuple[int, int], ...] = ()  # the client's (rtx pt, apt)

    @property
    def rids(self) -> tuple[str, ...]:
        return tuple(layer.rid for layer in self.layers if layer.rid)


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """A track the SFU sends this peer: a producer of someone else, with this peer's own SSRC."""

    consumer_id: str
    kind: str
    codec: Codec  # as the producer sends it (its payload type is remapped per peer)
    ssrc: int
    cname: str
    stream_id: str
    track_id: str
    rtx_ssrc: int = 0  # 0: no RTX offered for this consumer


@dataclass(frozen=True, slots=True)
class ConsumerAnswer:
    """What the subscriber's answer accepted for one consumer's m-section."""

    mid: str
    payload_type: int
    rtx_payload_type: int | None  # None: no RTX, NACKs are answered by plain retransmission
    extensions: dict[str, int]  # the SFU's ids the answer kept (uri -> id)


@dataclass(slots=True)
class Line:
    media: LocalMedia
    owner: str  # "client" or "sfu"
    consumer_id: str | None = None
    rids: tuple[str, ...] = ()  # a client section's simulcast layers, fixed when first negotiated


@dataclass(slots=True)
class OfferResult:
    answer: str | None  # None when the offer was ignored (glare: the SFU's own offer wins)
    producers: list[ProducerSpec] = field(default_factory=list)
    first: bool = False  # the very first offer: ICE/DTLS parameters to start with
    remote: RemoteDescription | None = None


@dataclass(slots=True)
class AnswerResult:
    consumers: dict[str, str]  # consumer id -> mid, accepted
    rejected: list[str]  # consumer ids the client rejected
    accepted: dict[str, ConsumerAnswer] = field(default_factory=dict)  # consumer id -> what was accepted


class Negotiator:
    def __init__(
        self, transport: LocalTransport, session_id: int, features: Features = NATIVE_FEATURES
    ) -> None:
        self.transport = transport
        self.session_id = session_id
        self.features = features
        self._version = itertools.count(1)
        self.lines: list[Line] = []
        self.state = State.NEW
        self.remote_ice: tuple[str, str] | None = None
        self.pt_by_key: dict[str, int] = {}
        self.ext_by_uri: dict[str, int] = {}
        # Every extension id the client's descriptions used, accepted or not: an id the SFU picks for
        # its own sections never collides with one of them (Chromium refuses "RTP extension ID
        # reassignment"), and a URI the client numbered keeps the client's number.
        self.remote_ext_ids: dict[int, str] = {}
        self._pending: list[Line] | None = None
        self._mids = itertools.count()

    # --- payload types and extension ids, stable for the whole session -----------------------------
    def _pt_for(self, codec: Codec) -> int:
        pt = self.pt_by_key.get(codec.key)
        if pt is not None:
            return pt
        used = set(self.pt_by_key.values())
        apt = codec.apt
        preferred = apt + 1 if apt is not None and apt < 127 else DEFAULT_PT.get(codec.name.lower(), 96)
        candidates = [preferred, *range(96, 128), *range(35, 64)]
        chosen: int = next(p for p in candidates if p not in used)
        self.pt_by_key[codec.key] = chosen
        return chosen

    def _ext_ids(self, kind: str) -> dict[str, int]:
        """Extension ids for a new SFU section: the session's, else the client's, else a fresh one."""
        uris = list(sdp.SUPPORTED_EXTENSIONS[kind])
        if self.features.transport_cc:
            uris.append(sdp.TRANSPORT_CC_URI)
        out: dict[str, int] = {}
        for uri in uris:
            ext_id = self.ext_by_uri.get(uri)
            if ext_id is None:
                ext_id = self._fresh_ext_id(uri)
                if ext_id is None:
                    continue  # every one-byte id is taken: go without this extension
                self.ext_by_uri[uri] = ext_id
            out[uri] = ext_id
        return out

    def _fresh_ext_id(self, uri: str) -> int | None:
        used = set(self.ext_by_uri.values())
        theirs = next((i for i, u in self.remote_ext_ids.items() if u == uri), None)
        if theirs is not None and theirs not in used and theirs < 15:
            return theirs
        free = [i for i in range(1, 15) if i not in used]
        return next((i for i in free if i not in self.remote_ext_ids), free[0] if free else None)

    def _remember_ext_ids(self, remote: RemoteDescription) -> None:
        for section in remote.media:
            for uri, ext_id in section.extensions.items():
                self.remote_ext_ids.setdefault(ext_id, uri)

    def _learn(self, codec: Codec, extensions: dict[str, int]) -> None:
        known = self.pt_by_key.get(codec.key)
        if known is not None and known != codec.pt:
            raise NegotiationError(f"payload type of {codec.name} changed from {known} to {codec.pt}")
        taken = {pt: key for key, pt in self.pt_by_key.items()}
        if taken.get(codec.pt, codec.key) != codec.key:
            raise NegotiationError(
                f"payload type {codec.pt} is already used by another codec in this session"
            )
        self.pt_by_key[codec.key] = codec.pt
        for uri, ext_id in extensions.items():
            known_id = self.ext_by_uri.get(uri)
            if known_id is not None and known_id != ext_id:
                raise NegotiationError(f"extension {uri} changed id from {known_id} to {ext_id}")
            self.ext_by_uri[uri] = ext_id

    # --- client offers ------------------------------------------------------------------------------
    def on_offer(self, text: str) -> OfferResult:
        remote = sdp.parse(text, "offer")
        if self.state is State.HAVE_LOCAL_OFFER:
            return OfferResult(answer=None)  # impolite: our offer stands, the client rolls back
        self._check_ice(remote)
        self._remember_ext_ids(remote)
        first = self.state is State.NEW
        if len(remote.media) < len(self.lines):
            raise NegotiationError("an offer must keep every existing m-section")
        producers: list[ProducerSpec] = []
        for index, section in enumerate(remote.media):
            if index < len(self.lines):
                line = self.lines[index]
                if line.media.mid != section.mid or line.media.kind != section.kind:
                    raise NegotiationError(f"m-section {index} must keep mid {line.media.mid!r}")
                if line.owner == "sfu" or line.media.rejected:
                    continue
                self._check_unchanged(line, section)
                producers.append(self._client_line(line, section))
            else:
                line = self._new_client_line(section)
                self.lines.append(line)
                if not line.media.rejected:
                    producers.append(self._client_line(line, section))
        self.state = State.STABLE
        answer = sdp.render(
            "answer", self.session_id, next(self._version), self.transport, [ln.media for ln in self.lines]
        )
        return OfferResult(answer=answer, producers=producers, first=first, remote=remote)

    def _check_ice(self, remote: RemoteDescription) -> None:
        ice = (remote.ice_ufrag, remote.ice_pwd)
        if self.remote_ice is None:
            self.remote_ice = ice
        elif ice != self.remote_ice:
            raise NegotiationError("ICE restarts are not supported; reconnect instead")

    def _check_unchanged(self, line: Line, section: sdp.MediaSection) -> None:
        """A later offer may change directions and SSRCs, not what the m-section was negotiated with."""
        for uri, ext_id in line.media.extensions.items():
            offered = section.extensions.get(uri)
            if offered is not None and offered != ext_id:
                raise NegotiationError(f"extension {uri} changed id from {ext_id} to {offered}")
        codec = line.media.codecs[0]
        if not any(c.pt == codec.pt and c.key == codec.key for c in section.codecs):
            raise NegotiationError(f"m-section {line.media.mid!r} no longer offers {codec.name}/{codec.pt}")

    def _new_client_line(self, section: sdp.MediaSection) -> Line:
        if section.mid in {ln.media.mid for ln in self.lines}:
            raise NegotiationError(f"mid {section.mid!r} is already in use")
        codec = self._choose_codec(section)
        if codec is None or section.kind not in SUPPORTED or section.port == 0:
            media = LocalMedia(
                kind=section.kind,
                mid=section.mid,
                direction="inactive",
                codecs=section.codecs[:1],
                extensions={},
                rejected=True,
                proto=section.proto,
            )
            return Line(media=media, owner="client")
        rids = _simulcast_rids(section)
        wanted = set(sdp.SUPPORTED_EXTENSIONS[section.kind])
        if rids:
            if sdp.RID_URI not in section.extensions:
                raise NegotiationError(
                    f"m-section {section.mid!r}: simulcast needs the {sdp.RID_URI} header extension"
                )
            wanted.add(sdp.RID_URI)
        rtx = self._client_rtx(section, codec)
        if rtx is not None and rids:
            wanted.add(sdp.REPAIRED_RID_URI)
        if self.features.publisher_transport_cc:
            wanted.add(sdp.TRANSPORT_CC_URI)
        extensions = {u: i for u, i in section.extensions.items() if u in wanted}
        self._learn(codec, extensions)
        codecs = [codec]
        if rtx is not None:
            self._learn(rtx, {})
            codecs.append(rtx)
        media = LocalMedia(
            kind=section.kind,
            mid=section.mid,
            direction="inactive",
            codecs=codecs,
            extensions=extensions,
            recv_rids=list(rids),
        )
        return Line(media=media, owner="client", rids=rids)

    def _client_rtx(self, section: sdp.MediaSection, codec: Codec) -> Codec | None:
        """The client's RTX format for the chosen codec, if the data plane takes RTX."""
        if not self.features.rtx or section.kind != "video":
            return None
        found = next((c for c in section.codecs if c.is_rtx and c.apt == codec.pt), None)
        return None if found is None else sdp.rtx_codec(found.pt, codec.pt, found.clock_rate)

    def _choose_codec(self, section: sdp.MediaSection) -> Codec | None:
        wanted = SUPPORTED.get(section.kind, ())
        for codec in section.codecs:
            name = codec.name.lower()
            if name not in wanted:
                continue
            if name == "h264" and sdp._fmtp_value(codec.fmtp, "packetization-mode") != "1":
                continue
            feedback = VIDEO_FEEDBACK if section.kind == "video" else AUDIO_FEEDBACK
            if self.features.publisher_transport_cc:
                feedback = (*feedback, TRANSPORT_CC_FEEDBACK)
            offered = set(codec.feedback)
            return Codec(
                codec.pt,
                codec.name,
                codec.clock_rate,
                codec.channels,
                codec.fmtp,
                tuple(f for f in feedback if f in offered),
            )
        return None

    def _client_line(self, line: Line, section: sdp.MediaSection) -> ProducerSpec:
        sending = section.direction in ("sendrecv", "sendonly")
        line.media.direction = "recvonly" if sending else "inactive"
        rids = _simulcast_rids(section)
        if rids and rids != line.rids:
            raise NegotiationError(
                f"m-section {line.media.mid!r}: simulcast layers cannot change "
                f"({list(line.rids)} -> {list(rids)})"
            )
        # The answer echoes simulcast only when this offer has it (a re-offer may omit it, e.g.
        # for a stopped sender); the producer keeps its layers either way.
        line.media.recv_rids = list(rids)
        codec = line.media.codecs[0]
        rtx = next((c for c in line.media.codecs[1:] if c.is_rtx), None)
        rtx_pts = ((rtx.pt, codec.pt),) if rtx is not None else ()
        ssrcs = tuple(section.ssrcs)
        layers: tuple[Layer, ...] = ()
        if line.rids:
            layers = tuple(Layer(rid) for rid in line.rids)
            ssrcs = ()  # rid-based: SSRCs are learnt from the rid extension, not from the SDP
        elif section.kind == "video" and len(section.sim) > 1:
            # ssrc-group:SIM (libwebrtc writes it lowest first); layers are named by their index.
            sim = section.sim[:MAX_LAYERS]
            layers = tuple(Layer(str(i), ssrc, section.fid.get(ssrc, 0)) for i, ssrc in enumerate(sim))
            ssrcs = tuple(sim)
        elif section.kind == "video" and rtx is not None and ssrcs and ssrcs[0] in section.fid:
            layers = (Layer("", ssrcs[0], section.fid[ssrcs[0]]),)
        if rtx is None:
            layers = tuple(Layer(layer.rid, layer.ssrc, 0) for layer in layers)
        return ProducerSpec(
            mid=line.media.mid,
            kind=line.media.kind,
            codec=codec,
            ssrcs=ssrcs,
            extensions=dict(line.media.extensions),
            sending=sending,
            layers=layers,
            rtx_payload_types=rtx_pts,
        )

    # --- SFU offers ---------------------------------------------------------------------------------
    def create_offer(self, consumers: list[ConsumerSpec]) -> str | None:
        """An offer whose SFU-owned m-sections carry exactly `consumers`, or None if nothing changes
        (or an offer is already pending: call again after the answer)."""
        if self.state is not State.STABLE:
            return None
        lines = [Line(media=_copy(ln.media), owner=ln.owner, consumer_id=ln.consumer_id) for ln in self.lines]
        wanted = {c.consumer_id: c for c in consumers}
        changed = False
        for line in lines:
            if line.owner != "sfu" or line.consumer_id is None:
                continue
            if line.consumer_id not in wanted:
                line.consumer_id = None
                line.media.direction = "inactive"
                line.media.ssrc = line.media.rtx_ssrc = None
                line.media.stream_id = line.media.track_id = None
                changed = True
        present = {ln.consumer_id for ln in lines if ln.consumer_id}
        for spec in consumers:
            if spec.consumer_id in present:
                continue
            changed = True
            free = next(
                (
                    ln
                    for ln in lines
                    if ln.owner == "sfu"
                    and ln.consumer_id is None
                    and ln.media.kind == spec.kind
                    and not ln.media.rejected
                ),
                None,
            )
            feedback = VIDEO_FEEDBACK if spec.kind == "video" else AUDIO_FEEDBACK
            if self.features.transport_cc:
                feedback = (*feedback, TRANSPORT_CC_FEEDBACK)
            codec = Codec(
                self._pt_for(spec.codec),
                spec.codec.name,
                spec.codec.clock_rate,
                spec.codec.channels,
                spec.codec.fmtp,
                feedback,
            )
            codecs = [codec]
            with_rtx = self.features.rtx and spec.kind == "video" and spec.rtx_ssrc != 0
            if with_rtx:
                codecs.append(sdp.rtx_codec(self._pt_for(sdp.rtx_codec(0, codec.pt)), codec.pt))
            if free is None:
                mid = self._new_mid()
                free = Line(
                    media=LocalMedia(
                        kind=spec.kind,
                        mid=mid,
                        direction="sendonly",
                        codecs=codecs,
                        extensions=self._ext_ids(spec.kind),
                    ),
                    owner="sfu",
                )
                lines.append(free)
            free.consumer_id = spec.consumer_id
            free.media.direction = "sendonly"
            free.media.codecs = codecs
            free.media.rtx_ssrc = spec.rtx_ssrc if with_rtx else None
            # A reused m-section gets the new consumer's SSRC: Chromium does not accept an SSRC it has
            # seen re-signalled under another msid (aiortc clients must re-bind SSRCs; voxa.client does).
            free.media.ssrc = spec.ssrc
            free.media.cname = spec.cname
            free.media.stream_id = spec.stream_id
            free.media.track_id = spec.track_id
        if not changed:
            return None
        self._pending = lines
        self.state = State.HAVE_LOCAL_OFFER
        self.transport_setup_for_offer()
        return sdp.render(
            "offer", self.session_id, next(self._version), self._offer_transport(), [ln.media for ln in lines]
        )

    def transport_setup_for_offer(self) -> None:
        """Re-offers keep the DTLS role already established (RFC 8842 5.5)."""

    def _offer_transport(self) -> LocalTransport:
        return self.transport  # our role (active) is written as is

    def _new_mid(self) -> str:
        used = {ln.media.mid for ln in self.lines} | {ln.media.mid for ln in (self._pending or [])}
        while True:
            mid = f"c{next(self._mids)}"
            if mid not in used:
                return mid

    def on_answer(self, text: str) -> AnswerResult:
        if self.state is not State.HAVE_LOCAL_OFFER or self._pending is None:
            raise NegotiationError("no offer of ours is waiting for an answer")
        remote = sdp.parse(text, "answer")
        pending = self._pending
        if [m.mid for m in remote.media] != [ln.media.mid for ln in pending]:
            raise NegotiationError("the answer's m-sections do not match our offer")
        self._check_ice(remote)
        self._remember_ext_ids(remote)
        accepted: dict[str, str] = {}
        details: dict[str, ConsumerAnswer] = {}
        rejected: list[str] = []
        for line, section in zip(pending, remote.media, strict=True):
            if line.owner != "sfu" or line.consumer_id is None:
                continue
            if section.port == 0 or section.direction not in ("recvonly", "sendrecv"):
                rejected.append(line.consumer_id)
                line.consumer_id = None
                line.media.direction = "inactive"
            else:
                accepted[line.consumer_id] = line.media.mid
                details[line.consumer_id] = _accepted(line.media, section)
        self.lines = pending
        self._pending = None
        self.state = State.STABLE
        return AnswerResult(consumers=accepted, rejected=rejected, accepted=details)

    def rollback(self) -> None:
        """Forget our unanswered offer (the peer is going away, or the offer timed out)."""
        self._pending = None
        if self.state is State.HAVE_LOCAL_OFFER:
            self.state = State.STABLE

    def consumer_line(self, consumer_id: str) -> LocalMedia | None:
        return next((ln.media for ln in self.lines if ln.consumer_id == consumer_id), None)


def _simulcast_rids(section: sdp.MediaSection) -> tuple[str, ...]:
    """The layers a client section sends as simulcast, lowest first, at most MAX_LAYERS."""
    if section.kind != "video" or section.simulcast is None:
        return ()
    rids = tuple(stream.rid for stream in section.simulcast.send)[:MAX_LAYERS]
    return rids if len(rids) > 1 else ()  # one rid is not simulcast: a plain single stream


def _accepted(offered: LocalMedia, answer: sdp.MediaSection) -> ConsumerAnswer:
    """What a subscriber's answer kept of the SFU's offered section: RTX if it lists the RTX format
    for the codec, and the extensions it lists under the same ids (RFC 8285: only those may be sent)."""
    codec = offered.codecs[0]
    rtx = next((c for c in offered.codecs[1:] if c.is_rtx), None)
    rtx_pt = None
    if rtx is not None and any(c.is_rtx and c.pt == rtx.pt and c.apt == codec.pt for c in answer.codecs):
        rtx_pt = rtx.pt
    kept = {uri: i for uri, i in offered.extensions.items() if answer.extensions.get(uri) == i}
    return ConsumerAnswer(offered.mid, codec.pt, rtx_pt, kept)


def _copy(media: LocalMedia) -> LocalMedia:
    return LocalMedia(
        kind=media.kind,
        mid=media.mid,
        direction=media.direction,
        codecs=list(media.codecs),
        extensions=dict(media.extensions),
        rejected=media.rejected,
        ssrc=media.ssrc,
        rtx_ssrc=media.rtx_ssrc,
        recv_rids=list(media.recv_rids),
        cname=media.cname,
        stream_id=media.stream_id,
        track_id=media.track_id,
        proto=media.proto,
    )
