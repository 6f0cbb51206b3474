"""signaling/video.py, pure: screen-share sources, `video_quality` payloads, the SFU's `tracks` as
presence shows them and its `publish_layers` as the publisher receives it."""

from __future__ import annotations

from typing import Any

import pytest

from voxa.signaling.connection import ChannelError
from voxa.signaling.video import (
    MAX_DIMENSION,
    MAX_SOURCES,
    parse_sources,
    parse_video_quality,
    presence_tracks,
    publish_layers,
    streaming,
    streams,
)


def test_sources() -> None:
    assert parse_sources(None) is None
    assert parse_sources({"0": "microphone", "1": "camera"}) == {"0": "microphone", "1": "camera"}
    assert not streams({"0": "microphone", "1": "camera"})
    assert streams({"2": "screen"}) and streams({"3": "screen_audio"})
    with pytest.raises(ChannelError, match="at most"):
        parse_sources({str(i): "camera" for i in range(MAX_SOURCES + 1)})
    malformed: list[object] = [[], {"0": None}, {"0": "Camera"}, {"a b": "camera"}, {"x" * 33: "camera"}]
    for bad in malformed:
        with pytest.raises(ChannelError):
            parse_sources(bad)


def test_video_quality() -> None:
    assert parse_video_quality({"track": "s1:1", "max_width": 640, "max_height": 360, "paused": False}) == (
        "s1:1",
        {"max_width": 640, "max_height": 360, "paused": False},
    )
    # Everything but the track is optional; sizes are capped, 0 passes as "no cap".
    assert parse_video_quality({"track": "s1:1"}) == (
        "s1:1",
        {"max_width": None, "max_height": None, "paused": False},
    )
    assert parse_video_quality({"track": "s1:1", "max_width": 10**9, "max_height": 0})[1] == {
        "max_width": MAX_DIMENSION,
        "max_height": 0,
        "paused": False,
    }
    bad: list[dict[str, Any]] = [
        {},
        {"track": 5},
        {"track": ""},
        {"track": "x" * 129},
        {"track": "s1:1", "max_width": False},
        {"track": "s1:1", "max_height": -5},
        {"track": "s1:1", "paused": 1},
        {"track": "s1:1", "paused": None},
    ]
    for payload in bad:
        with pytest.raises(ChannelError):
            parse_video_quality(payload)


def test_presence_tracks_keep_what_presence_shows_and_drop_the_malformed() -> None:
    event = [
        {"track": "s:0", "mid": "0", "kind": "audio", "source": "microphone", "layers": []},
        {"track": "s:1", "mid": "1", "kind": "video", "source": "camera", "layers": ["q", "h", "f", 7]},
        {"track": "s:2", "kind": "video", "source": "hologram"},  # unknown source: the kind's default
        {"track": "s:3", "kind": "data"},
        {"kind": "video"},
        "s:4",
    ]
    tracks = presence_tracks(event)
    assert tracks == [
        {"track": "s:0", "kind": "audio", "source": "microphone", "layers": []},
        {"track": "s:1", "kind": "video", "source": "camera", "layers": ["q", "h", "f"]},
        {"track": "s:2", "kind": "video", "source": "camera", "layers": []},
    ]
    assert not streaming(tracks)
    assert streaming(presence_tracks([{"track": "s:2", "kind": "video", "source": "screen"}]))
    assert presence_tracks(None) == [] and presence_tracks({"track": "s:0"}) == []


def test_publish_layers() -> None:
    event = {"type": "publish_layers", "peer": "s", "mid": "1", "active": {"q": True, "h": False, "f": 1}}
    assert publish_layers(event) == {"mid": "1", "active": {"q": True, "h": False}}
    assert publish_layers({"mid": 1, "active": {}}) is None
    assert publish_layers({"mid": "1"}) is None
