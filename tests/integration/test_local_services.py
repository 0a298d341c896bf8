"""Government services (``http://layanan.desa/``) end to end in the virtual
village: the caching reverse proxy in front of a real origin, offline
behaviour and store-and-forward of forms, with the real daemon.

One lab for the module. The origin is ``dukcapil.lab`` in the WAN namespace
(lab/desanet_lab/gov_origin.py); it counts every request it answers per path, so
a test tells a cache hit (the origin saw nothing) from a miss by reading
``/_lab/stats`` before and after. The client c1 never logs in to the portal:
local services are part of the walled garden. "Offline" means the gateway's
WAN link is down (``ip link set wan0 down``, which also removes the default
route; :func:`wan_down` puts both back whatever happens).

Tests run in file order and share the cache; each uses its own URLs (or a
unique query string) and compares origin counters as deltas.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psutil
import pytest

from desanet_lab import LabInfo, LabSpec, run_in
from desanet_lab import plan as p
from tests.integration.conftest import (
    LAB_TOOLS,
    Http,
    LabFactory,
    desanet,
    desanet_json,
    ensure_gateway,
    gateway_pid,
    http,
    internet,
    require_root,
    require_tools,
    start_gateway,
    unique_prefix,
    wait_exit,
    wait_until,
)

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS)]

PREFIX = unique_prefix("ls")
SITE = "http://layanan.desa"
SVC = f"{SITE}/dukcapil"
ORIGIN = f"http://{p.DUKCAPIL_HOST}"
WAN_GW = "100.64.0.1"  # the ISP side of the gateway's WAN link (its default route)
BIG_MB = 50
CLIENT_HOUR = 6
REF_RE = re.compile(r"DN-[0-9A-Z]{4}-[0-9A-Z]{4}")
BANNER = 'id="desanet-offline"'
BANNER_RE = re.compile(rb'<div id="desanet-offline".*?</div>', re.S)
TOKEN_RE = re.compile(r'name="_desanet_token" value="([^"]+)"')
MONTHS_ID = ("Jan", "Feb", "Mar", "Apr", "Mei", "Jun", "Jul", "Agu", "Sep", "Okt", "Nov", "Des")


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    # A 50 MB object must fit the store's per-object limit (1/8 of the size); c1 may queue
    # CLIENT_HOUR forms an hour (the module queues fewer before the test of that limit).
    # Shaping off: c1 never logs in, and the proxy's misses are shaped in the unauthorized
    # class (tests/integration/test_hostile_proxy.py); here it is the cache that is tested.
    return make_lab(LabSpec(prefix=PREFIX, clients=1,
                            extra={"shaping": {"enabled": False},
                                   "local_services": {"cache_size": "1gb",
                                                      "queue_per_client_hour": CLIENT_HOUR}}))


# -- helpers ------------------------------------------------------------------------------

def fetch(ns: str, url: str, *, method: str = "GET", headers: tuple[str, ...] = (),
          data: str | None = None, timeout: float = 10.0) -> Http:
    """One HTTP exchange by curl in namespace ``ns`` (``.raw``: the body as bytes)."""
    return http(ns, url, method=method, headers=headers, data=data, timeout=timeout)


def origin_stats(lab: LabInfo) -> dict[str, int]:
    proc = run_in(lab.wan, ["curl", "-sS", "--max-time", "5", f"{ORIGIN}/_lab/stats"])
    assert proc.returncode == 0, f"origin stats: {proc.stderr.strip()}"
    data: dict[str, int] = json.loads(proc.stdout)
    return data


def origin_count(lab: LabInfo, path: str) -> int:
    return origin_stats(lab).get(path, 0)


def origin_submissions(lab: LabInfo) -> dict[str, dict[str, Any]]:
    proc = run_in(lab.wan, ["curl", "-sS", "--max-time", "5", f"{ORIGIN}/_lab/submissions"])
    assert proc.returncode == 0, f"origin submissions: {proc.stderr.strip()}"
    data: dict[str, dict[str, Any]] = json.loads(proc.stdout)
    return data


def submissions_with_ref(lab: LabInfo, ref: str) -> list[dict[str, Any]]:
    return [s for s in origin_submissions(lab).values() if s.get("reference") == ref]


def services_json(lab: LabInfo) -> dict[str, Any]:
    data: dict[str, Any] = desanet_json(lab.control_socket, "services")
    return data


def c1(lab: LabInfo) -> str:
    return lab.client(1).name


def _link(lab: LabInfo, state: str) -> None:
    run_in(lab.gw, ["ip", "link", "set", p.WAN_INTERFACE, state], check=True)


def wan_up(lab: LabInfo) -> None:
    _link(lab, "up")
    routes = run_in(lab.gw, ["ip", "-4", "route", "show", "default"]).stdout
    if "default" not in routes:
        run_in(lab.gw, ["ip", "route", "replace", "default", "via", WAN_GW], check=True)
    wait_until(lambda: run_in(lab.gw, ["curl", "-s", "-o", "/dev/null", "--max-time", "2",
                                         "-w", "%{http_code}", f"{ORIGIN}/_lab/stats"]
                                ).stdout == "200",
                 15, "the origin to answer the gateway again")


@contextlib.contextmanager
def wan_down(lab: LabInfo) -> Iterator[None]:
    """The gateway's uplink is cut inside the block and restored after it."""
    _link(lab, "down")
    try:
        yield
    finally:
        wan_up(lab)


def refs_in(text: str) -> list[str]:
    return REF_RE.findall(text)


def without_banner(raw: bytes) -> bytes:
    return BANNER_RE.sub(b"", raw, count=1)


def banner_time(text: str) -> float:
    """The date of the copy the banner shows, read as Asia/Jakarta (the lab's site.timezone)."""
    match = re.search(r"Salinan offline</strong> dari (\d+) (\w+) (\d{4}) (\d\d):(\d\d) WIB", text)
    assert match, f"no banner with a WIB date in {text[:600]}"
    day, month, year, hour, minute = match.groups()
    when = dt.datetime(int(year), MONTHS_ID.index(month) + 1, int(day), int(hour), int(minute),
                       tzinfo=ZoneInfo("Asia/Jakarta"))
    return when.timestamp()


def receipt_ref(lab: LabInfo, answer: Http) -> str:
    """Follow a form's 303 to its receipt page and read the reference number there."""
    assert answer.status == 303, answer
    assert answer.location.startswith("/kiriman?ref="), answer.headers
    receipt = fetch(c1(lab), f"{SITE}{answer.location}")
    assert receipt.status == 200 and "Formulir Anda tersimpan" in receipt.text, receipt.text
    refs = refs_in(receipt.text)
    assert refs, f"no reference number on the receipt page: {receipt.text}"
    return refs[0]


def waiting_forms(lab: LabInfo) -> int:
    outbox = services_json(lab)["outbox"]
    return int(outbox.get("queued", 0)) + int(outbox.get("unknown", 0)) + int(outbox.get("sending", 0))


def kiriman(lab: LabInfo, ref: str) -> Http:
    return fetch(c1(lab), f"{SITE}/kiriman?ref={ref}")


def big_expected(size: int) -> tuple[int, str]:
    """Size and sha256 of the origin's deterministic /big body."""
    chunk = bytes(range(256)) * 256
    digest = hashlib.sha256()
    left = size
    while left > 0:
        piece = chunk[: min(len(chunk), left)]
        digest.update(piece)
        left -= len(piece)
    return size, digest.hexdigest()


# -- 1. reachable before login, through the gateway's DNS -----------------------------------


def test_catalog_before_login_via_gateway_dns(lab: LabInfo) -> None:
    ns = c1(lab)
    # c1 never logged in: the internet sends it to the portal ...
    assert internet(ns, retry=True).redirected_to_portal(), "c1 should not be logged in"
    # ... but layanan.desa resolves through the gateway's dnsmasq (DHCP gave c1 that resolver).
    resolv = (p.NETNS_ETC / ns / "resolv.conf").read_text()
    assert p.LAN_IP in resolv, f"c1 did not get the gateway as its resolver: {resolv!r}"
    look = run_in(ns, ["busybox", "nslookup", "layanan.desa", p.LAN_IP])
    assert p.LAN_IP in look.stdout.split("Name:", 1)[-1], look.stdout + look.stderr

    r = fetch(ns, f"{SITE}/")
    assert r.status == 200, r
    assert "Layanan pemerintah" in r.text and "Data Kependudukan (lab)" in r.text
    en = fetch(ns, f"{SITE}/?lang=en")
    assert en.status == 200, en
    assert "Government services" in en.text and "Population records (lab)" in en.text

    svc = fetch(ns, f"{SVC}/")
    assert svc.status == 200, svc
    assert "Dukcapil (lab)" in svc.text


# -- 2. hits, 304, Vary, no-store -------------------------------------------------------------


def test_second_request_is_a_hit(lab: LabInfo) -> None:
    ns = c1(lab)
    url = f"{SVC}/slow?ms=0&x=hit"
    before = origin_count(lab, "/slow")
    first = fetch(ns, url)
    assert first.status == 200 and first.text == "slow page\n", first
    assert "fwd=miss" in first.cache_status and "stored" in first.cache_status, first.headers
    assert origin_count(lab, "/slow") == before + 1
    second = fetch(ns, url)
    assert second.status == 200 and second.raw == first.raw
    assert second.cache_status == "desanet; hit", second.headers
    assert origin_count(lab, "/slow") == before + 1, "the second request reached the origin"


def test_etag_revalidation_304(lab: LabInfo) -> None:
    ns = c1(lab)
    before = origin_count(lab, "/etag")
    first = fetch(ns, f"{SVC}/etag")
    assert first.status == 200 and "Selalu divalidasi ulang" in first.text, first
    assert "stored" in first.cache_status, first.headers
    etag = first.headers.get("etag")
    assert etag
    for k in (2, 3):
        again = fetch(ns, f"{SVC}/etag")
        assert again.status == 200, again
        assert again.raw == first.raw
        assert again.headers.get("etag") == etag
        # no-cache: every use asks the origin, which answers 304; the stored body is reused.
        assert "fwd-status=304" in again.cache_status, again.headers
        assert origin_count(lab, "/etag") == before + k
    # The client's own conditional request is answered 304 (after revalidation).
    cond = fetch(ns, f"{SVC}/etag", headers=(f"If-None-Match: {etag}",))
    assert cond.status == 304, cond
    assert cond.raw == b""


def test_vary_accept_language(lab: LabInfo) -> None:
    ns = c1(lab)
    before = origin_count(lab, "/vary")
    en = fetch(ns, f"{SVC}/vary", headers=("Accept-Language: en",))
    idn = fetch(ns, f"{SVC}/vary", headers=("Accept-Language: id",))
    assert (en.status, idn.status) == (200, 200)
    assert "Hello" in en.text and "Halo" in idn.text
    assert en.raw != idn.raw
    en2 = fetch(ns, f"{SVC}/vary", headers=("Accept-Language: en",))
    id2 = fetch(ns, f"{SVC}/vary", headers=("Accept-Language: id",))
    assert en2.raw == en.raw and id2.raw == idn.raw
    assert en2.cache_status == "desanet; hit" and id2.cache_status == "desanet; hit", (
        en2.headers, id2.headers)
    assert origin_count(lab, "/vary") == before + 2


def test_no_store_never_stored(lab: LabInfo) -> None:
    ns = c1(lab)
    before = origin_count(lab, "/nostore")
    bodies = []
    for _ in range(3):
        r = fetch(ns, f"{SVC}/nostore")
        assert r.status == 200, r
        assert "hit" not in r.cache_status and "stored" not in r.cache_status, r.headers
        bodies.append(r.text)
    assert origin_count(lab, "/nostore") == before + 3
    assert len(set(bodies)) == 3, f"the origin numbers its answers; got {bodies}"


# -- 3. collapsing, stale-while-revalidate, HEAD and ranges ----------------------------------


def test_concurrent_requests_collapse(lab: LabInfo) -> None:
    ns = c1(lab)
    url = f"{SVC}/slow?ms=800&x=collapse{time.time_ns()}"
    before = origin_count(lab, "/slow")
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda _: fetch(ns, url), range(5)))
    assert all(r.status == 200 and r.text == "slow page\n" for r in results), results
    assert origin_count(lab, "/slow") == before + 1, "5 concurrent misses made several fetches"
    assert sum("fwd=miss" in r.cache_status for r in results) == 1, [r.cache_status for r in results]


def test_stale_while_revalidate(lab: LabInfo) -> None:
    """/swr: max-age=1, stale-while-revalidate=30. Once stale, the stored copy is served
    at once and the origin is asked in the background; the villager then gets the new
    version. (Waits on what the cache says, never on a fixed sleep: a busy machine may
    take longer than the one-second lifetime between any two steps.)"""
    ns = c1(lab)
    before = origin_count(lab, "/swr")
    first = fetch(ns, f"{SVC}/swr")
    assert first.status == 200 and first.text == f"version {before + 1}\n", first

    def served_stale() -> Http | None:
        r = fetch(ns, f"{SVC}/swr")
        return r if "stale-while-revalidate" in r.cache_status else None

    second = wait_until(served_stale, 10, "the stored copy to go stale (max-age=1)")
    assert second is not None and second.status == 200, second
    assert second.raw == first.raw, "the stale copy should be served at once"
    # ... and the origin is asked in the background (once, not once per request).
    wait_until(lambda: origin_count(lab, "/swr") >= before + 2, 10, "the background refresh")

    def refreshed() -> Http | None:  # a newer version than the first (a slow machine may
        r = fetch(ns, f"{SVC}/swr")  # have let that one go stale and refreshed it too)
        newer = r.text.startswith("version ") and int(r.text.split()[1]) >= before + 2
        return r if newer else None

    third = wait_until(refreshed, 10, "the refreshed copy")
    assert third is not None
    assert third.cache_status.startswith("desanet; hit"), third.headers  # from the store


def test_head_and_ranges_from_stored_get(lab: LabInfo) -> None:
    ns = c1(lab)
    url = f"{SVC}/big?mb=1"
    size = 1024 * 1024
    full = fetch(ns, url)
    assert full.status == 200 and len(full.raw) == size, (full.status, len(full.raw))
    count = origin_count(lab, "/big")

    head = fetch(ns, url, method="HEAD")
    assert head.status == 200 and head.raw == b"", head
    assert head.headers.get("content-length") == str(size)
    assert "hit" in head.cache_status, head.headers

    part = fetch(ns, url, headers=("Range: bytes=0-9",))
    assert part.status == 206, part
    assert part.headers.get("content-range") == f"bytes 0-9/{size}"
    assert part.raw == bytes(range(10))

    tail = fetch(ns, url, headers=("Range: bytes=-4",))
    assert tail.status == 206 and tail.raw == bytes([252, 253, 254, 255]), tail

    bad = fetch(ns, url, headers=(f"Range: bytes={size + 10}-",))
    assert bad.status == 416, bad
    assert bad.headers.get("content-range") == f"bytes */{size}"
    assert origin_count(lab, "/big") == count, "HEAD or a range reached the origin"


# -- 4. a big file: streamed, hit, and not held in memory -------------------------------------


def _peak_rss(pid: int, stop: threading.Event, out: list[int]) -> None:
    proc = psutil.Process(pid)
    peak = 0
    while not stop.is_set():
        with contextlib.suppress(psutil.Error):
            peak = max(peak, proc.memory_info().rss)
        time.sleep(0.02)
    out.append(peak)


def _download(lab: LabInfo, url: str, dest: Path) -> tuple[int, dict[str, str]]:
    headers_file = dest.with_suffix(".headers")
    proc = run_in(c1(lab), ["curl", "-sS", "--max-time", "60", "-D", str(headers_file),
                            "-o", str(dest), "-w", "%{http_code}", url], timeout=70)
    assert proc.returncode == 0, proc.stderr
    hdrs = {}
    for line in headers_file.read_text("latin-1").splitlines()[1:]:
        name, _, value = line.partition(":")
        if value:
            hdrs[name.strip().lower()] = value.strip()
    return int(proc.stdout), hdrs


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def test_big_file_streamed_cached_and_not_in_memory(lab: LabInfo, tmp_path: Path) -> None:
    pid = gateway_pid(lab)
    url = f"{SVC}/big?mb={BIG_MB}"
    size, sha = big_expected(BIG_MB * 1024 * 1024)
    before = origin_count(lab, "/big")
    rss_before = psutil.Process(pid).memory_info().rss
    for attempt, expect in ((1, "fwd=miss; stored"), (2, "hit")):
        stop, peak = threading.Event(), list[int]()
        sampler = threading.Thread(target=_peak_rss, args=(pid, stop, peak))
        sampler.start()
        try:
            dest = tmp_path / f"big{attempt}.bin"
            code, hdrs = _download(lab, url, dest)
        finally:
            stop.set()
            sampler.join()
        assert code == 200
        assert dest.stat().st_size == size
        assert _sha256(dest) == sha, "the client got different bytes than the origin sent"
        assert expect in hdrs.get("cache-status", ""), hdrs
        grew = (peak[0] - rss_before) / 1e6
        assert grew < 40, f"daemon RSS grew {grew:.0f} MB while serving a {BIG_MB} MB file"
        dest.unlink()
    assert origin_count(lab, "/big") == before + 1, "the second download was not a hit"


# -- 5. offline ------------------------------------------------------------------------------------


def test_offline_catalog_cached_pages_and_504(lab: LabInfo) -> None:
    ns = c1(lab)
    cached = fetch(ns, f"{SVC}/")
    assert cached.status == 200
    etag_copy = fetch(ns, f"{SVC}/etag")
    assert etag_copy.status == 200
    root_count = origin_count(lab, "GET /")
    etag_count = origin_count(lab, "/etag")
    with wan_down(lab):
        # Never fetched: a clear page in Bahasa, not a hang or a bare error.
        miss = fetch(ns, f"{SVC}/never-fetched-{time.time_ns()}")
        assert miss.status == 504, miss
        assert "tidak dapat dihubungi" in miss.text and "<html" in miss.text.lower(), miss.text
        assert "upstream-unreachable" in miss.cache_status

        catalog = fetch(ns, f"{SITE}/")
        assert catalog.status == 200
        assert "Salinan offline dari" in catalog.text, catalog.text
        en = fetch(ns, f"{SITE}/?lang=en")
        assert "Offline copy from" in en.text

        # The stored copy, marked as one (the 504 above told the gateway the link is down).
        page = fetch(ns, f"{SVC}/")
        assert page.status == 200 and BANNER in page.text, page
        assert without_banner(page.raw) == cached.raw
        # A forced revalidation fails: the good copy stands in (offline_for = 1d) ...
        forced = fetch(ns, f"{SVC}/", headers=("Cache-Control: max-age=0",))
        assert forced.status == 200 and without_banner(forced.raw) == cached.raw, forced
        assert BANNER in forced.text
        assert "stale-if-error" in forced.cache_status, forced.headers
        # ... other cached pages still open ...
        vary = fetch(ns, f"{SVC}/vary", headers=("Accept-Language: en",))
        assert vary.status == 200 and "Hello" in vary.text
        # ... but a no-cache page is never served without the origin's word (RFC 9111 §4.2.4).
        nc = fetch(ns, f"{SVC}/etag")
        assert nc.status == 504, nc
        svc = services_json(lab)["services"]["dukcapil"]
        assert svc["state"] == "offline" and svc["consecutive_errors"] >= 1, svc

    # Link back: the failed revalidations evicted nothing, and the banner goes once the
    # gateway has seen the upstream answer again.
    def live() -> Http | None:
        r = fetch(ns, f"{SVC}/")
        return r if BANNER not in r.text else None

    after = wait_until(live, 40, "the page to be served without the offline banner")
    assert after is not None and after.status == 200 and after.raw == cached.raw
    assert after.cache_status == "desanet; hit", after.headers
    assert origin_count(lab, "GET /") == root_count, "the stored copy of / was refetched"
    nc_back = fetch(ns, f"{SVC}/etag")
    assert nc_back.status == 200 and nc_back.raw == etag_copy.raw
    assert "fwd-status=304" in nc_back.cache_status, nc_back.headers
    assert origin_count(lab, "/etag") == etag_count + 1


# -- 6. store-and-forward ----------------------------------------------------------------------


def _post_offline(lab: LabInfo, name: str) -> str:
    ref = receipt_ref(lab, fetch(c1(lab), f"{SVC}/form", method="POST", data=f"nama={name}"))
    status = kiriman(lab, ref)
    assert status.status == 200 and "Menunggu jaringan" in status.text, status.text
    return ref


def _delivered_once(lab: LabInfo, ref: str, name: str, timeout: float = 45.0) -> None:
    subs = wait_until(lambda: submissions_with_ref(lab, ref), timeout,
                        f"the origin to receive {ref}", interval=0.5)
    time.sleep(1.0)  # room for a duplicate to show up
    subs = submissions_with_ref(lab, ref)
    assert len(subs) == 1, f"{ref} arrived {len(subs)} times: {subs}"
    assert subs[0]["repeats"] == 0, f"{ref} was sent again: {subs[0]}"
    assert subs[0]["body"] == f"nama={name}"
    wait_until(lambda: "Sudah terkirim" in kiriman(lab, ref).text, 10,
                 f"the status page of {ref} to say delivered")


def test_store_and_forward_exactly_once(lab: LabInfo) -> None:
    with wan_down(lab):
        ref = _post_offline(lab, "Budi")
        assert services_json(lab)["outbox"].get("queued", 0) >= 1
        time.sleep(1.0)
        assert not submissions_with_ref(lab, ref)
    _delivered_once(lab, ref, "Budi")
    assert services_json(lab)["outbox"].get("queued", 0) == 0


def test_kill9_keeps_queue_and_cache(lab: LabInfo) -> None:
    ns = c1(lab)
    page = fetch(ns, f"{SVC}/vary", headers=("Accept-Language: id",))
    assert page.status == 200
    pid = ensure_gateway(lab)
    with wan_down(lab):
        ref = _post_offline(lab, "Siti")
        os.kill(pid, signal.SIGKILL)
        wait_exit(pid, 5)
        new_pid = start_gateway(lab)
        assert new_pid != pid
        # Still offline, straight after the restart: the disk cache survived kill -9.
        again = fetch(ns, f"{SVC}/vary", headers=("Accept-Language: id",))
        assert again.status == 200 and without_banner(again.raw) == without_banner(page.raw), again
        assert "hit" in again.cache_status, again.headers
        status = kiriman(lab, ref)
        assert status.status == 200 and "Sudah terkirim" not in status.text, status.text
        assert not submissions_with_ref(lab, ref)
    _delivered_once(lab, ref, "Siti")


# -- 7. metrics ------------------------------------------------------------------------------------


def test_metrics_through_the_cli(lab: LabInfo) -> None:
    data = services_json(lab)
    assert data["enabled"] is True and data["hostname"] == "layanan.desa"
    cache = data["cache"]
    for key in ("hit_ratio", "hits", "misses", "bytes_from_cache", "bytes_from_upstream",
                "entries", "bytes", "max_bytes"):
        assert key in cache, f"{key} missing from {sorted(cache)}"
    # After the restart the counters start again; make some traffic of known kind.
    fetch(c1(lab), f"{SVC}/vary", headers=("Accept-Language: en",))
    fetch(c1(lab), f"{SVC}/nostore")
    cache = services_json(lab)["cache"]
    assert cache["hits"] >= 1 and cache["bytes_from_cache"] > 0
    assert cache["bytes_from_upstream"] > 0
    assert 0 < cache["hit_ratio"] <= 1
    assert cache["entries"] >= 5  # the store itself survived the restart
    svc = services_json(lab)["services"]["dukcapil"]
    assert svc["state"] == "online" and svc["requests"] >= 1
    # The service's own hit ratio (the TUI's Services page): /nostore was its miss, so a
    # hit now raises it, by exactly one hit.
    before = svc["cache"]
    assert before["misses"] >= 1 and before["hit_ratio"] is not None and before["hit_ratio"] < 1
    hit = fetch(c1(lab), f"{SVC}/vary", headers=("Accept-Language: en",))
    assert "hit" in hit.cache_status, hit.headers
    after = services_json(lab)["services"]["dukcapil"]["cache"]
    assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"], after
    assert after["hit_ratio"] > before["hit_ratio"], (before, after)
    outbox = services_json(lab)["outbox"]
    assert outbox.get("delivered", 0) >= 1 and outbox.get("queued", 0) == 0, outbox
    text = desanet(lab.control_socket, "services")
    assert text.returncode == 0 and "hit ratio" in text.stdout and "dukcapil" in text.stdout
    line = next(x for x in text.stdout.splitlines() if x.strip().startswith("dukcapil"))
    assert f" {after['hit_ratio']:.0%} " in line, line


# -- 8. offline as a villager sees it: banner, prefetched form, one token, whole bodies -----------


def test_offline_banner_prefetched_form_and_one_time_token(lab: LabInfo) -> None:
    ns = c1(lab)
    # The prefetch followed the start page's link to the form page; no villager asked for it.
    def form_found() -> dict[str, Any] | None:
        prefetch: dict[str, Any] = services_json(lab)["prefetch"]
        return prefetch if f"{ORIGIN}/formulir" in prefetch.get("forms", {}).get("dukcapil", []) \
            else None

    wait_until(form_found, 90, "the prefetch to find and keep the form page")
    form_gets = origin_count(lab, "GET /formulir")
    assert form_gets >= 1
    online = fetch(ns, f"{SVC}/")
    assert online.status == 200 and BANNER not in online.text, online  # positive control
    with wan_down(lab):
        assert fetch(ns, f"{SVC}/never-fetched-{time.time_ns()}").status == 504
        page = fetch(ns, f"{SVC}/")
        assert page.status == 200 and BANNER in page.text and "Dukcapil (lab)" in page.text, page
        assert page.headers.get("cache-control") == "no-store"
        assert int(page.headers["content-length"]) == len(page.raw)
        # The date is the copy's, in the village's zone (a UTC date would be 7 hours off).
        assert abs(banner_time(page.text) - time.time()) < 3600

        form = fetch(ns, f"{SVC}/formulir")
        assert form.status == 200 and BANNER in form.text, form
        assert '<form method="post" action="formulir">' in form.text
        assert "hit" in form.cache_status, form.headers
        match = TOKEN_RE.search(form.text)
        assert match, form.text
        waiting = waiting_forms(lab)
        name = f"Tok{time.time_ns()}"
        answers = [fetch(ns, f"{SVC}/formulir", method="POST",
                         data=f"nama={name}&_desanet_token={match.group(1)}") for _ in range(2)]
        assert [a.status for a in answers] == [303, 303], answers
        assert answers[0].location == answers[1].location, "a double tap got two receipts"
        ref = receipt_ref(lab, answers[0])
        assert receipt_ref(lab, answers[0]) == ref  # refreshing the receipt is a GET
        assert waiting_forms(lab) == waiting + 1, "the same token was queued twice"
        assert origin_count(lab, "GET /formulir") == form_gets
    _delivered_once(lab, ref, name)  # the body arrives without the token field
    assert [s for s in origin_submissions(lab).values() if s.get("body") == f"nama={name}"] \
        == submissions_with_ref(lab, ref)


def _post_file(lab: LabInfo, path: Path, timeout: float = 30.0) -> Http:
    """POST a file's bytes as they are (curl's --data-binary), without Expect: 100-continue."""
    return http(c1(lab), f"{SVC}/formulir", method="POST", timeout=timeout,
                headers=("Content-Type: application/octet-stream", "Expect:"),
                extra=("--data-binary", f"@{path}"))


def test_1mb_form_is_stored_whole_or_refused_never_cut(lab: LabInfo, tmp_path: Path) -> None:
    body = hashlib.sha256(str(time.time_ns()).encode()).digest() * (1024 * 1024 // 32)
    assert len(body) == 1024 * 1024  # the default max_form_size, exactly
    whole, over = tmp_path / "whole.bin", tmp_path / "over.bin"
    whole.write_bytes(body)
    over.write_bytes(body + b"!")
    before = len(origin_submissions(lab))
    with wan_down(lab):
        waiting = waiting_forms(lab)
        refused = _post_file(lab, over)
        assert refused.status == 413, refused
        assert "Formulir terlalu besar" in refused.text and "<html" in refused.text.lower()
        assert waiting_forms(lab) == waiting, "a refused form was stored"
        ref = receipt_ref(lab, _post_file(lab, whole))
        assert waiting_forms(lab) == waiting + 1
    subs = wait_until(lambda: submissions_with_ref(lab, ref), 45,
                      f"the origin to receive {ref}", interval=0.5)
    assert subs[0]["length"] == len(body), f"{ref} arrived with {subs[0]['length']} bytes"
    assert subs[0]["sha256"] == hashlib.sha256(body).hexdigest()
    assert len(origin_submissions(lab)) == before + 1, "the refused form reached the origin"


def test_per_client_limit_refuses_cleanly(lab: LabInfo) -> None:
    before = len(origin_submissions(lab))
    stored: list[str] = []
    with wan_down(lab):
        for i in range(CLIENT_HOUR + 1):
            waiting = waiting_forms(lab)
            answer = fetch(c1(lab), f"{SVC}/form", method="POST", data=f"nama=Batas{i}")
            if answer.status == 303:  # positive control: under the limit, stored
                stored.append(receipt_ref(lab, answer))
                assert waiting_forms(lab) == waiting + 1
                continue
            assert answer.status == 429, answer
            assert "Formulir belum bisa disimpan" in answer.text and REF_RE.search(answer.text) is None
            assert waiting_forms(lab) == waiting, "a refused form was stored"
            break
        else:
            pytest.fail(f"{CLIENT_HOUR + 1} forms in a row were queued; the limit is {CLIENT_HOUR}")
    assert stored, "the first form of the test was refused already"
    wait_until(lambda: all(submissions_with_ref(lab, ref) for ref in stored), 45,
               "the stored forms to be delivered", interval=0.5)
    assert len(origin_submissions(lab)) == before + len(stored), "a refused form reached the origin"
