"""Structured JSON logs on stderr, one object per line.

Call sites log an event name plus fields (``log.info("socket.joined", extra={"topic": t})``); the
formatter drops any field whose name suggests a secret so a careless call cannot leak a token.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime", "taskName"}
)
_SECRET_WORDS = ("token", "secret", "password", "credential", "authorization")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD or key.startswith("_"):
                continue
            if any(word in key.lower() for word in _SECRET_WORDS):
                continue
            entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class BadRequestFilter(logging.Filter):
    """aiohttp's server logs every unparsable request (a header too long, garbage) at ERROR with a
    traceback and the first 100 bytes of the offending line, which may hold a token. Such a request is
    the client's fault, answered 400 and counted by nobody else: one WARNING line naming the error,
    without the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        from aiohttp.http_exceptions import HttpProcessingError

        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = "http.bad_request", ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.error = type(exc).__name__
            record.status = exc.code
            record.exc_info = record.exc_text = None
        return True


def configure(level: str = "info") -> None:
    """Send every logger's records to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that log per connection check or per packet at INFO/DEBUG stay quiet below WARNING.
    for noisy in ("aiohttp.access", "aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(BadRequestFilter())
    logging.Formatter.converter = time.gmtime
