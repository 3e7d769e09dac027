"""The real `tiergate sidecar` process (uvloop, as deployed): GET /v1/check on its main port is
answered on the raw path, and every other route by aiohttp on the same connection, which comes
back to the raw path for the next check."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

from tests.integration.clients.conftest import RunningSidecar


def test_the_main_port_answers_checks_raw_and_the_rest_through_aiohttp(sidecar: RunningSidecar) -> None:
    where = urlsplit(sidecar.url)
    connection = http.client.HTTPConnection(where.hostname or "", where.port, timeout=30)
    seen = []
    try:
        for method, path in [
            ("GET", "/v1/check?tenant=pro-active&feature=sso"),
            ("GET", "/v1/check?tenant=pro-active&feature=sso"),
            ("GET", "/healthz"),
            ("GET", "/v1/check?tenant=ent-active&feature=sso"),
        ]:
            connection.request(method, path)
            answer = connection.getresponse()
            body = json.loads(answer.read())
            seen.append((answer.status, answer.getheader("Server") is not None, body.get("allow")))
    finally:
        connection.close()
    # checks on the raw path, the other route through aiohttp, then the raw path again
    assert seen == [(200, False, True), (200, False, True), (200, True, None), (200, False, True)]
