"""In-process signaling apps on loopback ports, for tests that need to reach inside (settings, store)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from conftest import JWT_SECRET, SFU_SECRET
from voxa.common.claims import VoiceClaims, parse_permissions
from voxa.common.tokens import mint_token
from voxa.signaling.app import CTX, create_app
from voxa.signaling.context import SignalingContext
from voxa.signaling.settings import SignalingSettings
from voxa.signaling.store import Store


class AppServer:
    def __init__(self, server: TestServer) -> None:
        self.server = server

    @property
    def ctx(self) -> SignalingContext:
        return self.server.app[CTX]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/socket"


AppFactory = Callable[..., Awaitable[AppServer]]


@pytest.fixture
async def app_factory() -> AsyncIterator[AppFactory]:
    servers: list[TestServer] = []

    async def factory(store: Store | None = None, **overrides: Any) -> AppServer:
        values: dict[str, Any] = {
            "jwt_secret": JWT_SECRET,
            "sfu_secret": SFU_SECRET,
            "allowed_origins": ["*"],
        }
        settings = SignalingSettings(**{**values, **overrides})
        server = TestServer(create_app(settings, store), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return AppServer(server)

    yield factory
    for server in servers:
        await server.close()


def token(user: str = "alice", server: str = "g1", grant: str = "connect,speak", **kw: Any) -> str:
    claims = VoiceClaims(sub=user, name=user.title(), server=server, perms=parse_permissions(grant), **kw)
    return mint_token(claims, JWT_SECRET)
