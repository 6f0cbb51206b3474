"""Scenarios of the SFU benchmark as plain data: rooms of peers, who publishes what, who receives what.

Every peer receives every track of every *other publishing* peer of its room, which is what Voxa's SFU
does by itself (a consumer per producer and other peer) and what the Janus load subscribes to
explicitly. Peers that do not publish offer a ``recvonly`` audio section to Voxa (no producer) and have
no publisher handle in Janus.

* ``audio-rooms``: rooms of 10 peers, 2 of them speaking: 2 x 9 = 18 forwarded audio streams per room;
* ``large-room``: one room, 2 publishers and ``subscribers`` listeners: 2 x (subscribers + 1) streams;
* ``video-room``: rooms of 4 peers each sending audio + VP8 video: 4 x 2 x 3 = 24 streams per room.
  With ``simulcast`` every publisher sends three VP8 layers (q, h, f) and each subscriber is given a
  layer per publisher it receives: the k-th other publisher of peer i gets layer (i + k) mod 3, so
  every subscriber has one consumer on each layer and the room a third of its video streams on each.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final

SCENARIOS: Final = ("audio-rooms", "large-room", "video-room")
JANUS_ROOM_BASE: Final = 7000
LAYER_RIDS: Final = ("q", "h", "f")
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
    simulcast: bool = False  # publishes its video as three layers (q, h, f)
    layers: tuple[int, ...] = ()  # simulcast: the layer wanted of each of `receives` (0 = q ... 2 = f)

    def layer_of(self, publisher: str) -> int | None:
        """The layer this peer is meant to receive of `publisher`'s video (None: not simulcast)."""
        if not self.layers:
            return None
        return self.layers[self.receives.index(publisher)]

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


SIMULCAST_LAYERS: Final = 3
VIDEO_MID: Final = "1"  # the load publishers' video m-section (aiortc: audio "0", then video "1")


def video_track(publisher: str) -> str:
    """The SFU's track id of a load publisher's video (`<peer>:<mid>`)."""
    return f"{publisher}:{VIDEO_MID}"


def _room(index: int, publishers: int, listeners: int, *, video: bool, simulcast: bool = False) -> RoomPlan:
    feeds = {f"r{index}s{i}": index * FEEDS_PER_ROOM + i + 1 for i in range(publishers)}
    peers: list[PeerSpec] = []
    kinds = 2 if video else 1
    simulcast = simulcast and video
    for i, (pid, feed) in enumerate(feeds.items()):
        others = tuple(p for p in feeds if p != pid)
        layers = tuple((i + k) % SIMULCAST_LAYERS for k in range(len(others))) if simulcast else ()
        peers.append(
            PeerSpec(
                pid,
                index,
                True,
                video,
                others,
                kinds * len(others),
                feed,
                tuple(feeds[p] for p in others),
                simulcast,
                layers,
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
    layers = peer.layers or (0,) * len(peer.receives)
    keep = [
        (r, f, lay)
        for r, f, lay in zip(peer.receives, peer.receive_feeds, layers, strict=True)
        if r not in gone
    ]
    if len(keep) == len(peer.receives):
        return peer
    per_publisher = peer.expect_streams // max(len(peer.receives), 1)
    return replace(
        peer,
        receives=tuple(r for r, _, _ in keep),
        receive_feeds=tuple(f for _, f, _ in keep),
        expect_streams=per_publisher * len(keep),
        layers=tuple(lay for _, _, lay in keep) if peer.layers else (),
    )


def build_room(scenario: str, index: int, *, subscribers: int = 200, simulcast: bool = False) -> RoomPlan:
    if scenario == "audio-rooms":
        return _room(index, 2, 8, video=False)
    if scenario == "large-room":
        return _room(index, 2, subscribers, video=False)
    if scenario == "video-room":
        return _room(index, 4, 0, video=True, simulcast=simulcast)
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
        """Packets the subscribers should receive for `sent` (publisher -> kind -> packets sent).

        A simulcast publisher's video is counted per layer (kinds "video/q", "video/h", "video/f"): each
        subscriber should receive the layer it was given (`PeerSpec.layers`)."""
        total = 0
        for publisher, by_kind in sent.items():
            if publisher not in self.peers:
                continue
            plain = sum(n for kind, n in by_kind.items() if "/" not in kind)
            total += plain * self.fanout(publisher)
            if any("/" in k for k in by_kind):
                for peer in self.peers.values():
                    layer = peer.layer_of(publisher) if publisher in peer.receives else None
                    if layer is not None:
                        total += by_kind.get(f"video/{LAYER_RIDS[layer]}", 0)
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
