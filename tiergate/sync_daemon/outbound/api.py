"""GET /v1/webhooks/deliveries: the outbound webhooks' delivery log (bearer TIERGATE_API_TOKEN)."""

from __future__ import annotations

from aiohttp import web

from tiergate.errors import BadRequestError
from tiergate.sync_daemon.billing.auth import authorize
from tiergate.sync_daemon.outbound.queue import delivery_log
from tiergate.sync_daemon.state import MIRROR
from tiergate.web import json_response

STATUSES = ("pending", "delivered", "failed")


async def list_deliveries(request: web.Request) -> web.Response:
    authorize(request)
    status = request.query.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequestError(f"status={status[:40]!r}: expected one of {list(STATUSES)}", field="status")
    text = request.query.get("limit", "100")
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise BadRequestError(f"limit={text[:40]!r}: expected a whole number from 1 to 1000", field="limit")
    rows = await request.app[MIRROR].read(lambda conn: delivery_log(conn, status, int(text)))
    return json_response({"deliveries": rows})


def add_outbound_routes(app: web.Application) -> None:
    app.router.add_get("/v1/webhooks/deliveries", list_deliveries)
