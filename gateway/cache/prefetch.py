"""Prefetch of the services' pages and forms, and pinning them in the cache.

The rule (also in gateway/cache/forms.py and docs/local-services.md): fetch each
service's ``prefetch`` and ``forms`` paths; follow the links of the fetched
``prefetch`` pages that stay inside the service (bounded in number and bytes);
a linked page with a POST form is a form page. The listed pages, the configured
forms and the form pages found are pinned in the store, so eviction never drops
them while the configuration lists them; the pins are replaced on every run.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.cache import forms
from gateway.cache.htmledit import decode_body, is_html
from gateway.cache.proxy import CachingProxy
from gateway.cache.store import CacheStore
from gateway.config.schema import GovService, LocalServices

MAX_SCAN_BYTES = 2 * 1024 * 1024  # a listed page larger than this is not scanned for links


def cache_key(url: str) -> str:
    return f"GET {url}"


class Prefetcher:
    def __init__(self, store: CacheStore, proxy: CachingProxy) -> None:
        self.store = store
        self.proxy = proxy

    def stored_html(self, url: str, limit: int = MAX_SCAN_BYTES) -> bytes | None:
        """The newest stored HTML body of ``url`` (decoded), or None. Reads the disk."""
        entries = [e for e in self.store.lookup(cache_key(url))
                   if e.meta.status == 200 and is_html(e.meta.headers) and e.size <= limit]
        if not entries:
            return None
        entry = max(entries, key=lambda e: e.meta.response_time)
        body = self.store.open_body(entry)
        if body is None:
            return None
        with body:
            data = body.read(entry.size)
        return decode_body(data, entry.meta.headers.get("content-encoding", "").strip().lower())

    async def _fetch(self, service: GovService, url: str, only_missing: bool, rate: int,
                     max_bytes: int | None = None) -> str:
        if only_missing and self.store.lookup(cache_key(url)):
            return "present"
        return await self.proxy.refresh(service, url, rate_bps=rate, max_bytes=max_bytes)

    async def run(self, cfg: LocalServices, only_missing: bool) -> dict[str, Any]:
        """One prefetch of every service; returns the result per URL and the forms found."""
        results: dict[str, str] = {}
        found: dict[str, list[str]] = {}
        pins: set[str] = set()
        for service in cfg.services:
            listed = [service.upstream + path for path in service.prefetch]
            configured = [service.upstream + path for path in service.forms]
            for url in listed + configured:
                pins.add(cache_key(url))
                results[url] = await self._fetch(service, url, only_missing, cfg.prefetch_rate)
            candidates: list[str] = []
            for url in listed:
                page = await asyncio.to_thread(self.stored_html, url)
                for link in forms.linked_pages(page or b"", url, service.upstream):
                    if link not in candidates and link not in listed and link not in configured:
                        candidates.append(link)
            found[service.slug] = []
            for url in candidates[:forms.MAX_CANDIDATES]:
                result = await self._fetch(service, url, only_missing, cfg.prefetch_rate,
                                           forms.MAX_CANDIDATE_BYTES)
                page = await asyncio.to_thread(self.stored_html, url, forms.MAX_CANDIDATE_BYTES)
                if page is not None and forms.has_post_form(page):
                    pins.add(cache_key(url))
                    found[service.slug].append(url)
                    results[url] = result
        await asyncio.to_thread(self.store.set_pins, pins)
        return {"finished": time.time(), "results": results, "forms": found}
