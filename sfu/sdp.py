"""SDP for an SFU peer, pure: parse what clients offer or answer, render what the SFU offers or answers.

The SFU renders every SDP itself from per-peer state (sfu/negotiation.py) instead of asking a
generic WebRTC stack: an m-section keeps its mid, payload types and header-extension ids for the
whole session. Browsers require that (Chromium refuses a re-offer that renumbers extensions), and it
is what lets the SFU re-offer at any time without disturbing running tracks.

Simulcast is read in both of its SDP forms: RFC 8853 (`a=rid` + `a=simulcast`, what browsers write
today, layers told apart by the RFC 8852 rtp-stream-id header extension, usually with no `a=ssrc`
at all) and the older `a=ssrc-group:SIM` (layers by SSRC, lowest first as libwebrtc writes them).
RTX (RFC 4588) is read from `rtx` rtpmaps with their `apt` and from `a=ssrc-group:FID`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
TRANSPORT_CC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
SUPPORTED_EXTENSIONS = {
    "audio": (MID_URI, AUDIO_LEVEL_URI, ABS_SEND_TIME_URI),
    "video": (MID_URI, ABS_SEND_TIME_URI),
}
"""What the SFU accepts on a client's (publishing) m-section, without simulcast; see negotiation.py
for the rid extensions (simulcast sections) and transport-cc (the SFU's own sections)."""
MAX_SDP_BYTES = 64 * 1024
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`{|}~]{1,64}$")
_RID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")  # RFC 8851 rid-id, at most 16 bytes as RFC 8852 carries it
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class SdpError(ValueError):
    """The SDP cannot be used; the message says why, for the client."""


@dataclass(frozen=True, slots=True)
class Codec:
    """A codec as negotiated in one session: payload type, name, clock rate, channels, fmtp, feedback."""

    pt: int
    name: str
    clock_rate: int
    channels: int = 1
    fmtp: str = ""
    feedback: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Identity used for payload-type bookkeeping (H264 profiles are distinct codecs)."""
        base = f"{self.name.lower()}/{self.clock_rate}/{self.channels}"
        if self.name.lower() == "h264":
            profile = _fmtp_value(self.fmtp, "profile-level-id") or ""
            mode = _fmtp_value(self.fmtp, "packetization-mode") or "0"
            return f"{base};{profile.lower()};{mode}"
        if self.name.lower() == "rtx":
            return f"{base};apt={_fmtp_value(self.fmtp, 'apt')}"
        return base

    @property
    def is_rtx(self) -> bool:
        return self.name.lower() == "rtx"

    @property
    def apt(self) -> int | None:
        """The payload type an RTX codec repairs (RFC 4588 `apt`), None for other codecs."""
        if not self.is_rtx:
            return None
        value = _fmtp_value(self.fmtp, "apt")
        return int(value) if value is not None and value.isdigit() else None


def rtx_codec(pt: int, apt: int, clock_rate: int = 90000) -> Codec:
    return Codec(pt, "rtx", clock_rate, 1, f"apt={apt}")


@dataclass(frozen=True, slots=True)
class Rid:
    """One `a=rid:<id> <send|recv> [params]` line (RFC 8851); params are kept as written."""

    id: str
    direction: str
    params: str = ""
    payload_types: tuple[int, ...] = ()  # the `pt=` restriction; empty = every format of the section


def _rid_payload_types(params: str) -> tuple[int, ...]:
    for part in params.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "pt":
            return tuple(int(v) for v in value.split(","))
    return ()


@dataclass(frozen=True, slots=True)
class SimulcastStream:
    """One stream of an `a=simulcast` list: its first `,` alternative; `paused` if it starts paused (`~`)."""

    rid: str
    paused: bool = False


@dataclass(frozen=True, slots=True)
class Simulcast:
    send: tuple[SimulcastStream, ...] = ()
    recv: tuple[SimulcastStream, ...] = ()


def parse_simulcast(value: str) -> Simulcast:
    """`send q;h;f`, `recv a,b;c`, `send ~q;h recv x` (RFC 8853 §5.1).

    Alternatives (`,`) name the same stream in formats the receiver may choose among; the SFU takes
    the first of each, which is what the sender sends unless told otherwise. A leading `~` marks a
    stream that starts paused: it is still a layer (it may be resumed), so it is kept, flagged.
    """
    parts = value.split()
    if not parts or len(parts) % 2:
        raise SdpError("a=simulcast must be '<send|recv> <streams>' pairs")
    found: dict[str, tuple[SimulcastStream, ...]] = {}
    for direction, streams in zip(parts[::2], parts[1::2], strict=True):
        if direction not in ("send", "recv") or direction in found:
            raise SdpError(f"a=simulcast: bad or repeated direction {direction!r}")
        out: list[SimulcastStream] = []
        for stream in streams.split(";"):
            first = stream.split(",")[0]
            paused = first.startswith("~")
            rid = first.removeprefix("~")
            if not _RID.match(rid):
                raise SdpError(f"a=simulcast: invalid rid {rid!r}")
            if any(s.rid == rid for s in out):
                raise SdpError(f"a=simulcast: rid {rid!r} listed twice")
            out.append(SimulcastStream(rid, paused))
        found[direction] = tuple(out)
    return Simulcast(send=found.get("send", ()), recv=found.get("recv", ()))


def _fmtp_value(fmtp: str, name: str) -> str | None:
    for part in fmtp.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return None


@dataclass(slots=True)
class MediaSection:
    """One m-section as a remote party wrote it."""

    kind: str
    port: int
    proto: str
    mid: str
    direction: str
    codecs: list[Codec] = field(default_factory=list)
    extensions: dict[str, int] = field(default_factory=dict)  # uri -> id
    ssrcs: list[int] = field(default_factory=list)  # primary SSRCs (RTX/FEC repair SSRCs left out)
    fid: dict[int, int] = field(default_factory=dict)  # primary SSRC -> its RTX SSRC (ssrc-group:FID)
    sim: list[int] = field(default_factory=list)  # ssrc-group:SIM, lowest layer first
    rids: list[Rid] = field(default_factory=list)
    simulcast: Simulcast | None = None
    cname: str | None = None
    msid: str | None = None
    rtcp_mux: bool = False
    candidates: list[str] = field(default_factory=list)
    end_of_candidates: bool = False


def _check_simulcast(section: MediaSection, formats: list[int]) -> None:
    """Every rid a simulcast list names is declared with that direction and allows an offered format."""
    for rid in section.rids:
        unknown = [pt for pt in rid.payload_types if pt not in formats]
        if unknown:
            raise SdpError(
                f"m-section {section.mid!r}: rid {rid.id!r} names unknown payload type {unknown[0]}"
            )
    simulcast = section.simulcast
    if simulcast is None:
        return
    if section.kind != "video":
        raise SdpError(f"m-section {section.mid!r}: simulcast is for video only")
    for direction, streams in (("send", simulcast.send), ("recv", simulcast.recv)):
        declared = {r.id for r in section.rids if r.direction == direction}
        for stream in streams:
            if stream.rid not in declared:
                raise SdpError(
                    f"m-section {section.mid!r}: a=simulcast names rid {stream.rid!r} "
                    f"with no a=rid:{stream.rid} {direction}"
                )


@dataclass(slots=True)
class RemoteDescription:
    type: str
    ice_ufrag: str
    ice_pwd: str
    ice_lite: bool
    fingerprints: list[tuple[str, str]]
    setup: str
    bundle: list[str]
    media: list[MediaSection]

    def section(self, mid: str) -> MediaSection | None:
        return next((m for m in self.media if m.mid == mid), None)


def parse(sdp: str, sdp_type: str) -> RemoteDescription:
    """Parse an offer or answer; raise SdpError naming the first problem."""
    if sdp_type not in ("offer", "answer"):
        raise SdpError("type must be 'offer' or 'answer'")
    if not isinstance(sdp, str) or not sdp.strip():
        raise SdpError("empty SDP")
    if len(sdp) > MAX_SDP_BYTES:
        raise SdpError(f"SDP larger than {MAX_SDP_BYTES} bytes")
    lines = [line.rstrip("\r") for line in sdp.split("\n") if line.strip()]
    if not lines or lines[0] != "v=0":
        raise SdpError("SDP must start with v=0")
    session: dict[str, str] = {}
    fingerprints: list[tuple[str, str]] = []
    bundle: list[str] = []
    media: list[MediaSection] = []
    media_attrs: list[dict[str, str]] = []
    current: MediaSection | None = None
    rtpmap: dict[int, tuple[str, int, int]] = {}
    fmtps: dict[int, str] = {}
    feedback: dict[int, list[str]] = {}
    repair: set[int] = set()
    ssrc_order: list[int] = []

    def finish() -> None:
        if current is None:
            return
        for pt in current_formats:
            if pt in rtpmap:
                name, clock, channels = rtpmap[pt]
                current.codecs.append(
                    Codec(
                        pt,
                        name,
                        clock,
                        channels,
                        fmtps.get(pt, ""),
                        tuple(feedback.get(pt, [])) + tuple(feedback.get(-1, [])),
                    )
                )
        current.ssrcs = [s for s in dict.fromkeys(ssrc_order) if s not in repair]
        if not current.mid:
            raise SdpError(f"m-section {len(media)} has no a=mid")
        _check_simulcast(current, current_formats)

    current_formats: list[int] = []
    for number, line in enumerate(lines, 1):
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"line {number} is not <type>=<value>")
        kind, value = line[0], line[2:]
        if kind == "m":
            finish()
            parts = value.split()
            if len(parts) < 3:
                raise SdpError(f"line {number}: malformed m= line")
            try:
                port = int(parts[1].split("/")[0])
            except ValueError:
                raise SdpError(f"line {number}: bad port in m= line") from None
            current = MediaSection(kind=parts[0], port=port, proto=parts[2], mid="", direction="sendrecv")
            media.append(current)
            media_attrs.append({})
            rtpmap, fmtps, feedback, repair, ssrc_order = {}, {}, {}, set(), []
            current_formats = []
            if parts[0] in ("audio", "video"):
                try:
                    current_formats = [int(p) for p in parts[3:]]
                except ValueError:
                    raise SdpError(f"line {number}: payload types must be numbers") from None
                if any(not 0 <= pt <= 127 for pt in current_formats):
                    raise SdpError(f"line {number}: payload type out of range")
            continue
        if kind != "a":
            continue
        name, _, rest = value.partition(":")
        target = media_attrs[-1] if current is not None else session
        try:
            if name == "fingerprint":
                algorithm, _, digest = rest.partition(" ")
                fingerprints.append((algorithm.lower(), digest.strip().upper()))
            elif name == "group" and rest.startswith("BUNDLE"):
                bundle = rest.split()[1:]
            elif current is None:
                target[name] = rest
            elif name == "mid":
                if not _TOKEN.match(rest):
                    raise SdpError(f"line {number}: invalid mid")
                current.mid = rest
            elif name in DIRECTIONS:
                current.direction = name
            elif name == "rtcp-mux":
                current.rtcp_mux = True
            elif name == "rtpmap":
                pt_text, _, encoding = rest.partition(" ")
                codec_parts = encoding.split("/")
                rtpmap[int(pt_text)] = (
                    codec_parts[0],
                    int(codec_parts[1]),
                    int(codec_parts[2]) if len(codec_parts) > 2 else 1,
                )
            elif name == "fmtp":
                pt_text, _, params = rest.partition(" ")
                fmtps[int(pt_text)] = params.strip()
            elif name == "rtcp-fb":
                pt_text, _, fb = rest.partition(" ")
                feedback.setdefault(-1 if pt_text == "*" else int(pt_text), []).append(fb.strip())
            elif name == "extmap":
                ident, _, uri = rest.partition(" ")
                ext_id = int(ident.split("/")[0])
                if not 1 <= ext_id <= 255:
                    raise SdpError(f"line {number}: extension id out of range")
                current.extensions[uri.split()[0]] = ext_id
            elif name == "ssrc":
                ssrc_text, _, attr = rest.partition(" ")
                ssrc = int(ssrc_text)
                if not 0 <= ssrc < 2**32:
                    raise SdpError(f"line {number}: ssrc out of range")
                ssrc_order.append(ssrc)
                if attr.startswith("cname:"):
                    current.cname = attr[6:]
            elif name == "ssrc-group":
                semantics, *members = rest.split()
                ssrc_members = [int(m) for m in members]
                if any(not 0 <= m < 2**32 for m in ssrc_members):
                    raise SdpError(f"line {number}: ssrc out of range")
                if semantics in ("FID", "FEC-FR") and len(members) > 1:
                    repair.update(ssrc_members[1:])
                if semantics == "FID" and len(members) == 2:
                    current.fid[ssrc_members[0]] = ssrc_members[1]
                elif semantics == "SIM":
                    current.sim = ssrc_members
            elif name == "rid":
                rid_id, _, tail = rest.partition(" ")
                direction, _, params = tail.strip().partition(" ")
                if not _RID.match(rid_id):
                    raise SdpError(f"line {number}: invalid rid {rid_id!r}")
                if direction not in ("send", "recv"):
                    raise SdpError(f"line {number}: a=rid direction must be send or recv")
                if any(r.id == rid_id and r.direction == direction for r in current.rids):
                    raise SdpError(f"line {number}: rid {rid_id!r} declared twice")
                params = params.strip()
                current.rids.append(Rid(rid_id, direction, params, _rid_payload_types(params)))
            elif name == "simulcast":
                if current.simulcast is not None:
                    raise SdpError(f"line {number}: a=simulcast appears twice in one m-section")
                current.simulcast = parse_simulcast(rest)
            elif name == "msid":
                current.msid = rest
            elif name == "candidate":
                current.candidates.append(rest)
            elif name == "end-of-candidates":
                current.end_of_candidates = True
            else:
                target[name] = rest
        except (ValueError, IndexError) as exc:
            if isinstance(exc, SdpError):
                raise
            raise SdpError(f"line {number}: malformed a={name}") from None
    finish()
    if not media:
        raise SdpError("SDP has no m-sections")
    # Transport attributes come from the first m-section that has them: a rejected section (port 0,
    # as the SFU renders one and a browser answers it) may carry none.
    first = next((attrs for attrs in media_attrs if "ice-ufrag" in attrs), media_attrs[0])
    ufrag = first.get("ice-ufrag") or session.get("ice-ufrag")
    pwd = first.get("ice-pwd") or session.get("ice-pwd")
    setup = first.get("setup") or session.get("setup") or ""
    if not ufrag or not pwd:
        raise SdpError("SDP lacks a=ice-ufrag/a=ice-pwd")
    if not fingerprints:
        raise SdpError("SDP lacks a=fingerprint (DTLS is required)")
    if setup not in ("actpass", "active", "passive"):
        raise SdpError("SDP lacks a valid a=setup")
    mids = [m.mid for m in media]
    if len(set(mids)) != len(mids):
        raise SdpError("duplicate mid")
    return RemoteDescription(
        type=sdp_type,
        ice_ufrag=ufrag,
        ice_pwd=pwd,
        ice_lite="ice-lite" in session,
        fingerprints=fingerprints,
        setup=setup,
        bundle=bundle,
        media=media,
    )


@dataclass(slots=True)
class LocalMedia:
    """One m-section as the SFU writes it."""

    kind: str
    mid: str
    direction: str  # from the SFU's point of view
    codecs: list[Codec]
    extensions: dict[str, int]
    rejected: bool = False
    ssrc: int | None = None  # what the SFU sends on this section
    rtx_ssrc: int | None = None  # its RTX stream (ssrc-group:FID), when RTX is offered
    recv_rids: list[str] = field(default_factory=list)  # simulcast layers the SFU receives, in order
    cname: str | None = None
    stream_id: str | None = None
    track_id: str | None = None
    proto: str = "UDP/TLS/RTP/SAVPF"


@dataclass(frozen=True, slots=True)
class LocalTransport:
    ice_ufrag: str
    ice_pwd: str
    fingerprint: tuple[str, str]  # (algorithm, digest)
    setup: str
    candidates: tuple[str, ...]  # a=candidate values
    address: str
    port: int
    ice_lite: bool = False
    """The SFU answers checks only (RFC 8445 §2.5): the native data plane's shared port."""


def render(
    sdp_type: str, session_id: int, version: int, transport: LocalTransport, media: list[LocalMedia]
) -> str:
    """Render a complete offer or answer: every m-section repeats the one transport (BUNDLE), its
    candidates and end-of-candidates, which every browser and aiortc accept."""
    bundled = [m.mid for m in media if not m.rejected]
    out = [
        "v=0",
        f"o=- {session_id} {version} IN IP4 0.0.0.0",
        "s=voxa",
        "t=0 0",
    ]
    if bundled:
        out.append("a=group:BUNDLE " + " ".join(bundled))
    out.append("a=msid-semantic: WMS *")
    if transport.ice_lite:
        out.append("a=ice-lite")
    out.append("a=ice-options:trickle")
    for m in media:
        formats = " ".join(str(c.pt) for c in m.codecs) or ("0" if m.kind == "audio" else "96")
        if m.rejected:
            out += [f"m={m.kind} 0 {m.proto} {formats}", "c=IN IP4 0.0.0.0", f"a=mid:{m.mid}", "a=inactive"]
            continue
        out += [
            f"m={m.kind} {transport.port} {m.proto} {formats}",
            f"c=IN IP4 {transport.address}",
            "a=rtcp:9 IN IP4 0.0.0.0",
            f"a=ice-ufrag:{transport.ice_ufrag}",
            f"a=ice-pwd:{transport.ice_pwd}",
            f"a=fingerprint:{transport.fingerprint[0]} {transport.fingerprint[1]}",
            f"a=setup:{transport.setup}",
            f"a=mid:{m.mid}",
        ]
        for uri, ext_id in sorted(m.extensions.items(), key=lambda item: item[1]):
            out.append(f"a=extmap:{ext_id} {uri}")
        out.append(f"a={m.direction}")
        if m.stream_id and m.direction in ("sendonly", "sendrecv"):
            out.append(f"a=msid:{m.stream_id} {m.track_id or m.mid}")
        out += ["a=rtcp-mux", "a=rtcp-rsize"]
        if m.recv_rids and m.direction in ("recvonly", "sendrecv"):
            out.extend(f"a=rid:{rid} recv" for rid in m.recv_rids)
            out.append("a=simulcast:recv " + ";".join(m.recv_rids))
        for c in m.codecs:
            channels = f"/{c.channels}" if m.kind == "audio" and c.channels > 1 else ""
            out.append(f"a=rtpmap:{c.pt} {c.name}/{c.clock_rate}{channels}")
            out.extend(f"a=rtcp-fb:{c.pt} {fb}" for fb in c.feedback)
            if c.fmtp:
                out.append(f"a=fmtp:{c.pt} {c.fmtp}")
        if m.ssrc is not None and m.direction in ("sendonly", "sendrecv"):
            ssrcs = [m.ssrc] if m.rtx_ssrc is None else [m.ssrc, m.rtx_ssrc]
            if m.rtx_ssrc is not None:
                out.append(f"a=ssrc-group:FID {m.ssrc} {m.rtx_ssrc}")
            for ssrc in ssrcs:
                out.append(f"a=ssrc:{ssrc} cname:{m.cname or 'voxa'}")
                if m.stream_id:
                    out.append(f"a=ssrc:{ssrc} msid:{m.stream_id} {m.track_id or m.mid}")
        out.extend(f"a=candidate:{c}" for c in transport.candidates)
        out.append("a=end-of-candidates")
    return "\r\n".join(out) + "\r\n"
