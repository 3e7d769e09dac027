"""The sidecar serves its OpenAPI document (tests/integration/test_openapi.py checks its routes)."""

from __future__ import annotations

from tests.integration.sidecar.conftest import SidecarClient


async def test_served_document_is_openapi_3_1(client: SidecarClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.1")
