"""Pre-encoded media and RTP packetisation for the benchmark peers.

Opus and VP8 are encoded once (aiortc's encoders, i.e. PyAV's libopus/libvpx) and replayed in a loop:
Opus 20 ms frames (50 packets/s per publisher) and a VP8 GOP starting with a keyframe (30 fps); with
simulcast, two more GOPs of the same picture at a quarter and half the size (160x90 and 320x180, the
layers q and h below the 640x360 f), at about 80 and 200 kbit/s. Every
RTP packet carries the header extensions the SDP negotiated (mid; ssrc-audio-level for audio, with a
"voice activity" bit and a speech-like level; abs-send-time for video) and its payload ends with the
8-byte big-endian ``time.monotonic_ns()`` of its sending: the SFU under test never decodes payloads, and
the subscribers read the send time back from the last 8 bytes. A simulcast layer's packets also carry
the rtp-stream-id extension (its rid) and, just before the send time, a 2-byte trailer naming the
layer (`LAYER_MAGIC`, index), so that a subscriber can tell which layer the SFU forwards it.
"""

from __future__ import annotations

import array
import fractions
import math
import random
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

SEND_TIME: Final = struct.Struct("!Q")
RTP_HEADER: Final = struct.Struct("!BBHII")
OPUS_CLOCK_STEP: Final = 960  # 20 ms at 48 kHz
VIDEO_CLOCK_STEP: Final = 3000  # 30 fps at 90 kHz
AUDIO_PERIOD_NS: Final = 20_000_000
VIDEO_PERIOD_NS: Final = 33_333_333
# Speech-like RFC 6464 levels (-dBov, 0 = loudest) with the voice-activity bit set.
SPEECH_LEVELS: Final = tuple(0x80 | lv for lv in (22, 25, 28, 24, 30, 35, 27, 23, 26, 31, 38, 29))
_LEVEL_BYTES: Final = tuple(bytes((b,)) for b in range(256))
RIDS: Final = ("q", "h", "f")  # lowest first, as Voxa's clients list them in a=simulcast:send
LAYER_SIZES: Final = ((160, 90), (320, 180), (640, 360))
LAYER_TARGET_BPS: Final = (80_000, 200_000)  # q and h; f is the catalog's vp8_bitrate
LAYER_MAGIC: Final = 0xA5
KEYFRAME_MIN_INTERVAL_NS: Final = 250_000_000  # a publisher answers one keyframe request per layer in this


@dataclass(frozen=True, slots=True)
class MediaCatalog:
    """What publishers send, encoded once in the orchestrator and shipped to every load process."""

    opus: tuple[bytes, ...]  # one Opus packet per 20 ms frame
    vp8: tuple[tuple[bytes, ...], ...]  # per frame: RTP payloads (VP8 descriptor included); [0] is a key
    opus_bitrate: int
    vp8_bitrate: int
    # Simulcast: the GOPs of layers q and h (f is `vp8`); empty without simulcast.
    vp8_low: tuple[tuple[tuple[bytes, ...], ...], ...] = ()

    @property
    def simulcast(self) -> bool:
        return bool(self.vp8_low)

    def layers(self) -> tuple[tuple[tuple[bytes, ...], ...], ...]:
        """Every layer's GOP, lowest first (one layer without simulcast)."""
        return (*self.vp8_low, self.vp8)

    def summary(self) -> dict[str, Any]:
        opus_bytes = sum(len(p) for p in self.opus) / max(len(self.opus), 1)
        vp8_packets = sum(len(f) for f in self.vp8)
        vp8_bytes = sum(len(p) for f in self.vp8 for p in f)
        seconds = len(self.vp8) / 30.0 if self.vp8 else 0.0
        out: dict[str, Any] = {
            "opus_target_bps": self.opus_bitrate,
            "opus_payload_bytes_mean": round(opus_bytes, 1),
            "vp8_target_bps": self.vp8_bitrate,
            "vp8_gop_frames": len(self.vp8),
            "vp8_keyframe_packets": len(self.vp8[0]) if self.vp8 else 0,
            "vp8_pps": round(vp8_packets / seconds, 1) if seconds else 0.0,
            "vp8_bps": round(8 * vp8_bytes / seconds) if seconds else 0,
        }
        if self.simulcast:
            out["simulcast_layers"] = [
                {
                    "rid": rid,
                    "width": size[0],
                    "height": size[1],
                    "keyframe_packets": len(gop[0]),
                    "pps": round(sum(len(f) for f in gop) / (len(gop) / 30.0), 1),
                    "bps": round(8 * sum(len(p) for f in gop for p in f) / (len(gop) / 30.0)),
                }
                for rid, size, gop in zip(RIDS, LAYER_SIZES, self.layers(), strict=True)
            ]
        return out


def encode_opus(frames: int = 50, bitrate: int = 40_000, seed: int = 1) -> tuple[bytes, ...]:
    """`frames` 20 ms Opus packets of a voice-like signal (a wobbling tone with noise)."""
    import av
    from aiortc.codecs.opus import OpusEncoder

    rng = random.Random(seed)
    encoder = OpusEncoder()
    encoder.codec.bit_rate = bitrate  # the codec opens on the first frame
    out: list[bytes] = []
    for i in range(frames + 5):  # libopus buffers the first frames
        pitch = 180.0 + 40.0 * math.sin(i / 7.0)
        samples = array.array(
            "h",
            (
                int(6000 * math.sin(2 * math.pi * pitch * (i * 960 + n) / 48000) + rng.randint(-900, 900))
                for n in range(960)
            ),
        )
        frame = av.AudioFrame(format="s16", layout="mono", samples=960)
        frame.planes[0].update(samples.tobytes())
        frame.pts = i * 960
        frame.sample_rate = 48000
        frame.time_base = fractions.Fraction(1, 48000)
        payloads, _ = encoder.encode(frame)
        out.extend(payloads)
    if len(out) < frames:
        raise RuntimeError(f"the Opus encoder produced {len(out)} packets for {frames} frames")
    return tuple(out[:frames])


def encode_vp8(
    frames: int = 60, width: int = 640, height: int = 360, bitrate: int = 500_000, seed: int = 1
) -> tuple[tuple[bytes, ...], ...]:
    """A VP8 GOP of `frames` frames at 30 fps (a keyframe, then deltas): a textured background with a
    moving noisy box, about webcam-like in packets per second at aiortc's CBR settings."""
    import av
    from aiortc.codecs.vpx import Vp8Encoder

    rng = random.Random(seed)
    background = bytearray(width * height)
    for y in range(height):
        row = y * width
        for x in range(width):
            background[row + x] = (x // 2 + y // 3 + (x * 7919 + y * 104729) % 61) & 0xFF
    encoder = Vp8Encoder()
    encoder.target_bitrate = bitrate
    if bitrate < encoder.target_bitrate:
        # aiortc clamps its target to >= 250 kbit/s; a simulcast layer of 160x90 runs well below that.
        encoder._Vp8Encoder__target_bitrate = bitrate  # type: ignore[attr-defined]
    box = min(90, width // 4, height // 4)
    chroma = width * height // 4
    out: list[tuple[bytes, ...]] = []
    for i in range(frames):
        luma = bytearray(background)
        x0 = (i * 6) % (width - box)
        for row in range(height // 4, height // 4 + box):
            luma[row * width + x0 : row * width + x0 + box] = rng.randbytes(box)
        frame = av.VideoFrame(width, height, "yuv420p")
        frame.planes[0].update(bytes(luma))
        frame.planes[1].update(b"\x80" * chroma)
        frame.planes[2].update(b"\x70" * chroma)
        frame.pts = i * VIDEO_CLOCK_STEP
        frame.time_base = fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame, force_keyframe=i == 0)
        out.append(tuple(payloads))
    return tuple(out)


def build_catalog(
    *, video: bool, opus_bitrate: int = 40_000, vp8_bitrate: int = 500_000, simulcast: bool = False
) -> MediaCatalog:
    low: tuple[tuple[tuple[bytes, ...], ...], ...] = ()
    if video and simulcast:
        low = tuple(
            encode_vp8(width=w, height=h, bitrate=bps)
            for (w, h), bps in zip(LAYER_SIZES[:2], LAYER_TARGET_BPS, strict=True)
        )
    return MediaCatalog(
        opus=encode_opus(bitrate=opus_bitrate),
        vp8=encode_vp8(width=LAYER_SIZES[2][0], height=LAYER_SIZES[2][1], bitrate=vp8_bitrate)
        if video
        else (),
        opus_bitrate=opus_bitrate,
        vp8_bitrate=vp8_bitrate if video else 0,
        vp8_low=low,
    )


@dataclass(frozen=True, slots=True)
class ExtensionIds:
    """Header extension ids the SDP negotiated for one m-section (0 = not negotiated)."""

    mid: str
    mid_id: int = 0
    audio_level_id: int = 0
    abs_send_time_id: int = 0
    rid_id: int = 0  # RFC 8852 rtp-stream-id (simulcast publishers)


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


class WindowClock:
    """The measurement window [t0, t1) in monotonic ns, shared by a load process's senders/receivers."""

    __slots__ = ("t0", "t1")

    def __init__(self) -> None:
        self.t0 = 0
        self.t1 = 0


class StreamSender:
    """One published track: sends the next frame's RTP packets, SRTP-protected, straight to the socket."""

    __slots__ = (
        "_addr",
        "_closing",
        "_ext_fixed",
        "_ext_lvl_post",
        "_ext_lvl_pre",
        "_first_byte",
        "_frames",
        "_index",
        "_key_at",
        "_key_due",
        "_level_index",
        "_protect",
        "_sendto",
        "_ssrc",
        "_trailer",
        "_ts",
        "_video_abs",
        "clock",
        "dead",
        "due",
        "errors",
        "keyframes_requested",
        "kind",
        "late_max_ns",
        "late_sends",
        "layer",
        "peer_id",
        "period_ns",
        "pt",
        "sent",
        "seq",
        "window_sent",
    )

    def __init__(
        self,
        peer_id: str,
        kind: str,
        frames: Sequence[Sequence[bytes]],
        *,
        ssrc: int,
        pt: int,
        ext: ExtensionIds,
        protect: Callable[[bytes], bytes],
        sendto: Callable[[bytes, Any], None],
        addr: tuple[str, int],
        clock: WindowClock,
        closing: Callable[[], bool] = lambda: False,
        seed: int = 0,
        rid: str = "",
        layer: int = -1,
    ) -> None:
        """`rid`/`layer`: a simulcast layer (its rtp-stream-id, written when `ext.rid_id` is set, and its
        index in the payload trailer); video only."""
        if not frames:
            raise ValueError(f"no pre-encoded {kind} frames")
        rng = random.Random(seed ^ ssrc)
        self.peer_id = peer_id
        self.kind = kind
        self.period_ns = AUDIO_PERIOD_NS if kind == "audio" else VIDEO_PERIOD_NS
        self._frames = [tuple(f) for f in frames]
        self._index = rng.randrange(len(frames)) if kind == "audio" else 0  # video starts on the key
        self._ssrc = ssrc
        self.pt = pt
        self.seq = rng.getrandbits(16)
        self._ts = rng.getrandbits(32)
        self._protect = protect
        self._sendto = sendto
        self._addr = addr
        self._closing = closing
        self.clock = clock
        self.due = 0
        self.sent = 0
        self.window_sent = 0
        self.errors = 0
        self.late_sends = 0
        self.late_max_ns = 0
        self.dead = False
        self.layer = layer
        self._trailer = bytes((LAYER_MAGIC, layer)) if layer >= 0 else b""
        self._key_due = False
        self._key_at = 0
        self.keyframes_requested = 0
        self._level_index = rng.randrange(len(SPEECH_LEVELS))
        # Extension block: mid, then audio level (audio) or abs-send-time (video), one-byte form.
        mid_el = b""
        if ext.mid_id:
            mid_bytes = ext.mid.encode()
            if not 1 <= ext.mid_id <= 14 or not 1 <= len(mid_bytes) <= 16:
                raise ValueError(f"cannot write mid {ext.mid!r} with id {ext.mid_id} in one-byte form")
            mid_el = bytes([(ext.mid_id << 4) | (len(mid_bytes) - 1)]) + mid_bytes
        if rid and ext.rid_id:  # Chromium names the layer in every packet until it learns of an answer
            rid_bytes = rid.encode()
            if not 1 <= ext.rid_id <= 14 or not 1 <= len(rid_bytes) <= 16:
                raise ValueError(f"cannot write rid {rid!r} with id {ext.rid_id} in one-byte form")
            mid_el += bytes([(ext.rid_id << 4) | (len(rid_bytes) - 1)]) + rid_bytes
        self._video_abs = 0
        self._ext_lvl_pre = self._ext_lvl_post = b""
        if kind == "audio" and ext.audio_level_id:
            size = len(mid_el) + 2
            head = struct.pack("!HH", 0xBEDE, (size + _pad4(size)) // 4)
            self._ext_lvl_pre = head + mid_el + bytes([ext.audio_level_id << 4])
            self._ext_lvl_post = bytes(_pad4(size))
            self._ext_fixed = b""
        elif kind == "video" and ext.abs_send_time_id:
            size = len(mid_el) + 4
            head = struct.pack("!HH", 0xBEDE, (size + _pad4(size)) // 4)
            self._ext_lvl_pre = head + mid_el + bytes([(ext.abs_send_time_id << 4) | 2])
            self._ext_lvl_post = bytes(_pad4(size))
            self._video_abs = 1
            self._ext_fixed = b""
        elif mid_el:
            size = len(mid_el)
            self._ext_fixed = (
                struct.pack("!HH", 0xBEDE, (size + _pad4(size)) // 4) + mid_el + bytes(_pad4(size))
            )
        else:
            self._ext_fixed = b""
        has_ext = bool(self._ext_fixed or self._ext_lvl_pre)
        self._first_byte = 0x90 if has_ext else 0x80

    def request_keyframe(self) -> None:
        """A PLI/FIR for this stream: the next frame is the GOP's keyframe (as an encoder would do, at
        most one per `KEYFRAME_MIN_INTERVAL_NS`). Only simulcast layers answer: without simulcast the
        load's video keeps its fixed GOP, as it always did."""
        if self.layer < 0:
            return
        now = time.monotonic_ns()
        if now - self._key_at >= KEYFRAME_MIN_INTERVAL_NS:
            self._key_at = now
            self._key_due = True
            self.keyframes_requested += 1

    def fire(self, due: int) -> None:
        """Send the next frame (its packets back to back), as if captured at `due` (monotonic ns)."""
        if self._closing():  # the connection went away (ICE consent lost, peer closed)
            self.dead = True
            return
        if self._key_due:
            self._key_due = False
            self._index = 0
        frame = self._frames[self._index]
        self._index = (self._index + 1) % len(self._frames)
        now = time.monotonic_ns()
        late = now - due
        clock = self.clock
        in_window = clock.t0 <= now < clock.t1
        if in_window and late > 5_000_000:
            self.late_sends += 1
            self.late_max_ns = max(self.late_max_ns, late)
        if self.kind == "audio":
            level = SPEECH_LEVELS[self._level_index]
            self._level_index = (self._level_index + 1) % len(SPEECH_LEVELS)
            ext = (
                (self._ext_lvl_pre + _LEVEL_BYTES[level] + self._ext_lvl_post) if self._ext_lvl_pre else None
            )
        else:
            ext = None
        last = len(frame) - 1
        pack = RTP_HEADER.pack
        seq = self.seq
        ts = self._ts
        for i, payload in enumerate(frame):
            if ext is None:
                if self._video_abs:
                    abs_time = ((now << 18) // 1_000_000_000) & 0xFFFFFF
                    block = self._ext_lvl_pre + abs_time.to_bytes(3, "big") + self._ext_lvl_post
                else:
                    block = self._ext_fixed
            else:
                block = ext
            marker = 0x80 if (i == last and self.kind == "video") else 0
            packet = (
                pack(self._first_byte, self.pt | marker, seq, ts, self._ssrc)
                + block
                + payload
                + self._trailer
                + SEND_TIME.pack(now)
            )
            try:
                self._sendto(self._protect(packet), self._addr)
            except Exception:
                self.errors += 1
                self.dead = self.errors > 100
            seq = (seq + 1) & 0xFFFF
        self.seq = seq
        self._ts = (ts + (OPUS_CLOCK_STEP if self.kind == "audio" else VIDEO_CLOCK_STEP)) & 0xFFFFFFFF
        self.sent += len(frame)
        if in_window:
            self.window_sent += len(frame)
