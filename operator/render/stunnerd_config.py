"""Render a stunnerd configuration (STUNner's v1 dataplane config, as of STUNner v1.1.0) from plain inputs.

This is a pure function of its arguments: it reads no files, no environment and no clock, so the
same inputs always give the same document (stunnerd compares each new config with the running one and
reconciles only what changed, so a stable rendering avoids needless work). The result is what
`stunnerd -c FILE` loads and `stunnerd -w -c FILE` re-reads on every write: JSON is YAML, so
``json.dumps(render_stunnerd_config(...))`` is a valid config file.

The shape, checked against the Go types of the pinned version (pkg/apis/v1)::

    version: v1
    admin:     {name, loglevel, healthcheck_endpoint, metrics_endpoint?}
    auth:      {type: ephemeral | static, realm, credentials: {secret} | {username, password}}
    listeners: [{name, protocol, address, port, public_address?, public_port?, cert?, key?, routes}]
    clusters:  [{name, type: STATIC, protocol: UDP, endpoints}]

Details that matter:

* ``healthcheck_endpoint`` is always written: left out, stunnerd listens on ``http://:8086``, every
  interface. An empty string turns health checks off. The health server also answers ``/status``,
  which includes the auth credentials (the shared secret) in clear: never expose that port.
* ``cert`` and ``key`` are the base64 of the PEM text, not file paths.
* Cluster endpoints are IPs or CIDRs, optionally restricted to a port range (``<cidr>:<lo-hi>``);
  a TURN permission, channel binding or relayed packet for any other peer is refused.
* Changing the realm, or a listener's protocol, address, port or certificate, restarts that listener
  and drops its allocations; changing the secret, routes, clusters or public address does not.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

API_VERSION = "v1"
# stunnerd expands environment variables in the file (all but the credentials), so one rendered
# config can serve every gateway pod: `address: $POD_IP`, with POD_IP from the downward API.
POD_ADDRESS = "$STUNNER_ADDR"
"""What the operator renders as the listener address; STUNNER_ADDR is the pod IP (downward API)."""
ENV_PLACEHOLDER = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})")
ListenerProtocol = Literal["TURN-UDP", "TURN-TCP", "TURN-TLS", "TURN-DTLS"]
PROTOCOLS: tuple[ListenerProtocol, ...] = ("TURN-UDP", "TURN-TCP", "TURN-TLS", "TURN-DTLS")
TLS_PROTOCOLS: frozenset[str] = frozenset({"TURN-TLS", "TURN-DTLS"})


@dataclass(frozen=True)
class EphemeralAuth:
    """TURN REST API credentials: username ``<expiry>:<user>``, password
    base64(HMAC-SHA1(secret, username))."""

    secret: str
    type: Literal["ephemeral"] = "ephemeral"


@dataclass(frozen=True)
class StaticAuth:
    """One fixed username and password for every client."""

    username: str
    password: str
    type: Literal["static"] = "static"


Auth = EphemeralAuth | StaticAuth


@dataclass(frozen=True)
class Listener:
    """A TURN server socket. `address` (an IP, or a ``$VARIABLE`` stunnerd takes from its environment)
    is also the relay address written in allocations; `public_address`/`public_port` are
    informational (what clients are told to use)."""

    name: str
    protocol: ListenerProtocol
    address: str
    port: int
    public_address: str | None = None
    public_port: int | None = None
    cert_pem: str | None = None
    key_pem: str | None = None


@dataclass(frozen=True)
class Cluster:
    """The peers TURN clients may reach: IPs or CIDRs, optionally only within a UDP port range."""

    name: str
    endpoints: Sequence[str]
    ports: tuple[int, int] | None = None


def _port(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{what}: port must be an integer in 1..65535, got {value!r}")
    return value


def _endpoint(text: str, ports: tuple[int, int] | None, cluster: str) -> str:
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"cluster {cluster!r}: endpoint {text!r} is not an IP address or CIDR") from None
    endpoint = network.with_prefixlen
    if ports is None:
        return endpoint
    lo, hi = (_port(p, f"cluster {cluster!r}") for p in ports)
    if lo > hi:
        raise ValueError(f"cluster {cluster!r}: port range {lo}-{hi} is empty")
    return f"{endpoint}:<{lo}-{hi}>"


def _auth(auth: Auth, realm: str) -> dict[str, Any]:
    if isinstance(auth, EphemeralAuth):
        if not auth.secret:
            raise ValueError("ephemeral auth needs a non-empty secret")
        credentials = {"secret": auth.secret}
    else:
        if not auth.username or not auth.password:
            raise ValueError("static auth needs a username and a password")
        credentials = {"username": auth.username, "password": auth.password}
    return {"type": auth.type, "realm": realm, "credentials": credentials}


def _listener(listener: Listener, clusters: list[str]) -> dict[str, Any]:
    if not listener.name:
        raise ValueError("every listener needs a name")
    if listener.protocol not in PROTOCOLS:
        raise ValueError(f"listener {listener.name!r}: protocol must be one of {', '.join(PROTOCOLS)}")
    if not ENV_PLACEHOLDER.fullmatch(listener.address):
        try:
            ipaddress.ip_address(listener.address)
        except ValueError:
            raise ValueError(
                f"listener {listener.name!r}: address {listener.address!r} is not an IP or a $VARIABLE"
            ) from None
    out: dict[str, Any] = {
        "name": listener.name,
        "protocol": listener.protocol,
        "address": listener.address,
        "port": _port(listener.port, f"listener {listener.name!r}"),
    }
    if listener.public_address:
        out["public_address"] = listener.public_address
    if listener.public_port is not None:
        out["public_port"] = _port(listener.public_port, f"listener {listener.name!r} public")
    has_tls = listener.cert_pem is not None or listener.key_pem is not None
    if listener.protocol in TLS_PROTOCOLS:
        if not listener.cert_pem or not listener.key_pem:
            raise ValueError(f"listener {listener.name!r}: {listener.protocol} needs a certificate and a key")
        out["cert"] = base64.b64encode(listener.cert_pem.encode()).decode()
        out["key"] = base64.b64encode(listener.key_pem.encode()).decode()
    elif has_tls:
        raise ValueError(f"listener {listener.name!r}: {listener.protocol} takes no certificate or key")
    out["routes"] = clusters
    return out


def render_stunnerd_config(
    *,
    name: str,
    realm: str,
    auth: Auth,
    listeners: Sequence[Listener],
    clusters: Sequence[Cluster],
    health_check_endpoint: str,
    metrics_endpoint: str | None = None,
    log_level: str = "all:INFO",
) -> dict[str, Any]:
    """The stunnerd config document for one gateway: every listener routes to every cluster (the
    operator renders one per VoiceServer using the gateway; a cluster may be empty while its SFU pods
    have no addresses yet, and with no cluster at all nothing is relayed).

    `health_check_endpoint` is e.g. ``http://0.0.0.0:8086`` (``/live``, ``/ready``, ``/status``) or
    ``""`` for none. Raises ValueError for inputs stunnerd would refuse or misread."""
    if not name:
        raise ValueError("the gateway needs a name")
    if not realm:
        raise ValueError("the realm must not be empty")
    if not listeners:
        raise ValueError("at least one listener is needed")
    names = [listener.name for listener in listeners]
    if len(set(names)) != len(names):
        raise ValueError(f"listener names must be unique: {names}")
    cluster_names = [c.name for c in clusters]
    if not all(cluster_names) or len(set(cluster_names)) != len(cluster_names):
        raise ValueError(f"clusters need unique, non-empty names: {cluster_names}")
    rendered_clusters = [
        {
            "name": c.name,
            "type": "STATIC",
            "protocol": "UDP",
            "endpoints": sorted({_endpoint(e, c.ports, c.name) for e in c.endpoints}),
        }
        for c in sorted(clusters, key=lambda c: c.name)
    ]
    admin: dict[str, Any] = {
        "name": name,
        "loglevel": log_level,
        "healthcheck_endpoint": health_check_endpoint,
    }
    if metrics_endpoint:
        admin["metrics_endpoint"] = metrics_endpoint
    return {
        "version": API_VERSION,
        "admin": admin,
        "auth": _auth(auth, realm),
        "listeners": [_listener(listener, sorted(cluster_names)) for listener in listeners],
        "clusters": rendered_clusters,
    }


def auth_of(config: dict[str, Any]) -> Auth | None:
    """The auth a rendered config holds (the inverse of what `render_stunnerd_config` writes), or None
    if it holds none this module would render."""
    auth = config.get("auth") or {}
    credentials = auth.get("credentials") or {}
    if auth.get("type") == "ephemeral" and credentials.get("secret"):
        return EphemeralAuth(secret=str(credentials["secret"]))
    if auth.get("type") == "static" and credentials.get("username") and credentials.get("password"):
        return StaticAuth(username=str(credentials["username"]), password=str(credentials["password"]))
    return None


def dumps(config: dict[str, Any]) -> str:
    """The config file text (JSON, which stunnerd reads as YAML), byte-for-byte stable."""
    return json.dumps(config, indent=2, sort_keys=True) + "\n"
