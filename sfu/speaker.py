"""Active and dominant speaker detection from RFC 6464 audio levels, without decoding any audio.

Every Opus packet from a browser carries the sender's own level measurement (ssrc-audio-level), so
the SFU only has to smooth those numbers and apply hysteresis. The detector is a plain state machine:
the caller feeds levels and calls `tick` every 50-100 ms with its clock; events come back as return
values. No timers and no callbacks, so it is deterministic and trivially testable.

Levels are handled as "loudness" = 127 - level_dbov (0 silence, 127 full scale): louder is larger,
and silence -- including no packets at all (DTX, mute, a stalled client) -- decays towards 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "DominantSpeakerChanged",
    "SpeakerConfig",
    "SpeakerDetector",
    "SpeakerEvent",
    "SpeakingStarted",
    "SpeakingStopped",
]


@dataclass(frozen=True, slots=True)
class SpeakerConfig:
    """Thresholds and time constants; the defaults suit browser audio with AGC (speech ~ -20..-40 dBov).

    Speaking starts once the smoothed level has been at or above `start_dbov` (i.e. louder, a smaller
    dBov number) for `start_ms`, and stops once it has been below `stop_dbov` for `stop_ms`; the gap
    between the two thresholds plus the two hold times are the hysteresis against flapping.
    """

    start_dbov: int = 50
    stop_dbov: int = 56
    start_ms: int = 80
    stop_ms: int = 400
    smoothing_ms: float = 40.0
    """Time constant of the level smoothing used for speaking detection."""
    max_packet_ms: int = 60
    """Longest stretch of audio one packet is taken to describe; longer gaps before it count as silence."""
    silence_after_ms: int = 100
    """`tick` treats a participant without packets for this long as silent (DTX, mute, loss)."""
    use_voice_activity: bool = False
    """Count a packet as silence unless its V bit is set (only if the senders' VAD is trusted)."""
    dominance_smoothing_ms: float = 300.0
    """Time constant of the slower level used to compare speakers."""
    dominance_margin_db: float = 6.0
    """A challenger must be this much louder than the dominant speaker..."""
    dominance_min_ms: int = 500
    """...for this long before the dominant speaker changes."""

    def __post_init__(self) -> None:
        if not 0 <= self.start_dbov <= self.stop_dbov <= 127:
            raise ValueError("need 0 <= start_dbov <= stop_dbov <= 127")
        if self.smoothing_ms <= 0 or self.dominance_smoothing_ms <= 0:
            raise ValueError("smoothing time constants must be positive")


class SpeakingStarted(NamedTuple):
    participant_id: str
    at_ms: int


class SpeakingStopped(NamedTuple):
    participant_id: str
    at_ms: int


class DominantSpeakerChanged(NamedTuple):
    participant_id: str | None  # None: the dominant speaker left and nobody is speaking
    at_ms: int


SpeakerEvent = SpeakingStarted | SpeakingStopped | DominantSpeakerChanged

_NO_EVENTS: tuple[SpeakerEvent, ...] = ()
_FIRST_PACKET_MS = 20  # a participant's first packet is taken to describe one usual Opus frame


class _Participant:
    __slots__ = ("fast", "last_ms", "last_packet_ms", "pid", "since_ms", "slow", "speaking")

    def __init__(self, pid: str) -> None:
        self.pid = pid
        self.fast = 0.0  # smoothed loudness for speaking detection
        self.slow = 0.0  # smoothed loudness for dominance
        self.last_ms = -1  # time the levels were last brought up to date (-1: never)
        self.last_packet_ms = -1
        self.since_ms = -1  # when the level crossed the threshold that would flip `speaking`
        self.speaking = False


class SpeakerDetector:
    """Speaking state of every participant of one router, and its dominant speaker.

    `feed` once per incoming audio packet that carries a level, `tick` periodically; both return the
    events they caused (usually an empty tuple). The dominant speaker is the loudest (slow-smoothed)
    speaking participant; it changes when it stops speaking and someone else speaks, or when another
    speaker has been `dominance_margin_db` louder for `dominance_min_ms`. It is kept while everyone is
    silent, so the UI keeps showing the last person who spoke.
    """

    def __init__(self, config: SpeakerConfig | None = None) -> None:
        self.config = config = config or SpeakerConfig()
        self._parts: dict[str, _Participant] = {}
        self._start_loud = 127 - config.start_dbov
        self._stop_loud = 127 - config.stop_dbov
        self._tau_fast = config.smoothing_ms
        self._tau_slow = config.dominance_smoothing_ms
        self._dominant: _Participant | None = None
        self._challenger: _Participant | None = None
        self._challenger_since = 0

    @property
    def dominant(self) -> str | None:
        """Current dominant speaker (kept after they fall silent), or None."""
        return self._dominant.pid if self._dominant is not None else None

    @property
    def speaking(self) -> frozenset[str]:
        """Participants currently speaking."""
        return frozenset(p.pid for p in self._parts.values() if p.speaking)

    def is_speaking(self, participant_id: str) -> bool:
        """True if the participant is currently speaking."""
        p = self._parts.get(participant_id)
        return p is not None and p.speaking

    def level(self, participant_id: str) -> float:
        """Smoothed level in -dBov (127 = silence): for a UI level meter."""
        p = self._parts.get(participant_id)
        return 127.0 if p is None else 127.0 - p.fast

    def add(self, participant_id: str) -> None:
        """Start tracking a participant (also done implicitly by its first `feed`)."""
        if participant_id not in self._parts:
            self._parts[participant_id] = _Participant(participant_id)

    def remove(self, participant_id: str, now_ms: int) -> tuple[SpeakerEvent, ...]:
        """Stop tracking a participant; if they were dominant, the next speaker (or None) takes over."""
        p = self._parts.pop(participant_id, None)
        if p is None:
            return _NO_EVENTS
        events: list[SpeakerEvent] = []
        if p.speaking:
            events.append(SpeakingStopped(p.pid, now_ms))
        if self._challenger is p:
            self._challenger = None
        if self._dominant is p:
            self._dominant = None
            self._elect(now_ms, events)
            if self._dominant is None:
                events.append(DominantSpeakerChanged(None, now_ms))
        return tuple(events)

    def feed(
        self, participant_id: str, now_ms: int, level_dbov: int, voice_activity: bool
    ) -> tuple[SpeakerEvent, ...]:
        """One packet's RFC 6464 level (0 loudest .. 127 silence) and V bit, at `now_ms`."""
        p = self._parts.get(participant_id)
        if p is None:
            p = self._parts[participant_id] = _Participant(participant_id)
        loud = 0 if self.config.use_voice_activity and not voice_activity else 127 - level_dbov
        last = p.last_ms
        if last < 0:
            covered = _FIRST_PACKET_MS
        else:
            covered = self.config.max_packet_ms
            dt = now_ms - last
            if dt < covered:
                covered = dt if dt > 0 else 0
            elif dt > covered:  # the time before this packet's own stretch of audio was silence
                self._decay(p, dt - covered)
        if covered:
            a = 1.0 - math.exp(-covered / self._tau_fast)
            p.fast += (loud - p.fast) * a
            a = 1.0 - math.exp(-covered / self._tau_slow)
            p.slow += (loud - p.slow) * a
        p.last_ms = now_ms
        p.last_packet_ms = now_ms
        if self._transition(p, now_ms):
            events: list[SpeakerEvent] = [
                SpeakingStarted(p.pid, now_ms) if p.speaking else SpeakingStopped(p.pid, now_ms)
            ]
            self._elect(now_ms, events)
            return tuple(events)
        return _NO_EVENTS

    def tick(self, now_ms: int) -> tuple[SpeakerEvent, ...]:
        """Let time pass: silent participants decay and stop speaking; re-evaluate the dominant speaker."""
        events: list[SpeakerEvent] = []
        silence_after = self.config.silence_after_ms
        for p in self._parts.values():
            if p.last_ms < 0:
                continue
            if now_ms - p.last_packet_ms >= silence_after and now_ms > p.last_ms:
                self._decay(p, now_ms - p.last_ms)
                p.last_ms = now_ms
            if self._transition(p, now_ms):
                events.append(
                    SpeakingStarted(p.pid, now_ms) if p.speaking else SpeakingStopped(p.pid, now_ms)
                )
        self._elect(now_ms, events)
        return tuple(events) if events else _NO_EVENTS

    def _decay(self, p: _Participant, dt: int) -> None:
        p.fast *= math.exp(-dt / self._tau_fast)
        p.slow *= math.exp(-dt / self._tau_slow)

    def _transition(self, p: _Participant, now_ms: int) -> bool:
        """Apply the threshold + hold-time hysteresis; True if `p.speaking` flipped."""
        cfg = self.config
        if p.speaking:
            if p.fast >= self._stop_loud:
                p.since_ms = -1
                return False
            if p.since_ms < 0:
                p.since_ms = now_ms
            if now_ms - p.since_ms < cfg.stop_ms:
                return False
        else:
            if p.fast < self._start_loud:
                p.since_ms = -1
                return False
            if p.since_ms < 0:
                p.since_ms = now_ms
            if now_ms - p.since_ms < cfg.start_ms:
                return False
        p.speaking = not p.speaking
        p.since_ms = -1
        return True

    def _elect(self, now_ms: int, events: list[SpeakerEvent]) -> None:
        best: _Participant | None = None
        for p in self._parts.values():
            if p.speaking and (best is None or p.slow > best.slow):
                best = p
        dom = self._dominant
        if best is None or best is dom:
            self._challenger = None
            return
        if dom is not None and dom.speaking:
            if best.slow < dom.slow + self.config.dominance_margin_db:
                self._challenger = None
                return
            if self._challenger is not best:
                self._challenger = best
                self._challenger_since = now_ms
                return
            if now_ms - self._challenger_since < self.config.dominance_min_ms:
                return
        self._dominant = best
        self._challenger = None
        events.append(DominantSpeakerChanged(best.pid, now_ms))
