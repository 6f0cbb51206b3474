"""Choosing the SFU for a new channel."""

from __future__ import annotations

from voxa.signaling.registry import choose_media_server
from voxa.signaling.store import MediaLoad, MediaServer


def ms(id_: str, peers: int, capacity: int = 100, draining: bool = False) -> MediaServer:
    return MediaServer(
        id=id_,
        server_id="g",
        url=f"http://{id_}",
        capacity=capacity,
        draining=draining,
        load=MediaLoad(peers=peers),
    )


def test_single_sfu_takes_every_channel() -> None:
    assert choose_media_server([ms("a", 90)]) == ms("a", 90)


def test_least_utilised_wins() -> None:
    assert choose_media_server([ms("a", 50), ms("b", 10, capacity=10), ms("c", 30)]).id == "c"  # type: ignore[union-attr]


def test_ties_go_to_lowest_id() -> None:
    assert choose_media_server([ms("b", 5), ms("a", 5)]).id == "a"  # type: ignore[union-attr]


def test_draining_and_full_are_skipped() -> None:
    assert choose_media_server([ms("a", 0, draining=True), ms("b", 100)]) is None
    assert choose_media_server([ms("a", 0, draining=True), ms("b", 99)]).id == "b"  # type: ignore[union-attr]


def test_none_registered() -> None:
    assert choose_media_server([]) is None
