"""Red-team review of Step 7 (issue #10): what one villager on the LAN can make the cache do
to another villager's answers. Each case beside its positive control."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from gateway.cache import forward
from tests.unit.cachesite import cache_site

VARIED = {"Cache-Control": "max-age=3600", "Vary": "Accept-Language"}


async def by_language(request: web.Request) -> web.Response:
    lang = request.headers.get("Accept-Language", "en")
    return web.Response(text=f"page in {lang}", headers=VARIED)


@pytest.mark.parametrize(("first", "hidden"), [
    # A villager names the Vary'd field in Connection: the origin never sees it, so its
    # answer (the default language) must not be stored as the "id" variant.
    ({"Accept-Language": "id", "Connection": "accept-language"}, True),
    ({"Accept-Language": "id"}, False),  # control: the field reached the origin
])
async def test_a_field_named_by_connection_selects_no_variant(
        tmp_path: Path, first: dict[str, str], hidden: bool) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/p", by_language)
        _, body_a = await site.get("/p", headers=first)
        _, body_b = await site.get("/p", headers={"Accept-Language": "id"})
        assert body_b == b"page in id"
        assert (body_a == b"page in en") is hidden
        assert len(site.origin.requests_for("/p")) == (2 if hidden else 1)


@pytest.mark.parametrize(("req_h", "kept"), [
    ({"connection": "accept-language", "accept-language": "id", "accept": "*/*"},
     {"connection": "accept-language", "accept": "*/*"}),
    ({"connection": "keep-alive, Cookie", "cookie": "a=1"}, {"connection": "keep-alive, Cookie"}),
    ({"connection": "keep-alive", "cookie": "a=1"}, {"connection": "keep-alive", "cookie": "a=1"}),
    ({"accept-language": "id"}, {"accept-language": "id"}),
])
def test_end_to_end_drops_only_the_fields_connection_names(
        req_h: dict[str, str], kept: dict[str, str]) -> None:
    assert forward.end_to_end(req_h) == kept
