"""Typed application keys and the policy facade the handlers use."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tiergate.policy.engine import PolicyEngine
from tiergate.sidecar.decisions.service import DecisionService, RouteResolver
from tiergate.sidecar.metrics import SidecarMetrics
from tiergate.sidecar.policy.reload import PolicyReloader
from tiergate.sidecar.replica.follower import Follower
from tiergate.sidecar.replica.license_source import LicenseSource
from tiergate.sidecar.replica.store import ReplicaReader
from tiergate.sidecar.settings import SidecarSettings
from tiergate.tracing import Tracing


class Policies:
    """The engine plus the reloader that feeds it: what is loaded, and how the last reload went."""

    def __init__(self, engine: PolicyEngine, reloader: PolicyReloader) -> None:
        self.engine = engine
        self.reloader = reloader

    def features(self) -> set[str]:
        bundle = self.reloader.bundle
        return set() if bundle is None else bundle.catalog.features

    def addon_features(self) -> dict[str, set[str]]:
        """Each catalog add-on and the features it changes."""
        bundle = self.reloader.bundle
        addons = {} if bundle is None else bundle.catalog.addons
        return {name: set(addon.features) for name, addon in addons.items()}

    def status(self) -> dict[str, Any]:
        return self.reloader.status()


SETTINGS = web.AppKey("settings", SidecarSettings)
READER = web.AppKey("reader", ReplicaReader)
POLICIES = web.AppKey("policies", Policies)
DECISIONS = web.AppKey("decisions", DecisionService)
ROUTES = web.AppKey("routes", RouteResolver)
METRICS = web.AppKey("metrics", SidecarMetrics)
FOLLOWER = web.AppKey("follower", Follower)
TRACING = web.AppKey("tracing", Tracing)  # only while an OTLP endpoint is configured
LICENSE = web.AppKey("license", LicenseSource)
