"""deploy/envoy/ext_authz-grpc.yaml points Envoy's gRPC ext_authz at the sidecar's default gRPC port,
fails closed (the gRPC service itself: tests/integration/sidecar/test_authz_grpc.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tiergate.sidecar.settings import SidecarSettings

ROOT = Path(__file__).parents[2]
CONFIG = ROOT / "deploy" / "envoy" / "ext_authz-grpc.yaml"


def test_the_envoy_config_reaches_the_default_grpc_port_and_fails_closed() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    ext_authz = config["http_filters"][0]["typed_config"]
    assert ext_authz["failure_mode_allow"] is False
    cluster = next(
        c for c in config["clusters"] if c["name"] == ext_authz["grpc_service"]["envoy_grpc"]["cluster_name"]
    )
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ]
    assert address["port_value"] == SidecarSettings.model_fields["authz_grpc_port"].default != 9191
