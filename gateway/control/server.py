"""Local control API: HTTP + JSON on a root-only unix socket.

Never bound to a network address, so nothing on the village LAN can reach
it. Request bodies are validated here; every error names the field.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.config.schema import normalize_mac
from gateway.config.units import parse_duration
from gateway.errors import ControlError, DesanetError, VoucherError
from gateway.model import Session, Voucher
from gateway.portal.backend import PortalDenied
from gateway.services.dnsmasq import read_leases

if TYPE_CHECKING:
    from gateway.daemon.gateway import Gateway

log = logging.getLogger("desanet.control")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_VOUCHERS_PER_REQUEST = 1000
# nftables refuses element timeouts of about 100 years and more; a year is
# already more than any session or voucher a village hands out.
MAX_DURATION = 366 * 86400
MAX_BATCH_NAME = 64


def session_json(s: Session, now: int) -> dict[str, Any]:
    data = asdict(s)
    data["remaining"] = s.remaining(now)
    data["authorized"] = True
    return data


def voucher_json(v: Voucher, now: int) -> dict[str, Any]:
    data = asdict(v)
    data["devices"] = list(v.devices)
    data["state"] = v.state(now)
    return data


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ControlError as exc:
        return web.json_response({"error": str(exc)}, status=exc.status)
    except VoucherError as exc:
        status = 400 if exc.reason == "malformed" else 404
        return web.json_response({"error": str(exc), "reason": exc.reason}, status=status)
    except PortalDenied as exc:
        return web.json_response({"error": f"refused: {exc.reason}"}, status=409)
    except DesanetError as exc:
        log.error("%s %s failed: %s", request.method, request.path, exc)
        return web.json_response({"error": str(exc)}, status=500)
    except web.HTTPException:
        raise
    except Exception as exc:
        # A bug, not bad input: keep the traceback in the log and still answer
        # JSON, so the CLI prints a message instead of "invalid JSON".
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response(
            {"error": f"internal error ({type(exc).__name__}); see the daemon log"}, status=500
        )


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json() if request.can_read_body else {}
    except json.JSONDecodeError as exc:
        raise ControlError(f"request body is not JSON: {exc}", 400) from exc
    if not isinstance(data, dict):
        raise ControlError("request body must be a JSON object", 400)
    return data


def _mac(data: dict[str, Any]) -> str:
    try:
        return normalize_mac(str(data["mac"]))
    except KeyError:
        raise ControlError('field "mac" is required, e.g. "02:00:00:aa:bb:cc"', 400) from None
    except ValueError as exc:
        raise ControlError(f"field mac: {exc}", 400) from None


def _duration_field(data: dict[str, Any], name: str, required: bool) -> int | None:
    if name not in data or data[name] is None:
        if required:
            raise ControlError(f'field "{name}" is required, e.g. "1d" or "4h"', 400)
        return None
    try:
        seconds = parse_duration(data[name])
    except ValueError as exc:
        raise ControlError(f"field {name}: {exc}", 400) from None
    if seconds > MAX_DURATION:
        raise ControlError(
            f"field {name}: {data[name]!r} is longer than {MAX_DURATION // 86400} days; "
            'write e.g. "30d"', 400
        )
    return seconds


def _name_field(data: dict[str, Any], name: str, example: str, limit: int = 32) -> str | None:
    """An optional short name (plan, batch): a string or null."""
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit or not \
            value.isprintable():
        raise ControlError(
            f"field {name}: {value!r} must be a name of 1..{limit} printable characters "
            f"or null, e.g. {example!r}", 400
        )
    return value


def _int_field(data: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = data.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ControlError(f"field {name}: {value!r} must be a whole number {low}..{high}", 400)
    return value


def create_control_app(gw: Gateway) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/v1/status")
    async def status(_: web.Request) -> web.Response:
        now = gw.now()
        return web.json_response({
            "ready": gw.ready,
            "site": gw.cfg.site.name,
            "village": gw.cfg.site.village,
            "uptime": now - gw.started_at,
            "portal_url": gw.cfg.portal_url,
            "lan_ip": gw.cfg.lan_ip,
            "portal_mode": gw.cfg.portal.mode,
            "sessions_active": gw.store.count_active(now),
            "firewall": {"backend": gw.firewall.nft.backend},
            "dnsmasq": {"running": gw.dnsmasq.running, "pid": gw.dnsmasq.pid,
                        "restarts": gw.dnsmasq.restarts},
            "config_path": gw.config_path,
            "shaping": gw.shaping.status_json(),
        })

    @routes.get("/v1/clients")
    async def clients(_: web.Request) -> web.Response:
        now = gw.now()
        sessions = gw.store.active_sessions(now)
        active = gw.firewall.active_clients()
        out = []
        for s in sessions:
            row = session_json(s, now)
            row["idle_left"] = active.get((s.mac, s.ip), 0)
            row["shaping"] = gw.shaping.client_json(s)
            out.append(row)
        known = {s.mac for s in sessions}
        for ip, mac in sorted(read_leases(str(gw.state_dir / "dnsmasq.leases")).items()):
            if mac not in known:
                out.append({"mac": mac, "ip": ip, "authorized": False})
        return web.json_response({"clients": out})

    @routes.post("/v1/clients/auth")
    async def auth(request: web.Request) -> web.Response:
        data = await _body(request)
        mac = _mac(data)
        # Check every field before any lookup or change: bad input changes nothing.
        duration = _duration_field(data, "duration", required=False)
        plan = _plan_field(data)
        if data.get("ip") is not None and not isinstance(data["ip"], str):
            raise ControlError(f'field ip: {data["ip"]!r} is not an IPv4 address, e.g. '
                               '"10.42.0.100"', 400)
        ip = data.get("ip") or await gw.netlink.call(gw.neighbours.ip_of, mac)
        if not ip:
            raise ControlError(
                f"no IPv4 address known for {mac} (no DHCP lease, no neighbour entry); "
                'pass "ip" too', 404
            )
        try:
            addr = ipaddress.IPv4Address(str(ip))
        except ValueError:
            raise ControlError(f'field ip: "{ip}" is not an IPv4 address, e.g. "10.42.0.100"',
                               400) from None
        iface = gw.cfg.network.lan_address
        lan = iface.network
        if addr in (lan.network_address, lan.broadcast_address, iface.ip):
            raise ControlError(f"field ip: {addr} is the gateway's or the LAN's own address, "
                               f'not a client\'s; write e.g. "{lan.network_address + 100}"', 422)
        # Outside the LAN is allowed with shaping off (bench/portal_auth.py
        # authorizes more clients than the lab's /24 holds); it matches nothing.
        if gw.cfg.shaping.enabled and addr not in lan:
            raise ControlError(f"field ip: {addr} is outside the LAN {lan}; with shaping on every "
                               "client needs a LAN address (its class id comes from it)", 422)
        session = await gw.authorize(mac, str(ip), "manual", duration=duration, plan=plan)
        return web.json_response({"client": session_json(session, gw.now())})

    @routes.post("/v1/clients/deauth")
    async def deauth(request: web.Request) -> web.Response:
        mac = _mac(await _body(request))
        session = await gw.deauthorize(mac, "deauth")
        if session is None:
            raise ControlError(f"{mac} has no active session", 404)
        return web.json_response({"deauthorized": mac, "ip": session.ip})

    @routes.post("/v1/clients/plan")
    async def plan(request: web.Request) -> web.Response:
        data = await _body(request)
        mac = _mac(data)
        if "plan" not in data:
            raise ControlError('field "plan" is required: a name from shaping.plans, or null '
                               "for the default plan", 400)
        session = await gw.change_plan(mac, _plan_field(data))
        return web.json_response({"client": session_json(session, gw.now())})

    @routes.get("/v1/shaping")
    async def shaping(_: web.Request) -> web.Response:
        await gw.shaping.sample()
        return web.json_response(gw.shaping.status_json())

    @routes.get("/v1/services")
    async def services(_: web.Request) -> web.Response:
        if gw.local is None:
            return web.json_response({"enabled": False})
        return web.json_response(gw.local.status_json())

    @routes.post("/v1/services/prefetch")
    async def prefetch(_: web.Request) -> web.Response:
        if gw.local is None:
            raise ControlError("local_services.enabled is false; nothing to prefetch", 409)
        return web.json_response(await gw.local.prefetch())

    @routes.get("/v1/vouchers")
    async def vouchers(request: web.Request) -> web.Response:
        now = gw.now()
        batch = request.query.get("batch")
        return web.json_response(
            {"vouchers": [voucher_json(v, now) for v in gw.store.vouchers(batch)]}
        )

    @routes.post("/v1/vouchers")
    async def create_vouchers(request: web.Request) -> web.Response:
        from gateway.portal.vouchers import generate_codes

        data = await _body(request)
        count = _int_field(data, "count", 1, 1, MAX_VOUCHERS_PER_REQUEST)
        duration = _duration_field(data, "duration", required=True)
        assert duration is not None
        max_devices = _int_field(data, "max_devices", 1, 1, 10)
        plan = _plan_field(data)
        given_batch = _name_field(data, "batch", "2024-05-posyandu", MAX_BATCH_NAME)
        now = gw.now()
        batch = given_batch or f"{now}-{secrets.token_hex(2)}"
        made = [
            Voucher(code=c, duration=duration, plan=plan, created=now, batch=str(batch),
                    max_devices=max_devices)
            for c in generate_codes(count)
        ]
        gw.store.add_vouchers(made)
        return web.json_response(
            {"batch": batch, "vouchers": [voucher_json(v, now) for v in made]}, status=201
        )

    @routes.post("/v1/vouchers/revoke")
    async def revoke(request: web.Request) -> web.Response:
        from gateway.portal.vouchers import normalize_code

        data = await _body(request)
        if not isinstance(data.get("code"), str):
            raise ControlError('field "code" is required, a voucher code such as "K7MQX-3PAR9"',
                               400)
        try:
            code = normalize_code(data["code"])
        except VoucherError as exc:
            raise ControlError(f"field code: {exc}", 400) from None
        voucher = gw.store.revoke_voucher(code, gw.now())
        await gw.sweep()
        return web.json_response({"voucher": voucher_json(voucher, gw.now())})

    @routes.post("/v1/reload")
    async def reload(_: web.Request) -> web.Response:
        return web.json_response(await gw.reload())

    def _plan_field(data: dict[str, Any]) -> str | None:
        plan = _name_field(data, "plan", "school")
        if plan is not None and plan not in gw.cfg.shaping.plans:
            raise ControlError(
                f"field plan: {plan!r} is not a plan in shaping.plans "
                f"(known: {', '.join(gw.cfg.shaping.plans) or 'none'})", 422
            )
        return plan

    app = web.Application(middlewares=[_errors], client_max_size=64 * 1024)
    app.add_routes(routes)
    return app
