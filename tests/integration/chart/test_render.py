"""The chart rendered by Helm's own template engine (helm-python-sdk: Helm v4's Go SDK, offline),
every object checked against the Kubernetes schemas (kubernetes-validate, offline), and the
facts that matter: one daemon with a PVC and Recreate, the sidecar template's env and volumes,
the webhook-only Ingress, secrets by reference, the NetworkPolicy admitting the sidecar pods."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.chart.tools import (
    CHART,
    KUBE_VERSION,
    by_kind,
    documents,
    env_of,
    helm,
    need,
    one,
    render,
)
from tiergate.sidecar.settings import SidecarSettings
from tiergate.sync_daemon.settings import DaemonSettings

STRIPE = {"secrets": {"stripeApiKey": "sk_test_x", "stripeWebhookSecret": "whsec_test_0123456789"}}
OPA_INGRESS_EXISTING = {
    "engine": "opa",
    "ingress": {"enabled": True, "className": "nginx", "host": "hooks.example.com"},
    "secrets": {"existingSecret": "billing-secrets"},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
}
DAEMON_URL = "http://rel-tiergate.billing.svc:9190"
RESTRICTED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True}


def validate_objects(docs: list[dict[str, Any]]) -> None:
    """Each object against the Kubernetes JSON schemas (strict: no unknown fields); the
    ServiceMonitor (a CRD kubernetes-validate has no schema for) by its required shape."""
    kv = need("kubernetes_validate")
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            assert doc["kind"] == "ServiceMonitor" and doc["spec"]["selector"]["matchLabels"], name
            assert doc["spec"]["endpoints"], name
            continue
        try:
            kv.validate(doc, KUBE_VERSION, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(
                f"{name} is not a valid Kubernetes {KUBE_VERSION} object: {exc.message} at {list(exc.path)}"
            )


def daemon_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["sync-daemon"]
    container: dict[str, Any] = containers[0]
    return container


# -- the daemon release ---------------------------------------------------------------------


def test_defaults_render_valid_objects_with_one_daemon_on_a_pvc() -> None:
    docs = documents(render(STRIPE))
    validate_objects(docs)
    assert sorted(d["kind"] for d in docs) == sorted(
        [
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "NetworkPolicy",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",  # minAvailable 0: never blocks a drain (ADR 18)
            "Secret",
            "Service",
        ]
    )
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    pvc = one(docs, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["mirror"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    container = daemon_container(docs)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    env = env_of(container)
    assert mounts["/var/lib/tiergate"] == "mirror"
    assert Path(env["TIERGATE_MIRROR_PATH"]["value"]).parent == Path("/var/lib/tiergate")
    assert mounts["/etc/tiergate/plans"] == "plans" and env["TIERGATE_PLANS"]["value"].startswith(
        "/etc/tiergate/plans/"
    )
    assert env["TIERGATE_DAEMON_HOST"]["value"] == "0.0.0.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    security = container["securityContext"]
    assert {k: security[k] for k in RESTRICTED} == RESTRICTED
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    service = one(docs, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_postgres_mirror_runs_several_daemons_without_a_pvc() -> None:
    pg = {"mirror": {"postgres": {"enabled": True, "existingSecret": "platform-db", "urlKey": "url"}}}
    docs = documents(render({**STRIPE, **pg}))
    validate_objects(docs)
    kinds = sorted(d["kind"] for d in docs)
    assert "PersistentVolumeClaim" not in kinds and "PodDisruptionBudget" in kinds
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1
    container = daemon_container(docs)
    ref = env_of(container)["TIERGATE_MIRROR_URL"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("platform-db", "url")
    assert "mirror" not in {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "/var/lib/tiergate" not in {m["mountPath"] for m in container["volumeMounts"]}


def test_postgres_url_in_the_releases_secret_is_required_and_kept_by_reference() -> None:
    lib = helm()
    with pytest.raises(lib.HelmError, match=r"mirror\.postgres\.url"):
        render({**STRIPE, "mirror": {"postgres": {"enabled": True}}})
    url = "postgresql://tiergate:s3cret@db:5432/app"
    docs = documents(render({**STRIPE, "mirror": {"postgres": {"enabled": True, "url": url}}}))
    secret = one(docs, "Secret")
    assert "MIRROR_URL" in secret["data"] and "s3cret" not in yaml.safe_dump(docs)
    ref = env_of(daemon_container(docs))["TIERGATE_MIRROR_URL"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], "MIRROR_URL")


def test_secret_values_reach_the_daemon_by_reference_only() -> None:
    docs = documents(render(STRIPE))
    secret = one(docs, "Secret")
    assert set(secret["data"]) == {"STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET", "FEED_TOKEN", "API_TOKEN"}
    env = env_of(daemon_container(docs))
    for var, key in [
        ("TIERGATE_STRIPE_API_KEY", "STRIPE_API_KEY"),
        ("TIERGATE_STRIPE_WEBHOOK_SECRET", "STRIPE_WEBHOOK_SECRET"),
        ("TIERGATE_FEED_TOKEN", "FEED_TOKEN"),
        ("TIERGATE_API_TOKEN", "API_TOKEN"),
    ]:
        assert "value" not in env[var]
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (secret["metadata"]["name"], key)
    text = yaml.safe_dump(docs)
    assert "sk_test_x" not in text and "whsec_test_0123456789" not in text  # only base64 in the Secret


def test_stripe_secrets_are_required_unless_an_existing_secret_is_named() -> None:
    lib = helm()
    with pytest.raises(lib.HelmError, match=r"secrets\.stripeApiKey"):
        render({})


def test_opa_ingress_existing_secret_and_service_monitor() -> None:
    docs = documents(render(OPA_INGRESS_EXISTING))
    validate_objects(docs)
    assert by_kind(docs, "Secret") == []
    env = env_of(daemon_container(docs))
    refs = {env[v]["valueFrom"]["secretKeyRef"]["name"] for v in env if "valueFrom" in env[v]}
    assert refs == {"billing-secrets"}
    ingress = one(docs, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == "hooks.example.com"
    assert rule["http"]["paths"] == [
        {
            "path": "/webhooks/stripe",
            "pathType": "Exact",
            "backend": {"service": {"name": "rel-tiergate", "port": {"name": "http"}}},
        }
    ]
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    policy = one(docs, "NetworkPolicy")
    assert len(policy["spec"]["ingress"][0]["from"]) == 3  # ingress controller, sidecars, monitoring


def test_network_policy_admits_the_ingress_controller_and_sidecar_pods_to_the_daemon_port() -> None:
    docs = documents(render(STRIPE))
    policy = one(docs, "NetworkPolicy")
    deployment = one(docs, "Deployment")
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    controller, sidecars = rule["from"]
    assert controller["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ingress-nginx"}
    assert sidecars["podSelector"]["matchLabels"] == {"tiergate.io/sidecar": "true"}


def test_catalog_and_policies_come_from_configmaps_and_values_override_them() -> None:
    plans = (CHART / "files" / "plans.yaml").read_text(encoding="utf-8")
    docs = documents(render(STRIPE))
    maps = {d["metadata"]["name"]: d["data"] for d in by_kind(docs, "ConfigMap")}
    assert maps["rel-tiergate-plans"]["plans.yaml"] == plans.rstrip("\n")
    assert set(maps["rel-tiergate-policies"]) == {"entitlements.rego", "ingress.rego"}
    checksum = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/plans"]

    extra = "package tiergate.extra\n\nimport rego.v1\n\nx := 1\n"
    changed = plans.replace("unit_amount: 4900", "unit_amount: 5900")
    override = {**STRIPE, "catalog": {"plans": changed, "policies": {"extra.rego": extra}}}
    docs = documents(render(override))
    maps = {d["metadata"]["name"]: d["data"] for d in by_kind(docs, "ConfigMap")}
    assert "unit_amount: 5900" in maps["rel-tiergate-plans"]["plans.yaml"]
    assert maps["rel-tiergate-policies"]["extra.rego"] == extra.rstrip("\n")
    assert set(maps["rel-tiergate-policies"]) == {"entitlements.rego", "ingress.rego", "extra.rego"}
    # the daemon reads the catalog at start: a catalog change rolls it
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/plans"] != checksum


def test_daemon_settings_pass_through_and_parse_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pass-through setting, set to its default, reaches the env as a string the settings
    class parses back to the same value (1048576 must not become 1.048576e+06)."""
    names = _passthrough("daemon")
    values = {name: _plain(DaemonSettings.model_fields[name].default) for name in names}
    docs = documents(render({**STRIPE, "daemon": {"settings": values}}))
    env = env_of(daemon_container(docs))
    for name in names:  # a null value leaves the variable unset
        assert (f"TIERGATE_{name.upper()}" in env) == (values[name] is not None), name
    parsed = _parse(DaemonSettings, env, monkeypatch)
    for name in names:
        assert getattr(parsed, name) == DaemonSettings.model_fields[name].default, name


# -- the sidecar, included in an app chart --------------------------------------------------


def app_chart(tmp_path: Path) -> Path:
    """A user's chart with tiergate as a dependency and the chart's example Deployment."""
    app = tmp_path / "app"
    (app / "templates").mkdir(parents=True)
    (app / "Chart.yaml").write_text(
        "apiVersion: v2\nname: app\nversion: 1.0.0\n"
        "dependencies:\n  - name: tiergate\n    version: 0.1.0\n    repository: file://../tiergate\n",
        encoding="utf-8",
    )
    (app / "values.yaml").write_text("tiergate: {}\n", encoding="utf-8")
    shutil.copytree(CHART, app / "charts" / "tiergate")
    shutil.copy(CHART / "examples" / "app-deployment.yaml", app / "templates" / "deployment.yaml")
    return app


def app_deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [deployment] = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "rel-app"]
    return deployment


def test_sidecar_template_in_an_app_pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an umbrella chart that runs the daemon too says so (as a dependency the default is none)
    docs = documents(render({"tiergate": {**STRIPE, "daemon": {"enabled": True}}}, chart=app_chart(tmp_path)))
    validate_objects(docs)
    pod = app_deployment(docs)["spec"]["template"]
    spec = pod["spec"]
    assert "initContainers" not in spec  # engine: embedded
    app, sidecar = spec["containers"]
    assert (app["name"], sidecar["name"]) == ("app", "tiergate")
    assert sidecar["args"] == ["sidecar"]
    daemon = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "rel-tiergate"]
    assert sidecar["image"] == daemon_container(daemon)["image"] == "tiergate:0.4.0"
    env = env_of(sidecar)
    assert env["TIERGATE_DAEMON_URL"]["value"] == DAEMON_URL
    assert env["TIERGATE_FEED_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "rel-tiergate",
        "key": "FEED_TOKEN",
    }
    assert env["TIERGATE_SIDECAR_HOST"]["value"] == "127.0.0.1"
    assert env["TIERGATE_ENGINE"]["value"] == "embedded"
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    replica = Path(env["TIERGATE_REPLICA_PATH"]["value"])
    assert "emptyDir" in volumes[mounts[str(replica.parent)]["name"]]
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    for directory, configmap in [
        ("/etc/tiergate/plans", "rel-tiergate-plans"),
        ("/etc/tiergate/policies", "rel-tiergate-policies"),
    ]:
        mount = mounts[directory]
        assert "subPath" not in mount and mount["readOnly"] is True
        assert volumes[mount["name"]]["configMap"]["name"] == configmap
    assert env["TIERGATE_PLANS"]["value"] == "/etc/tiergate/plans/plans.yaml"
    assert env["TIERGATE_POLICIES"]["value"] == "/etc/tiergate/policies"
    # probes: httpGet on the diagnostics listener, which binds the pod IP (the API stays on loopback)
    assert env["TIERGATE_DIAGNOSTICS_HOST"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["TIERGATE_DIAGNOSTICS_PORT"]["value"] == "9194"
    assert sidecar["ports"] == [{"name": "tg-diagnostics", "containerPort": 9194}]
    for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        assert sidecar[probe]["httpGet"] == {"path": path, "port": 9194} and "exec" not in sidecar[probe]
    security = sidecar["securityContext"]
    assert {k: security[k] for k in RESTRICTED} == RESTRICTED and security["capabilities"] == {
        "drop": ["ALL"]
    }
    # the pod carries the label the daemon's NetworkPolicy admits
    policy = one(docs, "NetworkPolicy")
    wanted = policy["spec"]["ingress"][0]["from"][1]["podSelector"]["matchLabels"]
    assert wanted.items() <= pod["metadata"]["labels"].items()
    # and the env is a valid SidecarSettings
    settings = _parse(SidecarSettings, env, monkeypatch)
    assert str(settings.daemon_url).rstrip("/") == DAEMON_URL


@pytest.mark.parametrize(
    ("sidecar", "sync"),
    [
        ({}, "normal"),  # the default outbox volume, an emptyDir: it dies with the pod
        ({"outboxVolume": {"emptyDir": {"medium": "Memory"}}}, "normal"),
        ({"outboxVolume": {"ephemeral": {"volumeClaimTemplate": {"spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}}}, "normal"),
        ({"outboxVolume": {"persistentVolumeClaim": {"claimName": "outbox"}}}, "full"),
        ({"outboxVolume": None}, "full"),  # a volume of the user's own (e.g. a volumeClaimTemplate)
        ({"settings": {"outbox_sync": "full"}}, "full"),  # said outright: wins, and is set once
        ({"outboxVolume": None, "settings": {"outbox_sync": "normal"}}, "normal"),
    ],
)  # fmt: skip
def test_the_outbox_sync_follows_its_volume(tmp_path: Path, sidecar: dict[str, Any], sync: str) -> None:
    values = {**STRIPE, "daemon": {"enabled": True}, "sidecar": sidecar}
    docs = documents(render({"tiergate": values}, chart=app_chart(tmp_path)))
    spec = app_deployment(docs)["spec"]["template"]["spec"]
    entries = [e for e in spec["containers"][1]["env"] if e["name"] == "TIERGATE_OUTBOX_SYNC"]
    assert [e["value"] for e in entries] == [sync]
    volumes = [v for v in spec["volumes"] if v["name"] == "tiergate-outbox"]
    if sidecar.get("outboxVolume", {}) is None:
        assert volumes == []  # left to the user
    else:  # one source: a user's replaces the default emptyDir
        [volume] = volumes
        assert len(volume) == 2, volume
        validate_objects(docs)


def test_sidecar_with_opa_gets_a_native_opa_sidecar(tmp_path: Path) -> None:
    values = {**STRIPE, "engine": "opa", "daemon": {"enabled": True}}
    docs = documents(render({"tiergate": values}, chart=app_chart(tmp_path)))
    validate_objects(docs)
    spec = app_deployment(docs)["spec"]["template"]["spec"]
    [opa] = spec["initContainers"]
    assert opa["name"] == "opa" and opa["restartPolicy"] == "Always"
    assert "--addr=127.0.0.1:8181" in opa["args"]
    assert opa["startupProbe"]["httpGet"]["path"] == "/health"
    env = env_of(spec["containers"][1])
    assert env["TIERGATE_ENGINE"]["value"] == "opa"
    assert env["TIERGATE_OPA_URL"]["value"] == "http://127.0.0.1:8181"


def test_sidecar_settings_pass_through_and_parse_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Settings unset by default (None) are left out: the schema lets values give them a string only.
    names = [n for n in _passthrough("sidecar") if SidecarSettings.model_fields[n].default is not None]
    values = {name: _plain(SidecarSettings.model_fields[name].default) for name in names}
    docs = documents(
        render(
            {"tiergate": {**STRIPE, "daemon": {"enabled": True}, "sidecar": {"settings": values}}},
            chart=app_chart(tmp_path),
        )
    )
    env = env_of(app_deployment(docs)["spec"]["template"]["spec"]["containers"][1])
    parsed = _parse(SidecarSettings, env, monkeypatch)
    for name in names:
        assert getattr(parsed, name) == SidecarSettings.model_fields[name].default, name


def test_sidecars_only_release_follows_another_daemon(tmp_path: Path) -> None:
    chart = app_chart(tmp_path)
    lib = helm()
    with pytest.raises(lib.HelmError, match=r"sidecar\.daemonUrl"):
        render({"tiergate": {"daemon": {"enabled": False}, "secrets": {"existingSecret": "s"}}}, chart=chart)
    values = {
        "daemon": {"enabled": False},
        "sidecar": {"daemonUrl": "http://tiergate.billing.svc:9190"},
        "secrets": {"existingSecret": "tiergate-feed"},
    }
    docs = documents(render({"tiergate": values}, chart=chart))
    validate_objects(docs)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "ConfigMap", "Deployment"]
    env = env_of(app_deployment(docs)["spec"]["template"]["spec"]["containers"][1])
    assert env["TIERGATE_DAEMON_URL"]["value"] == "http://tiergate.billing.svc:9190"
    assert env["TIERGATE_FEED_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "tiergate-feed"


def test_helm_lint_is_clean() -> None:
    lib = helm()
    report = lib.lint(str(CHART), STRIPE, strict=True, kube_version=f"v{KUBE_VERSION}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert problems == []


# -- helpers ---------------------------------------------------------------------------------


def _passthrough(role: str) -> list[str]:
    schema = yaml.safe_load((CHART / "values.schema.json").read_text(encoding="utf-8"))
    return sorted(schema["properties"][role]["properties"]["settings"]["properties"])


def _plain(value: Any) -> Any:
    """A settings default as a values entry (a Path or URL as its string)."""
    return value if isinstance(value, bool | int | float | str) or value is None else str(value)


def _parse(settings: Any, env: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Build the settings from the rendered env (secret references stand in as fixed strings;
    optional ones, such as the Lago key, are left out as a Secret without that key does)."""
    for name in list(os.environ):
        if name.startswith("TIERGATE_"):
            monkeypatch.delenv(name)
    for name, entry in env.items():
        if entry.get("valueFrom", {}).get("secretKeyRef", {}).get("optional"):
            continue
        # A Stripe key must look like a secret key (sk_), a JWT secret be 32 bytes; the others are any string.
        monkeypatch.setenv(name, entry.get("value", "sk_test_from-a-secret-at-least-32-bytes"))
    return settings(_env_file=None)


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ({"feedToken": "f" * 20 + ",short"}, r"secrets\.feedToken: token 2 of 2 has 5 characters"),
        ({"apiToken": "tiny"}, r"secrets\.apiToken: the value has 4 characters; each needs at least 16"),
        ({"stripeWebhookSecret": "whsec_x"}, r"secrets\.stripeWebhookSecret: the value has 7 characters"),
        ({"webhookSecret": "s"}, r"secrets\.webhookSecret: the value has 1 characters"),
    ],
)
def test_a_short_token_or_secret_is_refused_without_echoing_it(secrets: dict[str, str], message: str) -> None:
    lib = helm()
    values = {"secrets": {**STRIPE["secrets"], **secrets}}
    with pytest.raises(lib.HelmError, match=message) as raised:
        render(values)
    assert "short" not in str(raised.value) and "tiny" not in str(raised.value)


def test_long_tokens_and_a_rotation_list_render() -> None:
    tokens = {"feedToken": "n" * 16 + "," + "o" * 16 + ",", "apiToken": "a" * 32}
    secret = one(documents(render({"secrets": {**STRIPE["secrets"], **tokens}})), "Secret")
    assert set(secret["data"]) >= {"FEED_TOKEN", "API_TOKEN"}


def test_as_a_dependency_the_chart_runs_no_daemon_unless_told(tmp_path: Path) -> None:
    chart = app_chart(tmp_path)
    values = {
        "sidecar": {"daemonUrl": "http://tiergate.billing.svc:9190"},
        "secrets": {"existingSecret": "feed"},
    }
    docs = documents(render({"tiergate": values}, chart=chart))
    validate_objects(docs)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "ConfigMap", "Deployment"]  # no daemon objects
    env = env_of(app_deployment(docs)["spec"]["template"]["spec"]["containers"][1])
    assert env["TIERGATE_DAEMON_URL"]["value"] == "http://tiergate.billing.svc:9190"
    lib = helm()
    with pytest.raises(lib.HelmError, match=r"sidecar\.daemonUrl.*dependency of another chart"):
        render({"tiergate": {"secrets": {"existingSecret": "feed"}}}, chart=chart)
    umbrella = documents(render({"tiergate": {**STRIPE, "daemon": {"enabled": True}}}, chart=chart))
    assert {"PersistentVolumeClaim", "Service", "PodDisruptionBudget"} <= {d["kind"] for d in umbrella}
    alone = documents(render(STRIPE))  # installed on its own: the daemon by default
    assert any(d["kind"] == "Deployment" and d["metadata"]["name"] == "rel-tiergate" for d in alone)
    assert not any(
        d["kind"] == "Deployment"
        for d in documents(
            render(
                {
                    **STRIPE,
                    "daemon": {"enabled": False},
                    "secrets": {**STRIPE["secrets"], "feedToken": "f" * 32},
                    "sidecar": {"daemonUrl": "http://d:9190"},
                }
            )
        )
    )


@pytest.mark.parametrize(
    ("values", "spec"),
    [
        ({}, {"minAvailable": 0}),  # one SQLite pod: never block a drain (ADR 18)
        ({"daemon": {"podDisruptionBudget": {"sqliteMinAvailable": 1}}}, {"minAvailable": 1}),
        ({"mirror": {"postgres": {"enabled": True, "existingSecret": "db"}}}, {"maxUnavailable": 1}),
    ],
)
def test_the_daemon_has_a_pdb_in_both_mirror_modes(values: dict[str, Any], spec: dict[str, int]) -> None:
    docs = documents(render(_merge_values(STRIPE, values)))
    validate_objects(docs)
    pdb = one(docs, "PodDisruptionBudget")
    assert {k: v for k, v in pdb["spec"].items() if k != "selector"} == spec
    assert (
        pdb["spec"]["selector"]["matchLabels"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    )
    off = _merge_values(values, {"daemon": {"podDisruptionBudget": {"enabled": False}}})
    assert not by_kind(documents(render(_merge_values(STRIPE, off))), "PodDisruptionBudget")


def test_without_a_diagnostics_port_the_probes_exec_tiergate_healthcheck(tmp_path: Path) -> None:
    values = {"tiergate": {**STRIPE, "daemon": {"enabled": True}, "sidecar": {"diagnosticsPort": 0}}}
    docs = documents(render(values, chart=app_chart(tmp_path)))
    sidecar = app_deployment(docs)["spec"]["template"]["spec"]["containers"][1]
    assert "TIERGATE_DIAGNOSTICS_HOST" not in env_of(sidecar) and "ports" not in sidecar
    url = ["--url", "http://127.0.0.1:9191"]
    assert sidecar["livenessProbe"]["exec"]["command"] == ["tiergate", "healthcheck", *url, "--timeout", "5"]
    assert sidecar["readinessProbe"]["exec"]["command"] == [
        "tiergate",
        "healthcheck",
        "--ready",
        *url,
        "--timeout",
        "5",
    ]


def _merge_values(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            _merge_values(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged
