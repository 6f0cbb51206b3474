"""Headless Chromium pages as clients of Voxa's SFU: tones published and received, re-offers, mute.

An in-process SFU worker (one router) on loopback, two Chromium pages (440 Hz and 660 Hz fake
microphones, one Chromium process each) and an aiortc client (880 Hz, the Harness of the SFU integration
tests). The test is the signaling relay: a page offers its microphone, the SFU answers; every offer the
SFU makes later (new or removed consumers: `worker.listeners` events) is applied by the page, whose answer
goes back to the SFU. The pages measure what they receive with a WebAudio AnalyserNode per remote track.

Chromium refuses re-offers that renumber RTP header extensions ("RTP extension ID reassignment not
supported", see test_browser_harness.py): these tests prove that it accepts the SFU's, which are rendered
from per-peer state so that mids, payload types and extension ids stay as first negotiated.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from e2e.browser.conftest import ChromiumFactory
from e2e.browser.harness import ChromiumPage
from e2e.browser.sfu_relay import WAIT_S, PagePeer, Sfu, poll
from tests.integration.sfu.conftest import ClientPeer
from voxa.common.testing.wait import eventually_async
from voxa.sfu.settings import SfuSettings
from voxa.sfu.worker import SfuWorker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

A_HZ = 440.0  # page "a"
B_HZ = 660.0  # page "b"
PY_HZ = 880.0  # the aiortc client "py"
TOLERANCE_HZ = 15.0
TONE_RMS = 0.05  # a 0.5-amplitude sine has an RMS of about 0.35; Chromium's fake microphone is similar
SILENCE_RMS = 0.003
T = TypeVar("T")


@pytest.fixture
async def sfu(loopback_ice: list[tuple[str, int]]) -> AsyncIterator[Sfu]:
    worker = SfuWorker(
        SfuSettings(secret="test", workers=1, rtc_listen_ip="127.0.0.1", rtc_remote_networks=["127.0.0.0/8"])
    )
    await worker.start()
    relay = Sfu(worker)
    yield relay
    await relay.close()
    await worker.stop()


# --- waiting and measuring ------------------------------------------------------------------------
def receiving_mids(state: dict[str, Any]) -> list[str]:
    """The page's m-sections the SFU sends audio on (recvonly from the page's point of view)."""
    return [
        t["mid"]
        for t in state["transceivers"]
        if t["kind"] == "audio" and t["mid"] is not None and t["currentDirection"] == "recvonly"
    ]


async def heard(page: ChromiumPage, ms: int = 700) -> dict[str, dict[str, Any]]:
    """What the page hears on each m-section the SFU sends it, keyed by the sending peer (the stream
    id of the SFU's a=msid is the producer's peer)."""
    mids = receiving_mids(await page.state())
    if not mids:
        return {}
    levels = await page.measure(ms, mids=mids)
    return {
        (level["streamIds"][0] if level["streamIds"] else f"mid {level['mid']}"): level for level in levels
    }


def is_tone(level: dict[str, Any] | None, hz: float) -> bool:
    return (
        level is not None
        and level["hz"] is not None
        and abs(level["hz"] - hz) <= TOLERANCE_HZ
        and level["rms"] > TONE_RMS
    )


def hears_exactly(expected: dict[str, float]) -> Callable[[dict[str, dict[str, Any]]], bool]:
    def accept(got: dict[str, dict[str, Any]]) -> bool:
        return set(got) == set(expected) and all(is_tone(got[name], hz) for name, hz in expected.items())

    return accept


async def wait_hearing(page: PagePeer, expected: dict[str, float], timeout: float = WAIT_S) -> dict[str, Any]:
    return await poll(
        lambda: heard(page.page), hears_exactly(expected), timeout, f"page {page.name} should hear {expected}"
    )


async def wait_client_hearing(
    client: ClientPeer, expected: dict[str, float], timeout: float = WAIT_S
) -> None:
    async def probe() -> dict[str, tuple[float | None, float]]:
        levels = await asyncio.gather(*(sink.measure(0.7) for sink in client.sinks))
        return {
            sink.track.id.split(":")[0]: (level.hz, level.rms)
            for sink, level in zip(client.sinks, levels, strict=True)
        }

    def accept(got: dict[str, tuple[float | None, float]]) -> bool:
        return set(got) == set(expected) and all(
            hz is not None and abs(hz - expected[name]) <= TOLERANCE_HZ and rms > TONE_RMS
            for name, (hz, rms) in got.items()
        )

    await poll(probe, accept, timeout, f"aiortc client {client.name} should hear {expected}")


# --- SDP ------------------------------------------------------------------------------------------
def sections(sdp: str) -> dict[str, list[str]]:
    """The lines of each m-section of `sdp`, by mid (the m= line first)."""
    out: dict[str, list[str]] = {}
    current: list[str] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            current = [line]
        elif current:
            current.append(line)
            if line.startswith("a=mid:"):
                out[line.removeprefix("a=mid:")] = current
    return out


def extmaps(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("a=extmap:")]


def payload_types(lines: list[str]) -> list[str]:
    return lines[0].split()[3:]


def direction(lines: list[str]) -> str:
    return next(x[2:] for x in lines if x[2:] in ("sendrecv", "sendonly", "recvonly", "inactive"))


def counters(state: dict[str, Any]) -> dict[str, int]:
    keys = (
        "negotiationNeeded",
        "offersCreated",
        "answersCreated",
        "remoteOffers",
        "remoteAnswers",
        "rollbacks",
    )
    return {key: state["counters"][key] for key in keys}


# --- the tests ------------------------------------------------------------------------------------
async def test_pages_and_aiortc_hear_each_other_after_sfu_reoffers(
    chromium: ChromiumFactory, sfu: Sfu, tmp_path: Path
) -> None:
    peers = await chromium(2, tone_hz=[A_HZ, B_HZ])
    # Page a joins alone: nothing to receive, the SFU only answers its offer.
    a = await sfu.join_page("a", peers[0])
    await sfu.wait_settled()
    assert a.offers == [], a.offers
    # Then page b and the aiortc client: the SFU re-offers page a a consumer for each.
    b = await sfu.join_page("b", peers[1])
    py = await sfu.join_aiortc("py", PY_HZ)
    await sfu.wait_settled()
    sfu.assert_no_errors()

    await wait_hearing(a, {"b": B_HZ, "py": PY_HZ})
    await wait_hearing(b, {"a": A_HZ, "py": PY_HZ})
    await wait_client_hearing(py, {"a": A_HZ, "b": B_HZ})

    # Page a applied the SFU's re-offers (b's consumer, then py's: two offers, since the first was
    # already out when py joined) and answered each.
    state = await a.page.state()
    assert state["signalingState"] == "stable" and state["connectionState"] == "connected", state
    assert state["counters"]["remoteOffers"] == len(a.offers) >= 2, (state["counters"], len(a.offers))
    assert state["counters"]["answersCreated"] == len(a.answers) == len(a.offers), state["counters"]
    assert state["counters"]["offersCreated"] == 1 and state["counters"]["rollbacks"] == 0, state["counters"]
    assert sfu.room.peer("a").offers_sent == len(a.offers)
    # Every SDP of the SFU keeps the page's mid "0" as first answered (extension ids, payload types),
    # and a consumer's m-section keeps its own once offered.
    answer = sections(a.first_answer)
    assert list(answer) == ["0"], a.first_answer
    assert direction(answer["0"]) == "recvonly", a.first_answer
    first_offer = sections(a.offers[0])
    for offer in a.offers:
        lines = sections(offer)
        assert extmaps(lines["0"]) == extmaps(answer["0"]), offer
        assert payload_types(lines["0"]) == payload_types(answer["0"]), offer
        for mid in first_offer:
            assert extmaps(lines[mid]) == extmaps(first_offer[mid]), offer
            assert payload_types(lines[mid]) == payload_types(first_offer[mid]), offer
    last = sections(a.offers[-1])
    assert next(iter(last)) == "0" and len(last) == 3, a.offers[-1]
    assert [direction(lines) for lines in last.values()] == ["recvonly", "sendonly", "sendonly"], a.offers[-1]
    mids = {t["mid"]: t for t in state["transceivers"]}
    assert set(mids) == set(last), state["transceivers"]
    assert receiving_mids(state) == list(last)[1:], state["transceivers"]
    print("page a: the SFU's last re-offer:\n" + a.offers[-1])

    # The page's own microphone reaches the SFU on mid 0 and is forwarded to both others.
    stats = await a.page.stats()
    assert stats["outbound"]["0"]["packetsSent"] > 0, stats
    assert stats["candidatePair"]["remote"]["address"] == "127.0.0.1", stats
    assert all(entry["codec"] == "audio/opus" for entry in stats["inbound"].values()), stats

    shot = await a.page.screenshot(tmp_path / "sfu-page-a.png")
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and shot.stat().st_size > 1000, shot
    print("screenshot of page a:", shot)
    sfu.assert_no_errors()


async def test_left_peer_section_goes_inactive_and_is_reused(chromium: ChromiumFactory, sfu: Sfu) -> None:
    peers = await chromium(2, tone_hz=[A_HZ, B_HZ])
    a = await sfu.join_page("a", peers[0])
    await sfu.join_page("b", peers[1])
    await sfu.wait_settled()
    await wait_hearing(a, {"b": B_HZ})
    before = await a.page.state()
    (b_mid,) = receiving_mids(before)
    offers_before = len(a.offers)

    # b leaves: the SFU re-offers a with b's m-section inactive (kept, not removed: m-lines never go).
    await sfu.leave_page("b")
    await eventually_async(
        lambda: len(a.offers) > offers_before and len(a.answers) == len(a.offers),
        WAIT_S,
        lambda: f"no answered re-offer after b left: {sfu.describe()}",
    )
    await sfu.wait_settled()
    sfu.assert_no_errors()
    removal = sections(a.offers[-1])
    assert list(removal) == ["0", b_mid], a.offers[-1]
    assert direction(removal[b_mid]) == "inactive", a.offers[-1]
    assert not any(line.startswith(("a=ssrc:", "a=msid:")) for line in removal[b_mid]), a.offers[-1]
    left = await a.page.state()
    assert {t["mid"]: t["currentDirection"] for t in left["transceivers"]} == {
        "0": "sendonly",
        b_mid: "inactive",
    }, left["transceivers"]
    assert receiving_mids(left) == []

    async def on_b_mid() -> list[dict[str, Any]]:
        return await a.page.measure(700, mids=[b_mid])

    def silent(got: list[dict[str, Any]]) -> bool:
        return len(got) == 1 and got[0]["rms"] < SILENCE_RMS

    await poll(on_b_mid, silent, WAIT_S, f"page a should hear nothing on the inactive {b_mid}")

    # A new peer joins: the SFU offers a its consumer on the same m-section, which the page accepts.
    offers_before = len(a.offers)
    py = await sfu.join_aiortc("py", PY_HZ)
    await sfu.wait_settled()
    sfu.assert_no_errors()
    assert len(a.offers) == offers_before + 1, a.offers[offers_before:]
    reuse = sections(a.offers[-1])
    assert list(reuse) == ["0", b_mid], a.offers[-1]
    assert direction(reuse[b_mid]) == "sendonly", a.offers[-1]
    assert any(line.startswith("a=msid:py ") for line in reuse[b_mid]), a.offers[-1]
    assert extmaps(reuse[b_mid]) == extmaps(removal[b_mid]), (removal[b_mid], reuse[b_mid])
    assert payload_types(reuse[b_mid]) == payload_types(removal[b_mid]), (removal[b_mid], reuse[b_mid])
    levels = await wait_hearing(a, {"py": PY_HZ})
    assert levels["py"]["mid"] == b_mid, levels
    await wait_client_hearing(py, {"a": A_HZ})

    after = await a.page.state()
    assert len(after["transceivers"]) == len(before["transceivers"]) == 2, after["transceivers"]
    assert [t["mid"] for t in after["transceivers"]] == ["0", b_mid], after["transceivers"]
    assert after["signalingState"] == "stable", after
    assert after["counters"]["remoteOffers"] == len(a.offers), after["counters"]
    print("page a: the SFU's re-offer after b left:\n" + a.offers[-2])
    print("page a: the SFU's re-offer reusing", b_mid, "for py:\n" + a.offers[-1])


async def test_page_mute_silences_without_renegotiation(chromium: ChromiumFactory, sfu: Sfu) -> None:
    peers = await chromium(2, tone_hz=[A_HZ, B_HZ])
    a = await sfu.join_page("a", peers[0])
    b = await sfu.join_page("b", peers[1])
    await sfu.wait_settled()
    await wait_hearing(a, {"b": B_HZ})
    await wait_hearing(b, {"a": A_HZ})

    async def snapshot() -> tuple[dict[str, int], dict[str, int], int, int]:
        state_a, state_b = await a.page.state(), await b.page.state()
        return (
            counters(state_a),
            counters(state_b),
            sfu.room.peer("a").offers_sent,
            sfu.room.peer("b").offers_sent,
        )

    before = await snapshot()
    muted = await a.page.mute()
    assert muted["muted"] and muted["stoppedTrackId"], muted

    def silent_from_a(got: dict[str, dict[str, Any]]) -> bool:
        return set(got) == {"a"} and got["a"]["rms"] < SILENCE_RMS

    silence = await poll(lambda: heard(b.page), silent_from_a, WAIT_S, "page b should hear silence from a")
    print("page b hears muted a:", silence["a"])
    # a still hears b while muted; nobody renegotiated.
    await wait_hearing(a, {"b": B_HZ})
    assert await snapshot() == before
    during = await a.page.state()
    assert during["muted"] and during["transceivers"][0]["senderTrackId"] is None, during

    await a.page.unmute()
    await wait_hearing(b, {"a": A_HZ})
    assert await snapshot() == before
    after = await a.page.state()
    assert after["counters"]["replaceTrack"] == 2 and after["signalingState"] == "stable", after
    # Each page had one SFU offer, when the other joined (a consumer for it), and none since.
    assert len(a.offers) == len(b.offers) == 1, (a.offers, b.offers)
    sfu.assert_no_errors()
