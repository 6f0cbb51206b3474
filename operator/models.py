"""The custom resources' schemas, as pydantic models: the one source of truth.

`crds/*.yaml` are generated from these classes (`make crds`, see `voxa.operator.crdgen`), and the operator
parses every object it receives with them, so the API server's validation and the operator's view of a
spec can never disagree. Field names are the camelCase names users write in YAML; every field has a
description because `kubectl explain` shows it. Rules that span fields are CEL (`x-kubernetes-validations`),
checked by the API server itself, so a bad spec is refused at `kubectl apply` with a readable message
instead of being accepted and failing later in the operator.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from voxa.common.version import image

GROUP = "voxa.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Voxa's own images, tagged with the package version (`make images` builds all three).
DEFAULT_IMAGE = image("voxa")
DEFAULT_REDIS_IMAGE = image("redis")
DEFAULT_STUNNERD_IMAGE = image("stunnerd")

QUANTITY = r"^([+]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """One `x-kubernetes-validations` entry."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


class Model(BaseModel):
    """Base of every schema model: camelCase names as written, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ResourceList(Model):
    cpu: str | None = Field(default=None, pattern=QUANTITY, description="CPU quantity, e.g. `250m` or `1`.")
    memory: str | None = Field(
        default=None, pattern=QUANTITY, description="Memory quantity, e.g. `256Mi` or `1Gi`."
    )


class Resources(Model):
    """Compute resources of one container, as in a Pod spec (requests are always set)."""

    requests: ResourceList = Field(description="What the scheduler reserves for the container.")
    limits: ResourceList = Field(
        default_factory=ResourceList, description="Hard caps; memory should be set, CPU usually not."
    )


def _resources(cpu: str, memory: str, memory_limit: str) -> Resources:
    return Resources(requests=ResourceList(cpu=cpu, memory=memory), limits=ResourceList(memory=memory_limit))


class SecretKeyRef(Model):
    """A key of a Secret in the VoiceServer's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Secret name.")
    key: str = Field(min_length=1, max_length=253, description="Key inside the Secret's data.")


NODE_PORT_DESCRIPTION = (
    "with Service type NodePort or LoadBalancer: a fixed node port (within the cluster's "
    "service-node-port-range, 30000-32767 by default); omit to let Kubernetes choose one."
)


class ServiceSpec(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.type != 'ClusterIP' || !has(self.nodePort)",
                    "nodePort needs type NodePort or LoadBalancer",
                )
            ]
        }
    )

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        default="ClusterIP", description="Kubernetes Service type of the signaling endpoint."
    )
    nodePort: int | None = Field(
        default=None, ge=1, le=65535, description=f"The signaling port's node port, {NODE_PORT_DESCRIPTION}"
    )
    annotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations for the Service (e.g. a cloud load balancer's)."
    )


class IngressSpec(Model):
    host: str = Field(
        min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Public host name of signaling."
    )
    className: str | None = Field(default=None, max_length=253, description="IngressClass to use.")
    tlsSecretName: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="TLS certificate Secret for the host; set, the endpoint is wss://.",
    )
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations for the Ingress.")


class SignalingSpec(Model):
    replicas: int = Field(
        default=2, ge=1, le=100, description="Signaling pods (WebSocket endpoints; stateless, share Redis)."
    )
    image: str = Field(
        default=DEFAULT_IMAGE, min_length=1, description="Voxa image running `voxa signaling`."
    )
    resources: Resources = Field(
        default_factory=lambda: _resources("100m", "128Mi", "512Mi"),
        description="Resources of each signaling container.",
    )
    service: ServiceSpec = Field(default_factory=ServiceSpec, description="How signaling is exposed.")
    ingress: IngressSpec | None = Field(
        default=None, description="An Ingress for signaling at this host; omit for none."
    )


DEFAULT_MEDIA_PORT = 40000


class PortRange(Model):
    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [cel("self.min <= self.max", "min must be <= max")]}
    )

    min: int = Field(default=40000, ge=1024, le=65535, description="Lowest UDP port for media.")
    max: int = Field(default=49999, ge=1024, le=65535, description="Highest UDP port for media.")


class SfuSpec(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.minReplicas <= self.maxReplicas", "minReplicas must be <= maxReplicas"),
                cel(
                    "!has(self.replicas) || (self.replicas >= self.minReplicas"
                    " && self.replicas <= self.maxReplicas)",
                    "replicas must lie within [minReplicas, maxReplicas]",
                ),
                cel(
                    "self.targetParticipantsPerPod <= self.capacityPerPod",
                    "targetParticipantsPerPod must be <= capacityPerPod",
                ),
            ]
        }
    )

    image: str = Field(default=DEFAULT_IMAGE, min_length=1, description="Voxa image running `voxa sfu`.")
    resources: Resources = Field(
        default_factory=lambda: _resources("500m", "256Mi", "1Gi"), description="Resources of each SFU pod."
    )
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Pinned SFU pod count (what `kubectl scale` sets). Omit to let the operator scale "
        "on load: ceil(participants / targetParticipantsPerPod) + buffer within [minReplicas, maxReplicas].",
    )
    minReplicas: int = Field(default=1, ge=0, le=1000, description="Fewest SFU pods, even when idle.")
    maxReplicas: int = Field(default=10, ge=1, le=1000, description="Most SFU pods, whatever the load.")
    targetParticipantsPerPod: int = Field(
        default=100, ge=1, le=10000, description="Participants one SFU pod should carry when scaling."
    )
    capacityPerPod: int = Field(
        default=500, ge=1, le=10000, description="Participants one SFU pod accepts at most (hard limit)."
    )
    buffer: int = Field(
        default=1, ge=0, le=100, description="Idle SFU pods kept ready above the load, for sudden joins."
    )
    drainDeadlineSeconds: int = Field(
        default=300,
        ge=0,
        le=86400,
        description="On scale-down, how long a draining SFU pod may keep its calls before it is removed.",
    )
    scaleDownStabilizationSeconds: int = Field(
        default=60,
        ge=0,
        le=3600,
        description=(
            "How long the load must ask for fewer SFU pods, without a break, before a drain starts: "
            "a dip (clients reconnecting through a signaling rollout, a network blip) moves no call."
        ),
    )
    mediaPort: int | None = Field(
        default=None,
        ge=1024,
        le=65535,
        description="The one UDP port every SFU pod serves media on, for all its peers (the SFU is "
        "ICE-lite on it). Default 40000, or udpPortRange.min where that older field is set.",
    )
    udpPortRange: PortRange | None = Field(
        default=None,
        description="Deprecated: SFU pods now use one UDP port (mediaPort). Where set and mediaPort is "
        "not, its min is the media port; max is ignored.",
    )

    @property
    def media_port(self) -> int:
        """The effective media port (mediaPort, else the deprecated udpPortRange.min, else 40000)."""
        if self.mediaPort is not None:
            return self.mediaPort
        if self.udpPortRange is not None:
            return self.udpPortRange.min
        return DEFAULT_MEDIA_PORT


class AuthSpec(Model):
    """How signaling verifies client tokens (JWT): exactly one source of verification material."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "[has(self.jwtSecretRef), has(self.publicKeyRef), has(self.jwksRef)]"
                    ".filter(x, x).size() == 1",
                    "set exactly one of jwtSecretRef, publicKeyRef or jwksRef",
                )
            ]
        }
    )

    jwtSecretRef: SecretKeyRef | None = Field(
        default=None, description="HS256 shared secret your backend signs client tokens with."
    )
    publicKeyRef: SecretKeyRef | None = Field(
        default=None, description="PEM public key (RS256, ES256 or EdDSA tokens)."
    )
    jwksRef: SecretKeyRef | None = Field(
        default=None, description="A JWKS document; keys are chosen by `kid`."
    )
    issuer: str | None = Field(default=None, max_length=512, description="Required `iss` claim, if set.")
    audience: str | None = Field(default=None, max_length=512, description="Required `aud` claim, if set.")


HOST_PORT = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?):[0-9]{1,5}$"


class RedisSentinelSpec(Model):
    """A Redis primary found through Sentinel: signaling and the operator ask the Sentinels where it is
    and follow a failover to the replica they promote."""

    hosts: list[Annotated[str, Field(pattern=HOST_PORT, max_length=260, description="A Sentinel.")]] = Field(
        min_length=1,
        max_length=16,
        description="The Sentinels, as `host:port` (usually port 26379); list several.",
    )
    masterName: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.\-]+$",
        description="The primary's name in Sentinel.",
    )
    passwordSecretRef: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the password of the primary and its replicas, if any."
    )
    sentinelPasswordSecretRef: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the Sentinels' own password, if any."
    )


class RedisSpec(Model):
    """Where presence, calls and the SFU registry live: your Redis (one server, a Sentinel set or a
    Redis Cluster), or a single-instance Redis the operator runs."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "(self.managed ? 1 : 0) + (has(self.urlSecretRef) ? 1 : 0)"
                    " + (has(self.sentinel) ? 1 : 0) == 1",
                    "set exactly one of managed: true, urlSecretRef or sentinel",
                ),
                cel(
                    "!self.cluster || has(self.urlSecretRef)",
                    "cluster: true describes the Redis of urlSecretRef",
                    ".cluster",
                ),
            ]
        }
    )

    managed: bool = Field(
        default=False,
        description="Run a single-node Redis (StatefulSet) for this voice server. It is never a Sentinel "
        "set or a cluster: for those, run your own and name it here.",
    )
    urlSecretRef: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding a redis:// or rediss:// URL of an external Redis (with "
        "`cluster: true`, of any node of a Redis Cluster).",
    )
    cluster: bool = Field(
        default=False,
        description="The URL names a node of a Redis Cluster (7.0 or later); the other nodes are discovered.",
    )
    sentinel: RedisSentinelSpec | None = Field(
        default=None, description="An external Redis primary found through Sentinel."
    )
    image: str = Field(default=DEFAULT_REDIS_IMAGE, min_length=1, description="Image of the managed Redis.")
    resources: Resources = Field(
        default_factory=lambda: _resources("100m", "128Mi", "512Mi"), description="Managed Redis resources."
    )


class ObjectRef(Model):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Object name.")
    namespace: str | None = Field(
        default=None,
        max_length=63,
        pattern=DNS_LABEL,
        description="Namespace; defaults to the referring object's.",
    )


class LimitsSpec(Model):
    maxParticipantsPerChannel: int = Field(
        default=200, ge=1, le=10000, description="Participants one voice channel admits."
    )


APNS_URLS = {
    "production": "https://api.push.apple.com",
    "sandbox": "https://api.sandbox.push.apple.com",
}
"""APNs base URLs by `spec.calls.push.apns.environment`: a build signed for development gets device
tokens of the sandbox, a store or TestFlight build tokens of production; a token works with one only."""


class WebPushSpec(Model):
    """Web Push (browsers' push services) with VAPID: the private key signs every push."""

    vapidPrivateKeyRef: SecretKeyRef = Field(
        description="PEM EC P-256 private key (VAPID); browsers get its public half from "
        "`GET /push/vapid-public-key`. Mounted as a file, never put in an environment variable."
    )
    subject: str = Field(
        min_length=1,
        max_length=512,
        pattern=r"^(mailto:|https://)\S+$",
        description="VAPID `sub` claim: a mailto: or https: URL push services can contact you at.",
    )


class FcmSpec(Model):
    """Firebase Cloud Messaging (HTTP v1) for Android devices."""

    serviceAccountRef: SecretKeyRef = Field(
        description="The Firebase service account's JSON key (OAuth2 JWT grant; it names the project). "
        "Mounted as a file."
    )
    url: str | None = Field(
        default=None,
        max_length=512,
        pattern=r"^https?://\S+$",
        description="FCM API base URL; omit for Google's.",
    )


class ApnsSpec(Model):
    """Apple Push Notification service, token-based (ES256 JWTs signed with a .p8 key)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!self.topic.endsWith('.voip')",
                    "topic is the app's bundle id, without .voip (VoIP pushes add it)",
                )
            ]
        }
    )

    keyRef: SecretKeyRef = Field(description="The APNs auth key (.p8, PEM). Mounted as a file.")
    keyId: str = Field(pattern=r"^[A-Z0-9]{10}$", description="The key's 10-character Key ID.")
    teamId: str = Field(pattern=r"^[A-Z0-9]{10}$", description="Your 10-character Apple Developer Team ID.")
    topic: str = Field(
        min_length=1,
        max_length=255,
        pattern=r"^[A-Za-z0-9.\-]+$",
        description="The iOS app's bundle id (`apns-topic`).",
    )
    environment: Literal["production", "sandbox"] = Field(
        default="production",
        description="production (App Store and TestFlight builds) or sandbox (development builds).",
    )


class PushSpec(Model):
    """Push notifications to callees with no live socket: at least one provider."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.webPush) || has(self.fcm) || has(self.apns)",
                    "push needs at least one of webPush, fcm or apns",
                )
            ]
        }
    )

    webPush: WebPushSpec | None = Field(default=None, description="Web Push for browsers.")
    fcm: FcmSpec | None = Field(default=None, description="FCM for Android.")
    apns: ApnsSpec | None = Field(default=None, description="APNs for iOS (alerts and VoIP pushes).")


class CallsSpec(Model):
    """Calls on `user:` topics (ringing, timeouts, push to offline callees); see docs/calls.md."""

    ringTimeoutSeconds: int = Field(
        default=30, ge=1, le=600, description="How long a call rings an invitee before it times out."
    )
    maxInvitees: int = Field(default=16, ge=1, le=256, description="Most invitees of one call.")
    reconnectGraceSeconds: int = Field(
        default=10,
        ge=0,
        le=300,
        description="How long a ringing call outlives its caller's last socket before it is cancelled.",
    )
    callWaiting: bool = Field(
        default=False,
        description="Ring an invitee who is in another call (`busy: true`) instead of declining for them.",
    )
    push: PushSpec | None = Field(
        default=None, description="Push notifications to invitees with no live socket; omit for none."
    )


class VoiceServerSpec(Model):
    """Desired state of one voice server (a community): signaling, SFUs, auth, Redis and calls."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.serverId) == has(oldSelf.serverId)"
                    " && (!has(self.serverId) || self.serverId == oldSelf.serverId)",
                    "serverId is immutable",
                )
            ]
        }
    )

    serverId: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.\-]+$",
        description="The id clients use in tokens and topics (voice:<serverId>:<channel>); "
        "defaults to the object's name. Immutable.",
    )
    signaling: SignalingSpec = Field(default_factory=SignalingSpec, description="The signaling service.")
    sfu: SfuSpec = Field(default_factory=SfuSpec, description="The SFU pods and how they scale.")
    auth: AuthSpec = Field(description="Verification of client tokens.")
    redis: RedisSpec = Field(description="The Redis holding shared state.")
    stunnerGatewayRef: ObjectRef | None = Field(
        default=None,
        description="A StunnerGateway through which clients reach the SFUs (TURN); omit for direct media.",
    )
    limits: LimitsSpec = Field(default_factory=LimitsSpec, description="Per-channel limits.")
    calls: CallsSpec = Field(default_factory=CallsSpec, description="Calls and their push notifications.")


# ----------------------------------------------------------------------------------------------------
# Status


class Condition(Model):
    """A Kubernetes-style condition."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: str = Field(description="Ready, Progressing or Degraded.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="Machine-readable CamelCase reason.")
    message: str = Field(default="", description="Human-readable details.")
    observedGeneration: int = Field(default=0, description="The spec generation this was computed from.")
    lastTransitionTime: str = Field(default="", description="When status last changed (RFC 3339).")


class Draining(Model):
    model_config = ConfigDict(extra="ignore", frozen=True)

    pod: str = Field(description="The SFU pod being drained before removal.")
    since: str = Field(description="When draining started (RFC 3339).")
    deadline: str = Field(description="When the pod is removed even if it still carries participants.")


class SfuStatus(Model):
    model_config = ConfigDict(extra="ignore", frozen=True)

    replicas: int = Field(default=0, description="SFU pods that exist.")
    readyReplicas: int = Field(default=0, description="SFU pods that are ready.")
    desiredReplicas: int = Field(default=0, description="What the scaling policy asks for now.")
    selector: str = Field(default="", description="Label selector of the SFU pods (scale subresource).")
    draining: Draining | None = Field(default=None, description="The scale-down in progress, if any.")


class SignalingStatus(Model):
    model_config = ConfigDict(extra="ignore", frozen=True)

    replicas: int = Field(default=0, description="Signaling pods that exist.")
    readyReplicas: int = Field(default=0, description="Signaling pods that are ready.")


class VoiceServerStatus(Model):
    model_config = ConfigDict(extra="ignore", frozen=True)

    observedGeneration: int = Field(default=0, description="Generation of the spec last reconciled.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, Progressing, Degraded.")
    endpoint: str = Field(default="", description="Where clients open their socket.")
    serverId: str = Field(default="", description="The effective voice-server id.")
    sfu: SfuStatus = Field(default_factory=SfuStatus, description="SFU pods.")
    signaling: SignalingStatus = Field(default_factory=SignalingStatus, description="Signaling pods.")
    participants: int = Field(default=0, description="Participants connected to this server's SFUs.")
    sfus: str = Field(default="0/0", description="Ready/desired SFU pods, for `kubectl get`.")
    ready: str = Field(default="False", description="Ready condition's status, for `kubectl get`.")


class CustomResource(BaseModel):
    """What the operator parses an object into: metadata stays a dict, spec is validated."""

    model_config = ConfigDict(extra="ignore")

    metadata: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", "default"))

    @property
    def generation(self) -> int:
        return int(self.metadata.get("generation", 0))


class VoiceServer(CustomResource):
    spec: VoiceServerSpec
    status: VoiceServerStatus = Field(default_factory=VoiceServerStatus)

    @property
    def server_id(self) -> str:
        return self.spec.serverId or self.name


# ----------------------------------------------------------------------------------------------------
# StunnerGateway

ListenerProtocol = Literal["TURN-UDP", "TURN-TCP", "TURN-TLS", "TURN-DTLS"]


class GatewayListener(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!(self.protocol in ['TURN-TLS', 'TURN-DTLS']) || has(self.tlsSecretRef)",
                    "TURN-TLS and TURN-DTLS listeners need tlsSecretRef",
                ),
                cel(
                    "self.protocol in ['TURN-TLS', 'TURN-DTLS'] || !has(self.tlsSecretRef)",
                    "only TURN-TLS and TURN-DTLS listeners take tlsSecretRef",
                ),
                cel(
                    "!has(self.nodePort) || !has(self.alternateNodePort)"
                    " || self.nodePort != self.alternateNodePort",
                    "nodePort and alternateNodePort must differ",
                ),
                cel(
                    "has(self.alternatePort) ? self.alternatePort != self.port : self.port < 65535",
                    "alternatePort must differ from port (port 65535 needs an explicit alternatePort)",
                ),
                cel(
                    "self.protocol in ['TURN-UDP', 'TURN-DTLS'] || [self.port,"
                    " has(self.alternatePort) ? self.alternatePort : self.port + 1]"
                    ".all(p, p < 8086 || p > 8088)",
                    "TCP ports 8086-8088 are taken by stunnerd's health checks",
                ),
            ]
        }
    )

    name: str = Field(
        min_length=1,
        max_length=61,
        pattern=DNS_LABEL,
        description="Listener name (unique). The Service's ports are `a-<name>` and `b-<name>`.",
    )
    protocol: ListenerProtocol = Field(
        default="TURN-UDP",
        description="TURN-UDP and TURN-DTLS listen on UDP; TURN-TCP and TURN-TLS on TCP.",
    )
    port: int = Field(default=3478, ge=1, le=65535, description="Port clients connect to (slot a).")
    alternatePort: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="The listener's second port (slot b), default `port` + 1. Each gateway pod runs two "
        "stunnerd slots; a secret rotation sends new calls to the other slot while calls in progress "
        "keep theirs, so clients and firewalls must reach both ports.",
    )
    nodePort: int | None = Field(
        default=None, ge=1, le=65535, description=f"Slot a's node port, {NODE_PORT_DESCRIPTION}"
    )
    alternateNodePort: int | None = Field(
        default=None, ge=1, le=65535, description=f"Slot b's node port, {NODE_PORT_DESCRIPTION}"
    )
    tlsSecretRef: ObjectRef | None = Field(
        default=None, description="A kubernetes.io/tls Secret (tls.crt, tls.key) for TURN-TLS and TURN-DTLS."
    )


class GatewayAuth(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.type == 'ephemeral' || has(self.secretRef)",
                    "static auth needs secretRef (keys username and password)",
                )
            ]
        }
    )

    type: Literal["ephemeral", "static"] = Field(
        default="ephemeral",
        description="ephemeral: signaling issues short-lived credentials (TURN REST API, HMAC-SHA1 of "
        "`<expiry>:<user>`); static: one username and password for everyone.",
    )
    secretRef: ObjectRef | None = Field(
        default=None,
        description="Secret with key `secret` (ephemeral) or `username` and `password` (static); "
        "omitted, the operator generates an ephemeral secret.",
    )


class GatewayServiceSpec(Model):
    type: Literal["LoadBalancer", "NodePort", "ClusterIP"] = Field(
        default="LoadBalancer", description="Service type that exposes the gateway's listeners."
    )
    annotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations for the Service (e.g. a cloud load balancer's)."
    )


class StunnerGatewaySpec(Model):
    """A TURN gateway (STUNner's dataplane, stunnerd) through which clients reach SFU pods."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.listeners.all(a, self.listeners.exists_one(b, b.name == a.name))",
                    "listener names must be unique",
                ),
                cel(
                    "self.listeners.all(a, self.listeners.all(b, a.name == b.name"
                    " || (a.protocol in ['TURN-UDP', 'TURN-DTLS'])"
                    " != (b.protocol in ['TURN-UDP', 'TURN-DTLS'])"
                    " || [a.port, has(a.alternatePort) ? a.alternatePort : a.port + 1].all(p,"
                    " p != b.port && p != (has(b.alternatePort) ? b.alternatePort : b.port + 1))))",
                    "two listeners cannot share a port (port or alternatePort) on the same transport "
                    "(UDP or TCP)",
                ),
                cel(
                    "self.service.type != 'ClusterIP'"
                    " || self.listeners.all(l, !has(l.nodePort) && !has(l.alternateNodePort))",
                    "nodePort and alternateNodePort need service type NodePort or LoadBalancer",
                ),
            ]
        }
    )

    listeners: list[GatewayListener] = Field(
        default_factory=lambda: [GatewayListener(name="turn-udp")],
        min_length=1,
        max_length=8,
        description="TURN listeners; each becomes a port of the Service and a TURN URI.",
    )
    realm: str = Field(default="voxa", min_length=1, max_length=128, description="TURN realm.")
    auth: GatewayAuth = Field(default_factory=GatewayAuth, description="How TURN clients authenticate.")
    service: GatewayServiceSpec = Field(
        default_factory=GatewayServiceSpec, description="How the gateway is exposed."
    )
    publicAddress: str | None = Field(
        default=None,
        max_length=253,
        description="Address clients use (IP or DNS name), when the Service's own address is not it.",
    )
    replicas: int = Field(default=1, ge=1, le=50, description="stunnerd pods.")
    image: str = Field(default=DEFAULT_STUNNERD_IMAGE, min_length=1, description="stunnerd image.")
    resources: Resources = Field(
        default_factory=lambda: _resources("200m", "64Mi", "256Mi"),
        description="Resources of each of the pod's two stunnerd containers (slots a and b).",
    )
    credentialTtlSeconds: int = Field(
        default=86400,
        ge=60,
        le=604800,
        description="Lifetime of the ephemeral credentials signaling issues. A TURN allocation is "
        "refreshed with the same credentials, so a call through the gateway lasts at most this long. "
        "Also how long the previous secret stays valid on the standby slot after a rotation.",
    )


class StunnerGatewayStatus(Model):
    model_config = ConfigDict(extra="ignore", frozen=True)

    observedGeneration: int = Field(default=0, description="Generation of the spec last reconciled.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, Progressing, Degraded.")
    address: str = Field(default="", description="The public address clients reach the gateway at.")
    uris: list[str] = Field(
        default_factory=list,
        description="One TURN URI per listener, on the active slot: what signaling hands out.",
    )
    activeSlot: str = Field(default="", description="The stunnerd slot (a or b) new calls use.")
    standbyUris: list[str] = Field(
        default_factory=list,
        description="The TURN URIs of the other slot, which carries calls older than a rotation.",
    )
    previousSecretValidUntil: str = Field(
        default="",
        description="Until when the standby slot accepts the previous secret (RFC 3339); empty when it "
        "holds the current one.",
    )
    listeners: int = Field(default=0, description="Listeners configured.")
    ready: str = Field(default="False", description="Ready condition's status, for `kubectl get`.")
    secretName: str = Field(default="", description="The Secret holding the auth secret in use.")
    endpoints: int = Field(default=0, description="SFU pod addresses the gateway may relay to.")


class StunnerGateway(CustomResource):
    spec: StunnerGatewaySpec = Field(default_factory=StunnerGatewaySpec)
    status: StunnerGatewayStatus = Field(default_factory=StunnerGatewayStatus)
