"""The CRDs in crds/ are what the pydantic models say, every other generated file (the operator's
installation, the Helm chart, the docs' values table) is what the generator writes, and the samples are
valid against the models."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from voxa.operator import chart, crdgen
from voxa.operator.models import StunnerGatewaySpec, VoiceServerSpec

ROOT = Path(__file__).resolve().parents[3]


def test_crd_files_match_the_models() -> None:
    for name, crd in crdgen.all_crds().items():
        assert (ROOT / "crds" / name).read_text() == crdgen.dump(crd), (
            f"crds/{name} is stale: run `make crds`"
        )


def test_every_generated_file_is_current() -> None:
    files = crdgen.all_files(ROOT / "crds")
    for path, text in files.items():
        rel = path.relative_to(ROOT)
        assert path.exists(), f"{rel} is missing: run `make crds`"
        assert path.read_text() == text, f"{rel} is stale: run `make crds`"
    chart_dir = ROOT / "charts" / "voxa"
    assert chart.orphans(chart_dir, set(files)) == [], "files in charts/voxa that nothing generates"
    assert ROOT / "docs" / "operator.md" in files, "docs/operator.md lost the chart values markers"
    for name in ("Chart.yaml", "values.yaml", "values.schema.json", "templates/deployment.yaml"):
        assert chart_dir / name in files


def test_chart_crds_are_the_crds() -> None:
    chart_crds = ROOT / "charts" / "voxa" / "crds"
    assert sorted(p.name for p in chart_crds.iterdir()) == sorted(crdgen.all_crds())
    for name in crdgen.all_crds():
        assert (chart_crds / name).read_text() == (ROOT / "crds" / name).read_text(), name


def test_check_fails_on_any_drift_and_a_run_repairs_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for folder in ("crds", "charts", "docs"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    out = ["--out", str(tmp_path / "crds")]
    assert crdgen.main([*out, "--check"]) == 0
    deployment = tmp_path / "charts" / "voxa" / "templates" / "deployment.yaml"
    deployment.write_text(deployment.read_text().replace("replicas:", "replicas: 1 #"))
    orphan = tmp_path / "charts" / "voxa" / "templates" / "old.yaml"
    orphan.write_text("kind: ConfigMap\n")
    (tmp_path / "charts" / "voxa" / "values.schema.json").unlink()
    capsys.readouterr()
    assert crdgen.main([*out, "--check"]) == 1
    err = capsys.readouterr().err
    for name in ("deployment.yaml", "old.yaml", "values.schema.json"):
        assert name in err
    assert crdgen.main(out) == 0
    assert not orphan.exists()
    assert crdgen.main([*out, "--check"]) == 0


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if "type" in node:
            found.append((path, node))
        for key, value in node.get("properties", {}).items():
            found += walk(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            found += walk(node["items"], f"{path}[]")
    return found


def test_schema_is_structural_and_every_spec_field_is_described() -> None:
    schema = crdgen.voiceserver_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema["properties"]["spec"], "spec"):
        assert node.get("description"), f"{path} has no description (kubectl explain shows it)"
        assert not {"$ref", "anyOf", "title", "$defs"} & node.keys(), path
        assert node.get("additionalProperties") is not False, path


def test_printer_columns_scale_subresource_and_short_name() -> None:
    version = crdgen.voiceserver_crd()["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Ready",
        "SFUs",
        "Participants",
        "Endpoint",
        "Age",
    ]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.sfu.replicas"
    assert crdgen.voiceserver_crd()["spec"]["names"]["shortNames"] == ["vs"]


def test_cel_rules_are_present() -> None:
    text = crdgen.dump(crdgen.voiceserver_crd())
    for message in (
        "minReplicas must be <= maxReplicas",
        "set exactly one of jwtSecretRef, publicKeyRef or jwksRef",
        "set exactly one of managed: true, urlSecretRef or sentinel",
        "cluster: true describes the Redis of urlSecretRef",
        "serverId is immutable",
    ):
        assert message in text


def samples(kind: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((ROOT / "crds" / "samples").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == kind]
    return docs


def test_samples_are_valid() -> None:
    assert len(samples("VoiceServer")) >= 2
    for doc in samples("VoiceServer"):
        VoiceServerSpec.model_validate(doc["spec"])
    (gateway,) = samples("StunnerGateway")
    StunnerGatewaySpec.model_validate(gateway["spec"])


def test_models_refuse_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        VoiceServerSpec.model_validate({"auth": {}, "redis": {"managed": True}, "sfuu": {}})
