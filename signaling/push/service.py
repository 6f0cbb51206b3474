"""The push service: which devices of a callee get a push, and sending it without ever holding up
call signaling.

`notify` is called by the call service with every committed transition's outcome and only queues
(a bounded queue; a full one drops and counts). One planner task then reads, per event, the callee's
registrations and which of their devices are online (presence on their `user:` topic): a ring goes
to each registered device that has no live socket, and the devices rung are remembered in the store,
so whichever replica ends the ring sends them the follow-up. Planning is sequential, so a ring is
remembered before its own stop is looked up. Sends go to a few sender tasks, each registration always
to the same one so a device's ring and follow-up leave in order; retries wait off the queue, with
backoff, only within the push's window, and a push service saying a registration is dead removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from voxa.signaling.calls import Outcome
from voxa.signaling.metrics import SignalingMetrics
from voxa.signaling.push.models import (
    MAX_DEVICES_PER_USER,
    PushKind,
    PushMessage,
    Registration,
    RegistrationRequest,
    device_of,
)
from voxa.signaling.push.result import SendResult, Status, retry_delay
from voxa.signaling.settings import SignalingSettings
from voxa.signaling.store import Store, StoreUnavailable

log = logging.getLogger("voxa.signaling.push")
SENDERS = 4
"""Concurrent sends (each a connection to a push service at most)."""
SEND_TIMEOUT_S = 10.0
"""One try's limit, also bounded by what is left of the push's window."""
FOLLOWUP_TTL_S = 60.0
"""How long a follow-up is worth delivering, and how long past a ring's end its devices are remembered."""
STOPPED_KEPT_S = 300.0


class Sender(Protocol):
    async def send(self, registration: Registration, message: PushMessage) -> SendResult: ...

    async def close(self) -> None: ...


class PushRefused(Exception):
    """A registration request that cannot be honoured; `status` and `reason` go to the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class RingJob:
    server_id: str
    user: str
    message: PushMessage


@dataclass(frozen=True)
class StopJob:
    server_id: str
    user: str
    call_id: str
    reason: str
    exclude_device: str | None


@dataclass
class SendJob:
    server_id: str
    user: str
    registration: Registration
    message: PushMessage
    attempt: int = 1


PresenceLookup = Callable[[str, str], Any]


def jobs_of(server_id: str, outcome: Outcome) -> list[RingJob | StopJob]:
    """What an outcome asks of push: a ring per invitee `call_started` reaches, a follow-up per user
    whose ring stopped. Every transition that ends a ring says so with `stop_ringing` (answered or
    declined elsewhere, cancelled, timed out: voxa.signaling.calls), so `call_ended`, which reaches
    members who never rang too, asks nothing more."""
    jobs: list[RingJob | StopJob] = []
    for event in outcome.events:
        payload = event.payload
        if event.name == "call_started":
            message = PushMessage(
                type="call_started",
                call_id=str(payload["call_id"]),
                expires_at=float(payload["expires_at"]) / 1000,
                caller=dict(payload.get("caller") or {}),
                video=bool(payload.get("video")),
            )
            jobs.extend(RingJob(server_id, user, message) for user in event.users)
        elif event.name == "stop_ringing":
            call_id, reason = str(payload["call_id"]), str(payload.get("reason", ""))
            jobs.extend(StopJob(server_id, u, call_id, reason, event.exclude_device) for u in event.users)
    return jobs


def ring_targets(
    registrations: list[Registration], online: set[str], kinds: set[str]
) -> tuple[list[Registration], list[str]]:
    """The registrations to ring and the keys to send the follow-up to. Devices with a live socket
    ring there instead. A device with a VoIP token is rung by VoIP only (CallKit shows the call) and
    hears the end through its regular `apns` token, if it has one: never a second VoIP push."""
    by_device: dict[str, dict[str, Registration]] = {}
    for reg in registrations:
        if reg.device_id not in online and reg.kind in kinds:
            by_device.setdefault(reg.device_id, {})[reg.kind] = reg
    ring: list[Registration] = []
    follow: list[str] = []
    for regs in by_device.values():
        if "apns-voip" in regs:
            ring.append(regs["apns-voip"])
            if "apns" in regs:
                follow.append(regs["apns"].key)
            others = [r for kind, r in regs.items() if kind not in ("apns", "apns-voip")]
        else:
            others = list(regs.values())
        ring.extend(others)
        follow.extend(r.key for r in others)
    return ring, follow


class PushService:
    def __init__(
        self,
        store: Store,
        metrics: SignalingMetrics,
        senders: dict[PushKind, Sender],
        presence: PresenceLookup,
        queue_size: int = 1000,
        vapid_public_key: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.senders = senders
        self.presence = presence
        """(server id, user id) -> awaitable of the device ids online on the user's topic."""
        self.vapid_public_key = vapid_public_key
        self.clock = clock
        self._plans: asyncio.Queue[RingJob | StopJob] = asyncio.Queue(queue_size)
        self._sends = [asyncio.Queue[SendJob](queue_size) for _ in range(SENDERS)]
        self._tasks: list[asyncio.Task[None]] = []
        self._retries: set[asyncio.TimerHandle] = set()
        self._stopped: dict[tuple[str, str, str], float] = {}
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @classmethod
    def from_settings(
        cls, settings: SignalingSettings, store: Store, metrics: SignalingMetrics, presence: PresenceLookup
    ) -> PushService:
        """Senders for the platforms the settings configure; a bad key fails startup, clearly."""
        senders: dict[PushKind, Sender] = {}
        public_key = None
        if settings.push_vapid_private_key_file:
            from voxa.signaling.push.webpush import WebPushSender

            web = WebPushSender(settings.push_vapid_private_key_file, settings.push_vapid_subject or "")
            senders["webpush"] = web
            public_key = web.public_key
        if settings.push_fcm_service_account_file:
            from voxa.signaling.push.fcm import FcmSender

            senders["fcm"] = FcmSender(settings.push_fcm_service_account_file, settings.push_fcm_url)
        if settings.push_apns_key_file:
            from voxa.signaling.push.apns import ApnsSender

            assert settings.push_apns_key_id and settings.push_apns_team_id and settings.push_apns_topic
            apns = ApnsSender(
                settings.push_apns_key_file,
                settings.push_apns_key_id,
                settings.push_apns_team_id,
                settings.push_apns_topic,
                settings.push_apns_url,
                settings.push_apns_ca_file,
            )
            senders["apns"] = senders["apns-voip"] = apns
        return cls(store, metrics, senders, presence, settings.push_queue_size, public_key)

    # --- registrations --------------------------------------------------------------------------------
    async def register(self, server_id: str, user_id: str, request: RegistrationRequest) -> Registration:
        if request.kind not in self.senders:
            raise PushRefused(400, f'push kind "{request.kind}" is not configured on this server')
        registration = Registration.from_request(request, self.clock())
        stored = await self.store.push_device_put(
            server_id, user_id, registration.key, registration.encode(), MAX_DEVICES_PER_USER
        )
        if not stored:
            raise PushRefused(
                409, f"at most {MAX_DEVICES_PER_USER} push registrations per user: delete one first"
            )
        log.info("push.registered", extra={"kind": request.kind, "server": server_id})
        return registration

    async def registrations(self, server_id: str, user_id: str) -> list[Registration]:
        found = []
        for raw in (await self.store.push_devices(server_id, user_id)).values():
            try:
                found.append(Registration.decode(raw))
            except (ValueError, KeyError, TypeError):
                log.warning("push.bad_record", extra={"server": server_id})
        return sorted(found, key=lambda r: r.key)

    async def unregister(self, server_id: str, user_id: str, device_id: str) -> int:
        held = await self.store.push_devices(server_id, user_id)
        keys = [key for key in held if device_of(key) == device_id]
        if not keys:
            raise PushRefused(404, f"no push registration for device {device_id!r}")
        return await self.store.push_device_remove(server_id, user_id, keys)

    # --- the hook the call service calls ----------------------------------------------------------------
    def notify(self, server_id: str, outcome: Outcome) -> None:
        """Queue what `outcome` asks of push; never waits (a full queue drops, counted)."""
        if not self.senders:
            return
        for job in jobs_of(server_id, outcome):
            if isinstance(job, StopJob):
                key = (job.server_id, job.call_id, job.user)
                self._stopped.pop(key, None)  # to the end: the dict stays in time order for pruning
                self._stopped[key] = self.clock()
            else:  # rung (again: a group call's invite after a decline)
                self._stopped.pop((job.server_id, job.message.call_id, job.user), None)
            try:
                self._plans.put_nowait(job)
            except asyncio.QueueFull:
                self.metrics.push_dropped.inc()
                log.warning("push.queue_full", extra={"server": server_id})
                continue
            self._busy()

    # --- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._tasks or not self.senders:
            return
        self._tasks.append(asyncio.create_task(self._plan_loop(), name="voxa-push-plan"))
        for i, queue in enumerate(self._sends):
            self._tasks.append(asyncio.create_task(self._send_loop(queue), name=f"voxa-push-send-{i}"))

    async def stop(self) -> None:
        for handle in self._retries:
            handle.cancel()
        self._retries.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        closed: set[int] = set()
        for sender in self.senders.values():
            if id(sender) not in closed:
                closed.add(id(sender))
                await sender.close()

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Until nothing is queued, in flight or waiting for a retry (tests, shutdown)."""
        async with asyncio.timeout(timeout):
            await self._idle.wait()

    def _busy(self) -> None:
        self._pending += 1
        self._idle.clear()

    def _done(self) -> None:
        self._pending -= 1
        if self._pending <= 0:
            self._pending = 0
            self._idle.set()

    # --- planning -------------------------------------------------------------------------------------
    async def _plan_loop(self) -> None:
        while True:
            job = await self._plans.get()
            try:
                if isinstance(job, RingJob):
                    await self._plan_ring(job)
                else:
                    await self._plan_stop(job)
            except StoreUnavailable:
                self.metrics.push_failed.labels("any", "store").inc()
                log.warning("push.store_unavailable", extra={"server": job.server_id})
            except Exception:
                log.exception("push.plan_failed")
            finally:
                self._done()

    async def _plan_ring(self, job: RingJob) -> None:
        registrations = await self.registrations(job.server_id, job.user)
        if not registrations:
            return
        online = set(await self.presence(job.server_id, job.user))
        ring, follow = ring_targets(registrations, online, set(self.senders))
        now = self.clock()
        if follow:
            record = json.dumps({"follow": follow}, separators=(",", ":"))
            ttl = max(0.0, job.message.expires_at - now) + FOLLOWUP_TTL_S
            await self.store.push_rung_set(job.server_id, job.message.call_id, job.user, record, ttl)
        for registration in ring:
            self._enqueue(SendJob(job.server_id, job.user, registration, job.message))

    async def _plan_stop(self, job: StopJob) -> None:
        self._prune_stopped()
        raw = await self.store.push_rung_take(job.server_id, job.call_id, job.user)
        if raw is None:
            return
        keys = json.loads(raw).get("follow", [])
        held = {r.key: r for r in await self.registrations(job.server_id, job.user)}
        message = PushMessage(
            type="stop_ringing",
            call_id=job.call_id,
            expires_at=self.clock() + FOLLOWUP_TTL_S,
            reason=job.reason,
        )
        for key in keys:
            registration = held.get(key)
            if registration is None or registration.device_id == job.exclude_device:
                continue  # gone since, or the very device that answered or declined
            self._enqueue(SendJob(job.server_id, job.user, registration, message))

    def _prune_stopped(self) -> None:
        """Forget stops older than STOPPED_KEPT_S: the oldest come first, so this costs what it
        removes, not the size of the dict (it runs for every stop planned)."""
        cutoff = self.clock() - STOPPED_KEPT_S
        while self._stopped:
            key, at = next(iter(self._stopped.items()))
            if at >= cutoff:
                return
            del self._stopped[key]

    # --- sending --------------------------------------------------------------------------------------
    def _enqueue(self, job: SendJob) -> None:
        queue = self._sends[zlib.crc32(job.registration.key.encode()) % len(self._sends)]
        try:
            queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.push_dropped.inc()
            log.warning("push.queue_full", extra={"kind": job.registration.kind})
            return
        self._busy()

    def _ring_over(self, job: SendJob) -> bool:
        """A ring whose call stopped ringing for this user since it was queued is not sent (again)."""
        stopped = (job.server_id, job.message.call_id, job.user) in self._stopped
        return job.message.type == "call_started" and stopped

    async def _send_loop(self, queue: asyncio.Queue[SendJob]) -> None:
        while True:
            job = await queue.get()
            try:
                await self._send(job)
            except Exception:
                log.exception("push.send_failed")
            finally:
                self._done()

    async def _send(self, job: SendJob) -> None:
        reg, message = job.registration, job.message
        if self._ring_over(job):
            return
        now = self.clock()
        window = message.expires_at - now
        if window <= 0:
            self.metrics.push_failed.labels(reg.kind, "expired").inc()
            return
        sender = self.senders[reg.kind]
        try:
            async with asyncio.timeout(min(SEND_TIMEOUT_S, window)):
                result = await sender.send(reg, message)
        except TimeoutError:
            result = SendResult(Status.RETRY, "timeout")
        extra = {"kind": reg.kind, "type": message.type, "attempt": job.attempt, "result": result.reason}
        if result.status is Status.SENT:
            self.metrics.push_sent.labels(reg.kind, message.type).inc()
            log.info("push.sent", extra=extra)
            return
        if result.status is Status.GONE:
            await self._remove(job)
            log.info("push.registration_gone", extra=extra)
            return
        delay = retry_delay(result, job.attempt, self.clock(), message.expires_at)
        if delay is None:
            label = "gave_up" if result.status is Status.RETRY else "refused"
            self.metrics.push_failed.labels(reg.kind, label).inc()
            log.warning("push.failed", extra=extra)
            return
        self.metrics.push_retries.labels(reg.kind).inc()
        log.info("push.retry", extra={**extra, "delay_s": delay})
        self._schedule_retry(SendJob(job.server_id, job.user, reg, message, job.attempt + 1), delay)

    def _schedule_retry(self, job: SendJob, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._busy()

        def due() -> None:
            self._retries.discard(handle)
            self._enqueue(job)
            self._done()

        handle = loop.call_later(delay, due)
        self._retries.add(handle)

    async def _remove(self, job: SendJob) -> None:
        """Forget a registration its push service called dead, unless it was registered anew since."""
        reg = job.registration
        held = await self.store.push_devices(job.server_id, job.user)
        if held.get(reg.key) == reg.encode():
            await self.store.push_device_remove(job.server_id, job.user, [reg.key])
        self.metrics.push_removed.labels(reg.kind).inc()
