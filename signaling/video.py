"""Video in a room, pure: what the client says about its sending m-sections (`sources`), what it asks of
each video it receives (`video_quality`), and what the SFU reports back (a participant's published
`tracks` for presence, the `publish_layers` it wants encoded). No I/O here; the voice channel and its
media session (voice.py, session.py) do the relaying. The wire formats are in docs/protocol.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from voxa.signaling.connection import ChannelError

SOURCES = frozenset({"microphone", "camera", "screen", "screen_audio"})
STREAM_SOURCES = frozenset({"screen", "screen_audio"})
"""The sources that need the `stream` permission (screen share, Discord's "Go Live")."""
MAX_SOURCES = 32
"""More m-sections than one client sends (microphone, camera, screen, its audio) with room to spare;
the bound keeps a hostile offer from making signaling store and forward a large map."""
MID = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")
TRACK = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
"""A producer id as the SFU names it (`<session_id>:<mid>`): the characters its URL routes accept."""
MAX_DIMENSION = 16384
MAX_LAYERS = 4
RID = re.compile(r"^[A-Za-z0-9_\-]{1,16}$")


def parse_sources(value: object) -> dict[str, str] | None:
    """The `sources` of an `sdp` offer (`{mid: source}`), or None when absent; ChannelError when malformed."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ChannelError("sources must be an object {mid: source}")
    if len(value) > MAX_SOURCES:
        raise ChannelError(f"sources names at most {MAX_SOURCES} m-sections")
    out: dict[str, str] = {}
    for mid, source in value.items():
        if not isinstance(mid, str) or not MID.match(mid):
            raise ChannelError("sources keys must be m-section ids (a=mid)")
        if source not in SOURCES:
            raise ChannelError(f"source of mid {mid} must be one of {', '.join(sorted(SOURCES))}")
        out[mid] = str(source)
    return out


def streams(sources: Mapping[str, str]) -> bool:
    """Whether these sources include a screen share (which needs the `stream` permission)."""
    return any(source in STREAM_SOURCES for source in sources.values())


def parse_video_quality(payload: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(track, SFU body) of a `video_quality` push. `max_width`/`max_height` are what the tile shows, in
    device pixels (null or 0: no cap); `paused` stops the video altogether (a hidden or off-screen tile)."""
    track = payload.get("track")
    if not isinstance(track, str) or not TRACK.match(track):
        raise ChannelError("video_quality needs a track id (the msid track id of the received video)")
    body: dict[str, Any] = {}
    for name in ("max_width", "max_height"):
        size = payload.get(name)
        # bool is an int subclass in Python; JSON true is not a size.
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise ChannelError(f"{name} must be a non-negative integer or null")
        body[name] = min(size, MAX_DIMENSION) if size is not None else None
    paused = payload.get("paused", False)
    if not isinstance(paused, bool):
        raise ChannelError("paused must be a boolean")
    body["paused"] = paused
    return track, body


def presence_tracks(tracks: object) -> list[dict[str, Any]]:
    """A participant's published tracks as presence shows them (`track`, `kind`, `source`, `layers`),
    from the SFU's `tracks` event; malformed entries are dropped (the SFU is trusted, but presence is
    what every client parses)."""
    if not isinstance(tracks, list):
        return []
    out: list[dict[str, Any]] = []
    for entry in tracks[:MAX_SOURCES]:
        if not isinstance(entry, dict):
            continue
        track, kind, source = entry.get("track"), entry.get("kind"), entry.get("source")
        if not isinstance(track, str) or not TRACK.match(track) or kind not in ("audio", "video"):
            continue
        if source not in SOURCES:
            source = "microphone" if kind == "audio" else "camera"
        raw_layers = entry.get("layers")
        layers = (
            [r for r in raw_layers[:MAX_LAYERS] if isinstance(r, str) and RID.match(r)]
            if isinstance(raw_layers, list)
            else []
        )
        out.append({"track": track, "kind": kind, "source": source, "layers": layers})
    return out


def streaming(tracks: list[dict[str, Any]]) -> bool:
    """Presence `streaming`: the participant publishes a screen share."""
    return any(t["source"] == "screen" for t in tracks)


def publish_layers(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `publish_layers` push (`{mid, active: {rid: bool}}`) for the SFU's event, or None if malformed."""
    mid, active = event.get("mid"), event.get("active")
    if not isinstance(mid, str) or not isinstance(active, dict):
        return None
    layers = {rid: value for rid, value in active.items() if isinstance(rid, str) and isinstance(value, bool)}
    return {"mid": mid, "active": layers}
