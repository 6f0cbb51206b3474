"""SFU configuration: every knob is an environment variable with the ``VOXA_SFU_`` prefix (the shared
secret keeps its signaling-side name, ``VOXA_SFU_SECRET``)."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
from functools import cached_property
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]


class SfuSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOXA_SFU_", extra="ignore", populate_by_name=True)

    host: str = Field(default="127.0.0.1", description="Control API listen address.")
    port: int = Field(
        default=4100, ge=0, le=65535, description="Control API port (worker i listens on port + i)."
    )
    secret: str = Field(
        default="",
        validation_alias=AliasChoices("VOXA_SFU_SECRET", "secret"),
        description="Bearer secret shared with signaling (control API and registry).",
    )
    id: str = Field(default_factory=socket.gethostname, description="Media-server id (workers append -w<i>).")
    server_id: str = Field(default="demo", description="The voice server this SFU serves.")
    signaling_url: str | None = Field(
        default=None, description="Signaling base URL for registry heartbeats; unset disables registration."
    )
    advertise_url: str | None = Field(
        default=None, description="Control URL signaling should use (default http://<host>:<port>)."
    )
    capacity: int = Field(default=500, ge=1, description="Peers one worker accepts.")
    workers: int = Field(default=0, ge=0, description="Worker processes; 0 = one per CPU core.")
    rtc_listen_ip: str = Field(default="127.0.0.1", description="Address media (ICE/UDP) binds to.")
    rtc_announced_ip: str | None = Field(
        default=None, description="Address put in ICE candidates (default: the listen address)."
    )
    rtc_min_port: int = Field(
        default=40000,
        ge=1024,
        le=65535,
        description="Lowest UDP port for media: worker i of the native data plane takes rtc_min_port + i "
        "(or the next free port of the range).",
    )
    rtc_max_port: int = Field(default=49999, ge=1024, le=65535, description="Highest UDP port for media.")
    dataplane: Literal["native", "python"] = Field(
        default="native",
        description="native: one UDP port per worker, every packet handled by the Rust data plane "
        "(sfu/dataplane/); python: one port per peer through aiortc's transports (the reference path).",
    )
    rtc_remote_networks: CommaList = Field(
        default_factory=list,
        description="Comma list of CIDRs media may come from (empty: anywhere); e.g. 127.0.0.0/8 in tests.",
    )
    connect_timeout_s: float = Field(
        default=15.0, gt=0, description="A peer whose ICE+DTLS is not up by then is removed."
    )
    drain_deadline_s: float = Field(default=300.0, ge=0, description="On SIGTERM, exit by then even if busy.")
    log_level: str = Field(default="info", description="debug, info, warning or error.")

    @field_validator("rtc_max_port")
    @classmethod
    def _range(cls, value: int, info: object) -> int:
        data = getattr(info, "data", {})
        low = data.get("rtc_min_port", 0)
        if value < low:
            raise ValueError("rtc_max_port must be >= rtc_min_port")
        return value

    @field_validator("rtc_remote_networks", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("rtc_remote_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value

    @cached_property
    def remote_filter(self) -> Callable[[str], bool] | None:
        """A predicate on remote IPs, or None when any address is allowed."""
        if not self.rtc_remote_networks:
            return None
        networks = [ipaddress.ip_network(n, strict=False) for n in self.rtc_remote_networks]

        def allowed(host: str) -> bool:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                return False
            return any(address in net for net in networks)

        return allowed

    @property
    def worker_count(self) -> int:
        return self.workers or (os.cpu_count() or 1)
