"""Control API routes of the village office: the sales report and the import of codes
sold elsewhere (`desanet vouchers report|import`; the TUI can call them too).

GET  /v1/vouchers/report?from=YYYY-MM-DD&to=YYYY-MM-DD&batch=ID&seller=NAME
     -> the report (docs/vouchers-office.md, "Report JSON"), read only.
POST /v1/vouchers/import {"text": CSV, "map": {PROFILE: PLAN}, "duration": "1d"|null,
     "seller": NAME|null, "name": NAME|null}
     -> 201 {"batch", "imported", "vouchers", "ignored_columns"}; a file with problems is
     400 with every problem in "problems" (row, column, found, expected) and imports
     nothing.
"""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import Field, PlainValidator

from gateway.control.schema import (
    BatchName,
    BatchTitle,
    OptionalDuration,
    Request,
    SellerName,
    parse_request,
    parse_request_bytes,
)
from gateway.core.ops import GatewayOps, voucher_json
from gateway.errors import Unavailable

MAX_MAP = 200  # profile -> plan pairs


def _day(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) != 10:
        raise ValueError(f"{value!r} is not a date; write YYYY-MM-DD, e.g. \"2026-12-01\"")
    return value  # checked as a calendar day (naming the field) by the office service


def _csv(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("send the CSV file's text as a string")
    return value


def _map(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_MAP or not all(
            isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 64 and 0 < len(v) <= 32
            for k, v in value.items()):
        raise ValueError('write an object of profile -> plan names, e.g. {"1jam": "hour"}')
    return dict(value)


Day = Annotated[str | None, PlainValidator(_day), Field(examples=["2026-12-01"])]


class ReportQuery(Request):
    """GET /v1/vouchers/report (query string)."""

    from_: Day = Field(None, alias="from")
    to: Day = None
    batch: BatchName = None
    seller: SellerName = None


class ImportRequest(Request):
    """POST /v1/vouchers/import."""

    text: Annotated[str, PlainValidator(_csv), Field(examples=["name,profile\n..."])]
    map: Annotated[dict[str, str], PlainValidator(_map), Field(examples=[{"1jam": "hour"}])] = \
        Field(default_factory=dict)
    duration: OptionalDuration = None
    seller: SellerName = None
    name: BatchTitle = None


def _office(ops: GatewayOps) -> Any:
    if ops.office is None:
        raise Unavailable("the office service is not running")
    return ops.office


def add_office_routes(routes: web.RouteTableDef, ops: GatewayOps) -> None:
    @routes.get("/v1/vouchers/report")
    async def report(request: web.Request) -> web.Response:
        q = parse_request(ReportQuery, dict(request.query))
        data = await _office(ops).report(q.from_, q.to, q.batch, q.seller)
        return web.json_response(data)

    @routes.post("/v1/vouchers/import")
    async def import_(request: web.Request) -> web.Response:
        req = parse_request_bytes(ImportRequest, await request.read())
        batch, made, ignored = await _office(ops).import_csv(
            req.text, req.map, req.duration, req.seller or "", req.name)
        now, tz = ops.now(), ops.config.current.site.timezone
        return web.json_response({
            "batch": batch, "imported": len(made), "ignored_columns": ignored,
            "vouchers": [voucher_json(v, now, tz) for v in made]}, status=201)
