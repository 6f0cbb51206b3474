"""Speaking and dominant-speaker detection on synthetic RFC 6464 level sequences."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxa.sfu.speaker import (
    DominantSpeakerChanged,
    SpeakerConfig,
    SpeakerDetector,
    SpeakerEvent,
    SpeakingStarted,
    SpeakingStopped,
)

SILENCE = 127
TONE = 20  # -20 dBov: ordinary speech after AGC
Level = Callable[[int], int | None]  # time -> level in -dBov, or None for "no packet" (DTX, mute)


def run(
    det: SpeakerDetector,
    sources: dict[str, Level],
    start_ms: int,
    end_ms: int,
    tick_ms: int = 50,
    frame_ms: int = 20,
) -> list[SpeakerEvent]:
    """Feed every source one packet per frame and tick the detector, as the router would."""
    events: list[SpeakerEvent] = []
    for now in range(start_ms, end_ms, 10):
        if now % frame_ms == 0:
            for pid, level in sources.items():
                lv = level(now)
                if lv is not None:
                    events.extend(det.feed(pid, now, lv, lv < 60))
        if now % tick_ms == 0:
            events.extend(det.tick(now))
    return events


def first(events: list[SpeakerEvent], kind: type, pid: str | None = None) -> int:
    for e in events:
        if isinstance(e, kind) and (pid is None or e.participant_id == pid):
            return e.at_ms
    raise AssertionError(f"no {kind.__name__} for {pid} in {events}")


def step(at_ms: int, before: int | None, after: int | None) -> Level:
    return lambda t: before if t < at_ms else after


@pytest.mark.parametrize("level", [10, 20, 35, 45])
def test_tone_start_detected_within_300_ms(level: int) -> None:
    det = SpeakerDetector()
    events = run(det, {"a": step(1000, SILENCE, level)}, 0, 2000)
    started = first(events, SpeakingStarted, "a")
    assert 1000 <= started <= 1300
    assert det.is_speaking("a")
    assert det.speaking == frozenset({"a"})
    assert first(events, DominantSpeakerChanged) == started
    assert det.dominant == "a"


def test_tone_from_first_packet_detected() -> None:
    det = SpeakerDetector()
    events = run(det, {"a": lambda t: TONE}, 0, 400)
    assert first(events, SpeakingStarted, "a") <= 300


def test_quiet_sound_and_clicks_are_not_speech() -> None:
    det = SpeakerDetector()
    events = run(det, {"quiet": lambda t: 70, "click": lambda t: 0 if t == 500 else SILENCE}, 0, 3000)
    assert events == []
    assert det.speaking == frozenset()
    assert det.dominant is None


def test_silence_packets_stop_speaking() -> None:
    det = SpeakerDetector()
    events = run(det, {"a": step(1000, TONE, SILENCE)}, 0, 3000)
    stopped = first(events, SpeakingStopped, "a")
    assert 1300 <= stopped <= 1700
    assert not det.is_speaking("a")
    assert det.dominant == "a"  # the last speaker stays dominant through the silence


def test_no_packets_dtx_or_mute_stops_speaking() -> None:
    det = SpeakerDetector()
    events = run(det, {"a": step(1000, TONE, None)}, 0, 3000)
    stopped = first(events, SpeakingStopped, "a")
    assert 1300 <= stopped <= 1800
    assert det.level("a") > 120


def test_dtx_comfort_noise_every_400_ms_stops_speaking() -> None:
    det = SpeakerDetector()
    sparse: Level = lambda t: TONE if t < 1000 else (90 if t % 400 == 0 else None)  # noqa: E731
    events = run(det, {"a": sparse}, 0, 3000)
    assert 1300 <= first(events, SpeakingStopped, "a") <= 1800
    assert sum(isinstance(e, SpeakingStarted) for e in events) == 1


def test_short_pauses_between_words_do_not_stop_speaking() -> None:
    det = SpeakerDetector()
    words: Level = lambda t: TONE if (t // 100) % 4 != 3 else SILENCE  # noqa: E731 - 100 ms gaps
    events = run(det, {"a": words}, 0, 5000)
    assert [type(e) for e in events] == [SpeakingStarted, DominantSpeakerChanged]


def test_hysteresis_prevents_flapping_around_threshold() -> None:
    cfg = SpeakerConfig()
    det = SpeakerDetector(cfg)
    # a level wandering +-4 dB around the start threshold, jittering per packet
    hover: Level = lambda t: cfg.start_dbov + round(4 * math.sin(t / 170.0)) + (1 if t % 40 else -1)  # noqa: E731
    events = run(det, {"a": hover}, 0, 20_000)
    starts = [e for e in events if isinstance(e, SpeakingStarted)]
    stops = [e for e in events if isinstance(e, SpeakingStopped)]
    assert len(starts) == 1
    assert stops == []


def test_without_hysteresis_the_same_level_flaps() -> None:
    """The control for the test above: equal thresholds and no hold times do flap on that signal."""
    cfg = SpeakerConfig(stop_dbov=SpeakerConfig().start_dbov, start_ms=0, stop_ms=0)
    det = SpeakerDetector(cfg)
    hover: Level = lambda t: cfg.start_dbov + round(4 * math.sin(t / 170.0)) + (1 if t % 40 else -1)  # noqa: E731
    events = run(det, {"a": hover}, 0, 20_000)
    assert sum(isinstance(e, SpeakingStarted) for e in events) > 10


def test_hysteresis_no_flapping_around_stop_threshold() -> None:
    cfg = SpeakerConfig()
    det = SpeakerDetector(cfg)
    hover: Level = lambda t: cfg.stop_dbov + round(3 * math.sin(t / 130.0))  # noqa: E731
    events = run(det, {"a": hover}, 0, 10_000)
    assert events == []  # never loud enough to start


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 127), min_size=10, max_size=300), st.integers(0, 127))
def test_events_alternate_and_state_matches(levels: list[int], center: int) -> None:
    """Whatever the levels, starts and stops alternate and the final state matches the last event."""
    det = SpeakerDetector()
    events = run(det, {"a": lambda t: levels[(t // 20) % len(levels)]}, 0, 20 * len(levels) + 1000)
    kinds = [type(e) for e in events if not isinstance(e, DominantSpeakerChanged)]
    for i, k in enumerate(kinds):
        assert k is (SpeakingStarted if i % 2 == 0 else SpeakingStopped)
    assert det.is_speaking("a") == (bool(kinds) and kinds[-1] is SpeakingStarted)
    times = [e.at_ms for e in events]
    assert times == sorted(times)


def test_dominant_follows_the_louder_speaker() -> None:
    det = SpeakerDetector()
    sources: dict[str, Level] = {"quiet": lambda t: 40, "loud": step(2000, SILENCE, 10)}
    events = run(det, sources, 0, 6000)
    assert first(events, DominantSpeakerChanged) < 300
    changes = [e for e in events if isinstance(e, DominantSpeakerChanged)]
    assert [e.participant_id for e in changes] == ["quiet", "loud"]
    assert 2400 <= changes[1].at_ms <= 3500  # needs the margin for dominance_min_ms
    assert det.dominant == "loud"
    assert det.speaking == frozenset({"quiet", "loud"})


def test_dominant_does_not_switch_within_margin() -> None:
    det = SpeakerDetector()
    events = run(det, {"a": lambda t: 30, "b": step(1000, SILENCE, 27)}, 0, 8000)
    changes = [e.participant_id for e in events if isinstance(e, DominantSpeakerChanged)]
    assert changes == ["a"]


def test_dominant_does_not_switch_on_a_short_burst() -> None:
    det = SpeakerDetector()
    burst = step(3000, SILENCE, 5)
    sources: dict[str, Level] = {"a": lambda t: 35, "b": lambda t: burst(t) if t < 3300 else SILENCE}
    events = run(det, sources, 0, 6000)
    assert [e.participant_id for e in events if isinstance(e, DominantSpeakerChanged)] == ["a"]
    assert first(events, SpeakingStarted, "b") > 3000


def test_dominant_hands_over_when_it_stops() -> None:
    det = SpeakerDetector()
    sources: dict[str, Level] = {"a": step(3000, 10, SILENCE), "b": lambda t: 40}
    events = run(det, sources, 0, 6000)
    changes = [e for e in events if isinstance(e, DominantSpeakerChanged)]
    assert changes[0].participant_id in ("a", "b")
    assert changes[-1].participant_id == "b"
    assert changes[-1].at_ms == first(events, SpeakingStopped, "a")


def test_remove_participant() -> None:
    det = SpeakerDetector()
    run(det, {"a": lambda t: 10, "b": lambda t: 40}, 0, 3000)
    dominant = det.dominant
    assert dominant in ("a", "b")
    other = "b" if dominant == "a" else "a"
    assert det.remove("nobody", 3000) == ()
    events = det.remove(dominant, 3000)
    assert isinstance(events[0], SpeakingStopped)
    assert events[-1] == DominantSpeakerChanged(other, 3000)
    events = det.remove(other, 3010)
    assert events == (SpeakingStopped(other, 3010), DominantSpeakerChanged(None, 3010))
    assert det.dominant is None
    assert det.level(other) == 127.0


def test_voice_activity_flag_can_gate_levels() -> None:
    det = SpeakerDetector(SpeakerConfig(use_voice_activity=True))
    det.add("a")
    for t in range(0, 2000, 20):
        assert det.feed("a", t, TONE, False) == ()
        det.tick(t)
    assert not det.is_speaking("a")
    events = [e for t in range(2000, 2400, 20) for e in det.feed("a", t, TONE, True)]
    assert isinstance(events[0], SpeakingStarted)


def test_tick_without_participants_and_unknown_queries() -> None:
    det = SpeakerDetector()
    assert det.tick(0) == ()
    det.add("a")
    assert det.tick(100) == ()
    assert not det.is_speaking("zzz")
    assert det.level("a") == 127.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"start_dbov": 60, "stop_dbov": 50},
        {"stop_dbov": 200},
        {"smoothing_ms": 0},
        {"dominance_smoothing_ms": -1},
    ],
)
def test_config_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SpeakerConfig(**kwargs)  # type: ignore[arg-type]
