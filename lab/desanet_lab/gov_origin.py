"""A government-service origin for cache and store-and-forward tests.

Served in the lab's WAN namespace as ``dukcapil.lab``. Every endpoint
counts the requests it answers, per path and per method and path ("GET /"), so
tests can tell a cache hit (the origin saw nothing) from a miss; ``/_lab/stats``
returns the counters as JSON.

- ``/``            HTML, max-age=30, ETag and Last-Modified; links to ``formulir``
- ``/etag``        no-cache + ETag: every use must revalidate (304 when it matches)
- ``/vary``        Vary: Accept-Language, body in "id" or "en"
- ``/nostore``     Cache-Control: no-store
- ``/slow``        cacheable, answers after ``?ms=`` milliseconds (request collapsing)
- ``/hold``        cacheable as ``/slow``, answers once ``/_lab/release?gate=G`` was asked
                   for its ``?gate=G`` (or after ``?max=`` seconds, 120 by default): a
                   request in flight for exactly as long as a test needs, no timing margin
- ``/swr``         max-age=1, stale-while-revalidate=30
- ``/big``         ``?mb=N`` deterministic bytes, max-age=3600, streamed
- ``/ranged``     ``?mb=N`` as ``/big`` (ETag ``"ranged-<size>"``, Last-Modified) but a
                   real server's ranges: one ``Range`` honoured (206 with Content-Range),
                   ``If-Range`` compared strongly with the ETag (whole 200 when it differs)
- ``/form``        POST with an Idempotency-Key; a repeated key gets the first answer
- ``/formulir``    GET: an HTML page with a POST form (max-age=60, ETag), linked from
                   ``/`` so the gateway's prefetch finds it; POST: as ``/form``
- ``/_lab/targets``  the last 200 request lines received (method and raw target, still
                   %-encoded): what exactly reached the origin (tests of path handling)
- ``/_lab/submissions``  what ``/form`` and ``/formulir`` received, per key (with the
                   body's length and sha256; the body itself when it is short)

Proxy behaviour (issue #10):

- ``/revalvary``   Vary: Accept-Language, max-age=0 and an ETag per language: every use
                   is revalidated; 304 when If-None-Match matches that language's tag
- ``/scripted/<name>``  answers the status set by ``/_lab/script?name=<name>&status=N``
                   (200 until set: a copy that may stand in on error for 10 minutes;
                   otherwise the origin's own error page, with Retry-After)
- ``/_lab/seen?path=P``  the request headers received for ``P`` (of the two above)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections import Counter
from email.utils import formatdate

from aiohttp import web

HOST = "dukcapil.lab"
_COUNTS: Counter[str] = Counter()
_SUBMISSIONS: dict[str, dict[str, object]] = {}
_STARTED = formatdate(usegmt=True)
_CHUNK = bytes(range(256)) * 256  # 64 KiB
_TARGETS: list[str] = []  # "METHOD raw-target", newest last
_GATES: dict[str, asyncio.Event] = {}  # /hold's gates, by name; set once released


def _page(title: str, body: str, extra: str = "") -> str:
    return (f'<!doctype html><html lang="id"><head><meta charset="utf-8"><title>{title}</title>'
            f"</head><body><h1>{title}</h1><p>{body}</p>{extra}</body></html>\n")


_FORM_PAGE = _page("Formulir permohonan (lab)", "Isi lalu kirim.",
                   '<form method="post" action="formulir"><label>Nama <input name="nama">'
                   '</label><label>Keterangan <textarea name="keterangan"></textarea></label>'
                   '<button type="submit">Kirim</button></form>')


def _etag(text: str) -> str:
    return '"' + hashlib.sha256(text.encode()).hexdigest()[:16] + '"'


def _html(text: str, headers: dict[str, str], request: web.Request) -> web.Response:
    etag = headers.get("ETag")
    if etag and etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(text=text, content_type="text/html", charset="utf-8", headers=headers)


async def handle(request: web.Request) -> web.StreamResponse:
    path = request.path
    _COUNTS[path] += 1
    _COUNTS[f"{request.method} {path}"] += 1  # e.g. "GET /": tells a refetch from a probe
    if path != "/_lab/targets":
        _TARGETS.append(f"{request.method} {request.raw_path}")
        del _TARGETS[:-200]
    if path == "/":
        text = _page("Dukcapil (lab)", "Layanan data kependudukan desa.",
                     '<p><a href="formulir">Formulir permohonan</a></p>')
        return _html(text, {"Cache-Control": "max-age=30", "ETag": _etag(text),
                            "Last-Modified": _STARTED}, request)
    if path == "/etag":
        text = _page("Formulir", "Selalu divalidasi ulang.")
        return _html(text, {"Cache-Control": "no-cache", "ETag": _etag(text)}, request)
    if path == "/vary":
        lang = "en" if request.headers.get("Accept-Language", "").lower().startswith("en") else "id"
        text = _page("Hello" if lang == "en" else "Halo", lang)
        return web.Response(text=text, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "max-age=300", "Vary": "Accept-Language",
                                     "Content-Language": lang})
    if path == "/nostore":
        return web.Response(text=f"private {_COUNTS[path]}\n",
                            headers={"Cache-Control": "no-store"})
    if path == "/slow":
        await asyncio.sleep(int(request.query.get("ms", "500")) / 1000)
        return web.Response(text="slow page\n", headers={"Cache-Control": "max-age=60"})
    if path == "/hold":
        gate = _GATES.setdefault(request.query.get("gate", ""), asyncio.Event())
        with contextlib.suppress(TimeoutError):  # never held forever by a test that died
            await asyncio.wait_for(gate.wait(), float(request.query.get("max", "120")))
        return web.Response(text="held page\n", headers={"Cache-Control": "max-age=60"})
    if path == "/_lab/release":  # a gate released before its request arrives lets it pass
        _GATES.setdefault(request.query["gate"], asyncio.Event()).set()
        return web.json_response({"released": request.query["gate"]})
    if path == "/swr":
        return web.Response(text=f"version {_COUNTS[path]}\n",
                            headers={"Cache-Control": "max-age=1, stale-while-revalidate=30"})
    if path == "/big":
        return await _big(request)
    if path == "/ranged":
        return await _ranged(request)
    if path == "/form":
        return await _form(request)
    if path == "/formulir" and request.method in ("GET", "HEAD"):
        return _html(_FORM_PAGE, {"Cache-Control": "max-age=60", "ETag": _etag(_FORM_PAGE)}, request)
    if path == "/formulir":
        return await _form(request)
    if path == "/_lab/submissions":
        return web.json_response(_SUBMISSIONS)
    if path == "/_lab/targets":
        return web.json_response(_TARGETS)
    if path == "/_lab/stats":
        return web.json_response(dict(_COUNTS))
    proxy_answer = _proxy_lab(request)
    if proxy_answer is not None:
        return proxy_answer
    return web.Response(status=404, text=f"no such page: {path}\n")


async def _big(request: web.Request) -> web.StreamResponse:
    size = int(float(request.query.get("mb", "1")) * 1024 * 1024)
    resp = web.StreamResponse(headers={"Cache-Control": "max-age=3600",
                                       "Content-Type": "application/octet-stream",
                                       "ETag": f'"big-{size}"'})
    resp.content_length = size
    await resp.prepare(request)
    if request.method == "HEAD":
        return resp
    sent = 0
    while sent < size:
        piece = _CHUNK[: min(len(_CHUNK), size - sent)]
        await resp.write(piece)
        sent += len(piece)
    await resp.write_eof()
    return resp


def _byte_range(spec: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range, clamped; None otherwise."""
    unit, _, value = spec.partition("=")
    first_s, dash, last_s = value.strip().partition("-")
    if unit.strip() != "bytes" or not dash or "," in value:
        return None
    if not first_s:
        return (max(0, size - int(last_s)), size - 1) if last_s.isdigit() and int(last_s) else None
    if not first_s.isdigit() or (last_s and not last_s.isdigit()) or int(first_s) >= size:
        return None
    return int(first_s), min(int(last_s), size - 1) if last_s else size - 1


async def _ranged(request: web.Request) -> web.StreamResponse:
    size = int(float(request.query.get("mb", "1")) * 1024 * 1024)
    etag = f'"ranged-{size}"'
    headers = {"Cache-Control": "max-age=3600", "Content-Type": "application/octet-stream",
               "ETag": etag, "Last-Modified": _STARTED, "Accept-Ranges": "bytes"}
    status, first, last = 200, 0, size - 1
    wanted = _byte_range(request.headers.get("Range", ""), size)
    if wanted is not None and request.headers.get("If-Range", etag) == etag:
        status, (first, last) = 206, wanted
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_length = last - first + 1
    await resp.prepare(request)
    if request.method == "HEAD":
        return resp
    at = first  # byte i of the object is _CHUNK[i % len(_CHUNK)], as in /big
    while at <= last:
        offset = at % len(_CHUNK)
        piece = _CHUNK[offset: offset + min(len(_CHUNK) - offset, last + 1 - at)]
        await resp.write(piece)
        at += len(piece)
    await resp.write_eof()
    return resp


async def _form(request: web.Request) -> web.StreamResponse:
    if request.method != "POST":
        return web.Response(text=_page("Formulir", "Kirim dengan POST."),
                            content_type="text/html", headers={"Cache-Control": "no-store"})
    key = request.headers.get("Idempotency-Key")
    raw = await request.content.read()  # whole body, past aiohttp's 1 MiB read() limit
    body = raw.decode(errors="replace") if len(raw) <= 4096 else ""
    if key and key in _SUBMISSIONS:
        seen = _SUBMISSIONS[key]
        seen["repeats"] = int(str(seen["repeats"])) + 1
        return web.json_response({"received": seen["number"], "repeat": True}, status=201)
    delay = float(request.query.get("delay", "0"))
    number = len(_SUBMISSIONS) + 1
    _SUBMISSIONS[key or f"no-key-{number}"] = {
        "number": number, "body": body, "repeats": 0,
        "reference": request.headers.get("X-Desanet-Reference"),
        "length": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
    }
    if delay:
        # The submission is recorded, but the answer comes too late: a caller
        # with a short timeout cannot know whether it arrived.
        await asyncio.sleep(delay)
    return web.Response(text=json.dumps({"received": number}), status=201,
                        content_type="application/json")


# -- issue #10: proxy behaviour (scripted statuses, headers as received) ------------------------

_SCRIPTED: dict[str, int] = {}  # /scripted/<name> -> the status it answers
_SEEN: dict[str, list[dict[str, str]]] = {}  # path -> headers of each request received


def _proxy_lab(request: web.Request) -> web.Response | None:
    path = request.path
    if path in ("/revalvary",) or path.startswith("/scripted/"):
        _SEEN.setdefault(path, []).append(dict(request.headers))
        del _SEEN[path][:-50]
    if path == "/_lab/script":
        _SCRIPTED[request.query["name"]] = int(request.query["status"])
        return web.json_response(_SCRIPTED)
    if path == "/_lab/seen":
        return web.json_response(_SEEN.get(request.query.get("path", ""), []))
    if path == "/revalvary":
        lang = "en" if request.headers.get("Accept-Language", "").lower().startswith("en") else "id"
        text = _page("Hello" if lang == "en" else "Halo", f"revalidated {lang}")
        return _html(text, {"Cache-Control": "max-age=0", "Vary": "Accept-Language",
                            "ETag": f'"reval-{lang}"'}, request)
    if path.startswith("/scripted/"):
        name = path.removeprefix("/scripted/")
        status = _SCRIPTED.get(name, 200)
        if status == 200:
            return web.Response(text=f"copy of {name}\n",
                                headers={"Cache-Control": "max-age=0, stale-if-error=600"})
        return web.Response(status=status, text=f"lab origin says {status}\n",
                            headers={"Retry-After": "30", "X-Lab-Origin": "yes"})
    return None
