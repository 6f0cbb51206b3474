"""Everything one signaling process shares between its sockets, built once from the settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from voxa.signaling import protocol
from voxa.signaling.auth import TokenVerifier
from voxa.signaling.callmedia import CallMediaSpec
from voxa.signaling.callservice import CallService, user_hub_topic
from voxa.signaling.connection import ChannelSpec, Connection
from voxa.signaling.hub import Hub
from voxa.signaling.media import MediaGateway
from voxa.signaling.metrics import SignalingMetrics
from voxa.signaling.push.service import PushService
from voxa.signaling.registry import MediaRegistry
from voxa.signaling.resume import SessionKeeper
from voxa.signaling.settings import SignalingSettings
from voxa.signaling.store import Store, create_store
from voxa.signaling.user import UserSpec
from voxa.signaling.voice import VoiceSpec

log = logging.getLogger("voxa.signaling")


class SignalingContext:
    def __init__(self, settings: SignalingSettings, store: Store | None = None) -> None:
        self.settings = settings
        self.metrics = SignalingMetrics()
        self.store = store or create_store(
            settings.redis_target(), settings.replica_id, settings.replica_ttl_s
        )
        self.hub = Hub(self.store, self.metrics)
        self.registry = MediaRegistry(self.store, settings.media_server_ttl_s)
        self.media = MediaGateway(self.registry, settings.sfu_secret)
        self.sessions = SessionKeeper(self.store, settings.session_resume_s, settings.replica_ttl_s)
        self.hub.maintenance.append(self.sessions.refresh)
        self.verifier = TokenVerifier.from_files(
            secret=settings.jwt_secret,
            public_key_file=settings.jwt_public_key_file,
            jwks_file=settings.jwt_jwks_file,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway_s=settings.jwt_leeway_s,
        )
        self.push = PushService.from_settings(settings, self.store, self.metrics, self.online_devices)
        self.calls = CallService(self.store, self.hub, settings.call_policy(), push=self.push)
        self.specs: list[ChannelSpec] = [
            VoiceSpec(self),
            UserSpec(self, self.calls),
            CallMediaSpec(self, self.calls),
        ]
        self.connections: set[Connection] = set()
        self.accepting = True
        self._idle_task: asyncio.Task[None] | None = None

    async def online_devices(self, server_id: str, user_id: str) -> list[str]:
        """Device ids with a live socket on the user's topic (presence is keyed by device id)."""
        return [entry.key for entry in await self.store.presence_list(user_hub_topic(server_id, user_id))]

    def channel_spec(self, topic: str) -> ChannelSpec | None:
        for spec in self.specs:
            if spec.matches(topic):
                return spec
        return None

    @property
    def ready(self) -> bool:
        return self.accepting and self.hub.ready

    async def start(self) -> None:
        await self.hub.start()
        self.calls.start_expiry()
        self.push.start()
        self._idle_task = asyncio.create_task(self._close_idle(), name="voxa-idle-sockets")

    async def _close_idle(self) -> None:
        timeout = self.settings.idle_timeout_s
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(timeout / 4, 5.0))
            cutoff = loop.time() - timeout
            for conn in list(self.connections):
                if conn.last_seen < cutoff:
                    conn.close_soon(protocol.CLOSE_IDLE, "idle timeout")

    async def shutdown(self) -> None:
        """Stop accepting, ask every client to reconnect elsewhere, drain within the grace period."""
        self.accepting = False
        log.info("signaling.draining", extra={"sockets": len(self.connections)})
        for conn in list(self.connections):
            conn.close_soon(protocol.CLOSE_SERVICE_RESTART, "server restarting")
        deadline = asyncio.get_running_loop().time() + self.settings.shutdown_grace_s
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if self._idle_task is not None:
            self._idle_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._idle_task
        await self.calls.stop()
        with contextlib.suppress(TimeoutError):
            await self.push.wait_idle(timeout=min(2.0, self.settings.shutdown_grace_s))  # rings in flight
        await self.push.stop()
        await self.sessions.close()
        await self.media.close()
        await self.hub.stop()
