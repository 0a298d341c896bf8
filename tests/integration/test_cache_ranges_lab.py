"""Range downloads in the virtual village: a range fetched once is served again from the
gateway's cache while the uplink is down (issue #10), with the real daemon and the lab's
government origin (lab/desanet_lab/gov_origin.py).

The store is 16 MiB, so one object may be 2 MiB: ``/big?mb=1`` is stored whole by its
first range request, ``/ranged?mb=4`` (an origin that honours Range and If-Range) is
too large and only its 206 parts are kept. "Offline" is the gateway's WAN link down
(helpers of tests/integration/test_local_services.py)."""

from __future__ import annotations

import pytest

from desanet_lab import LabInfo, LabSpec
from tests.integration.conftest import (
    LAB_TOOLS,
    LabFactory,
    require_root,
    require_tools,
    unique_prefix,
    wait_until,
)
from tests.integration.test_local_services import SVC, c1, fetch, origin_count, wan_down

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS)]

PREFIX = unique_prefix("rg")
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    return make_lab(LabSpec(prefix=PREFIX, clients=1,
                            extra={"shaping": {"enabled": False},
                                   "local_services": {"cache_size": "16mb"}}))


def object_bytes(first: int, last: int) -> bytes:
    """Bytes first..last of the origin's deterministic objects (byte i is i % 256)."""
    return bytes(i % 256 for i in range(first, last + 1))


def ranged(ns: str, url: str, first: int, last: int) -> tuple[int, str, bytes]:
    r = fetch(ns, url, headers=(f"Range: bytes={first}-{last}",), timeout=20)
    return r.status, r.headers.get("cache-status", ""), r.raw


def test_a_range_of_a_stored_object_is_served_offline(lab: LabInfo) -> None:
    ns = c1(lab)
    url = f"{SVC}/big?mb=1&t={PREFIX}"
    status, _, body = ranged(ns, url, 1000, 1999)
    assert status == 206 and body == object_bytes(1000, 1999)
    with wan_down(lab):
        status, cache, body = ranged(ns, url, 1000, 1999)
        assert (status, cache) == (206, "desanet; hit") and body == object_bytes(1000, 1999)


def test_parts_of_a_large_object_are_combined_and_served_offline(lab: LabInfo) -> None:
    ns = c1(lab)
    url = f"{SVC}/ranged?mb=4&t={PREFIX}"
    first_part = (MIB, 2 * MIB - 1)
    second_part = (2 * MIB, 2 * MIB + MIB // 2 - 1)
    status, cache, body = ranged(ns, url, *first_part)
    assert status == 206 and body == object_bytes(*first_part), cache
    assert cache == "desanet; fwd=miss; stored"
    # Online, the same range again is already a hit.
    status, cache, body = ranged(ns, url, *first_part)
    assert (status, cache) == (206, "desanet; hit") and body == object_bytes(*first_part)
    status, cache, body = ranged(ns, url, *second_part)
    assert status == 206 and body == object_bytes(*second_part) and "stored" in cache
    # The part is committed just after its answer went out.
    wait_until(lambda: ranged(ns, url, *second_part)[1] == "desanet; hit", 10,
               "the second part to be served from the cache")
    asked = origin_count(lab, "GET /ranged")
    with wan_down(lab):
        for first, last in (first_part, second_part, (2 * MIB - 1000, 2 * MIB + 1000)):
            status, cache, body = ranged(ns, url, first, last)
            assert (status, cache) == (206, "desanet; hit"), (first, last, status, cache)
            assert body == object_bytes(first, last)
        # Bytes never fetched cannot come from anywhere: no answer from the cache.
        status, cache, body = ranged(ns, url, 0, 99)
        assert status >= 500 and body != object_bytes(0, 99)
    assert origin_count(lab, "GET /ranged") == asked
