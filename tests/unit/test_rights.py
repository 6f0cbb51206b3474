"""Rights: server-wide permissions, channel overrides, and the one place actions are checked."""

from __future__ import annotations

import pytest

from voxa.common.claims import (
    ALL_PERMISSIONS,
    ChannelOverride,
    Permission,
    VoiceClaims,
    parse_channel_override,
    parse_permissions,
)
from voxa.signaling.rights import REQUIRED, Action, Forbidden, allowed, check

P = Permission


def claims(perms: str, **channels: ChannelOverride) -> VoiceClaims:
    return VoiceClaims(sub="u", server="g", perms=parse_permissions(perms), channels=channels)


def test_channel_override_denies_then_allows() -> None:
    c = claims("connect,speak", stage=ChannelOverride(deny=frozenset({P.SPEAK}), allow=frozenset({P.VIDEO})))
    assert c.permissions_in("lobby") == {P.CONNECT, P.SPEAK}
    assert c.permissions_in("stage") == {P.CONNECT, P.VIDEO}


def test_allow_wins_over_deny_of_the_same_permission() -> None:
    c = claims("connect", x=ChannelOverride(deny=frozenset({P.SPEAK}), allow=frozenset({P.SPEAK})))
    assert c.can(P.SPEAK, "x")


def test_check_needs_matching_server() -> None:
    with pytest.raises(Forbidden, match="another voice server"):
        check(claims("all"), "other", "c", Action.JOIN)


@pytest.mark.parametrize("action", list(Action))
def test_each_action_needs_its_permission(action: Action) -> None:
    needed = REQUIRED[action]
    assert allowed(claims(needed.value), "g", "c", action)
    without = VoiceClaims(sub="u", server="g", perms=ALL_PERMISSIONS - {needed})
    with pytest.raises(Forbidden) as info:
        check(without, "g", "c", action)
    assert info.value.permission is needed
    assert needed.value in info.value.reason


def test_moderation_permissions() -> None:
    assert REQUIRED[Action.MUTE] is P.MUTE_MEMBERS
    assert REQUIRED[Action.DEAFEN] is P.DEAFEN_MEMBERS
    assert REQUIRED[Action.DISCONNECT] is P.MOVE_MEMBERS
    assert REQUIRED[Action.MOVE] is P.MOVE_MEMBERS


def test_parse_channel_override() -> None:
    channel, override = parse_channel_override("stage:video,-speak,+priority_speaker")
    assert channel == "stage"
    assert override.allow == {P.VIDEO, P.PRIORITY_SPEAKER} and override.deny == {P.SPEAK}


@pytest.mark.parametrize("text", ["nocolon", ":speak", "c:fly"])
def test_parse_channel_override_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_channel_override(text)


def test_parse_permissions_all() -> None:
    assert parse_permissions("all") == ALL_PERMISSIONS
    with pytest.raises(ValueError):
        parse_permissions("connect,teleport")


def test_stream_is_its_own_right_and_channel_overrides_apply() -> None:
    """Go Live: a camera (`video`) does not imply a screen share (`stream`); a channel can grant it."""
    c = claims("connect,speak,video", stage=ChannelOverride(allow=frozenset({P.STREAM})))
    assert REQUIRED[Action.STREAM] is P.STREAM and P.STREAM in ALL_PERMISSIONS
    assert allowed(c, "g", "lobby", Action.VIDEO) and not allowed(c, "g", "lobby", Action.STREAM)
    with pytest.raises(Forbidden, match="missing permission 'stream'"):
        check(c, "g", "lobby", Action.STREAM)
    assert allowed(c, "g", "stage", Action.STREAM)
    assert parse_permissions("connect,stream") == {P.CONNECT, P.STREAM}
