"""The government-services site in one process: a small aiohttp origin on localhost as the
upstream, LocalServices.handle as the villagers' server. Offline means no answer arrives:
the origin hangs up on every request, as a cut link does (since issue #10 a 5xx answer is
the origin's word, passed through, and does not make a service offline): banner,
prefetched form, one-time token with Post/Redirect/Get, whole bodies and queue limits."""

from __future__ import annotations

import asyncio
import gzip
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.cache.forms import TOKEN_FIELD
from gateway.cache.htmledit import BANNER_ID
from gateway.cache.service import LocalServices
from gateway.config import Config, parse_config

HOME = ('<!doctype html><html><head><meta charset="utf-8"><title>Home</title></head><body>'
        '<a href="formulir">Formulir</a> <a href="info">Info</a> <a href="http://other.invalid/luar">out</a></body></html>')
FORM = ('<!doctype html><html><head><title>Formulir</title></head><body>'
        '<form method="post" action="formulir"><input name="nama"></form></body></html>')
INFO = "<!doctype html><html><body><p>Informasi</p></body></html>"


class Origin:
    def __init__(self) -> None:
        self.down = False
        self.hits: dict[str, int] = {}
        self.posts: list[tuple[str | None, bytes]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        if self.down and request.method == "POST":  # "not processed": the form is queued
            return web.Response(status=503, text="down")
        if self.down:  # no answer at all: the connection is closed under the request
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=503, text="never sent")
        if request.method == "POST":
            self.posts.append((request.headers.get("Idempotency-Key"), await request.content.read()))
            return web.Response(status=201, text="ok")
        if request.path == "/gz":  # compressed, with the upstream's own content policy
            return web.Response(body=gzip.compress(INFO.encode()), headers={
                "Content-Type": "text/html; charset=utf-8", "Content-Encoding": "gzip",
                "Cache-Control": "max-age=3600", "Content-Security-Policy": "default-src 'self'"})
        pages = {"/": HOME, "/formulir": FORM, "/info": INFO}
        if request.path not in pages:
            return web.Response(status=404, text="no")
        return web.Response(text=pages[request.path], content_type="text/html",
                            headers={"Cache-Control": "max-age=3600"})


def make_cfg(upstream: str, **local: Any) -> Config:
    return parse_config({
        "site": {"name": "Hotspot", "village": "Desa", "timezone": "Asia/Makassar"},
        "network": {"lan_interface": "br-lan", "wan_interface": "wan0",
                    "lan_address": "10.42.0.1/24"},
        "dhcp": {"range_start": "10.42.0.100", "range_end": "10.42.0.250"},
        "local_services": {
            "enabled": True, "request_timeout": "2s", **local,
            "services": [{"slug": "dukcapil", "title_id": "Dukcapil", "title_en": "Dukcapil",
                          "upstream": upstream, "prefetch": ["/"], "queue_posts": True}],
        },
    })


class Site:
    def __init__(self, origin: Origin, client: TestClient[Any, Any], services: LocalServices,
                 holder: dict[str, Config]) -> None:
        self.origin, self.client, self.services, self.holder = origin, client, services, holder

    def configure(self, **local: Any) -> None:
        upstream = self.holder["cfg"].local_services.services[0].upstream
        self.holder["cfg"] = make_cfg(upstream, **local)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    origin = Origin()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", origin.handle)
    async with TestServer(app) as server:
        holder = {"cfg": make_cfg(str(server.make_url("")).rstrip("/"))}
        services = LocalServices(lambda: holder["cfg"], tmp_path)
        front = web.Application()
        front.router.add_route("*", "/{tail:.*}", services.handle)
        try:
            async with TestClient(TestServer(front)) as client:
                yield Site(origin, client, services, holder)
        finally:
            await services.stop()


def token_of(html: str) -> str:
    match = re.search(rf'name="{TOKEN_FIELD}" value="([^"]+)"', html)
    assert match, f"no form token in {html}"
    return match.group(1)


async def test_offline_copy_has_a_banner_and_the_live_page_has_none(site: Site) -> None:
    live = await site.client.get("/dukcapil/info")
    assert live.status == 200 and BANNER_ID not in await live.text()
    site.origin.down = True
    # A page never stored: the 504 page; it also tells the site the upstream is down.
    assert (await site.client.get("/dukcapil/missing")).status == 504
    copy = await site.client.get("/dukcapil/info")
    text = await copy.text()
    assert copy.status == 200 and BANNER_ID in text
    assert re.search(r"Salinan offline</strong> dari \d+ \w+ \d{4} \d\d:\d\d WITA", text), text
    assert copy.headers["Cache-Control"] == "no-store" and "ETag" not in copy.headers
    assert int(copy.headers["Content-Length"]) == len(text.encode())
    head = await site.client.head("/dukcapil/info")  # HEAD: the same fields, no body
    assert head.status == 200 and head.headers["Content-Length"] == copy.headers["Content-Length"]
    assert await head.read() == b""
    # The client's own copy is not reused: a conditional request still gets the banner.
    cond = await site.client.get("/dukcapil/info", headers={"If-Modified-Since":
                                                             "Sun, 01 Jan 2040 00:00:00 GMT"})
    assert cond.status == 200 and BANNER_ID in await cond.text()
    site.origin.down = False
    await site.services.probe()
    back = await site.client.get("/dukcapil/info")
    assert BANNER_ID not in await back.text()


async def test_prefetch_finds_and_keeps_the_form_page(site: Site) -> None:
    run = await site.services.prefetch()
    base = site.holder["cfg"].local_services.services[0].upstream
    assert run["forms"] == {"dukcapil": [base + "/formulir"]}
    assert site.services.store.pins() == {f"GET {base}/", f"GET {base}/formulir"}
    assert site.origin.hits["/info"] == 1  # linked, fetched, no form: not kept
    site.origin.down = True
    assert (await site.client.get("/dukcapil/missing")).status == 504  # now known down
    page = await site.client.get("/dukcapil/formulir")  # never asked for by a villager
    text = await page.text()
    assert page.status == 200 and BANNER_ID in text and TOKEN_FIELD in text
    assert site.origin.hits["/formulir"] == 1


async def test_same_token_queues_once_and_lands_on_one_receipt(site: Site) -> None:
    token = token_of(await (await site.client.get("/dukcapil/formulir")).text())
    site.origin.down = True
    answers = []
    for _ in range(2):
        resp = await site.client.post("/dukcapil/formulir", data={"nama": "Budi", TOKEN_FIELD: token},
                                      allow_redirects=False)
        assert resp.status == 303, await resp.text()
        answers.append(resp.headers["Location"])
    assert answers[0] == answers[1] and answers[0].startswith("/kiriman?ref=DN-")
    for _ in range(2):  # refreshing the receipt is a GET: it queues nothing
        receipt = await site.client.get(answers[0])
        assert receipt.status == 200 and "Formulir Anda tersimpan" in await receipt.text()
    assert site.services.outbox.counts()["queued"] == 1
    (sub,) = site.services.outbox.list()
    assert sub.body == b"nama=Budi"  # the token never reaches the upstream
    # Another page view gives another token: a second, deliberate form is its own submission.
    site.origin.down = False
    await site.services.probe()
    other = token_of(await (await site.client.get("/dukcapil/formulir")).text())
    assert other != token


@pytest.mark.parametrize("ref", ["DN-ZZZZ-ZZZZ", "not-a-reference", "%3Cscript%3E"])
async def test_a_wrong_reference_number_is_a_page_not_found(site: Site, ref: str) -> None:
    token = token_of(await (await site.client.get("/dukcapil/formulir")).text())
    site.origin.down = True
    posted = await site.client.post("/dukcapil/formulir", data={"nama": "Budi", TOKEN_FIELD: token},
                                    allow_redirects=False)
    known = await site.client.get(posted.headers["Location"])  # positive control: a real receipt
    assert known.status == 200 and "Formulir Anda tersimpan" in await known.text()
    wrong = await site.client.get(f"/kiriman?ref={ref}")
    body = await wrong.text()
    assert wrong.status == 404
    assert "<title>Halaman tidak ditemukan" in body and "<script>" not in body


async def test_a_1mb_form_is_stored_whole(site: Site) -> None:
    site.origin.down = True
    body = bytes(range(256)) * 4096  # 1 MiB, the default limit
    resp = await site.client.post("/dukcapil/formulir", data=body, allow_redirects=False,
                                  headers={"Content-Type": "application/octet-stream"})
    assert resp.status == 303
    (sub,) = site.services.outbox.list()
    assert sub.body == body


async def test_too_large_forms_are_refused_and_nothing_is_stored(site: Site) -> None:
    site.origin.down = True
    over = b"x" * (1024 * 1024 + 1)
    resp = await site.client.post("/dukcapil/formulir", data=over,
                                  headers={"Content-Type": "application/octet-stream"})
    assert resp.status == 413 and "Formulir terlalu besar" in await resp.text()

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for _ in range(17):
            yield b"y" * 65536

    resp = await site.client.post("/dukcapil/formulir", data=chunked())
    assert resp.status == 413
    assert sum(site.services.outbox.counts().values()) == 0
    assert site.origin.posts == []


async def test_queue_limits_refuse_cleanly(site: Site) -> None:
    site.configure(queue_per_client_hour=1)
    site.origin.down = True
    first = await site.client.post("/dukcapil/formulir", data={"nama": "a"}, allow_redirects=False)
    assert first.status == 303
    second = await site.client.post("/dukcapil/formulir", data={"nama": "b"})
    assert second.status == 429 and "Formulir belum bisa disimpan" in await second.text()
    site.configure(queue_max_forms=1)
    third = await site.client.post("/dukcapil/formulir", data={"nama": "c"})
    assert third.status == 503 and "Antrean formulir" in await third.text()
    site.configure(queue_min_free_disk="1000000gb")
    fourth = await site.client.post("/dukcapil/formulir", data={"nama": "d"})
    assert fourth.status == 503 and "Penyimpanan hotspot" in await fourth.text()
    assert site.services.outbox.counts()["queued"] == 1


async def test_catalog_and_receipt_dates_are_local(site: Site) -> None:
    await site.services.prefetch()
    site.origin.down = True
    assert (await site.client.get("/dukcapil/missing")).status == 504
    catalog = await (await site.client.get("/")).text()
    assert re.search(r"Salinan offline dari \d+ \w+ \d{4} \d\d:\d\d WITA", catalog), catalog
    resp = await site.client.post("/dukcapil/formulir", data={"nama": "a"}, allow_redirects=False)
    status = await (await site.client.get(resp.headers["Location"].replace("&baru=1", ""))).text()
    assert re.search(r"Disimpan: \d+ \w+ \d{4} \d\d:\d\d WITA", status), status


async def test_compressed_page_with_a_policy_is_inflated_and_keeps_the_policy(site: Site) -> None:
    live = await site.client.get("/dukcapil/gz", auto_decompress=False)
    assert live.headers["Content-Encoding"] == "gzip"  # positive control: passed on as it came
    site.origin.down = True
    assert (await site.client.get("/dukcapil/missing")).status == 504
    copy = await site.client.get("/dukcapil/gz", auto_decompress=False)
    raw = await copy.read()
    assert "Content-Encoding" not in copy.headers
    assert copy.headers["Content-Security-Policy"] == "default-src 'self'"
    assert raw.startswith(b"<!doctype html><html><body><div id=") and b' style="' not in raw
    assert raw.endswith(b"<p>Informasi</p></body></html>")


async def test_a_prefetch_cut_short_is_retried_on_the_next_tick(site: Site) -> None:
    site.origin.down = True  # the box booted while the link was down
    await site.services.scheduled_prefetch()
    assert "error" in site.services.last_prefetch["results"].values()
    assert site.services.last_prefetch["forms"] == {"dukcapil": []}
    site.origin.down = False
    await site.services.scheduled_prefetch()
    base = site.holder["cfg"].local_services.services[0].upstream
    assert site.services.last_prefetch["forms"] == {"dukcapil": [base + "/formulir"]}
    hits = dict(site.origin.hits)
    await site.services.scheduled_prefetch()  # complete now, and not due: nothing fetched
    assert site.origin.hits == hits


async def test_an_upload_cut_short_stores_nothing(site: Site) -> None:
    site.origin.down = True
    host, port = site.client.server.host, site.client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /dukcapil/formulir HTTP/1.1\r\nHost: layanan.desa\r\n"
                 b"Content-Type: application/x-www-form-urlencoded\r\n"
                 b"Content-Length: 100000\r\n\r\n" + b"nama=" + b"x" * 40000)
    await writer.drain()
    writer.write_eof()  # the phone lost the connection mid-upload
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    # No receipt (aiohttp drops the request with the connection, or the page says 400).
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400 "), answer[:100]
    assert sum(site.services.outbox.counts().values()) == 0
    # Positive control: the same upload, whole, is stored.
    whole = await site.client.post("/dukcapil/formulir", data=b"nama=" + b"x" * 99995,
                                   headers={"Content-Type": "application/x-www-form-urlencoded"},
                                   allow_redirects=False)
    assert whole.status == 303
    (sub,) = site.services.outbox.list()
    assert len(sub.body) == 100000
