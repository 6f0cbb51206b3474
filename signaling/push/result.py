"""What a push service's answer means for the registration and for another try.

Every platform's sender maps its answers onto these few results, so the queue decides retries and
removals one way for all of them (and the decision is tested alone).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

MAX_ATTEMPTS = 4
"""Tries of one push, the first included."""
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0


class Status(enum.StrEnum):
    SENT = "sent"
    GONE = "gone"
    """The push service says the registration is dead (404/410, UNREGISTERED, BadDeviceToken): remove it."""
    RETRY = "retry"
    """Worth another try later (5xx, 429, timeouts, connection errors, a refreshed credential)."""
    FAILED = "failed"
    """Refused for good (a malformed request, a misconfigured credential): no retry."""


@dataclass(frozen=True)
class SendResult:
    status: Status
    reason: str = ""
    """Short and free of secrets: it goes to logs and metric labels."""
    retry_after_s: float | None = None
    """The push service's own Retry-After, when it gave one."""


def retry_delay(result: SendResult, attempt: int, now: float, deadline: float) -> float | None:
    """Seconds to wait before try `attempt + 1`, or None to give up: only retryable results, at most
    MAX_ATTEMPTS tries, and only while the next try would still start before the push's window ends
    (a ring retried after it stopped ringing would ring a call that is over)."""
    if result.status is not Status.RETRY or attempt >= MAX_ATTEMPTS:
        return None
    delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * float(2 ** (attempt - 1)))
    if result.retry_after_s is not None:
        delay = max(delay, result.retry_after_s)
    if now + delay >= deadline:
        return None
    return delay


def status_of_http(code: int) -> Status:
    """The meaning shared by Web Push, FCM and APNs of a bare HTTP status."""
    if 200 <= code < 300:
        return Status.SENT
    if code in (404, 410):
        return Status.GONE
    if code == 429 or code >= 500:
        return Status.RETRY
    return Status.FAILED


def parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
