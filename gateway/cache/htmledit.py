"""Edits to HTML pages the gateway serves for a service: the offline banner and form tokens.

Pure functions (no I/O). ``edit_page`` takes a stored or fetched body with its
response headers and returns the edited body and headers, or None when the page
must go out untouched.

When a page is edited
---------------------
* only ``text/html`` (never XHTML, which a stray tag would break) of at most
  ``MAX_EDIT_BYTES`` once decoded;
* ``Content-Encoding`` identity, gzip or deflate: a compressed body is inflated
  (bounded, so a small bomb cannot grow into memory) and sent uncompressed;
  anything else (``br``, ``zstd``, stacked codings) is left alone;
* the charset must be ASCII-compatible: the inserted markup is pure ASCII (the
  dates and words use character references where needed), so it reads the same
  in UTF-8, ISO-8859-x or windows-125x; UTF-16/32 bodies (declared, or with a
  byte-order mark) are left alone.

The banner goes right after ``<body ...>`` (or after ``</head>``, ``<html ...>``
or the doctype when the page has no body tag). It carries an inline ``style``
only when the response has no ``Content-Security-Policy``: the upstream's policy
is never changed, and under it the banner is plain text inside ``<mark>``, which
browsers still show highlighted at the top of the page.

An edited answer is a different representation of the resource: its length,
``ETag``, ``Last-Modified`` and digests no longer describe it, and the browser must
not keep it as the live page (or reuse a one-time token), so those fields are
dropped and ``Cache-Control: no-store`` is set.
"""

from __future__ import annotations

import html
import re
import zlib
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from gateway import timefmt
from gateway.cache import forms

MAX_EDIT_BYTES = 2 * 1024 * 1024
BANNER_ID = "desanet-offline"
EDITED_DROP = frozenset({"content-length", "content-encoding", "etag", "last-modified", "content-md5",
                   "digest", "content-digest", "repr-digest", "accept-ranges", "content-range"})
_BODY = re.compile(rb"<body\b[^>]*>", re.IGNORECASE)
_HEAD_END = re.compile(rb"</head\s*>", re.IGNORECASE)
_HTML = re.compile(rb"<html\b[^>]*>", re.IGNORECASE)
_DOCTYPE = re.compile(rb"<!doctype\b[^>]*>", re.IGNORECASE)
_STYLE = ("display:block;margin:0;padding:8px 12px;background:#fff3cd;color:#3d2f00;"
          "border-bottom:2px solid #c99a00;font:15px/1.4 sans-serif")


@dataclass(frozen=True)
class Edit:
    """What to do to a page: a banner for a copy from ``copy_time`` and/or a form token."""

    copy_time: float | None = None  # set: the page is an offline copy fetched at this time
    timezone: str = timefmt.DEFAULT_TIMEZONE
    token: str | None = None  # set: add this one-time token to the page's POST forms


def is_html(headers: Mapping[str, str]) -> bool:
    return headers.get("content-type", "").split(";")[0].strip().lower() == "text/html"


def banner_html(copy_time: float, timezone: str, with_style: bool) -> bytes:
    """The banner, Bahasa Indonesia first, as ASCII bytes."""
    when_id = html.escape(timefmt.format_datetime(copy_time, timezone, "id"))
    when_en = html.escape(timefmt.format_datetime(copy_time, timezone, "en"))
    style = f' style="{_STYLE}"' if with_style else ""
    text = (f'<div id="{BANNER_ID}" role="status" lang="id"{style}><mark>'
            f"<strong>Salinan offline</strong> dari {when_id}. Layanan sedang tidak dapat "
            f"dihubungi; isi halaman ini mungkin sudah berubah.</mark><br>"
            f'<span lang="en"><strong>Offline copy</strong> from {when_en}. The service '
            f"cannot be reached; this page may have changed.</span></div>")
    return text.encode("ascii", "xmlcharrefreplace")


def _charset_ok(headers: Mapping[str, str], body: bytes) -> bool:
    match = re.search(r"charset\s*=\s*\"?([\w.:-]+)", headers.get("content-type", ""), re.I)
    if match and re.match(r"(utf-?(16|32)|ucs-?[24])", match.group(1), re.I):
        return False
    return not body.startswith((b"\xfe\xff", b"\xff\xfe"))


def decode_body(body: bytes, coding: str) -> bytes | None:
    """The body without its content coding; None when unknown, broken or too big."""
    if coding in ("", "identity"):
        return body if len(body) <= MAX_EDIT_BYTES else None
    if coding in ("gzip", "x-gzip"):
        waits = [16 + zlib.MAX_WBITS]
    elif coding == "deflate":
        waits = [zlib.MAX_WBITS, -zlib.MAX_WBITS]  # zlib-wrapped as specified, raw as often sent
    else:
        return None
    for wbits in waits:
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, MAX_EDIT_BYTES + 1)
        except zlib.error:
            continue
        if len(out) > MAX_EDIT_BYTES or inflater.unconsumed_tail or not inflater.eof:
            return None
        return out
    return None


def insert_banner(page: bytes, banner: bytes) -> bytes:
    for pattern in (_BODY, _HEAD_END, _HTML, _DOCTYPE):
        match = pattern.search(page)
        if match:
            return page[:match.end()] + banner + page[match.end():]
    return banner + page


def edit_page(body: bytes, headers: Mapping[str, str], edit: Edit) -> bytes | None:
    """The edited body, or None: send the page as it is.

    ``headers`` are the response's, lower-case names (``rules.header_dict``). The
    caller sends the edited body with ``edited_headers`` applied to its fields."""
    if (edit.copy_time is None and edit.token is None) or not is_html(headers):
        return None
    coding = headers.get("content-encoding", "").strip().lower()
    page = decode_body(body, coding)
    if page is None or not _charset_ok(headers, page):
        return None
    changed = False
    if edit.token is not None:
        tokened = forms.inject_token(page, edit.token)
        if tokened is not None:
            page, changed = tokened, True
    if edit.copy_time is not None:
        csp = "content-security-policy" in headers
        page, changed = insert_banner(page, banner_html(edit.copy_time, edit.timezone, not csp)), True
    return page if changed else None


def edited_headers(fields: MutableMapping[str, str]) -> None:
    """Fix up the response fields (any case-insensitive mapping) for an edited body."""
    for name in {n for n in fields if n.lower() in EDITED_DROP}:
        if name in fields:  # a multidict drops every repeat of a name at once
            del fields[name]
    fields["Cache-Control"] = "no-store"
