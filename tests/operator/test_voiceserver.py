"""The VoiceServer resource on a real control plane, reconciled by a real `voxa operator` process."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import RedisServer
from e2e.cluster.fixtures import KubeCluster, KubectlError
from tests.operator.conftest import (
    OperatorProcess,
    condition,
    get,
    secret,
    voiceserver,
    voiceserver_when,
)
from voxa.common.testing.wait import consistently, eventually
from voxa.signaling.store.base import MediaLoad, MediaServer
from voxa.signaling.store.redis import RedisStore

pytestmark = pytest.mark.timeout(300)

CHILDREN = [
    ("configmap", "{n}-signaling"),
    ("secret", "{n}-sfu-control"),
    ("service", "{n}-signaling"),
    ("service", "{n}-sfu"),
    ("deployment", "{n}-signaling"),
    ("deployment", "{n}-sfu"),
    ("poddisruptionbudget", "{n}-signaling"),
    ("poddisruptionbudget", "{n}-sfu"),
    ("networkpolicy", "{n}-sfu"),
]


WEB_PUSH = {
    "vapidPrivateKeyRef": {"name": "push-keys", "key": "vapid.pem"},
    "subject": "mailto:ops@example.com",
}
APNS = {
    "keyRef": {"name": "push-keys", "key": "apns.p8"},
    "keyId": "ABC123DEFG",
    "teamId": "TEAM456789",
    "topic": "com.example.voice",
}


def p256_pem() -> str:
    """A fresh EC P-256 private key, PKCS#8 PEM: what VAPID and APNs keys are."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def rejected(cluster: KubeCluster, namespace: str, obj: dict[str, Any]) -> str:
    with pytest.raises(KubectlError) as info:
        cluster.apply(obj, namespace=namespace)
    return str(info.value.stderr)


def test_invalid_specs_are_refused_by_the_api_server_with_readable_messages(
    crds_installed: KubeCluster, namespace: str
) -> None:
    cluster = crds_installed
    cases = [
        (voiceserver("a", sfu={"minReplicas": 5, "maxReplicas": 2}), "minReplicas must be <= maxReplicas"),
        (
            voiceserver("b", sfu={"targetParticipantsPerPod": 600, "capacityPerPod": 500}),
            "targetParticipantsPerPod must be <= capacityPerPod",
        ),
        (
            voiceserver("c", redis={"managed": True, "urlSecretRef": {"name": "r", "key": "u"}}),
            "set exactly one of managed: true, urlSecretRef or sentinel",
        ),
        (
            voiceserver("c2", redis={"sentinel": {"hosts": ["s:26379"], "masterName": "m"}, "cluster": True}),
            "cluster: true describes the Redis of urlSecretRef",
        ),
        (voiceserver("d", auth={}), "set exactly one of jwtSecretRef, publicKeyRef or jwksRef"),
        (voiceserver("e", signaling={"service": {"type": "ExternalName"}}), 'supported values: "ClusterIP"'),
        (voiceserver("f", sfu={"udpPortRange": {"min": 50000, "max": 40000}}), "min must be <= max"),
        (voiceserver("g", sfu={"maxReplicas": 0}), "spec.sfu.maxReplicas"),
        (voiceserver("h", sfuu={}), 'unknown field "sfuu"'),
        (
            voiceserver("i", signaling={"service": {"nodePort": 30080}}),
            "nodePort needs type NodePort or LoadBalancer",
        ),
        (voiceserver("j", calls={"push": {}}), "push needs at least one of webPush, fcm or apns"),
        (
            voiceserver("k", calls={"push": {"apns": {**APNS, "topic": "com.example.voice.voip"}}}),
            "topic is the app's bundle id, without .voip (VoIP pushes add it)",
        ),
        (
            voiceserver("l", calls={"push": {"apns": {**APNS, "environment": "staging"}}}),
            'supported values: "production", "sandbox"',
        ),
        (
            voiceserver("m", calls={"push": {"webPush": {**WEB_PUSH, "subject": "ops@example.com"}}}),
            "spec.calls.push.webPush.subject",
        ),
        (voiceserver("n", calls={"ringTimeoutSeconds": 0}), "spec.calls.ringTimeoutSeconds"),
        (voiceserver("o", calls={"maxInvitees": 257}), "spec.calls.maxInvitees"),
        (
            voiceserver("p", calls={"push": {"fcm": {}}}),
            'missing required field "serviceAccountRef"',
        ),
    ]
    for obj, message in cases:
        assert message in rejected(cluster, namespace, obj), obj
    # Nothing was stored.
    assert get(cluster, namespace, "voiceservers")["items"] == []
    # Immutable serverId (a transition rule).
    cluster.apply(voiceserver("imm", serverId="one"), namespace=namespace)
    assert "serverId is immutable" in rejected(cluster, namespace, voiceserver("imm", serverId="two"))


def test_kubectl_explain_shows_field_descriptions(crds_installed: KubeCluster) -> None:
    out = crds_installed.kubectl("explain", "voiceserver.spec.sfu.buffer").stdout
    assert "Idle SFU pods kept ready above the load" in out


def wait_ready(cluster: KubeCluster, namespace: str, name: str, timeout: float = 90) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        body = get(cluster, namespace, "voiceserver", name)
        cond = condition(body, "Ready") if body else None
        if cond and cond["status"] == "True" and cond["observedGeneration"] == body["metadata"]["generation"]:
            return dict(body)
        return None

    return eventually(ready, timeout, f"VoiceServer {name} Ready")


def test_voiceserver_lifecycle(operator: OperatorProcess, namespace: str, redis_server: RedisServer) -> None:
    cluster = operator.cluster
    cluster.apply(
        secret("jwt", secret="s" * 32),
        secret("redis", url=redis_server.url),
        voiceserver("lobby", signaling={"replicas": 2}, sfu={"minReplicas": 2, "maxReplicas": 4}),
        namespace=namespace,
    )
    wait_ready(cluster, namespace, "lobby")
    # Ready means one pod of each is; every pod ready (and nothing rolling) comes a moment later.
    body = voiceserver_when(
        cluster,
        namespace,
        "lobby",
        lambda b: (
            (condition(b, "Progressing") or {}).get("status") == "False"
            and b["status"]["sfus"] == "2/2"
            and b["status"]["signaling"]["readyReplicas"] == 2
        ),
        "every pod ready",
    )
    uid = body["metadata"]["uid"]
    status = body["status"]
    assert status["endpoint"] == f"ws://lobby-signaling.{namespace}.svc/socket"
    assert status["sfu"]["readyReplicas"] == 2 and status["sfus"] == "2/2"
    assert status["signaling"]["readyReplicas"] == 2
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True",
        "Progressing": "False",
        "Degraded": "False",
    }

    # Every child exists, is owned by the VoiceServer and labelled.
    for kind, pattern in CHILDREN:
        child = get(cluster, namespace, kind, pattern.format(n="lobby"))
        assert child is not None, (kind, pattern)
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("VoiceServer", uid, True)
        assert child["metadata"]["labels"]["voxa.dev/voiceserver"] == "lobby"
    sfu_pods = get(cluster, namespace, "pods", "-l", "app.kubernetes.io/component=sfu")["items"]
    assert len(sfu_pods) == 2 and all(p["status"]["phase"] == "Running" for p in sfu_pods)

    # kubectl get shows the printer columns.
    table = cluster.kubectl("get", "voiceservers", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "SFUS", "PARTICIPANTS", "ENDPOINT", "AGE"]
    assert table[1].split()[:5] == [
        "lobby",
        "True",
        "2/2",
        "0",
        f"ws://lobby-signaling.{namespace}.svc/socket",
    ]
    assert cluster.kubectl("get", "vs", "-n", namespace, "-o", "name").stdout.strip() == (
        "voiceserver.voxa.dev/lobby"
    )

    # Decisions are events.
    events = get(cluster, namespace, "events", "--field-selector", "involvedObject.name=lobby")["items"]
    reasons = {e["reason"] for e in events}
    assert {"Applied", "SecretCreated", "ReadyTrue"} <= reasons, reasons

    # A spec change updates the children.
    cluster.kubectl(
        "patch", "voiceserver", "lobby", "-n", namespace, "--type=merge",
        "-p", '{"spec": {"signaling": {"replicas": 3}, "limits": {"maxParticipantsPerChannel": 25}}}',
    )  # fmt: skip
    eventually(
        lambda: get(cluster, namespace, "deployment", "lobby-signaling")["status"].get("readyReplicas") == 3,
        60,
        "3 signaling pods",
    )
    config = get(cluster, namespace, "configmap", "lobby-signaling")
    assert config["data"]["VOXA_MAX_CHANNEL_MEMBERS"] == "25"
    wait_ready(cluster, namespace, "lobby")

    # Redis holds this server's state; deletion removes it, the children and the finalizer.
    async def seed() -> None:
        store = RedisStore(redis_server.url, "test", 10)
        await store.member_set("lobby", "alice", {"server_muted": True})
        await store.media_server_upsert(
            MediaServer(id="x", server_id="lobby", url="http://x", load=MediaLoad()), ttl_s=300
        )
        await store.close()

    async def keys() -> list[str]:
        store = RedisStore(redis_server.url, "test", 10)
        found = [k async for k in store._redis.scan_iter(match="voxa:*lobby*")]
        await store.close()
        return found

    asyncio.run(seed())
    assert asyncio.run(keys())
    cluster.kubectl("delete", "voiceserver", "lobby", "-n", namespace, "--wait=true", "--timeout=60s")
    assert get(cluster, namespace, "voiceserver", "lobby") is None
    assert asyncio.run(keys()) == []

    def children_gone() -> bool:
        return all(get(cluster, namespace, k, p.format(n="lobby")) is None for k, p in CHILDREN)

    eventually(children_gone, 60, "children garbage-collected")
    eventually(lambda: not get(cluster, namespace, "pods")["items"], 60, "pods gone")


def test_managed_redis_ingress_and_removal_of_what_is_no_longer_asked_for(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = operator.cluster
    cluster.apply(
        secret("jwt", secret="s" * 32),
        voiceserver(
            "club",
            redis={"managed": True},
            signaling={"replicas": 1, "ingress": {"host": "voice.example.com", "tlsSecretName": "tls"}},
        ),
        namespace=namespace,
    )
    body = wait_ready(cluster, namespace, "club")
    assert body["status"]["endpoint"] == "wss://voice.example.com/socket"
    sts = get(cluster, namespace, "statefulset", "club-redis")
    assert sts["status"].get("readyReplicas") == 1
    assert get(cluster, namespace, "networkpolicy", "club-redis") is not None
    assert (
        get(cluster, namespace, "ingress", "club-signaling")["spec"]["rules"][0]["host"]
        == "voice.example.com"
    )
    config = get(cluster, namespace, "configmap", "club-signaling")
    assert config["data"]["VOXA_REDIS_URL"] == f"redis://club-redis.{namespace}.svc:6379/0"
    # The operator, outside the cluster, cannot reach the managed Redis: said so, not hidden.
    body = voiceserver_when(
        cluster,
        namespace,
        "club",
        lambda b: (condition(b, "Degraded") or {}).get("reason") == "RegistryUnavailable",
        "Degraded: RegistryUnavailable",
    )
    assert (condition(body, "Ready") or {}).get("status") == "True"

    cluster.kubectl(
        "patch", "voiceserver", "club", "-n", namespace, "--type=json",
        "-p", '[{"op": "remove", "path": "/spec/signaling/ingress"}]',
    )  # fmt: skip
    eventually(lambda: get(cluster, namespace, "ingress", "club-signaling") is None, 30, "ingress removed")
    body = voiceserver_when(
        cluster,
        namespace,
        "club",
        lambda b: b["status"]["endpoint"].startswith("ws://"),
        "endpoint via Service",
    )
    assert body["status"]["endpoint"] == f"ws://club-signaling.{namespace}.svc/socket"


OPERATOR_MANAGERS = frozenset({"voxa-operator", "kopf"})
"""The field managers of the operator's writes: its own client, and kopf's (finalizers, progress)."""


def test_operator_restart_makes_no_writes(
    operator: OperatorProcess, namespace: str, redis_server: RedisServer
) -> None:
    """A restarted operator finds everything as it left it and writes nothing: no child is re-applied,
    no finalizer or annotation re-set, no status rewritten. Writes by others in the same seconds (kwok
    and kube-controller-manager keep pod and workload status) are told apart by their field manager;
    only when one of them changed something may the operator's status follow."""
    cluster = operator.cluster
    cluster.apply(
        secret("jwt", secret="s" * 32),
        secret("redis", url=redis_server.url),
        # Push keys are read back from their Secret on every reconcile: the same Secret, no write.
        secret("push-keys", **{"vapid.pem": p256_pem()}),
        voiceserver("calm", signaling={"replicas": 1}, calls={"push": {"webPush": WEB_PUSH}}),
        namespace=namespace,
    )
    wait_ready(cluster, namespace, "calm")

    def snapshot() -> dict[str, dict[str, Any]]:
        kinds = (
            "voiceservers,configmaps,secrets,services,deployments,replicasets,pods,"
            "poddisruptionbudgets,networkpolicies"
        )
        items = get(cluster, namespace, kinds, "--show-managed-fields")["items"]
        return {f"{item['kind']}/{item['metadata']['name']}": item for item in items}

    def versions(objects: dict[str, dict[str, Any]]) -> dict[str, str]:
        return {key: obj["metadata"]["resourceVersion"] for key, obj in objects.items()}

    def settled() -> dict[str, dict[str, Any]] | None:
        first = snapshot()
        time.sleep(3)  # three resync periods with nothing changing
        return first if versions(snapshot()) == versions(first) else None

    before = eventually(settled, 60, "a quiet cluster")
    operator.stop()
    operator.start()
    consistently(operator.alive, 6, "the restarted operator")  # six resync periods of the new process
    after = snapshot()
    changed = [k for k, obj in after.items() if versions(before).get(k) != obj["metadata"]["resourceVersion"]]
    writes = {key: writes_of(before.get(key), after[key]) for key in changed}
    by_others = sorted(key for key, who in writes.items() if any(m not in OPERATOR_MANAGERS for m, _ in who))
    allowed = {("voxa-operator", "status")} if by_others else set()
    by_operator = {
        key: changes(before.get(key), after[key])
        for key, who in writes.items()
        if {(m, sub) for m, sub in who if m in OPERATOR_MANAGERS} - allowed
    }
    assert by_operator == {}, f"others wrote {by_others}"


def _entries(obj: dict[str, Any] | None) -> dict[tuple[str, str], Any]:
    fields = (obj or {}).get("metadata", {}).get("managedFields", [])
    return {(m["manager"], m.get("subresource", "")): m for m in fields}


def writes_of(old: dict[str, Any] | None, new: dict[str, Any]) -> set[tuple[str, str]]:
    """(field manager, subresource) of every write between two versions of an object: the managed
    fields entries that are new or differ (a write updates its manager's entry)."""
    a, b = _entries(old), _entries(new)
    return {key for key, entry in b.items() if a.get(key) != entry}


def changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What differs between two versions of an object, as `path: old -> new` lines, so a failure
    names the fields instead of only a new resourceVersion."""
    if old is None:
        return ["created"]
    lines: list[str] = []

    def walk(path: str, a: Any, b: Any) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if k not in ("resourceVersion", "managedFields"):
                    walk(f"{path}.{k}", a.get(k), b.get(k))
        elif a != b:
            lines.append(f"{path}: {a!r} -> {b!r}"[:300])

    walk("", old, new)
    return lines


def test_push_keys_are_mounted_from_their_secret_and_its_changes_roll_signaling(
    operator: OperatorProcess, namespace: str, redis_server: RedisServer
) -> None:
    """spec.calls.push: while the referenced Secret is missing, or holds a key signaling could not use,
    signaling is held back and the VoiceServer says why; once the keys are right they are mounted as
    files, and a change of the Secret rolls signaling."""
    cluster = operator.cluster
    cluster.apply(
        secret("jwt", secret="s" * 32),
        secret("redis", url=redis_server.url),
        voiceserver(
            "ring",
            signaling={"replicas": 1},
            calls={"ringTimeoutSeconds": 20, "push": {"webPush": WEB_PUSH, "apns": APNS}},
        ),
        namespace=namespace,
    )
    body = voiceserver_when(
        cluster,
        namespace,
        "ring",
        lambda b: (condition(b, "Degraded") or {}).get("reason") == "SecretUnavailable",
        "Degraded: SecretUnavailable",
    )
    assert (condition(body, "Degraded") or {})["message"] == (
        "Secret push-keys (spec.calls.push.webPush.vapidPrivateKeyRef, spec.calls.push.apns.keyRef) "
        "not found; signaling is left as it is until that is fixed"
    )
    # Everything else is in place; signaling, which could not start without its keys, is not.
    assert get(cluster, namespace, "deployment", "ring-sfu") is not None
    assert get(cluster, namespace, "deployment", "ring-signaling") is None
    assert get(cluster, namespace, "configmap", "ring-signaling") is None

    # A key signaling could not use (a public key where the private one belongs) is named too.
    vapid_pem, apns_pem = p256_pem(), p256_pem()
    public = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"
    cluster.apply(secret("push-keys", **{"vapid.pem": public, "apns.p8": apns_pem}), namespace=namespace)
    body = voiceserver_when(
        cluster,
        namespace,
        "ring",
        lambda b: (
            "is not an unencrypted PEM private key" in (condition(b, "Degraded") or {}).get("message", "")
        ),
        "Degraded: the VAPID key is unusable",
    )
    assert (condition(body, "Degraded") or {})["message"] == (
        "Secret push-keys key 'vapid.pem' (spec.calls.push.webPush.vapidPrivateKeyRef) is not an "
        "unencrypted PEM private key; signaling is left as it is until that is fixed"
    )
    assert get(cluster, namespace, "deployment", "ring-signaling") is None

    cluster.apply(secret("push-keys", **{"vapid.pem": vapid_pem, "apns.p8": apns_pem}), namespace=namespace)
    wait_ready(cluster, namespace, "ring")
    voiceserver_when(
        cluster,
        namespace,
        "ring",
        lambda b: (condition(b, "Degraded") or {}).get("status") == "False",
        "Degraded: False",
    )
    config = get(cluster, namespace, "configmap", "ring-signaling")["data"]
    assert config["VOXA_CALL_RING_TIMEOUT_S"] == "20"
    assert config["VOXA_PUSH_VAPID_PRIVATE_KEY_FILE"] == "/etc/voxa/push/vapid-private-key.pem"
    assert config["VOXA_PUSH_VAPID_SUBJECT"] == "mailto:ops@example.com"
    assert config["VOXA_PUSH_APNS_KEY_FILE"] == "/etc/voxa/push/apns-key.p8"
    assert config["VOXA_PUSH_APNS_URL"] == "https://api.push.apple.com"
    deployment = get(cluster, namespace, "deployment", "ring-signaling")
    pod = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "push-keys"]
    assert volume["projected"]["defaultMode"] == 0o400
    assert volume["projected"]["sources"] == [
        {
            "secret": {
                "name": "push-keys",
                "items": [
                    {"key": "vapid.pem", "path": "vapid-private-key.pem"},
                    {"key": "apns.p8", "path": "apns-key.p8"},
                ],
            }
        }
    ]
    mounts = pod["containers"][0]["volumeMounts"]
    assert {"name": "push-keys", "mountPath": "/etc/voxa/push", "readOnly": True} in mounts
    assert "PRIVATE KEY" not in json.dumps(deployment)

    # A rotated key rolls signaling (the operator rereads the Secret's version on its timer).
    def config_hash() -> str:
        template = get(cluster, namespace, "deployment", "ring-signaling")["spec"]["template"]
        return str(template["metadata"]["annotations"]["voxa.dev/config-hash"])

    before = config_hash()
    cluster.apply(secret("push-keys", **{"vapid.pem": vapid_pem, "apns.p8": p256_pem()}), namespace=namespace)
    eventually(lambda: config_hash() != before, 30, "signaling's pod template changed")
    wait_ready(cluster, namespace, "ring")
