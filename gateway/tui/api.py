"""What the TUI asks the daemon: the control API's calls it uses, all async.

The app talks to :class:`TuiApi` only; :class:`ControlApi` implements it over
the control socket (:class:`~gateway.control.aclient.AsyncControlClient`), and
tests inject a fake with fixed data for snapshots. Request bodies go through
the control API's own request models first, so a bad value typed into a form
gets the same message the CLI and the daemon give, before anything is sent.
The TUI never imports a subsystem: everything it shows comes through here,
from the host's own counters (:mod:`gateway.tui.host`) or from diagnostics.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import urlencode

from gateway.control.aclient import AsyncControlClient
from gateway.control.client import UNREACHABLE
from gateway.control.schema import (
    AuthRequest,
    ConfigShowOut,
    DeauthRequest,
    EventsOut,
    PlanRequest,
    VoucherCreateRequest,
    VoucherReleaseRequest,
    VoucherRevokeRequest,
    parse_request,
)
from gateway.errors import ControlError


def daemon_down(exc: BaseException) -> bool:
    """True when ``exc`` says nothing listens on the control socket (not a slow answer)."""
    return isinstance(exc, ControlError) and exc.reason == UNREACHABLE


class TuiApi(Protocol):
    """The control API as the TUI uses it; every call raises ControlError on failure."""

    socket_path: str

    async def status(self) -> dict[str, Any]: ...
    async def clients(self) -> list[dict[str, Any]]: ...
    async def config_show(self) -> ConfigShowOut: ...
    async def services(self) -> dict[str, Any]: ...
    async def vouchers(self, batch: str | None = None) -> list[dict[str, Any]]: ...
    async def events(self, since: int, timeout: float) -> EventsOut: ...
    async def authorize(self, mac: str, duration: str | None, plan: str | None,
                        force: bool = False) -> dict[str, Any]: ...
    async def deauthorize(self, mac: str) -> dict[str, Any]: ...
    async def change_plan(self, mac: str, plan: str | None) -> dict[str, Any]: ...
    async def create_vouchers(self, count: int, duration: str, plan: str | None,
                              name: str | None, seller: str | None = None
                              ) -> dict[str, Any]: ...
    async def revoke_voucher(self, code: str) -> dict[str, Any]: ...
    async def release_voucher(self, code: str, mac: str | None) -> dict[str, Any]: ...
    async def prefetch(self) -> dict[str, Any]: ...
    async def close(self) -> None: ...


def _body(model: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Validate as the daemon will (raises RequestInvalid naming the field)."""
    return parse_request(model, data).to_json()


class ControlApi:
    """:class:`TuiApi` over the control socket."""

    def __init__(self, socket_path: str, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self._client = AsyncControlClient(socket_path, timeout)

    async def close(self) -> None:
        await self._client.close()

    async def _get(self, path: str) -> Any:
        return await self._client.request("GET", path)

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = await self._client.request("POST", path, body)
        return data if isinstance(data, dict) else {}

    async def status(self) -> dict[str, Any]:
        return await self._client.status()

    async def clients(self) -> list[dict[str, Any]]:
        rows = (await self._get("/v1/clients")).get("clients")
        return rows if isinstance(rows, list) else []

    async def config_show(self) -> ConfigShowOut:
        return await self._client.config_show()

    async def services(self) -> dict[str, Any]:
        data = await self._get("/v1/services")
        return data if isinstance(data, dict) else {"enabled": False}

    async def vouchers(self, batch: str | None = None) -> list[dict[str, Any]]:
        path = "/v1/vouchers" + (f"?{urlencode({'batch': batch})}" if batch else "")
        rows = (await self._get(path)).get("vouchers")
        return rows if isinstance(rows, list) else []

    async def events(self, since: int, timeout: float) -> EventsOut:
        return await self._client.events(since, timeout)

    async def authorize(self, mac: str, duration: str | None, plan: str | None,
                        force: bool = False) -> dict[str, Any]:
        body = _body(AuthRequest, {"mac": mac, "duration": duration, "plan": plan,
                                   "force": force})
        return await self._post("/v1/clients/auth", body)

    async def deauthorize(self, mac: str) -> dict[str, Any]:
        return await self._post("/v1/clients/deauth", _body(DeauthRequest, {"mac": mac}))

    async def change_plan(self, mac: str, plan: str | None) -> dict[str, Any]:
        return await self._post("/v1/clients/plan",
                                _body(PlanRequest, {"mac": mac, "plan": plan}))

    async def create_vouchers(self, count: int, duration: str, plan: str | None,
                              name: str | None, seller: str | None = None) -> dict[str, Any]:
        body = _body(VoucherCreateRequest, {"count": count, "duration": duration,
                                            "plan": plan, "name": name, "seller": seller})
        return await self._post("/v1/vouchers", body)

    async def revoke_voucher(self, code: str) -> dict[str, Any]:
        return await self._post("/v1/vouchers/revoke", _body(VoucherRevokeRequest, {"code": code}))

    async def release_voucher(self, code: str, mac: str | None) -> dict[str, Any]:
        return await self._post("/v1/vouchers/release",
                                _body(VoucherReleaseRequest, {"code": code, "mac": mac}))

    async def prefetch(self) -> dict[str, Any]:
        data = await self._client.request("POST", "/v1/services/prefetch", {}, timeout=300.0)
        return data if isinstance(data, dict) else {}
