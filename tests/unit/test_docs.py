"""The README's configuration reference is generated from the settings classes and must not drift."""

from __future__ import annotations

from pathlib import Path

from voxa.common.configdoc import BEGIN, END, render

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_configuration_reference_is_current() -> None:
    text = README.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    assert text[start:end] == render(), "README.md is stale: run `python -m voxa.common.configdoc`"
