"""The SFU benchmark's ceiling: the native data plane's minimal forwarder under the same load shape.

`voxa_dataplane.ceiling` runs one forwarder thread (pinned to the SFU's core) that receives SRTP from
the publishers, unprotects each packet once, and for a fixed fan-out rewrites SSRC and sequence number,
protects and sends it, with the same batching (`recvmmsg`/`sendmmsg`) and SRTP code as the SFU, but
no routing, RTCP or ICE. Publishers and subscribers run on the load core. Forwarded packets per
CPU-second of that thread is what this machine can do at best; `pps_per_core / ceiling` says how
close the SFU comes to it.

The load shape is the scenario's (bench/loadgen/plan.py): the same rooms, publishers per room and
fan-out, 50 Opus packets/s per publisher of the catalog's mean size (plus the 8-byte send time and
the RTP header extensions), and for `video-room` the VP8 packets too, at their rate and mean size.
With simulcast (the catalog's `simulcast_layers`) the VP8 rate and size are those of the forwarded
mix, a third of the consumers on each layer: the ceiling forwards every packet it receives, so it
does not pay for receiving and decrypting the two layers the SFU drops per consumer.
SRTP is AEAD_AES_256_GCM (0x0008), the profile the load peers (aiortc) negotiate with the SFU.
"""

from __future__ import annotations

from typing import Any

import voxa_dataplane

EXTENSION_BYTES = 12  # mid + audio level / abs-send-time in one-byte form, as the load sends them


def load_shape(scenario: str, rooms: int, subscribers: int, media: dict[str, Any]) -> dict[str, Any]:
    """The ceiling's arguments for a scenario at `rooms` rooms (or `subscribers` listeners)."""
    opus = float(media.get("opus_payload_bytes_mean") or 100.0) + 8 + EXTENSION_BYTES
    if scenario == "audio-rooms":
        return {
            "rooms": rooms,
            "peers_per_room": 10,
            "publishers_per_room": 2,
            "packets_per_s": 50,
            "payload_bytes": round(opus),
        }
    if scenario == "large-room":
        return {
            "rooms": 1,
            "peers_per_room": subscribers + 2,
            "publishers_per_room": 2,
            "packets_per_s": 50,
            "payload_bytes": round(opus),
        }
    if scenario == "video-room":
        layers = media.get("simulcast_layers") or [media]
        vp8_pps = sum(float(m.get("vp8_pps", m.get("pps")) or 0.0) for m in layers) / len(layers)
        vp8_bps = sum(float(m.get("vp8_bps", m.get("bps")) or 0.0) for m in layers) / len(layers)
        vp8_bytes = vp8_bps / 8 / vp8_pps if vp8_pps else 0.0
        pps = 50 + vp8_pps
        mean = (50 * opus + vp8_pps * (vp8_bytes + 8 + EXTENSION_BYTES)) / pps
        return {
            "rooms": rooms,
            "peers_per_room": 4,
            "publishers_per_room": 4,
            "packets_per_s": round(pps),
            "payload_bytes": min(round(mean), 1200),
        }
    raise ValueError(f"unknown scenario {scenario!r}")


def measure(
    shape: dict[str, Any], seconds: float, sfu_core: int | None, load_core: int | None
) -> dict[str, Any]:
    """Run the minimal forwarder under `shape` for `seconds`; its figures plus the shape."""
    result = voxa_dataplane.ceiling(**shape, seconds=seconds, forwarder_core=sfu_core, load_core=load_core)
    expected = result["sent"] * (shape["peers_per_room"] - 1)
    loss = 100.0 * max(expected - result["received"], 0) / expected if expected else 0.0
    return {
        "ceiling_pps_per_core": round(result["pps_per_core"]),
        "ceiling_forwarded_pps": round(result["forwarded"] / max(result["elapsed_s"], 1e-9)),
        "ceiling_cpu_percent": round(100.0 * result["forwarder_cpu_s"] / max(result["elapsed_s"], 1e-9), 1),
        "ceiling_loss_percent": round(loss, 3),
        "ceiling_load": shape,
    }
