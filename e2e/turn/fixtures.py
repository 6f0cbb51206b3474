"""Pytest fixtures for real TURN servers on loopback (e2e/turn/servers.py).

Nothing here skips: stunnerd is built from the Go module proxy on first use (e2e/turn/build.sh, then
cached under ~/.cache/voxa), and coturn's turnserver must be installed (Debian package `coturn`).

    def test_x(stunnerd_factory: StunnerdFactory, coturn_factory: CoturnFactory) -> None:
        gateway = stunnerd_factory(secret="s1", endpoints=["127.0.0.2"], watch=True)
        relay = coturn_factory(secrets=["s1", "s0"])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from e2e.turn.servers import (
    CoturnProcess,
    GatewayPod,
    StunnerdProcess,
    build_stunnerd,
    stunnerd_cache_path,
)
from voxa.common.ports import ANY, TCP_AND_UDP, UDP, free_port
from voxa.operator.render.stunnerd_config import Listener

REALM = "voxa.test"
SECRET = "turn-secret-0123456789"
SFU_HOST = "127.0.0.2"  # the only peer address the test servers relay to by default


class StunnerdFactory(Protocol):
    def __call__(
        self,
        *,
        secret: str = SECRET,
        realm: str = REALM,
        endpoints: Sequence[str] = (SFU_HOST,),
        watch: bool = False,
        extra_listeners: Sequence[Listener] = (),
    ) -> StunnerdProcess: ...


class CoturnFactory(Protocol):
    def __call__(
        self,
        *,
        secrets: Sequence[str] = (SECRET,),
        realm: str = REALM,
        allowed_peers: Sequence[str] = (SFU_HOST,),
        denied_peers: Sequence[str] = ("127.0.0.0-127.255.255.255",),
        secrets_in_db: bool = False,
    ) -> CoturnProcess: ...


@pytest.fixture(scope="session")
def stunnerd_binary() -> Path:
    """The pinned stunnerd, built once (minutes on a cold Go cache, instant afterwards)."""
    binary = build_stunnerd()
    assert binary == stunnerd_cache_path(), (binary, stunnerd_cache_path())
    return binary


S = TypeVar("S", StunnerdProcess, CoturnProcess)


@contextlib.contextmanager
def _servers(tmp_path: Path, kind: str) -> Iterator[Callable[[Callable[[Path], S]], S]]:
    """Start servers in their own work directories; stop them all at the end."""
    started: list[StunnerdProcess | CoturnProcess] = []

    def start(make: Callable[[Path], S]) -> S:
        workdir = tmp_path / f"{kind}-{len(started)}"
        workdir.mkdir()
        server = make(workdir)
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def stunnerd_factory(tmp_path: Path, stunnerd_binary: Path) -> Iterator[StunnerdFactory]:
    with _servers(tmp_path, "stunnerd") as start:

        def factory(
            *,
            secret: str = SECRET,
            realm: str = REALM,
            endpoints: Sequence[str] = (SFU_HOST,),
            watch: bool = False,
            extra_listeners: Sequence[Listener] = (),
        ) -> StunnerdProcess:
            return start(
                lambda workdir: StunnerdProcess(
                    workdir,
                    realm,
                    free_port(ANY, UDP),
                    binary=stunnerd_binary,
                    secret=secret,
                    endpoints=tuple(endpoints),
                    watch=watch,
                    extra_listeners=tuple(extra_listeners),
                )
            )

        yield factory


@pytest.fixture
def coturn_factory(tmp_path: Path) -> Iterator[CoturnFactory]:
    with _servers(tmp_path, "coturn") as start:

        def factory(
            *,
            secrets: Sequence[str] = (SECRET,),
            realm: str = REALM,
            allowed_peers: Sequence[str] = (SFU_HOST,),
            denied_peers: Sequence[str] = ("127.0.0.0-127.255.255.255",),
            secrets_in_db: bool = False,
        ) -> CoturnProcess:
            return start(
                lambda workdir: CoturnProcess(
                    workdir,
                    realm,
                    free_port(kinds=TCP_AND_UDP),
                    secrets=tuple(secrets),
                    allowed_peers=tuple(allowed_peers),
                    denied_peers=tuple(denied_peers),
                    secrets_in_db=secrets_in_db,
                )
            )

        yield factory


@pytest.fixture
def gateway_pod(tmp_path: Path, stunnerd_binary: Path) -> Iterator[GatewayPod]:
    """A StunnerGateway's pod on loopback: two stunnerd slots with the operator's configs, secret
    SECRET, relaying to 127.0.0.2's SFU port range only."""
    pod = GatewayPod(tmp_path / "gateway-pod", stunnerd_binary, SECRET, realm=REALM, endpoints=(SFU_HOST,))
    try:
        pod.start()
        yield pod
    finally:
        pod.stop()


@pytest.fixture
def stunnerd(stunnerd_factory: StunnerdFactory) -> StunnerdProcess:
    """stunnerd with the default secret, relaying to 127.0.0.2 only, in watch mode."""
    return stunnerd_factory(watch=True)


@pytest.fixture
def coturn(coturn_factory: CoturnFactory) -> CoturnProcess:
    """coturn with the default secret, relaying to 127.0.0.2 only."""
    return coturn_factory()
