"""Forms of the government services: which pages are forms, and the one-time form token.

Pure functions (no I/O), used by the prefetch and by the form submission path.

Which pages are kept (the prefetch rule, documented in docs/local-services.md)
------------------------------------------------------------------------------
1. every path in the service's ``prefetch`` and ``forms`` lists is fetched;
2. from each fetched ``prefetch`` page that is HTML, the links (``<a href>``) that
   stay inside the service's upstream base URL are followed, at most
   ``MAX_LINKS_PER_PAGE`` per page and ``MAX_CANDIDATES`` per service, each at
   most ``MAX_CANDIDATE_BYTES``; a linked page holding a ``<form method="post">``
   is a form page;
3. the listed pages, the configured forms and the form pages found are pinned:
   the cache does not evict them while the configuration lists them.

One-time form token (Post/Redirect/Get)
---------------------------------------
Every ``<form method="post">`` of a page the gateway serves for a service that
queues forms gets a hidden field ``TOKEN_FIELD`` with a fresh random value. On
submission the gateway takes the field out of the body again (the upstream never
sees it) and derives the submission's ``Idempotency-Key`` from it, the service,
the method and the path: a double tap or a refresh of the POST sends the same
token, so the outbox, whose keys are unique, stores it once and both land on the
same receipt. Bodies are only edited when they are
``application/x-www-form-urlencoded`` or ``multipart/form-data``; any other body
is passed on untouched and gets a random key, as before.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from html.parser import HTMLParser
from urllib.parse import urldefrag, urljoin, urlsplit

TOKEN_FIELD = "_desanet_token"
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
MAX_LINKS_PER_PAGE = 20
MAX_CANDIDATES = 30
MAX_CANDIDATE_BYTES = 512 * 1024

_FORM_TAG = re.compile(rb"<form\b[^>]*>", re.IGNORECASE)
_METHOD_POST = re.compile(rb"""\bmethod\s*=\s*["']?\s*post\b""", re.IGNORECASE)


# -- links and forms -----------------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []
        self.post_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k.lower(): (v or "") for k, v in attrs}
        if tag == "a" and values.get("href"):
            self.hrefs.append(values["href"].strip())
        elif tag == "form" and values.get("method", "get").strip().lower() == "post":
            self.post_form = True


def _parse(html: bytes) -> _Links:
    parser = _Links()
    # Markup is ASCII: latin-1 never fails and keeps every tag and attribute intact.
    parser.feed(html.decode("latin-1"))
    parser.close()
    return parser


def in_service(url: str, upstream: str) -> bool:
    """Is ``url`` inside the service's upstream base URL (same scheme, host, port, path)?"""
    base, target = urlsplit(upstream), urlsplit(url)
    if (target.scheme, target.netloc.lower()) != (base.scheme, base.netloc.lower()):
        return False
    prefix = base.path.rstrip("/") + "/"
    return (target.path or "/").startswith(prefix)


def linked_pages(html: bytes, page_url: str, upstream: str,
                 limit: int = MAX_LINKS_PER_PAGE) -> list[str]:
    """Absolute URLs (no fragment) of the pages ``html`` links to inside the service, in order."""
    found: list[str] = []
    for href in _parse(html).hrefs:
        if href.lower().startswith(("javascript:", "mailto:", "tel:", "data:")):
            continue
        url = urldefrag(urljoin(page_url, href)).url
        if url != page_url and url not in found and in_service(url, upstream):
            found.append(url)
            if len(found) >= limit:
                break
    return found


def has_post_form(html: bytes) -> bool:
    """Does the page hold a form that is sent with POST (the kind the outbox queues)?"""
    return _parse(html).post_form


# -- the one-time token --------------------------------------------------------------------


def new_token() -> str:
    return secrets.token_urlsafe(18)


def inject_token(html: bytes, token: str) -> bytes | None:
    """Add the hidden token field to every POST form; None when there is none."""
    field = f'<input type="hidden" name="{TOKEN_FIELD}" value="{token}">'.encode("ascii")
    out, last, count = bytearray(), 0, 0
    for match in _FORM_TAG.finditer(html):
        if not _METHOD_POST.search(match.group(0)):
            continue
        out += html[last:match.end()] + field
        last, count = match.end(), count + 1
    if not count:
        return None
    out += html[last:]
    return bytes(out)


def take_token(body: bytes, content_type: str | None) -> tuple[str | None, bytes]:
    """The token a form body carries and the body without it (what the upstream gets)."""
    media, _, params = (content_type or "").partition(";")
    media = media.strip().lower()
    if media == "application/x-www-form-urlencoded":
        return _take_urlencoded(body)
    if media == "multipart/form-data":
        match = re.search(r'boundary\s*=\s*"?([^";]+)"?', params, re.IGNORECASE)
        if match:
            return _take_multipart(body, match.group(1).strip().encode("latin-1"))
    return None, body


def _take_urlencoded(body: bytes) -> tuple[str | None, bytes]:
    token: str | None = None
    kept: list[bytes] = []
    name = TOKEN_FIELD.encode()
    for item in body.split(b"&"):
        key, _, value = item.partition(b"=")
        if key == name:
            text = value.decode("latin-1")
            token = text if _TOKEN_RE.match(text) else token
            continue
        kept.append(item)
    return (token, b"&".join(kept)) if token is not None else (None, body)


def _take_multipart(body: bytes, boundary: bytes) -> tuple[str | None, bytes]:
    delimiter = b"--" + boundary
    parts = body.split(delimiter)
    header = f'name="{TOKEN_FIELD}"'.encode()
    for i, part in enumerate(parts[1:-1], start=1):
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep or header not in head:
            continue
        text = value.removesuffix(b"\r\n").decode("latin-1")
        if not _TOKEN_RE.match(text):
            return None, body
        return text, delimiter.join(parts[:i] + parts[i + 1:])
    return None, body


def idempotency_key(service: str, method: str, path_qs: str, token: str) -> str:
    """The key of a tokened submission: the same token sent to the same form gives the same key."""
    digest = hashlib.sha256(f"{service}\n{method.upper()}\n{path_qs}\n{token}".encode())
    return "desanet-form-" + digest.hexdigest()[:40]
