"""What the cache sends to an upstream and what an unsafe answer changes in the store.

Pure functions (no I/O), used by proxy.py and service.py:

* :func:`request_headers` -- the villager's end-to-end request fields as forwarded
  (RFC 9110 §7.6): all of them except the hop-by-hop ones, the ones the privacy
  policy strips, and those the gateway sets itself; plus our own ``Via``.
* :func:`invalidated_keys` -- the store keys an unsafe request's answer makes
  stale (RFC 9111 §4.4): the target URI and its ``Location`` / ``Content-Location``
  when they point into the same service.
* :func:`post_answer_key` -- the GET key a POST answer may be stored under
  (RFC 9110 §9.3.3: ``Content-Location`` equal to the target URI, and RFC 9111 §4:
  explicit freshness).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote, urljoin, urlsplit

from gateway.cache.rules import parse_cache_control

# Connection-level fields (RFC 9110 §7.6.1): never forwarded, nor the fields Connection names.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authenticate", "proxy-authorization",
})
# Set by the gateway for its own connection: Host (the upstream's), the body's framing
# (the body was read whole), its coding (aiohttp's server hands the body over decoded,
# so it goes upstream decoded), Expect (the villager's 100-continue was answered here),
# and the reference the outbox gives a delivered form (never a villager's to choose).
GATEWAY_SET = frozenset({"host", "content-length", "content-encoding", "expect",
                         "x-desanet-reference"})
# The privacy policy: the upstream sees the gateway's address, never a villager's. Fields
# that carry client addresses are dropped as they come from the LAN (they could also be
# forged there), and the gateway adds none of its own.
PRIVACY_STRIPPED = frozenset({
    "forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip",
})
# The villager's preconditions. Forwarded on a miss (its answer, e.g. a 304, is passed
# through and not stored); on a revalidation the cache sends its own validators instead
# and evaluates the villager's against its stored copy.
CONDITIONAL = frozenset({"if-none-match", "if-modified-since", "if-match", "if-unmodified-since",
                         "if-range"})
VIA = "1.1 desanet"  # RFC 9110 §7.6.3: pseudonym, no host name or port
# Characters kept as they are in a path passed on (as service.upstream_target quotes),
# so an invalidated URI maps to the same store key as a villager's GET of it.
PATH_SAFE = "/%:@!$&'()*+,;=-._~"


def end_to_end(req_h: dict[str, str]) -> dict[str, str]:
    """``req_h`` without the fields its ``Connection`` names (RFC 9110 §7.6.1): they never
    reach the upstream, so they must not select a stored variant (Vary) or be recorded as
    the ones the stored answer was chosen for either."""
    named = {name.strip().lower() for name in req_h.get("connection", "").split(",")}
    if not any(name in req_h for name in named if name != "connection"):
        return req_h
    return {k: v for k, v in req_h.items() if k == "connection" or k not in named}


def request_headers(req_h: Mapping[str, str], *, conditionals: bool = True,
                    ranges: bool = True) -> dict[str, str]:
    """The fields of a villager's request (``rules.header_dict`` form) that go upstream.

    ``conditionals=False`` drops the villager's If-* fields (the cache revalidates with
    its own); ``ranges=False`` drops Range (the cache fetches the whole object).
    """
    named = {name.strip().lower() for name in req_h.get("connection", "").split(",")}
    out: dict[str, str] = {}
    for name, value in req_h.items():
        if (name in HOP_BY_HOP or name in named or name in GATEWAY_SET
                or name in PRIVACY_STRIPPED):
            continue
        if not conditionals and name in CONDITIONAL:
            continue
        if not ranges and name in ("range", "if-range"):
            continue
        out[name] = value
    out["via"] = f"{out['via']}, {VIA}" if out.get("via") else VIA
    return out


def answers_preconditions(req_h: Mapping[str, str], status: int) -> bool:
    """A 304 or 412 to a request that carried the villager's own preconditions: an answer
    about those conditions, passed through and never stored (another request without
    them must get the representation)."""
    return status in (304, 412) and any(name in req_h for name in CONDITIONAL)


def _same_service_url(base: str, url: str) -> str | None:
    """``url`` as the store spells it when it is under the service's upstream ``base``."""
    b, u = urlsplit(base), urlsplit(url)
    if u.scheme.lower() != b.scheme.lower() or u.netloc.lower() != b.netloc.lower():
        return None
    prefix = b.path.rstrip("/")
    if u.path != prefix and not u.path.startswith(prefix + "/"):
        return None
    rest = u.path[len(prefix):].lstrip("/")
    query = quote(u.query, safe=PATH_SAFE + "?")
    return base.rstrip("/") + "/" + quote(rest, safe=PATH_SAFE) + (f"?{query}" if query else "")


def invalidated_keys(base: str, target: str, resp_h: Mapping[str, str]) -> list[str]:
    """Store keys to drop after a non-error answer to an unsafe request for ``target``
    (RFC 9111 §4.4). Location and Content-Location (relative ones resolved against the
    target) count only on the same service: another origin's cache entries are not ours
    to drop on its word (§4.4: same host), nor another service's."""
    keys = [f"GET {target}"]
    for name in ("location", "content-location"):
        ref = resp_h.get(name, "").strip()
        if not ref:
            continue
        url = _same_service_url(base, urljoin(target, ref).partition("#")[0])
        if url is not None and f"GET {url}" not in keys:
            keys.append(f"GET {url}")
    return keys


def has_explicit_freshness(resp_h: Mapping[str, str]) -> bool:
    cc = parse_cache_control(resp_h.get("cache-control"))
    return "s-maxage" in cc or "max-age" in cc or "expires" in resp_h


def post_answer_key(base: str, target: str, status: int, resp_h: Mapping[str, str]) -> str | None:
    """The GET key a POST's answer may be stored under, or None.

    RFC 9110 §9.3.3: a POST answer is cacheable with explicit freshness and a
    Content-Location equal to the target URI; it may then answer a later GET for it.
    (Storability by status and Cache-Control is the caller's ``rules.is_storable``.)
    """
    ref = resp_h.get("content-location", "").strip()
    if not ref or status not in (200, 203) or not has_explicit_freshness(resp_h):
        return None
    url = _same_service_url(base, urljoin(target, ref).partition("#")[0])
    here = _same_service_url(base, target)
    return f"GET {url}" if url is not None and url == here else None


