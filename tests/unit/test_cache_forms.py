"""Which linked pages are forms, and the one-time form token (gateway/cache/forms.py)."""

from __future__ import annotations

from gateway.cache.forms import (
    TOKEN_FIELD,
    has_post_form,
    idempotency_key,
    in_service,
    inject_token,
    linked_pages,
    new_token,
    take_token,
)

UP = "https://dukcapil.example.go.id/layanan"
PAGE = b"""<html><body>
<a href="formulir">relative</a> <a href="/layanan/ktp?x=1#top">absolute path</a>
<a href="https://dukcapil.example.go.id/layanan/kk">full</a>
<a href="/lain">outside the base path</a> <a href="https://evil.example/layanan/x">other host</a>
<a href="http://dukcapil.example.go.id/layanan/http">other scheme</a>
<a href="javascript:alert(1)">js</a> <a href="mailto:a@b">mail</a> <a>no href</a>
<a href="formulir#again">duplicate</a> <a href="">self</a>
</body></html>"""


def test_in_service() -> None:
    assert in_service(UP + "/", UP) and in_service(UP + "/a/b?c", UP)
    assert not in_service("https://dukcapil.example.go.id/layananx", UP)
    assert not in_service("https://DUKCAPIL.example.go.id:8443/layanan/a", UP)
    assert in_service("http://h/x", "http://h")


def test_linked_pages_stay_in_the_service() -> None:
    got = linked_pages(PAGE, UP + "/", UP)
    assert got == [UP + "/formulir", UP + "/ktp?x=1", UP + "/kk"]
    assert linked_pages(PAGE, UP + "/", UP, limit=2) == got[:2]
    assert linked_pages(b"not html at all", UP + "/", UP) == []


def test_has_post_form() -> None:
    assert has_post_form(b'<form method="POST" action="x"><input></form>')
    assert has_post_form(b"<FORM Method=post>")
    assert not has_post_form(b'<form action="cari"></form>')  # GET by default
    assert not has_post_form(b"<p>form method=post in text</p>")


def test_inject_token() -> None:
    page = b'<form method="post"><input name=a></form><form method=get></form><form method=POST>'
    out = inject_token(page, "tok")
    assert out is not None and out.count(b'name="_desanet_token" value="tok"') == 2
    assert inject_token(b"<form></form>", "tok") is None


def test_take_token_urlencoded() -> None:
    token = new_token()
    body = f"nama=Budi&{TOKEN_FIELD}={token}&nik=1".encode()
    got, rest = take_token(body, "application/x-www-form-urlencoded; charset=UTF-8")
    assert got == token and rest == b"nama=Budi&nik=1"
    assert take_token(b"nama=Budi", "application/x-www-form-urlencoded") == (None, b"nama=Budi")
    # A field that is not one of our tokens is left for the upstream.
    bad = f"{TOKEN_FIELD}=%3Cx%3E&a=1".encode()
    assert take_token(bad, "application/x-www-form-urlencoded") == (None, bad)
    assert take_token(body, "text/plain") == (None, body)


def test_take_token_multipart() -> None:
    token = new_token()
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"nama\"\r\n\r\nBudi\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"" + TOKEN_FIELD.encode() + b"\"\r\n\r\n"
            + token.encode() + b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"f\"; "
            b"filename=\"a.bin\"\r\n\r\n\x00\x01--\r\n--XyZ--\r\n")
    got, rest = take_token(body, 'multipart/form-data; boundary="XyZ"')
    assert got == token
    assert rest == (b"--XyZ\r\nContent-Disposition: form-data; name=\"nama\"\r\n\r\nBudi\r\n"
                    b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"; "
                    b"filename=\"a.bin\"\r\n\r\n\x00\x01--\r\n--XyZ--\r\n")
    plain = b"--XyZ\r\nContent-Disposition: form-data; name=\"nama\"\r\n\r\nBudi\r\n--XyZ--\r\n"
    assert take_token(plain, "multipart/form-data; boundary=XyZ") == (None, plain)


def test_idempotency_key_is_per_token_and_form() -> None:
    a = idempotency_key("dukcapil", "post", "/f", "t1")
    assert a == idempotency_key("dukcapil", "POST", "/f", "t1")
    assert len({a, idempotency_key("dukcapil", "POST", "/f", "t2"),
                idempotency_key("dukcapil", "POST", "/g", "t1"),
                idempotency_key("bansos", "POST", "/f", "t1")}) == 4
    assert new_token() != new_token()
