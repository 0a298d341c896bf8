"""A copied MAC takes nobody's session; "authorize that MAC" never guesses between leases.

Each refusal is checked to change nothing (store, fake kernel, events), next to the
same action done by the owner, which works.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.core.events import EndReason, SessionEnded
from gateway.core.session_rules import leased_addresses, takeover_refused
from gateway.errors import AmbiguousClient, FirewallError, PortalDenied
from gateway.model import ClientView, SessionSource
from tests.unit.corekit import NOW, Core, build_core, session
from tests.unit.test_core_sessions import shaped_config

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
IP1, IP2, IP3 = "10.42.0.101", "10.42.0.102", "10.42.0.103"


@pytest.fixture
def core(tmp_path: Path) -> Core:
    c = build_core(tmp_path, shaped_config())
    c.neighbours.add(IP1, A)
    c.neighbours.add(IP2, B)
    return c


async def snapshot(core: Core) -> tuple[object, ...]:
    return (await core.store.active_sessions(NOW), dict(core.firewall.authorized),
            dict(core.firewall.active), core.bus.last_seq)


# -- the pure rule -----------------------------------------------------------------------

@pytest.mark.parametrize(("current_ip", "ip", "source", "leases", "refused"), [
    (None, IP3, "terms", {IP1: A}, False),  # no live session: nothing to take
    (IP1, IP1, "terms", {IP1: A}, False),  # the owner's re-login from its address
    (IP1, IP3, "terms", {IP1: A}, True),  # a copy elsewhere while the owner holds its lease
    (IP1, IP3, "voucher", {IP1: A.upper()}, True),  # a voucher proves nothing about the MAC
    (IP1, IP3, "manual", {IP1: A}, False),  # staff decide
    (IP1, IP3, "terms", {IP3: A}, False),  # the lease moved: the phone really moved
    (IP1, IP3, "terms", {IP1: B}, False),  # the old address is someone else's now
])
def test_takeover_rule(current_ip: str | None, ip: str, source: SessionSource,
                       leases: dict[str, str], refused: bool) -> None:
    current = session(A, current_ip) if current_ip else None
    assert takeover_refused(current, ip, source, leases) is refused


def test_leased_addresses_in_address_order() -> None:
    leases = {"10.42.0.120": A, "10.42.0.99": A.upper(), IP2: B}
    assert leased_addresses(leases, A) == ["10.42.0.99", "10.42.0.120"]
    assert leased_addresses(leases, "02:00:00:00:00:ff") == []


# -- login ---------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["terms", "voucher"])
async def test_a_copied_mac_on_another_address_cannot_end_the_owners_session(
        core: Core, source: str) -> None:
    await core.sessions.authorize(A, IP1, "terms")
    core.neighbours.add(IP3, A, lease=False)  # the copier, with a static address
    before = await snapshot(core)
    client = ClientView(ip=IP3, mac=A, session=None)
    with pytest.raises(PortalDenied) as err:
        if source == "terms":
            await core.sessions.login_terms(client)
        else:
            await core.sessions.login_voucher(client, "ABCD-EFGH")
    assert err.value.reason == "in_use"
    assert await snapshot(core) == before
    assert (A, IP1) in core.firewall.authorized


async def test_the_owner_can_log_in_again_from_its_address(core: Core) -> None:
    await core.sessions.authorize(A, IP1, "terms")
    core.neighbours.add(IP3, A, lease=False)
    s = await core.sessions.login_terms(ClientView(ip=IP1, mac=A, session=None))
    assert s.ip == IP1 and set(core.firewall.authorized) == {(A, IP1)}


async def test_staff_may_move_a_session_to_another_address(core: Core) -> None:
    await core.sessions.authorize(A, IP1, "terms")
    seq = core.bus.last_seq
    await core.sessions.authorize(A, IP3, "manual")
    assert set(core.firewall.authorized) == {(A, IP3)}
    assert [e.event for e in core.bus.since(seq) if isinstance(e.event, SessionEnded)] == [
        SessionEnded(A, IP1, EndReason.REPLACED)]


# -- clients auth by MAC ---------------------------------------------------------------------

async def test_a_mac_with_two_leases_is_not_authorized_by_mac_alone(core: Core) -> None:
    core.neighbours.add("10.42.0.150", A)  # a second lease in A's name
    before = await snapshot(core)
    with pytest.raises(AmbiguousClient) as err:
        await core.ops.authorize(A, None, None, None)
    assert err.value.addresses == [IP1, "10.42.0.150"]
    assert err.value.reason == "several_leases"
    assert IP1 in str(err.value) and "10.42.0.150" in str(err.value) and "--ip" in str(err.value)
    assert await snapshot(core) == before
    # Naming the address works.
    s = await core.ops.authorize(A, IP1, None, None)
    assert (s.mac, s.ip) == (A, IP1)


async def test_a_mac_with_one_lease_is_authorized_by_mac(core: Core) -> None:
    s = await core.ops.authorize(A, None, None, None)
    assert (s.mac, s.ip) == (A, IP1)


# -- the lease sets follow the lease file --------------------------------------------------

async def test_the_sweep_writes_the_leases_into_the_firewall_when_they_change(
        core: Core) -> None:
    await core.sessions.sweep()
    assert core.firewall.leases == {IP1: A, IP2: B}
    syncs = core.firewall.lease_syncs
    await core.sessions.sweep()
    assert core.firewall.lease_syncs == syncs  # unchanged: no nft call
    core.neighbours.add(IP3, "02:00:00:00:00:0c")
    await core.sessions.sweep()
    assert core.firewall.leases[IP3] == "02:00:00:00:00:0c"


async def test_a_refused_lease_sync_does_not_stop_the_sweep(core: Core) -> None:
    await core.sessions.authorize(A, IP1, "terms")
    core.firewall.fail_on["sync_leases"] = FirewallError("nft refused")
    core.clock.advance(5 * 3600)  # past the session's end
    await core.sessions.sweep()
    assert await core.store.active_sessions(core.clock.now()) == []
    # ... and the next sweep writes them, though the lease file did not change.
    await core.sessions.sweep()
    assert core.firewall.leases == {IP1: A, IP2: B}


async def test_the_control_api_names_both_addresses(core: Core) -> None:
    core.neighbours.add("10.42.0.150", A)
    async with TestClient(TestServer(core.control_app())) as client:
        resp = await client.post("/v1/clients/auth", json={"mac": A})
        data = await resp.json()
        assert resp.status == 409, data
        assert (data["kind"], data["reason"]) == ("conflict", "several_leases")
        assert IP1 in data["error"] and "10.42.0.150" in data["error"]
        resp = await client.post("/v1/clients/auth", json={"mac": A, "ip": "10.42.0.150"})
        assert resp.status == 200
