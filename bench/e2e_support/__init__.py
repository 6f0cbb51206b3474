"""Helpers of bench/e2e.py: the loopback stack (redis-server, `voxa signaling`, `voxa sfu` processes)
and the measuring voice client (Phoenix socket + aiortc peer with a hook on the RTP receive path)."""
