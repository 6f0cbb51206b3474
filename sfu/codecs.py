"""Codec payload inspection the SFU needs without decoding: is this RTP payload the start of a keyframe?

A new video consumer is forwarded from a keyframe onwards (what comes before it cannot be decoded);
the check reads a few payload header bytes (RFC 7741 for VP8, RFC 6184 for H.264).
"""

from __future__ import annotations

from collections.abc import Callable


def vp8_keyframe_start(payload: bytes | memoryview) -> bool:
    """True for the first packet of a VP8 keyframe (S=1, partition 0, P bit clear)."""
    n = len(payload)
    if n < 1:
        return False
    first = payload[0]
    if not first & 0x10 or first & 0x07:  # S (start of partition) and PID == 0
        return False
    i = 1
    if first & 0x80:  # X: extension byte
        if n <= i:
            return False
        ext = payload[i]
        i += 1
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if n <= i:
                return False
            i += 2 if payload[i] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            i += 1
        if ext & 0x30:  # T or K: TID/KEYIDX byte
            i += 1
    if n <= i:
        return False
    return not payload[i] & 0x01  # P bit: 0 = key frame


_H264_KEY_NALS = (5, 7)  # IDR slice, SPS


def h264_keyframe_start(payload: bytes | memoryview) -> bool:
    """True if the packet starts an IDR picture or carries an SPS (single NAL, STAP-A or FU-A start)."""
    n = len(payload)
    if n < 1:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in _H264_KEY_NALS:
        return True
    if nal_type == 24:  # STAP-A: [size(2) nal]...
        i = 1
        while i + 2 < n:
            size = (payload[i] << 8) | payload[i + 1]
            if size == 0 or i + 2 + size > n:
                return False
            if payload[i + 2] & 0x1F in _H264_KEY_NALS:
                return True
            i += 2 + size
        return False
    if nal_type == 28:  # FU-A: FU indicator, FU header (S bit + type)
        if n < 2:
            return False
        header = payload[1]
        return bool(header & 0x80) and header & 0x1F in _H264_KEY_NALS
    return False


KeyframeTest = Callable[[bytes | memoryview], bool]


def keyframe_check(codec_name: str) -> KeyframeTest | None:
    """The keyframe test for a codec name, or None for audio codecs."""
    name = codec_name.lower()
    if name == "vp8":
        return vp8_keyframe_start
    if name == "h264":
        return h264_keyframe_start
    return None
