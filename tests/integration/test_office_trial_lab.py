"""The free trial against the real daemon: one minute per device per day from the terms
button, on the trial plan, ended by the kernel when its minute is over, refused with the
"used up" page after, and counted across a kill -9 of the daemon."""

from __future__ import annotations

import signal

import pytest

from desanet_lab import LabInfo, LabSpec
from tests.integration.conftest import (
    LAB_TOOLS,
    LabFactory,
    desanet_json,
    has_internet,
    login_terms,
    require_root,
    require_tools,
    start_gateway,
    stop_gateway,
    unique_prefix,
    wait_until,
)

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS)]


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    spec = LabSpec(prefix=unique_prefix("tr"), clients=2, extra={
        "portal": {"trial_minutes": 1, "trial_plan": "coba"},
        "shaping": {"enabled": True, "plans": {"coba": {"down": "1mbit", "up": "512kbit"}}},
    })
    return make_lab(spec)


def _session(lab: LabInfo, mac: str) -> dict[str, object] | None:
    rows = desanet_json(lab.control_socket, "clients", "--json")["clients"]
    return next((c for c in rows if c["mac"] == mac and c["authorized"]), None)


def test_a_trial_ends_after_its_minute_across_a_kill9(lab: LabInfo) -> None:
    one, two = lab.client(1), lab.client(2)
    assert login_terms(one.name).status == 303
    assert has_internet(one.name, retry=True)
    session = _session(lab, one.mac)
    assert session is not None and session["plan"] == "coba"
    assert session["expires"] - session["started"] == 60  # type: ignore[operator]

    stop_gateway(lab, signal.SIGKILL)  # mid-trial: the grant was committed when made
    start_gateway(lab)
    assert has_internet(one.name, retry=True)  # the trial session came back with the daemon
    wait_until(lambda: not has_internet(one.name), 120, "the trial minute to run out")
    refused = login_terms(one.name)
    assert refused.status == 403, refused
    assert "Waktu coba gratis untuk perangkat ini hari ini sudah habis" in refused.body
    assert not has_internet(one.name)

    # positive control: another device has its own minute today
    assert login_terms(two.name).status == 303
    assert has_internet(two.name, retry=True)
