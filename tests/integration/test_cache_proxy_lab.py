"""The government-services cache as a proxy (issue #10), end to end in the virtual
village: the real daemon in front of the lab's origin ``dukcapil.lab``
(lab/desanet_lab/gov_origin.py, its "proxy behaviour" paths). A Vary'd page is
revalidated with the varying field reaching the origin; an origin 503 reaches the
villager when nothing is stored and the stored copy stands in when one is; one failing
URL neither marks the service offline nor blocks forms to other URLs.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from desanet_lab import LabInfo, LabSpec, run_in
from desanet_lab import plan as p
from tests.integration.conftest import (
    LAB_TOOLS,
    Http,
    LabFactory,
    desanet_json,
    http,
    require_root,
    require_tools,
    unique_prefix,
)

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS)]

PREFIX = unique_prefix("px")
SITE = "http://layanan.desa"
SVC = f"{SITE}/dukcapil"
ORIGIN = f"http://{p.DUKCAPIL_HOST}"


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    return make_lab(LabSpec(prefix=PREFIX, clients=1, extra={"shaping": {"enabled": False}}))


def fetch(lab: LabInfo, url: str, **kw: Any) -> Http:
    return http(lab.client(1).name, url, timeout=10.0, **kw)


def origin_get(lab: LabInfo, target: str) -> Any:
    proc = run_in(lab.wan, ["curl", "-sS", "--max-time", "5", f"{ORIGIN}{target}"])
    assert proc.returncode == 0, f"origin {target}: {proc.stderr.strip()}"
    return json.loads(proc.stdout)


def script(lab: LabInfo, name: str, status: int) -> None:
    origin_get(lab, f"/_lab/script?name={name}&status={status}")


def seen(lab: LabInfo, path: str) -> list[dict[str, str]]:
    headers: list[dict[str, str]] = origin_get(lab, f"/_lab/seen?path={path}")
    return [{k.lower(): v for k, v in h.items()} for h in headers]


def service_state(lab: LabInfo) -> str:
    data: dict[str, Any] = desanet_json(lab.control_socket, "services")
    return str(data["services"]["dukcapil"]["state"])


def test_a_varyd_page_is_revalidated_with_its_varying_field(lab: LabInfo) -> None:
    first = fetch(lab, f"{SVC}/revalvary", headers=("Accept-Language: en",))
    assert first.status == 200 and "Hello" in first.text, first
    assert "stored" in first.cache_status, first.headers
    again = fetch(lab, f"{SVC}/revalvary", headers=("Accept-Language: en",))
    assert again.status == 200 and again.raw == first.raw, again
    assert "fwd-status=304" in again.cache_status, again.headers
    received = seen(lab, "/revalvary")
    assert len(received) == 2, received
    # The revalidation carried the cache's validator and the field the stored Vary names.
    assert received[1].get("if-none-match") == '"reval-en"', received[1]
    assert received[1].get("accept-language") == "en", received[1]
    assert received[1].get("via") == "1.1 desanet", received[1]


def test_an_origin_503_is_passed_through_when_nothing_is_stored(lab: LabInfo) -> None:
    script(lab, "never-stored", 503)
    answer = fetch(lab, f"{SVC}/scripted/never-stored")
    assert answer.status == 503, answer
    assert answer.text == "lab origin says 503\n", answer.text  # the origin's page, not ours
    assert answer.headers.get("retry-after") == "30" and answer.headers.get("x-lab-origin") == "yes"
    assert service_state(lab) == "online"


def test_the_stored_copy_stands_in_for_an_origin_503(lab: LabInfo) -> None:
    good = fetch(lab, f"{SVC}/scripted/stored")
    assert good.status == 200 and good.text == "copy of stored\n", good
    script(lab, "stored", 503)
    try:
        copy = fetch(lab, f"{SVC}/scripted/stored")
        assert copy.status == 200 and copy.text == "copy of stored\n", copy
        assert "stale-if-error" in copy.cache_status, copy.headers
        assert len(seen(lab, "/scripted/stored")) == 2  # it did ask, and got the 503
    finally:
        script(lab, "stored", 200)


def test_one_failing_url_marks_nothing_offline_nor_blocks_forms(lab: LabInfo) -> None:
    script(lab, "broken", 500)
    for _ in range(3):
        answer = fetch(lab, f"{SVC}/scripted/broken")
        assert answer.status == 500 and answer.text == "lab origin says 500\n", answer
    assert service_state(lab) == "online"
    catalog = fetch(lab, f"{SITE}/")
    assert catalog.status == 200 and "Terhubung" in catalog.text, catalog.text
    before = len(origin_get(lab, "/_lab/submissions"))
    form = fetch(lab, f"{SVC}/form", method="POST", data="nama=Budi",
                 headers=("Content-Type: application/x-www-form-urlencoded",))
    assert form.status == 201, form  # the origin's own receipt, not a queued one
    assert json.loads(form.text)["received"] == before + 1
    assert len(origin_get(lab, "/_lab/submissions")) == before + 1
