"""Janus WebRTC server harness for the SFU benchmark (Voxa's SFU vs Janus VideoRoom under the same load).

* `server.JanusServer`: a private, loopback-only Janus (HTTP transport + VideoRoom plugin) as a child process.
* `client.JanusSession` / `client.VideoRoom`: an asyncio client of the Janus HTTP API and VideoRoom requests.
* `peers.Publisher` / `peers.Subscriber`: aiortc peers (Opus tone out, decoded audio and packet counts in).
* `load`: ``PYTHONPATH=bench python -m janus.load`` measures Janus forwarding 1 -> N with aiortc peers.

Import it as the top-level package ``janus`` with ``bench/`` on ``sys.path`` (as a script in bench/ has it):
bench/ is not a package, so that is also the name mypy gives these modules.
"""
