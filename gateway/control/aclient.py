"""Asyncio client of the local control API (aiohttp over the unix socket).

The twin of :mod:`gateway.control.client` for asyncio programs (the TUI):
same typed helpers, same :class:`~gateway.errors.ControlError` on an error
answer, and :meth:`AsyncControlClient.follow_events` to follow the gateway
live. Retries follow :mod:`gateway.control.client`: a change (POST) is sent
once, on a new connection, and a lost answer is reason "outcome_unknown"::

    async with AsyncControlClient("/run/desanet/control.sock") as api:
        status = await api.status()
        async for event in api.follow_events(since=0):
            ...
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from gateway.control.client import (
    CONVERGE_TIMEOUT,
    IDEMPOTENT,
    LONG_POLL_MARGIN,
    decode_answer,
    events_path,
    no_answer,
    outcome_unknown,
    parse_answer,
    unreachable,
)
from gateway.control.schema import (
    ByRequest,
    ConfigApplyOut,
    ConfigApplyRequest,
    ConfigConfirmOut,
    ConfigDiffOut,
    ConfigRollbackOut,
    ConfigShowOut,
    ConfigTextRequest,
    ConfirmRequest,
    EventOut,
    EventsOut,
    ReloadOut,
    parse_request,
)
from gateway.errors import ControlError


class AsyncControlClient:
    """One aiohttp session on the control socket; use ``async with`` or call ``close()``."""

    def __init__(self, socket_path: str, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncControlClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # force_close: no kept-alive connection the daemon may have closed meanwhile,
            # so a failure after connecting means the request reached the daemon.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.socket_path, force_close=True),
                base_url="http://localhost",
            )
        return self._session

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                      timeout: float | None = None) -> Any:
        """Send one request; return the decoded JSON or raise ControlError."""
        wait = self.timeout if timeout is None else timeout
        idempotent = method in IDEMPOTENT
        for attempt in (1, 2):
            try:
                async with self._http().request(
                    method, path, json=body, timeout=aiohttp.ClientTimeout(total=wait)
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
            except aiohttp.ClientConnectorError as exc:  # nothing was sent
                raise unreachable(self.socket_path, exc.os_error) from exc
            except TimeoutError as exc:
                raise no_answer(method, path, wait) from exc
            except aiohttp.ClientError as exc:
                if idempotent and attempt == 1:
                    continue  # a read: ask once more
                if idempotent:
                    raise ControlError(f"{method} {path}: no answer from the daemon ({exc})",
                                       503, "unavailable") from exc
                raise outcome_unknown(method, path, f"the connection was cut: {exc}") from exc
            return decode_answer(method, path, status, raw)
        raise AssertionError("unreachable: the second attempt returns or raises")

    # -- typed helpers (see ControlClient) ---------------------------------------------

    async def status(self) -> dict[str, Any]:
        data = await self.request("GET", "/v1/status")
        if not isinstance(data, dict):
            raise ControlError("daemon sent an unexpected answer for GET /v1/status", 502,
                               "internal")
        return data

    async def config_show(self) -> ConfigShowOut:
        return parse_answer(ConfigShowOut, await self.request("GET", "/v1/config"),
                            "GET /v1/config")

    async def config_diff(self, text: str) -> ConfigDiffOut:
        body = parse_request(ConfigTextRequest, {"text": text}).to_json()
        return parse_answer(ConfigDiffOut, await self.request("POST", "/v1/config/diff", body),
                            "POST /v1/config/diff")

    async def config_apply(self, text: str, confirm: str | int | None = None,
                           by: str | None = None) -> ConfigApplyOut:
        body = parse_request(ConfigApplyRequest,
                             {"text": text, "confirm": confirm, "by": by}).to_json()
        return parse_answer(ConfigApplyOut,
                            await self.request("POST", "/v1/config/apply", body,
                                         timeout=CONVERGE_TIMEOUT),
                            "POST /v1/config/apply")

    async def config_confirm(self, by: str | None = None,
                             proof: str | None = None) -> ConfigConfirmOut:
        """``proof="terminal"``: the caller saw its terminal answer after the change
        (control/schema.py ConfirmRequest)."""
        body = parse_request(ConfirmRequest, {"by": by, "proof": proof}).to_json()
        return parse_answer(ConfigConfirmOut,
                            await self.request("POST", "/v1/config/confirm", body,
                                         timeout=CONVERGE_TIMEOUT),
                            "POST /v1/config/confirm")

    async def config_rollback(self, by: str | None = None) -> ConfigRollbackOut:
        body = parse_request(ByRequest, {"by": by}).to_json()
        return parse_answer(ConfigRollbackOut,
                            await self.request("POST", "/v1/config/rollback", body,
                                         timeout=CONVERGE_TIMEOUT),
                            "POST /v1/config/rollback")

    async def reload(self, by: str | None = None, timeout: float = CONVERGE_TIMEOUT) -> ReloadOut:
        body = parse_request(ByRequest, {"by": by}).to_json()
        return parse_answer(ReloadOut,
                            await self.request("POST", "/v1/reload", body, timeout=timeout),
                            "POST /v1/reload")

    async def events(self, since: int = 0, timeout: float = 25.0) -> EventsOut:
        data = await self.request("GET", events_path(since, timeout),
                                  timeout=timeout + LONG_POLL_MARGIN)
        return parse_answer(EventsOut, data, "GET /v1/events")

    async def follow_events(self, since: int = 0, timeout: float = 25.0,
                            retry: float | None = None) -> AsyncIterator[EventOut]:
        """Every event after ``since``, forever.

        With ``retry`` (seconds), an unreachable daemon (a restart) is waited
        for instead of raising; events still in the daemon's ring are not missed.
        """
        while True:
            try:
                page = await self.events(since, timeout)
            except ControlError as exc:
                if retry is None or exc.kind != "unavailable":
                    raise
                await asyncio.sleep(retry)
                continue
            for event in page.events:
                yield event
            since = page.next
