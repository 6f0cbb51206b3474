"""`voxa sfu` as a real process: the control API, the events stream, registration with a real
`voxa signaling` registry, and the drain on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from conftest import SFU_SECRET, SignalingFactory
from tests.integration.hearing import silence, tone
from voxa.client.media import AudioSink, SineTrack
from voxa.common.ports import free_port
from voxa.common.testing.procs import Proc, clean_env, http_ok, wait_ready

VOXA = str(Path(sys.executable).with_name("voxa"))
AUTH = {"Authorization": f"Bearer {SFU_SECRET}"}


class SfuProcess:
    def __init__(
        self,
        tmp: Path,
        signaling_url: str | None = None,
        media_id: str = "sfu-a",
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`env`: extra or overriding VOXA_SFU_* variables (e.g. VOXA_SFU_RTC_LISTEN_IP)."""
        tmp.mkdir(parents=True, exist_ok=True)
        self.media_id = media_id
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = clean_env()
        environ.update(
            VOXA_SFU_SECRET=SFU_SECRET,
            VOXA_SFU_ID=media_id,
            VOXA_SFU_SERVER_ID="g1",
            VOXA_SFU_RTC_LISTEN_IP="127.0.0.1",
            VOXA_SFU_RTC_REMOTE_NETWORKS="127.0.0.0/8",
            VOXA_SFU_DRAIN_DEADLINE_S="30",
        )
        if signaling_url:
            environ["VOXA_SFU_SIGNALING_URL"] = signaling_url
        environ.update(env or {})
        self.log = tmp / "sfu.log"
        argv = [VOXA, "sfu", "--workers", "1", "--port", str(self.port)]
        self.handle = Proc(media_id, argv, environ, self.log).start()

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self.handle.proc is not None
        return self.handle.proc

    async def ready(self) -> None:
        # A thread, so that the event loop (and any signaling in it) keeps running meanwhile.
        healthz = self.url + "/healthz"
        await asyncio.to_thread(
            wait_ready, self.handle, lambda: http_ok(healthz), 20, f"{self.media_id} /healthz"
        )

    def stop(self) -> None:
        self.handle.kill()


@pytest.fixture
async def sfu_process(tmp_path: Path) -> AsyncIterator[SfuProcess]:
    proc = SfuProcess(tmp_path)
    await proc.ready()
    yield proc
    proc.stop()


class ApiClient:
    """A client joined through the control API, answering the SFU's offers from the events stream."""

    def __init__(self, http: aiohttp.ClientSession, base: str, router: str, name: str, hz: float) -> None:
        self.http, self.base, self.router, self.name = http, base, router, name
        self.pc = RTCPeerConnection()
        self.pc.addTrack(SineTrack(hz))
        self.sinks: list[AudioSink] = []
        self.pc.on("track", lambda track: self.sinks.append(AudioSink(track)))
        self.lock = asyncio.Lock()

    async def join(self) -> None:
        async with self.lock:
            await self.pc.setLocalDescription(await self.pc.createOffer())
            url = f"{self.base}/v1/routers/{self.router}/peers/{self.name}"
            async with self.http.post(url, json={"sdp": self.pc.localDescription.sdp}, headers=AUTH) as resp:
                assert resp.status == 200, await resp.text()
                answer = await resp.json()
            await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))

    async def on_offer(self, sdp: str) -> None:
        async with self.lock:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            url = f"{self.base}/v1/routers/{self.router}/peers/{self.name}/sdp"
            body = {"type": "answer", "sdp": self.pc.localDescription.sdp}
            async with self.http.post(url, json=body, headers=AUTH) as resp:
                assert resp.status == 200, await resp.text()

    async def close(self) -> None:
        for sink in self.sinks:
            await sink.stop()
        await self.pc.close()


async def relay_events(
    ws: aiohttp.ClientWebSocketResponse, clients: dict[str, ApiClient], seen: list[Any]
) -> None:
    async for msg in ws:
        event = json.loads(msg.data)
        seen.append(event)
        if event["type"] == "offer" and event["peer"] in clients:
            asyncio.get_running_loop().create_task(clients[event["peer"]].on_offer(event["sdp"]))


async def test_control_api_end_to_end(sfu_process: SfuProcess) -> None:
    base = sfu_process.url
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{base}/v1/routers/lobby") as resp:
            assert resp.status == 401
        async with http.put(f"{base}/v1/routers/lobby", headers=AUTH) as resp:
            assert resp.status == 200 and (await resp.json()) == {"id": "lobby"}
        async with http.post(f"{base}/v1/routers/nope/peers/x", json={"sdp": "v=0"}, headers=AUTH) as resp:
            assert resp.status == 404 and (await resp.json())["error"] == "no router 'nope'"
        async with http.post(
            f"{base}/v1/routers/lobby/peers/x", json={"sdp": "garbage"}, headers=AUTH
        ) as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "SDP must start with v=0"
        async with http.post(f"{base}/v1/routers/lobby/peers/x", json={"nosdp": 1}, headers=AUTH) as resp:
            assert resp.status == 400 and (await resp.json())["details"][0]["loc"] == "sdp"

        seen: list[Any] = []
        clients = {
            name: ApiClient(http, base, "lobby", name, hz) for name, hz in (("a", 440.0), ("b", 660.0))
        }
        async with http.ws_connect(f"{base}/v1/events", headers=AUTH) as ws:
            relay = asyncio.create_task(relay_events(ws, clients, seen))
            for client in clients.values():
                await client.join()
            async with asyncio.timeout(15):
                while not all(c.sinks for c in clients.values()):
                    await asyncio.sleep(0.05)
            await tone(lambda: clients["a"].sinks[0].measure(0.6), 660.0, "a hearing b's 660 Hz")
            await tone(lambda: clients["b"].sinks[0].measure(0.6), 440.0, "b hearing a's 440 Hz")

            # Server mute through the API: silence without renegotiation.
            offers = sum(1 for e in seen if e["type"] == "offer")
            async with http.put(
                f"{base}/v1/routers/lobby/peers/b/state", json={"server_muted": True}, headers=AUTH
            ) as r:
                assert (await r.json())["server_muted"] is True
            await silence(lambda: clients["a"].sinks[0].measure(0.5), "a hearing b server-muted")
            assert sum(1 for e in seen if e["type"] == "offer") == offers

            async with http.get(f"{base}/v1/routers/lobby", headers=AUTH) as resp:
                stats = await resp.json()
            assert {p["id"] for p in stats["peers"]} == {"a", "b"}
            async with http.get(f"{base}/metrics") as resp:
                assert "voxa_sfu_peers 2.0" in await resp.text()
            async with http.delete(f"{base}/v1/routers/lobby/peers/b", headers=AUTH) as resp:
                assert resp.status == 200
            async with asyncio.timeout(10):
                while not any(e["type"] == "peer_state" and e.get("state") == "closed" for e in seen):
                    await asyncio.sleep(0.05)
            assert seen[0]["type"] == "hello" and seen[0]["media_server"] == "sfu-a"
            relay.cancel()
        for client in clients.values():
            await client.close()


async def test_registers_heartbeats_and_drains(signaling_factory: SignalingFactory, tmp_path: Path) -> None:
    signaling = signaling_factory(media_server_ttl_s="3")
    sfu = SfuProcess(tmp_path, signaling_url=signaling.url)
    try:
        await sfu.ready()
        registry = f"{signaling.url}/internal/servers/g1/media-servers"
        async with aiohttp.ClientSession() as http:

            async def servers() -> list[dict[str, Any]]:
                async with http.get(registry, headers=AUTH) as resp:
                    body: dict[str, Any] = await resp.json()
                return list(body["media_servers"])

            async with asyncio.timeout(15):
                while not await servers():
                    await asyncio.sleep(0.1)
            (entry,) = await servers()
            assert entry["id"] == "sfu-a" and entry["url"] == sfu.url and entry["draining"] is False
            # Signaling assigns channels of voice server g1 to it.
            async with http.get(
                f"{signaling.url}/internal/servers/g1/channels/lobby/media-server", headers=AUTH
            ) as r:
                assert (await r.json())["media_server"]["id"] == "sfu-a"
            # A router with a peer keeps the SFU alive through SIGTERM: it drains.
            async with http.put(f"{sfu.url}/v1/routers/lobby", headers=AUTH):
                pass
            client = ApiClient(http, sfu.url, "lobby", "a", 440.0)
            await client.join()
            sfu.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                while not (await servers() and (await servers())[0]["draining"]):
                    await asyncio.sleep(0.1)
            async with http.get(f"{sfu.url}/readyz") as resp:
                assert resp.status == 503
            async with http.put(f"{sfu.url}/v1/routers/other", headers=AUTH) as resp:
                assert resp.status == 503
                assert (await resp.json())["draining"] is True
            async with http.put(f"{sfu.url}/v1/routers/lobby", headers=AUTH) as resp:
                assert resp.status == 200  # a router it hosts is not new: the call goes on
            async with http.delete(f"{sfu.url}/v1/routers/lobby?if_empty=true", headers=AUTH) as resp:
                assert (await resp.json())["closed"] is False  # a participant is in it
            assert sfu.proc.poll() is None  # still serving its peer
            async with http.delete(f"{sfu.url}/v1/routers/lobby/peers/a", headers=AUTH):
                pass
            await client.close()
            async with asyncio.timeout(15):
                while sfu.proc.poll() is None:
                    await asyncio.sleep(0.1)
            assert sfu.proc.returncode == 0
            assert await servers() == []  # deregistered on the way out
    finally:
        sfu.stop()


async def test_a_drain_mark_is_followed_withdrawn_and_its_deadline_kept_through_sigterm(
    signaling_factory: SignalingFactory, tmp_path: Path
) -> None:
    """The operator marks a pod draining before a scale-down, may withdraw the mark when load comes
    back (the SFU takes routers again), and removes the pod once the drain deadline has passed: the
    SIGTERM then finds a deadline already due, not a new one."""
    signaling = signaling_factory(media_server_ttl_s="3")
    sfu = SfuProcess(tmp_path, signaling_url=signaling.url, env={"VOXA_SFU_DRAIN_DEADLINE_S": "3"})
    try:
        await sfu.ready()
        registry = f"{signaling.url}/internal/servers/g1/media-servers"
        async with aiohttp.ClientSession() as http:

            async def ready() -> int:
                async with http.get(f"{sfu.url}/readyz") as resp:
                    return resp.status

            async def mark(draining: bool) -> None:
                async with http.put(
                    f"{registry}/sfu-a/drain", json={"draining": draining}, headers=AUTH
                ) as r:
                    assert r.status == 200

            async def until(check: Callable[[], Awaitable[bool]]) -> None:
                async with asyncio.timeout(20):
                    while not await check():
                        await asyncio.sleep(0.1)

            async def registered() -> bool:
                async with http.get(registry, headers=AUTH) as resp:
                    return bool((await resp.json())["media_servers"])

            await until(registered)
            await mark(True)
            await until(lambda: _is(ready(), 503))
            async with http.put(f"{sfu.url}/v1/routers/other", headers=AUTH) as resp:
                assert resp.status == 503
            await mark(False)
            await until(lambda: _is(ready(), 200))  # withdrawn: it takes routers again
            async with http.put(f"{sfu.url}/v1/routers/lobby", headers=AUTH) as resp:
                assert resp.status == 200
            client = ApiClient(http, sfu.url, "lobby", "a", 440.0)
            await client.join()

            await mark(True)
            await until(lambda: _is(ready(), 503))
            await asyncio.sleep(3.5)  # the drain deadline (3 s) passes while a peer is still on
            sfu.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                while sfu.proc.poll() is None:
                    await asyncio.sleep(0.1)
            await client.close()
        assert sfu.proc.returncode == 0
        draining = [json.loads(line) for line in sfu.log.read_text().splitlines() if '"sfu.draining"' in line]
        assert draining and draining[-1]["deadline_in_s"] <= 0, draining
        assert draining[-1]["peers"] == 1
    finally:
        sfu.stop()


async def _is(status: Awaitable[int], wanted: int) -> bool:
    return await status == wanted
