"""The installed voxa_dataplane module (sfu/dataplane, built and installed by .ci/dataplane.sh) is the
one this checkout builds, and its type stub describes it."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
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


@pytest.fixture
def worker() -> Iterator[voxa_dataplane.Worker]:
    w = voxa_dataplane.Worker("127.0.0.1", 0)
    yield w
    w.close()


def _simulcast(w: voxa_dataplane.Worker) -> tuple[int, int, int, int]:
    """A publisher with a three-layer VP8 producer (q's SSRC known, h and f learnt) and a subscriber
    consuming it with RTX and transport-cc: (publisher, subscriber, producer, consumer)."""
    pub, sub = w.add_peer("pub", "pub-password"), w.add_peer("sub", "sub-password")
    producer = w.add_producer(
        pub,
        kind="video",
        clock_rate=90000,
        ssrcs=[],
        mid="1",
        mid_id=1,
        codec="VP8",
        layers=[("q", 1001, 2001), ("h", 0, 0), ("f", 0, 0)],
        rid_id=10,
        repaired_rid_id=11,
        rtx_payload_types=[(97, 96)],
    )
    consumer = w.add_consumer(producer, sub, 0xD0D0)
    w.configure_consumer(
        consumer, [(96, 96)], mid="1", mid_id=1, transport_cc_id=3, rtx_payload_types=[(97, 96)]
    )
    return pub, sub, producer, consumer


def test_simulcast_layers_preferences_and_bandwidth(worker: voxa_dataplane.Worker) -> None:
    _pub, sub, producer, consumer = _simulcast(worker)
    rtx = worker.consumer_rtx_ssrc(consumer)
    assert rtx not in (0, 0xD0D0), "an RTX SSRC is picked for video"
    assert [
        (rid, ssrc, bps, wanted) for rid, ssrc, bps, _w, _h, wanted in worker.producer_layers(producer)
    ] == [
        ("q", 1001, 0, True),
        ("h", 0, 0, True),
        ("f", 0, 0, True),
    ]
    assert worker.consumer_layers(consumer) == (-1, -1), "nothing allocated before it is ready"
    assert worker.peer_bandwidth(sub) == (1_000_000, "initial")
    worker.set_peer_bandwidth(sub, 50_000)
    assert worker.peer_bandwidth(sub) == (50_000, "override")
    worker.set_consumer_preferences(consumer, max_width=320, max_height=180)
    worker.set_consumer_preferences(consumer, max_layer=1, paused=True)
    worker.set_consumer_preferences(consumer)
    worker.set_peer_bandwidth(sub, 0)
    assert worker.peer_bandwidth(sub)[1] == "initial"
    audio = worker.add_producer(_pub, kind="audio", clock_rate=48000, ssrcs=[5], mid="0")
    audio_consumer = worker.add_consumer(audio, sub, 0, 0)
    assert worker.consumer_rtx_ssrc(audio_consumer) == 0
    assert worker.consumer_layers(audio_consumer) == (0, 0)
    assert "rtx_received" in worker.counters() and "nacks_sent" in worker.counters()
    assert worker.take_events() == []


def test_simulcast_errors_are_typed(worker: voxa_dataplane.Worker) -> None:
    pub, sub, producer, consumer = _simulcast(worker)
    with pytest.raises(KeyError):
        worker.consumer_layers(999)
    with pytest.raises(KeyError):
        worker.producer_layers(999)
    with pytest.raises(KeyError):
        worker.consumer_rtx_ssrc(999)
    with pytest.raises(KeyError):
        worker.set_peer_bandwidth(999, 1)
    with pytest.raises(KeyError):
        worker.peer_bandwidth(999)
    with pytest.raises(KeyError):
        worker.set_consumer_preferences(999, max_layer=0)
    with pytest.raises(ValueError, match="max_layer"):
        worker.set_consumer_preferences(consumer, max_layer=-2)
    with pytest.raises(ValueError, match="rids and SSRCs must be distinct"):
        worker.add_producer(
            pub,
            kind="video",
            clock_rate=90000,
            ssrcs=[],
            mid="2",
            layers=[("q", 7, 0), ("q", 8, 0)],
            rid_id=10,
        )
    with pytest.raises(ValueError, match="rid extension"):
        worker.add_producer(
            pub, kind="video", clock_rate=90000, ssrcs=[], mid="2", layers=[("q", 0, 0), ("h", 0, 0)]
        )
    with pytest.raises(ValueError, match="at most 3"):
        worker.add_producer(
            pub,
            kind="video",
            clock_rate=90000,
            ssrcs=[],
            mid="2",
            layers=[(r, 0, 0) for r in "abcd"],
            rid_id=10,
        )
    with pytest.raises(ValueError, match="out of range"):
        worker.configure_consumer(consumer, [(96, 96)], mid="1", rtx_payload_types=[(200, 96)])
    with pytest.raises(ValueError, match="distinct"):
        worker.configure_consumer(consumer, [(96, 96)], mid="1", mid_id=3, transport_cc_id=3)
    with pytest.raises(RuntimeError, match=r"^conflict: "):
        worker.add_producer(pub, kind="video", clock_rate=90000, ssrcs=[], mid="2", layers=[("q", 2001, 0)])
    with pytest.raises(RuntimeError, match=r"^conflict: "):
        worker.add_consumer(producer, sub, 0, worker.consumer_rtx_ssrc(consumer))
