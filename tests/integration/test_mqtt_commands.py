"""Signed remote commands against a real Mosquitto.

Two rigs, one table of bad requests:

- loopback (no root): the real TelemetryService, dispatcher and record of seen
  ids, with a recording stand-in for the facade, and the operator's side of
  `desanet fleet send` (``exchange``): the answer comes on the response topic
  with the correlation data; refused requests reach no facade method; a
  repeat after a restart is refused with the first answer.
- the lab (root): the real daemon with ``telemetry.command_keys``, the broker
  in the lab's WAN, the operator running `desanet fleet send` there; a signed
  deauth ends the villager's session, and an unsigned, wrongly signed,
  expired, other-site or replayed deauth leaves the client authorized; a
  config.set is confirmed by the daemon after it reconnects, vouchers.create
  answers codes the daemon lists, and reboot runs the lab's reboot command
  (``DESANET_REBOOT_COMMAND``) after the answer.

(config.set, vouchers.create and reboot against the real core without root:
test_mqtt_commands_core.py.)

Waits are on conditions with deadlines (the answer, the subscription), never
fixed sleeps.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from desanet_lab import LabInfo, LabSpec
from desanet_lab import plan as p
from gateway.clock import SystemClock
from gateway.config.telemetry import Telemetry
from gateway.core.events import CommandHandled, Event, Stamped
from gateway.daemon.reboot import ENV as REBOOT_ENV
from gateway.errors import NotFound
from gateway.fleet.cli import BrokerAccess, exchange, keygen, load_key
from gateway.kernel import DatabaseWorker
from gateway.model import Session, Voucher
from gateway.store.telemetry_outbox import AsyncTelemetryOutbox, TelemetryOutbox
from gateway.telemetry import commands as c
from gateway.telemetry.dispatch import Dispatcher
from gateway.telemetry.mqtt import connect
from gateway.telemetry.seen import SeenCommands
from gateway.telemetry.service import TelemetryService
from gateway.telemetry.topics import Topics
from tests.integration.conftest import (
    LAB_TOOLS,
    LabFactory,
    desanet_argv,
    desanet_json,
    require_root,
    require_tools,
    start_gateway,
    unique_prefix,
    wait_until,
)
from tests.integration.mosquitto import Broker, free_port, make_pki
from tests.unit.corekit import edited

pytestmark = [pytest.mark.integration]

PREFIX = "desanet/v1"
SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
RESPONSE = json.loads((SCHEMAS / "command-response.schema.json").read_text())
MAC = "02:00:00:00:00:01"
STRANGER = Ed25519PrivateKey.generate()


def request(key: Ed25519PrivateKey, site: str, name: str, args: dict[str, Any], cid: str,
            issued_ago: int = 5, life: int = 600) -> bytes:
    now = int(time.time())
    return c.sign(c.body_json(cid, site, name, args, now - issued_ago, now - issued_ago + life), key)


def bad_requests(key: Ed25519PrivateKey, site: str, args: dict[str, Any]
                 ) -> list[tuple[str, bytes, str]]:
    """(what, payload, the reason it must be refused with); each would deauth if obeyed."""
    good = request(key, site, "deauth", args, "cmd-unsigned-1")
    return [
        ("unsigned", json.dumps({"v": 1, "body": json.loads(good)["body"]}).encode(), c.UNSIGNED),
        ("wrong key", request(STRANGER, site, "deauth", args, "cmd-stranger-1"), c.BAD_SIGNATURE),
        ("expired", request(key, site, "deauth", args, "cmd-expired-1", issued_ago=2000,
                            life=600), c.EXPIRED),
        ("other site", request(key, "another-site", "deauth", args, "cmd-other-1"), c.OTHER_SITE),
    ]


# -- loopback: the service, the dispatcher and the operator's exchange -----------------------------


class RecordingOps:
    """Stands in for GatewayOps: records the calls that would change the gateway."""

    def __init__(self) -> None:
        self.deauthorized: list[str] = []

    async def status(self) -> dict[str, Any]:
        return {"ready": True, "uptime": 1, "sessions_active": 1}

    async def deauthorize(self, mac: str) -> Session:
        if mac in self.deauthorized:
            raise NotFound(f"no active session for {mac}")
        self.deauthorized.append(mac)
        return Session(mac, "10.0.0.9", 0, 60, 600, "manual")

    async def revoke_voucher(self, code: str) -> Voucher:
        raise NotFound(code)

    async def prefetch(self) -> dict[str, Any]:
        return {}


class NoEvents:
    async def wait_events(self, seq: int, timeout: float) -> list[Stamped]:
        await asyncio.sleep(timeout)
        return []


@asynccontextmanager
async def gateway(tmp_path: Path, tel: Telemetry, ops: RecordingOps, events: list[Event]
                  ) -> AsyncIterator[TelemetryService]:
    worker = DatabaseWorker()
    box = TelemetryOutbox(tmp_path / "telemetry.db")
    clock = SystemClock()
    svc = TelemetryService(lambda: tel, AsyncTelemetryOutbox(box, worker), connect, NoEvents(),
                           lambda: "0123456789ab", "9.9.9", clock, rng=random.Random(3))
    svc.commands = Dispatcher(ops, SeenCommands(tmp_path / "commands.json"),
                              lambda: tel.command_keys, lambda: Topics(tel.topic_prefix, tel.site_id),
                              clock, events.append, svc.rebirth)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()
        box.close()
        worker.shutdown()


async def ask(broker: Broker, site: str, payload: bytes) -> dict[str, Any]:
    answer = await asyncio.to_thread(exchange, BrokerAccess(broker.url), Topics(PREFIX, site),
                                     payload, 20.0)
    assert answer is not None, f"no answer{broker.tail()}"
    jsonschema.validate(answer, RESPONSE)
    return answer


async def online(broker: Broker, site: str, key: Ed25519PrivateKey) -> None:
    """Wait until the gateway answers (it subscribes before it says online)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        answer = await asyncio.to_thread(exchange, BrokerAccess(broker.url), Topics(PREFIX, site),
                                         request(key, site, "status", {}, f"probe-{time.time_ns()}"),
                                         1.0)
        if answer is not None:
            return
        assert loop.time() < deadline, f"the gateway never answered{broker.tail()}"


async def test_a_signed_command_is_answered_once_and_bad_ones_have_no_effect(
        mosquitto: Broker, tmp_path: Path) -> None:
    site = "s1"
    key = Ed25519PrivateKey.generate()
    tel = Telemetry(enabled=True, broker=mosquitto.url, site_id=site, start_delay_max=0,
                    reconnect_min=1, reconnect_max=2, status_interval=0,
                    command_keys=(c.public_key_text(key.public_key()),))
    ops, events = RecordingOps(), []  # type: ignore[var-annotated]
    deauth = request(key, site, "deauth", {"mac": MAC}, "cmd-deauth-0001")
    async with gateway(tmp_path, tel, ops, events):
        await online(mosquitto, site, key)
        for what, payload, reason in bad_requests(key, site, {"mac": MAC}):
            answer = await ask(mosquitto, site, payload)
            assert (answer["ok"], answer["reason"]) == (False, reason), (what, answer)
        assert ops.deauthorized == []
        first = await ask(mosquitto, site, deauth)
        assert first["ok"] is True and first["result"] == {"deauthorized": True}, first
        assert first["id"] == "cmd-deauth-0001" and first["site"] == site
    async with gateway(tmp_path, tel, ops, events):  # a restart: the record is on disk
        await online(mosquitto, site, key)
        again = await ask(mosquitto, site, deauth)
    assert (again["ok"], again["reason"], again["first"]) == (False, c.REPLAYED, first)
    assert ops.deauthorized == [MAC]  # one effect
    outcomes = [(e.id, e.outcome, e.reason) for e in events
                if isinstance(e, CommandHandled) and e.name == "deauth"]
    assert outcomes[-2:] == [("cmd-deauth-0001", "ok", None),
                             ("cmd-deauth-0001", "refused", c.REPLAYED)]
    assert [o[2] for o in outcomes[:4]] == [c.UNSIGNED, c.BAD_SIGNATURE, c.EXPIRED, c.OTHER_SITE]


async def test_the_fleet_send_command_line_prints_the_answer(mosquitto: Broker, tmp_path: Path) -> None:
    site = "s2"
    keyfile = tmp_path / "op.key"
    public = keygen(keyfile)
    tel = Telemetry(enabled=True, broker=mosquitto.url, site_id=site, start_delay_max=0,
                    reconnect_min=1, reconnect_max=2, status_interval=0, command_keys=(public,))
    ops, events = RecordingOps(), []  # type: ignore[var-annotated]
    async with gateway(tmp_path, tel, ops, events):
        await online(mosquitto, site, load_key(str(keyfile)))
        argv = [sys.executable, "-m", "gateway", "fleet", "send", site, "deauth", f"mac={MAC}",
                "--broker", mosquitto.url, "--key", str(keyfile), "--json", "--timeout", "20s"]
        done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                       timeout=60, cwd=str(SCHEMAS.parents[1]))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == {"deauthorized": True}
    assert ops.deauthorized == [MAC]



async def test_an_mqtt_311_operator_gets_the_answer_on_cmd_res_by_id(mosquitto: Broker,
                                                                    tmp_path: Path) -> None:
    import paho.mqtt.publish as publish

    site = "s3"
    key = Ed25519PrivateKey.generate()
    tel = Telemetry(enabled=True, broker=mosquitto.url, site_id=site, start_delay_max=0,
                    reconnect_min=1, reconnect_max=2, status_interval=0,
                    command_keys=(c.public_key_text(key.public_key()),))
    ops, events = RecordingOps(), []  # type: ignore[var-annotated]
    res = Topics(PREFIX, site).cmd_res
    with mosquitto.consumer(res, client_id="op-311") as consumer:
        async with gateway(tmp_path, tel, ops, events):
            await online(mosquitto, site, key)
            # paho's publish.single speaks MQTT 3.1.1: no response topic, no correlation data
            await asyncio.to_thread(publish.single, Topics(PREFIX, site).cmd_req,
                                    request(key, site, "deauth", {"mac": MAC}, "cmd-311-00001"),
                                    qos=1, hostname=mosquitto.host, port=mosquitto.port)
            got = await asyncio.to_thread(consumer.wait_for,
                                          lambda m: m.json.get("id") == "cmd-311-00001", 20,
                                          "the answer on cmd/res")
    assert got.topic == res and got.json["ok"] is True
    jsonschema.validate(got.json, RESPONSE)
    assert ops.deauthorized == [MAC]

# -- the lab: the real daemon, the broker in the WAN, `desanet fleet send` there ------------------

LAB_SITE = "lab-cmd"


@pytest.fixture(scope="module")
def lab_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("operator") / "op.key"
    return path, keygen(path)


@pytest.fixture(scope="module")
def reboot_mark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the lab daemon's reboot command makes (docs/mqtt.md "reboot")."""
    return tmp_path_factory.mktemp("reboot") / "rebooted"


@pytest.fixture(scope="module")
def lab_rig(make_lab: LabFactory, lab_key: tuple[Path, str], reboot_mark: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabInfo, Broker]]:
    pki = make_pki(tmp_path_factory.mktemp("pki"), host=p.WAN_ISP_V4, device=LAB_SITE)
    port, tls_port = free_port(), free_port()
    telemetry = {"enabled": True, "broker": f"mqtts://{p.WAN_ISP_V4}:{tls_port}",
                 "site_id": LAB_SITE, "ca_file": str(pki.ca), "cert_file": str(pki.device_cert),
                 "key_file": str(pki.device_key), "start_delay_max": "0s", "reconnect_min": "1s",
                 "reconnect_max": "2s", "keepalive": "30s", "command_keys": [lab_key[1]]}
    lab = make_lab(LabSpec(prefix=unique_prefix("mc"), clients=1, dhcp=False,
                           start_gateway=False, extra={"telemetry": telemetry}))
    # the daemon's reboot is this command: never the machine's
    with Broker(tmp_path_factory.mktemp("broker"), port, host=p.WAN_ISP_V4, ns=lab.wan,
                tls_port=tls_port, pki=pki) as broker, \
            pytest.MonkeyPatch.context() as env:
        env.setenv(REBOOT_ENV, f"touch {reboot_mark}")
        start_gateway(lab)
        env.delenv(REBOOT_ENV)
        yield lab, broker


def _in_wan(lab: LabInfo, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", lab.wan, *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=str(SCHEMAS.parents[1]), check=False)


def _raw(lab: LabInfo, broker: Broker, payload: bytes, timeout: float = 20) -> dict[str, Any] | None:
    done = _in_wan(lab, [sys.executable, str(Path(__file__).with_name("mqtt_request.py")),
                         broker.url, PREFIX, LAB_SITE, payload.hex(), str(timeout)])
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] | None = json.loads(done.stdout)
    if answer is not None:
        jsonschema.validate(answer, RESPONSE)
    return answer


def _authorized(lab: LabInfo, mac: str) -> bool:
    return any(row["mac"] == mac and row.get("authorized")
               for row in desanet_json(lab.control_socket, "clients")["clients"])


@require_root
@require_tools(*LAB_TOOLS, "mosquitto")
def test_lab_a_signed_deauth_ends_the_session_and_bad_ones_leave_it(
        lab_rig: tuple[LabInfo, Broker], lab_key: tuple[Path, str]) -> None:
    lab, broker = lab_rig
    key = load_key(str(lab_key[0]))
    mac = p.client_mac(1)
    auth = ["clients", "auth", mac, "--force"]
    ip = lab.client(1).ipv4 or "10.42.0.101"  # no DHCP in this lab: an address on the LAN
    desanet_json(lab.control_socket, *auth, "--ip", ip)
    assert _authorized(lab, mac)
    # the gateway answers once it has subscribed (before it says online)
    wait_until(lambda: _raw(lab, broker, request(key, LAB_SITE, "status", {},
                                                 f"probe-{time.time_ns()}"), 2),
               60, "the gateway to answer a status command")

    for what, payload, reason in bad_requests(key, LAB_SITE, {"mac": mac}):
        answer = _raw(lab, broker, payload)
        assert answer is not None and (answer["ok"], answer["reason"]) == (False, reason), what
        assert _authorized(lab, mac), f"{what}: the client lost its session"

    signed = request(key, LAB_SITE, "deauth", {"mac": mac}, "cmd-lab-deauth-1")
    first = _raw(lab, broker, signed)
    assert first is not None and first["ok"] is True, first
    assert not _authorized(lab, mac)

    desanet_json(lab.control_socket, *auth, "--ip", ip)  # back on
    again = _raw(lab, broker, signed)  # the same command id: replayed, no effect
    assert again is not None and (again["reason"], again["first"]) == (c.REPLAYED, first)
    assert _authorized(lab, mac)

    # the operator's command line, in the WAN namespace beside the broker
    done = _in_wan(lab, [*desanet_argv(), "fleet", "send", LAB_SITE, "deauth", f"mac={mac}",
                         "--broker", broker.url, "--key", str(lab_key[0]), "--json"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == {"deauthorized": True}
    assert not _authorized(lab, mac)
    events = [e for e in desanet_json(lab.control_socket, "events", "--no-follow")
              if e["type"] == "command_handled"]
    assert {(e["outcome"], e["reason"]) for e in events} >= {
        ("refused", c.UNSIGNED), ("refused", c.BAD_SIGNATURE), ("refused", c.EXPIRED),
        ("refused", c.OTHER_SITE), ("ok", None), ("refused", c.REPLAYED)}


def _fleet_send(lab: LabInfo, broker: Broker, key: Path, *words: str) -> dict[str, Any]:
    done = _in_wan(lab, [*desanet_argv(), "fleet", "send", LAB_SITE, *words, "--broker",
                         broker.url, "--key", str(key), "--json", "--timeout", "30s"])
    assert done.returncode in (0, 1), done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


@require_root
@require_tools(*LAB_TOOLS, "mosquitto")
def test_lab_config_set_vouchers_create_and_reboot_on_the_real_daemon(
        lab_rig: tuple[LabInfo, Broker], lab_key: tuple[Path, str], reboot_mark: Path,
        tmp_path: Path) -> None:
    lab, broker = lab_rig
    key = load_key(str(lab_key[0]))
    wait_until(lambda: _raw(lab, broker, request(key, LAB_SITE, "status", {},
                                                 f"probe-{time.time_ns()}"), 2),
               60, "the gateway to answer a status command")
    # config.set: a harmless change, confirmed by the daemon once it is back on the broker
    before = desanet_json(lab.control_socket, "status")["config"]["version"]
    conf = tmp_path / "gateway.toml"
    conf.write_text(edited(Path(lab.config_path).read_text(), site={"village": "Desa Lab Baru"}))
    answer = _fleet_send(lab, broker, lab_key[0], "config.set", f"text=@{conf}", "confirm=2m",
                         f"expected_version={before}")
    assert answer["ok"] is True, answer
    after = answer["result"]["version"]

    def confirmed() -> bool:
        config = desanet_json(lab.control_socket, "status")["config"]
        return bool(config["version"] == after and config["trial"] is None)
    wait_until(confirmed, 30, "the daemon to confirm its new config")
    # vouchers.create: the codes, opened by the operator, are the daemon's vouchers
    made = _fleet_send(lab, broker, lab_key[0], "vouchers.create", "count=2", "duration=1h")
    assert made["ok"] is True, made
    listed = desanet_json(lab.control_socket, "vouchers", "list", "--batch",
                          made["result"]["batch"])
    rows = listed["vouchers"] if isinstance(listed, dict) else listed
    assert sorted(v["code"] for v in rows) == sorted(made["result"]["codes"])
    # reboot: answered, then the lab's reboot command runs (not the machine's reboot)
    assert not reboot_mark.exists()
    rebooted = _fleet_send(lab, broker, lab_key[0], "reboot")
    assert rebooted["ok"] is True and rebooted["result"] == {"rebooting": True}, rebooted
    wait_until(reboot_mark.exists, 30, "the lab's reboot command")
