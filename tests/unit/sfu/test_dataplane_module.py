"""The installed voxa_dataplane module (sfu/dataplane, built and installed by .ci/dataplane.sh) is the
one this checkout builds, and its type stub describes it."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import voxa_dataplane

from voxa.common.version import VERSION

STUB = Path(__file__).resolve().parents[3] / "sfu" / "dataplane" / "voxa_dataplane.pyi"


def _stub_names() -> tuple[set[str], dict[str, set[str]]]:
    tree = ast.parse(STUB.read_text())
    names: set[str] = set()
    classes: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            classes[node.name] = {
                item.name
                for item in node.body
                if isinstance(item, ast.FunctionDef) and not item.name.startswith("__")
            }
    return names, classes


def test_the_installed_module_is_this_version() -> None:
    # A mismatch means .venv holds a module built from other sources: run `make setup`.
    assert voxa_dataplane.__version__ == VERSION


def test_the_stub_names_what_the_module_has() -> None:
    names, classes = _stub_names()
    public = {n for n in dir(voxa_dataplane) if not n.startswith("_")} - {"voxa_dataplane"}
    assert names - {"__version__"} == public, "sfu/dataplane/voxa_dataplane.pyi is out of step with py.rs"
    for name, methods in classes.items():
        cls = getattr(voxa_dataplane, name)
        assert inspect.isclass(cls)
        have = {m for m in vars(cls) if not m.startswith("_")}
        assert methods == have, f"{name}'s methods in the stub differ from the module's"


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "other"),
        (b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12), "stun"),
        (b"\x16\xfe\xfd" + bytes(10), "dtls"),
        (b"\x80\x6f" + bytes(10), "rtp"),
        (b"\x80\x6f", "other"),
        (b"\x80\xc8" + bytes(26), "rtcp"),
        (b"\xff" * 20, "other"),
    ],
)
def test_classify(data: bytes, kind: str) -> None:
    assert voxa_dataplane.classify(data) == kind


def test_keying_material_lengths() -> None:
    # Two keys and two salts (RFC 5764 §4.2): AES-CM 16+14, AES-128-GCM 16+12, AES-256-GCM 32+12.
    assert voxa_dataplane.srtp_keying_material_len(0x0001) == 60
    assert voxa_dataplane.srtp_keying_material_len(0x0002) == 60
    assert voxa_dataplane.srtp_keying_material_len(0x0007) == 56
    assert voxa_dataplane.srtp_keying_material_len(0x0008) == 88
    with pytest.raises(ValueError, match="0x0099"):
        voxa_dataplane.srtp_keying_material_len(0x0099)
    with pytest.raises(ValueError, match="must be 60 bytes"):
        voxa_dataplane.SrtpSession(0x0001, bytes(10), True)
