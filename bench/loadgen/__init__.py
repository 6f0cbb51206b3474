"""Load generator of the SFU benchmark (bench/sfu.py): lightweight SRTP peers for Voxa's SFU and Janus.

Each peer does ICE + DTLS once with aiortc, then sends and receives raw SRTP on the nominated candidate
pair (aiortc's own media pipeline never runs): pre-encoded Opus/VP8 frames paced in real time, each RTP
payload ending in the 8-byte ``time.monotonic_ns()`` of its sending, so subscribers measure the one-way
latency and count every packet without decoding anything.

* `plan`: scenarios (rooms of peers), the topology (who receives what) and the expected packet counts;
* `media`: pre-encoded Opus and VP8, RTP packetisation with the negotiated header extensions;
* `rtc`: loopback-only aiortc peer connections and the raw SRTP send/receive on the nominated pair;
* `procfs`: CPU, RSS and core-busy readings from /proc, pinning, percentiles;
* `worker`: one load process (its peers, the pacer, measurement windows), driven over a pipe;
* `control`: the orchestrator's side of the load processes.

Import it as the top-level package ``loadgen`` with ``bench/`` on ``sys.path`` (like ``janus``).
"""
