"""The chart's authz gateway: sidecars of their own serving /v1/authz to an ingress controller in
another pod, reachable only from the ingress controller's namespace."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.chart.test_render import STRIPE, validate_objects
from tests.integration.chart.tools import by_kind, documents, env_of, render
from tiergate.sidecar.settings import SidecarSettings

GATEWAY = "rel-tiergate-authz"


def gateway(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    merged = {**STRIPE, "authzGateway": {"enabled": True, "replicas": 2, "port": 9192}} | (values or {})
    return documents(render(merged))


def named(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == GATEWAY]
    assert len(found) == 1, f"expected the gateway's {kind}"
    return found[0]


def test_off_by_default() -> None:
    docs = documents(render(STRIPE))
    assert not [d for d in docs if d["metadata"]["name"] == GATEWAY]


def test_gateway_objects_are_valid_and_serve_the_authz_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = gateway({"sidecar": {"settings": {"authz_request_id_header": "X-Request-Id"}}})
    validate_objects(docs)
    deployment = named(docs, "Deployment")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = env_of(container)
    assert (env["TIERGATE_AUTHZ_HOST"]["value"], env["TIERGATE_AUTHZ_PORT"]["value"]) == ("0.0.0.0", "9192")
    assert env["TIERGATE_SIDECAR_HOST"]["value"] == "127.0.0.1"  # /v1/check, /v1/usage: loopback only
    assert env["TIERGATE_AUTHZ_REQUEST_ID_HEADER"]["value"] == "X-Request-Id"  # sidecar.settings apply
    assert {"name": "authz", "containerPort": 9192, "protocol": "TCP"} in container["ports"]
    assert (
        pod["metadata"]["labels"]["tiergate.io/sidecar"] == "true"
    )  # the daemon's policy admits it to the feed
    for name in list(env):
        monkeypatch.delenv(name, raising=False)
    for name, entry in env.items():
        monkeypatch.setenv(name, entry.get("value", "a-value-from-a-secret-at-least-32-bytes"))
    parsed = SidecarSettings(_env_file=None)
    assert (parsed.authz_host, parsed.authz_port) == ("0.0.0.0", 9192)
    service = named(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "authz", "port": 9192, "targetPort": "authz", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_network_policy_admits_only_the_ingress_controllers_namespace() -> None:
    selector = {"matchLabels": {"kubernetes.io/metadata.name": "traefik"}}
    docs = gateway(
        {
            "networkPolicy": {
                "enabled": True,
                "ingressController": {"namespaceSelector": selector, "podSelector": {}},
            }
        }
    )
    policy = named(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"] == named(docs, "Deployment")["spec"]["selector"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": selector, "podSelector": {}}]
    assert rule["ports"] == [{"port": "authz", "protocol": "TCP"}]
