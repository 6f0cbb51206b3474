"""Moved to `voxa.client.media`; this re-export keeps older imports working."""

from voxa.client.media import AudioSink, Level, SineTrack, analyse, dominant_frequency, mono_samples  # noqa: F401
