"""Voxa signaling: the Phoenix Channels v2 WebSocket service every client talks to first."""
