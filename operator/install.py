"""The operator's own installation, pure: service account, least-privilege RBAC, a two-replica Deployment
in one kopf peering, its PodDisruptionBudget and metrics Service.

One description, two renderings, so the chart and the plain manifests cannot disagree (the ClusterRole's
rules, above all, are written once):

- `manifests(values)` is plain dicts for those chart values; with the defaults it is
  charts/voxa-operator/operator.yaml (`voxa crds`; the tests run the operator with exactly that
  ClusterRole on a real control plane);
- `manifests(values, helm=True)` is the same objects with `Tpl`, `Block` and `When` markers wherever a
  value goes; operator/chart.py writes them out as the Helm chart's templates (charts/voxa).

`Values` is the chart's values: values.yaml, values.schema.json and the docs' table are generated from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from voxa.common.version import VERSION
from voxa.operator.models import DEFAULT_IMAGE, GROUP
from voxa.operator.render.common import container_security_context, pod_security_context

NAMESPACE = "voxa-system"
NAME = "voxa-operator"
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "voxa"}
SELECTOR = {"app.kubernetes.io/name": NAME}
"""What the Deployment selects its pods by (the chart adds app.kubernetes.io/instance)."""
LIVENESS_PORT = 8080

_READ = ["get", "list", "watch"]
_WRITE = ["create", "update", "patch", "delete"]

Manifest = dict[str, Any]


def rules() -> list[dict[str, Any]]:
    """Exactly what the operator does: watch and own its children, patch SFU pods' deletion cost,
    read Secrets it is pointed at, list nodes for NodePort addresses, post events, and take part in
    kopf peering."""
    return [
        {"apiGroups": [GROUP], "resources": ["voiceservers", "stunnergateways"], "verbs": [*_READ, "patch"]},
        {
            "apiGroups": [GROUP],
            "resources": ["voiceservers/status", "stunnergateways/status"],
            "verbs": ["patch"],
        },
        {"apiGroups": [""], "resources": ["configmaps", "secrets", "services"], "verbs": [*_READ, *_WRITE]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": [*_READ, "patch"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"], "verbs": [*_READ, *_WRITE]},
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": [*_READ, *_WRITE]},
        {
            "apiGroups": ["networking.k8s.io"],
            "resources": ["networkpolicies", "ingresses"],
            "verbs": [*_READ, *_WRITE],
        },
        {
            "apiGroups": ["kopf.dev"],
            "resources": ["clusterkopfpeerings", "kopfpeerings"],
            "verbs": [*_READ, "create", "patch"],
        },
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": _READ},
    ]


def cluster_role(name: Any = NAME, labels: Any = LABELS) -> Manifest:
    """The operator's ClusterRole (the chart passes template markers for the name and labels)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels},
        "rules": rules(),
    }


# --- The chart's values ------------------------------------------------------------------------------


class _Values(BaseModel):
    """camelCase keys as Helm users expect them; unknown keys are refused (also by values.schema.json)."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class Image(_Values):
    repository: str = Field(
        default=DEFAULT_IMAGE.rsplit(":", 1)[0], min_length=1, description="The operator's image."
    )
    tag: str = Field(default="", description="Image tag; empty: the chart's appVersion (Voxa's version).")
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="imagePullPolicy of the operator container."
    )


class PullSecret(_Values):
    name: str = Field(min_length=1, description="Name of a docker-registry Secret in the release namespace.")


Quantity = str | int | float


class Resources(_Values):
    requests: dict[str, Quantity] = Field(default_factory=dict, description="Resource requests.")
    limits: dict[str, Quantity] = Field(default_factory=dict, description="Resource limits.")


class Metrics(_Values):
    enabled: bool = Field(
        default=True, description="Serve Prometheus metrics and create a Service for them; false: neither."
    )
    port: int = Field(default=9090, ge=1, le=65535, description="Port of the metrics endpoint and Service.")


class ServiceAccount(_Values):
    create: bool = Field(default=True, description="Create the operator's ServiceAccount.")
    name: str = Field(
        default="",
        description="Its name; empty: the release's full name when created, else `default`.",
    )
    annotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations of the ServiceAccount (e.g. for workload identity)."
    )


class Pdb(_Values):
    enabled: bool = Field(
        default=True,
        description="A PodDisruptionBudget: at most one operator pod voluntarily down at a time.",
    )


NamespaceName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]


class Values(_Values):
    """Everything the chart lets a user change; the defaults are charts/voxa-operator/operator.yaml."""

    image: Image = Field(default_factory=Image, description="The operator's container image.")
    image_pull_secrets: list[PullSecret] = Field(
        default_factory=list, description="Secrets for pulling the image from a private registry."
    )
    replica_count: int = Field(
        default=2,
        ge=0,
        description="Operator replicas, all in one kopf peering: one works, the others stand by.",
    )
    resources: Resources = Field(
        default_factory=lambda: Resources(
            requests={"cpu": "100m", "memory": "128Mi"}, limits={"memory": "512Mi"}
        ),
        description="Resources of the operator container.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="VOXA_OPERATOR_LOG_LEVEL."
    )
    watch_namespaces: list[NamespaceName] = Field(
        default_factory=list,
        description="Namespaces to watch (VOXA_OPERATOR_NAMESPACES); empty: the whole cluster.",
    )
    priority_class_name: str = Field(default="", description="PriorityClass of the operator pods.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="nodeSelector of the pods.")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Tolerations of the pods.")
    affinity: dict[str, Any] = Field(default_factory=dict, description="Affinity of the pods.")
    pod_annotations: dict[str, str] = Field(default_factory=dict, description="Extra pod annotations.")
    pod_labels: dict[str, str] = Field(
        default_factory=dict, description="Extra pod labels (the chart's own labels win on a clash)."
    )
    metrics: Metrics = Field(default_factory=Metrics, description="Prometheus metrics.")
    service_account: ServiceAccount = Field(
        default_factory=ServiceAccount, description="The ServiceAccount the operator runs as."
    )
    pdb: Pdb = Field(default_factory=Pdb, description="PodDisruptionBudget.")
    fullname_override: str = Field(
        default="",
        max_length=63,
        description="Name of the operator's objects (and its kopf peering); empty: `<release>-operator`, "
        "or the release name when it already contains `operator`.",
    )


# --- Template markers (the chart's rendering) ---------------------------------------------------------


@dataclass(frozen=True)
class Tpl:
    """Template text written where a scalar goes, e.g. `{{ .Values.replicaCount }}`."""

    text: str


@dataclass(frozen=True)
class Block:
    """A mapping value that a template pipeline writes as YAML, e.g. `toYaml .Values.resources`."""

    pipeline: str


@dataclass(frozen=True)
class When:
    """A mapping entry, list item or whole object that is only there when a template condition holds."""

    condition: str
    value: Any


class _Out:
    """Where the two renderings differ: each configurable spot names its plain value and its template."""

    def __init__(self, helm: bool) -> None:
        self.helm = helm

    def value(self, plain: Any, text: str) -> Any:
        return Tpl(text) if self.helm else plain

    def block(self, plain: Any, pipeline: str) -> Any:
        return Block(pipeline) if self.helm else plain

    def optional(self, key: str, plain: Any, path: str, *, scalar: bool = False) -> dict[str, Any]:
        """`key` only when the value at `path` is set (not empty)."""
        if not self.helm:
            return {key: plain} if plain else {}
        inner = Tpl(f"{{{{ {path} | quote }}}}") if scalar else Block(f"toYaml {path}")
        return {key: When(path, inner)}

    def items(self, plain: bool, condition: str, *items: Any) -> list[Any]:
        """List items (or whole objects) only there when `condition` holds."""
        if not self.helm:
            return list(items) if plain else []
        return [When(condition, item) for item in items]


def _fullname(values: Values) -> str:
    """The plain rendering's names are those of the release `voxa` (`<release>-operator`)."""
    return values.fullname_override or NAME


def _service_account_name(values: Values) -> str:
    sa = values.service_account
    return sa.name or (_fullname(values) if sa.create else "default")


def manifests(values: Values | None = None, *, helm: bool = False) -> list[Any]:
    """The installation for these values: plain dicts (with a Namespace), or the chart's templates as
    marked-up dicts (the release namespace, which Helm does not create as an object)."""
    v = values or Values()
    out = _Out(helm)
    name = out.value(_fullname(v), '{{ include "voxa.fullname" . }}')
    namespace = out.value(NAMESPACE, "{{ .Release.Namespace }}")
    labels = out.block(LABELS, 'include "voxa.labels" .')
    selector = out.block(SELECTOR, 'include "voxa.selectorLabels" .')
    sa_name = out.value(_service_account_name(v), '{{ include "voxa.serviceAccountName" . }}')
    metrics_port = out.value(v.metrics.port, "{{ .Values.metrics.port }}")

    def meta(obj_name: Any = name, *, namespaced: bool = True, **extra: Any) -> dict[str, Any]:
        return {
            "name": obj_name,
            **({"namespace": namespace} if namespaced else {}),
            "labels": labels,
            **extra,
        }

    probe = {
        "httpGet": {"path": "/healthz", "port": "liveness"},
        "periodSeconds": 10,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    }
    tag = v.image.tag or VERSION
    container = {
        "name": "operator",
        "image": out.value(
            f"{v.image.repository}:{tag}",
            '{{ printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) '
            "| quote }}",
        ),
        "imagePullPolicy": out.value(v.image.pull_policy, "{{ .Values.image.pullPolicy | quote }}"),
        "args": ["operator"],
        "env": [
            # One peering per release: its replicas elect one active operator. No VOXA_OPERATOR_PRIORITY:
            # kopf pauses every replica of equal priority, so replicas rank themselves by seniority.
            {
                "name": "VOXA_OPERATOR_PEERING",
                "value": out.value(_fullname(v), '{{ include "voxa.fullname" . | quote }}'),
            },
            *out.items(
                bool(v.watch_namespaces),
                ".Values.watchNamespaces",
                {
                    "name": "VOXA_OPERATOR_NAMESPACES",
                    "value": out.value(
                        ",".join(v.watch_namespaces), '{{ join "," .Values.watchNamespaces | quote }}'
                    ),
                },
            ),
            {
                "name": "VOXA_OPERATOR_LOG_LEVEL",
                "value": out.value(v.log_level, "{{ .Values.logLevel | quote }}"),
            },
            {"name": "VOXA_OPERATOR_LIVENESS_PORT", "value": str(LIVENESS_PORT)},
            {
                "name": "VOXA_OPERATOR_METRICS_PORT",
                "value": out.value(
                    str(v.metrics.port if v.metrics.enabled else 0),
                    "{{ ternary .Values.metrics.port 0 .Values.metrics.enabled | quote }}",
                ),
            },
        ],
        "ports": [
            {"name": "liveness", "containerPort": LIVENESS_PORT, "protocol": "TCP"},
            *out.items(
                v.metrics.enabled,
                ".Values.metrics.enabled",
                {"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"},
            ),
        ],
        "resources": out.block(v.resources.model_dump(exclude_defaults=True), "toYaml .Values.resources"),
        "securityContext": {**container_security_context(), "runAsNonRoot": True},
        "livenessProbe": probe,
        "readinessProbe": probe,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108 - an emptyDir
    }
    pod_spec = {
        "serviceAccountName": sa_name,
        **out.optional(
            "imagePullSecrets",
            [s.model_dump() for s in v.image_pull_secrets],
            ".Values.imagePullSecrets",
        ),
        **out.optional("priorityClassName", v.priority_class_name, ".Values.priorityClassName", scalar=True),
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
        **out.optional("nodeSelector", v.node_selector, ".Values.nodeSelector"),
        **out.optional("tolerations", v.tolerations, ".Values.tolerations"),
        **out.optional("affinity", v.affinity, ".Values.affinity"),
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(),
        "spec": {
            "replicas": out.value(v.replica_count, "{{ .Values.replicaCount }}"),
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": out.block({**v.pod_labels, **LABELS}, 'include "voxa.podLabels" .'),
                    **out.optional("annotations", v.pod_annotations, ".Values.podAnnotations"),
                },
                "spec": pod_spec,
            },
        },
    }
    service_account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(
            sa_name,
            **out.optional(
                "annotations", v.service_account.annotations, ".Values.serviceAccount.annotations"
            ),
        ),
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": meta(namespaced=False),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": namespace}],
    }
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(),
        # maxUnavailable rather than minAvailable: a node drain is never blocked, whatever replicaCount.
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(out.value(f"{_fullname(v)}-metrics", '{{ include "voxa.fullname" . }}-metrics')),
        "spec": {
            "selector": selector,
            "ports": [{"name": "metrics", "port": metrics_port, "targetPort": "metrics", "protocol": "TCP"}],
        },
    }
    return [
        *(
            []
            if helm
            else [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": LABELS}}
            ]
        ),
        *out.items(v.service_account.create, ".Values.serviceAccount.create", service_account),
        cluster_role(name, labels),
        binding,
        deployment,
        *out.items(v.pdb.enabled, ".Values.pdb.enabled", pdb),
        *out.items(v.metrics.enabled, ".Values.metrics.enabled", service),
    ]
