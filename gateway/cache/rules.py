"""HTTP caching rules for a shared cache (RFC 9111, RFC 5861): pure functions.

Theory of operation
-------------------
The proxy asks three questions, all answered here without I/O (the time is
always passed in, as POSIX seconds):

1. *May I store this response?*  ``is_storable``; then ``StoredMeta.capture``
   builds what the disk store keeps (status, filtered headers, the
   request/response times and the request values of the fields named by Vary).
2. *A request came in and I hold these variants: what now?*  ``pick_variant``
   then ``decide`` -> ``Decision`` (FRESH, STALE_REVALIDATE_IN_BACKGROUND,
   REVALIDATE, MISS or GATEWAY_TIMEOUT for ``only-if-cached``).
3. *Upstream answered a revalidation.*  304 -> ``freshen_with_304``; an error
   (``is_error_for_stale``) -> serve the stale copy only if the REVALIDATE
   decision said so (``stale_on_error`` and ``now < stale_until``), else 504
   for must-revalidate responses or the upstream error otherwise.  A failed
   revalidation never deletes the stored copy.

Header representation: every function takes headers as ``Mapping[str, str]``
whose keys are **lower-case** field names; repeated fields are combined into
one value joined by ", " (RFC 9110 §5.3).  ``header_dict`` builds that from an
aiohttp ``CIMultiDict`` / ``CIMultiDictProxy``, a plain mapping or a list of
pairs.

Decisions worth knowing (all documented again where they are made):

- HEAD responses are never stored; a HEAD request is answered from a stored
  GET response.  206 and 304 responses are never stored: we keep complete
  objects only and serve ranges from them (``parse_range``).
- Responses with ``Set-Cookie``, or to a request with ``Cookie`` (unless they
  ``Vary: Cookie``), are stored only when explicitly shareable (``public`` or
  ``s-maxage``), and Set-Cookie itself is never stored.
- Qualified ``private="f"`` / ``no-cache="f"``: the response is stored without
  the named fields (RFC 9111 §5.2.2.4, §5.2.2.7).
- Invalid freshness values (``max-age=abc``, conflicting duplicate ``max-age``, an
  ``Expires`` that is not a strict HTTP-date) mean stale; see httpfields.py for
  how each field is parsed.
- Any final status but 206/304 is stored with explicit freshness; a 5xx never
  replaces a stored non-5xx answer (``is_storable(replacing=...)``).
- ``CDN-Cache-Control`` (RFC 9213), when valid, replaces Cache-Control and Expires.
- ``offline_for`` is the operator's policy for a service: when the upstream
  fails (unreachable, timeout, 500/502/503/504), a stale copy may be served up
  to ``offline_for`` seconds after it became stale.  It applies on error only,
  never to a fresh request path, and never overrides must-revalidate,
  proxy-revalidate, s-maxage or a response ``no-cache`` (RFC 9111 §4.2.4; a
  no-store response is never stored at all).  A ``stale-if-error`` in the
  response or the request also opens a window; the largest window wins.  A
  response ``no-cache`` still honours its own ``stale-if-error`` (the origin
  opted in explicitly), must-revalidate never does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Literal, TypeVar

# Field parsing lives in httpfields.py; the names other modules import from here stay here.
from gateway.cache.httpfields import DELTA_MAX as DELTA_MAX
from gateway.cache.httpfields import (
    delta_seconds,
    field_names,
    parse_age,
    parse_targeted_cache_control,
    split_list,
)
from gateway.cache.httpfields import format_http_date as format_http_date
from gateway.cache.httpfields import header_dict as header_dict
from gateway.cache.httpfields import parse_cache_control as parse_cache_control
from gateway.cache.httpfields import parse_http_date as parse_http_date

Headers = Mapping[str, str]

HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
# Status codes whose semantics we understand: with must-understand only these are stored
# (RFC 9111 §5.2.2.3).  Without it any final status other than 206/304 may be stored
# when the response says so explicitly (§3).
UNDERSTOOD_STATUSES = frozenset({200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 451, 501})
ERROR_STATUSES = frozenset({500, 502, 503, 504})
HEURISTIC_FRACTION = 0.10
HEURISTIC_MAX = 86400.0

# Never stored, never updated from a 304 (connection handling, framing, privacy).
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade",
})
# They describe the stored body (Content-MD5 is a digest of it; ETag names it and only a
# 304 with the same ETag updates at all, see freshen_applies), or they are kept for privacy.
_NOT_FROM_304 = frozenset({"content-length", "content-encoding", "content-range", "content-type",
                           "content-md5", "etag", "set-cookie", "vary"})


# --------------------------------------------------------------------------- stored metadata

@dataclass(frozen=True)
class StoredMeta:
    """What the cache keeps about a stored response (the body lives in the store).

    ``headers`` are the response headers as stored (lower-case keys, filtered by
    ``storable_headers``); ``vary`` maps each field named by the response's Vary
    to the normalized request value it was fetched with (None: absent).
    ``stale``: known to be stale whatever its freshness says, because a HEAD
    answer showed the origin's copy changed (``update_from_head``); it is
    revalidated before use but, unlike a deleted copy, still serves offline.
    """

    status: int
    headers: dict[str, str]
    request_time: float
    response_time: float
    vary: dict[str, str | None] = field(default_factory=dict)
    stale: bool = False

    @classmethod
    def capture(cls, status: int, request_headers: Headers, response_headers: Headers,
                request_time: float, response_time: float) -> StoredMeta:
        names = vary_key_headers(response_headers) or []
        return cls(status, storable_headers(response_headers), request_time, response_time,
                   {n: _normalize_value(request_headers.get(n), n) for n in names})


def storable_headers(response_headers: Headers) -> dict[str, str]:
    """Drop hop-by-hop fields, Set-Cookie and fields named by qualified private/no-cache."""
    cc, _ = response_cache_control(response_headers)
    drop = set(_HOP_BY_HOP) | {"set-cookie"} | field_names(response_headers.get("connection"))
    for directive in ("private", "no-cache"):
        drop |= field_names(cc.get(directive))
    return {k: v for k, v in response_headers.items() if k not in drop}


# --------------------------------------------------------------------------- storability

def response_cache_control(response_headers: Headers) -> tuple[dict[str, str | None], bool]:
    """The response directives this cache obeys, and whether they came from a targeted field.

    This gateway is a targeted cache for ``CDN-Cache-Control`` (RFC 9213 §3: it is
    the shared cache in front of the origins, the role the field addresses).  A
    valid, non-empty CDN-Cache-Control replaces Cache-Control *and* Expires for
    this cache's storing and freshness (§2.2); one that fails to parse as a
    Dictionary is ignored and Cache-Control applies.  Either field is forwarded
    downstream unchanged: the villager's browser is not a CDN and ignores it."""
    targeted = parse_targeted_cache_control(response_headers.get("cdn-cache-control"))
    if targeted is not None:
        return targeted, True
    return parse_cache_control(response_headers.get("cache-control")), False


def is_storable(method: str, status: int, request_headers: Headers, response_headers: Headers,
                *, replacing: StoredMeta | None = None) -> bool:
    """RFC 9111 §3 for a shared cache.  GET only (HEAD is answered from GET, never stored);
    no 206/304/1xx.  Any other final status is stored when the response allows it
    explicitly (public, s-maxage, max-age, Expires) or its status is heuristically
    cacheable; with must-understand only the statuses this cache understands.

    ``replacing``: the stored response this one would replace.  A 5xx never replaces
    a stored answer that is not itself a 5xx: a failing upstream must not evict the
    good copy that offline villagers and stale-if-error rely on (the error is passed
    on, the copy kept).  With nothing stored, a 5xx with explicit freshness is
    stored as the origin asked."""
    if method.upper() != "GET" or status < 200 or status in (206, 304):
        return False
    if status >= 500 and replacing is not None and replacing.status < 500:
        return False
    req_cc = parse_cache_control(request_headers.get("cache-control"))
    cc, targeted = response_cache_control(response_headers)
    if "must-understand" in cc:
        if status not in UNDERSTOOD_STATUSES:
            return False
    elif "no-store" in cc:
        return False
    if "no-store" in req_cc:
        return False
    if "private" in cc and not cc["private"]:
        return False
    if vary_key_headers(response_headers) is None:
        return False
    shareable = "public" in cc or "s-maxage" in cc
    if "authorization" in request_headers and not (shareable or "must-revalidate" in cc):
        return False
    if "set-cookie" in response_headers and not shareable:
        return False
    # An answer to a request with the villager's cookies may be their own page (a session):
    # shared only when the origin says so, or stored per cookie (Vary: Cookie).
    if ("cookie" in request_headers and not shareable
            and "cookie" not in field_names(response_headers.get("vary"))):
        return False
    return bool(
        shareable or "max-age" in cc or ("expires" in response_headers and not targeted)
        or status in HEURISTIC_STATUSES
    )


def invalidates(method: str, status: int) -> bool:
    """An unsafe request with a non-error answer invalidates stored responses for
    its target URI (RFC 9111 §4.4); the proxy deletes them."""
    return method.upper() not in ("GET", "HEAD", "OPTIONS", "TRACE") and 200 <= status < 400


# --------------------------------------------------------------------------- freshness and age

def freshness_lifetime(response_headers: Headers, shared: bool = True, *, status: int = 200,
                       response_time: float | None = None) -> float | None:
    """Seconds the response is fresh for; None when there is no explicit or heuristic
    freshness (treat as 0).  s-maxage (shared only) > max-age > Expires - Date >
    heuristic 10 % of Date - Last-Modified capped at 24 h (heuristic only for
    heuristically cacheable statuses or a ``public`` non-5xx, never with response no-cache).
    ``response_time`` stands in for a missing or invalid Date.  An invalid Expires
    (not an HTTP-date, e.g. "0", another zone, two values) means already expired
    (RFC 9111 §5.3).  A valid CDN-Cache-Control replaces Cache-Control and Expires."""
    cc, targeted = response_cache_control(response_headers)
    if shared and "s-maxage" in cc:
        return delta_seconds(cc["s-maxage"] or "")
    if "max-age" in cc:
        return delta_seconds(cc["max-age"] or "")
    date = parse_http_date(response_headers.get("date"))
    if date is None:
        date = response_time
    if "expires" in response_headers and not targeted:
        expires = parse_http_date(response_headers["expires"])
        if expires is None or date is None:
            return 0.0
        return max(0.0, expires - date)
    # RFC 9111 §4.2.2 allows heuristics for ``public`` answers of any status; a 5xx
    # is kept out: a server's failure is never guessed fresh (only said fresh explicitly).
    if "no-cache" in cc or not (status in HEURISTIC_STATUSES or ("public" in cc and status < 500)):
        return None
    last_modified = parse_http_date(response_headers.get("last-modified"))
    if last_modified is None or date is None:
        return None
    return min(HEURISTIC_MAX, max(0.0, (date - last_modified) * HEURISTIC_FRACTION))


def _corrected_initial_age(age: str | None, date: str | None, request_time: float,
                           response_time: float) -> float:
    age_value = parse_age(age)
    date_ts = parse_http_date(date)
    date_value = response_time if date_ts is None else date_ts
    apparent_age = max(0.0, response_time - date_value)
    response_delay = max(0.0, response_time - request_time)
    return max(apparent_age, age_value + response_delay)


def current_age(stored: StoredMeta, now: float) -> float:
    """RFC 9111 §4.2.3."""
    return _facts(stored).initial_age + max(0.0, now - stored.response_time)


@dataclass(frozen=True)
class _StoredFacts:
    """What ``decide``, ``current_age`` and ``vary_matches`` derive from a stored response."""

    lifetime: float  # freshness lifetime, 0 when none
    initial_age: float  # corrected_initial_age (RFC 9111 §4.2.3)
    vary_names: tuple[str, ...] | None  # None for Vary: *
    must_revalidate: bool  # must-revalidate, proxy-revalidate or s-maxage: never served stale
    no_cache: bool  # unqualified response no-cache
    stale_if_error: float | None  # the response's own stale-if-error, seconds
    stale_while_revalidate: float | None


@functools.lru_cache(maxsize=4096)
def _facts_for(status: int, request_time: float, response_time: float, cache_control: str | None,
               date: str | None, expires: str | None, last_modified: str | None, age: str | None,
               vary: str | None, cdn_cache_control: str | None) -> _StoredFacts:
    headers = {name: value for name, value in (
        ("cache-control", cache_control), ("date", date), ("expires", expires),
        ("last-modified", last_modified), ("vary", vary),
        ("cdn-cache-control", cdn_cache_control)) if value is not None}
    names = vary_key_headers(headers)
    cc, _ = response_cache_control(headers)
    return _StoredFacts(
        lifetime=freshness_lifetime(headers, status=status, response_time=response_time) or 0.0,
        initial_age=_corrected_initial_age(age, date, request_time, response_time),
        vary_names=None if names is None else tuple(names),
        must_revalidate=bool({"must-revalidate", "proxy-revalidate", "s-maxage"} & cc.keys()),
        no_cache="no-cache" in cc and not cc["no-cache"],
        stale_if_error=delta_seconds(cc.get("stale-if-error")),
        stale_while_revalidate=delta_seconds(cc.get("stale-while-revalidate")),
    )


def _facts(stored: StoredMeta) -> _StoredFacts:
    """Memoized on exactly the fields they depend on (every hit asks again for the same
    few stored responses), so a changed header can never reuse an old answer."""
    h = stored.headers
    return _facts_for(stored.status, stored.request_time, stored.response_time,
                      h.get("cache-control"), h.get("date"), h.get("expires"),
                      h.get("last-modified"), h.get("age"), h.get("vary"),
                      h.get("cdn-cache-control"))


def age_header(stored: StoredMeta, now: float) -> str:
    """Value of the Age field to send with a response served from the cache (the
    stored ``age`` header is the upstream's, used for the computation; replace it)."""
    return str(int(current_age(stored, now)))


# --------------------------------------------------------------------------- Vary

# Request fields named by Vary whose values compare case-insensitively: language tags
# (RFC 4647 §2), content codings and charsets (RFC 9110 §8.4.1, §12.5.2), and the "q"
# parameter.  Their order is kept: without q-values it may still mean a preference.
_CASELESS_VARY = frozenset({"accept-language", "accept-encoding", "accept-charset"})


def _normalize_value(value: str | None, name: str = "") -> str | None:
    if value is None:
        return None
    if name in _CASELESS_VARY:
        value = value.lower()
    return ",".join(" ".join(part.split()) for part in value.split(",") if part.strip())


def vary_key_headers(response_headers: Headers) -> list[str] | None:
    """Sorted lower-case field names listed by Vary; [] if none; None for Vary: *."""
    names = field_names(response_headers.get("vary"))
    return None if "*" in names else sorted(names)


def vary_matches(stored: StoredMeta, request_headers: Headers) -> bool:
    names = _facts(stored).vary_names
    if names is None:
        return False
    return all(_normalize_value(request_headers.get(n), n) == stored.vary.get(n) for n in names)


T = TypeVar("T")


def pick_variant(candidates: Sequence[T], request_headers: Headers,
                 meta_of: Callable[[T], StoredMeta]) -> T | None:
    """The most recent candidate whose Vary values match the request (RFC 9111 §4.1)."""
    matching = [c for c in candidates if vary_matches(meta_of(c), request_headers)]
    if not matching:
        return None
    if len(matching) == 1:
        return matching[0]

    def recency(c: T) -> tuple[float, float]:
        m = meta_of(c)
        return (parse_http_date(m.headers.get("date")) or m.response_time, m.response_time)

    return max(matching, key=recency)


# --------------------------------------------------------------------------- decision

class Kind(Enum):
    FRESH = "fresh"  # serve from cache (possibly stale if the client's max-stale allows it)
    STALE_REVALIDATE_IN_BACKGROUND = "stale-while-revalidate"  # serve now, refresh in background
    REVALIDATE = "revalidate"  # conditional request upstream before serving
    MISS = "miss"  # nothing usable: forward the request
    GATEWAY_TIMEOUT = "gateway-timeout"  # only-if-cached and nothing usable: answer 504


@dataclass(frozen=True)
class Decision:
    kind: Kind
    reason: str
    age: float = 0.0
    stale: bool = False
    # REVALIDATE only: may the stored copy be served if the upstream errors, and until when
    # (POSIX time).  stale_on_error is False for must-revalidate/proxy-revalidate/s-maxage:
    # on error the proxy answers 504.
    stale_on_error: bool = False
    stale_until: float | None = None
    must_revalidate: bool = False


def _request_cc(request_headers: Headers) -> dict[str, str | None]:
    if "cache-control" in request_headers:
        return parse_cache_control(request_headers["cache-control"])
    if "no-cache" in field_names(request_headers.get("pragma")):
        return {"no-cache": None}  # HTTP/1.0 Pragma, only without Cache-Control (RFC 9111 §5.4)
    return {}


def decide(request_method: str, request_headers: Headers, stored: StoredMeta | None, now: float,
           *, offline_for: float) -> Decision:
    """What to do with a request given the stored variant (None if none).

    ``offline_for`` (seconds) is the service's operator policy for serving a stale
    copy when the upstream errors; see the module docstring for how it combines.
    """
    req = _request_cc(request_headers)
    only_cached = "only-if-cached" in req
    if stored is None or request_method.upper() not in ("GET", "HEAD"):
        return Decision(Kind.GATEWAY_TIMEOUT if only_cached else Kind.MISS, "nothing stored")
    if not vary_matches(stored, request_headers):
        return Decision(Kind.GATEWAY_TIMEOUT if only_cached else Kind.MISS, "vary mismatch")

    facts = _facts(stored)
    lifetime = facts.lifetime
    age = facts.initial_age + max(0.0, now - stored.response_time)
    staleness = age - lifetime  # > 0 when stale
    stale = staleness > 0 or lifetime == 0 or stored.stale
    expired_at = now - staleness
    must_reval = facts.must_revalidate
    resp_no_cache = facts.no_cache

    # Stale-on-error window (RFC 5861 §4 + operator policy), as an absolute time.
    until: float | None = None
    if not must_reval:
        windows = [facts.stale_if_error]
        if not resp_no_cache:
            windows.append(delta_seconds(req.get("stale-if-error")) if "stale-if-error" in req else None)
            windows.append(float(offline_for))
        best = max((w for w in windows if w is not None), default=None)
        if best is not None:
            until = expired_at + best
    if not stale and not resp_no_cache:
        until = max(until or expired_at, expired_at)  # a still-fresh copy may always be served

    if resp_no_cache:
        return _revalidate("response no-cache", only_cached, now, age, stale, until, must_reval)
    if req:
        if "no-cache" in req:
            return _revalidate("request no-cache", only_cached, now, age, stale, until, must_reval)
        if "max-age" in req and age > (delta_seconds(req["max-age"]) or 0.0):
            return _revalidate("older than request max-age", only_cached, now, age, stale, until,
                               must_reval)
        if "min-fresh" in req and lifetime - age < (delta_seconds(req["min-fresh"]) or 0.0):
            return _revalidate("not fresh enough for request min-fresh", only_cached, now, age,
                               stale, until, must_reval)
    if not stale:
        return Decision(Kind.FRESH, "fresh", age)
    if not must_reval and "max-stale" in req:
        limit = delta_seconds(req["max-stale"]) if req["max-stale"] is not None else float("inf")
        if staleness <= (limit or 0.0):
            return Decision(Kind.FRESH, "stale within request max-stale", age, True)
    swr = facts.stale_while_revalidate
    if not must_reval and swr is not None and staleness <= swr:
        if only_cached:
            return Decision(Kind.FRESH, "stale-while-revalidate (only-if-cached)", age, True)
        return Decision(Kind.STALE_REVALIDATE_IN_BACKGROUND, "within stale-while-revalidate", age, True)
    return _revalidate("stale", only_cached, now, age, stale, until, must_reval)


def _revalidate(reason: str, only_cached: bool, now: float, age: float, stale: bool,
                until: float | None, must_reval: bool) -> Decision:
    if only_cached:
        return Decision(Kind.GATEWAY_TIMEOUT, f"only-if-cached: {reason}", age, stale)
    ok = until is not None and now < until
    return Decision(Kind.REVALIDATE, reason, age, stale, ok, until if ok else None, must_reval)


def may_serve_stale(decision: Decision, now: float) -> bool:
    """After an upstream error on a REVALIDATE decision: serve the stored copy?"""
    return decision.stale_on_error and decision.stale_until is not None and now < decision.stale_until


def is_error_for_stale(outcome: int | BaseException,
                       connection_errors: tuple[type[BaseException], ...] = (OSError,)) -> bool:
    """500/502/503/504 or a connection error / timeout: the stale copy may stand in.

    ``connection_errors`` are the exception types the HTTP client raises when no
    answer arrived (the adapter passes its own, e.g. ``UPSTREAM_CONNECTION_ERRORS``
    in proxy.py); OSError covers refused/reset connections and TimeoutError.
    """
    if isinstance(outcome, int):
        return outcome in ERROR_STATUSES
    status = getattr(outcome, "status", None)
    if isinstance(status, int) and status >= 400:  # e.g. an HTTP client's response error
        return status in ERROR_STATUSES
    return isinstance(outcome, connection_errors)


# --------------------------------------------------------------------------- validation

def conditional_request_headers(stored: StoredMeta) -> dict[str, str]:
    out: dict[str, str] = {}
    if "etag" in stored.headers:
        out["if-none-match"] = stored.headers["etag"]
    if "last-modified" in stored.headers:
        out["if-modified-since"] = stored.headers["last-modified"]
    return out


def _weak_eq(a: str, b: str) -> bool:
    return a.removeprefix("W/") == b.removeprefix("W/")


def freshen_applies(stored: StoredMeta, response_304_headers: Headers) -> bool:
    """Does a 304 refer to this stored response? (RFC 9111 §4.3.4, simplified: when
    both carry an ETag they must be equal by weak comparison.)"""
    new, old = response_304_headers.get("etag"), stored.headers.get("etag")
    return new is None or old is None or _weak_eq(new.strip(), old.strip())


def freshen_with_304(stored: StoredMeta, response_304_headers: Headers, request_time: float,
                     response_time: float) -> StoredMeta:
    """Merge a 304's headers into the stored response (RFC 9111 §3.2, §4.3.4).

    Content-Length, Content-Encoding, Content-Range, Content-Type, Content-MD5,
    ETag, Vary and Set-Cookie are kept from the stored response (they describe the
    body we hold; §3.2 lets a cache keep the fields its stored body depends on);
    hop-by-hop fields are ignored.  Call it only when ``freshen_applies``.  The times are replaced, so the age
    restarts from the 304's Date / Age.
    """
    incoming = storable_headers(response_304_headers)
    headers = dict(stored.headers)
    if "age" not in response_304_headers:
        headers.pop("age", None)  # the stored Age described the old exchange
    for name, value in incoming.items():
        if name not in _NOT_FROM_304:
            headers[name] = value
    return replace(stored, headers=headers, request_time=request_time, response_time=response_time,
                   stale=False)


def head_matches(stored: StoredMeta, head_headers: Headers, stored_size: int | None) -> bool:
    """Does a 200 answer to HEAD describe this stored GET answer? (RFC 9111 §4.3.5)

    Every validator the HEAD answer carries (ETag, Last-Modified) must have the
    same value in the stored answer, and its Content-Length, if any, must be the
    stored body's size.  A HEAD answer with none of these contradicts nothing."""
    for name in ("etag", "last-modified"):
        value = head_headers.get(name)
        if value is not None and value.strip() != stored.headers.get(name, "").strip():
            return False
    length = head_headers.get("content-length")
    return length is None or (stored_size is not None and length.strip() == str(stored_size))


def update_from_head(stored: StoredMeta, head_headers: Headers, stored_size: int | None,
                     request_time: float, response_time: float) -> StoredMeta:
    """The stored GET answer after a 200 to a HEAD for the same request (RFC 9111
    §4.3.5): its headers updated as from a 304 when the HEAD describes it, else
    the same answer marked stale (the origin has another one now)."""
    if head_matches(stored, head_headers, stored_size):
        return freshen_with_304(stored, head_headers, request_time, response_time)
    return replace(stored, stale=True)


def not_modified_for_request(request_headers: Headers, stored: StoredMeta) -> bool:
    """Answer a client's own conditional GET/HEAD with 304 from the cache?
    If-None-Match (weak comparison, "*" matches) takes precedence over
    If-Modified-Since, which compares with Last-Modified (else Date, else the
    response time)."""
    inm = request_headers.get("if-none-match")
    if inm is not None:
        tags = split_list(inm)
        if "*" in tags:
            return True
        etag = stored.headers.get("etag")
        return etag is not None and any(_weak_eq(t, etag.strip()) for t in tags)
    ims = parse_http_date(request_headers.get("if-modified-since"))
    if ims is None:
        return False
    reference = (parse_http_date(stored.headers.get("last-modified"))
                 or parse_http_date(stored.headers.get("date")) or stored.response_time)
    return reference <= ims


# --------------------------------------------------------------------------- ranges

Range = tuple[int, int] | None | Literal["unsatisfiable"]


def parse_range(header: str | None, size: int) -> Range:
    """A single byte range as (first, last) inclusive, clamped to the object.

    None means "serve the full 200": no header, another unit, bad syntax or a
    multi-range request (we don't produce multipart/byteranges).
    "unsatisfiable" means answer 416 with ``Content-Range: bytes */size``.
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    first_s, last_s = first_s.strip(), last_s.strip()
    if not dash or (first_s and not first_s.isdigit()) or (last_s and not last_s.isdigit()):
        return None
    if not first_s:
        if not last_s:
            return None
        suffix = int(last_s)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return (max(0, size - suffix), size - 1)
    first = int(first_s)
    if last_s and int(last_s) < first:
        return None
    if first >= size:
        return "unsatisfiable"
    return (first, min(int(last_s), size - 1) if last_s else size - 1)


def if_range_ok(request_headers: Headers, stored: StoredMeta) -> bool:
    """True if the Range may be honoured (no If-Range, or it matches strongly).
    An entity-tag needs strong equality with a strong ETag; a date must equal
    Last-Modified exactly, and Last-Modified must be strong (≥ 1 s before Date)."""
    value = request_headers.get("if-range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        etag = stored.headers.get("etag", "").strip()
        return bool(etag) and not etag.startswith("W/") and not value.startswith("W/") and etag == value
    when = parse_http_date(value)
    last_modified = parse_http_date(stored.headers.get("last-modified"))
    date = parse_http_date(stored.headers.get("date"))
    if when is None or last_modified is None or date is None:
        return False
    return when == last_modified and last_modified <= date - 1
