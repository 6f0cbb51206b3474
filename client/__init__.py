"""Voxa's Python client: a Phoenix Channels v2 client now; WebRTC media joins it later."""
