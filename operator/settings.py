"""Operator configuration: every knob is an environment variable with the ``VOXA_OPERATOR_`` prefix."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]


class OperatorSettings(BaseSettings):
    """All settings of `voxa operator`. README's configuration reference is generated from these fields."""

    model_config = SettingsConfigDict(env_prefix="VOXA_OPERATOR_", extra="ignore")

    namespaces: CommaList = Field(
        default_factory=list,
        description="Comma list of namespaces to watch; empty watches the whole cluster.",
    )
    resync_s: float = Field(
        default=5.0,
        gt=0,
        description="How often each VoiceServer's load, scaling and status are re-evaluated.",
    )
    liveness_port: int = Field(
        default=8080, ge=0, le=65535, description="Port of the liveness endpoint (GET /healthz)."
    )
    metrics_port: int = Field(
        default=9090, ge=0, le=65535, description="Port of the Prometheus metrics endpoint; 0 disables it."
    )
    liveness_host: str = Field(default="0.0.0.0", description="Address of the liveness endpoint.")
    peering: str = Field(
        default="voxa-operator",
        description="kopf peering name: replicas sharing it elect one active operator. Empty: standalone.",
    )
    peering_lifetime_s: int = Field(
        default=60,
        ge=5,
        description="How long a replica that stopped without saying goodbye (killed) still counts as "
        "active; the standby takes over after it. A clean stop hands over at once.",
    )
    priority: int | None = Field(
        default=None,
        description="Peering priority; the highest-priority replica is the active one. Unset: by "
        "seniority, the replica that started first (kopf pauses every replica of equal priority, so "
        "the replicas of one Deployment must not share one).",
    )
    cleanup_attempts: int = Field(
        default=12,
        ge=1,
        description="Attempts (5 s apart) to remove a deleted VoiceServer's Redis keys before giving up.",
    )
    turn_propagation_s: int = Field(
        default=120,
        ge=0,
        description="How long a new TURN secret waits in a gateway's standby stunnerd slot before new "
        "calls move to it: the kubelet updates the pods' mounted config within about a minute.",
    )
    log_level: str = Field(default="info", description="debug, info, warning or error.")

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value
