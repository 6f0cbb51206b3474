"""Headless Chromium as a WebRTC peer of Voxa's servers: harness, test page and driver."""
