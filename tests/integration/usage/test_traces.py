"""OpenTelemetry across usage delivery: an app's `traceparent` reaches the daemon through the
sidecar's outbox, and both processes export their spans to a real OTLP/HTTP receiver on loopback;
without an endpoint nothing of OpenTelemetry is set up."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from tests.integration.usage.conftest import SidecarFactory, events, eventually, settled, start_daemon
from tests.otlp_double import OtlpReceiver
from tiergate.sidecar.state import TRACING as SIDECAR_TRACING
from tiergate.sync_daemon.traces import TRACING as DAEMON_TRACING
from tiergate.tracing import Tracing, otlp_traces_url

pytest.importorskip("opentelemetry.sdk", reason="the tiergate[otel] extra is not installed")
pytest.importorskip("opentelemetry.proto", reason="opentelemetry-proto decodes what the receiver gets")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
APP_SPAN = "00f067aa0ba902b7"


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[OtlpReceiver, str]]:
    double = OtlpReceiver()
    server = TestServer(double.app(), host="127.0.0.1")
    await server.start_server()
    yield double, str(server.make_url("")).rstrip("/")
    await server.close()


def flush(*tracings: Tracing) -> None:
    for tracing in tracings:
        tracing.flush()


async def test_an_apps_trace_runs_through_the_sidecar_into_the_daemon(
    tmp_path: Path, make_sidecar: SidecarFactory, receiver: tuple[OtlpReceiver, str]
) -> None:
    double, url = receiver
    daemon = await start_daemon(tmp_path, otel_exporter_otlp_endpoint=url)
    try:
        sidecar = await make_sidecar(daemon.url, otel_exporter_otlp_endpoint=url)
        traced = {"traceparent": f"00-{TRACE_ID}-{APP_SPAN}-01"}
        response = await sidecar.post("/v1/usage/batch", json={"events": events("t_free", 3)}, headers=traced)
        assert response.status == 202
        other = await sidecar.post("/v1/usage", json={"event": events("t_free", 1)[0]})  # no traceparent
        assert other.status == 202
        await eventually(lambda: settled(sidecar))

        async def exported() -> bool:
            flush(sidecar.app[SIDECAR_TRACING], daemon.server.app[DAEMON_TRACING])
            return bool(double.named("POST /v1/usage/batch"))

        await eventually(exported)
    finally:
        await daemon.server.close()

    [record] = [s for s in double.named("usage.record") if s.trace_id == TRACE_ID]
    assert (record.service, record.parent_span_id) == ("tiergate-sidecar", APP_SPAN)
    deliveries = double.named("usage.deliver")
    [deliver] = [s for s in deliveries if s.trace_id == TRACE_ID or TRACE_ID in s.links]
    ingests = [s for s in double.named("POST /v1/usage/batch") if s.service == "tiergate-sync-daemon"]
    [ingest] = [s for s in ingests if s.parent_span_id == deliver.span_id]
    assert ingest.trace_id == deliver.trace_id  # the daemon continued the sidecar's trace
    assert TRACE_ID in (deliver.trace_id, *deliver.links)  # the app's trace reached the delivery
    if deliver.trace_id == TRACE_ID:
        assert deliver.parent_span_id == record.span_id  # app -> sidecar record -> delivery -> daemon
    assert (
        isinstance(deliver.attributes["tiergate.events"], int) and deliver.attributes["tiergate.events"] >= 1
    )
    untraced = [s for s in double.named("usage.record") if s.trace_id != TRACE_ID]
    assert len(untraced) == 1 and untraced[0].parent_span_id == ""  # a new trace of its own


async def test_one_batch_follows_the_first_trace_and_links_the_others(
    tmp_path: Path, make_sidecar: SidecarFactory, receiver: tuple[OtlpReceiver, str]
) -> None:
    double, url = receiver
    daemon = await start_daemon(tmp_path, otel_exporter_otlp_endpoint=url)
    try:  # the daemon answers only once both requests are in the outbox: one batch carries both
        sidecar = await make_sidecar(daemon.url, otel_exporter_otlp_endpoint=url, delivery_linger_s=0.5)
        first, second = "1" * 32, "2" * 32
        for trace_id, prefix in ((first, "a"), (second, "b")):
            headers = {"traceparent": f"00-{trace_id}-{APP_SPAN}-01"}
            body = {"events": events("t_free", 2, prefix=prefix)}
            assert (await sidecar.post("/v1/usage/batch", json=body, headers=headers)).status == 202
        await eventually(lambda: settled(sidecar))

        async def delivered() -> bool:
            flush(sidecar.app[SIDECAR_TRACING], daemon.server.app[DAEMON_TRACING])
            return bool(double.named("usage.deliver"))

        await eventually(delivered)
    finally:
        await daemon.server.close()
    [deliver] = double.named("usage.deliver")
    assert (deliver.trace_id, deliver.links) == (first, (second,))
    assert deliver.attributes["tiergate.events"] == 4


async def test_without_an_endpoint_nothing_is_traced(
    tmp_path: Path, make_sidecar: SidecarFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    daemon = await start_daemon(tmp_path)
    try:
        sidecar = await make_sidecar(daemon.url)
        assert SIDECAR_TRACING not in sidecar.app and DAEMON_TRACING not in daemon.server.app
        headers = {"traceparent": f"00-{TRACE_ID}-{APP_SPAN}-01"}  # accepted, and ignored
        assert (
            await sidecar.post("/v1/usage", json={"event": events("t", 1)[0]}, headers=headers)
        ).status == 202
        await eventually(lambda: settled(sidecar))
    finally:
        await daemon.server.close()


@pytest.mark.parametrize(
    ("ours", "environ", "url"),
    [
        (None, {}, None),
        ("http://collector:4318", {}, "http://collector:4318/v1/traces"),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318/"}, "http://otel:4318/v1/traces"),
        (
            "http://ours:4318/",
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://std:4318"},
            "http://ours:4318/v1/traces",
        ),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, None),
    ],
)
def test_the_endpoint_is_ours_else_the_standard_variable(
    ours: str | None, environ: dict[str, str], url: str | None
) -> None:
    assert otlp_traces_url(ours, environ) == url


def test_the_standard_variable_alone_turns_tracing_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.integration.usage.conftest import sidecar_settings
    from tiergate.sidecar.app import create_app

    monkeypatch.setitem(os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    app = create_app(sidecar_settings(tmp_path, None))
    assert app[SIDECAR_TRACING].traces_url == "http://127.0.0.1:9/v1/traces"
    app[SIDECAR_TRACING].shutdown()
