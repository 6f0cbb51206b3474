"""The operator's Prometheus metrics (served on VOXA_OPERATOR_METRICS_PORT).

API requests are counted by verb so "zero writes when nothing changed" can be watched in production,
not only asserted in tests.
"""

from __future__ import annotations

from prometheus_client import Counter

API_REQUESTS = Counter(
    "voxa_operator_api_requests_total", "Kubernetes API requests the operator made, by verb.", ["verb"]
)
RECONCILES = Counter("voxa_operator_reconciles_total", "VoiceServer reconciliations.", ["trigger"])
SCALING_DECISIONS = Counter(
    "voxa_operator_scaling_decisions_total", "Scaling decisions, by reason.", ["reason"]
)
