"""Returning phones against the real daemon: a phone whose session on an auto_login
voucher idled out gets in again at its next request without seeing the portal, also
after a kill -9 of the daemon; a phone on a plan without auto_login, or whose voucher
has expired, meets the portal."""

from __future__ import annotations

import json
import signal

import pytest

from desanet_lab import LabInfo, LabSpec
from tests.integration.conftest import (
    LAB_TOOLS,
    PORTAL,
    LabFactory,
    desanet,
    desanet_json,
    has_internet,
    internet,
    portal_post,
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
    spec = LabSpec(prefix=unique_prefix("rt"), clients=3, idle_timeout="4s", extra={
        "shaping": {"enabled": True, "plans": {
            "auto": {"down": "2mbit", "up": "1mbit", "auto_login": True},
            "biasa": {"down": "2mbit", "up": "1mbit"}}},
    })
    return make_lab(spec)


def _voucher(lab: LabInfo, plan: str, duration: str) -> str:
    made = desanet_json(lab.control_socket, "vouchers", "create", "--duration", duration,
                        "--plan", plan)
    return str(made["vouchers"][0]["code"])


def _online(lab: LabInfo, mac: str) -> bool:
    rows = desanet_json(lab.control_socket, "clients", "--json")["clients"]
    return any(c["mac"] == mac and c["authorized"] for c in rows)


def _starts(lab: LabInfo, mac: str, code: str) -> int:
    """Sessions the running daemon started for ``mac`` on voucher ``code`` (its events: a
    4 s idle timeout may end the session again before a `clients` call could see it)."""
    out = desanet(lab.control_socket, "events", "--no-follow", "--json")
    assert out.returncode == 0, out.describe()
    events = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    return sum(1 for e in events if e["type"] == "session_started" and e["mac"] == mac
               and e["voucher"] == code and e["source"] == "voucher")


def _login_then_idle(lab: LabInfo, n: int, code: str) -> None:
    client = lab.client(n)
    login = portal_post(client.name, f"{PORTAL}/login", {"action": "voucher", "voucher": code})
    assert login.status == 303, login
    assert has_internet(client.name, retry=True)
    # the phone goes quiet (leaves): its session ends idle after 4 s
    wait_until(lambda: not _online(lab, client.mac), 30, "the session to end idle")


def test_a_returning_phone_gets_in_without_the_portal(lab: LabInfo) -> None:
    phone, other = lab.client(1), lab.client(2)
    code = _voucher(lab, "auto", "1h")
    _login_then_idle(lab, 1, code)
    first = internet(phone.name, retry=True)  # its first request after coming back: no portal
    # (the upstream's answer and the daemon's events are the proof; not `clients`, whose
    # idle window may already have closed again on a busy machine)
    assert not first.redirected_to_portal() and first.status == 200, first
    assert _starts(lab, phone.mac, code) == 2  # the login, then the return

    # positive control: the same story on a plan without auto_login meets the portal
    _login_then_idle(lab, 2, _voucher(lab, "biasa", "1h"))
    assert internet(other.name, retry=True).redirected_to_portal()

    # across a kill -9 of the daemon
    wait_until(lambda: not _online(lab, phone.mac), 30, "the session to end idle again")
    stop_gateway(lab, signal.SIGKILL)
    start_gateway(lab)
    again = internet(phone.name, retry=True)
    assert not again.redirected_to_portal() and again.status == 200, again
    assert _starts(lab, phone.mac, code) == 1  # by the new daemon


def test_refused_once_the_voucher_expired(lab: LabInfo) -> None:
    phone = lab.client(3)
    code = _voucher(lab, "auto", "6s")
    _login_then_idle(lab, 3, code)

    def expired() -> bool:
        rows = desanet_json(lab.control_socket, "vouchers", "list", "--json")["vouchers"]
        return next(v["state"] for v in rows if v["code"] == code) == "expired"

    wait_until(expired, 30, "the voucher to expire")
    assert internet(phone.name, retry=True).redirected_to_portal()
    assert not _online(lab, phone.mac)
