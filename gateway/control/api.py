"""The control API: HTTP + JSON routes on a root-only unix socket -> GatewayOps.

Never bound to a network address, so nothing on the village LAN can reach
it. Each route parses a typed request (:mod:`gateway.control.schema`),
calls one method of the facade and shapes the answer; domain errors become
HTTP answers through the one table in :mod:`gateway.control.errors`. No
route holds domain logic, and no GET changes anything.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.config.schema import Config
from gateway.control.errors import error_body
from gateway.control.office_routes import add_office_routes
from gateway.control.schema import (
    AuthRequest,
    ByRequest,
    ConfigApplyOut,
    ConfigApplyRequest,
    ConfigConfirmOut,
    ConfigDiffOut,
    ConfigRollbackOut,
    ConfigShowOut,
    ConfigTextRequest,
    ConfirmRequest,
    DeauthRequest,
    EventsOut,
    EventsQuery,
    Out,
    PlanRequest,
    ReloadOut,
    VoucherCreateRequest,
    VoucherOut,
    VoucherReleaseRequest,
    VoucherRevokeRequest,
    parse_request,
    parse_request_bytes,
)
from gateway.core.configuration import ApplyResult
from gateway.core.ops import GatewayOps, session_json, used_up, voucher_json
from gateway.errors import DesanetError
from gateway.model import Session, Voucher

log = logging.getLogger("desanet.control")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPS_KEY = web.AppKey("desanet_ops", GatewayOps)
MAX_BODY = 1024 * 1024  # a config text is the largest request; JSON escaping grows it


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        # aiohttp's own answers (404, 405, 413 ...) in the same JSON shape as ours
        if exc.status < 400:
            raise
        kind = {404: "not_found", 405: "invalid", 413: "invalid"}.get(exc.status, "invalid")
        text = f"{request.method} {request.path}: {exc.reason}"
        if exc.status == 413:
            text += f" (the control API takes at most {MAX_BODY // 1024} KiB per request)"
        return web.json_response({"error": text, "kind": kind}, status=exc.status)
    except Exception as exc:
        status, body = error_body(exc)
        if not isinstance(exc, DesanetError):
            # A bug, not bad input: keep the traceback in the log and still answer
            # JSON, so the CLI prints a message instead of "invalid JSON".
            log.exception("%s %s failed", request.method, request.path)
        elif status >= 500:
            log.error("%s %s failed: %s", request.method, request.path, exc)
        return web.json_response(body, status=status)


async def _body(request: web.Request) -> bytes:
    return await request.read() if request.can_read_body else b""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a control request came from: its connection, and the kernel's login session
    (audit session id) of the process on the other end, when one is set. A confirm must
    come from another connection and, where sessions are known, another login: a new
    SSH login proves the box can still be reached; a second command in the same shell
    does not."""

    connection: int
    login_session: int | None
    # The connection's transport itself, held while this origin is remembered: a closed
    # transport's id() may be reused by the next connection's (uvloop keeps a free list
    # of transport objects), so a new connection could otherwise look like the old one.
    transport: object = field(default=None, compare=False, repr=False)


_NO_SESSION = 4294967295  # (u32)-1: the process has no login session (e.g. started by init)


def _origin(request: web.Request) -> Origin:
    transport = request.transport
    session = None
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid = struct.unpack("3i", creds)[0]
            value = int(Path(f"/proc/{pid}/sessionid").read_text())
            session = None if value == _NO_SESSION else value
        except (OSError, ValueError):
            session = None  # the peer is gone or the kernel has no audit sessions
    return Origin(id(transport), session, transport)


def _out(model: type[Out], data: dict[str, Any]) -> dict[str, Any]:
    """Shape an answer through the model the client parses it with (server and client
    share control/schema.py, so a drift fails here, in the daemon's tests)."""
    return model.model_validate(data).to_json()


def _session(session: Session, now: int) -> dict[str, Any]:
    # The login path: shaped by hand (the same keys as SessionOut, which the client
    # parses and tests/unit/test_control_api.py checks) to keep validation off it.
    return session_json(session, now)


def _voucher(voucher: Voucher, now: int, cfg: Config) -> dict[str, Any]:
    data = voucher_json(voucher, now, cfg.site.timezone)
    if data["state"] == "active" and used_up(voucher, cfg):
        data["state"] = "used_up"  # within its validity, but its time of use or quota is gone
    return _out(VoucherOut, data)


def _changes(changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"path": c["path"], "old": c["old"], "new": c["new"]} for c in changes]


def _apply_json(result: ApplyResult) -> dict[str, Any]:
    return {
        "version": result.version,
        "previous_version": result.previous_version,
        "changes": _changes(result.changes),
        "trial": result.trial.public_json() if result.trial else None,
    }


def create_control_app(ops: GatewayOps) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/v1/status")
    async def status(_: web.Request) -> web.Response:
        return web.json_response(await ops.status())

    @routes.get("/v1/clients")
    async def clients(_: web.Request) -> web.Response:
        return web.json_response({"clients": await ops.clients()})

    @routes.post("/v1/clients/auth")
    async def auth(request: web.Request) -> web.Response:
        req = parse_request_bytes(AuthRequest, await _body(request))
        session = await ops.authorize(req.mac, req.ip, req.duration, req.plan, force=req.force)
        return web.json_response({"client": _session(session, ops.now())})

    @routes.post("/v1/clients/deauth")
    async def deauth(request: web.Request) -> web.Response:
        req = parse_request_bytes(DeauthRequest, await _body(request))
        session = await ops.deauthorize(req.mac)
        return web.json_response({"deauthorized": req.mac, "ip": session.ip})

    @routes.post("/v1/clients/plan")
    async def plan(request: web.Request) -> web.Response:
        req = parse_request_bytes(PlanRequest, await _body(request))
        session = await ops.change_plan(req.mac, req.plan)
        return web.json_response({"client": _session(session, ops.now())})

    @routes.get("/v1/shaping")
    async def shaping(_: web.Request) -> web.Response:
        return web.json_response(ops.shaping_status())

    @routes.get("/v1/services")
    async def services(_: web.Request) -> web.Response:
        return web.json_response(ops.services_status())

    @routes.post("/v1/services/prefetch")
    async def prefetch(_: web.Request) -> web.Response:
        return web.json_response(await ops.prefetch())

    @routes.get("/v1/vouchers")
    async def vouchers(request: web.Request) -> web.Response:
        now = ops.now()
        found = await ops.vouchers(request.query.get("batch"))
        cfg = ops.config.current
        return web.json_response({"vouchers": [_voucher(v, now, cfg) for v in found]})

    @routes.post("/v1/vouchers")
    async def create_vouchers(request: web.Request) -> web.Response:
        req = parse_request_bytes(VoucherCreateRequest, await _body(request))
        batch, made = await ops.create_vouchers(req.count, req.duration, req.max_devices,
                                                req.plan, req.batch, req.name, req.seller)
        now = ops.now()
        return web.json_response(
            {"batch": batch, "vouchers": [_voucher(v, now, ops.config.current)
                                          for v in made]}, status=201
        )

    @routes.post("/v1/vouchers/revoke")
    async def revoke(request: web.Request) -> web.Response:
        req = parse_request_bytes(VoucherRevokeRequest, await _body(request))
        voucher = await ops.revoke_voucher(req.code)
        return web.json_response(
            {"voucher": _voucher(voucher, ops.now(), ops.config.current)})

    @routes.post("/v1/vouchers/release")
    async def release(request: web.Request) -> web.Response:
        req = parse_request_bytes(VoucherReleaseRequest, await _body(request))
        voucher = await ops.release_voucher(req.code, req.mac)
        return web.json_response(
            {"voucher": _voucher(voucher, ops.now(), ops.config.current)})

    @routes.post("/v1/reload")
    async def reload(request: web.Request) -> web.Response:
        req = parse_request_bytes(ByRequest, await _body(request))
        result = await ops.reload(by=req.by or "")
        return web.json_response(_out(ReloadOut, {"reloaded": True, **_apply_json(result)}))

    @routes.get("/v1/config")
    async def config_show(_: web.Request) -> web.Response:
        return web.json_response(_out(ConfigShowOut, ops.config_show()))

    @routes.post("/v1/config/diff")
    async def config_diff(request: web.Request) -> web.Response:
        req = parse_request_bytes(ConfigTextRequest, await _body(request))
        return web.json_response(_out(ConfigDiffOut, {"changes": _changes(ops.config_diff(req.text))}))

    @routes.post("/v1/config/apply")
    async def config_apply(request: web.Request) -> web.Response:
        req = parse_request_bytes(ConfigApplyRequest, await _body(request))
        result = await ops.config_apply(req.text, req.confirm, req.by or "",
                                        _origin(request))
        return web.json_response(_out(ConfigApplyOut, {"applied": True, **_apply_json(result)}))

    @routes.post("/v1/config/confirm")
    async def config_confirm(request: web.Request) -> web.Response:
        req = parse_request_bytes(ConfirmRequest, await _body(request))
        version = await ops.config_confirm(req.by or "", _origin(request),
                                           terminal_proof=req.proof == "terminal")
        return web.json_response(_out(ConfigConfirmOut, {"confirmed": True, "version": version}))

    @routes.post("/v1/config/rollback")
    async def config_rollback(request: web.Request) -> web.Response:
        req = parse_request_bytes(ByRequest, await _body(request))
        version = await ops.config_rollback(req.by or "")
        return web.json_response(_out(ConfigRollbackOut, {"rolled_back": True, "version": version}))

    @routes.get("/v1/events")
    async def events(request: web.Request) -> web.Response:
        req = parse_request(EventsQuery, dict(request.query))
        since = req.since
        if since > ops.bus.last_seq:
            since = 0  # numbers from an earlier run of the daemon: start again from ours
        found = await ops.wait_events(since, req.timeout)
        nxt = found[-1].seq if found else since
        body: dict[str, Any] = {"events": [e.to_json() for e in found], "next": nxt,
                                "boot": ops.started_at}
        if since < ops.bus.oldest_seq - 1:
            body["gap"] = True  # the ring has moved on: some events were missed
        return web.json_response(_out(EventsOut, body))

    add_office_routes(routes, ops)  # office: vouchers report / import
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
    app[OPS_KEY] = ops
    app.add_routes(routes)
    return app
