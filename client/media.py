"""Audio for Voxa's Python client, its tests, the benchmarks and the soak: aiortc tracks that send a
sine tone or a WAV file, a sink that consumes what an aiortc remote track delivers, WAV recording (one
track, or a mix of many on a wall-clock timeline) and a pure-Python dominant-frequency search (no numpy
needed). `sine_samples` and `dominant_frequency` are the one tone generator and analyser of Python
code here; the pages have theirs in signaling/static/tone.js.

    tone = SineTrack(660)                      # pc.addTrack(tone); tone.frequency = None -> silence
    music = WavTrack("in.wav", loop=True)      # any 16-bit PCM WAV, sent as 48 kHz mono
    sink = AudioSink(remote_track)             # starts consuming at once
    level = await sink.measure(1.0)            # Level(hz=440.2, rms=0.35, frames=50, ...)
    recorder = WavRecorder(remote_track, "out.wav"); ...; await recorder.stop()

Every sending track here is paced in real time (20 ms frames) and keeps its timestamps monotonic when
asked to start at a given `pts`: aiortc keeps one Opus encoder per sender across `replaceTrack`, and a
new track whose timestamps restart at zero would run the encoder's clock backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import math
import time
import wave
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, AudioResampler
from av.frame import Frame

SAMPLE_RATE = 48_000
PTIME_S = 0.020
FRAME_SAMPLES = int(SAMPLE_RATE * PTIME_S)
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)

SamplesListener = Callable[["array[int]", int], None]
"""Called with each frame's mono int16 samples and their sample rate."""


# --- sending --------------------------------------------------------------------------------------------
class PacedAudioTrack(MediaStreamTrack):
    """A track of 20 ms s16 mono 48 kHz frames delivered in real time; subclasses say what they hold.

    `pts` is where the first frame's timestamp starts (in samples): pass the previous track's `next_pts`
    plus the time it was off when replacing a sender's track, so the sender's encoder clock never goes
    backwards. `readyState` is checked before waiting, not after: a frame that was already being paced
    when the track was stopped is still delivered, so a sender whose track is replaced with None first
    and stopped second never sees MediaStreamError (which would end aiortc's sender loop for good)."""

    kind = "audio"

    def __init__(self, *, pts: int = 0) -> None:
        super().__init__()
        self._first_pts = pts
        self._pts = pts
        self._start: float | None = None
        self.frames_sent = 0

    @property
    def next_pts(self) -> int:
        """The timestamp the next frame will carry."""
        return self._pts if self._start is None else self._pts + FRAME_SAMPLES

    def _samples(self) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    async def recv(self) -> Frame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += FRAME_SAMPLES
            delay = self._start + (self._pts - self._first_pts) / SAMPLE_RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(self._samples())
        frame.pts = self._pts
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = TIME_BASE
        self.frames_sent += 1
        return frame


def sine_samples(
    frequency: float,
    count: int,
    amplitude: float = 0.5,
    *,
    sample_rate: int = SAMPLE_RATE,
    phase: float = 0.0,
) -> array[int]:
    """`count` signed 16-bit samples of a sine of `frequency` Hz starting at `phase` (radians): the one
    tone generator of the client, its tests, the benchmarks and the browser tests' WAV files."""
    step = 2 * math.pi * frequency / sample_rate
    peak = 32767 * min(max(amplitude, 0.0), 1.0)
    return array("h", (round(peak * math.sin(phase + step * i)) for i in range(count)))


class SineTrack(PacedAudioTrack):
    """A sine tone, paced in real time.

    Set `frequency` (Hz, or None for silence) and `amplitude` (0..1) at any time; they apply from the
    next frame on. The phase runs on, so a change of frequency does not click.

    A whole-Hz tone repeats exactly every second, so its second is computed once and each frame is a
    slice of it (load generators run hundreds of these); other frequencies are computed per frame."""

    def __init__(self, frequency: float | None = 660.0, amplitude: float = 0.5, *, pts: int = 0) -> None:
        super().__init__(pts=pts)
        self.frequency = frequency
        self.amplitude = amplitude
        self._phase = 0.0
        self._table: tuple[float, float, bytes] | None = None
        """(frequency, amplitude, one second and one frame of samples) of the current whole-Hz tone."""
        self._pos = 0
        """Where in the table the next frame starts (samples)."""

    def _samples(self) -> bytes:
        frequency, amplitude = self.frequency, self.amplitude
        if frequency is None or amplitude <= 0:
            return bytes(FRAME_SAMPLES * 2)
        step = 2 * math.pi * frequency / SAMPLE_RATE
        if frequency != int(frequency) or not 0 < frequency < SAMPLE_RATE / 2:
            phase = self._phase
            self._phase = (phase + step * FRAME_SAMPLES) % (2 * math.pi)
            self._table = None
            return sine_samples(frequency, FRAME_SAMPLES, amplitude, phase=phase).tobytes()
        table = self._table
        if table is None or table[0] != frequency or table[1] != amplitude:
            # One second, plus one frame so that every frame is a single slice; the tone goes on from
            # the table's sample nearest to the phase reached so far.
            second = sine_samples(frequency, SAMPLE_RATE + FRAME_SAMPLES, amplitude).tobytes()
            table = self._table = (frequency, amplitude, second)
            self._pos = round(self._phase / step) % SAMPLE_RATE
        pos = self._pos
        self._pos = (pos + FRAME_SAMPLES) % SAMPLE_RATE
        self._phase = (step * self._pos) % (2 * math.pi)
        return table[2][2 * pos : 2 * (pos + FRAME_SAMPLES)]


class WavTrack(PacedAudioTrack):
    """A 16-bit PCM WAV file (any rate, mono or stereo) sent as 48 kHz mono, paced in real time.

    The file is decoded and converted once, up front (`read_wav_48k`). After its end the track sends
    silence (it stays live, so the sender keeps going), or starts over with `loop=True`; `finished` is
    set when the end was first reached. `position` (in samples) is where the next frame starts: pass it
    as `start` to a new track to resume, e.g. after a mute."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        loop: bool = False,
        start: int = 0,
        pts: int = 0,
        samples: array[int] | None = None,
    ) -> None:
        super().__init__(pts=pts)
        if samples is None:
            if path is None:
                raise ValueError("WavTrack needs a path or samples")
            samples = read_wav_48k(path)
        self.path = Path(path) if path is not None else None
        self.pcm = samples
        self.loop = loop
        self.position = max(0, start)
        self.finished = asyncio.Event()
        if self.position >= len(self.pcm):
            self.finished.set()

    def _samples(self) -> bytes:
        total = len(self.pcm)
        out = array("h")
        while len(out) < FRAME_SAMPLES:
            if self.position >= total:
                self.finished.set()
                if not self.loop or total == 0:
                    out.extend([0] * (FRAME_SAMPLES - len(out)))
                    break
                self.position = 0
            take = min(FRAME_SAMPLES - len(out), total - self.position)
            out.extend(self.pcm[self.position : self.position + take])
            self.position += take
        return out.tobytes()


# --- WAV files ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WavAudio:
    """Interleaved int16 samples of a WAV file as stored: `channels` samples per frame."""

    samples: array[int]
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.channels / self.sample_rate if self.sample_rate else 0.0

    def mono(self) -> array[int]:
        """The first channel (what Voxa's mono path sends and records)."""
        return self.samples if self.channels == 1 else self.samples[:: self.channels]


def read_wav(path: str | Path) -> WavAudio:
    """Read a 16-bit PCM WAV file; ValueError for anything else (8/24/32-bit, float, compressed)."""
    try:
        with wave.open(str(path), "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            if width != 2:
                raise ValueError(f"{path}: only 16-bit PCM WAV is supported, got {8 * width}-bit")
            data = wav.readframes(wav.getnframes())
    except wave.Error as exc:
        raise ValueError(f"{path}: not a PCM WAV file ({exc})") from None
    samples = array("h")
    samples.frombytes(data[: len(data) - len(data) % 2])
    # WAV is little-endian; array uses the machine's order.
    if array("h", [1]).tobytes() != b"\x01\x00":  # pragma: no cover - big-endian hosts
        samples.byteswap()
    return WavAudio(samples, rate, channels)


def write_wav(path: str | Path, samples: Sequence[int], sample_rate: int = SAMPLE_RATE) -> Path:
    """Write mono int16 samples as a 16-bit PCM WAV file; returns the path."""
    out = Path(path)
    data = samples if isinstance(samples, array) and samples.typecode == "h" else array("h", samples)
    with wave.open(str(out), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(_le_bytes(data))
    return out


def _le_bytes(samples: array[int]) -> bytes:
    if array("h", [1]).tobytes() == b"\x01\x00":
        return samples.tobytes()
    swapped = array("h", samples)  # pragma: no cover - big-endian hosts
    swapped.byteswap()  # pragma: no cover
    return swapped.tobytes()  # pragma: no cover


def to_48k_mono(audio: WavAudio) -> array[int]:
    """Convert to 48 kHz mono with PyAV's resampler (libswresample: band-limited, channels down-mixed)."""
    if audio.sample_rate == SAMPLE_RATE and audio.channels == 1:
        return array("h", audio.samples)
    if audio.channels not in (1, 2):
        raise ValueError(f"only mono or stereo WAV is supported, got {audio.channels} channels")
    layout = "mono" if audio.channels == 1 else "stereo"
    resampler = AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    out = array("h")
    chunk = 4096  # frames per conversion step
    step = chunk * audio.channels
    pts = 0
    for start in range(0, len(audio.samples), step):
        piece = audio.samples[start : start + step]
        count = len(piece) // audio.channels
        if count == 0:
            break
        frame = AudioFrame(format="s16", layout=layout, samples=count)
        frame.planes[0].update(piece[: count * audio.channels].tobytes())
        frame.sample_rate = audio.sample_rate
        frame.time_base = fractions.Fraction(1, audio.sample_rate)
        frame.pts = pts
        pts += count
        for converted in resampler.resample(frame):
            out.extend(_frame_samples(converted))
    for converted in resampler.resample(None):
        out.extend(_frame_samples(converted))
    return out


def _frame_samples(frame: AudioFrame) -> array[int]:
    data = array("h")
    data.frombytes(bytes(frame.planes[0])[: frame.samples * 2])
    return data


def read_wav_48k(path: str | Path) -> array[int]:
    """A 16-bit PCM WAV file as 48 kHz mono int16 samples, ready for WavTrack."""
    return to_48k_mono(read_wav(path))


def resample_linear(samples: Sequence[int], rate: int, target: int = SAMPLE_RATE) -> array[int]:
    """Linear-interpolation resampling, for the odd decoded frame not at 48 kHz (aiortc's Opus decoder
    always gives 48 kHz, so this is a safety net rather than a quality path)."""
    if rate == target or not samples:
        return array("h", samples)
    count = max(1, round(len(samples) * target / rate))
    ratio = rate / target
    last = len(samples) - 1
    out = array("h")
    for i in range(count):
        pos = i * ratio
        j = min(int(pos), last)
        frac = pos - j
        nxt = samples[min(j + 1, last)]
        out.append(round(samples[j] + (nxt - samples[j]) * frac))
    return out


# --- receiving ------------------------------------------------------------------------------------------
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
    samples with their arrival times, so that `measure(seconds)` can analyse what arrived in a window.

    A remote track must be read continuously or aiortc queues its decoded frames without bound, so the
    sink always reads; `enabled = False` (deafened) drops what arrives instead of keeping it.
    `listeners` get every kept frame's samples (a recorder, a mixer)."""

    def __init__(self, track: MediaStreamTrack, keep_s: float = 10.0) -> None:
        self.track = track
        self.frames = 0
        self.sample_rate = SAMPLE_RATE
        self.ended = False
        self.enabled = True
        self.listeners: list[SamplesListener] = []
        self._chunks: deque[tuple[float, array[int]]] = deque(maxlen=max(1, int(keep_s / PTIME_S)))
        self._task = asyncio.create_task(self._run(), name=f"audio-sink-{track.id}")

    async def _run(self) -> None:
        try:
            while True:
                frame = await self.track.recv()
                if not isinstance(frame, AudioFrame) or not self.enabled:
                    continue
                self.sample_rate = frame.sample_rate
                samples = mono_samples(frame)
                self._chunks.append((time.monotonic(), samples))
                self.frames += 1
                for listener in list(self.listeners):
                    listener(samples, frame.sample_rate)
        except MediaStreamError:
            self.ended = True

    def clear(self) -> None:
        """Forget what arrived so far (the track now carries someone else: a reused m-section)."""
        self._chunks.clear()

    def recent(self, seconds: float) -> Level:
        """Analyse what arrived in the last `seconds` (on the event loop: ~0.25 s of CPU per second)."""
        since = time.monotonic() - seconds
        window = [chunk for at, chunk in list(self._chunks) if at >= since]
        return analyse(window, len(window), self.sample_rate)

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


# --- recording ------------------------------------------------------------------------------------------
class WavMixer:
    """Mixes any number of sources into one 48 kHz mono 16-bit WAV file on a wall-clock timeline.

    aiortc delivers a remote track's frames only while packets arrive, so a recording that just appended
    frames would squeeze out every pause (a mute, a late joiner). Instead each source writes at a cursor
    that follows its own frames and is re-anchored to the arrival time whenever it drifts by more than
    `resync_s` (a gap, a new participant on a reused track); sources are summed with clipping. Samples
    are written once they are `latency_s` old, and `close()` pads with silence up to the moment it is
    called, so the file is as long as the recording lasted."""

    def __init__(
        self,
        path: str | Path,
        *,
        sample_rate: int = SAMPLE_RATE,
        latency_s: float = 0.3,
        resync_s: float = 0.1,
    ) -> None:
        self.path = Path(path)
        self.sample_rate = sample_rate
        self._latency = int(latency_s * sample_rate)
        self._resync = int(resync_s * sample_rate)
        self._wav = wave.open(str(self.path), "wb")  # noqa: SIM115 - closed by close()
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(sample_rate)
        self._start = time.monotonic()
        self._written = 0  # samples already in the file
        self._pending = array("i")  # mix of samples from `_written` on
        self._cursors: dict[object, int] = {}
        self.closed = False

    @property
    def samples_written(self) -> int:
        return self._written

    def _now(self) -> int:
        return round((time.monotonic() - self._start) * self.sample_rate)

    def add(self, source: object, samples: Sequence[int], sample_rate: int = SAMPLE_RATE) -> None:
        """Mix one frame of `source` (any hashable key) in, at its place on the timeline."""
        if self.closed or not samples:
            return
        if sample_rate != self.sample_rate:
            samples = resample_linear(samples, sample_rate, self.sample_rate)
        now = self._now()
        arrived_at = now - len(samples)
        cursor = self._cursors.get(source)
        if cursor is None or abs(cursor - arrived_at) > self._resync:
            cursor = arrived_at
        cursor = max(cursor, self._written)
        offset = cursor - self._written
        end = offset + len(samples)
        if len(self._pending) < end:
            self._pending.extend([0] * (end - len(self._pending)))
        pending = self._pending
        for i, x in enumerate(samples):
            pending[offset + i] += x
        self._cursors[source] = cursor + len(samples)
        self._flush(now - self._latency)

    def listener(self, source: object) -> SamplesListener:
        """A callback for AudioSink.listeners that mixes that sink in as `source`."""
        return lambda samples, rate: self.add(source, samples, rate)

    def forget(self, source: object) -> None:
        self._cursors.pop(source, None)

    def _flush(self, upto: int) -> None:
        count = upto - self._written
        if count <= 0:
            return
        if len(self._pending) < count:
            self._pending.extend([0] * (count - len(self._pending)))
        chunk = array("h", (-32768 if x < -32768 else min(x, 32767) for x in self._pending[:count]))
        del self._pending[:count]
        self._wav.writeframes(_le_bytes(chunk))
        self._written = upto

    def close(self) -> Path:
        """Write everything up to now (silence where nothing arrived) and close the file."""
        if not self.closed:
            self._flush(max(self._now(), self._written + len(self._pending)))
            self._wav.close()
            self.closed = True
        return self.path


class WavRecorder:
    """Records one aiortc audio track to a WAV file (48 kHz mono 16-bit) until `stop()`.

    It consumes the track itself (an AudioSink), so do not also read the track elsewhere: to record a
    track that an AudioSink already consumes, add `WavMixer.listener(...)` to that sink instead."""

    def __init__(self, track: MediaStreamTrack, path: str | Path, *, keep_s: float = 2.0) -> None:
        self.mixer = WavMixer(path)
        self.sink = AudioSink(track, keep_s=keep_s)
        self.sink.listeners.append(self.mixer.listener(track.id))

    @property
    def path(self) -> Path:
        return self.mixer.path

    async def stop(self) -> Path:
        await self.sink.stop()
        return self.mixer.close()
