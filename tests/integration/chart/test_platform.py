"""What a platform team checks before accepting the chart: every render parses under a loader that
refuses duplicate keys and is valid against the Kubernetes schemas, for each kind of release; the
native sidecar; the authz gateway's availability, sizing and scraping; the ServiceAccount; the
daemon's startup probe; extra volumes and containers; a NetworkPolicy that admits no more than it must."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.chart.test_render import (
    STRIPE,
    _merge_values,
    app_chart,
    app_deployment,
    validate_objects,
)
from tests.integration.chart.tools import DuplicateKeyError, by_kind, documents, load_all_strict, one, render

GATEWAY = {"authzGateway": {"enabled": True}}
POSTGRES = {"mirror": {"postgres": {"enabled": True, "existingSecret": "platform-db"}}}
OBSERVABILITY = {
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
    "grafanaDashboard": {"enabled": True},
    "authzGateway": {"enabled": True, "podMonitor": {"enabled": True}},
    "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"team": "observability"}}}]},
}
EXTRAS: dict[str, list[dict[str, Any]]] = {
    "volumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
    "mounts": [{"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True}],
    "containers": [{"name": "log-shipper", "image": "fluent/fluent-bit:3.1", "args": ["-c", "/etc/fb.conf"]}],
}


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    return found


def pod_spec(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    spec: dict[str, Any] = named(docs, "Deployment", name)["spec"]["template"]["spec"]
    return spec


# -- strict parsing and schema validation --------------------------------------------------


def test_the_strict_loader_refuses_a_duplicate_key() -> None:
    text = "containers:\n  - name: a\n    ports: [1]\n    ports: [2]\n"
    assert yaml.safe_load(text)["containers"][0]["ports"] == [2]  # what PyYAML alone does: last wins
    with pytest.raises(DuplicateKeyError, match="duplicate key 'ports'"):
        load_all_strict(text)
    assert load_all_strict("a: 1\n---\nb: {c: 2}\n") == [{"a": 1}, {"b": {"c": 2}}]


@pytest.mark.parametrize(
    "values",
    [{}, POSTGRES, GATEWAY, OBSERVABILITY, _merge_values(POSTGRES, OBSERVABILITY)],
    ids=["default", "postgres", "gateway", "observability", "postgres+observability"],
)
def test_each_kind_of_release_renders_clean(values: dict[str, Any]) -> None:
    docs = documents(render(_merge_values(STRIPE, values)))  # strict: a duplicate key fails here
    validate_objects(docs)


@pytest.mark.parametrize("engine", ["embedded", "opa"])
def test_the_app_example_renders_clean_with_a_native_sidecar(tmp_path: Path, engine: str) -> None:
    values = {**STRIPE, "engine": engine, "daemon": {"enabled": True}, "sidecar": {"native": True}}
    docs = documents(render({"tiergate": values}, chart=app_chart(tmp_path)))
    validate_objects(docs)
    spec = app_deployment(docs)["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["app"]
    names = [c["name"] for c in spec["initContainers"]]
    assert names == (["opa", "tiergate"] if engine == "opa" else ["tiergate"])  # OPA up first
    sidecar = spec["initContainers"][-1]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/readyz", "port": 9194}
    assert sidecar["startupProbe"]["failureThreshold"] == 300


def test_without_native_the_sidecar_stays_beside_the_app(tmp_path: Path) -> None:
    docs = documents(render({"tiergate": {**STRIPE, "daemon": {"enabled": True}}}, chart=app_chart(tmp_path)))
    spec = app_deployment(docs)["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["app", "tiergate"]
    assert "restartPolicy" not in spec["containers"][1] and "startupProbe" not in spec["containers"][1]


def test_opa_as_a_plain_container_goes_to_containers(tmp_path: Path) -> None:
    values = {**STRIPE, "engine": "opa", "daemon": {"enabled": True}, "opa": {"nativeSidecar": False}}
    docs = documents(render({"tiergate": values}, chart=app_chart(tmp_path)))
    validate_objects(docs)
    spec = app_deployment(docs)["spec"]["template"]["spec"]
    assert "initContainers" not in spec  # a plain OPA container as an init container would never end
    assert [c["name"] for c in spec["containers"]] == ["app", "tiergate", "opa"]


# -- the authz gateway ----------------------------------------------------------------------

GATEWAY_NAME = "rel-tiergate-authz"


def test_the_gateway_has_one_ports_list_with_both_listeners() -> None:
    docs = documents(render(_merge_values(STRIPE, GATEWAY)))
    (container,) = pod_spec(docs, GATEWAY_NAME)["containers"]
    assert container["ports"] == [
        {"containerPort": 9194, "name": "tg-diagnostics"},
        {"containerPort": 9192, "name": "authz", "protocol": "TCP"},
    ]


def test_the_gateway_survives_drains_and_spreads_over_nodes() -> None:
    docs = documents(render(_merge_values(STRIPE, GATEWAY)))
    deployment = named(docs, "Deployment", GATEWAY_NAME)
    selector = deployment["spec"]["selector"]["matchLabels"]
    pdb = named(docs, "PodDisruptionBudget", GATEWAY_NAME)
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}
    spec = deployment["spec"]["template"]["spec"]
    [term] = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"] == {
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": selector},
    }
    spread = spec["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    assert all(c["labelSelector"] == {"matchLabels": selector} for c in spread)
    # a user's own affinity replaces the default; a constraint with its own selector keeps it
    mine = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["edge"]}]}
                ]
            }
        }
    }
    own = {
        "maxSkew": 2,
        "topologyKey": "zone",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"x": "y"}},
    }
    values = {"authzGateway": {"affinity": mine, "topologySpreadConstraints": [own],
                               "podDisruptionBudget": {"maxUnavailable": 2}}}  # fmt: skip
    docs = documents(render(_merge_values(STRIPE, _merge_values(GATEWAY, values))))
    validate_objects(docs)
    spec = pod_spec(docs, GATEWAY_NAME)
    assert spec["affinity"] == mine and spec["topologySpreadConstraints"] == [own]
    assert named(docs, "PodDisruptionBudget", GATEWAY_NAME)["spec"]["maxUnavailable"] == 2
    off = {"authzGateway": {"podDisruptionBudget": {"enabled": False}, "topologySpreadConstraints": []}}
    docs = documents(render(_merge_values(STRIPE, _merge_values(GATEWAY, off))))
    assert not by_kind(docs, "PodDisruptionBudget") or all(
        d["metadata"]["name"] != GATEWAY_NAME for d in by_kind(docs, "PodDisruptionBudget")
    )
    assert "topologySpreadConstraints" not in pod_spec(docs, GATEWAY_NAME)


def test_the_gateway_has_its_own_resources_and_security_context() -> None:
    values = {
        "sidecar": {"resources": {"requests": {"cpu": "10m"}}},  # for app pods: not the gateway's
        "authzGateway": {
            "resources": {"requests": {"cpu": "250m", "memory": "200Mi"}, "limits": {"memory": "1Gi"}}
        },
    }
    docs = documents(render(_merge_values(STRIPE, _merge_values(GATEWAY, values))))
    spec = pod_spec(docs, GATEWAY_NAME)
    (container,) = spec["containers"]
    assert container["resources"]["requests"] == {"cpu": "250m", "memory": "200Mi"}
    assert container["resources"]["limits"] == {"memory": "1Gi"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_the_gateway_pod_monitor_scrapes_the_diagnostics_port_the_policy_opens() -> None:
    values = _merge_values(
        GATEWAY, {"authzGateway": {"podMonitor": {"enabled": True, "labels": {"release": "p"}}}}
    )
    docs = documents(render(_merge_values(STRIPE, values)))
    monitor = named(docs, "PodMonitor", GATEWAY_NAME)
    deployment = named(docs, "Deployment", GATEWAY_NAME)
    assert monitor["metadata"]["labels"]["release"] == "p"
    assert monitor["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert endpoint["port"] in {p["name"] for p in container["ports"]} and endpoint["path"] == "/metrics"
    policy = named(docs, "NetworkPolicy", GATEWAY_NAME)
    ingress_rule, metrics_rule = policy["spec"]["ingress"]
    assert ingress_rule["ports"] == [{"port": "authz", "protocol": "TCP"}]
    assert metrics_rule["ports"] == [{"port": "tg-diagnostics", "protocol": "TCP"}]
    assert metrics_rule["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {},
        }
    ]
    # without a PodMonitor (and no metricsFrom) nobody but the ingress controller gets in
    docs = documents(render(_merge_values(STRIPE, GATEWAY)))
    assert len(named(docs, "NetworkPolicy", GATEWAY_NAME)["spec"]["ingress"]) == 1
    assert not by_kind(docs, "PodMonitor")


# -- ServiceAccount, startup probe, extras --------------------------------------------------


def test_the_daemon_and_gateway_run_as_the_releases_service_account() -> None:
    values = _merge_values(GATEWAY, {"serviceAccount": {"annotations": {"iam.example.com/role": "tiergate"}}})
    docs = documents(render(_merge_values(STRIPE, values)))
    account = one(docs, "ServiceAccount")
    assert account["metadata"]["name"] == "rel-tiergate"
    assert account["metadata"]["annotations"] == {"iam.example.com/role": "tiergate"}
    assert account["automountServiceAccountToken"] is False
    for deployment in ("rel-tiergate", GATEWAY_NAME):
        spec = pod_spec(docs, deployment)
        assert spec["serviceAccountName"] == "rel-tiergate" and spec["automountServiceAccountToken"] is False
    existing = _merge_values(GATEWAY, {"serviceAccount": {"create": False, "name": "platform-sa"}})
    docs = documents(render(_merge_values(STRIPE, existing)))
    assert not by_kind(docs, "ServiceAccount")
    assert {pod_spec(docs, d)["serviceAccountName"] for d in ("rel-tiergate", GATEWAY_NAME)} == {
        "platform-sa"
    }


def test_the_daemon_has_a_startup_probe_that_holds_off_liveness() -> None:
    docs = documents(render(STRIPE))
    [container] = pod_spec(docs, "rel-tiergate")["containers"]
    probe = container["startupProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "http"}
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 300  # a slow first migration survives
    values = {"daemon": {"startupProbe": {"periodSeconds": 5, "failureThreshold": 12, "timeoutSeconds": 2}}}
    [container] = pod_spec(documents(render(_merge_values(STRIPE, values))), "rel-tiergate")["containers"]
    assert container["startupProbe"] == {
        "httpGet": {"path": "/healthz", "port": "http"},
        "periodSeconds": 5,
        "failureThreshold": 12,
        "timeoutSeconds": 2,
    }


@pytest.mark.parametrize(("role", "deployment"), [("daemon", "rel-tiergate"), ("authzGateway", GATEWAY_NAME)])
def test_extra_volumes_mounts_and_containers(role: str, deployment: str) -> None:
    extras = {"extraVolumes": EXTRAS["volumes"], "extraVolumeMounts": EXTRAS["mounts"],
              "extraContainers": EXTRAS["containers"]}  # fmt: skip
    docs = documents(render(_merge_values(STRIPE, _merge_values(GATEWAY, {role: extras}))))
    validate_objects(docs)
    spec = pod_spec(docs, deployment)
    assert spec["volumes"][-1] == EXTRAS["volumes"][0]
    main, shipper = spec["containers"]
    assert main["volumeMounts"][-1] == EXTRAS["mounts"][0]
    assert shipper == EXTRAS["containers"][0]


def test_sidecar_extra_volume_mounts(tmp_path: Path) -> None:
    values = {**STRIPE, "daemon": {"enabled": True}, "sidecar": {"extraVolumeMounts": EXTRAS["mounts"]}}
    docs = documents(render({"tiergate": values}, chart=app_chart(tmp_path)))
    sidecar = app_deployment(docs)["spec"]["template"]["spec"]["containers"][1]
    assert sidecar["volumeMounts"][-1] == EXTRAS["mounts"][0]


# -- the daemon's NetworkPolicy -------------------------------------------------------------


def daemon_peers(values: dict[str, Any]) -> list[dict[str, Any]]:
    policy = named(documents(render(_merge_values(STRIPE, values))), "NetworkPolicy", "rel-tiergate")
    [rule] = policy["spec"]["ingress"]
    peers: list[dict[str, Any]] = rule["from"]
    return peers


def test_the_feed_admits_sidecars_of_the_releases_namespace_only_by_default() -> None:
    _, sidecars = daemon_peers({})
    assert sidecars == {
        "podSelector": {"matchLabels": {"tiergate.io/sidecar": "true"}}
    }  # no namespaceSelector
    chosen = {"matchLabels": {"tiergate.io/feed": "true"}}
    _, sidecars = daemon_peers({"networkPolicy": {"sidecarNamespaceSelector": chosen}})
    assert sidecars["namespaceSelector"] == chosen
    _, sidecars = daemon_peers({"networkPolicy": {"sidecarNamespaceSelector": {}}})  # said outright: all
    assert sidecars["namespaceSelector"] == {}


def test_metrics_scrapers_are_admitted_only_when_asked() -> None:
    assert len(daemon_peers({})) == 2  # the ingress controller and the sidecars
    monitoring = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {},
    }
    assert daemon_peers({"serviceMonitor": {"enabled": True}})[2:] == [monitoring]
    scraper = {
        "namespaceSelector": {"matchLabels": {"team": "obs"}},
        "podSelector": {"matchLabels": {"app": "vm"}},
    }
    assert daemon_peers({"networkPolicy": {"metricsFrom": [scraper]}})[2:] == [scraper]
