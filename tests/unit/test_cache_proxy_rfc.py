"""The cache as a proxy (issue #10, "Behave like a proxy"): what reaches the origin, what
the villager gets back when the origin answers with an error, per-URL health,
invalidation by unsafe methods. A real scripted origin (tests/unit/cachesite.py) answers
and records what it received; each table has its negative cases beside the positive ones."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.cache import forward
from gateway.cache.health import MAX_FAILING_URLS, ServiceHealth
from tests.unit.cachesite import Answer, cache_site

FRESH = {"Cache-Control": "max-age=3600"}
STALE_OK = {"Cache-Control": "max-age=0, stale-if-error=3600", "ETag": '"v1"'}


# -- 1. request headers ----------------------------------------------------------------------

# (header sent by the villager, value, whether the origin sees it)
FORWARDING = [
    ("X-Custom", "yes", True),  # unknown end-to-end fields pass
    ("Accept", "text/html", True),
    ("Authorization", "Bearer t", True),
    ("Cookie", "a=1", True),
    ("Referer", "http://layanan.desa/svc/", True),
    ("Origin", "http://layanan.desa", True),
    ("DNT", "1", True),
    ("Keep-Alive", "timeout=5", False),  # hop-by-hop (RFC 9110 §7.6.1)
    ("Proxy-Authorization", "Basic eA==", False),
    ("TE", "trailers", False),
    ("Upgrade", "websocket", False),
    ("X-Forwarded-For", "10.42.0.7", False),  # privacy policy
    ("Forwarded", "for=10.42.0.7", False),
    ("X-Real-IP", "10.42.0.7", False),
    ("X-Desanet-Reference", "DN-AAAA-BBBB", False),  # the outbox's to set
]


@pytest.mark.parametrize(("name", "value", "forwarded"), FORWARDING)
async def test_end_to_end_fields_reach_the_origin(tmp_path: Path, name: str, value: str,
                                                  forwarded: bool) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(200, {"Cache-Control": "no-store"}))
        resp, _ = await site.get("/a", headers={name: value})
        assert resp.status == 200
        (seen,) = site.origin.requests_for("/a")
        assert (seen.headers.get(name.lower()) == value) is forwarded
        assert seen.headers["via"] == "1.1 desanet"


async def test_fields_named_by_connection_are_dropped_and_via_is_appended(tmp_path: Path) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(200, {"Cache-Control": "no-store"}))
        await site.get("/a", headers={"Connection": "X-Secret", "X-Secret": "1", "X-Open": "2",
                                      "Via": "1.1 phone"})
        (seen,) = site.origin.requests_for("/a")
        assert "x-secret" not in seen.headers and seen.headers["x-open"] == "2"
        assert seen.headers["via"] == "1.1 phone, 1.1 desanet"
        assert seen.headers["host"] != "layanan.desa"  # the upstream's own


async def test_a_compressed_request_body_goes_upstream_decoded_without_its_coding(
        tmp_path: Path) -> None:
    """aiohttp's server decodes a request body with Content-Encoding; passing the field on
    with the decoded bytes would make the origin decode them again."""
    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the decoded size counts
        yield gzip.compress(b"nama=Budi")

    async with cache_site(tmp_path) as site:
        site.origin.script("/form", Answer(201, {}, "ok"))
        resp, _ = await site.request("POST", "/form", data=chunked(),
                                     headers={"Content-Encoding": "gzip",
                                              "Content-Type": "application/x-www-form-urlencoded"})
        assert resp.status == 201
        (seen,) = site.origin.requests_for("/form")
        assert seen.body == b"nama=Budi" and "content-encoding" not in seen.headers
        assert seen.headers["content-type"] == "application/x-www-form-urlencoded"


def test_request_headers_pure() -> None:
    req = {"if-none-match": '"x"', "range": "bytes=0-1", "if-range": '"x"', "accept": "a",
           "host": "layanan.desa", "content-length": "3", "expect": "100-continue"}
    assert forward.request_headers(req) == {"if-none-match": '"x"', "range": "bytes=0-1",
                                            "if-range": '"x"', "accept": "a", "via": "1.1 desanet"}
    assert forward.request_headers(req, conditionals=False, ranges=False) == {
        "accept": "a", "via": "1.1 desanet"}


# The villager's preconditions on a miss: forwarded, and the answer passed through unstored.
CONDITIONALS = [
    ("If-None-Match", '"v1"', 304),
    ("If-Modified-Since", "Sun, 01 Jan 2040 00:00:00 GMT", 304),
    ("If-Match", '"other"', 412),
    ("If-Unmodified-Since", "Sun, 01 Jan 2000 00:00:00 GMT", 412),
]


@pytest.mark.parametrize(("name", "value", "status"), CONDITIONALS)
async def test_a_miss_forwards_the_villagers_conditional_and_stores_nothing(
        tmp_path: Path, name: str, value: str, status: int) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(status, {**FRESH, "ETag": '"v1"'}, b""),
                           Answer(200, {**FRESH, "ETag": '"v1"'}, b"full"))
        resp, _ = await site.get("/a", headers={name: value})
        assert resp.status == status
        assert site.origin.requests_for("/a")[0].headers[name.lower()] == value
        # Negative: that answer was not stored; a plain GET goes to the origin for the body.
        resp, body = await site.get("/a")
        assert (resp.status, body) == (200, b"full")
        assert len(site.origin.requests_for("/a")) == 2
        assert name.lower() not in site.origin.requests_for("/a")[1].headers


async def test_a_revalidation_sends_the_caches_validators_not_the_villagers(tmp_path: Path) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(200, {"Cache-Control": "max-age=0", "ETag": '"v1"'}, b"x"),
                           Answer(304, {"Cache-Control": "max-age=0", "ETag": '"v1"'}, b""))
        await site.get("/a")
        resp, body = await site.get("/a", headers={"If-None-Match": '"mine"'})
        assert (resp.status, body) == (200, b"x")  # "mine" does not match the stored "v1"
        assert site.origin.requests_for("/a")[1].headers["if-none-match"] == '"v1"'


async def test_a_varyd_revalidation_carries_the_varying_field(tmp_path: Path) -> None:
    """RFC 9111 §4.1/§4.3.1: the revalidation carries the fields the stored Vary names."""
    async with cache_site(tmp_path) as site:
        headers = {"Cache-Control": "max-age=0", "ETag": '"fr"', "Vary": "X-Lang"}
        site.origin.script("/a", Answer(200, headers, b"bonjour"), Answer(304, headers, b""))
        await site.get("/a", headers={"X-Lang": "fr"})
        resp, body = await site.get("/a", headers={"X-Lang": "fr"})
        assert (resp.status, body) == (200, b"bonjour")
        second = site.origin.requests_for("/a")[1]
        assert second.headers["x-lang"] == "fr" and second.headers["if-none-match"] == '"fr"'


# -- 2. the origin's answer passed through ---------------------------------------------------

@pytest.mark.parametrize("status", [500, 502, 503, 504, 507, 599])
async def test_an_origin_error_without_a_copy_is_passed_through(tmp_path: Path,
                                                                 status: int) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(status, {"X-Origin": "1", "Retry-After": "7"},
                                        f"origin says {status}"))
        resp, body = await site.get("/a")
        assert (resp.status, body) == (status, f"origin says {status}".encode())
        assert resp.headers["X-Origin"] == "1" and resp.headers["Retry-After"] == "7"
        assert "fwd=miss" in resp.headers["Cache-Status"]


# (stored answer's headers, origin status on revalidation, villager gets)
STALE_ON_ERROR = [
    (STALE_OK, 503, (200, b"copy")),  # stale-if-error: the copy stands in
    (STALE_OK, 500, (200, b"copy")),
    ({"Cache-Control": "max-age=0", "ETag": '"v1"'}, 503, (503, b"error")),  # no window
    ({"Cache-Control": "max-age=0, must-revalidate, stale-if-error=3600"}, 503, (503, b"error")),
    (STALE_OK, 507, (507, b"error")),  # not an error for stale serving: the origin's word
]


async def test_offline_for_lets_the_copy_stand_in_for_a_503(tmp_path: Path) -> None:
    async with cache_site(tmp_path, offline_for="1h") as site:
        site.origin.script("/a", Answer(200, {"Cache-Control": "max-age=0"}, b"copy"),
                           Answer(503, {}, b"error"))
        await site.get("/a")
        resp, body = await site.get("/a")
        assert (resp.status, body) == (200, b"copy")
        assert "stale-if-error" in resp.headers["Cache-Status"]


@pytest.mark.parametrize(("stored", "status", "expected"), STALE_ON_ERROR)
async def test_a_stored_copy_stands_in_for_an_error_only_when_allowed(
        tmp_path: Path, stored: dict[str, str], status: int, expected: tuple[int, bytes]) -> None:
    # Stale for 100 s, past the service's offline_for of 1 s: only the response's own
    # stale-if-error opens a window.
    async with cache_site(tmp_path, offline_for="1s") as site:
        site.origin.script("/a", Answer(200, {**stored, "Age": "100"}, b"copy"),
                           Answer(status, {}, b"error"))
        await site.get("/a")
        resp, body = await site.get("/a")
        assert (resp.status, body) == expected
        # Never replaced by the error: the copy is still there for the next error.
        assert site.services.store.lookup(f"GET {site.services.services()['svc'].upstream}/a")


async def test_no_answer_at_all_is_our_page(tmp_path: Path) -> None:
    async with cache_site(tmp_path) as site:
        async def hang_up(request: Any) -> Any:
            request.transport.close()
            raise ConnectionResetError

        site.origin.script("/a", hang_up)
        resp, body = await site.get("/a")
        assert resp.status == 504 and "upstream-unreachable" in resp.headers["Cache-Status"]
        assert b"<html" in body.lower()
        assert site.services.health_states()["svc"] == "offline"


# (queue_posts, origin status, villager gets, queued)
UNSAFE_ERRORS = [
    (False, 500, 500, 0),
    (False, 503, 503, 0),
    (True, 500, 500, 0),  # processed and failed: the origin's word
    (True, 502, 502, 0),
    (True, 503, 303, 1),  # "not processed": stored and forwarded later
    (True, 201, 201, 0),
]


@pytest.mark.parametrize(("queue", "status", "expected", "queued"), UNSAFE_ERRORS)
async def test_unsafe_answers_pass_through_except_a_503_for_a_queueing_service(
        tmp_path: Path, queue: bool, status: int, expected: int, queued: int) -> None:
    async with cache_site(tmp_path, queue_posts=queue) as site:
        site.origin.script("/form", Answer(status, {"X-Origin": "1"}, "answer"))
        resp, body = await site.request("POST", "/form", data={"a": "1"})
        assert resp.status == expected
        if expected == status:
            assert body == b"answer" and resp.headers["X-Origin"] == "1"
        assert sum(site.services.outbox.counts().values()) == queued
        assert site.services.health_states()["svc"] == "online"


# -- 3. health per URL ------------------------------------------------------------------------

async def test_one_failing_url_does_not_make_the_service_offline(tmp_path: Path) -> None:
    async with cache_site(tmp_path, queue_posts=True) as site:
        site.origin.script("/broken", Answer(500, {}, "boom"))
        site.origin.script("/form", Answer(201, {}, "received"))
        site.origin.script("/", Answer(200, FRESH, "home"))
        for _ in range(3):
            assert (await site.get("/broken"))[0].status == 500
        assert site.services.health_states()["svc"] == "online"
        health = site.services.status_json()["services"]["svc"]
        assert list(health["failing_urls"]) == [site.services.services()["svc"].upstream + "/broken"]
        resp, body = await site.request("POST", "/form", data={"a": "1"})
        assert (resp.status, body) == (201, b"received")  # reached the origin, not queued
        assert len(site.origin.requests_for("/form")) == 1
        catalog = await (await site.client.get("/")).text()
        assert "Terhubung" in catalog  # the badge: connected
        # A good answer for that URL clears it.
        site.origin.script("/broken", Answer(200, {}, "fixed"))
        assert (await site.get("/broken"))[1] == b"fixed"
        assert site.services.status_json()["services"]["svc"]["failing_urls"] == {}


# (outcomes in turn: an HTTP status or "none" for no answer, state after them)
HEALTH = [
    ([200], "online"),
    ([500, 503, 599], "online"),  # answers, however bad: the server is reachable
    (["none"], "offline"),
    (["none", 503], "online"),  # an answer again: back
    ([200, "none"], "offline"),
]


@pytest.mark.parametrize(("outcomes", "state"), HEALTH)
def test_service_state_comes_from_connection_level_outcomes(outcomes: list[int | str],
                                                            state: str) -> None:
    health = ServiceHealth("svc")
    for n, outcome in enumerate(outcomes):
        if outcome == "none":
            health.record_error(float(n), "ClientConnectorError")
        else:
            assert isinstance(outcome, int)
            health.record_answer(float(n), "http://o/a", outcome)
    assert health.state == state


def test_failing_urls_are_per_url_bounded_and_cleared_by_a_good_answer() -> None:
    health = ServiceHealth("svc")
    for n in range(40):
        health.record_answer(float(n), f"http://o/{n}", 500)
    assert len(health.failing) == MAX_FAILING_URLS
    assert "http://o/39" in health.failing and "http://o/0" not in health.failing  # newest kept
    health.record_answer(50.0, "http://o/39", 200)
    assert "http://o/39" not in health.failing and "http://o/38" in health.failing
    health.record_answer(51.0, "http://o/38", 404)  # the origin's word, not a failure
    assert "http://o/38" not in health.failing


async def test_a_connection_failure_still_makes_the_service_offline(tmp_path: Path) -> None:
    """Negative of the above: no answer at all is what "offline" means."""
    async with cache_site(tmp_path, queue_posts=True) as site:
        async def hang_up(request: Any) -> Any:
            request.transport.close()
            raise ConnectionResetError

        site.origin.script("/a", hang_up)
        await site.get("/a")
        assert site.services.health_states()["svc"] == "offline"
        resp, _ = await site.request("POST", "/form", data={"a": "1"})
        assert resp.status == 303  # queued at once
        assert site.origin.requests_for("/form") == []


# -- 4. invalidation after unsafe requests ---------------------------------------------------

# (method, answer status, answer headers, paths whose stored copy is dropped)
INVALIDATION = [
    ("POST", 200, {}, {"/x/y"}),
    ("PUT", 204, {}, {"/x/y"}),
    ("DELETE", 200, {}, {"/x/y"}),
    ("PATCH", 200, {}, {"/x/y"}),
    ("POST", 303, {"Location": "/a"}, {"/x/y", "/a"}),
    ("POST", 201, {"Location": "b"}, {"/x/y", "/x/b"}),  # relative to the target
    ("POST", 200, {"Content-Location": "../a"}, {"/x/y", "/a"}),
    ("POST", 200, {"Location": "{origin}/a", "Content-Location": "/x/b?q=1#frag"},
     {"/x/y", "/a", "/x/b?q=1"}),
    ("POST", 201, {"Location": "http://other.invalid/a"}, {"/x/y"}),  # another origin: not ours
    ("POST", 500, {"Location": "/a"}, set()),  # an error invalidates nothing
    ("POST", 404, {}, set()),
]
STORED = ["/x/y", "/a", "/x/b", "/x/b?q=1"]


@pytest.mark.parametrize(("method", "status", "headers", "dropped"), INVALIDATION)
async def test_an_unsafe_answer_invalidates_its_uris_on_the_same_service(
        tmp_path: Path, method: str, status: int, headers: dict[str, str],
        dropped: set[str]) -> None:
    async with cache_site(tmp_path) as site:
        base = site.services.services()["svc"].upstream
        for path in STORED:
            site.origin.script(path, Answer(200, FRESH, f"copy {path}"))
            await site.get(path)
        answer = {k: v.replace("{origin}", base) for k, v in headers.items()}
        site.origin.scripts["/x/y"] = lambda request: _answer(request, status, answer, method)
        resp, _ = await site.request(method, "/x/y", data=b"d")
        assert resp.status == status
        still = {p for p in STORED if site.services.store.lookup(f"GET {base}{p}")}
        assert still == set(STORED) - dropped


async def _answer(request: web.Request, status: int, headers: dict[str, str],
                  method: str) -> web.StreamResponse:
    if request.method == "GET":
        return web.Response(text="copy", headers=FRESH)
    assert request.method == method
    return web.Response(status=status, headers=headers, text="done")


def test_invalidated_keys_stay_under_the_service_base() -> None:
    base = "http://gov.example/app"
    target = "http://gov.example/app/f/submit"
    keys = forward.invalidated_keys(base, target, {"location": "/app/ok",
                                                   "content-location": "/elsewhere/x"})
    assert keys == [f"GET {target}", "GET http://gov.example/app/ok"]
    assert forward.invalidated_keys(base, target, {"location": "/application"}) == [f"GET {target}"]
    assert forward.invalidated_keys(base, target, {"location": "HTTP://GOV.EXAMPLE/app/a%20b"}) == [
        f"GET {target}", "GET http://gov.example/app/a%20b"]


# -- 5. a POST answer that may serve a later GET ------------------------------------------------

# (answer status, answer headers, whether a later GET is served from the store)
POST_STORED = [
    (200, {"Content-Location": "/p", "Cache-Control": "max-age=60"}, True),
    (200, {"Content-Location": "{origin}/p", "Cache-Control": "s-maxage=60"}, True),
    (200, {"Content-Location": "/p", "Expires": "Sun, 01 Jan 2040 00:00:00 GMT"}, True),
    (200, {"Cache-Control": "max-age=60"}, False),  # no Content-Location
    (200, {"Content-Location": "/q", "Cache-Control": "max-age=60"}, False),  # another URI
    (200, {"Content-Location": "/p"}, False),  # no explicit freshness
    (200, {"Content-Location": "/p", "Cache-Control": "max-age=60, no-store"}, False),
    (200, {"Content-Location": "/p", "Cache-Control": "max-age=60, private"}, False),
    (201, {"Content-Location": "/p", "Cache-Control": "max-age=60"}, False),
]


@pytest.mark.parametrize(("status", "headers", "stored"), POST_STORED)
async def test_a_post_answer_for_its_own_uri_may_serve_a_later_get(
        tmp_path: Path, status: int, headers: dict[str, str], stored: bool) -> None:
    async with cache_site(tmp_path) as site:
        base = site.services.services()["svc"].upstream
        answer = {k: v.replace("{origin}", base) for k, v in headers.items()}

        async def origin(request: Any) -> Any:
            if request.method == "POST":
                return web.Response(status=status, headers=answer, text="post answer")
            return web.Response(text="get answer", headers=FRESH)

        site.origin.script("/p", origin)
        resp, body = await site.request("POST", "/p", data=b"d")
        assert (resp.status, body) == (status, b"post answer")
        assert (resp.headers["Cache-Status"] == "desanet; fwd=bypass; stored") is stored
        resp, body = await site.get("/p")
        assert body == (b"post answer" if stored else b"get answer")
        assert [s.method for s in site.origin.requests_for("/p")] == (
            ["POST"] if stored else ["POST", "GET"])
