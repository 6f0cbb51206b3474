"""Every channel action is checked here, in one place, against the caller's token claims."""

from __future__ import annotations

import enum

from voxa.common.claims import Permission, VoiceClaims


class Action(enum.StrEnum):
    JOIN = "join"
    SPEAK = "speak"
    VIDEO = "video"
    STREAM = "stream"
    MUTE = "mute"
    UNMUTE = "unmute"
    DEAFEN = "deafen"
    UNDEAFEN = "undeafen"
    DISCONNECT = "disconnect"
    MOVE = "move"


# Which permission each action needs. Moderating another member's mute needs mute_members, deafen needs
# deafen_members; disconnecting and moving need move_members (as in Discord).
REQUIRED: dict[Action, Permission] = {
    Action.JOIN: Permission.CONNECT,
    Action.SPEAK: Permission.SPEAK,
    Action.VIDEO: Permission.VIDEO,
    Action.STREAM: Permission.STREAM,
    Action.MUTE: Permission.MUTE_MEMBERS,
    Action.UNMUTE: Permission.MUTE_MEMBERS,
    Action.DEAFEN: Permission.DEAFEN_MEMBERS,
    Action.UNDEAFEN: Permission.DEAFEN_MEMBERS,
    Action.DISCONNECT: Permission.MOVE_MEMBERS,
    Action.MOVE: Permission.MOVE_MEMBERS,
}


class Forbidden(Exception):
    """The caller lacks a right; the message is the reply's reason."""

    def __init__(self, reason: str, permission: Permission | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permission = permission


def check(claims: VoiceClaims, server_id: str, channel_id: str, action: Action) -> None:
    """Raise Forbidden unless `claims` allow `action` in `server_id`/`channel_id`."""
    if claims.server != server_id:
        raise Forbidden("token is for another voice server")
    permission = REQUIRED[action]
    if not claims.can(permission, channel_id):
        raise Forbidden(f"missing permission {permission.value!r}", permission)


def allowed(claims: VoiceClaims, server_id: str, channel_id: str, action: Action) -> bool:
    try:
        check(claims, server_id, channel_id, action)
    except Forbidden:
        return False
    return True
