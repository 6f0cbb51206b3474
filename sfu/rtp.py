"""RTP header access and per-consumer rewriting for a forwarding SFU (RFC 3550, RFC 8285, RFC 6464).

Everything here runs once per packet (or once per packet and consumer), so nothing builds an object
model of the packet: accessors read the few bytes they need from the plaintext packet, and the
`Rewriter` emits the outgoing packet with one `struct.pack` of the new header plus one copy of the
payload. The accessors trust their input: run `check_rtp` once when a packet enters the SFU and drop
it if a reason comes back; after that every accessor and the `Rewriter` are safe to call on it.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Mapping

__all__ = [
    "Rewriter",
    "SeqUnwrapper",
    "abs_send_time_ns",
    "audio_level",
    "audio_level_raw",
    "check_rtp",
    "find_extension",
    "header_length",
    "marker_of",
    "payload_range",
    "payload_type_of",
    "seq_diff",
    "seq_lt",
    "sequence_of",
    "ssrc_of",
    "timestamp_of",
    "ts_diff",
]

_unpack_u32 = struct.Struct("!I").unpack_from
_unpack_seq_ts_ssrc = struct.Struct("!HII").unpack_from

ONE_BYTE_PROFILE = 0xBEDE
"""RFC 8285 §4.2: one-byte header extension elements (ids 1-14, 1-16 bytes of data)."""
TWO_BYTE_PROFILE = 0x1000
"""RFC 8285 §4.3: two-byte elements (ids 1-255, 0-255 bytes); the low 4 bits are "appbits"."""


# -- header accessors ---------------------------------------------------------------------------------


def ssrc_of(data: bytes) -> int:
    """Synchronization source of the packet (bytes 8-11)."""
    return _unpack_u32(data, 8)[0]  # type: ignore[no-any-return]


def payload_type_of(data: bytes) -> int:
    """7-bit payload type."""
    return data[1] & 0x7F


def sequence_of(data: bytes) -> int:
    """16-bit sequence number."""
    return (data[2] << 8) | data[3]


def timestamp_of(data: bytes) -> int:
    """32-bit RTP timestamp."""
    return _unpack_u32(data, 4)[0]  # type: ignore[no-any-return]


def marker_of(data: bytes) -> bool:
    """Marker bit (end of a video frame, start of an audio talkspurt)."""
    return data[1] >= 0x80


def header_length(data: bytes) -> int:
    """Bytes before the payload: 12 + 4 per CSRC + the extension block (4-byte header + its words)."""
    b0 = data[0]
    end = 12 + ((b0 & 0x0F) << 2)
    if b0 & 0x10:
        end += 4 + (((data[end + 2] << 8) | data[end + 3]) << 2)
    return end


def payload_range(data: bytes) -> tuple[int, int]:
    """(start, end) of the payload: after the header, before any padding (RFC 3550 §5.1, P bit)."""
    end = len(data)
    if data[0] & 0x20:
        end -= data[-1]
    return header_length(data), end


def check_rtp(data: bytes) -> str | None:
    """Why `data` is not a usable RTP packet, or None when it is.

    A reason is returned for: fewer than 12 bytes, version other than 2, a payload type in 64-95
    (RTCP's range once rtcp-mux folds the marker bit in, RFC 5761 §4), a CSRC list or extension block
    running past the end, and a padding count of 0 or longer than what follows the header.
    """
    n = len(data)
    if n < 12:
        return "shorter than the 12-byte RTP header"
    b0 = data[0]
    if b0 >> 6 != 2:
        return f"RTP version {b0 >> 6}, not 2"
    if 64 <= data[1] & 0x7F <= 95:
        return "payload type in 64-95 collides with RTCP (RFC 5761)"
    end = 12 + ((b0 & 0x0F) << 2)
    if end > n:
        return "CSRC list runs past the end of the packet"
    if b0 & 0x10:
        if end + 4 > n:
            return "header extension header runs past the end of the packet"
        end += 4 + (((data[end + 2] << 8) | data[end + 3]) << 2)
        if end > n:
            return "header extension runs past the end of the packet"
    if b0 & 0x20:
        pad = data[-1]
        if pad == 0:
            return "padding bit set but padding count is 0"
        if end + pad > n:
            return "padding longer than the payload"
    return None


# -- header extensions (RFC 8285) ---------------------------------------------------------------------


def find_extension(data: bytes, ext_id: int) -> tuple[int, int] | None:
    """(offset, length) of element `ext_id`'s data inside `data`, or None if absent.

    Reads one-byte (0xBEDE) and two-byte (0x100X) blocks. A malformed block (an element running past
    the block, or the reserved id 15 of the one-byte form, which ends parsing per RFC 8285 §4.2) yields
    None for elements at or after the fault rather than an exception.
    """
    b0 = data[0]
    if not b0 & 0x10 or ext_id <= 0:
        return None
    p = 12 + ((b0 & 0x0F) << 2)
    if p + 4 > len(data):
        return None
    profile = (data[p] << 8) | data[p + 1]
    end = p + 4 + (((data[p + 2] << 8) | data[p + 3]) << 2)
    if end > len(data):
        return None
    p += 4
    if profile == ONE_BYTE_PROFILE:
        while p < end:
            h = data[p]
            if h == 0:  # padding byte between elements
                p += 1
                continue
            eid = h >> 4
            if eid == 15:
                return None
            length = (h & 0x0F) + 1
            p += 1
            if p + length > end:
                return None
            if eid == ext_id:
                return p, length
            p += length
    elif profile & 0xFFF0 == TWO_BYTE_PROFILE:
        while p < end:
            eid = data[p]
            if eid == 0:
                p += 1
                continue
            if p + 2 > end:
                return None
            length = data[p + 1]
            p += 2
            if p + length > end:
                return None
            if eid == ext_id:
                return p, length
            p += length
    return None


def audio_level_raw(data: bytes, ext_id: int) -> int:
    """The RFC 6464 byte (V bit << 7 | level) of element `ext_id`, or -1 when the packet has none.

    This is what `Rewriter.rewrite` takes: read it once per incoming packet, hand it to every consumer.
    """
    found = find_extension(data, ext_id)
    if found is None or found[1] < 1:
        return -1  # absent, or an empty two-byte element: no level byte to read
    return data[found[0]]


def audio_level(data: bytes, ext_id: int) -> tuple[bool, int] | None:
    """(voice_activity, level in -dBov: 0 loudest, 127 silence) from RFC 6464 element `ext_id`."""
    raw = audio_level_raw(data, ext_id)
    if raw < 0:
        return None
    return raw >= 0x80, raw & 0x7F


def abs_send_time_ns(ns: int) -> int:
    """abs-send-time value (24-bit, 6.18 fixed-point seconds) for a time in nanoseconds.

    Any clock works (monotonic is best): receivers only use differences, modulo 64 s.
    """
    return (ns * 262144 // 1_000_000_000) & 0xFFFFFF


# -- sequence-number arithmetic ------------------------------------------------------------------------


def seq_diff(a: int, b: int) -> int:
    """a - b for 16-bit sequence numbers, in [-32768, 32767] (a difference of exactly 32768 is -32768)."""
    d = (a - b) & 0xFFFF
    return d - 0x10000 if d >= 0x8000 else d


def seq_lt(a: int, b: int) -> bool:
    """True when sequence number a comes before b (RFC 1982 serial arithmetic on 16 bits)."""
    return seq_diff(a, b) < 0


def ts_diff(a: int, b: int) -> int:
    """a - b for 32-bit RTP timestamps, in [-2**31, 2**31 - 1]."""
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d >= 0x80000000 else d


class SeqUnwrapper:
    """Extends 16-bit sequence numbers to a monotonic counter (cycles * 65536 + seq).

    The first number is returned as is; later ones are placed within +-32768 of the highest seen, so a
    late packet from before a wrap gets a smaller value (negative for packets older than the first).
    """

    __slots__ = ("_highest", "_last")

    def __init__(self) -> None:
        self._last = -1
        self._highest = 0

    def update(self, seq: int) -> int:
        """Extended value of `seq`; advances the highest value when `seq` is newer."""
        if self._last < 0:
            self._last = seq
            self._highest = seq
            return seq
        d = (seq - self._last) & 0xFFFF
        if d < 0x8000:
            self._last = seq
            self._highest += d
            return self._highest
        return self._highest - (0x10000 - d)

    @property
    def highest(self) -> int:
        """Highest extended value so far (-1 before the first packet)."""
        return self._highest if self._last >= 0 else -1


# -- per-consumer rewriting ---------------------------------------------------------------------------

_HDR_FORMAT = "!BBHII"
_STALE_WINDOW = 0x4000  # packets this far behind the newest forwarded one are dropped


_Layout = tuple[Callable[..., bytes], int, int, bytes, bytes, bytes]
"""(pack, kind, X bit, c0, c1, c2): one precompiled outgoing header (fixed header + extension block).

`kind` says which per-packet words `pack` takes after the 5 fixed-header fields and the constant
`c0`: 0 nothing more (`c0` is the whole block, possibly empty), 1 `c1` + level word + `c2`,
2 abs-send-time word + `c2`, 3 abs-send-time word + `c1` + level word + `c2`. A tuple rather than an
object so the hot path unpacks it in one step.
"""


def _make_layout(kind: int, c0: bytes, c1: bytes, c2: bytes) -> _Layout:
    fmt = _HDR_FORMAT + f"{len(c0)}s"
    if kind & 2:
        fmt += "I"
    if kind & 1:
        fmt += f"{len(c1)}sH"
    if kind:
        fmt += f"{len(c2)}s"
    xbit = 0x10 if c0 or kind else 0
    return struct.Struct(fmt).pack, kind, xbit, c0, c1, c2


def _pad4(n: int) -> int:
    return -n & 3


class Rewriter:
    """Turns a producer's packets into one consumer's packets: SSRC, PT, seq, timestamp, extensions.

    Sequence numbers and timestamps are `in + offset`; the offsets are re-based on the first packet
    after `switch_source()`/`resume()` (or when the incoming SSRC changes) so the consumer sees
    ``last_seq + 1`` and a timestamp advanced by the wall-clock time since the last forwarded packet
    (at least `min_ts_step`, a 20 ms frame by default), i.e. no loss and real time passing. Switch
    video sources on a keyframe: a re-base mid-frame would give the rest of that frame a new timestamp.

    Packets whose payload type the consumer did not negotiate, and late packets from before a re-base
    (or more than 16384 behind the newest forwarded packet), are dropped: `rewrite` returns None.

    The outgoing extension block carries exactly the consumer's negotiated elements, with its ids:
    mid, abs-send-time (from the caller's clock) and ssrc-audio-level (the producer's byte, copied).
    It uses the one-byte form when every id is 1-14 and the mid is 1-16 bytes, else the two-byte form
    (which needs ``a=extmap-allow-mixed`` in the consumer's SDP). CSRCs and padding pass through.

    Cost per packet: the outgoing header is precompiled per extension layout (with/without the audio
    level byte), so a packet allocates exactly three buffers -- the packed header, the payload slice and
    their concatenation, the returned `bytes` -- plus the transient ints/one tuple of reading the
    incoming header. A packet with CSRCs takes a slower path with two more concatenations.
    """

    __slots__ = (
        "_abs_hi",
        "_b1_map",
        "_clock_rate",
        "_floor",
        "_hi_ms",
        "_hi_seq",
        "_hi_ts",
        "_in_ssrc",
        "_layout_level",
        "_layout_plain",
        "_lvl_hi",
        "_min_ts_step",
        "_seq_off",
        "_ssrc",
        "_started",
        "_ts_off",
    )

    def __init__(
        self,
        ssrc: int,
        clock_rate: int,
        payload_types: Mapping[int, int],
        *,
        mid: str | None = None,
        mid_id: int = 0,
        abs_send_time_id: int = 0,
        audio_level_id: int = 0,
        initial_seq: int | None = None,
        initial_ts: int | None = None,
        min_ts_step: int | None = None,
    ) -> None:
        """`payload_types` maps producer PT -> consumer PT; extension ids of 0 mean "not negotiated".

        `initial_seq`/`initial_ts` default to random values (RFC 3550 §5.1).
        """
        if not 0 <= ssrc <= 0xFFFFFFFF:
            raise ValueError(f"ssrc {ssrc} out of range")
        if clock_rate <= 0:
            raise ValueError("clock_rate must be positive")
        self._ssrc = ssrc
        self._clock_rate = clock_rate
        self._min_ts_step = clock_rate // 50 if min_ts_step is None else min_ts_step
        self._started = False
        self._in_ssrc = -1
        # The state of the newest forwarded packet; before the first packet, "one before" the start.
        self._hi_seq = ((random.getrandbits(16) if initial_seq is None else initial_seq) - 1) & 0xFFFF
        self._hi_ts = random.getrandbits(32) if initial_ts is None else initial_ts & 0xFFFFFFFF
        self._hi_ms = 0
        self._floor = self._hi_seq
        self._seq_off = 0
        self._ts_off = 0
        self._b1_map: list[int] = []
        self._abs_hi = 0
        self._lvl_hi = 0
        self._layout_plain = self._layout_level = _make_layout(0, b"", b"", b"")
        self.configure(
            payload_types,
            mid=mid,
            mid_id=mid_id,
            abs_send_time_id=abs_send_time_id,
            audio_level_id=audio_level_id,
        )

    def configure(
        self,
        payload_types: Mapping[int, int],
        *,
        mid: str | None = None,
        mid_id: int = 0,
        abs_send_time_id: int = 0,
        audio_level_id: int = 0,
    ) -> None:
        """(Re)apply the consumer's negotiated payload types and extension ids; seq/ts state is kept."""
        b1_map = [-1] * 256
        for pt_in, pt_out in payload_types.items():
            if not (0 <= pt_in <= 127 and 0 <= pt_out <= 127):
                raise ValueError(f"payload type mapping {pt_in}->{pt_out} out of range")
            b1_map[pt_in] = pt_out
            b1_map[pt_in | 0x80] = pt_out | 0x80
        ids = [i for i in (mid_id, abs_send_time_id, audio_level_id) if i]
        if any(not 1 <= i <= 255 for i in ids) or len(set(ids)) != len(ids):
            raise ValueError(f"extension ids must be distinct and in 1-255, got {ids}")
        mid_bytes = b""
        if mid_id:
            if not mid:
                raise ValueError("mid_id given without a mid")
            mid_bytes = mid.encode()
            if len(mid_bytes) > 255:
                raise ValueError("mid longer than 255 bytes")
        one_byte = all(i <= 14 for i in ids) and len(mid_bytes) <= 16

        if one_byte:
            mid_el = bytes([(mid_id << 4) | (len(mid_bytes) - 1)]) + mid_bytes if mid_id else b""
            abs_head, abs_hi = b"", (abs_send_time_id << 4 | 2) << 24
            lvl_head, lvl_hi = b"", (audio_level_id << 4) << 8
            abs_len, lvl_len = 4, 2
            profile = ONE_BYTE_PROFILE
        else:
            mid_el = bytes([mid_id, len(mid_bytes)]) + mid_bytes if mid_id else b""
            abs_head, abs_hi = bytes([abs_send_time_id]), 3 << 24
            lvl_head, lvl_hi = bytes([audio_level_id]), 1 << 8
            abs_len, lvl_len = 5, 3
            profile = TWO_BYTE_PROFILE

        def layout(with_level: bool) -> _Layout:
            has_abs = bool(abs_send_time_id)
            size = len(mid_el) + (abs_len if has_abs else 0) + (lvl_len if with_level else 0)
            if size == 0:
                return _make_layout(0, b"", b"", b"")
            tail = mid_el + bytes(_pad4(size))
            block_head = struct.pack("!HH", profile, (size + _pad4(size)) // 4)
            kind = (2 if has_abs else 0) | (1 if with_level else 0)
            if kind == 0:
                return _make_layout(0, block_head + tail, b"", b"")
            return _make_layout(kind, block_head + (abs_head if has_abs else b""), lvl_head, tail)

        self._b1_map = b1_map
        self._abs_hi = abs_hi
        self._lvl_hi = lvl_hi
        self._layout_plain = layout(False)
        self._layout_level = layout(True) if audio_level_id else self._layout_plain

    @property
    def ssrc(self) -> int:
        """The consumer's SSRC written into every outgoing packet."""
        return self._ssrc

    @property
    def last_seq(self) -> int:
        """Outgoing sequence number of the newest forwarded packet."""
        return self._hi_seq

    @property
    def last_timestamp(self) -> int:
        """Outgoing timestamp of the newest forwarded packet."""
        return self._hi_ts

    def timestamp_at(self, now_ms: int) -> int:
        """Outgoing RTP time at `now_ms`: the newest packet's timestamp plus the time elapsed since.

        The RTP timestamp to pair with "now" in a sender report for this consumer (RFC 3550 §6.4.1).
        """
        if not self._started:
            return self._hi_ts
        return (self._hi_ts + (now_ms - self._hi_ms) * self._clock_rate // 1000) & 0xFFFFFFFF

    def switch_source(self) -> None:
        """The next packet comes from another producer (or a restarted one): re-base seq and ts on it."""
        self._in_ssrc = -1

    def resume(self) -> None:
        """Forwarding resumes after a pause (mute, paused consumer): re-base so the consumer sees no gap."""
        self._in_ssrc = -1

    def incoming_seq(self, out_seq: int) -> int:
        """Producer sequence number for an outgoing one (to forward a NACK upstream); current source only."""
        return (out_seq - self._seq_off) & 0xFFFF

    def _rebase(self, seq: int, ts: int, ssrc: int, now_ms: int) -> None:
        if self._started:
            elapsed = now_ms - self._hi_ms
            step = elapsed * self._clock_rate // 1000 if elapsed > 0 else 0
            out_ts = (self._hi_ts + max(step, self._min_ts_step)) & 0xFFFFFFFF
        else:
            out_ts = self._hi_ts
            self._started = True
        out_seq = (self._hi_seq + 1) & 0xFFFF
        self._seq_off = (out_seq - seq) & 0xFFFF
        self._ts_off = (out_ts - ts) & 0xFFFFFFFF
        self._floor = out_seq
        self._hi_seq = (out_seq - 1) & 0xFFFF  # so this packet counts as the newest
        self._in_ssrc = ssrc

    def rewrite(self, data: bytes, now_ms: int, abs_send_time: int, audio_level: int) -> bytes | None:
        """The consumer's version of producer packet `data` (checked by `check_rtp`), or None to drop it.

        `now_ms`: wall clock in ms (any monotonic origin), used to advance timestamps across pauses.
        `abs_send_time`: the 24-bit value to send (see `abs_send_time_ns`), if negotiated.
        `audio_level`: the producer's RFC 6464 byte from `audio_level_raw`, or -1 for none.
        """
        b1 = self._b1_map[data[1]]
        if b1 < 0:
            return None
        seq, ts, ssrc = _unpack_seq_ts_ssrc(data, 2)
        if ssrc != self._in_ssrc:  # a new source, or -1 after switch_source()/resume()
            self._rebase(seq, ts, ssrc, now_ms)
        out_seq = (seq + self._seq_off) & 0xFFFF
        out_ts = (ts + self._ts_off) & 0xFFFFFFFF
        if (out_seq - self._hi_seq) & 0xFFFF < 0x8000:
            self._hi_seq = out_seq
            self._hi_ts = out_ts
            self._hi_ms = now_ms
            if (out_seq - self._floor) & 0xFFFF > _STALE_WINDOW:
                self._floor = (out_seq - _STALE_WINDOW) & 0xFFFF
        elif (out_seq - self._floor) & 0xFFFF >= 0x8000:
            return None
        b0 = data[0]
        cc_end = 12 + ((b0 & 0x0F) << 2)
        in_end = cc_end + 4 + (((data[cc_end + 2] << 8) | data[cc_end + 3]) << 2) if b0 & 0x10 else cc_end
        if audio_level >= 0:
            packer, kind, xbit, c0, c1, c2 = self._layout_level
        else:
            packer, kind, xbit, c0, c1, c2 = self._layout_plain
        b0 = (b0 & 0xEF) | xbit
        if kind == 3:
            head = packer(
                b0,
                b1,
                out_seq,
                out_ts,
                self._ssrc,
                c0,
                self._abs_hi | (abs_send_time & 0xFFFFFF),
                c1,
                self._lvl_hi | audio_level,
                c2,
            )
        elif kind == 2:
            head = packer(
                b0, b1, out_seq, out_ts, self._ssrc, c0, self._abs_hi | (abs_send_time & 0xFFFFFF), c2
            )
        elif kind == 1:
            head = packer(b0, b1, out_seq, out_ts, self._ssrc, c0, c1, self._lvl_hi | audio_level, c2)
        else:
            head = packer(b0, b1, out_seq, out_ts, self._ssrc, c0)
        if cc_end == 12:
            return head + data[in_end:]
        return head[:12] + data[12:cc_end] + head[12:] + data[in_end:]
