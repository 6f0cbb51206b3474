"""The LiveKit harness of the SFU benchmark (bench/livekit): access tokens, the loopback-only
configuration, the media handed to the Go load client, the room API of a real livekit-server, and the
benchmark's report when LiveKit cannot be had."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

# Imported as top-level packages from bench/, as bench/sfu.py imports them and as mypy names them.
BENCH = str(Path(__file__).resolve().parents[2] / "bench")
if BENCH not in sys.path:
    sys.path.append(BENCH)

from livekit.load import peer_message, write_catalog  # noqa: E402
from livekit.server import (  # noqa: E402
    LiveKitServer,
    LiveKitUnavailable,
    access_token,
    livekit_binaries,
    verify_token,
)
from loadgen.media import MediaCatalog  # noqa: E402
from loadgen.plan import build_room  # noqa: E402


def test_access_token_is_an_hs256_jwt_with_livekit_grants() -> None:
    token = access_token(
        "key", "s" * 32, identity="r0s1", grants={"roomJoin": True, "room": "bench-r0"}, now=1_000_000
    )
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "HS256", "typ": "JWT"}
    claims = verify_token(token, "s" * 32)
    assert claims["iss"] == "key" and claims["sub"] == "r0s1"
    assert claims["video"] == {"roomJoin": True, "room": "bench-r0"}
    assert claims["nbf"] < 1_000_000 < claims["exp"]
    with pytest.raises(ValueError, match="signature"):
        verify_token(token, "t" * 32)


def test_config_keeps_livekit_on_loopback() -> None:
    server = LiveKitServer(Path("/nonexistent"))
    server.port, server.udp_port = 7880, 7882
    config = json.loads(server.config_yaml())  # JSON is YAML
    assert config["bind_addresses"] == ["127.0.0.1"]
    rtc = config["rtc"]
    assert rtc["node_ip"] == "127.0.0.1" and rtc["use_external_ip"] is False
    assert rtc["udp_port"] == 7882 and rtc["tcp_port"] == 0
    assert rtc["interfaces"] == {"includes": ["lo"]} and rtc["ips"] == {"includes": ["127.0.0.1/32"]}
    assert config["turn"] == {"enabled": False} and "redis" not in config
    assert config["keys"] == {server.api_key: server.api_secret} and len(server.api_secret) >= 32
    claims = verify_token(server.token("r0l3", "bench-r0", publish=False), server.api_secret)
    grants = {"roomJoin": True, "room": "bench-r0", "canPublish": False, "canSubscribe": True}
    assert claims["video"] == grants


def test_catalog_and_peers_for_the_go_client(tmp_path: Path) -> None:
    catalog = MediaCatalog(
        opus=(b"\x01\x02", b"\x03"), vp8=((b"\x10", b"\x11"),), opus_bitrate=1, vp8_bitrate=2
    )
    doc = json.loads(write_catalog(catalog, tmp_path / "c.json").read_text())
    assert [base64.b64decode(p) for p in doc["opus"]] == [b"\x01\x02", b"\x03"]
    assert [[base64.b64decode(p) for p in f] for f in doc["vp8"]] == [[b"\x10", b"\x11"]]
    room = build_room("audio-rooms", 0)
    speaker, listener = room.peers[0], room.peers[-1]
    assert peer_message(speaker, "T") == {
        "id": "r0s0", "room": 0, "audio": True, "video": False, "expect_streams": 1, "token": "T"
    }  # fmt: skip
    assert peer_message(listener, "U")["expect_streams"] == 2


def load_bench_script() -> ModuleType:
    """bench/sfu.py as a module (its name as a script, sfu, is the SFU package's)."""
    spec = importlib.util.spec_from_file_location("sfu_bench_script", Path(BENCH) / "sfu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_reports_an_unavailable_livekit(monkeypatch: pytest.MonkeyPatch) -> None:
    sfu = load_bench_script()

    def unavailable() -> tuple[Path, Path]:
        raise LiveKitUnavailable("no Go toolchain")

    monkeypatch.setattr(sfu, "livekit_binaries", unavailable)
    args = sfu.parse_args(["--scenario", "audio-rooms", "--rooms", "1"])
    figures, reason = asyncio.run(sfu.run_livekit(args, None, Path("/nonexistent"), 1))
    assert figures is None and reason == "livekit is unavailable: no Go toolchain"
    skipped = sfu.parse_args(["--no-livekit"])
    assert asyncio.run(sfu.run_livekit(skipped, None, Path("/nonexistent"), 1)) == (
        None,
        "skipped (--no-livekit)",
    )


@pytest.mark.timeout(1900)  # the first build of livekit-server takes minutes; later ones are cached
async def test_livekit_server_room_api(tmp_path: Path) -> None:
    server_binary, _ = await asyncio.to_thread(livekit_binaries)
    started = time.monotonic()
    async with LiveKitServer(server_binary, workdir=tmp_path) as server:
        assert time.monotonic() - started < 30
        await server.create_room("bench-r0")
        rooms = await server.room_api("ListRooms", {})
        assert [r["name"] for r in rooms["rooms"]] == ["bench-r0"]
        await server.delete_room("bench-r0")
        assert (await server.room_api("ListRooms", {})).get("rooms", []) == []
        # A token signed with another secret is refused.
        bad = access_token(server.api_key, "x" * 32, grants={"roomList": True})
        assert server.http is not None
        async with server.http.post(
            server.http_url + "/twirp/livekit.RoomService/ListRooms",
            json={},
            headers={"Authorization": f"Bearer {bad}"},
        ) as resp:
            assert resp.status == 401
    assert server.exit_code is not None
