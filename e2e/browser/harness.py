"""Headless Chromium as a WebRTC peer of Voxa's servers, driven from Python.

`ChromiumPeers(count, tone_hz=...)` is an async context manager that

* writes one sine-tone WAV per distinct tone (`e2e/browser/tone.py`) into a private work directory,
* serves the test page (`e2e/browser/page/`) from an aiohttp server on 127.0.0.1, so that the page's
  origin is `http://127.0.0.1:PORT` (a secure context: getUserMedia and RTCPeerConnection work),
* starts ONE node process running `driver.mjs` (playwright-core), which launches one Chromium process
  per distinct tone (Chromium reads `--use-file-for-fake-audio-capture` once per process, so pages that
  must send different tones cannot share a process) and opens the pages, each in its own browser context,
* relays calls `await peers.call(page, "createOffer")` as JSON lines to the driver, which runs
  `window.voxaTest.createOffer()` in that page and answers with the result (see page/voxa-test.js for
  every function and what it returns),
* collects every page's console output (`logs()`), and adds its tail to every error it raises,
* bounds every call with a deadline, and on exit closes the browsers, stops node and kills whatever it
  started that is still alive (matched by the private work directory in its command line).

The Python side is the signaling relay: it moves offers, answers and candidates between a page and the
peer under test (an aiortc RTCPeerConnection, Voxa's SFU ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

from aiohttp import web

from e2e.browser.tone import write_tone
from e2e.netns import NetnsLink

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PAGE_DIR = HERE / "page"
TONE_JS = ROOT / "signaling" / "static" / "tone.js"
DRIVER = HERE / "driver.mjs"
CHROMIUM = Path("/usr/bin/chromium")

# The switches every Chromium process gets, after playwright's own (--headless, --no-sandbox, --mute-audio,
# --no-first-run, --disable-background-networking, --disable-component-update, --disable-sync ...; the
# duplicates are kept so that the list stands on its own). Required here: --use-fake-device-for-media-stream
# (else getUserMedia fails with NotFoundError) and --allow-loopback-in-peer-connection (else no 127.0.0.1
# candidate, see README.md). The rest keep Chromium quiet and off the network, or deterministic.
CHROMIUM_ARGS: tuple[str, ...] = (
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-proxy-server",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
)

CALL_TIMEOUT_S = 20.0
LAUNCH_TIMEOUT_S = 60.0
LOG_TAIL = 60


def _prepare_file(path: Path | str) -> Path:
    target = Path(path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


class BrowserError(RuntimeError):
    """A failed or timed-out call, or a driver that died; the message ends with the pages' console log."""


@dataclass(frozen=True)
class ConsoleEntry:
    page: int | None
    level: str
    text: str
    at: float

    def __str__(self) -> str:
        where = "driver" if self.page is None else f"page {self.page}"
        return f"[{where} {self.level}] {self.text}"


class ChromiumPage:
    """Typed shortcuts for one page's `window.voxaTest` functions (see page/voxa-test.js)."""

    def __init__(self, peers: ChromiumPeers, index: int) -> None:
        self.peers = peers
        self.index = index

    async def call(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        return await self.peers.call(self.index, name, *args, timeout=timeout)

    async def start(
        self,
        ice_servers: Sequence[dict[str, Any]] = (),
        *,
        audio: bool = True,
        video: bool | None = None,
        loopback_only: bool = True,
        simulcast: bool = False,
        width: int = 320,
        height: int = 240,
        frame_rate: int = 15,
    ) -> dict[str, Any]:
        """getUserMedia, a new RTCPeerConnection and addTrack of each local track (`simulcast`: the
        camera as three layers q, h, f at 1/4, 1/2 and 1/1 of width x height, lowest first).

        `loopback_only` keeps only 127.0.0.1/::1 candidates in the SDP and trickled candidates the page hands
        out, so that the peer under test only ever sends to loopback."""
        options = {
            "iceServers": list(ice_servers),
            "audio": audio,
            "video": self.peers.video if video is None else video,
            "loopbackOnly": loopback_only,
            "simulcast": simulcast,
            "width": width,
            "height": height,
            "frameRate": frame_rate,
        }
        return cast(dict[str, Any], await self.call("start", options))

    async def create_offer(self, *, wait_ice: bool = True, ice_restart: bool = False) -> str:
        desc = await self.call("createOffer", {"waitIce": wait_ice, "iceRestart": ice_restart})
        return cast(str, desc["sdp"])

    async def create_answer(self, *, wait_ice: bool = True) -> str:
        desc = await self.call("createAnswer", {"waitIce": wait_ice})
        return cast(str, desc["sdp"])

    async def set_remote(self, type_: str, sdp: str) -> None:
        await self.call("setRemote", {"type": type_, "sdp": sdp})

    async def handle_remote_offer(self, sdp: str, *, wait_ice: bool = True) -> str:
        """Apply a (re-)offer of the remote side and return the page's answer SDP."""
        return cast(str, await self.call("handleRemoteOffer", sdp, {"waitIce": wait_ice}))

    async def add_ice_candidate(self, candidate: dict[str, Any] | None) -> None:
        await self.call("addIceCandidate", candidate)

    async def take_candidates(self) -> dict[str, Any]:
        return cast(dict[str, Any], await self.call("takeCandidates"))

    async def add_audio_track(self) -> dict[str, Any]:
        return cast(dict[str, Any], await self.call("addAudioTrack"))

    async def set_encodings_active(self, active: dict[str, bool]) -> dict[str, bool]:
        return cast(dict[str, bool], await self.call("setEncodingsActive", active))

    async def add_screen_share(self, *, audio: bool = False) -> dict[str, Any]:
        return cast(dict[str, Any], await self.call("addScreenShare", {"audio": audio}))

    async def local_mids(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], await self.call("localMids"))

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await self.call("waitConnected", int(timeout * 1000), timeout=timeout + 5)

    async def measure(self, ms: int = 1000, *, mids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """For each remote audio track: {mid, trackId, streamIds, hz, rms, peak, db, ...}."""
        result = await self.call(
            "measure", ms, {"mids": list(mids) if mids else None}, timeout=ms / 1000 + 15
        )
        return cast(list[dict[str, Any]], result)

    async def stats(self) -> dict[str, Any]:
        """{inbound: {mid: {...}}, outbound: {mid: {...}}, candidatePair: {...}, transport: {...}}."""
        return cast(dict[str, Any], await self.call("stats"))

    async def state(self) -> dict[str, Any]:
        """Signaling/ICE/connection states, counters (negotiationNeeded, offersCreated ...), transceivers."""
        return cast(dict[str, Any], await self.call("state"))

    async def mute(self) -> dict[str, Any]:
        return cast(dict[str, Any], await self.call("mute"))

    async def unmute(self) -> dict[str, Any]:
        return cast(dict[str, Any], await self.call("unmute"))

    async def close(self) -> None:
        await self.call("close")

    async def screenshot(self, path: Path | str) -> Path:
        return await self.peers.screenshot(self.index, path)


class ChromiumPeers:
    """`async with ChromiumPeers(2, tone_hz=[440, 660]) as peers: await peers[0].start() ...`

    tone_hz: one frequency for every page, one per page, or None for Chromium's own fake microphone (a
    beep). Pages with the same tone share a Chromium process (separate browser contexts); every distinct
    tone gets its own process. video: the default of `start(video=...)` (Chromium's fake camera).
    """

    def __init__(
        self,
        count: int = 1,
        tone_hz: float | Sequence[float | None] | None = 440.0,
        video: bool = False,
        *,
        workdir: Path | None = None,
        extra_args: Sequence[str] = (),
        call_timeout: float = CALL_TIMEOUT_S,
        launch_timeout: float = LAUNCH_TIMEOUT_S,
        executable: Path = CHROMIUM,
        netns: NetnsLink | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        tones: list[float | None]
        if tone_hz is None or isinstance(tone_hz, int | float):
            tones = [tone_hz] * count
        else:
            tones = list(tone_hz)
            if len(tones) != count:
                raise ValueError(f"tone_hz has {len(tones)} entries for {count} pages")
        self.count = count
        self.tones = tones
        self.video = video
        self.extra_args = tuple(extra_args)
        self.call_timeout = call_timeout
        self.launch_timeout = launch_timeout
        self.executable = executable
        self.netns = netns
        """Run these pages' browser inside the namespace (a shaped link to this host): the page server
        then listens on the host's end of the link, and pages must not filter to loopback candidates."""
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="voxa-chromium-")) if workdir is None else workdir
        self.url = ""
        self.version = ""
        self.pages = [ChromiumPage(self, i) for i in range(count)]
        self._console: list[ConsoleEntry] = []
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._dead: str | None = None
        self._stderr_path = self.workdir / "driver.stderr"
        self._tmp: Path | None = None

    def __getitem__(self, index: int) -> ChromiumPage:
        return self.pages[index]

    def __len__(self) -> int:
        return self.count

    # --- lifecycle --------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _start(self) -> None:
        if not self.executable.exists():
            raise BrowserError(f"{self.executable} does not exist: apt-get install chromium")
        if not (ROOT / "node_modules" / "playwright-core").is_dir():
            raise BrowserError("node_modules/playwright-core is missing: run `bash .ci/setup.sh`")
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Playwright puts each browser's throw-away profile (--user-data-dir) under TMPDIR, and Chromium its
        # singleton socket, whose path must fit a unix socket address (108 bytes): a short private
        # directory, which also names our Chromium processes for the cleanup.
        self._tmp = Path(tempfile.mkdtemp(prefix="voxa-chr-", dir="/tmp"))
        self.url = await self._serve()

        browsers: list[dict[str, Any]] = []
        page_browser: list[int] = []
        by_tone: dict[float | None, int] = {}
        for tone in self.tones:
            if tone not in by_tone:
                args = [*CHROMIUM_ARGS, *self.extra_args]
                if self.netns is not None:
                    # getUserMedia needs a secure context: http://127.0.0.1 is one, the link's address is not.
                    origin = self.url.rsplit("/", 1)[0]
                    args.append(f"--unsafely-treat-insecure-origin-as-secure={origin}")
                if tone is not None:
                    wav = write_tone(self.workdir / f"tone-{tone:g}.wav", tone)
                    args.append(f"--use-file-for-fake-audio-capture={wav}")
                by_tone[tone] = len(browsers)
                browsers.append({"args": args})
            page_browser.append(by_tone[tone])
        config = {
            "executablePath": str(self.executable),
            "url": self.url,
            "browsers": browsers,
            "pages": page_browser,
            "launchTimeoutMs": int(self.launch_timeout * 1000),
            "callTimeoutMs": int(self.call_timeout * 1000),
        }
        config_path = self.workdir / "driver.json"
        config_path.write_text(json.dumps(config, indent=2))

        env = dict(os.environ)
        env["TMPDIR"] = str(self._tmp)
        stderr = self._stderr_path.open("wb")
        try:
            prefix = self.netns.exec_prefix if self.netns is not None else []
            self._proc = await asyncio.create_subprocess_exec(
                *prefix,
                "node",
                str(DRIVER),
                str(config_path),
                cwd=ROOT,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                limit=32 * 1024 * 1024,
                start_new_session=True,
            )
        finally:
            stderr.close()
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._reader = asyncio.create_task(self._read(), name="chromium-driver-reader")
        try:
            ready = await asyncio.wait_for(self._ready, self.launch_timeout)
        except TimeoutError:
            raise BrowserError(
                self._with_logs(f"Chromium not ready within {self.launch_timeout} s")
            ) from None
        self.version = str(ready.get("version") or "")

    async def _serve(self) -> str:
        app = web.Application()

        async def index(_: web.Request) -> web.StreamResponse:
            raise web.HTTPFound("/index.html")

        @web.middleware
        async def no_cache(request: web.Request, handler: Any) -> web.StreamResponse:
            response: web.StreamResponse = await handler(request)
            response.headers["Cache-Control"] = "no-store"
            return response

        app.middlewares.append(no_cache)
        app.router.add_get("/", index)
        phoenix = ROOT / "node_modules" / "phoenix" / "priv" / "static"
        if phoenix.is_dir():
            # The official phoenix client, for pages that talk to Voxa signaling themselves.
            app.router.add_static("/vendor/phoenix/", phoenix)

        async def tone_js(_: web.Request) -> web.StreamResponse:
            # The demo's tone analyser, so the tests measure audio exactly as the demo does.
            return web.FileResponse(TONE_JS)

        app.router.add_get("/tone.js", tone_js)
        app.router.add_static("/", PAGE_DIR)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host = self.netns.host_ip if self.netns is not None else "127.0.0.1"
        site = web.TCPSite(self._runner, host, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        return f"http://{host}:{port}/index.html"

    async def aclose(self) -> None:
        """Close the browsers, stop node, kill leftovers and the page server; safe to call twice."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(BrowserError, OSError, ConnectionError):
                self._send({"id": next(self._ids), "call": "$exit"})
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._reader, 5)
        self._kill_leftovers()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(BrowserError("the harness was closed"))
        self._pending.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        """SIGKILL every process whose command line names our private TMPDIR or work directory (Chromium
        processes that outlived node, e.g. after a SIGKILL), and their descendants."""
        markers = [str(path).encode() for path in (self._tmp, self.workdir) if path is not None]
        parents: dict[int, int] = {}
        ours: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes()
                if any(marker in cmdline for marker in markers):
                    ours.add(pid)
        changed = True
        while changed:
            changed = False
            for pid, ppid in parents.items():
                if ppid in ours and pid not in ours:
                    ours.add(pid)
                    changed = True
        for pid in ours:
            if pid != os.getpid():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    # --- the driver's output ----------------------------------------------------------------------
    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        while True:
            raw = await stdout.readline()
            if not raw:
                break
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            try:
                message = json.loads(line)
            except ValueError:
                self._log(None, "stdout", line)
                continue
            self._dispatch(message)
        await self._proc.wait()
        self._dead = self._dead or f"the driver exited with code {self._proc.returncode}"
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(BrowserError(self._with_logs(f"Chromium did not start: {self._dead}")))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(BrowserError(self._with_logs(self._dead)))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "id" in message:
            fut = self._pending.pop(int(message["id"]), None)
            if fut is None or fut.done():
                return
            if message.get("ok"):
                fut.set_result(message.get("result"))
            else:
                fut.set_exception(BrowserError(str(message.get("error"))))
            return
        event = message.get("event")
        page = message.get("page")
        if event == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(message)
        elif event == "console":
            self._log(page, str(message.get("level")), str(message.get("text")))
        elif event in {"pageerror", "crash", "requestfailed"}:
            self._log(page, str(event), str(message.get("text", "")))
        elif event == "fatal":
            text = str(message.get("message"))
            self._log(None, "fatal", text)
            self._dead = f"driver: {text.splitlines()[0] if text else text}"
        else:
            self._log(None, str(event), json.dumps(message))

    def _log(self, page: int | None, level: str, text: str) -> None:
        self._console.append(ConsoleEntry(page, level, text, time.monotonic()))

    # --- calls ------------------------------------------------------------------------------------
    def _send(self, command: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None or self._dead:
            raise BrowserError(self._with_logs(self._dead or "the driver is not running"))
        proc.stdin.write((json.dumps(command) + "\n").encode())

    async def call(self, page: int, name: str, *args: Any, timeout: float | None = None) -> Any:
        """Run `window.voxaTest[name](...args)` in page `page` and return its result.

        Raises BrowserError when the page throws, after `timeout` seconds (default: call_timeout), or when
        the driver dies; the message includes the tail of the console log."""
        if not 0 <= page < self.count:
            raise IndexError(f"no page {page}: there are {self.count}")
        limit = self.call_timeout if timeout is None else timeout
        ident = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = fut
        try:
            self._send(
                {"id": ident, "page": page, "call": name, "args": list(args), "timeoutMs": int(limit * 1000)}
            )
            # The driver enforces the same deadline; ours is a little later, for a driver that hangs.
            return await asyncio.wait_for(fut, limit + 2)
        except TimeoutError:
            raise BrowserError(self._with_logs(f"page {page} {name}: no answer within {limit} s")) from None
        except BrowserError as err:
            raise BrowserError(self._with_logs(f"page {page} {name}: {err}", page)) from None
        finally:
            self._pending.pop(ident, None)

    async def evaluate(self, page: int, expression: str, *, timeout: float | None = None) -> Any:
        """page.evaluate(expression): an arbitrary JavaScript expression (a Promise is awaited)."""
        return await self.call(page, "$evaluate", expression, timeout=timeout)

    async def screenshot(self, page: int, path: Path | str) -> Path:
        """A PNG of the whole page at `path` (made absolute; parent folders are created)."""
        target = _prepare_file(path)
        await self.call(page, "$screenshot", str(target))
        return target

    # --- console log ------------------------------------------------------------------------------
    def logs(self, page: int | None = None) -> list[ConsoleEntry]:
        """The console log of one page (with the driver's own messages), or of all pages."""
        return [e for e in self._console if page is None or e.page in (page, None)]

    def format_logs(self, page: int | None = None, last: int = LOG_TAIL) -> str:
        entries = self.logs(page)[-last:]
        stderr = ""
        with contextlib.suppress(OSError):
            stderr = self._stderr_path.read_text(errors="replace")[-2000:]
        text = "\n".join(str(e) for e in entries) or "(no console output)"
        if stderr.strip():
            text += f"\n--- driver stderr:\n{stderr}"
        return text

    def _with_logs(self, message: str, page: int | None = None) -> str:
        return f"{message}\n--- console (last {LOG_TAIL}):\n{self.format_logs(page)}"
