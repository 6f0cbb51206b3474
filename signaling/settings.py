"""Signaling configuration: every knob is an environment variable with the ``VOXA_`` prefix."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from voxa.common.turn import IceConfig, ice_config
from voxa.signaling.calls import Policy as CallPolicy
from voxa.signaling.store.target import RedisTarget, parse_hosts

CommaList = Annotated[list[str], NoDecode]


def _default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class SignalingSettings(BaseSettings):
    """All settings of `voxa signaling`. README's configuration reference is generated from these fields."""

    model_config = SettingsConfigDict(env_prefix="VOXA_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=4000, ge=0, le=65535, description="Port to listen on.")
    log_level: str = Field(default="info", description="debug, info, warning or error.")

    jwt_secret: str | None = Field(default=None, description="HS256 shared secret for client tokens.")
    jwt_public_key_file: str | None = Field(
        default=None, description="PEM public key file for RS256/ES256/EdDSA client tokens."
    )
    jwt_jwks_file: str | None = Field(default=None, description="JWKS file (keys selected by `kid`).")
    jwt_issuer: str | None = Field(default=None, description="Required `iss` claim, if set.")
    jwt_audience: str | None = Field(default=None, description="Required `aud` claim, if set.")
    jwt_leeway_s: float = Field(default=10.0, ge=0, description="Clock skew tolerated on exp/nbf.")

    allowed_origins: CommaList = Field(
        default_factory=lambda: ["*"],
        description="Comma list of browser origins allowed to open sockets; `*` allows any. "
        "Requests without an Origin header (native apps) are always allowed.",
    )

    redis_url: str | None = Field(
        default=None,
        description="Redis URL for shared state (`redis://`, `rediss://`); unset keeps state in process "
        "memory, unless Sentinels are set. With `VOXA_REDIS_CLUSTER`, any node of the cluster.",
    )
    redis_cluster: bool = Field(
        default=False,
        description="`VOXA_REDIS_URL` names a node of a Redis Cluster (7.0 or later): the others are "
        "discovered, each voice server's keys share one slot, broadcasts use sharded pub/sub.",
    )
    redis_sentinels: CommaList = Field(
        default_factory=list,
        description="Comma list of Sentinel `host:port`s; signaling uses the primary they name and "
        "follows a failover (instead of `VOXA_REDIS_URL`).",
    )
    redis_sentinel_master: str | None = Field(
        default=None,
        description="The name of the primary the Sentinels monitor (with `VOXA_REDIS_SENTINELS`).",
    )
    redis_password: str | None = Field(
        default=None, description="Password of the Redis primary and replicas Sentinel names, if any."
    )
    redis_sentinel_password: str | None = Field(
        default=None, description="Password of the Sentinels themselves, if any."
    )
    replica_id: str = Field(default_factory=_default_replica_id, description="This replica's unique id.")
    replica_ttl_s: float = Field(
        default=15.0, gt=0, description="A replica silent this long is dead; its presence is swept."
    )
    session_resume_s: float = Field(
        default=15.0,
        ge=0,
        le=300,
        description=(
            "How long a voice session's SFU peer outlives its lost socket, so the client can resume it"
            " (from any replica) without renegotiating; 0 disables resume."
        ),
    )

    sfu_secret: str | None = Field(
        default=None, description="Bearer secret media servers use on the /internal registry API."
    )
    media_server_ttl_s: float = Field(
        default=10.0, gt=0, description="A media server silent this long expires."
    )

    turn_secret: str | None = Field(default=None, description="TURN REST shared secret.")
    turn_uris: CommaList = Field(default_factory=list, description="Comma list of turn:/turns:/stun: URIs.")
    turn_ttl_s: int = Field(default=3600, gt=0, description="Lifetime of issued TURN credentials.")
    ice_transport_policy: Literal["all", "relay"] = Field(
        default="all",
        description="What clients are told to use: relay when media servers are reachable only through "
        "the TURN servers (the operator sets it for a VoiceServer behind a StunnerGateway).",
    )

    max_frame_bytes: int = Field(default=65536, ge=1024, description="Largest WebSocket frame accepted.")
    max_header_bytes: int = Field(
        default=8190,
        ge=1024,
        le=65536,
        description="Longest request line and longest header field accepted (longer: 400). A token in "
        "the URL counts against the request line.",
    )
    handshake_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A connection must complete its request headers (the WebSocket upgrade, or any HTTP "
        "request) within this long of connecting or of its previous response, else it is closed. It "
        "must exceed the SFUs' heartbeat interval, VOXA_MEDIA_SERVER_TTL_S / 3.",
    )
    max_connections_per_address: int = Field(
        default=256,
        ge=0,
        description="Open TCP connections one client address may hold; more are answered 429 and closed. "
        "0: no limit.",
    )
    connections_per_address_per_s: float = Field(
        default=20.0,
        ge=0,
        description="New TCP connections per second one client address may open after its burst; more "
        "are answered 429 and closed. 0: no limit.",
    )
    connection_burst_per_address: int = Field(
        default=200, ge=1, description="New connections one client address may open at once."
    )
    address_limit_exempt: CommaList = Field(
        default_factory=lambda: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"],
        description="Comma list of CIDRs the per-address limits do not apply to: the private ranges by "
        "default, where load balancers, ingress controllers and node SNAT connect from (behind one, "
        "every client shares its address; limit per client there). Empty: limit every address.",
    )
    max_channels_per_socket: int = Field(default=16, ge=1, description="Channels one socket may join.")
    messages_per_s: float = Field(default=50.0, gt=0, description="Sustained messages per socket per second.")
    message_burst: int = Field(default=100, ge=1, description="Burst of messages allowed above the rate.")
    joins_per_10s: int = Field(default=20, ge=1, description="Joins one socket may attempt per 10 seconds.")
    idle_timeout_s: float = Field(
        default=60.0, gt=0, description="Close sockets silent this long (no heartbeat)."
    )
    outbound_queue_frames: int = Field(
        default=2000, ge=10, description="Frames queued for a slow socket before it is closed."
    )
    outbound_queue_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=65536,
        description="Frame text (bytes of ASCII JSON) queued for a slow socket before it is closed; "
        "whichever of the two limits comes first.",
    )
    max_channel_members: int = Field(default=200, ge=1, description="Default capacity of a voice channel.")
    shutdown_grace_s: float = Field(default=10.0, ge=0, description="Deadline to drain sockets on SIGTERM.")
    call_ring_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="How long a call rings an invitee before it times out."
    )
    call_max_invitees: int = Field(default=16, ge=1, le=256, description="Most invitees of one call.")
    call_reconnect_grace_s: float = Field(
        default=10.0, ge=0, le=300, description="How long a ringing call outlives its caller's last socket."
    )
    call_waiting: bool = Field(
        default=False,
        description="Ring an invitee who is in another call (`busy: true`) instead of declining for them.",
    )

    push_vapid_private_key_file: str | None = Field(
        default=None,
        description="PEM file of the P-256 VAPID key that signs Web Push requests; unset refuses "
        "`webpush` registrations (docs/push.md).",
    )
    push_vapid_subject: str | None = Field(
        default=None,
        description="The VAPID `sub` claim push services contact you by: a mailto: or https: URL.",
    )
    push_fcm_service_account_file: str | None = Field(
        default=None,
        description="Firebase service-account JSON key (client_email, private_key, token_uri, "
        "project_id); unset refuses `fcm` registrations.",
    )
    push_fcm_url: str = Field(
        default="https://fcm.googleapis.com", description="Base URL of the FCM HTTP v1 API."
    )
    push_apns_key_file: str | None = Field(
        default=None,
        description="APNs auth key (.p8, PEM) for token-based pushes; unset refuses `apns` and "
        "`apns-voip` registrations.",
    )
    push_apns_key_id: str | None = Field(default=None, description="The APNs key's id (the JWT `kid`).")
    push_apns_team_id: str | None = Field(default=None, description="The Apple team id (the JWT `iss`).")
    push_apns_topic: str | None = Field(
        default=None, description="The app's bundle id (`apns-topic`; VoIP pushes go to `<bundle>.voip`)."
    )
    push_apns_url: str = Field(default="https://api.push.apple.com", description="Base URL of APNs.")
    push_apns_ca_file: str | None = Field(
        default=None, description="CA bundle to trust for APNs instead of the system's (test stand-ins)."
    )
    push_queue_size: int = Field(
        default=1000, ge=1, le=1_000_000, description="Pushes queued before new ones are dropped (counted)."
    )

    def call_policy(self) -> CallPolicy:
        return CallPolicy(
            ring_timeout_s=self.call_ring_timeout_s,
            max_invitees=self.call_max_invitees,
            reconnect_grace_s=self.call_reconnect_grace_s,
            call_waiting=self.call_waiting,
        )

    def redis_target(self) -> RedisTarget | None:
        """Where shared state lives; None keeps it in process memory."""
        if self.redis_sentinels:
            return RedisTarget(
                sentinels=parse_hosts(self.redis_sentinels),
                sentinel_master=self.redis_sentinel_master,
                password=self.redis_password,
                sentinel_password=self.redis_sentinel_password,
            )
        if self.redis_url:
            return RedisTarget(url=self.redis_url, cluster=self.redis_cluster)
        return None

    @model_validator(mode="after")
    def _check_redis(self) -> SignalingSettings:
        if self.redis_sentinels:
            if self.redis_url or self.redis_cluster:
                raise ValueError(
                    "set VOXA_REDIS_SENTINELS or VOXA_REDIS_URL (and VOXA_REDIS_CLUSTER), not both"
                )
            if not self.redis_sentinel_master:
                raise ValueError("VOXA_REDIS_SENTINELS needs VOXA_REDIS_SENTINEL_MASTER")
            parse_hosts(self.redis_sentinels)
        elif self.redis_cluster and not self.redis_url:
            raise ValueError("VOXA_REDIS_CLUSTER needs VOXA_REDIS_URL (any node of the cluster)")
        elif self.redis_password or self.redis_sentinel_password or self.redis_sentinel_master:
            raise ValueError(
                "VOXA_REDIS_PASSWORD, VOXA_REDIS_SENTINEL_PASSWORD and VOXA_REDIS_SENTINEL_MASTER go with "
                "VOXA_REDIS_SENTINELS (a URL carries its own password)"
            )
        return self

    @field_validator("allowed_origins", "turn_uris", "redis_sentinels", "address_limit_exempt", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("address_limit_exempt")
    @classmethod
    def _check_cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"VOXA_ADDRESS_LIMIT_EXEMPT: {cidr!r} is not an address or CIDR") from None
        return value

    @model_validator(mode="after")
    def _check_auth(self) -> SignalingSettings:
        if not (self.jwt_secret or self.jwt_public_key_file or self.jwt_jwks_file):
            raise ValueError("set VOXA_JWT_SECRET, VOXA_JWT_PUBLIC_KEY_FILE or VOXA_JWT_JWKS_FILE")
        return self

    @model_validator(mode="after")
    def _check_handshake_timeout(self) -> SignalingSettings:
        # The same timer closes idle keep-alive connections: an SFU's registry heartbeat on a
        # connection the server is closing at that moment would fail.
        if self.handshake_timeout_s <= self.media_server_ttl_s / 3:
            raise ValueError(
                "VOXA_HANDSHAKE_TIMEOUT_S must exceed the SFUs' heartbeat interval, "
                "VOXA_MEDIA_SERVER_TTL_S / 3"
            )
        return self

    @model_validator(mode="after")
    def _check_push(self) -> SignalingSettings:
        if self.push_vapid_private_key_file:
            subject = self.push_vapid_subject or ""
            if not subject.startswith(("mailto:", "https://")):
                raise ValueError(
                    "VOXA_PUSH_VAPID_SUBJECT must be a mailto: or https: URL when Web Push is set"
                )
        if self.push_apns_key_file and not (
            self.push_apns_key_id and self.push_apns_team_id and self.push_apns_topic
        ):
            raise ValueError(
                "VOXA_PUSH_APNS_KEY_FILE needs VOXA_PUSH_APNS_KEY_ID, VOXA_PUSH_APNS_TEAM_ID and "
                "VOXA_PUSH_APNS_TOPIC"
            )
        return self

    def ice_for(self, user_id: str) -> IceConfig:
        """The ICE servers and transport policy one user is given (join replies, GET /ice)."""
        return ice_config(
            self.turn_secret,
            self.turn_uris,
            user_id,
            self.turn_ttl_s,
            transport_policy=self.ice_transport_policy,
        )

    def origin_allowed(self, origin: str | None) -> bool:
        if origin is None:
            return True
        return "*" in self.allowed_origins or origin in self.allowed_origins
