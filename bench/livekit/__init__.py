"""LiveKit harness of the SFU benchmark (Voxa's SFU vs livekit-server under the same load).

* `build.sh`: builds livekit-server (from its Go module, server/go.mod) and the Go load client (load/),
  once, cached under ``~/.cache/voxa/livekit/``.
* `server.LiveKitServer`: a private, loopback-only livekit-server; `server.access_token`: LiveKit
  access tokens (HS256 JWTs); the room API (Twirp, JSON).
* `load.LiveKitLoad`: the orchestrator's side of the Go load processes (``lkload``), with the
  interface of `loadgen.control.LoadProcesses`.

Import it as the top-level package ``livekit`` with ``bench/`` on ``sys.path`` (like ``janus``).
"""
