"""Writing responses to villagers: from the disk cache, or streamed from upstream."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway.cache.htmledit import MAX_EDIT_BYTES, Edit, edit_page, edited_headers, is_html
from gateway.cache.rules import (
    StoredMeta,
    age_header,
    format_http_date,
    header_dict,
    if_range_ok,
    not_modified_for_request,
    parse_range,
)
from gateway.cache.store import BodyWriter, CacheStore, Entry

CHUNK = 256 * 1024
# What writing to a villager who went away raises (aiohttp: "Connection lost" is a
# plain ConnectionError; RuntimeError once the transport is closed).
CLIENT_GONE: tuple[type[BaseException], ...] = (ConnectionError, RuntimeError)
# Connection-level fields: never copied between the upstream and the villager.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authenticate", "proxy-authorization",
})
# Answered from the stored metadata, so the two sides never disagree.  Date is not
# among them: a stored answer keeps the origin's Date (RFC 9110 §6.6.1), the time it
# was generated, which Age counts from.
_OWN = frozenset({"content-length", "age", "cache-status"})
_NOT_MODIFIED_FIELDS = ("cache-control", "content-location", "date", "etag", "expires", "vary",
                        "last-modified")


def cache_status(detail: str) -> str:
    """RFC 9211 Cache-Status value for this cache ("desanet")."""
    return f"desanet; {detail}"


# Stored headers as sent to the client (without Age and Cache-Status), per StoredMeta
# object: the store keeps one object per entry version, so a hit builds no dict.
# The memo holds the meta itself, so its id() cannot be reused while it is here.
_CLIENT_HEADERS: dict[int, tuple[StoredMeta, CIMultiDict[str]]] = {}
_CLIENT_HEADERS_MAX = 4096


def _client_base(meta: StoredMeta) -> CIMultiDict[str]:
    memo = _CLIENT_HEADERS.get(id(meta))
    if memo is not None and memo[0] is meta:
        return memo[1]
    base: CIMultiDict[str] = CIMultiDict()
    for name, value in meta.headers.items():
        if name not in HOP_BY_HOP and name not in _OWN:
            base[name] = value
    if "date" not in meta.headers:  # the origin sent none: the cache adds when it got it
        base["Date"] = format_http_date(meta.response_time)
    if len(_CLIENT_HEADERS) >= _CLIENT_HEADERS_MAX:
        del _CLIENT_HEADERS[next(iter(_CLIENT_HEADERS))]  # the oldest
    _CLIENT_HEADERS[id(meta)] = (meta, base)
    return base


def stored_headers_for_client(meta: StoredMeta, now: float) -> CIMultiDict[str]:
    out = _client_base(meta).copy()
    out["Age"] = age_header(meta, now)
    return out


def upstream_headers_for_client(headers: Mapping[str, str] | Any, rewrite: Any = None) -> CIMultiDict[str]:
    """Copy an upstream response's fields (repeated ones such as Set-Cookie kept apart),
    without the hop-by-hop ones and those its Connection names (RFC 9110 §7.6.1)."""
    out: CIMultiDict[str] = CIMultiDict()
    getall = getattr(headers, "getall", None)  # a multidict: every Connection line counts
    listed = getall("connection", []) if getall else [headers.get("connection", "")]
    named = {n.strip().lower() for n in ",".join(listed).split(",")}
    for name, value in headers.items():
        low = name.lower()
        if low in HOP_BY_HOP or low in named or low == "content-length":
            continue
        if low == "location" and rewrite is not None:
            value = rewrite(value)
        out.add(name, value)
    return out


def _read_whole(store: CacheStore, entry: Entry) -> bytes | None:
    if entry.size <= store.small_body_limit:
        return store.read_small(entry)
    body = store.open_body(entry)
    if body is None:
        return None
    with body:
        data = body.read(entry.size + 1)
    return data if len(data) == entry.size else None


def _serve_edited(request: web.Request, store: CacheStore, entry: Entry, now: float,
                  detail: str, req_h: Mapping[str, str], edit: Edit) -> web.Response | None:
    """The stored page with ``edit`` applied, or None when it is not a page to edit.

    The client's own conditional headers are not honoured here: its copy is the live
    page (or has a spent token), and the point is that it sees the edited one."""
    meta = entry.meta
    if (request.method not in ("GET", "HEAD") or "range" in req_h or meta.status != 200
            or not is_html(meta.headers) or entry.size > MAX_EDIT_BYTES):
        return None
    data = _read_whole(store, entry)
    edited = edit_page(data, meta.headers, edit) if data is not None else None
    if edited is None:
        return None
    store.touch(entry.id, now)
    headers = stored_headers_for_client(meta, now)
    edited_headers(headers)
    headers["Cache-Status"] = cache_status(detail)
    return web.Response(status=200, headers=headers, body=edited)


async def serve_entry(
    request: web.Request, store: CacheStore, entry: Entry, now: float, detail: str,
    req_h: Mapping[str, str] | None = None, edit: Edit | None = None,
    rewrite: Callable[[str], str] | None = None,
) -> web.StreamResponse | None:
    """Answer from a stored entry; None when its body turned out unusable.

    ``req_h``: the request headers as ``rules.header_dict`` gives them, if the
    caller has them already. ``edit``: the banner / form token to put into an
    HTML page (see gateway/cache/htmledit.py); other answers go out unchanged.
    ``rewrite``: maps a stored ``Location`` into layanan.desa, as on a miss (the store
    keeps the origin's own)."""
    meta = entry.meta
    if req_h is None:
        req_h = header_dict(request.headers)
    if edit is not None:
        edited = _serve_edited(request, store, entry, now, detail, req_h, edit)
        if edited is not None:
            return edited
    if not_modified_for_request(req_h, meta):
        headers = CIMultiDict((k, v) for k, v in meta.headers.items() if k in _NOT_MODIFIED_FIELDS)
        headers["Age"] = age_header(meta, now)
        headers["Cache-Status"] = cache_status(detail)
        return web.Response(status=304, headers=headers)
    data: bytes | None = None  # the whole body, for small ones (kept in memory by the store)
    body: BinaryIO | None = None
    if entry.size <= store.small_body_limit:
        data = store.read_small(entry)
        if data is None:
            return None
    else:
        body = store.open_body(entry)
        if body is None:
            return None
    with body if body is not None else contextlib.nullcontext():
        store.touch(entry.id, now)
        headers = stored_headers_for_client(meta, now)
        headers["Cache-Status"] = cache_status(detail)
        if rewrite is not None and "Location" in headers:
            headers["Location"] = rewrite(headers["Location"])
        status, first, last = meta.status, 0, entry.size - 1
        wanted = parse_range(req_h.get("range"), entry.size) if meta.status == 200 else None
        if wanted is not None and if_range_ok(req_h, meta):
            if wanted == "unsatisfiable":
                headers["Content-Range"] = f"bytes */{entry.size}"
                return web.Response(status=416, headers=headers)
            first, last = wanted
            status = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{entry.size}"
        headers["Accept-Ranges"] = "bytes"
        length = max(0, last - first + 1)
        if request.method != "HEAD" and length <= CHUNK:
            # Small bodies go out with the head in one write (one send() instead of two).
            if data is not None:
                piece = data if length == len(data) else data[first:first + length]
            else:
                assert body is not None
                body.seek(first)
                piece = body.read(length)
                if len(piece) != length:
                    return None  # the file shrank under us: re-decide
            small = web.Response(status=status, headers=headers, body=piece)
            if "content-type" not in meta.headers:
                small.headers.popall("Content-Type", None)  # never invent one
            return small
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = max(0, last - first + 1)
        # A villager who hangs up mid-download is no error: the answer just ends.
        with contextlib.suppress(*CLIENT_GONE):
            await _send_stored(request, resp, data, body, first, last)
        return resp


async def _send_stored(request: web.Request, resp: web.StreamResponse, data: bytes | None,
                       body: BinaryIO | None, first: int, last: int) -> None:
    await resp.prepare(request)
    if request.method == "HEAD" or resp.content_length == 0:
        await resp.write_eof()
        return
    if data is not None:
        await resp.write(data[first:last + 1])
        await resp.write_eof()
        return
    assert body is not None
    await send_file_range(resp, body, first, last)


async def send_file_range(resp: web.StreamResponse, body: BinaryIO, first: int, last: int) -> None:
    """Write bytes ``first``..``last`` of an open stored body in CHUNK pieces, then end the
    answer (the head must be sent already)."""
    body.seek(first)
    left = last - first + 1
    while left > 0:
        chunk = body.read(min(CHUNK, left))
        if not chunk:
            break  # the file shrank under us; the client sees a short body and retries
        await resp.write(chunk)
        left -= len(chunk)
    await resp.write_eof()


async def stream_upstream(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    writer: BodyWriter | None,
    detail: str,
    rewrite: Any = None,
    first: bytes = b"",
    window: tuple[int, int] | str | None = None,
) -> tuple[web.StreamResponse, int]:
    """Stream an upstream response to the villager, teeing it into ``writer``.

    If the villager goes away the download still completes into the cache
    (others may be waiting for it). Returns the response and bytes read.
    ``first``: the start of the body, already read from ``upstream`` by the caller.
    ``window``: the villager asked for a range of this (whole, 200) answer: it gets
    a 206 with those bytes (or a 416 for "unsatisfiable") while all of it is stored.
    """
    headers = upstream_headers_for_client(upstream.headers, rewrite)
    headers["Cache-Status"] = cache_status(detail)
    status, reason = upstream.status, upstream.reason
    size = upstream.content_length
    lo, hi = 0, -1  # the part of the body the villager gets (inclusive); hi < 0: all
    if window is not None and size is not None:
        headers["Accept-Ranges"] = "bytes"
        if window == "unsatisfiable":
            status, reason, size, hi = 416, None, 0, -2
            headers["Content-Range"] = f"bytes */{upstream.content_length}"
        elif isinstance(window, tuple):
            lo, hi = window
            status, reason, size = 206, None, hi - lo + 1
            headers["Content-Range"] = f"bytes {lo}-{hi}/{upstream.content_length}"
    resp = web.StreamResponse(status=status, reason=reason, headers=headers)
    if size is not None:
        resp.content_length = size
    client_alive = True
    try:
        await resp.prepare(request)
    except CLIENT_GONE:
        client_alive = False
    received = 0
    if request.method != "HEAD":
        async for chunk in _with_first(first, upstream):
            start = received
            received += len(chunk)
            if writer is not None:
                writer.write(chunk)
            if client_alive:
                piece = chunk if hi == -1 else chunk[max(0, lo - start):max(0, hi + 1 - start)]
                try:
                    if piece:
                        await resp.write(piece)
                    if hi != -1 and received > hi:
                        await resp.write_eof()  # its range is complete; the fill goes on
                        client_alive = False
                except CLIENT_GONE:
                    client_alive = False
            if not client_alive and (writer is None or not writer.storing):
                break  # nobody reads it and it will not be stored: stop the download
    if client_alive:
        with contextlib.suppress(*CLIENT_GONE):
            await resp.write_eof()
    return resp, received


async def _with_first(first: bytes, upstream: aiohttp.ClientResponse) -> Any:
    if first:
        yield first
    async for chunk in upstream.content.iter_chunked(CHUNK):
        yield chunk


async def read_small_page(upstream: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """Read an upstream body up to MAX_EDIT_BYTES: (bytes read, whether that is all of it)."""
    if upstream.content_length is not None and upstream.content_length > MAX_EDIT_BYTES:
        return b"", False
    parts: list[bytes] = []
    size = 0
    async for chunk in upstream.content.iter_chunked(CHUNK):
        parts.append(chunk)
        size += len(chunk)
        if size > MAX_EDIT_BYTES:
            return b"".join(parts), False
    return b"".join(parts), True


def edited_upstream_response(upstream: aiohttp.ClientResponse, body: bytes, detail: str,
                             rewrite: Any = None) -> web.Response:
    """An upstream page sent with an edited body (see htmledit.edited_headers)."""
    headers = upstream_headers_for_client(upstream.headers, rewrite)
    edited_headers(headers)
    headers["Cache-Status"] = cache_status(detail)
    return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)
