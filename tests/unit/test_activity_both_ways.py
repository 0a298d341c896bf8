"""Activity in both directions: a client is idle only when it has neither sent nor
received for its idle timeout. The kernel keeps what a client sends in ``active4``
(MAC and address) and what is forwarded to it in ``active_down4`` (address only); the
sweep and time of use take the later of the two (red team: a phone that sends one packet
every 29 minutes while a UDP stream flows to it was counted ~one sweep per keepalive
and never ended as idle)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.core.events import EndReason
from gateway.core.usage import credits, latest_activity
from gateway.model import ClientView
from tests.unit.conftest import make_config
from tests.unit.corekit import NOW, Core, build_core, session

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
IPA, IPB = "10.42.0.101", "10.42.0.102"
IDLE = 60


def test_latest_activity_is_the_later_of_both_directions() -> None:
    active = {(A, IPA): 10, (B, IPB): 50}
    downloads = {IPA: 40, IPB: 20, "10.42.0.199": 59}  # .199: nobody's session
    got = latest_activity(active, downloads, [(A, IPA), (B, IPB)])
    assert got == {(A, IPA): 40, (B, IPB): 50}
    # only downloads: still active; nothing either way: left out (idle)
    assert latest_activity({}, {IPA: 30}, [(A, IPA), (B, IPB)]) == {(A, IPA): 30}
    # the control: a download to an address no authorized client holds makes nobody active
    assert latest_activity({}, {"10.42.0.199": 59}, [(A, IPA)]) == {}


def test_a_silent_client_receiving_is_credited_for_the_span() -> None:
    s = session(A, IPA, idle=IDLE, voucher="V")
    # it sent its last packet 50 s ago; the stream towards it arrived just now
    merged = latest_activity({(A, IPA): IDLE - 51}, {IPA: IDLE - 1}, [(A, IPA)])
    assert credits([s], merged, 5.0, NOW) == {"V": 5.0}
    # the control: counted from its uploads alone it was quiet all the span
    assert credits([s], {(A, IPA): IDLE - 51}, 5.0, NOW) == {"V": 0.0}


# -- in the core: the sweep ---------------------------------------------------------------


@pytest.fixture
def core(tmp_path: Path) -> Core:
    c = build_core(tmp_path, make_config(portal={"idle_timeout": f"{IDLE}s"}, shaping={
        "enabled": True, "plans": {"jam": {"down": "2mbit", "up": "1mbit",
                                           "time_of_use": "1h"}}}))
    c.neighbours.add(IPA, A)
    return c


async def _pass(core: Core, seconds: int, streaming: bool) -> None:
    """``seconds`` pass in 5 s sweeps; the client sends nothing (its ``active4`` window runs
    down as the kernel's does); with ``streaming`` a download towards it goes on."""
    for _ in range(seconds // 5):
        core.clock.advance(5)
        fw = core.firewall
        for key, left in list(fw.active.items()):
            fw.active[key] = left - 5
            if fw.active[key] <= 0:
                del fw.active[key]
        for ip, left in list(fw.active_down.items()):
            fw.active_down[ip] = IDLE if streaming else left - 5
            if fw.active_down[ip] <= 0:
                del fw.active_down[ip]
        await core.sessions.sweep()


async def test_a_stream_to_a_silent_client_is_charged_but_does_not_hold_its_session(
        core: Core) -> None:
    await core.start()
    _, made = await core.vouchers.create_batch(1, 86400, plan="jam")
    code = made[0].code
    await core.sessions.login_voucher(ClientView(IPA, A, None), code)
    core.firewall.active_down[IPA] = IDLE  # what the kernel's authorize does
    await core.sessions.sweep()
    await _pass(core, IDLE - 10, streaming=True)
    assert core.store.end_reason(A) is None  # the control: inside its idle window, online
    await _pass(core, 2 * IDLE, streaming=True)
    # a phone that left is idle by its own silence, even with a stream still pushed to it
    assert core.store.end_reason(A) == EndReason.IDLE
    assert (A, IPA) not in core.firewall.authorized
    # ... and what it received meanwhile was charged: the whole idle window, where counting
    # only its uploads gave the few seconds after its last packet
    v = await core.store.voucher(code)
    assert v is not None and IDLE - 10 <= v.used_seconds <= IDLE + 10, v.used_seconds
