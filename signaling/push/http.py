"""One lazily opened aiohttp session per push sender: the connection pool to that push service,
reopened if it was closed, with the sender's per-try timeout."""

from __future__ import annotations

import aiohttp


class HttpSession:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def __call__(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
