"""Unit tests of voxa.sfu."""
