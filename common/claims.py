"""The claims a Voxa access token carries, and how they resolve to rights.

A token is issued by the application that owns users (the "community" backend) and names one user,
one voice server and that user's permissions on it, with optional per-channel overrides in the
Discord style: a channel override first removes its `deny` list from the server-wide permissions,
then adds its `allow` list. Signaling never stores rights; it only evaluates these claims.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Permission(enum.StrEnum):
    """What a participant may do on a voice server or in one of its channels."""

    CONNECT = "connect"
    """Join the channel at all."""
    SPEAK = "speak"
    """Have one's audio forwarded to the others."""
    VIDEO = "video"
    """Publish camera video."""
    STREAM = "stream"
    """Share one's screen (Discord's "Go Live"): publish the `screen` and `screen_audio` sources. A
    separate right from `video`, so a community can allow cameras but keep screen shares to some roles."""
    MUTE_MEMBERS = "mute_members"
    """Server-mute and server-unmute others."""
    DEAFEN_MEMBERS = "deafen_members"
    """Server-deafen and server-undeafen others."""
    MOVE_MEMBERS = "move_members"
    """Move others to another channel, or disconnect them."""
    PRIORITY_SPEAKER = "priority_speaker"
    """Be heard over others (clients lower the others while this participant speaks)."""
    CALL = "call"
    """Place 1:1 and group calls to other users of the voice server."""


ALL_PERMISSIONS = frozenset(Permission)


class ChannelOverride(BaseModel):
    """Permission changes for one channel: `deny` is removed first, then `allow` is added."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: frozenset[Permission] = Field(
        default=frozenset(), description="Permissions added in this channel."
    )
    deny: frozenset[Permission] = Field(
        default=frozenset(), description="Permissions removed in this channel."
    )


class VoiceClaims(BaseModel):
    """The JWT claims Voxa reads. Registered claims (`exp`, `nbf`, `iss`, `aud`) are checked by the verifier.

    Example payload::

        {"sub": "alice", "name": "Alice", "server": "guild1",
         "perms": ["connect", "speak"],
         "channels": {"stage": {"deny": ["speak"]}},
         "exp": 1767225600}
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    sub: str = Field(min_length=1, max_length=128, description="Stable user id.")
    name: str = Field(default="", max_length=128, description="Display name shown to others.")
    server: str = Field(
        min_length=1, max_length=128, description="The voice server (community) the token is for."
    )
    perms: frozenset[Permission] = Field(
        default=frozenset(), description="Permissions on every channel of the voice server."
    )
    channels: dict[str, ChannelOverride] = Field(
        default_factory=dict, description="Per-channel overrides, keyed by channel id."
    )

    @field_validator("sub", "server")
    @classmethod
    def _no_separator(cls, value: str) -> str:
        # ':' and '|' separate fields of topics and store keys.
        if ":" in value or "|" in value:
            raise ValueError("must not contain ':' or '|'")
        return value

    @property
    def display_name(self) -> str:
        return self.name or self.sub

    def permissions_in(self, channel_id: str) -> frozenset[Permission]:
        """Effective permissions in one channel of the token's voice server."""
        override = self.channels.get(channel_id)
        if override is None:
            return self.perms
        return (self.perms - override.deny) | override.allow

    def can(self, permission: Permission, channel_id: str) -> bool:
        return permission in self.permissions_in(channel_id)


def parse_permissions(text: str) -> frozenset[Permission]:
    """Parse a comma list such as ``connect,speak``; ``all`` grants every permission."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    if names == ["all"]:
        return ALL_PERMISSIONS
    return frozenset(Permission(name) for name in names)


def parse_channel_override(text: str) -> tuple[str, ChannelOverride]:
    """Parse ``CHANNEL:perm,-perm``: plain names are allowed, names with a leading ``-`` denied."""
    channel, sep, rest = text.partition(":")
    if not sep or not channel:
        raise ValueError(f"expected CHANNEL:perm[,-perm...], got {text!r}")
    allow: list[Permission] = []
    deny: list[Permission] = []
    for raw in (p.strip() for p in rest.split(",")):
        if not raw:
            continue
        if raw.startswith("-"):
            deny.append(Permission(raw[1:]))
        else:
            allow.append(Permission(raw.removeprefix("+")))
    return channel, ChannelOverride(allow=frozenset(allow), deny=frozenset(deny))


def permission_names(perms: Iterable[Permission]) -> list[str]:
    """Sorted names, for replies and presence."""
    return sorted(p.value for p in perms)
