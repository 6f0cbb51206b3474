"""`voxa operator`: runs the kopf operator with Voxa's settings, peering and liveness endpoint."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import kopf

from voxa.common.logging import configure
from voxa.operator import handlers, registry
from voxa.operator.kube import ApiError, KubeClient
from voxa.operator.settings import OperatorSettings

log = logging.getLogger("voxa.operator")


def _login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """In a pod, the service account; elsewhere, the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no in-cluster service account and no kubeconfig found")
    return info


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    return _login(settings)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    ours = handlers.Runtime.settings
    # kopf's bookkeeping goes to annotations under voxa.dev (status.kopf would be pruned by the schema).
    settings.persistence.finalizer = handlers.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="voxa.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="voxa.dev", key="last-handled-configuration"
    )
    # Events are posted for the operator's decisions (kopf.info/warn), not for every log line.
    settings.posting.level = logging.INFO
    settings.posting.loggers = False
    settings.watching.server_timeout = 300
    settings.peering.lifetime = ours.peering_lifetime_s
    client = KubeClient(_login(settings))
    handlers.Runtime.kube = client
    handlers.Runtime.reconciler = handlers.Reconciler(client)
    if ours.peering:
        await _ensure_peering(client, ours)


async def _ensure_peering(client: KubeClient, ours: OperatorSettings) -> None:
    """kopf only joins a peering object that exists; the first replica to start creates it."""
    targets: list[tuple[str, str, str | None]] = [
        ("/apis/kopf.dev/v1/clusterkopfpeerings", "ClusterKopfPeering", None)
    ]
    if ours.namespaces:
        targets = [
            (f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings", "KopfPeering", ns) for ns in ours.namespaces
        ]
    for path, kind, namespace in targets:
        meta: dict[str, str] = {"name": ours.peering}
        if namespace:
            meta["namespace"] = namespace
        try:
            await client.request("POST", path, {"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": meta})
        except ApiError as exc:
            if exc.status != 409:
                raise


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if handlers.Runtime.kube is not None:
        await handlers.Runtime.kube.close()
    await registry.close_all()


SENIORITY_BASE_US = 10**17
"""Above any start time in microseconds for millennia, so seniority priorities stay positive."""


def seniority_priority(started_at_us: int) -> int:
    """A peering priority that is higher the earlier a replica started. kopf lets the highest-priority
    peer work and pauses all peers of equal priority, so replicas of one Deployment (same settings)
    need distinct priorities; by start time, the replica already working keeps working when a new one
    joins (a rolling update hands over only when the old one stops), and ties need two replicas
    started in the same microsecond."""
    return SENIORITY_BASE_US - started_at_us


def run(settings: OperatorSettings | None = None) -> int:
    settings = settings or handlers.Runtime.settings
    handlers.Runtime.settings = settings
    configure(settings.log_level)
    for noisy in ("kopf.objects", "kopf.activities.probe"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.liveness_host)
    asyncio.run(
        kopf.operator(
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            standalone=not settings.peering,
            peering_name=settings.peering or None,
            priority=(
                settings.priority
                if settings.priority is not None
                else seniority_priority(time.time_ns() // 1000)
            ),
            liveness_endpoint=f"http://{settings.liveness_host}:{settings.liveness_port}/healthz",
        )
    )
    return 0
