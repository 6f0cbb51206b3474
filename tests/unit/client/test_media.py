"""voxa.client.media without a network: WAV reading/writing and conversion, the WAV player track, the
mixing recorder's timeline, and the sending tracks' timing rules."""

from __future__ import annotations

import asyncio
import math
import struct
import wave
from array import array
from pathlib import Path

import pytest
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from voxa.client.media import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    SineTrack,
    WavMixer,
    WavTrack,
    dominant_frequency,
    read_wav,
    read_wav_48k,
    resample_linear,
    rms,
    sine_samples,
    write_wav,
)


def tone(hz: float, seconds: float, rate: int, amplitude: float = 0.5) -> list[int]:
    return [
        round(amplitude * 32767 * math.sin(2 * math.pi * hz * i / rate)) for i in range(int(seconds * rate))
    ]


def write_raw(path: Path, samples: list[int], rate: int, channels: int = 1, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        if width == 2:
            wav.writeframes(struct.pack(f"<{len(samples)}h", *samples))
        else:
            wav.writeframes(bytes(len(samples) * width))
    return path


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    samples = tone(440, 0.5, SAMPLE_RATE)
    path = write_wav(tmp_path / "a.wav", samples)
    audio = read_wav(path)
    assert (audio.sample_rate, audio.channels) == (SAMPLE_RATE, 1)
    assert list(audio.samples) == samples and audio.seconds == pytest.approx(0.5)
    assert read_wav_48k(path) == array("h", samples)


def test_44k1_stereo_becomes_48k_mono_with_the_same_pitch(tmp_path: Path) -> None:
    left = tone(1000, 1.0, 44_100)
    interleaved = [x for s in left for x in (s, s // 2)]
    path = write_raw(tmp_path / "s.wav", interleaved, 44_100, channels=2)
    audio = read_wav(path)
    assert (audio.channels, audio.sample_rate) == (2, 44_100) and audio.mono() == array("h", left)
    pcm = read_wav_48k(path)
    assert abs(len(pcm) - SAMPLE_RATE) < 200  # one second, give or take the resampler's edges
    hz = dominant_frequency(pcm[SAMPLE_RATE // 10 : SAMPLE_RATE - SAMPLE_RATE // 10])
    assert hz is not None and abs(hz - 1000) < 3
    assert 0.2 < rms(pcm) < 0.4  # down-mixed, not silenced or clipped


def test_16k_mono_is_upsampled(tmp_path: Path) -> None:
    pcm = read_wav_48k(write_raw(tmp_path / "m.wav", tone(300, 0.5, 16_000), 16_000))
    assert abs(len(pcm) - SAMPLE_RATE // 2) < 200
    hz = dominant_frequency(pcm[2000:-2000])
    assert hz is not None and abs(hz - 300) < 3


def test_only_16_bit_pcm(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only 16-bit"):
        read_wav(write_raw(tmp_path / "8.wav", [0] * 100, 8000, width=1))
    (tmp_path / "junk.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(ValueError, match="not a PCM WAV"):
        read_wav(tmp_path / "junk.wav")


def test_resample_linear() -> None:
    assert len(resample_linear([0, 100] * 80, 16_000)) == 480
    assert resample_linear([1, 2, 3], 48_000) == array("h", [1, 2, 3])


async def frame_of(track: WavTrack) -> AudioFrame:
    frame = await track.recv()
    assert isinstance(frame, AudioFrame)
    return frame


async def test_wav_track_plays_then_sends_silence(tmp_path: Path) -> None:
    samples = tone(500, 0.05, SAMPLE_RATE)  # 2.5 frames
    track = WavTrack(write_wav(tmp_path / "t.wav", samples))
    frames = [await frame_of(track) for _ in range(4)]
    assert all(f.samples == FRAME_SAMPLES for f in frames)
    assert [f.pts for f in frames] == [0, 960, 1920, 2880]
    data = array("h")
    for frame in frames:
        data.frombytes(bytes(frame.planes[0]))
    assert list(data[: len(samples)]) == samples
    assert not any(data[len(samples) :])  # silence after the end: the track stays live
    assert track.finished.is_set() and track.readyState == "live"


async def test_wav_track_loops_and_resumes(tmp_path: Path) -> None:
    samples = list(range(1, 1001))
    looped = WavTrack(samples=array("h", samples), loop=True)
    frame = await frame_of(looped)
    await looped.recv()
    first = array("h")
    first.frombytes(bytes(frame.planes[0]))
    assert list(first) == samples[:960]
    assert looped.position == 920  # 1920 samples into a 1000-sample loop
    resumed = WavTrack(samples=array("h", samples), start=looped.position, pts=9600)
    out = array("h")
    out.frombytes(bytes((await frame_of(resumed)).planes[0]))
    assert list(out[:80]) == samples[920:] and resumed.next_pts == 9600 + FRAME_SAMPLES


async def test_sine_track_timing_and_stop() -> None:
    track = SineTrack(440.0, pts=48_000)
    first = await track.recv()
    assert first.pts == 48_000 and track.next_pts == 48_960
    pending = asyncio.ensure_future(track.recv())  # paced: waits ~20 ms
    await asyncio.sleep(0)
    track.stop()
    # A frame already being paced is delivered (aiortc's sender loop must not see MediaStreamError).
    assert (await pending).pts == 48_960
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_tracks_are_paced_in_real_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]

    async def fake_sleep(delay: float) -> None:
        clock[0] += delay

    monkeypatch.setattr("voxa.client.media.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("voxa.client.media.asyncio.sleep", fake_sleep)
    track = SineTrack(440.0)
    for _ in range(11):
        await track.recv()
    assert clock[0] - 1000.0 == pytest.approx(10 * FRAME_SAMPLES / SAMPLE_RATE)
    clock[0] += 1.0  # the sender fell a second behind: it catches up without waiting
    for _ in range(50):
        await track.recv()
    assert clock[0] - 1000.0 == pytest.approx(1.2)


@pytest.mark.parametrize("hz", [440.0, 437.5, 23_999.0])
def test_a_sine_track_sends_one_continuous_tone(hz: float) -> None:
    # Whole-Hz tones come from a one-second table, others are computed per frame: the same samples.
    track = SineTrack(hz)
    out = array("h")
    for _ in range(120):  # 2.4 s: across the table's end twice
        out.frombytes(track._samples())
    assert out == sine_samples(hz, len(out), 0.5)


def test_a_sine_track_changes_frequency_without_a_click() -> None:
    track = SineTrack(440.0)
    out = array("h")
    for i in range(60):
        if i == 30:
            track.frequency = 500.0
        out.frombytes(track._samples())
    biggest_step = max(abs(out[i + 1] - out[i]) for i in range(len(out) - 1))
    assert biggest_step <= 0.5 * 32767 * 2 * math.pi * 500 / SAMPLE_RATE + 2
    assert dominant_frequency(out[-SAMPLE_RATE // 2 :]) == pytest.approx(500, abs=1)


def test_mixer_places_sources_on_a_wall_clock_timeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr("voxa.client.media.time.monotonic", lambda: clock[0])
    mixer = WavMixer(tmp_path / "mix.wav", latency_s=1.0)
    a = array("h", [1000] * FRAME_SAMPLES)
    b = array("h", [30000] * FRAME_SAMPLES)
    clock[0] += 0.02
    mixer.add("a", a)  # arrived at 20 ms: covers 0-20 ms
    mixer.add("b", b)  # same window: mixed, and clipped
    clock[0] += 0.02
    mixer.add("a", a)  # 20-40 ms
    clock[0] += 0.5  # a gap: nothing for half a second
    mixer.add("a", a)  # re-anchored at 520-540 ms, not squeezed after 40 ms
    clock[0] += 0.1
    mixer.close()
    audio = read_wav(tmp_path / "mix.wav")
    s = audio.samples
    assert audio.seconds == pytest.approx(0.64, abs=0.001)
    assert s[0] == 31000 and s[959] == 31000  # summed
    assert s[960] == 1000 and s[1919] == 1000
    assert not any(s[1920 : 520 * 48]) and s[520 * 48] == 1000 and s[540 * 48 - 1] == 1000
    assert not any(s[540 * 48 :])


def test_mixer_clips_instead_of_wrapping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr("voxa.client.media.time.monotonic", lambda: clock[0])
    mixer = WavMixer(tmp_path / "clip.wav", latency_s=1.0)
    clock[0] = 0.02
    loud = array("h", [30000] * FRAME_SAMPLES)
    quiet = array("h", [-30000] * FRAME_SAMPLES)
    mixer.add(1, loud)
    mixer.add(2, loud)
    mixer.add(3, quiet)
    mixer.add(4, quiet)
    mixer.add(5, quiet)
    mixer.close()
    assert set(read_wav(tmp_path / "clip.wav").samples) == {-30000}
    clock[0] = 0.04
    mixer2 = WavMixer(tmp_path / "clip2.wav", latency_s=1.0)
    clock[0] = 0.06
    mixer2.add(1, loud)
    mixer2.add(2, loud)
    mixer2.close()
    assert set(read_wav(tmp_path / "clip2.wav").samples) == {32767}
