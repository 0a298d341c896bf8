"""URLs the portal builds or accepts: Host headers, "continue" links, redirects (pure).

Split from app.py to keep it small; app.py re-exports the names it always had.
"""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit

from aiohttp import hdrs, web

from gateway.errors import VoucherError
from gateway.portal.vouchers import normalize_code

MAX_URL = 2048
# OS connectivity probes: after login there is no point offering to
# "continue" to them, the OS re-probes by itself.
PROBE_HOSTS = frozenset({
    "connectivitycheck.gstatic.com", "connectivitycheck.android.com", "clients3.google.com",
    "captive.apple.com", "www.msftconnecttest.com", "www.msftncsi.com",
    "detectportal.firefox.com", "nmcheck.gnome.org",
})


def host_without_port(host: str) -> str:
    """Lower-case host name of a Host header value, port and trailing dot removed."""
    value = host.strip().lower()
    if value.startswith("["):  # [IPv6]:port
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def safe_url(value: str | None) -> str | None:
    """``value`` when it is an absolute http(s) URL fit to link to, else None.

    Refuses javascript:, data:, scheme-relative and backslash tricks, and
    anything with spaces or control characters.
    """
    if not value or len(value) > MAX_URL:
        return None
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F or ch == "\\" for ch in value):
        return None
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not hostname:
        return None
    return value


def _continue_url(value: str | None) -> str | None:
    url = safe_url(value)
    if url is None or (urlsplit(url).hostname or "") in PROBE_HOSTS:
        return None
    return url


def _query_voucher(value: str | None) -> str:
    """The code of a ``?voucher=`` link in canonical form, or "" for anything that is
    not a well-formed code (never echoed back as typed)."""
    try:
        return normalize_code(value) if value else ""
    except VoucherError:
        return ""


def _url_label(url: str | None) -> str | None:
    """The host of ``url`` (what a villager recognises), for the "continue" button."""
    if url is None:
        return None
    host = urlsplit(url).hostname
    return host or url


def _home(url: str | None, **extra: str) -> str:
    params = dict(extra)
    if url:
        params["url"] = url
    return "/?" + urlencode(params) if params else "/"


def redirect(status: int, location: str) -> web.Response:
    """A redirect whose Location is sent exactly as built (already URL-encoded)."""
    return web.Response(status=status, headers={hdrs.LOCATION: location})
