"""The Python end of audio checks: an aiortc track that sends a sine tone, a sink that records what an
aiortc remote track delivers, and a pure-Python dominant-frequency search (no numpy in the venv).

    tone = SineTrack(660)                      # pc.addTrack(tone); tone.frequency = None -> silence
    sink = AudioSink(remote_track)             # starts consuming at once
    level = await sink.measure(1.0)            # Level(hz=440.2, rms=0.35, frames=50, ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import math
import time
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame
from av.frame import Frame

SAMPLE_RATE = 48_000
PTIME_S = 0.020
FRAME_SAMPLES = int(SAMPLE_RATE * PTIME_S)


class SineTrack(MediaStreamTrack):
    """An audio track of 20 ms s16 mono 48 kHz frames holding a sine tone, paced in real time.

    Set `frequency` (Hz, or None for silence) and `amplitude` (0..1) at any time; they apply from the
    next frame on. The phase runs on, so a change of frequency does not click."""

    kind = "audio"

    def __init__(self, frequency: float | None = 660.0, amplitude: float = 0.5) -> None:
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude
        self._phase = 0.0
        self._pts = 0
        self._start: float | None = None
        self.frames_sent = 0

    def _samples(self) -> bytes:
        if self.frequency is None or self.amplitude <= 0:
            return bytes(FRAME_SAMPLES * 2)
        step = 2 * math.pi * self.frequency / SAMPLE_RATE
        peak = 32767 * min(self.amplitude, 1.0)
        phase = self._phase
        out = array("h", (round(peak * math.sin(phase + step * i)) for i in range(FRAME_SAMPLES)))
        self._phase = (phase + step * FRAME_SAMPLES) % (2 * math.pi)
        return out.tobytes()

    async def recv(self) -> Frame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += FRAME_SAMPLES
            delay = self._start + self._pts / SAMPLE_RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(self._samples())
        frame.pts = self._pts
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self.frames_sent += 1
        return frame


def mono_samples(frame: AudioFrame) -> array[int]:
    """The first channel of a packed s16 frame (what aiortc's Opus decoder produces) as int16 samples."""
    if frame.format.name != "s16":
        raise ValueError(f"expected packed s16 audio, got {frame.format.name}")
    channels = len(frame.layout.channels)
    data = array("h")
    data.frombytes(bytes(frame.planes[0])[: frame.samples * channels * 2])
    return data if channels == 1 else data[::channels]


@dataclass(frozen=True)
class Level:
    """What a stretch of audio held: dominant frequency (None when silent), RMS and peak relative to full
    scale (0..1), how many frames and samples arrived and their sample rate."""

    hz: float | None
    rms: float
    peak: float
    frames: int
    samples: int
    sample_rate: int


def rms(samples: Sequence[int]) -> float:
    if not samples:
        return 0.0
    return math.sqrt(math.fsum(float(x) * x for x in samples) / len(samples)) / 32768


def goertzel_power(samples: Sequence[float], freq_hz: float, sample_rate: int) -> float:
    """Power of `samples` at `freq_hz` (not restricted to FFT bins)."""
    coeff = 2 * math.cos(2 * math.pi * freq_hz / sample_rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    return s1 * s1 + s2 * s2 - coeff * s1 * s2


def _hann(samples: Sequence[int]) -> list[float]:
    n = len(samples)
    if n < 2:
        return [float(x) for x in samples]
    k = 2 * math.pi / (n - 1)
    return [x * (0.5 - 0.5 * math.cos(k * i)) for i, x in enumerate(samples)]


def dominant_frequency(
    samples: Sequence[int], sample_rate: int = SAMPLE_RATE, lo_hz: float = 50.0, hi_hz: float = 4000.0
) -> float | None:
    """The strongest frequency between lo_hz and hi_hz, to about 0.5 Hz, or None for digital silence.

    Coarse-to-fine Goertzel search: a grid of 1/T steps over a 100 ms window, then 0.5 Hz steps around the
    best grid point over up to one second. Pure Python: about a quarter of a second per call."""
    if len(samples) < sample_rate // 20 or not any(samples):
        return None
    coarse = _hann(samples[-sample_rate // 10 :])
    step = sample_rate / len(coarse)
    grid = [lo_hz + i * step for i in range(int((hi_hz - lo_hz) / step) + 1)]
    best = max(grid, key=lambda f: goertzel_power(coarse, f, sample_rate))
    fine = _hann(samples[-sample_rate:])
    candidates = [best + 0.5 * i for i in range(-int(2 * step), int(2 * step) + 1)]
    return max(candidates, key=lambda f: goertzel_power(fine, f, sample_rate))


def analyse(chunks: Sequence[array[int]], frames: int, sample_rate: int = SAMPLE_RATE) -> Level:
    samples: array[int] = array("h")
    for chunk in chunks:
        samples.extend(chunk)
    level = rms(samples)
    peak = max((abs(x) for x in samples), default=0) / 32768
    hz = dominant_frequency(samples, sample_rate) if level > 1e-4 else None
    return Level(hz, level, peak, frames, len(samples), sample_rate)


class AudioSink:
    """Consumes an aiortc remote audio track from creation on and keeps the last `keep_s` seconds of mono
    samples with their arrival times, so that `measure(seconds)` can analyse what arrived in a window."""

    def __init__(self, track: MediaStreamTrack, keep_s: float = 10.0) -> None:
        self.track = track
        self.frames = 0
        self.sample_rate = SAMPLE_RATE
        self.ended = False
        self._chunks: deque[tuple[float, array[int]]] = deque(maxlen=int(keep_s / PTIME_S))
        self._task = asyncio.create_task(self._run(), name=f"audio-sink-{track.id}")

    async def _run(self) -> None:
        try:
            while True:
                frame = await self.track.recv()
                if not isinstance(frame, AudioFrame):
                    continue
                self.sample_rate = frame.sample_rate
                self._chunks.append((time.monotonic(), mono_samples(frame)))
                self.frames += 1
        except MediaStreamError:
            self.ended = True

    async def measure(self, seconds: float = 1.0) -> Level:
        """Wait `seconds`, then analyse the frames that arrived meanwhile (off the event loop)."""
        start = time.monotonic()
        await asyncio.sleep(seconds)
        window = [chunk for at, chunk in list(self._chunks) if at >= start]
        return await asyncio.to_thread(analyse, window, len(window), self.sample_rate)

    async def wait_frames(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        target = self.frames + count
        while self.frames < target:
            if self.ended or time.monotonic() > deadline:
                raise AssertionError(
                    f"{count} audio frames did not arrive within {timeout} s ({self.frames})"
                )
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
