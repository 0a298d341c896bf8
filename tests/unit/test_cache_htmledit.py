"""The offline banner and the form token put into HTML pages (gateway/cache/htmledit.py)."""

from __future__ import annotations

import gzip
import zlib

import pytest
from multidict import CIMultiDict

from gateway.cache.forms import TOKEN_FIELD
from gateway.cache.htmledit import (
    BANNER_ID,
    MAX_EDIT_BYTES,
    Edit,
    banner_html,
    edit_page,
    edited_headers,
)

# 2 Dec 2026 07:05 UTC = 14:05 WIB = 15:05 WITA = 16:05 WIT
COPY = 1796195100.0
PAGE = (b'<!doctype html><html lang="id"><head><meta charset="utf-8"><title>T</title></head>'
        b'<body class="x"><h1>Layanan</h1><form method="post" action="kirim"><input name="a">'
        b"</form><form method=get action=cari></form></body></html>")
HTML = {"content-type": "text/html; charset=utf-8"}
OFFLINE = Edit(copy_time=COPY, timezone="Asia/Jakarta")


def test_banner_after_the_body_tag_with_local_date_id_first() -> None:
    out = edit_page(PAGE, HTML, OFFLINE)
    assert out is not None
    head, _, rest = out.partition(b'<body class="x">')
    assert BANNER_ID.encode() not in head
    assert rest.startswith(f'<div id="{BANNER_ID}"'.encode())
    text = rest.decode()
    assert "Salinan offline</strong> dari 2 Des 2026 14:05 WIB" in text
    assert "Offline copy</strong> from 2 Dec 2026 14:05 WIB" in text
    assert text.index("Salinan offline") < text.index("Offline copy")  # Bahasa first
    assert out.replace(banner_html(COPY, "Asia/Jakarta", True), b"") == PAGE  # nothing else


@pytest.mark.parametrize("tz, label", [("Asia/Makassar", "15:05 WITA"), ("Asia/Jayapura", "16:05 WIT")])
def test_banner_date_in_the_sites_zone(tz: str, label: str) -> None:
    out = edit_page(PAGE, HTML, Edit(copy_time=COPY, timezone=tz))
    assert out is not None and label.encode() in out


def test_no_edit_asked_or_not_html_leaves_the_page_alone() -> None:
    assert edit_page(PAGE, HTML, Edit()) is None  # positive control: nothing to do
    assert edit_page(PAGE, {"content-type": "application/json"}, OFFLINE) is None
    assert edit_page(PAGE, {"content-type": "application/xhtml+xml"}, OFFLINE) is None
    assert edit_page(PAGE, {}, OFFLINE) is None


@pytest.mark.parametrize("page, after", [
    (b"<html><head><title>x</title></head><p>no body tag</p></html>", b"</head>"),
    (b"<HTML lang=id><p>only html</p></HTML>", b"<HTML lang=id>"),
    (b"<!DOCTYPE html><p>only a doctype</p>", b"<!DOCTYPE html>"),
])
def test_banner_without_a_body_tag(page: bytes, after: bytes) -> None:
    out = edit_page(page, {"content-type": "text/html"}, OFFLINE)
    assert out is not None
    assert out.index(BANNER_ID.encode()) > out.index(after)
    assert out.index(BANNER_ID.encode()) < out.index(b"<p>")


def test_bare_fragment_gets_the_banner_first() -> None:
    out = edit_page(b"<p>x</p>", {"content-type": "text/html"}, OFFLINE)
    assert out is not None and out.startswith(b"<div id=")


def test_gzip_and_deflate_are_inflated_and_sent_plain() -> None:
    for coding, packed in (("gzip", gzip.compress(PAGE)), ("deflate", zlib.compress(PAGE)),
                           ("deflate", zlib.compress(PAGE)[2:-4])):  # raw deflate, as some send
        out = edit_page(packed, {**HTML, "content-encoding": coding}, OFFLINE)
        assert out is not None and b"Salinan offline" in out and out.endswith(b"</html>"), coding


def test_unknown_or_broken_codings_are_left_alone() -> None:
    assert edit_page(b"\x1b\x00junk", {**HTML, "content-encoding": "br"}, OFFLINE) is None
    assert edit_page(b"not gzip", {**HTML, "content-encoding": "gzip"}, OFFLINE) is None
    assert edit_page(gzip.compress(PAGE), {**HTML, "content-encoding": "gzip, br"}, OFFLINE) is None


def test_bomb_and_oversized_pages_are_left_alone() -> None:
    bomb = gzip.compress(b"<p>" + b" " * (MAX_EDIT_BYTES + 10))
    assert len(bomb) < 10_000
    assert edit_page(bomb, {**HTML, "content-encoding": "gzip"}, OFFLINE) is None
    big = b"<body>" + b"x" * MAX_EDIT_BYTES
    assert edit_page(big, HTML, OFFLINE) is None
    assert edit_page(big[:1000], HTML, OFFLINE) is not None  # positive control


def test_charset() -> None:
    utf16 = PAGE.decode().encode("utf-16")
    assert edit_page(utf16, {"content-type": "text/html; charset=UTF-16"}, OFFLINE) is None
    assert edit_page(utf16, {"content-type": "text/html"}, OFFLINE) is None  # by its BOM
    latin = "<body><p>Caf\xe9</p></body>".encode("latin-1")
    out = edit_page(latin, {"content-type": "text/html; charset=iso-8859-1"}, OFFLINE)
    assert out is not None and out.endswith("<p>Caf\xe9</p></body>".encode("latin-1"))
    assert banner_html(COPY, "Asia/Jakarta", True).isascii()


def test_csp_keeps_the_page_policy_and_drops_the_inline_style() -> None:
    styled = edit_page(PAGE, HTML, OFFLINE)
    plain = edit_page(PAGE, {**HTML, "content-security-policy": "style-src 'self'"}, OFFLINE)
    assert styled is not None and b' style="' in styled
    assert plain is not None and b' style="' not in plain and b"<mark>" in plain


def test_token_only_in_post_forms() -> None:
    out = edit_page(PAGE, HTML, Edit(token="T" * 24))
    assert out is not None
    field = f'<input type="hidden" name="{TOKEN_FIELD}" value="{"T" * 24}">'.encode()
    assert out.count(field) == 1
    assert out.index(field) == out.index(b'action="kirim">') + len(b'action="kirim">')
    assert BANNER_ID.encode() not in out  # online: token, no banner
    no_form = b"<body><form method=get></form></body>"
    assert edit_page(no_form, HTML, Edit(token="T" * 24)) is None


def test_token_and_banner_together() -> None:
    out = edit_page(PAGE, HTML, Edit(copy_time=COPY, token="T" * 24))
    assert out is not None and TOKEN_FIELD.encode() in out and BANNER_ID.encode() in out


def test_edited_headers() -> None:
    fields: CIMultiDict[str] = CIMultiDict([
        ("Content-Type", "text/html"), ("ETag", '"a"'), ("Last-Modified", "x"),
        ("Content-Encoding", "gzip"), ("Content-Length", "10"), ("Cache-Control", "max-age=60"),
        ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Digest", "sha-256=x"), ("Vary", "Accept")])
    edited_headers(fields)
    assert fields.getall("Set-Cookie") == ["a=1", "b=2"]
    assert fields["Cache-Control"] == "no-store"
    assert {k.lower() for k in fields} == {"cache-control", "content-type", "set-cookie", "vary"}
