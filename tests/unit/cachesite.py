"""One harness for RFC 9110/9111 tests of the government-services cache.

A real aiohttp origin on localhost answers from a script (per path: a fixed
answer, a list of answers in turn, or a callable) and records every request it
receives; ``LocalServices.handle`` serves the villagers' side on another port,
exactly as the daemon does for http://layanan.desa/. Tests talk to the cache
with ``site.get("/svc/path", headers=...)`` and read ``site.origin.seen``.

Use it through the ``cache_site`` fixture (tests/unit/conftest.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from gateway.cache.service import LocalServices
from gateway.config import Config, parse_config

SLUG = "svc"


@dataclass
class Answer:
    """One scripted origin answer."""

    status: int = 200
    headers: Mapping[str, str] | Sequence[tuple[str, str]] = field(default_factory=dict)
    body: bytes | str = b"body"

    def response(self) -> web.Response:
        body = self.body.encode() if isinstance(self.body, str) else self.body
        resp = web.Response(status=self.status, body=body)
        pairs = self.headers.items() if isinstance(self.headers, Mapping) else self.headers
        for name, value in pairs:
            resp.headers.add(name, value)
        return resp


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Script = Answer | list[Answer] | Handler


@dataclass
class Seen:
    """A request as the origin received it."""

    method: str
    path_qs: str
    headers: dict[str, str]  # lower-case names, repeated fields joined with ", "
    body: bytes


class ScriptedOrigin:
    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.seen: list[Seen] = []

    def script(self, path: str, *answers: Answer | Handler) -> None:
        """What ``path`` (with its query, if any) answers: one answer always, several in
        turn (the last one repeats), or a handler."""
        if len(answers) == 1:
            self.scripts[path] = answers[0]
        else:
            self.scripts[path] = [a for a in answers if isinstance(a, Answer)]

    def requests_for(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path_qs == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self.seen.append(Seen(request.method, request.path_qs, headers, await request.read()))
        script = self.scripts.get(request.path_qs, self.scripts.get(request.path))
        if script is None:
            return web.Response(status=404, text="not scripted")
        if isinstance(script, Answer):
            return script.response()
        if isinstance(script, list):
            answer = script.pop(0) if len(script) > 1 else script[0]
            return answer.response()
        return await script(request)


def site_config(upstream: str, **service: Any) -> Config:
    return parse_config({
        "site": {"name": "Hotspot", "village": "Desa", "timezone": "Asia/Jakarta"},
        "network": {"lan_interface": "br-lan", "wan_interface": "wan0",
                    "lan_address": "10.42.0.1/24"},
        "dhcp": {"range_start": "10.42.0.100", "range_end": "10.42.0.250"},
        "local_services": {
            "enabled": True, "request_timeout": "2s",
            "services": [{"slug": SLUG, "title_id": "Layanan", "title_en": "Service",
                          "upstream": upstream, "prefetch": [], **service}],
        },
    })


class CacheSite:
    def __init__(self, origin: ScriptedOrigin, client: TestClient[Any, Any],
                 services: LocalServices) -> None:
        self.origin, self.client, self.services = origin, client, services

    async def request(self, method: str, path: str, **kw: Any) -> tuple[ClientResponse, bytes]:
        """``path`` is the origin path ("/a"); it is asked for under the service's slug."""
        async with self.client.request(method, f"/{SLUG}{path}", allow_redirects=False,
                                       **kw) as resp:
            return resp, await resp.read()

    async def get(self, path: str, **kw: Any) -> tuple[ClientResponse, bytes]:
        return await self.request("GET", path, **kw)

    async def settled(self, method: str, path: str, **kw: Any) -> tuple[ClientResponse, bytes]:
        """``request``, returned once the cache is done with it: a body may be committed
        to the store just after the villager has it, and the next request must see it."""
        resp, body = await self.request(method, path, **kw)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while self.services.proxy.fetches_in_flight():
            assert loop.time() < deadline, "the cache kept fetching"
            await asyncio.sleep(0.005)
        return resp, body


@asynccontextmanager
async def cache_site(tmp_path: Path, **service: Any) -> AsyncIterator[CacheSite]:
    """A scripted origin and the cache in front of it; ``service`` sets GovService fields
    (e.g. ``queue_posts=True``, ``offline_for="1h"``)."""
    origin = ScriptedOrigin()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", origin.handle)
    async with TestServer(app) as server:
        cfg = site_config(str(server.make_url("")).rstrip("/"), **service)
        services = LocalServices(lambda: cfg, tmp_path)
        front = web.Application()
        front.router.add_route("*", "/{tail:.*}", services.handle)
        try:
            async with TestClient(TestServer(front)) as client:
                yield CacheSite(origin, client, services)
        finally:
            await services.stop()
