"""The CRDs in crds/ are what the pydantic models say, and the samples are valid against the models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from voxa.operator import crdgen
from voxa.operator.models import StunnerGatewaySpec, VoiceServerSpec

ROOT = Path(__file__).resolve().parents[3]


def test_crd_files_match_the_models() -> None:
    for name, crd in crdgen.all_crds().items():
        assert (ROOT / "crds" / name).read_text() == crdgen.dump(crd), (
            f"crds/{name} is stale: run `make crds`"
        )


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
        "set either managed: true or urlSecretRef, not both",
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
