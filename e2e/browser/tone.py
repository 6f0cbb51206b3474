"""Sine-tone WAV files for Chromium's fake microphone (`--use-file-for-fake-audio-capture`).

Chromium loops the file, so the length only has to be a whole number of periods to avoid a click at the
seam: `write_tone` rounds the duration to the nearest whole period of the tone.
"""

from __future__ import annotations

import struct
import wave
from pathlib import Path

from voxa.client.media import sine_samples

SAMPLE_RATE = 48_000


def tone_samples(
    freq_hz: float, seconds: float = 2.0, *, sample_rate: int = SAMPLE_RATE, amplitude: float = 0.5
) -> list[int]:
    """Signed 16-bit samples of a sine tone, `seconds` long rounded to a whole number of periods."""
    if freq_hz <= 0 or freq_hz >= sample_rate / 2:
        raise ValueError(f"frequency {freq_hz} Hz is outside (0, {sample_rate / 2}) Hz")
    if not 0.0 < amplitude <= 1.0:
        raise ValueError("amplitude must be in (0, 1]")
    periods = max(1, round(seconds * freq_hz))
    count = round(periods * sample_rate / freq_hz)
    return sine_samples(freq_hz, count, amplitude, sample_rate=sample_rate).tolist()


def write_tone(
    path: Path | str,
    freq_hz: float,
    seconds: float = 2.0,
    *,
    sample_rate: int = SAMPLE_RATE,
    amplitude: float = 0.5,
) -> Path:
    """Write a mono 16-bit PCM WAV holding a sine tone of `freq_hz`; returns the path."""
    out = Path(path)
    samples = tone_samples(freq_hz, seconds, sample_rate=sample_rate, amplitude=amplitude)
    with wave.open(str(out), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(struct.pack(f"<{len(samples)}h", *samples))
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a sine-tone WAV for Chromium's fake microphone.")
    parser.add_argument("path")
    parser.add_argument("freq_hz", type=float)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--amplitude", type=float, default=0.5)
    ns = parser.parse_args()
    write_tone(ns.path, ns.freq_hz, ns.seconds, amplitude=ns.amplitude)
