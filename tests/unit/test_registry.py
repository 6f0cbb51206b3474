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


async def test_a_replica_never_trusts_its_own_memory_of_an_assignment() -> None:
    """Replica a assigned the channel; its last participant left through replica b, which released
    it; the next joiners, one on each replica, must agree on one SFU (a remembered copy on a would
    have split the channel)."""
    from voxa.signaling.registry import MediaRegistry
    from voxa.signaling.store.memory import MemoryBackend, MemoryStore

    backend = MemoryBackend()
    a = MediaRegistry(MemoryStore("a", 30, backend), ttl_s=30, cache_s=60)
    b = MediaRegistry(MemoryStore("b", 30, backend), ttl_s=30, cache_s=60)
    busy = MediaServer(id="s1", server_id="g", url="http://s1", load=MediaLoad(peers=1))
    await a.heartbeat(busy)
    await a.heartbeat(MediaServer(id="s2", server_id="g", url="http://s2"))
    first = await a.assign("g", "lobby", cached=True)
    assert first is not None and first.id == "s2"
    assert await b.release_if_idle("g", "lobby", "voice:g:lobby")
    await b.heartbeat(busy.model_copy(update={"load": MediaLoad(peers=0)}))
    await b.heartbeat(MediaServer(id="s2", server_id="g", url="http://s2", load=MediaLoad(peers=3)))
    on_b = await b.assign("g", "lobby", cached=False)
    on_a = await a.assign("g", "lobby", cached=True)
    assert on_b is not None and on_a is not None and on_a.id == on_b.id == "s1"
