"""voxa.common.ports: a process never hands out one port twice, and a pick is bindable as asked."""

from __future__ import annotations

import socket

from voxa.common.ports import LOOPBACK, TCP_AND_UDP, UDP, free_port


def test_picks_are_never_repeated_within_a_process() -> None:
    picks = [free_port() for _ in range(300)]
    assert len(set(picks)) == len(picks)


def test_a_pick_for_tcp_and_udp_binds_both() -> None:
    port = free_port(kinds=TCP_AND_UDP)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        tcp.bind((LOOPBACK, port))
        udp.bind((LOOPBACK, port))


def test_a_udp_pick_binds_udp() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, free_port(kinds=UDP)))
