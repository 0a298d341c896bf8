"""The control API over the core on fakes (corekit): requests, answers, error mapping.

Bad input must change nothing and the error must name the field; GET routes
change nothing; every domain error reaches the client with its status and kind.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway import errors as E
from gateway.core.events import EndReason, PlanChanged
from gateway.core.lifecycle import IllegalTransition
from gateway.errors import StoreError
from gateway.model import ClientView, Session
from tests.unit.conftest import make_config
from tests.unit.corekit import NOW, Core, build_core, edited

MAC = "02:00:00:00:00:01"
MAC2 = "02:00:00:00:00:02"
IP, IP2 = "10.42.0.101", "10.42.0.102"

Client = TestClient[Any, Any]


@pytest.fixture
async def core(tmp_path: Path) -> Core:
    c = build_core(tmp_path, make_config(shaping={"enabled": True, "plans": {
        "school": {"down": "4mbit", "up": "1mbit"}}}))
    c.neighbours.add(IP, MAC)
    c.neighbours.add(IP2, MAC2)
    await c.start()
    return c


@pytest.fixture
async def client(core: Core) -> AsyncIterator[Client]:
    async with TestClient(TestServer(core.control_app())) as c:
        yield c


async def post(client: Client, path: str, body: Any, close: bool = False) -> tuple[int, Any]:
    headers = {"Connection": "close"} if close else None
    resp = await client.post(path, json=body, headers=headers)
    return resp.status, await resp.json()


async def get(client: Client, path: str) -> tuple[int, Any]:
    resp = await client.get(path)
    return resp.status, await resp.json()


# -- clients --------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "field"), [
    ({"mac": MAC, "plan": ["school"]}, "field plan"),
    ({"mac": MAC, "plan": {"a": 1}}, "field plan"),
    ({"mac": MAC, "plan": "nosuchplan"}, "field plan"),
    ({"mac": MAC, "duration": 1.5}, "field duration"),
    ({"mac": MAC, "duration": ["4h"]}, "field duration"),
    ({"mac": MAC, "duration": "99999d"}, "field duration"),
    ({"mac": MAC, "ip": 167772261}, "field ip"),
    ({"mac": MAC, "ip": "10.42.0.1"}, "field ip"),  # the gateway itself
    ({"mac": MAC, "ip": "10.42.0.255"}, "field ip"),  # broadcast
    ({"mac": MAC, "ip": "10.99.0.5"}, "field ip"),  # outside the LAN (shaping on)
    ({"mac": MAC, "ip": "10.42.0.101", "plan": ["x"], "duration": "4h"}, "field plan"),
    ({"mac": "nonsense"}, "field mac"),
    ({"mac": MAC, "colour": "red"}, "colour"),
])
async def test_auth_bad_input_names_field_and_changes_nothing(
    client: Client, core: Core, body: dict[str, Any], field: str
) -> None:
    before = await core.snapshot()
    status, data = await post(client, "/v1/clients/auth", body)
    assert status == 400, data
    assert field in data["error"]
    assert data["kind"] == "invalid"
    assert await core.snapshot() == before


async def test_auth_good_input_reaches_the_kernel(client: Client, core: Core) -> None:
    status, data = await post(client, "/v1/clients/auth",
                              {"mac": MAC.upper(), "duration": "4h", "plan": "school"})
    assert status == 200, data
    c = data["client"]
    assert (c["mac"], c["ip"], c["expires"], c["plan"], c["source"], c["remaining"],
            c["authorized"]) == (MAC, IP, NOW + 4 * 3600, "school", "manual", 4 * 3600, True)
    assert (MAC, IP) in core.firewall.authorized
    assert core.event_types()[-1] == "session_started"


async def test_auth_with_no_known_address_is_404(client: Client, core: Core) -> None:
    before = await core.snapshot()
    status, data = await post(client, "/v1/clients/auth", {"mac": "02:00:00:00:00:99"})
    assert (status, data["kind"]) == (404, "not_found"), data
    assert '"ip"' in data["error"]
    assert await core.snapshot() == before


async def test_auth_of_a_blocked_mac_is_refused(tmp_path: Path) -> None:
    core = build_core(tmp_path, make_config(access={"blocked_macs": [MAC]}))
    async with TestClient(TestServer(core.control_app())) as client:
        status, data = await post(client, "/v1/clients/auth", {"mac": MAC, "ip": IP})
    assert (status, data["kind"], data["reason"]) == (409, "refused", "blocked"), data


async def test_deauth(client: Client, core: Core) -> None:
    await core.sessions.authorize(MAC, IP, "terms")
    status, data = await post(client, "/v1/clients/deauth", {"mac": MAC})
    assert (status, data) == (200, {"deauthorized": MAC, "ip": IP})
    assert core.firewall.authorized == {}
    status, data = await post(client, "/v1/clients/deauth", {"mac": MAC})
    assert (status, data["kind"]) == (404, "not_found")
    assert MAC in data["error"]


@pytest.mark.parametrize("plan", [["school"], 3, "nosuchplan"])
async def test_plan_change_bad_plan(client: Client, core: Core, plan: Any) -> None:
    await core.sessions.authorize(MAC, IP, "terms")
    before = await core.snapshot()
    status, data = await post(client, "/v1/clients/plan", {"mac": MAC, "plan": plan})
    assert status == 400, data
    assert "field plan" in data["error"]
    assert await core.snapshot() == before


async def test_plan_change(client: Client, core: Core) -> None:
    await core.sessions.authorize(MAC, IP, "terms")
    status, data = await post(client, "/v1/clients/plan", {"mac": MAC, "plan": "school"})
    assert status == 200, data
    assert data["client"]["plan"] == "school"
    assert core.shaper.classes["br-lan"][0x100 + 101].rate == 4_000_000
    status, data = await post(client, "/v1/clients/plan", {"mac": MAC2, "plan": None})
    assert status == 404, data


async def test_clients_lists_sessions_then_dhcp_only_clients(client: Client, core: Core) -> None:
    await core.sessions.authorize(MAC, IP, "terms")
    status, data = await get(client, "/v1/clients")
    assert status == 200
    rows = data["clients"]
    assert [(r["mac"], r["ip"], r["authorized"]) for r in rows] == [
        (MAC, IP, True), (MAC2, IP2, False)]
    assert rows[0]["idle_left"] == 1800 and rows[0]["shaping"]["class"] == "1:165"
    assert [r["hostname"] for r in rows] == [None, None]  # no names in these leases


async def test_clients_carry_the_dhcp_host_name(client: Client, core: Core) -> None:
    core.neighbours.host_table.update({IP: "budi-phone", IP2: "ani"})
    await core.sessions.authorize(MAC, IP, "terms")
    status, data = await get(client, "/v1/clients")
    assert status == 200
    assert [(r["mac"], r["hostname"]) for r in data["clients"]] == [
        (MAC, "budi-phone"), (MAC2, "ani")]


# -- vouchers -------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "field"), [
    ({"duration": "1d", "plan": ["school"]}, "field plan"),
    ({"duration": "1d", "plan": "nosuchplan"}, "field plan"),
    ({"duration": "1d", "batch": {"x": 1}}, "field batch"),
    ({"duration": "1d", "batch": "x" * 200}, "field batch"),
    ({"duration": "1d", "batch": "a\nb"}, "field batch"),
    ({"duration": 2.5}, "field duration"),
    ({"duration": "400d"}, "field duration"),
    ({"duration": "1d", "count": "3"}, "field count"),
    ({"duration": "1d", "count": 0}, "field count"),
    ({"duration": "1d", "max_devices": 11}, "field max_devices"),
])
async def test_voucher_create_bad_input(
    client: Client, core: Core, body: dict[str, Any], field: str
) -> None:
    before = await core.snapshot()
    status, data = await post(client, "/v1/vouchers", body)
    assert status == 400, data
    assert field in data["error"]
    assert await core.store.vouchers() == []
    assert await core.snapshot() == before


async def test_voucher_create_with_batch_name(client: Client, core: Core) -> None:
    status, data = await post(client, "/v1/vouchers", {"duration": "1d", "batch": "posyandu",
                                                       "count": 2})
    assert status == 201, data
    assert data["batch"] == "posyandu"
    assert [v["state"] for v in data["vouchers"]] == ["unused", "unused"]
    assert [v.batch for v in await core.store.vouchers()] == ["posyandu", "posyandu"]
    status, listed = await get(client, "/v1/vouchers?batch=posyandu")
    assert status == 200 and len(listed["vouchers"]) == 2
    assert core.event_types()[-1] == "voucher_batch_created"


@pytest.mark.parametrize("code", ["nope", 12345, None, ["K7MQX-3PAR9"]])
async def test_revoke_bad_code_is_400_naming_field(client: Client, core: Core, code: Any) -> None:
    before = await core.snapshot()
    status, data = await post(client, "/v1/vouchers/revoke", {"code": code})
    assert status == 400, data
    assert "code" in data["error"]
    assert await core.snapshot() == before


async def test_revoke(client: Client, core: Core) -> None:
    _, made = await core.vouchers.create_batch(1, 3600, batch="b")
    code = made[0].code
    await core.sessions.login_voucher(ClientView(IP, MAC, None), code)
    status, data = await post(client, "/v1/vouchers/revoke", {"code": code.lower()})
    assert status == 200, data
    assert data["voucher"]["state"] == "revoked"
    assert core.firewall.authorized == {}
    status, data = await post(client, "/v1/vouchers/revoke", {"code": "AAAAA-BBBBB"})
    assert (status, data["kind"], data["reason"]) == (404, "refused", "unknown")


# -- failures --------------------------------------------------------------------------------


async def test_store_failure_is_json_500_with_store_message(client: Client, core: Core) -> None:
    await core.store.close()  # every store call now fails
    resp = await client.get("/v1/vouchers")
    assert resp.status == 500
    data = await resp.json()
    assert "state database" in data["error"] and data["kind"] == "internal"


async def test_bug_is_json_500(client: Client, core: Core, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(mac: str, plan: str | None) -> Session:
        raise RuntimeError("a bug")

    monkeypatch.setattr(core.ops, "change_plan", broken)
    status, data = await post(client, "/v1/clients/plan", {"mac": MAC, "plan": None})
    assert status == 500
    assert "RuntimeError" in data["error"] and "a bug" not in data["error"]
    assert data["kind"] == "internal"


def _domain_errors() -> list[tuple[E.DesanetError, int, str]]:
    return [
        (E.DesanetError("x"), 500, "internal"),
        (E.Invalid("ip", "x", "an IPv4 address"), 400, "invalid"),
        (E.ConfigError(["portal.http_port: 0 is too small"]), 400, "invalid"),
        (E.SubmissionTooLarge("at most 1 MB"), 413, "invalid"),
        (E.NotFound("no session"), 404, "not_found"),
        (E.Conflict("later"), 409, "conflict"),
        (E.OutboxStateError("delivered"), 409, "conflict"),
        (E.AmbiguousClient("02:d5:00:00:00:01", ["10.42.0.101", "10.42.0.102"]), 409,
         "conflict"),
        (IllegalTransition("config trial", "none", "confirm", ()), 409, "conflict"),
        (E.Refused("same_connection"), 409, "refused"),
        (E.PortalDenied("full"), 409, "refused"),
        (E.VoucherError("in_use"), 404, "refused"),
        (E.ApplyFailed("dnsmasq", "refused"), 422, "refused"),
        (E.Unavailable("down"), 503, "unavailable"),
        (E.UpstreamDown("down", 502), 503, "unavailable"),
        (E.StoreError("state database error"), 500, "internal"),
        (E.FirewallError("nft"), 500, "internal"),
        (E.ShapingError("tc"), 500, "internal"),
        (E.ServiceError("dnsmasq"), 500, "internal"),
        (E.LabError("lab"), 500, "internal"),
        (E.ControlError("relayed", 409, "conflict"), 409, "conflict"),
    ]


def test_the_case_table_names_every_domain_error() -> None:
    named = {type(e) for e, _, _ in _domain_errors()}
    defined = {c for _, c in inspect.getmembers(E, inspect.isclass)
               if issubclass(c, E.DesanetError) and c.__module__ == E.__name__}
    assert defined <= named


@pytest.mark.parametrize(("error", "status", "kind"), _domain_errors(),
                         ids=[type(e).__name__ for e, _, _ in _domain_errors()])
async def test_every_domain_error_reaches_the_client_with_its_status(
    client: Client, core: Core, monkeypatch: pytest.MonkeyPatch,
    error: E.DesanetError, status: int, kind: str
) -> None:
    async def failing(mac: str, plan: str | None) -> Session:
        raise error

    monkeypatch.setattr(core.ops, "change_plan", failing)
    got, data = await post(client, "/v1/clients/plan", {"mac": MAC, "plan": None})
    assert (got, data["kind"]) == (status, kind), data
    assert data["error"]
    for key in ("field", "reason", "step"):
        value = getattr(error, key, None)
        if isinstance(value, str) and value:
            assert data[key] == value


# -- reads change nothing ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/status", "/v1/clients", "/v1/shaping", "/v1/services",
                                  "/v1/vouchers", "/v1/config", "/v1/events?timeout=0"])
async def test_get_routes_change_nothing(client: Client, core: Core, path: str) -> None:
    await core.sessions.authorize(MAC, IP, "terms")
    await core.vouchers.create_batch(2, 3600, batch="b")
    await core.shaping.sample()
    core.shaper.fail_on["stats"] = StoreError("a GET must not read the counters")
    before = await core.snapshot()
    first = await get(client, path)
    second = await get(client, path)
    assert first[0] == 200, first
    assert first == second
    assert await core.snapshot() == before
    assert "stats" in core.shaper.fail_on  # nobody sampled


async def test_shaping_returns_the_loops_last_samples(client: Client, core: Core) -> None:
    await core.sessions.authorize(MAC, IP, "terms")
    core.shaper.set_stats("br-lan", 0x100 + 101, bytes=1000)
    await core.shaping.sample()
    core.clock.advance(5)
    core.shaper.set_stats("br-lan", 0x100 + 101, bytes=1000 + 5 * 125_000)
    await core.shaping.sample()
    status, data = await get(client, "/v1/shaping")
    assert status == 200
    down = data["directions"]["down"]
    assert (down["sampled_at"], down["interval"]) == (float(NOW + 5), 5.0)
    assert down["classes"]["1:165"]["rate_bps"] == 1_000_000
    assert await get(client, "/v1/shaping") == (200, data)


async def test_status(client: Client, core: Core) -> None:
    status, data = await get(client, "/v1/status")
    assert status == 200
    assert data["sessions_active"] == 0 and data["firewall"] == {"backend": "fake"}
    assert data["config"] == {"version": core.config.version, "path": str(core.config_path),
                              "last_change": None, "trial": None, "last_refusal": None}
    assert data["dnsmasq"]["running"] is True


# -- config ------------------------------------------------------------------------------------


async def test_config_show_and_diff(client: Client, core: Core) -> None:
    status, data = await get(client, "/v1/config")
    assert status == 200
    assert (data["version"], data["path"], data["text"]) == (
        core.config.version, str(core.config_path), core.config_path.read_text())
    assert data["config"]["portal"]["http_port"] == 80
    new = edited(data["text"], portal={"http_port": 8080})
    status, diff = await post(client, "/v1/config/diff", {"text": new})
    assert (status, diff) == (200, {"changes": [{"path": "portal.http_port", "old": 80,
                                                 "new": 8080}]})


@pytest.mark.parametrize("route", ["/v1/config/diff", "/v1/config/apply"])
async def test_invalid_config_text_lists_every_problem_and_changes_nothing(
    client: Client, core: Core, route: str
) -> None:
    text = core.config_path.read_text()
    bad = edited(text, portal={"http_port": 0, "mode": "open"})
    status, data = await post(client, route, {"text": bad})
    assert (status, data["kind"]) == (400, "invalid"), data
    assert {p.split(":")[0] for p in data["problems"]} >= {"portal.http_port", "portal.mode"}
    assert core.config_path.read_text() == text
    status, data = await post(client, route, {"text": 42})
    assert status == 400 and "field text" in data["error"]


async def test_apply_confirm_from_a_new_connection(client: Client, core: Core) -> None:
    old_version = core.config.version
    new = edited(core.config_path.read_text(), portal={"terms_id": "Baru."})
    status, data = await post(client, "/v1/config/apply",
                              {"text": new, "confirm": "5m", "by": "budi"})
    assert status == 200, data
    assert (data["applied"], data["previous_version"]) == (True, old_version)
    assert data["trial"]["deadline"] == NOW + 300 and data["trial"]["by"] == "budi"
    assert data["changes"] == [{"path": "portal.terms_id", "old": core_default_terms(),
                                "new": "Baru."}]
    # the same (kept-alive) connection proves nothing
    status, data = await post(client, "/v1/config/confirm", {"by": "budi"}, close=True)
    assert (status, data["kind"], data["reason"]) == (409, "refused", "same_connection"), data
    status, st = await get(client, "/v1/status")
    assert st["config"]["trial"]["previous_version"] == old_version
    # a new one does
    status, data = await post(client, "/v1/config/confirm", {"by": "budi"})
    assert (status, data) == (200, {"confirmed": True, "version": core.config.version})
    status, data = await post(client, "/v1/config/confirm", {})
    assert (status, data["kind"]) == (409, "conflict")


def core_default_terms() -> str:
    return make_config().portal.terms_id


async def test_apply_while_pending_then_rollback(client: Client, core: Core) -> None:
    text = core.config_path.read_text()
    b = edited(text, portal={"terms_id": "B."})
    assert (await post(client, "/v1/config/apply", {"text": b, "confirm": "1m"}))[0] == 200
    status, data = await post(client, "/v1/config/apply", {"text": edited(text, portal={
        "terms_id": "C."})})
    assert (status, data["kind"]) == (409, "conflict"), data
    assert "confirm it or roll it back first" in data["error"]
    status, data = await post(client, "/v1/config/rollback", {"by": "ani"})
    assert (status, data) == (200, {"rolled_back": True, "version": core.config.version})
    assert core.config_path.read_text() == text
    # nothing kept any more: a second rollback cannot bring the rejected trial back
    status, data = await post(client, "/v1/config/rollback", {})
    assert (status, data["kind"]) == (409, "conflict")
    assert core.config_path.read_text() == text


async def test_rollback_with_nothing_kept_is_409(client: Client) -> None:
    status, data = await post(client, "/v1/config/rollback", {"by": "ani"})
    assert (status, data["kind"]) == (409, "conflict"), data


@pytest.mark.parametrize("confirm", ["1s", "2d", "soon", 1.5])
async def test_apply_bad_confirm_window(client: Client, core: Core, confirm: Any) -> None:
    text = core.config_path.read_text()
    status, data = await post(client, "/v1/config/apply", {
        "text": edited(text, portal={"terms_id": "B."}), "confirm": confirm})
    assert status == 400, data
    assert "confirm" in data["error"]
    assert core.config_path.read_text() == text and core.config.trial is None


async def test_apply_with_a_failing_step_is_422_naming_it(client: Client, core: Core) -> None:
    text = core.config_path.read_text()
    core.dhcp.refuse_next_configure = True
    status, data = await post(client, "/v1/config/apply", {
        "text": edited(text, dhcp={"range_end": "10.42.0.200"})})
    assert (status, data["kind"], data["step"]) == (422, "refused", "dnsmasq"), data
    assert core.config_path.read_text() == text
    status, st = await get(client, "/v1/status")
    assert st["config"]["last_refusal"]["step"] == "dnsmasq"


async def test_reload(client: Client, core: Core) -> None:
    core.config_path.write_text(edited(core.config_path.read_text(), portal={"terms_id": "R."}))
    status, data = await post(client, "/v1/reload", {"by": "systemd"})
    assert status == 200, data
    assert data["reloaded"] is True and data["version"] == core.config.version
    assert data["changes"] == [{"path": "portal.terms_id", "old": core_default_terms(),
                                "new": "R."}]
    core.config_path.write_text("[portal]\nhttp_port = 0\n")
    status, data = await post(client, "/v1/reload", {})
    assert (status, data["kind"]) == (400, "invalid"), data
    status, st = await get(client, "/v1/status")
    assert st["config"]["last_refusal"] is not None
    assert st["config"]["last_change"]["type"] == "config_refused"


# -- events --------------------------------------------------------------------------------------


async def test_events_since(client: Client, core: Core) -> None:
    await core.sessions.authorize(MAC, IP, "terms")
    await core.sessions.end(MAC, EndReason.DEAUTH)
    status, data = await get(client, "/v1/events?since=0&timeout=0")
    assert status == 200
    assert [e["type"] for e in data["events"]] == ["session_started", "session_ended"]
    assert data["events"][1]["reason"] == "deauth"
    assert data["next"] == 2 and [e["seq"] for e in data["events"]] == [1, 2]
    status, data = await get(client, "/v1/events?since=1&timeout=0")
    assert [e["seq"] for e in data["events"]] == [2]


async def test_events_long_poll_times_out_empty(client: Client) -> None:
    status, data = await get(client, "/v1/events?since=0&timeout=0.05")
    assert (status, data) == (200, {"events": [], "next": 0, "boot": NOW})


async def test_events_long_poll_is_woken_by_a_publish(client: Client, core: Core) -> None:
    poll = asyncio.create_task(get(client, "/v1/events?since=0&timeout=30"))
    await asyncio.sleep(0.05)
    assert not poll.done()
    await core.sessions.authorize(MAC, IP, "terms")
    status, data = await asyncio.wait_for(poll, 5.0)
    assert status == 200 and [e["type"] for e in data["events"]] == ["session_started"]
    assert data["next"] == 1


async def test_events_after_a_daemon_restart_start_again(client: Client, core: Core) -> None:
    await core.sessions.authorize(MAC, IP, "terms")
    # a number from an earlier run: answered at once with this run's events from the start
    status, data = await get(client, "/v1/events?since=500&timeout=30")
    assert status == 200 and data["next"] == 1 and data["boot"] == NOW
    assert [e["type"] for e in data["events"]] == ["session_started"]


async def test_events_say_when_the_ring_moved_on(client: Client, core: Core) -> None:
    for _ in range(core.bus.capacity + 5):
        core.bus.publish(PlanChanged(MAC, None))
    status, data = await get(client, "/v1/events?since=1&timeout=0")
    assert status == 200 and data["gap"] is True
    status, data = await get(client, f"/v1/events?since={core.bus.last_seq - 1}&timeout=0")
    assert "gap" not in data and len(data["events"]) == 1  # positive control


@pytest.mark.parametrize(("query", "field"), [("since=-1", "since"), ("since=x", "since"),
                                              ("timeout=61", "timeout"), ("timeout=x", "timeout")])
async def test_events_bad_query(client: Client, query: str, field: str) -> None:
    status, data = await get(client, f"/v1/events?{query}")
    assert status == 400, data
    assert f"field {field}" in data["error"]


async def test_the_login_answer_has_exactly_the_shape_the_client_parses(client: Client) -> None:
    from gateway.control.schema import SessionOut

    status, data = await post(client, "/v1/clients/auth", {"mac": MAC, "ip": IP})
    assert status == 200, data
    row = data["client"]
    assert SessionOut.model_validate(row).to_json() == row
    assert set(SessionOut.model_fields) <= set(row)
