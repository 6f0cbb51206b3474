"""Type stubs of the native data plane (sfu/dataplane/src/py.rs); maturin ships them with py.typed."""

__version__: str

def classify(data: bytes) -> str:
    """ "stun", "dtls", "rtp", "rtcp" or "other" (RFC 7983)."""

def srtp_keying_material_len(profile: int) -> int: ...
def ceiling(
    *,
    rooms: int,
    peers_per_room: int,
    publishers_per_room: int,
    packets_per_s: int = 50,
    payload_bytes: int = 100,
    seconds: float = 10.0,
    forwarder_core: int | None = None,
    load_core: int | None = None,
    profile: int = 0x0008,
) -> dict[str, float]:
    """The minimal forwarder's figures under a load shape (sent, forwarded, received, forwarder_cpu_s,
    elapsed_s, pps_per_core)."""

class SrtpSession:
    def __init__(self, profile: int, keying_material: bytes, is_client: bool) -> None: ...
    def protect_rtp(self, packet: bytes) -> bytes: ...
    def unprotect_rtp(self, packet: bytes) -> bytes: ...
    def protect_rtcp(self, packet: bytes) -> bytes: ...
    def unprotect_rtcp(self, packet: bytes) -> bytes: ...

class Worker:
    """One worker's media socket, I/O thread and media state. Errors: KeyError (not found),
    RuntimeError "conflict: ..." (conflict), ValueError (invalid), OSError (socket)."""

    def __init__(self, listen_ip: str, port: int) -> None: ...
    @property
    def port(self) -> int: ...
    def event_fd(self) -> int: ...
    def now_ms(self) -> int: ...
    def close(self) -> None: ...
    def set_allowed_networks(self, networks: list[str]) -> None: ...
    def take_events(self) -> list[tuple[str, int, object]]:
        """("connected", peer, (host, port)), ("dtls", peer, bytes), ("consent_expired", peer, None),
        ("layers", producer, wanted_mask: int) (dynacast, on change: bit i = layer i is wanted),
        ("layer", consumer, layer: int) (a video consumer switched, at a keyframe, to that layer)."""
    def add_peer(self, ufrag: str, pwd: str) -> int: ...
    def remove_peer(self, peer: int) -> None: ...
    def set_srtp(self, peer: int, profile: int, keying_material: bytes, is_client: bool) -> None: ...
    def send_dtls(self, peer: int, data: bytes) -> bool: ...
    def peer_addr(self, peer: int) -> tuple[str, int] | None: ...
    def peer_stats(self, peer: int) -> tuple[int, int, int]: ...
    def set_peer_bandwidth(self, peer: int, bps: int) -> None:
        """Override the peer's bandwidth estimate (0: back to the estimator)."""
    def peer_bandwidth(self, peer: int) -> tuple[int, str]:
        """(bps, source): source is "twcc", "remb", "override" or "initial"."""
    def add_producer(
        self,
        peer: int,
        *,
        kind: str,
        clock_rate: int,
        ssrcs: list[int],
        mid: str,
        mid_id: int = 0,
        audio_level_id: int = 0,
        codec: str | None = None,
        layers: list[tuple[str, int, int]] = [],
        rid_id: int = 0,
        repaired_rid_id: int = 0,
        rtx_payload_types: list[tuple[int, int]] = [],
        transport_cc_id: int = 0,
    ) -> int:
        """layers: simulcast layers lowest first, (rid, ssrc or 0 = learn from the rid extension,
        rtx ssrc or 0); rtx_payload_types: the publisher's (rtx_pt, apt) pairs."""
    def remove_producer(self, producer: int) -> list[int]: ...
    def set_producer_forwarding(self, producer: int, forwarding: bool) -> None: ...
    def request_keyframe(self, producer: int) -> None: ...
    def producer_stats(self, producer: int) -> tuple[int, int, int, int]: ...
    def producer_layers(self, producer: int) -> list[tuple[str, int, int, int, int, bool]]:
        """Per layer, lowest first: (rid, ssrc, bitrate_bps, width, height, wanted); 0 = not known yet."""
    def take_levels(self) -> list[tuple[int, int, int, int]]: ...
    def add_consumer(self, producer: int, subscriber: int, ssrc: int = 0, rtx_ssrc: int = 0) -> int:
        """ssrc / rtx_ssrc 0: the worker picks one (no RTX SSRC for audio)."""
    def consumer_rtx_ssrc(self, consumer: int) -> int:
        """0 for audio."""
    def configure_consumer(
        self,
        consumer: int,
        payload_types: list[tuple[int, int]],
        *,
        mid: str,
        mid_id: int = 0,
        abs_send_time_id: int = 0,
        audio_level_id: int = 0,
        transport_cc_id: int = 0,
        rtx_payload_types: list[tuple[int, int]] = [],
    ) -> None:
        """transport_cc_id: write transport-wide sequence numbers (per subscriber peer);
        rtx_payload_types: the subscriber's (rtx_pt, apt) pairs; empty = NACKs get plain resends."""
    def set_consumer_preferences(
        self,
        consumer: int,
        *,
        max_layer: int = -1,
        max_width: int = 0,
        max_height: int = 0,
        paused: bool = False,
    ) -> None:
        """Layer cap by index (-1: none) or by displayed size (0: none; the lowest layer covering it);
        paused: no packets at all (a hidden tile), apart from set_consumer_paused (deafen)."""
    def consumer_layers(self, consumer: int) -> tuple[int, int]:
        """(current, target); -1 = none yet."""
    def set_consumer_ready(self, consumer: int, ready: bool) -> None: ...
    def set_consumer_paused(self, consumer: int, paused: bool) -> None: ...
    def remove_consumer(self, consumer: int) -> None: ...
    def consumer_stats(self, consumer: int) -> tuple[int, int, int, int, int]: ...
    def forwarded_total(self) -> int: ...
    def counters(self) -> dict[str, int]: ...
