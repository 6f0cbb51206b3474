"""The Helm chart charts/voxa through the real helm binary: it lints, it renders what the values say, it
renders exactly what `install.manifests` says for the same values (so charts/voxa-operator/operator.yaml
and the chart cannot disagree), and its schema refuses bad values with a readable message."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from voxa.common.version import VERSION
from voxa.operator import chart, install

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "voxa"
# helm built from its module (e2e/kind/tools.sh) has no default Kubernetes version but v1.20, which the
# chart's kubeVersion refuses; a cluster's own version is used by `helm install`.
KUBE_VERSION = "1.35.0"

# The first build of helm (in the session fixture) takes minutes; afterwards it is cached.
pytestmark = pytest.mark.timeout(1800)

Docs = list[dict[str, Any]]
Render = Callable[..., Docs]

CUSTOM: dict[str, Any] = {
    "image": {"repository": "registry.example.com/voxa/voxa", "tag": "dev-1", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "replicaCount": 3,
    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": 1, "memory": "256Mi"}},
    "logLevel": "debug",
    "watchNamespaces": ["games", "chat"],
    "priorityClassName": "system-cluster-critical",
    "nodeSelector": {"kubernetes.io/os": "linux", "pool": "system"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "system", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["system"]}]}
                ]
            }
        }
    },
    "podAnnotations": {"example.com/scrape": "false"},
    "podLabels": {"team": "voice", "app.kubernetes.io/name": "not-the-selector"},
    "metrics": {"enabled": False},
    "serviceAccount": {"create": False, "name": "existing-sa"},
    "pdb": {"enabled": False},
}


def helm_binary() -> Path:
    """The helm binary, built from its Go module once and cached (~/.cache/voxa/tools/)."""
    result = subprocess.run(
        ["bash", str(ROOT / "e2e" / "kind" / "tools.sh"), "helm"],
        capture_output=True,
        text=True,
        timeout=1700,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"building helm failed (e2e/kind/tools.sh helm):\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def helm() -> Path:
    return helm_binary()


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def template(helm: Path, tmp_path: Path) -> Render:
    """`helm template` of the chart with these values, as parsed objects."""

    def render(
        values: dict[str, Any] | None = None, *, namespace: str = "voxa-system", release: str = "voxa"
    ) -> Docs:
        values_file = tmp_path / "values.yaml"
        values_file.write_text(yaml.safe_dump(values or {}))
        result = run_helm(
            helm,
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--kube-version",
            KUBE_VERSION,
            "--values",
            str(values_file),
        )
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    return render


def one(docs: Docs, kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def container(docs: Docs) -> dict[str, Any]:
    containers: list[dict[str, Any]] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    (operator,) = containers
    return operator


def env(docs: Docs) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(docs)["env"]}


def test_helm_lint_passes_also_strict(helm: Path) -> None:
    for strict in ([], ["--strict"]):
        result = run_helm(helm, "lint", *strict, str(CHART))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 chart(s) failed" in result.stdout
        assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_chart_metadata_carries_the_one_version() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "voxa"
    assert meta["version"] == meta["appVersion"] == VERSION
    assert meta["kubeVersion"] == chart.KUBE_VERSION
    assert meta["description"]


def test_defaults_render_the_operator_in_the_release_namespace(template: Render) -> None:
    docs = template(namespace="voice-ops")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
        ]
    ), "no Namespace object: the release namespace is Helm's (--create-namespace)"
    for doc in docs:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == "voice-ops", doc["kind"]
        assert doc["metadata"]["name"].startswith("voxa-operator"), doc["kind"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"

    assert one(docs, "ClusterRole")["rules"] == install.cluster_role()["rules"] == install.rules()
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one(docs, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "voxa-operator", "namespace": "voice-ops"}
    ]

    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    selector = spec["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "voxa-operator", "app.kubernetes.io/instance": "voxa"}
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    assert (
        not {"nodeSelector", "tolerations", "affinity", "priorityClassName", "imagePullSecrets"} & pod.keys()
    )
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}

    operator = container(docs)
    assert operator["image"] == f"ghcr.io/voxa-dev/voxa:{VERSION}"
    assert operator["imagePullPolicy"] == "IfNotPresent"
    assert operator["securityContext"]["readOnlyRootFilesystem"] is True
    assert operator["securityContext"]["allowPrivilegeEscalation"] is False
    assert operator["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert operator[probe]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    ports = {p["name"]: p["containerPort"] for p in operator["ports"]}
    assert ports == {"liveness": 8080, "metrics": 9090}
    assert operator["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    }
    assert env(docs) == {
        "VOXA_OPERATOR_PEERING": "voxa-operator",
        "VOXA_OPERATOR_LOG_LEVEL": "info",
        "VOXA_OPERATOR_LIVENESS_PORT": "8080",
        "VOXA_OPERATOR_METRICS_PORT": "9090",
    }, "no VOXA_OPERATOR_NAMESPACES (the whole cluster) and no shared PRIORITY (kopf would pause both)"

    pdb = one(docs, "PodDisruptionBudget")["spec"]
    assert pdb == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}
    service = one(docs, "Service")["spec"]
    assert service["selector"] == selector
    assert service["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]


def test_other_values_are_applied(template: Render) -> None:
    docs = template(CUSTOM)
    kinds = {d["kind"] for d in docs}
    assert "PodDisruptionBudget" not in kinds
    assert "Service" not in kinds, "metrics disabled: no metrics Service"
    assert "ServiceAccount" not in kinds, "serviceAccount.create false: an existing one is used"
    spec = one(docs, "Deployment")["spec"]
    assert spec["replicas"] == 3
    pod = spec["template"]["spec"]
    assert pod["nodeSelector"] == CUSTOM["nodeSelector"]
    assert pod["tolerations"] == CUSTOM["tolerations"]
    assert pod["affinity"] == CUSTOM["affinity"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["serviceAccountName"] == "existing-sa"
    assert one(docs, "ClusterRoleBinding")["subjects"][0]["name"] == "existing-sa"
    meta = spec["template"]["metadata"]
    assert meta["annotations"] == {"example.com/scrape": "false"}
    assert meta["labels"]["team"] == "voice"
    assert meta["labels"]["app.kubernetes.io/name"] == "voxa-operator", "the selector labels win"

    operator = container(docs)
    assert operator["image"] == "registry.example.com/voxa/voxa:dev-1"
    assert operator["imagePullPolicy"] == "Always"
    assert operator["resources"] == CUSTOM["resources"]
    assert [p["name"] for p in operator["ports"]] == ["liveness"]
    assert env(docs) == {
        "VOXA_OPERATOR_PEERING": "voxa-operator",
        "VOXA_OPERATOR_NAMESPACES": "games,chat",
        "VOXA_OPERATOR_LOG_LEVEL": "debug",
        "VOXA_OPERATOR_LIVENESS_PORT": "8080",
        "VOXA_OPERATOR_METRICS_PORT": "0",
    }


def test_names_follow_the_release(template: Render) -> None:
    docs = template(release="edge", namespace="edge-system")
    assert {d["metadata"]["name"] for d in docs} == {"edge-operator", "edge-operator-metrics"}
    assert env(docs)["VOXA_OPERATOR_PEERING"] == "edge-operator", "one kopf peering per release"
    assert one(docs, "Deployment")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "edge"
    docs = template({"fullnameOverride": "voice-operator"}, release="edge")
    assert one(docs, "ClusterRole")["metadata"]["name"] == "voice-operator"
    assert template(release="voxa-operator")[0]["metadata"]["name"] == "voxa-operator"


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    """An object without what only Helm adds: its labels (release, chart version) and the selectors,
    which the chart narrows to the release."""
    doc = copy.deepcopy(doc)
    doc["metadata"].pop("labels")
    spec = doc.get("spec", {})
    spec.pop("selector", None)
    if "template" in spec:
        spec["template"]["metadata"].pop("labels")
    return doc


@pytest.mark.parametrize("values", [{}, CUSTOM], ids=["defaults", "custom"])
def test_the_chart_renders_what_install_manifests_says(template: Render, values: dict[str, Any]) -> None:
    def key(doc: dict[str, Any]) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    plain = sorted(
        (d for d in install.manifests(install.Values.model_validate(values)) if d["kind"] != "Namespace"),
        key=key,
    )
    rendered = sorted(template(values), key=key)
    assert [_comparable(d) for d in rendered] == [_comparable(d) for d in plain]
    for ours, theirs in zip(plain, rendered, strict=True):
        assert ours["metadata"]["labels"].items() <= theirs["metadata"]["labels"].items()


def test_the_plain_manifests_are_the_chart_defaults() -> None:
    docs = list(yaml.safe_load_all((ROOT / "charts" / "voxa-operator" / "operator.yaml").read_text()))
    assert docs == install.manifests()
    assert docs[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "voxa-system", "labels": install.LABELS},
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": "two"}, "at '/replicaCount': got string, want integer"),
        ({"replicaCont": 2}, "additional properties 'replicaCont' not allowed"),
        ({"image": {"repo": "x"}}, "additional properties 'repo' not allowed"),
        ({"logLevel": "loud"}, "at '/logLevel': value must be one of"),
        ({"watchNamespaces": ["Games_1"]}, "at '/watchNamespaces/0'"),
        ({"metrics": {"port": 70000}}, "at '/metrics/port'"),
        ({"nodeSelector": {"pool": 1}}, "at '/nodeSelector/pool': got number, want string"),
        ({"pdb": {"enabled": "yes"}}, "at '/pdb/enabled': got string, want boolean"),
    ],
)
def test_the_schema_refuses_bad_values(
    helm: Path, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = run_helm(
        helm, "template", "voxa", str(CHART), "--kube-version", KUBE_VERSION, "-f", str(values_file)
    )
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


def test_set_on_the_command_line_is_typed_by_the_schema(helm: Path) -> None:
    args = ["template", "voxa", str(CHART), "--kube-version", KUBE_VERSION]
    result = run_helm(helm, *args, "--set", "replicaCount=3", "--set", "watchNamespaces={a,b}")
    assert result.returncode == 0, result.stderr
    assert one(list(yaml.safe_load_all(result.stdout)), "Deployment")["spec"]["replicas"] == 3
    result = run_helm(helm, *args, "--set", "replicaCount=two")
    assert result.returncode != 0 and "/replicaCount" in result.stderr


def test_a_parent_chart_may_pass_global_values(template: Render) -> None:
    assert one(template({"global": {"imageRegistry": "x"}}), "Deployment")


def test_notes_say_what_to_apply_next(helm: Path, tmp_path: Path) -> None:
    # `helm template` does not render NOTES.txt; a copy of the chart with one more template shows it.
    copied = tmp_path / "voxa"
    shutil.copytree(CHART, copied)
    (copied / "templates" / "notes-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ include "voxa/templates/NOTES.txt" . | quote }}\n'
    )
    args = ["template", "voxa", str(copied), "-n", "ops", "--kube-version", KUBE_VERSION]
    args += ["--show-only", "templates/notes-test.yaml"]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stderr
    notes = yaml.safe_load(result.stdout)["data"]["notes"]
    for text in ("kubectl get deployment -n ops voxa-operator", "crds/samples/", "kubectl get voiceservers"):
        assert text in notes
    assert "Secret" in notes and "StunnerGateway" in notes and "VoiceServer" in notes
    assert "never upgrades or deletes them" in notes
    result = run_helm(helm, *args, "--set", "watchNamespaces={games}")
    assert "kubectl apply -n games -f crds/samples/" in yaml.safe_load(result.stdout)["data"]["notes"]


def test_values_yaml_is_the_models_defaults_and_the_schema_accepts_them() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values == install.Values().model_dump(by_alias=True)
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {*values, "global"}
    assert "$ref" not in json.dumps(schema), "draft-07 ignores the keywords next to a $ref: inlined"
    for required in (
        "image",
        "imagePullSecrets",
        "replicaCount",
        "resources",
        "logLevel",
        "watchNamespaces",
        "priorityClassName",
        "nodeSelector",
        "tolerations",
        "affinity",
        "podAnnotations",
        "podLabels",
        "metrics",
        "serviceAccount",
        "pdb",
    ):
        assert required in values
    assert values["image"] == {"repository": "ghcr.io/voxa-dev/voxa", "tag": "", "pullPolicy": "IfNotPresent"}


def test_every_value_is_documented() -> None:
    doc = (ROOT / "docs" / "operator.md").read_text()
    assert chart.DOCS_BEGIN in doc and chart.DOCS_END in doc
    for key in chart.value_keys():
        assert f"| `{key}` |" in doc, f"docs/operator.md does not list {key}: run `make crds`"
    assert "helm install voxa charts/voxa -n voxa-system --create-namespace" in doc


def test_template_markers_become_helm_text() -> None:
    text = chart.template(
        {
            "spec": {
                "replicas": install.Tpl("{{ .Values.n }}"),
                "labels": install.Block('include "x" .'),
                "items": [
                    "a",
                    install.When(".Values.b", {"name": "b", "value": install.Tpl("{{ .Values.b }}")}),
                ],
                "nodeSelector": install.When(".Values.s", install.Block("toYaml .Values.s")),
            }
        }
    )
    assert text == (
        "spec:\n"
        "  replicas: {{ .Values.n }}\n"
        "  labels:\n"
        '    {{- include "x" . | nindent 4 }}\n'
        "  items:\n"
        "  - a\n"
        "  {{- if .Values.b }}\n"
        "  - name: b\n"
        "    value: {{ .Values.b }}\n"
        "  {{- end }}\n"
        "  {{- if .Values.s }}\n"
        "  nodeSelector:\n"
        "    {{- toYaml .Values.s | nindent 4 }}\n"
        "  {{- end }}\n"
    )
    with pytest.raises(ValueError, match="cannot write"):
        chart.template([{"name": install.When(".Values.x", 1)}])
