"""config.set, vouchers.create and reboot against a real Mosquitto, into the real core.

The rig (no root): the real TelemetryService, dispatcher and record of seen ids, the
real GatewayOps with its ConfigService and VoucherService on the core's fakes
(tests/unit/corekit.py: a real config file, a fake kernel), and the operator's side of
`desanet fleet send`. The config's own ``[telemetry]`` section points the service at
the broker, so a config.set that changes it moves the gateway for real. The trial's
window runs on the core's fake clock: the test ends it by advancing that clock (what
the reconcile loop's timer sees), so no test waits out a window.

Waits are on conditions with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.clock import SystemClock
from gateway.errors import DesanetError
from gateway.fleet.cli import BrokerAccess, exchange, keygen, load_key
from gateway.kernel import DatabaseWorker
from gateway.model import ClientView
from gateway.store.telemetry_outbox import AsyncTelemetryOutbox, TelemetryOutbox
from gateway.telemetry import commands as c
from gateway.telemetry import sealed
from gateway.telemetry.dispatch import Dispatcher
from gateway.telemetry.mqtt import connect
from gateway.telemetry.seen import SeenCommands
from gateway.telemetry.service import TelemetryService
from gateway.telemetry.topics import Topics
from tests.integration.mosquitto import Broker, Consumer, Received, free_port
from tests.unit.conftest import make_config
from tests.unit.corekit import Core, build_core, edited

pytestmark = [pytest.mark.integration]

PREFIX = "desanet/v1"
ROOT = Path(__file__).resolve().parents[2]
RESPONSE = json.loads((ROOT / "docs" / "schemas" / "command-response.schema.json").read_text())
STATUS = json.loads((ROOT / "docs" / "schemas" / "status.schema.json").read_text())


@dataclass
class Rig:
    site: str
    broker: Broker
    core: Core
    service: TelemetryService
    key: Ed25519PrivateKey
    keyfile: Path
    topics: Topics = field(init=False)

    def __post_init__(self) -> None:
        self.topics = Topics(PREFIX, self.site)

    def request(self, name: str, args: dict[str, Any], cid: str) -> bytes:
        now = int(time.time())
        return c.sign(c.body_json(cid, self.site, name, args, now - 5, now + 600), self.key)

    async def ask(self, payload: bytes) -> dict[str, Any]:
        answer = await asyncio.to_thread(exchange, BrokerAccess(self.broker.url), self.topics,
                                         payload, 20.0)
        assert answer is not None, f"no answer{self.broker.tail()}"
        jsonschema.validate(answer, RESPONSE)
        return answer

    async def online(self) -> None:
        """Until the gateway answers (it subscribes before it says online)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while await asyncio.to_thread(
                exchange, BrokerAccess(self.broker.url), self.topics,
                self.request("status", {}, f"probe-{time.time_ns()}"), 1.0) is None:
            assert loop.time() < deadline, f"the gateway never answered{self.broker.tail()}"


async def _deadline_timer(core: Core) -> None:
    """What the reconcile loop does every tick: roll back a trial whose window ran out."""
    while True:
        with contextlib.suppress(DesanetError):
            await core.config.check_deadline()
        await asyncio.sleep(0.1)


@asynccontextmanager
async def gateway(tmp_path: Path, broker: Broker, site: str) -> AsyncIterator[Rig]:
    keyfile = tmp_path / "op.key"
    public = keygen(keyfile)
    tel = {"enabled": True, "broker": broker.url, "site_id": site, "start_delay_max": "0s",
           "reconnect_min": "1s", "reconnect_max": "2s", "status_interval": "0s",
           "command_keys": [public]}
    core = build_core(tmp_path, make_config(telemetry=tel))
    worker = DatabaseWorker()
    box = TelemetryOutbox(tmp_path / "telemetry.db")
    clock = SystemClock()
    svc = TelemetryService(lambda: core.holder.get().telemetry, AsyncTelemetryOutbox(box, worker),
                           connect, core.ops, lambda: core.config.version, "9.9.9", clock,
                           rng=random.Random(3))
    svc.commands = Dispatcher(core.ops, SeenCommands(tmp_path / "commands.json"),
                              lambda: core.holder.get().telemetry.command_keys,
                              lambda: Topics(PREFIX, site), clock, core.bus.publish, svc.rebirth)
    timer = asyncio.create_task(_deadline_timer(core))
    await svc.start()
    try:
        rig = Rig(site, broker, core, svc, load_key(str(keyfile)), keyfile)
        await rig.online()
        yield rig
    finally:
        timer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await timer
        await svc.stop()
        box.close()
        worker.shutdown()


async def wait_for(consumer: Consumer, match: Callable[[Received], bool], what: str,
                   after: int = 0) -> Received:
    return await asyncio.to_thread(consumer.wait_for, match, 20, what, after)


def status_of(m: Received, site: str) -> dict[str, Any] | None:
    if m.topic != Topics(PREFIX, site).status:
        return None
    body: dict[str, Any] = m.json
    jsonschema.validate(body, STATUS)
    return body


def event_of(m: Received, site: str, kind: str) -> dict[str, Any] | None:
    if m.topic != Topics(PREFIX, site).event or m.json.get("type") != kind:
        return None
    body: dict[str, Any] = m.json
    return body


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


# -- config.set ----------------------------------------------------------------------------------


async def test_config_set_is_confirmed_by_the_gateway_once_it_is_back_on_the_broker(
        mosquitto: Broker, tmp_path: Path) -> None:
    site = "cs1"
    with mosquitto.consumer(f"{PREFIX}/{site}/#", client_id="op-cs1") as consumer:
        async with gateway(tmp_path, mosquitto, site) as rig:
            before = rig.core.config.version
            text = edited(rig.core.config_path.read_text(), site={"village": "Desa Baru"})
            payload = rig.request("config.set", {"text": text, "confirm": "5m",
                                                 "expected_version": before}, "cmd-config-0001")
            mark = len(consumer.messages())
            answer = await rig.ask(payload)
            result = answer["result"]
            assert answer["ok"] is True and result["previous_version"] == before, answer
            assert result["confirm"] == "on_reconnect" and result["changes"] == ["site.village"]
            after = result["version"]
            # the answer came on the old connection, then the gateway left (its Will) and
            # came back online with the new config
            offline = await wait_for(consumer, lambda m: (status_of(m, site) or {}).get(
                "online") is False, "the Will of the connection that answered", mark)
            back = consumer.messages().index(offline)
            await wait_for(consumer, lambda m: (status_of(m, site) or {}).get(
                "config_version") == after and m.json["online"] is True,
                "the status online with the new config", back)
            await wait_until(lambda: rig.core.config.trial is None, "the trial confirmed")
            confirmed = await wait_for(consumer, lambda m: event_of(m, site, "config_confirmed")
                                       is not None, "the config_confirmed event")
            assert confirmed.json["version"] == after
            # the same command again: its first answer, no second apply
            again = await rig.ask(payload)
            assert (again["reason"], again["first"]) == (c.REPLAYED, answer)
        types = [s.event.type for s in rig.core.events()]
        by = [s.event.to_json().get("by") for s in rig.core.events()
              if s.event.type in ("config_applied", "config_confirmed")]
    assert types.count("config_applied") == 1 and types.count("config_confirmed") == 1
    assert by == ["mqtt:cmd-config-0001", "mqtt:cmd-config-0001"]
    assert rig.core.config.version == after and "config_rolled_back" not in types


async def test_config_set_that_cuts_the_gateway_off_is_rolled_back_and_it_comes_back(
        mosquitto: Broker, tmp_path: Path) -> None:
    site = "cs2"
    dead = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    with mosquitto.consumer(f"{PREFIX}/{site}/#", client_id="op-cs2") as consumer:
        async with gateway(tmp_path, mosquitto, site) as rig:
            before = rig.core.config.version
            text = edited(rig.core.config_path.read_text(), telemetry={"broker": dead})
            mark = len(consumer.messages())
            answer = await rig.ask(rig.request("config.set", {"text": text, "confirm": "30s"},
                                               "cmd-config-dead1"))
            assert answer["ok"] is True and answer["result"]["changes"] == ["telemetry.broker"]
            await wait_for(consumer, lambda m: (status_of(m, site) or {}).get("online") is False,
                           "the gateway's Will as it moves to the dead broker", mark)
            gone = len(consumer.messages())
            await wait_until(lambda: rig.service.connects >= 1 and not rig.service.connected
                             and rig.core.config.trial is not None,
                             "the gateway trying the dead broker")
            assert rig.core.config.version != before
            rig.core.clock.advance(31)  # the confirm window ends; the timer rolls back
            await wait_for(consumer, lambda m: (status_of(m, site) or {}).get(
                "config_version") == before and m.json["online"] is True,
                "the status online again, with the previous config", gone)
            rolled = await wait_for(consumer, lambda m: event_of(m, site, "config_rolled_back")
                                    is not None, "the config_rolled_back event")
            assert rolled.json["version"] == before and rolled.json["source"] == "timer"
            await rig.online()  # it takes commands again
        assert rig.core.config.version == before and rig.core.config.trial is None
        assert not [s for s in rig.core.events() if s.event.type == "config_confirmed"]


# -- vouchers.create -----------------------------------------------------------------------------


async def test_vouchers_create_codes_reach_only_the_operator_and_work(
        mosquitto: Broker, tmp_path: Path) -> None:
    site = "vc1"
    with mosquitto.consumer(f"{PREFIX}/#", client_id="op-vc1") as consumer:
        async with gateway(tmp_path, mosquitto, site) as rig:
            argv = [sys.executable, "-m", "gateway", "fleet", "send", site, "vouchers.create",
                    "count=3", "duration=1d", "max_devices=2", "name=Posyandu Mei",
                    "--id", "cmd-vouchers-001", "--broker", mosquitto.url,
                    "--key", str(rig.keyfile), "--json", "--timeout", "20s"]
            done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                           timeout=60, cwd=str(ROOT))
            assert done.returncode == 0, done.stderr
            result = json.loads(done.stdout)["result"]
            codes = sorted(result["codes"])
            listed = sorted(v.code for v in await rig.core.ops.vouchers(result["batch"]))
            assert codes == listed and len(codes) == 3 and result["max_devices"] == 2
            session = await rig.core.sessions.login_voucher(
                ClientView("10.42.0.120", "02:00:00:00:00:09", None), codes[0])
            assert session.voucher == codes[0]
            # the answer as it went over the broker: sealed, opened by the operator's key only
            wire = await wait_for(consumer, lambda m: m.topic.startswith(rig.topics.cmd_res)
                                  and m.json.get("id") == "cmd-vouchers-001", "the answer")
            box = wire.json["result"]["codes_sealed"]
            context = c.sealed_context(site, "cmd-vouchers-001", "vouchers.create")
            with pytest.raises(sealed.SealError):
                sealed.open_box(box, X25519PrivateKey.generate(), context)
            await wait_for(consumer, lambda m: event_of(m, site, "command_handled") is not None
                           and m.json["name"] == "vouchers.create", "the command_handled event")
            await wait_for(consumer, lambda m: event_of(m, site, "voucher_batch_created")
                           is not None, "the voucher_batch_created event")
    published = [m.payload for m in consumer.messages()]
    assert published
    for code in codes:  # in no payload in clear, nor in its compact form
        assert not any(code.encode() in p or code.replace("-", "").encode() in p
                       for p in published), code


# -- reboot ------------------------------------------------------------------------------------


class ObservedReboot:
    """The reboot action, observed: records whether the answer was already on the broker."""

    def __init__(self, answered: Callable[[], bool]) -> None:
        self.answered = answered
        self.calls: list[bool] = []

    def unavailable(self) -> str | None:
        return None

    async def reboot(self) -> None:
        self.calls.append(await asyncio.to_thread(self.answered))


async def test_reboot_is_answered_first_then_the_reboot_action_runs(
        mosquitto: Broker, tmp_path: Path) -> None:
    site = "rb1"
    res = Topics(PREFIX, site).cmd_res
    with mosquitto.consumer(f"{res}/#", client_id="op-rb1") as consumer:
        async with gateway(tmp_path, mosquitto, site) as rig:
            refused = await rig.ask(rig.request("reboot", {}, "cmd-reboot-none"))
            assert (refused["reason"], refused["kind"], refused["detail"]) == \
                ("failed", "refused", "reboot_unavailable"), refused
            action = ObservedReboot(lambda: any(m.json.get("id") == "cmd-reboot-0001"
                                                for m in consumer.messages()))
            rig.core.ops.reboot_action = action
            answer = await rig.ask(rig.request("reboot", {}, "cmd-reboot-0001"))
            assert answer["result"] == {"rebooting": True}
            await wait_until(lambda: bool(action.calls), "the reboot action")
            again = await rig.ask(rig.request("reboot", {}, "cmd-reboot-0001"))
            assert again["reason"] == c.REPLAYED
    assert action.calls == [True]  # once, and after the answer was on the broker
