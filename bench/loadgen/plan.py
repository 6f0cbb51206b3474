"""Scenarios of the SFU benchmark as plain data: rooms of peers, who publishes what, who receives what.

Every peer receives every track of every *other publishing* peer of its room, which is what Voxa's SFU
does by itself (a consumer per producer and other peer) and what the Janus load subscribes to
explicitly. Peers that do not publish offer a ``recvonly`` audio section to Voxa (no producer) and have
no publisher handle in Janus.

* ``audio-rooms``: rooms of 10 peers, 2 of them speaking: 2 x 9 = 18 forwarded audio streams per room;
* ``large-room``: one room, 2 publishers and ``subscribers`` listeners: 2 x (subscribers + 1) streams;
* ``video-room``: rooms of 4 peers each sending audio + VP8 video: 4 x 2 x 3 = 24 streams per room.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final

SCENARIOS: Final = ("audio-rooms", "large-room", "video-room")
JANUS_ROOM_BASE: Final = 7000
FEEDS_PER_ROOM: Final = 1000  # Janus feed ids: room index * 1000 + peer index + 1


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """One benchmark peer (picklable: sent to the load process that runs it)."""

    id: str
    room: int  # room index
    audio: bool  # publishes Opus audio
    video: bool  # publishes VP8 video
    receives: tuple[str, ...]  # ids of the publishers whose tracks it receives
    expect_streams: int  # tracks it receives (each publisher's kinds)
    feed: int  # Janus feed id (publishers; 0 for listeners)
    receive_feeds: tuple[int, ...]  # Janus feed ids of `receives`

    @property
    def publishes(self) -> bool:
        return self.audio or self.video

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k, on in (("audio", self.audio), ("video", self.video)) if on)

    @property
    def voxa_router(self) -> str:
        return voxa_router(self.room)

    @property
    def janus_room(self) -> int:
        return janus_room(self.room)


def voxa_router(room: int) -> str:
    return f"bench-r{room}"


def janus_room(room: int) -> int:
    return JANUS_ROOM_BASE + room


@dataclass(frozen=True, slots=True)
class RoomPlan:
    index: int
    peers: tuple[PeerSpec, ...]

    @property
    def publishers(self) -> tuple[PeerSpec, ...]:
        return tuple(p for p in self.peers if p.publishes)

    @property
    def streams(self) -> int:
        """Forwarded streams (SFU consumers) of this room."""
        return sum(p.expect_streams for p in self.peers)


def _room(index: int, publishers: int, listeners: int, *, video: bool) -> RoomPlan:
    feeds = {f"r{index}s{i}": index * FEEDS_PER_ROOM + i + 1 for i in range(publishers)}
    peers: list[PeerSpec] = []
    kinds = 2 if video else 1
    for pid, feed in feeds.items():
        others = tuple(p for p in feeds if p != pid)
        peers.append(
            PeerSpec(
                pid, index, True, video, others, kinds * len(others), feed, tuple(feeds[p] for p in others)
            )
        )
    for i in range(listeners):
        peers.append(
            PeerSpec(
                f"r{index}l{i}",
                index,
                False,
                False,
                tuple(feeds),
                kinds * len(feeds),
                0,
                tuple(feeds.values()),
            )
        )
    return RoomPlan(index, tuple(peers))


def without_publishers(peer: PeerSpec, gone: set[str]) -> PeerSpec:
    """`peer` no longer expecting the tracks of the publishers in `gone` (they failed to join)."""
    keep = [(r, f) for r, f in zip(peer.receives, peer.receive_feeds, strict=True) if r not in gone]
    if len(keep) == len(peer.receives):
        return peer
    per_publisher = peer.expect_streams // max(len(peer.receives), 1)
    return replace(
        peer,
        receives=tuple(r for r, _ in keep),
        receive_feeds=tuple(f for _, f in keep),
        expect_streams=per_publisher * len(keep),
    )


def build_room(scenario: str, index: int, *, subscribers: int = 200) -> RoomPlan:
    if scenario == "audio-rooms":
        return _room(index, 2, 8, video=False)
    if scenario == "large-room":
        return _room(index, 2, subscribers, video=False)
    if scenario == "video-room":
        return _room(index, 4, 0, video=True)
    raise ValueError(f"unknown scenario {scenario!r} (one of {', '.join(SCENARIOS)})")


class Topology:
    """The peers currently in the load (joined successfully), and what the SFU should forward."""

    def __init__(self) -> None:
        self.peers: dict[str, PeerSpec] = {}

    def add(self, peers: Iterable[PeerSpec]) -> None:
        for peer in peers:
            self.peers[peer.id] = peer

    def remove(self, ids: Iterable[str]) -> None:
        for pid in ids:
            self.peers.pop(pid, None)

    @property
    def rooms(self) -> list[int]:
        return sorted({p.room for p in self.peers.values()})

    def fanout(self, publisher: str) -> int:
        """How many present peers receive `publisher`'s tracks."""
        return sum(1 for p in self.peers.values() if publisher in p.receives)

    def streams(self) -> int:
        """Forwarded streams (consumers) among present peers."""
        present = self.peers
        return sum(len(present[r].kinds) for p in present.values() for r in p.receives if r in present)

    def counts(self) -> dict[str, int]:
        peers = list(self.peers.values())
        return {
            "rooms": len(self.rooms),
            "peers": len(peers),
            "publishers": sum(1 for p in peers if p.publishes),
            "subscribers": sum(1 for p in peers if p.receives),
            "listeners": sum(1 for p in peers if not p.publishes),
            "consumers": self.streams(),
        }

    def expected(self, sent: dict[str, dict[str, int]]) -> int:
        """Packets the subscribers should receive for `sent` (publisher -> kind -> packets sent)."""
        total = 0
        for publisher, by_kind in sent.items():
            if publisher in self.peers:
                total += sum(by_kind.values()) * self.fanout(publisher)
        return total


def assign(peers: Sequence[PeerSpec], processes: int) -> list[list[PeerSpec]]:
    """Spread peers over load processes, interleaved so every room is served by all of them."""
    out: list[list[PeerSpec]] = [[] for _ in range(processes)]
    for i, peer in enumerate(peers):
        out[(i + peer.room) % processes].append(peer)
    return out


def half_load(topology: Topology) -> list[str]:
    """Peers to remove for the latency phase: about half of the forwarded streams.

    Whole rooms (the last half) when there are several, else half of the listeners of the one room.
    """
    rooms = topology.rooms
    if len(rooms) >= 2:
        gone = set(rooms[len(rooms) - len(rooms) // 2 :])
        return [p.id for p in topology.peers.values() if p.room in gone]
    listeners = [p.id for p in topology.peers.values() if not p.publishes]
    if len(listeners) >= 2:
        return listeners[len(listeners) // 2 :]
    return []
