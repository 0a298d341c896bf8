"""Remote commands through the dispatcher: each calls the facade once, replays have no
effect and get the first answer (also after a restart), every outcome is an event; and the
telemetry service subscribes, hands requests over and answers with the correlation data."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.clock import FakeClock
from gateway.config.telemetry import Telemetry
from gateway.core.events import CommandHandled, Event, Stamped
from gateway.errors import Conflict, NotFound, StoreError, VoucherError
from gateway.kernel import DatabaseWorker
from gateway.model import Session, Voucher
from gateway.store.telemetry_outbox import AsyncTelemetryOutbox, TelemetryOutbox
from gateway.telemetry import commands as c
from gateway.telemetry import payloads
from gateway.telemetry.dispatch import STATUS_KEYS, Dispatcher
from gateway.telemetry.fake import FakeBroker, FakeLink
from gateway.telemetry.mqtt import Incoming
from gateway.telemetry.seen import SeenCommands
from gateway.telemetry.service import TelemetryService
from gateway.telemetry.topics import Topics

SITE = "s1"
TOPICS = Topics("desanet/v1", SITE)
KEY = Ed25519PrivateKey.generate()
KEYS = [c.public_key_text(KEY.public_key())]
MAC = "02:00:00:00:00:01"
SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
RESPONSE_SCHEMA = json.loads((SCHEMAS / "command-response.schema.json").read_text())


class FakeOps:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail: Exception | None = None

    async def status(self) -> dict[str, Any]:
        self.calls.append(("status", None))
        return {"ready": True, "uptime": 5, "sessions_active": 2, "lan_ip": "10.0.0.1",
                "config_path": "/etc/x",
                "config": {"version": "abc", "path": "/etc/x", "last_change": {"by": "budi"},
                           "trial": {"deadline": 99, "by": "budi"}, "last_refusal": "x"}}

    async def deauthorize(self, mac: str) -> Session:
        self.calls.append(("deauthorize", mac))
        if self.fail:
            raise self.fail
        return Session(mac, "10.0.0.9", 0, 60, 600, "manual")

    async def revoke_voucher(self, code: str) -> Voucher:
        self.calls.append(("revoke_voucher", code))
        return Voucher(code=code, duration=60, plan=None, created=0, batch="b1")

    async def prefetch(self) -> dict[str, Any]:
        self.calls.append(("prefetch", None))
        if self.fail:
            raise self.fail
        return {"fetched": 3}


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.clock = FakeClock(1_800_000_000)
        self.ops = FakeOps()
        self.events: list[Event] = []
        self.rebirths = 0
        self.path = tmp / "commands.json"
        self.dispatcher = self.make()

    def make(self) -> Dispatcher:
        def rebirth() -> None:
            self.rebirths += 1
        return Dispatcher(self.ops, SeenCommands(self.path), lambda: KEYS, lambda: TOPICS,
                          self.clock, self.events.append, rebirth)

    def request(self, name: str, args: dict[str, Any] | None = None, id: str = "cmd-0001",
                key: Ed25519PrivateKey = KEY, site: str = SITE, life: int = 600) -> bytes:
        now = self.clock.now()
        return c.sign(c.body_json(id, site, name, args or {}, now - 1, now + life), key)

    async def send(self, payload: bytes, response_topic: str | None = None) -> dict[str, Any]:
        reply = await self.dispatcher.handle(Incoming(TOPICS.cmd_req, payload, response_topic,
                                                      b"corr"))
        assert reply.correlation == b"corr"
        jsonschema.validate(json.loads(payloads.encode(reply.body)), RESPONSE_SCHEMA)
        return reply.body


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def handled(rig: Rig) -> list[tuple[str | None, str | None, str, str | None]]:
    return [(e.id, e.name, e.outcome, e.reason) for e in rig.events if isinstance(e, CommandHandled)]


@pytest.mark.parametrize("name,args,call,result", [
    ("deauth", {"mac": MAC}, ("deauthorize", MAC), {"deauthorized": True}),
    ("vouchers.revoke", {"code": "ABCDE-FGHJK"}, ("revoke_voucher", "ABCDE-FGHJK"),
     {"revoked": True, "batch": "b1"}),
    ("prefetch", {}, ("prefetch", None), {"fetched": 3}),
    ("status", {}, ("status", None), {"ready": True, "uptime": 5, "sessions_active": 2,
                                      "config": {"version": "abc", "trial_deadline": 99}}),
])
async def test_each_command_calls_its_facade_method_once(rig: Rig, name: str, args: dict[str, Any],
                                                         call: tuple[str, Any],
                                                         result: dict[str, Any]) -> None:
    body = await rig.send(rig.request(name, args))
    assert body["ok"] is True and body["result"] == result, body
    assert (body["id"], body["name"], body["site"], body["v"]) == ("cmd-0001", name, SITE, 1)
    assert rig.ops.calls == [call]
    assert handled(rig) == [("cmd-0001", name, "ok", None)]


def test_status_sends_no_client_data() -> None:
    assert not {"lan_ip", "config_path", "portal_url"} & set(STATUS_KEYS)


async def test_rebirth_asks_for_the_status_again(rig: Rig) -> None:
    assert (await rig.send(rig.request("rebirth")))["ok"]
    assert rig.rebirths == 1


@pytest.mark.parametrize("what,reason", [
    ("unsigned", c.UNSIGNED), ("wrong key", c.BAD_SIGNATURE), ("expired", c.EXPIRED),
    ("other site", c.OTHER_SITE), ("not JSON", c.MALFORMED),
])
async def test_refused_commands_have_no_effect_and_are_events(rig: Rig, what: str, reason: str) -> None:
    good = rig.request("deauth", {"mac": MAC})
    payload = {
        "unsigned": json.dumps({"v": 1, "body": json.loads(good)["body"]}).encode(),
        "wrong key": rig.request("deauth", {"mac": MAC}, key=Ed25519PrivateKey.generate()),
        "expired": rig.request("deauth", {"mac": MAC}, life=10),
        "other site": rig.request("deauth", {"mac": MAC}, site="s2"),
        "not JSON": b"\xff",
    }[what]
    if what == "expired":
        rig.clock.wall += 10 + c.CLOCK_SKEW + 1
    body = await rig.send(payload)
    assert body["ok"] is False and body["reason"] == reason, body
    assert rig.ops.calls == []
    assert handled(rig)[0][2:] == ("refused", reason)
    assert handled(rig)[0][0] == (None if what == "not JSON" else "cmd-0001")
    # a refused command is not recorded: the operator may correct it and send the same id
    assert (await rig.send(rig.request("deauth", {"mac": MAC})))["ok"]


async def test_a_repeat_has_no_effect_and_returns_the_first_answer_even_after_a_restart(
        rig: Rig) -> None:
    request = rig.request("deauth", {"mac": MAC})
    first = await rig.send(request)
    again = await rig.send(request)
    assert again["ok"] is False and again["reason"] == c.REPLAYED and again["first"] == first
    rig.dispatcher = rig.make()  # a restart: a new dispatcher reads the record from disk
    after = await rig.send(request)
    assert after["reason"] == c.REPLAYED and after["first"] == first
    assert rig.ops.calls == [("deauthorize", MAC)]
    assert [h[2:] for h in handled(rig)] == [("ok", None), ("refused", "replayed"),
                                             ("refused", "replayed")]


async def test_a_command_begun_but_not_finished_is_not_run_again(rig: Rig) -> None:
    request = rig.request("deauth", {"mac": MAC})
    SeenCommands(rig.path).begin_blocking("cmd-0001", rig.clock.now() + 900, rig.clock.now())
    rig.dispatcher = rig.make()
    body = await rig.send(request)
    assert body["reason"] == c.REPLAYED and body["first"] is None
    assert rig.ops.calls == []


async def test_seen_ids_are_forgotten_after_their_expiry(rig: Rig) -> None:
    await rig.send(rig.request("prefetch", id="cmd-old-1", life=10))
    rig.clock.wall += 10 + c.CLOCK_SKEW + 1
    await rig.send(rig.request("prefetch", id="cmd-new-1"))
    assert set(json.loads(rig.path.read_text())["seen"]) == {"cmd-new-1"}


async def test_a_damaged_record_is_set_aside(rig: Rig) -> None:
    rig.path.write_text("{not json")
    seen = SeenCommands(rig.path)
    assert seen.get("x") is None and rig.path.with_suffix(".damaged").exists()


@pytest.mark.parametrize("args,field", [({}, "args.mac"), ({"mac": "nope"}, "args.mac"),
                                        ({"mac": MAC, "x": 1}, "args.x")])
async def test_bad_arguments_are_malformed_naming_the_field(rig: Rig, args: dict[str, Any],
                                                            field: str) -> None:
    body = await rig.send(rig.request("deauth", args))
    assert (body["ok"], body["reason"], body["field"]) == (False, c.MALFORMED, field), body
    assert rig.ops.calls == []


async def test_status_takes_no_arguments(rig: Rig) -> None:
    body = await rig.send(rig.request("status", {"all": True}))
    assert (body["reason"], body["field"]) == (c.MALFORMED, "args.all")


@pytest.mark.parametrize("error,kind", [(NotFound("no session for that MAC"), "not_found"),
                                        (Conflict("local_services.enabled is false"), "conflict"),
                                        (VoucherError("unknown", "no such voucher"), "refused")])
async def test_domain_errors_are_mapped_by_the_control_api_table(rig: Rig, error: Exception,
                                                                  kind: str) -> None:
    rig.ops.fail = error
    body = await rig.send(rig.request("deauth", {"mac": MAC}))
    assert (body["ok"], body["reason"], body["kind"]) == (False, "failed", kind)
    assert body["error"] == str(error)
    assert handled(rig) == [("cmd-0001", "deauth", "failed", kind)]


async def test_without_a_durable_record_nothing_runs(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise StoreError("disk full")
    monkeypatch.setattr(SeenCommands, "begin_blocking", broken)
    body = await rig.send(rig.request("deauth", {"mac": MAC}))
    assert (body["ok"], body["kind"]) == (False, "unavailable") and rig.ops.calls == []


async def test_a_record_that_could_not_be_written_does_not_block_a_retry(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: SeenCommands) -> None:
        raise StoreError("disk full")
    request = rig.request("deauth", {"mac": MAC})
    with monkeypatch.context() as m:
        m.setattr(SeenCommands, "_save", full)
        assert (await rig.send(request))["kind"] == "unavailable"
    assert (await rig.send(request))["ok"] is True  # the disk has room again
    assert rig.ops.calls == [("deauthorize", MAC)]


async def test_copies_arriving_together_have_one_effect(rig: Rig) -> None:
    request = rig.request("deauth", {"mac": MAC})
    bodies = await asyncio.gather(*(rig.send(request) for _ in range(5)))
    assert sorted(b["ok"] for b in bodies) == [False] * 4 + [True]
    assert {b.get("reason") for b in bodies if not b["ok"]} == {c.REPLAYED}
    assert rig.ops.calls == [("deauthorize", MAC)]


async def test_a_long_command_does_not_hold_up_another(rig: Rig) -> None:
    gate = asyncio.Event()
    original = rig.ops.prefetch

    async def slow() -> dict[str, Any]:
        await gate.wait()
        return await original()
    rig.ops.prefetch = slow  # type: ignore[method-assign]
    long = asyncio.create_task(rig.send(rig.request("prefetch", id="cmd-long-01")))
    quick = await asyncio.wait_for(rig.send(rig.request("deauth", {"mac": MAC})), 5)
    assert quick["ok"] is True and not long.done()
    gate.set()
    assert (await long)["ok"] is True


@pytest.mark.parametrize("asked,used", [
    (None, TOPICS.cmd_res),
    (TOPICS.cmd_res + "/op-7f3a", TOPICS.cmd_res + "/op-7f3a"),
    ("desanet/v1/s2/cmd/res/x", TOPICS.cmd_res),         # another site's subtree
    ("operators/inbox", TOPICS.cmd_res),
    (TOPICS.cmd_res + "x", TOPICS.cmd_res),
    (TOPICS.cmd_res + "/#", TOPICS.cmd_res),
])
def test_the_reply_topic_stays_in_this_gateways_subtree(rig: Rig, asked: str | None, used: str) -> None:
    assert rig.dispatcher.reply_topic(Incoming(TOPICS.cmd_req, b"", asked, None)) == used


def test_command_events_carry_no_arguments() -> None:
    data = payloads.event_data(CommandHandled("cmd-1", "deauth", "ok", None))
    assert data == {"type": "command_handled", "id": "cmd-1", "name": "deauth", "outcome": "ok",
                    "reason": None}


# -- through the telemetry service and the in-memory broker ------------------------------


class NoEvents:
    async def wait_events(self, seq: int, timeout: float) -> list[Stamped]:
        await asyncio.sleep(timeout)
        return []


@pytest.fixture
async def service(rig: Rig, tmp_path: Path) -> AsyncIterator[tuple[TelemetryService, FakeBroker]]:
    worker = DatabaseWorker()
    box = TelemetryOutbox(tmp_path / "telemetry.db")
    broker = FakeBroker()
    tel = Telemetry(enabled=True, broker="mqtt://b.example", site_id=SITE, start_delay_max=0,
                    status_interval=0, command_keys=tuple(KEYS))

    async def sleep(_: float) -> None:
        await asyncio.sleep(0.01)
    svc = TelemetryService(lambda: tel, AsyncTelemetryOutbox(box, worker), broker.connect,
                           NoEvents(), lambda: "v1", "9.9.9", rig.clock, random.Random(1), sleep)
    svc.commands = Dispatcher(rig.ops, SeenCommands(rig.path), lambda: KEYS, lambda: TOPICS,
                              rig.clock, rig.events.append, svc.rebirth)
    await svc.start()
    try:
        yield svc, broker
    finally:
        await svc.stop()
        box.close()
        worker.shutdown()


async def until(check: Any, what: str) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + 5
    while not (found := check()):
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
    return found


async def test_the_service_subscribes_before_its_status_and_answers_with_correlation(
        rig: Rig, service: tuple[TelemetryService, FakeBroker]) -> None:
    _, broker = service
    await until(lambda: broker.links and broker.links[0].subscriptions, "the subscription")
    link = broker.links[0]
    assert isinstance(link, FakeLink) and link.subscriptions == [TOPICS.cmd_req]
    statuses = len([p for p in broker.published if p.topic == TOPICS.status])
    link.deliver(Incoming(TOPICS.cmd_req, rig.request("rebirth"), TOPICS.cmd_res + "/me", b"c-1"))
    answer = await until(lambda: [p for p in broker.published if p.topic == TOPICS.cmd_res + "/me"],
                         "the answer")
    assert answer[0].correlation == b"c-1" and json.loads(answer[0].payload)["ok"] is True
    await until(lambda: len([p for p in broker.published if p.topic == TOPICS.status]) > statuses,
                "the status sent again (rebirth)")
