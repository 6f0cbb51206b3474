"""A small async Kubernetes API client on aiohttp, for what kopf does not do for us.

kopf watches and posts events; applying children (server-side apply), patching status and pods, and
reading Secrets happen here. It takes its credentials from the same `kopf.ConnectionInfo` kopf logs in
with, so there is one source of credentials, and it counts its requests by verb
(voxa_operator_api_requests_total): the operator's promise is zero writes when nothing changed, and
the benchmark checks that through this metric.
"""

from __future__ import annotations

import base64
import ssl
import tempfile
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf
import orjson

from voxa.operator.metrics import API_REQUESTS

FIELD_MANAGER = "voxa-operator"

# kind -> (plural, namespaced); the children the operator manages and the objects it reads.
RESOURCES: dict[str, tuple[str, bool]] = {
    "ConfigMap": ("configmaps", True),
    "Secret": ("secrets", True),
    "Service": ("services", True),
    "Pod": ("pods", True),
    "Event": ("events", True),
    "Deployment": ("deployments", True),
    "StatefulSet": ("statefulsets", True),
    "PodDisruptionBudget": ("poddisruptionbudgets", True),
    "NetworkPolicy": ("networkpolicies", True),
    "Ingress": ("ingresses", True),
    "VoiceServer": ("voiceservers", True),
    "StunnerGateway": ("stunnergateways", True),
    "Node": ("nodes", False),
}


class ApiError(Exception):
    """A non-2xx answer, with the API server's own message (it is what users need to read)."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message


def path_for(api_version: str, kind: str, namespace: str | None = None, name: str | None = None) -> str:
    plural, namespaced = RESOURCES[kind]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespaced and namespace:
        base += f"/namespaces/{quote(namespace)}"
    base += f"/{plural}"
    if name:
        base += f"/{quote(name)}"
    return base


def object_path(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return path_for(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    context = ssl.create_default_context()
    if info.ca_path:
        context.load_verify_locations(cafile=str(info.ca_path))
    elif info.ca_data:
        data = info.ca_data if isinstance(info.ca_data, bytes) else info.ca_data.encode()
        try:
            pem = base64.b64decode(data, validate=True).decode()
        except ValueError:
            pem = data.decode()
        context.load_verify_locations(cadata=pem)
    cert, key = info.certificate_path, info.private_key_path
    cert_data, key_data = info.certificate_data, info.private_key_data
    if cert_data and key_data:
        # ssl wants files for client certificates; they live only as long as the context loads them.
        with tempfile.NamedTemporaryFile() as c, tempfile.NamedTemporaryFile() as k:
            c.write(_pem(cert_data))
            k.write(_pem(key_data))
            c.flush()
            k.flush()
            context.load_cert_chain(c.name, k.name)
    elif cert and key:
        context.load_cert_chain(str(cert), str(key))
    return context


def _pem(data: str | bytes) -> bytes:
    raw = data if isinstance(data, bytes) else data.encode()
    return raw if raw.lstrip().startswith(b"-----") else base64.b64decode(raw)


class KubeClient:
    """Just enough of the Kubernetes REST API, with request counters by verb."""

    def __init__(self, info: kopf.ConnectionInfo) -> None:
        self.server = info.server.rstrip("/")
        headers = {"User-Agent": "voxa-operator"}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        elif info.username and info.password:
            basic = base64.b64encode(f"{info.username}:{info.password}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        self._headers = headers
        self._ssl = _ssl_context(info)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=32),
                timeout=aiohttp.ClientTimeout(total=30),
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> Any:
        API_REQUESTS.labels(method).inc()
        data = None if body is None else orjson.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        async with self._http().request(
            method, self.server + path, data=data, headers=headers, params=params
        ) as response:
            raw = await response.read()
            if response.status >= 400:
                try:
                    status = orjson.loads(raw)
                    raise ApiError(response.status, status.get("message", ""), status.get("reason", ""))
                except orjson.JSONDecodeError:
                    raise ApiError(response.status, raw.decode(errors="replace")[:500]) from None
            return orjson.loads(raw) if raw else None

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    async def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self.request("GET", path, params=params)
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    async def apply(self, obj: dict[str, Any], force: bool = True) -> dict[str, Any]:
        """Server-side apply: the operator owns exactly the fields it renders."""
        params = {"fieldManager": FIELD_MANAGER, "force": "true" if force else "false"}
        result: dict[str, Any] = await self.request(
            "PATCH", object_path(obj), obj, "application/apply-patch+yaml", params
        )
        return result

    async def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Create, or None if it already exists (the other replica or a previous run was first)."""
        meta = obj["metadata"]
        path = path_for(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        try:
            result: dict[str, Any] = await self.request(
                "POST", path, obj, params={"fieldManager": FIELD_MANAGER}
            )
        except ApiError as exc:
            if exc.status == 409:
                return None
            raise
        return result

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "PATCH", path, patch, "application/merge-patch+json", {"fieldManager": FIELD_MANAGER}
        )
        return result

    async def delete(self, path: str) -> bool:
        """Delete in the background (the garbage collector takes dependents); False if already gone."""
        try:
            await self.request("DELETE", path, {"propagationPolicy": "Background"})
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True
