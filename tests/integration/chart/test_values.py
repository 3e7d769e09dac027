"""The chart's values, schema and files, checked without rendering: every setting of both
processes is reachable from values, the schema accepts the defaults and refuses mistakes, and the
chart's copies of the catalog and policies are the repository's."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from tests.integration.chart.tools import CHART, ROOT, need
from tiergate.sidecar.settings import SidecarSettings
from tiergate.sync_daemon.settings import DaemonSettings

# Settings the chart sets itself (the rest pass through `<role>.settings`), and where from.
SIDECAR_MANAGED = {
    "sidecar_host": "fixed 127.0.0.1: the sidecar stays on the pod's loopback",
    "sidecar_port": "sidecar.port",
    "replica_path": "fixed, on the tiergate-state emptyDir",
    "outbox_path": "fixed, on the tiergate-outbox volume (sidecar.outboxVolume)",
    "plans": "fixed, the plans ConfigMap's directory",
    "policies": "fixed, the policies ConfigMap's directory",
    "engine": "engine",
    "opa_url": "opa.port (loopback)",
    "daemon_url": "sidecar.daemonUrl, else this release's Service",
    "feed_token": "secrets (feedToken key)",
    "jwt_secret": "secrets (jwtSecret key, optional: absent unless set)",
    "diagnostics_host": "the pod IP (downward API) while sidecar.diagnosticsPort is set",
    "diagnostics_port": "sidecar.diagnosticsPort",
    "license_path": "license.secretName and license.licenseKey (the Secret mounted read-only)",
    "license_public_keys": "license.publicKeys (keys of the same Secret)",
}
DAEMON_MANAGED = {
    "stripe_api_key": "secrets (stripeApiKey key)",
    "stripe_webhook_secret": "secrets (stripeWebhookSecret key)",
    "feed_token": "secrets (feedToken key)",
    "api_token": "secrets (apiToken key)",
    "lago_api_key": "secrets (lagoApiKey key)",
    "webhook_secret": "secrets (webhookSecret key)",
    "daemon_host": "fixed 0.0.0.0, behind the Service",
    "daemon_port": "daemon.port",
    "mirror_path": "fixed, on the mirror PVC",
    "mirror_url": "mirror.postgres (a Secret's key)",
    "plans": "fixed, the plans ConfigMap's directory",
    "policies": "fixed, the policies ConfigMap's directory (read-only: support's lookups)",
    "console_token": "secrets (consoleToken key, optional: absent unless set)",
    "console_operator_token": "secrets (consoleOperatorToken key, optional: absent unless set)",
}
ROLES: list[tuple[str, type[BaseSettings], dict[str, str], str]] = [
    ("sidecar", SidecarSettings, SIDECAR_MANAGED, "_helpers.tpl"),
    ("daemon", DaemonSettings, DAEMON_MANAGED, "daemon-deployment.yaml"),
]


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    return loaded


def default_values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    return loaded


@pytest.mark.parametrize(("role", "settings", "managed", "template"), ROLES, ids=[r[0] for r in ROLES])
def test_every_setting_is_reachable_from_values(
    role: str, settings: type[BaseSettings], managed: dict[str, str], template: str
) -> None:
    passthrough = set(schema()["properties"][role]["properties"]["settings"]["properties"])
    fields = set(settings.model_fields)
    assert sorted(fields - passthrough - set(managed)) == [], (
        f"{settings.__name__} settings the chart cannot set: add them to {role}.settings in "
        "values.schema.json, or set them in the templates and list them as managed here"
    )
    assert sorted(passthrough - fields) == [], f"{role}.settings in values.schema.json names unknown settings"
    assert sorted(passthrough & set(managed)) == [], "a managed setting must not be overridable too"
    text = (CHART / "templates" / template).read_text(encoding="utf-8")
    unset = [f"TIERGATE_{name.upper()}" for name in managed if f"name: TIERGATE_{name.upper()}" not in text]
    assert unset == [], f"managed settings missing from templates/{template}"


@pytest.mark.parametrize(("role", "settings", "managed", "template"), ROLES, ids=[r[0] for r in ROLES])
def test_settings_schema_follows_the_settings_class(
    role: str, settings: type[BaseSettings], managed: dict[str, str], template: str
) -> None:
    """Types, enums and bounds of `<role>.settings` are pydantic's own, so values the chart
    accepts are values the process accepts."""
    ours = schema()["properties"][role]["properties"]["settings"]["properties"]
    theirs = settings.model_json_schema()["properties"]
    for name, prop in ours.items():
        for key in ("type", "enum", "minimum", "maximum", "exclusiveMinimum", "pattern", "minLength"):
            assert prop.get(key) == theirs[name].get(key), f"{role}.settings.{name}: {key} differs"


def test_default_values_match_the_schema() -> None:
    jsonschema = need("jsonschema")
    validator = jsonschema.Draft7Validator(schema())
    jsonschema.Draft7Validator.check_schema(schema())
    assert [e.message for e in validator.iter_errors(default_values())] == []


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"engine": "wasm"}, "wasm"),
        ({"daemon": {"settings": {"reconcile_intervall_s": 60}}}, "reconcile_intervall_s"),
        ({"daemon": {"settings": {"log_level": "verbose"}}}, "verbose"),
        ({"sidecar": {"settings": {"decision_log_sample": 2}}}, "2"),
        ({"sidecar": {"settings": {"replica_path": "/tmp/x.db"}}}, "replica_path"),
        ({"daemon": {"settings": {"stripe_api_key": "sk_test_x"}}}, "stripe_api_key"),
        ({"catalog": {"policies": {"plans.yaml": "x"}}}, "plans.yaml"),
        ({"sidecar": {"daemonUrl": "tiergate:9190"}}, "tiergate:9190"),
        ({"tiergat": {}}, "tiergat"),
        ({"networkPolicy": {"sidecarNamespaceSelector": "all"}}, "all"),
        ({"prometheusRule": {"thresholds": {"replicaAgeSeconds": -5}}}, "-5"),
        ({"prometheusRule": {"thresholds": {"replicaAge": 60}}}, "replicaAge"),
        ({"authzGateway": {"podMonitor": {"enable": True}}}, "enable"),
        ({"authzGateway": {"topologySpreadConstraints": [{"maxSkew": 1}]}}, "topologyKey"),
        ({"sidecar": {"native": "yes"}}, "yes"),
        ({"serviceAccount": {"annotations": {"a": 1}}}, "1"),
        ({"daemon": {"extraVolumes": {"name": "x"}}}, "array"),
    ],
)
def test_schema_refuses_mistakes(override: dict[str, Any], needle: str) -> None:
    jsonschema = need("jsonschema")
    values = _merge(default_values(), override)
    errors = [e.message for e in jsonschema.Draft7Validator(schema()).iter_errors(values)]
    assert errors, f"{override} was accepted"
    assert any(needle in message for message in errors), errors


def test_chart_catalog_and_policies_are_the_repository_ones() -> None:
    """The chart ships copies (a chart cannot read outside its directory): keep them in sync
    (docs/kubernetes.md, "Changing tiers")."""
    pairs = [(ROOT / "plans" / "plans.yaml", CHART / "files" / "plans.yaml")]
    modules = sorted(p for p in (ROOT / "policies").glob("*.rego") if not p.name.endswith("_test.rego"))
    pairs += [(p, CHART / "files" / "policies" / p.name) for p in modules]
    stale = [str(copy.relative_to(ROOT)) for original, copy in pairs if _read(copy) != _read(original)]
    assert stale == [], "out of date; copy them from plans/ and policies/"
    shipped = {p.name for p in (CHART / "files" / "policies").glob("*.rego")}
    assert shipped == {p.name for p in modules}


def test_image_tag_is_the_app_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert default_values()["image"]["tag"] == chart["appVersion"]


def test_templates_never_mount_the_catalog_with_subpath() -> None:
    """subPath mounts never see ConfigMap updates: hot reload would silently stop working."""
    texts = [p.read_text(encoding="utf-8") for p in sorted((CHART / "templates").iterdir())]
    texts.append((CHART / "examples" / "app-deployment.yaml").read_text(encoding="utf-8"))
    assert not any(re.search(r"^\s*subPath:", text, re.MULTILINE) for text in texts)


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
