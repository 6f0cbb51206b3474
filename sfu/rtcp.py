"""RTCP for a forwarding SFU: parse/build the packets it acts on, receiver statistics, NACK history.

Parsing covers what an SFU answers or forwards (RFC 3550 SR/RR/BYE, RFC 4585 generic NACK and PLI,
RFC 5104 FIR, draft-alvestrand-rmcat-remb REMB) and skips the rest (SDES, APP, XR, other feedback).
RTCP arrives far less often than RTP but still per participant per second, so results are NamedTuples
and every length is checked up front: garbled input raises ValueError with a reason, never IndexError
or struct.error, because it comes straight off the network.

`ReceiverStats` (RFC 3550 A.1, A.3, A.8) feeds the reports the SFU sends its producers, `PacketHistory`
answers consumers' NACKs from what was sent, and `KeyframeRequestThrottle` keeps many consumers'
PLI/FIRs from turning into a keyframe storm on one producer.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

__all__ = [
    "Bye",
    "Fir",
    "KeyframeRequestThrottle",
    "Nack",
    "PacketHistory",
    "Pli",
    "ReceiverReport",
    "ReceiverStats",
    "Remb",
    "ReportBlock",
    "RtcpPacket",
    "SenderReport",
    "build_bye",
    "build_fir",
    "build_nack",
    "build_pli",
    "build_remb",
    "build_report_block",
    "build_rr",
    "build_sr",
    "is_rtcp",
    "ntp_timestamp",
    "parse_rtcp",
]

SR = 200
RR = 201
SDES = 202
BYE = 203
APP = 204
RTPFB = 205
PSFB = 206

NACK_FMT = 1  # RTPFB generic NACK, RFC 4585 §6.2.1
PLI_FMT = 1  # PSFB picture loss indication, RFC 4585 §6.3.1
FIR_FMT = 4  # PSFB full intra request, RFC 5104 §4.3.1
AFB_FMT = 15  # PSFB application layer feedback (REMB), RFC 4585 §6.4

NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01

_I = struct.Struct("!I")
_II = struct.Struct("!II")
_HEAD = struct.Struct("!BBH")
_SENDER_INFO = struct.Struct("!IQIII")  # ssrc, NTP, RTP ts, packets, octets
_BLOCK = struct.Struct("!IIIIII")  # ssrc, fraction<<24|cumulative, ext seq, jitter, lsr, dlsr
_FB = struct.Struct("!BBHII")  # header + sender ssrc + media ssrc
_HH = struct.Struct("!HH")

_LOST_MIN = -(1 << 23)
_LOST_MAX = (1 << 23) - 1


class ReportBlock(NamedTuple):
    """RFC 3550 §6.4.1 reception report block; cumulative_lost is signed (duplicates can make it < 0)."""

    ssrc: int
    fraction_lost: int  # 8-bit fixed point, lost/expected * 256 since the previous report
    cumulative_lost: int
    ext_highest_seq: int
    jitter: int  # RTP timestamp units
    lsr: int  # middle 32 bits of the last SR's NTP time, 0 if none
    dlsr: int  # delay since that SR, 1/65536 s


class SenderReport(NamedTuple):
    ssrc: int
    ntp_ts: int  # 64-bit NTP timestamp (32.32 fixed point seconds since 1900)
    rtp_ts: int
    packets: int
    octets: int
    reports: tuple[ReportBlock, ...]


class ReceiverReport(NamedTuple):
    ssrc: int
    reports: tuple[ReportBlock, ...]


class Bye(NamedTuple):
    ssrcs: tuple[int, ...]
    reason: bytes


class Nack(NamedTuple):
    sender_ssrc: int
    media_ssrc: int
    lost: tuple[int, ...]  # sequence numbers, in packet order


class Pli(NamedTuple):
    sender_ssrc: int
    media_ssrc: int


class Fir(NamedTuple):
    sender_ssrc: int
    entries: tuple[tuple[int, int], ...]  # (media ssrc, command sequence number)


class Remb(NamedTuple):
    sender_ssrc: int
    bitrate: int  # bits per second
    ssrcs: tuple[int, ...]


RtcpPacket = SenderReport | ReceiverReport | Bye | Nack | Pli | Fir | Remb


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 §4 / RFC 7983 demultiplexing on a muxed port: RTCP when the 2nd byte is 192-223."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def ntp_timestamp(unix_seconds: float) -> int:
    """64-bit NTP timestamp (for `build_sr`) of a Unix time in seconds."""
    return int((unix_seconds + NTP_UNIX_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


# -- parsing ------------------------------------------------------------------------------------------


def _report_blocks(data: bytes, pos: int, count: int) -> tuple[ReportBlock, ...]:
    blocks = []
    for _ in range(count):
        ssrc, word, ext_seq, jitter, lsr, dlsr = _BLOCK.unpack_from(data, pos)
        lost = word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        blocks.append(ReportBlock(ssrc, word >> 24, lost, ext_seq, jitter, lsr, dlsr))
        pos += 24
    return tuple(blocks)


def _parse_nack(data: bytes, pos: int, end: int, sender: int, media: int) -> Nack:
    if (end - pos) % 4:
        raise ValueError("NACK FCI is not a whole number of PID/BLP pairs")
    lost: list[int] = []
    while pos < end:
        pid, blp = _HH.unpack_from(data, pos)
        lost.append(pid)
        bit = 0
        while blp:
            if blp & 1:
                lost.append((pid + bit + 1) & 0xFFFF)
            blp >>= 1
            bit += 1
        pos += 4
    return Nack(sender, media, tuple(lost))


def _parse_psfb(data: bytes, fmt: int, pos: int, end: int, sender: int, media: int) -> RtcpPacket | None:
    if fmt == PLI_FMT:
        return Pli(sender, media)
    if fmt == FIR_FMT:
        if (end - pos) % 8:
            raise ValueError("FIR FCI is not a whole number of 8-byte entries")
        entries = []
        while pos < end:
            ssrc, word = _II.unpack_from(data, pos)
            entries.append((ssrc, word >> 24))
            pos += 8
        return Fir(sender, tuple(entries))
    if fmt == AFB_FMT and end - pos >= 4 and data[pos : pos + 4] == b"REMB":
        if end - pos < 8:
            raise ValueError("REMB shorter than its bitrate field")
        (word,) = _I.unpack_from(data, pos + 4)
        count = word >> 24
        exp = (word >> 18) & 0x3F
        mantissa = word & 0x3FFFF
        if pos + 8 + 4 * count > end:
            raise ValueError("REMB SSRC list runs past the packet")
        ssrcs = struct.unpack_from(f"!{count}I", data, pos + 8)
        return Remb(sender, mantissa << exp, ssrcs)
    return None  # SLI, RPSI, other application feedback: not used by the SFU


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """The packets of a (plaintext) compound RTCP packet that the SFU uses, in order.

    SDES, APP, XR and unused feedback types are skipped; a packet's padding (P bit) is honoured.
    Raises ValueError on anything malformed: bad version, lengths running past the data, counts
    that do not fit their packet.
    """
    out: list[RtcpPacket] = []
    n = len(data)
    if n < 4:
        raise ValueError("RTCP shorter than its 4-byte header")
    pos = 0
    while pos < n:
        if pos + 4 > n:
            raise ValueError(f"trailing {n - pos} bytes after the last RTCP packet")
        b0, pt, words = _HEAD.unpack_from(data, pos)
        if b0 >> 6 != 2:
            raise ValueError(f"RTCP version {b0 >> 6}, not 2")
        end = pos + 4 + 4 * words
        if end > n:
            raise ValueError(f"RTCP packet type {pt} runs past the end ({end} > {n})")
        body_end = end
        if b0 & 0x20:
            pad = data[end - 1]
            if pad == 0 or pad > 4 * words:
                raise ValueError("bad RTCP padding count")
            body_end -= pad
        count = b0 & 0x1F
        start = pos + 4
        pos = end
        size = body_end - start
        if pt == SR:
            if size < 24 + 24 * count:
                raise ValueError("SR shorter than its sender info and report blocks")
            ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(data, start)
            out.append(
                SenderReport(ssrc, ntp, rtp_ts, packets, octets, _report_blocks(data, start + 24, count))
            )
        elif pt == RR:
            if size < 4 + 24 * count:
                raise ValueError("RR shorter than its report blocks")
            (ssrc,) = _I.unpack_from(data, start)
            out.append(ReceiverReport(ssrc, _report_blocks(data, start + 4, count)))
        elif pt == BYE:
            if size < 4 * count:
                raise ValueError("BYE shorter than its SSRC list")
            ssrcs = struct.unpack_from(f"!{count}I", data, start)
            reason = b""
            rpos = start + 4 * count
            if rpos < body_end:
                rlen = data[rpos]
                if rpos + 1 + rlen > body_end:
                    raise ValueError("BYE reason runs past the packet")
                reason = data[rpos + 1 : rpos + 1 + rlen]
            out.append(Bye(ssrcs, reason))
        elif pt in (RTPFB, PSFB):
            if size < 8:
                raise ValueError("feedback packet shorter than its two SSRCs")
            sender, media = _II.unpack_from(data, start)
            if pt == RTPFB:
                if count == NACK_FMT:
                    out.append(_parse_nack(data, start + 8, body_end, sender, media))
            else:
                packet = _parse_psfb(data, count, start + 8, body_end, sender, media)
                if packet is not None:
                    out.append(packet)
        # SDES, APP, XR and unknown types: skipped
    return out


# -- building -----------------------------------------------------------------------------------------


def _header(pt: int, count: int, body_len: int) -> bytes:
    return _HEAD.pack(0x80 | count, pt, body_len // 4)


def build_report_block(
    ssrc: int,
    fraction_lost: int,
    cumulative_lost: int,
    ext_highest_seq: int,
    jitter: int,
    lsr: int,
    dlsr: int,
) -> bytes:
    """One 24-byte report block; cumulative_lost is clamped to the signed 24-bit field."""
    lost = min(max(cumulative_lost, _LOST_MIN), _LOST_MAX) & 0xFFFFFF
    return _BLOCK.pack(
        ssrc,
        (min(max(fraction_lost, 0), 255) << 24) | lost,
        ext_highest_seq & 0xFFFFFFFF,
        min(max(jitter, 0), 0xFFFFFFFF),
        lsr & 0xFFFFFFFF,
        dlsr & 0xFFFFFFFF,
    )


def _blocks(reports: Sequence[ReportBlock]) -> bytes:
    if len(reports) > 31:
        raise ValueError("at most 31 report blocks fit one SR/RR")
    return b"".join(build_report_block(*r) for r in reports)


def build_sr(
    ssrc: int, ntp_ts: int, rtp_ts: int, packets: int, octets: int, reports: Sequence[ReportBlock] = ()
) -> bytes:
    """Sender report (RFC 3550 §6.4.1); `ntp_ts` is the 64-bit NTP time (see `ntp_timestamp`)."""
    body = _SENDER_INFO.pack(
        ssrc,
        ntp_ts & 0xFFFFFFFFFFFFFFFF,
        rtp_ts & 0xFFFFFFFF,
        packets & 0xFFFFFFFF,
        octets & 0xFFFFFFFF,
    ) + _blocks(reports)
    return _header(SR, len(reports), len(body)) + body


def build_rr(ssrc: int, reports: Sequence[ReportBlock]) -> bytes:
    """Receiver report (RFC 3550 §6.4.2), possibly with no blocks."""
    body = _I.pack(ssrc) + _blocks(reports)
    return _header(RR, len(reports), len(body)) + body


def build_bye(ssrcs: Sequence[int]) -> bytes:
    """BYE (RFC 3550 §6.6) for up to 31 SSRCs, without a reason."""
    if len(ssrcs) > 31:
        raise ValueError("at most 31 SSRCs fit one BYE")
    body = struct.pack(f"!{len(ssrcs)}I", *ssrcs)
    return _header(BYE, len(ssrcs), len(body)) + body


def build_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    """Picture loss indication (RFC 4585 §6.3.1)."""
    return _FB.pack(0x80 | PLI_FMT, PSFB, 2, sender_ssrc, media_ssrc)


def build_fir(sender_ssrc: int, media_ssrc: int, seq_nr: int) -> bytes:
    """Full intra request (RFC 5104 §4.3.1); the header's media SSRC is 0, the FCI names the target.

    `seq_nr` must advance (mod 256) for each new request, and stay the same for a retransmission.
    """
    return _FB.pack(0x80 | FIR_FMT, PSFB, 4, sender_ssrc, 0) + _II.pack(media_ssrc, (seq_nr & 0xFF) << 24)


def build_nack(sender_ssrc: int, media_ssrc: int, seqs: Iterable[int]) -> bytes:
    """Generic NACK (RFC 4585 §6.2.1) for the given sequence numbers, packed into PID/BLP pairs.

    Numbers are ordered relative to the first one (so a list straddling 65535 -> 0 packs tightly);
    duplicates are ignored. Raises ValueError for an empty list.
    """
    unique = list(dict.fromkeys(s & 0xFFFF for s in seqs))
    if not unique:
        raise ValueError("NACK needs at least one sequence number")
    ref = unique[0]
    ordered = sorted(unique, key=lambda s: (s - ref + 0x8000) & 0xFFFF)  # by signed distance from ref
    fci = bytearray()
    pid = ordered[0]
    blp = 0
    for s in ordered[1:]:
        d = (s - pid) & 0xFFFF
        if d <= 16:
            blp |= 1 << (d - 1)
        else:
            fci += _HH.pack(pid, blp)
            pid, blp = s, 0
    fci += _HH.pack(pid, blp)
    return _FB.pack(0x80 | NACK_FMT, RTPFB, 2 + len(fci) // 4, sender_ssrc, media_ssrc) + bytes(fci)


def build_remb(sender_ssrc: int, bitrate: int, ssrcs: Sequence[int]) -> bytes:
    """Receiver estimated max bitrate (draft-alvestrand-rmcat-remb §2.2) for up to 255 SSRCs.

    The bitrate is stored as an 18-bit mantissa and 6-bit exponent, so large values lose low bits
    (rounded down).
    """
    if bitrate < 0:
        raise ValueError("bitrate must be >= 0")
    if len(ssrcs) > 255:
        raise ValueError("at most 255 SSRCs fit one REMB")
    exp = 0
    mantissa = bitrate
    while mantissa > 0x3FFFF:
        mantissa >>= 1
        exp += 1
    if exp > 63:
        raise ValueError("bitrate too large for REMB")
    fci = (
        b"REMB"
        + _I.pack((len(ssrcs) << 24) | (exp << 18) | mantissa)
        + struct.pack(f"!{len(ssrcs)}I", *ssrcs)
    )
    return _FB.pack(0x80 | AFB_FMT, PSFB, 2 + len(fci) // 4, sender_ssrc, 0) + fci


# -- receiver statistics ------------------------------------------------------------------------------

_MAX_DROPOUT = 3000
_MAX_MISORDER = 100


class ReceiverStats:
    """Reception statistics of one incoming SSRC (RFC 3550 A.1 sequence tracking, A.3 loss, A.8 jitter).

    A jump of more than 3000 sequence numbers is believed only when the next packet follows it (the
    sender restarted): then counting starts over. Duplicates count as received, as in A.3, so the
    cumulative loss can go negative. Jitter is updated from in-order packets only.
    """

    __slots__ = (
        "_bad_seq",
        "_base_seq",
        "_cycles",
        "_expected_prior",
        "_jitter",
        "_last_arrival",
        "_last_rtp_ts",
        "_lsr",
        "_max_seq",
        "_received",
        "_received_prior",
        "_sr_at_ms",
        "_started",
        "ssrc",
    )

    def __init__(self, ssrc: int) -> None:
        self.ssrc = ssrc
        self._started = False
        self._max_seq = 0
        self._cycles = 0
        self._base_seq = 0
        self._bad_seq = -1
        self._received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._jitter = 0.0
        self._last_arrival = 0.0
        self._last_rtp_ts = 0
        self._lsr = 0
        self._sr_at_ms = -1.0

    def _restart(self, seq: int) -> None:
        self._started = True
        self._base_seq = seq
        self._max_seq = seq
        self._cycles = 0
        self._bad_seq = -1
        self._received = 0
        self._expected_prior = 0
        self._received_prior = 0

    def update(self, seq: int, rtp_ts: int, arrival_ms: float, clock_rate: int) -> None:
        """Account one received packet (`arrival_ms` on any monotonic clock, sub-ms precision welcome)."""
        arrival = arrival_ms * clock_rate / 1000.0
        if self._started:
            delta = (seq - self._max_seq) & 0xFFFF
            if delta == 0 or delta > 0x10000 - _MAX_MISORDER:
                # duplicate or late packet: counted (A.3), but says nothing about jitter
                self._received += 1
                return
            if delta < _MAX_DROPOUT:
                if seq < self._max_seq:
                    self._cycles += 0x10000
                self._max_seq = seq
                # interarrival jitter, RFC 3550 §6.4.1 / A.8: D = arrival delta - timestamp delta
                ts_delta = (rtp_ts - self._last_rtp_ts) & 0xFFFFFFFF
                if ts_delta >= 0x80000000:
                    ts_delta -= 0x100000000
                d = arrival - self._last_arrival - ts_delta
                if d < 0:
                    d = -d
                self._jitter += (d - self._jitter) / 16.0
            elif seq != self._bad_seq:  # a big jump: believe it when the next packet follows it
                self._bad_seq = (seq + 1) & 0xFFFF
                return
            else:
                self._restart(seq)
        else:
            self._restart(seq)
        self._received += 1
        self._last_arrival = arrival
        self._last_rtp_ts = rtp_ts

    def on_sender_report(self, ntp_ts: int, arrival_ms: float) -> None:
        """Remember an SR from this source for the LSR/DLSR fields of the next report."""
        self._lsr = (ntp_ts >> 16) & 0xFFFFFFFF
        self._sr_at_ms = arrival_ms

    @property
    def received(self) -> int:
        """Packets received since the (re)start, duplicates included."""
        return self._received

    @property
    def ext_highest_seq(self) -> int:
        """Extended highest sequence number received (cycles << 16 | max seq)."""
        return self._cycles + self._max_seq

    @property
    def cumulative_lost(self) -> int:
        """Expected minus received since the (re)start (negative with duplicates)."""
        if not self._started:
            return 0
        return self._cycles + self._max_seq - self._base_seq + 1 - self._received

    @property
    def jitter(self) -> float:
        """Interarrival jitter estimate, RTP timestamp units."""
        return self._jitter

    def report_block(self, now_ms: float) -> ReportBlock | None:
        """The block for our next SR/RR about this source (None before its first packet).

        The fraction lost covers the interval since the previous call, so call it once per report.
        """
        if not self._started:
            return None
        ext_max = self._cycles + self._max_seq
        expected = ext_max - self._base_seq + 1
        lost = min(max(expected - self._received, _LOST_MIN), _LOST_MAX)
        expected_interval = expected - self._expected_prior
        received_interval = self._received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self._received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min((lost_interval << 8) // expected_interval, 255)
        dlsr = 0
        if self._sr_at_ms >= 0:
            dlsr = max(int((now_ms - self._sr_at_ms) * 65.536), 0) & 0xFFFFFFFF
        return ReportBlock(
            self.ssrc, fraction, lost, ext_max & 0xFFFFFFFF, int(self._jitter), self._lsr, dlsr
        )


# -- NACK history -------------------------------------------------------------------------------------


class PacketHistory:
    """The last `size` packets sent to one consumer, by outgoing sequence number, to answer its NACKs.

    A fixed ring: slot = seq mod size, with the slot's sequence number stored beside the packet so a
    slot overwritten by a newer packet is not mistaken for an older one. Store the plaintext packet
    (after rewriting, before SRTP): a retransmission is protected again, as SRTP requires a fresh
    encryption per send. Nothing is allocated per insert; the ring holds references only.
    """

    __slots__ = ("_mask", "_packets", "_seqs")

    def __init__(self, size: int = 1024) -> None:
        if size <= 0 or size & (size - 1) or size > 0x8000:
            raise ValueError("size must be a power of two up to 32768")
        self._mask = size - 1
        self._seqs = [-1] * size
        self._packets: list[bytes | None] = [None] * size

    def put(self, packet: bytes) -> None:
        """Store an outgoing RTP packet under its own sequence number (bytes 2-3)."""
        seq = (packet[2] << 8) | packet[3]
        i = seq & self._mask
        self._seqs[i] = seq
        self._packets[i] = packet

    def get(self, seq: int) -> bytes | None:
        """The packet sent with sequence number `seq`, if it is still in the ring."""
        i = seq & self._mask
        if self._seqs[i] == seq:
            return self._packets[i]
        return None

    def clear(self) -> None:
        """Forget everything (e.g. the consumer's SSRC changed)."""
        n = self._mask + 1
        self._seqs[:] = [-1] * n
        self._packets[:] = [None] * n


# -- keyframe request throttling ----------------------------------------------------------------------


class KeyframeRequestThrottle:
    """At most one keyframe request (PLI/FIR) per producer per `interval_ms`.

    A request arriving within the quiet period is remembered, not dropped: `poll` says to send it when
    the period ends, so the consumer that asked still gets its keyframe. A keyframe arriving from the
    producer meanwhile satisfies it (`keyframe_received`).
    """

    __slots__ = ("_last_ms", "_pending", "interval_ms")

    def __init__(self, interval_ms: int = 1000) -> None:
        self.interval_ms = interval_ms
        self._last_ms: int | None = None
        self._pending = False

    def request(self, now_ms: int) -> tuple[bool, int | None]:
        """A consumer wants a keyframe: (send one now?, if not: when to `poll` again)."""
        last = self._last_ms
        if last is None or now_ms - last >= self.interval_ms:
            self._last_ms = now_ms
            self._pending = False
            return True, None
        self._pending = True
        return False, last + self.interval_ms

    def poll(self, now_ms: int) -> tuple[bool, int | None]:
        """Timer check: (send the pending request now?, if still waiting: when to poll again)."""
        if not self._pending:
            return False, None
        return self.request(now_ms)

    def keyframe_received(self) -> None:
        """The producer sent a keyframe: a pending request is no longer needed."""
        self._pending = False

    @property
    def pending(self) -> bool:
        """A request is waiting for the quiet period to end."""
        return self._pending

    @property
    def retry_at_ms(self) -> int | None:
        """When the pending request may be sent, or None if nothing is pending."""
        if not self._pending or self._last_ms is None:
            return None
        return self._last_ms + self.interval_ms
