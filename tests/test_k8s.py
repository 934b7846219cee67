"""deploy/k8s/, checked offline: no cluster, no kubectl.

Core kinds are validated with kubernetes-validate (the Kubernetes OpenAPI schemas it bundles,
strict: unknown fields fail). KEDA's kinds are not in those schemas: they are validated with
jsonschema against `KEDA_SCHEMAS`, the part of KEDA's CRD openAPIV3Schema that these files use
(kedacore/keda `config/crd/bases/keda.sh_scaledobjects.yaml` and
`keda.sh_triggerauthentications.yaml`, keda.sh/v1alpha1), closed with
`additionalProperties: false` so a misspelt field fails here as it would under KEDA's
structural schema (which prunes it). Commands are parsed by the real CLI, as for
docker-compose.yml.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from config import Settings
from tasks.names import QUEUES
from tests.test_compose import parse_coachpipe

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|AUTH|_URL$")
CREDENTIALS_IN_URL = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
PROCESSES = {"listener", "worker", "beat", "api", "flower"}

_TRIGGER = {
    "type": "object",
    "required": ["type", "metadata"],
    "additionalProperties": False,
    "properties": {
        "type": {"enum": ["redis", "rabbitmq"]},
        "name": {"type": "string"},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "authenticationRef": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
        },
    },
}
_OBJECT_HEADER = {
    "apiVersion": {"const": "keda.sh/v1alpha1"},
    "kind": {"type": "string"},
    "metadata": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "labels": {"type": "object"}},
    },
}
KEDA_SCHEMAS: dict[str, dict[str, Any]] = {
    "ScaledObject": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            **_OBJECT_HEADER,
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "name": {"type": "string"},
                            "envSourceContainerName": {"type": "string"},
                        },
                    },
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "idleReplicaCount": {"type": "integer", "minimum": 0},
                    "triggers": {"type": "array", "minItems": 1, "items": _TRIGGER},
                },
            },
        },
    },
    "TriggerAuthentication": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            **_OBJECT_HEADER,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["parameter", "name", "key"],
                            "additionalProperties": False,
                            "properties": {
                                "parameter": {"type": "string"},
                                "name": {"type": "string"},
                                "key": {"type": "string"},
                            },
                        },
                    }
                },
            },
        },
    },
}
# Per trigger type: the metadata keys KEDA's scaler reads (KEDA docs, "Redis Lists" and
# "RabbitMQ Queue" scalers) and the authentication parameters it accepts.
TRIGGER_METADATA = {
    "redis": {"listName", "listLength", "activationListLength", "databaseIndex", "enableTLS"},
    "rabbitmq": {"protocol", "queueName", "mode", "value", "activationValue", "vhostName"},
}
TRIGGER_AUTH_PARAMETERS = {
    "redis": {"address", "host", "port", "username", "password"},
    "rabbitmq": {"host", "username", "password"},
}


def documents() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, document)
        for path in sorted(K8S.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] == kind}


def containers() -> dict[str, dict[str, Any]]:
    """Container name (one per process: listener, worker, …) → the container."""
    found = {}
    for deployment in by_kind("Deployment").values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            found[container["name"]] = container
    return found


@pytest.mark.parametrize(
    ("path", "document"),
    documents(),
    ids=[f"{path.name}:{doc['kind']}/{doc['metadata']['name']}" for path, doc in documents()],
)
def test_every_manifest_is_valid(path: Path, document: dict[str, Any]) -> None:
    if document["apiVersion"].startswith("keda.sh/"):
        jsonschema.validate(document, KEDA_SCHEMAS[document["kind"]])
    else:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_validators_catch_a_misspelt_field() -> None:
    deployment = dict(by_kind("Deployment")["coachpipe-worker"])
    deployment["spec"] = {**deployment["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    scaled = dict(next(iter(by_kind("ScaledObject").values())))
    scaled["spec"] = {**scaled["spec"], "maxReplicas": 3}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, KEDA_SCHEMAS["ScaledObject"])


def test_every_process_runs_with_real_cli_commands() -> None:
    found = containers()
    assert set(found) == PROCESSES
    for container in found.values():
        assert container["command"][0] == "coachpipe"
        parse_coachpipe(container["command"][1:])


def test_secrets_come_from_a_secret_never_from_the_files() -> None:
    assert not by_kind("Secret"), "a Secret written in the repository"
    for container in containers().values():
        refs = container["envFrom"]
        assert {"secretRef": {"name": "coachpipe-secrets"}} in refs
        assert not container.get("env"), "settings go through the ConfigMap or the Secret"
    for path in K8S.glob("*.yaml"):
        assert not CREDENTIALS_IN_URL.search(path.read_text()), path.name
    config = by_kind("ConfigMap")["coachpipe-config"]["data"]
    assert not [name for name in config if SECRET_NAME.search(name)]
    settings = {name.upper() for name in Settings.model_fields}
    assert set(config) <= settings


def test_one_listener_streams_one_stands_by() -> None:
    deployments = by_kind("Deployment")
    assert deployments["coachpipe-listener"]["spec"]["replicas"] == 2
    assert deployments["coachpipe-beat"]["spec"]["replicas"] == 2
    assert deployments["coachpipe-api"]["spec"]["replicas"] >= 2


def test_every_long_running_process_but_beat_has_a_probe_on_its_own_health() -> None:
    found = containers()
    assert found["api"]["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert found["api"]["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert found["listener"]["livenessProbe"]["httpGet"]["port"] == "metrics"
    ping = " ".join(found["worker"]["livenessProbe"]["exec"]["command"])
    assert "inspect ping" in ping and "celery@$HOSTNAME" in ping
    assert "tcpSocket" in found["flower"]["livenessProbe"]


def test_services_select_their_deployments() -> None:
    deployments = by_kind("Deployment")
    for service in by_kind("Service").values():
        target = deployments[service["metadata"]["name"]]
        assert target["spec"]["template"]["metadata"]["labels"].items() >= (
            service["spec"]["selector"].items()
        )


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_workers_scale_on_the_depth_of_every_queue(broker: str) -> None:
    path = K8S / f"worker-scaling-{broker}.yaml"
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text())}
    scaled, auth = docs["ScaledObject"], docs["TriggerAuthentication"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "coachpipe-worker"
    assert "coachpipe-worker" in by_kind("Deployment")
    triggers = scaled["spec"]["triggers"]
    queue_key = "listName" if broker == "redis" else "queueName"
    assert sorted(t["metadata"][queue_key] for t in triggers) == sorted(QUEUES)
    for trigger in triggers:
        assert trigger["type"] == broker
        assert set(trigger["metadata"]) <= TRIGGER_METADATA[broker]
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    parameters = {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]}
    assert parameters <= TRIGGER_AUTH_PARAMETERS[broker]
