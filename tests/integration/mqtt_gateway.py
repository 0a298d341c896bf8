"""The daemon's telemetry link as a process of its own, so a test can kill -9 it.

Run by tests/integration/test_mqtt_311.py: ``mqtt_gateway.py SETTINGS_JSON STATE_DIR``.
SETTINGS_JSON is a ``[telemetry]`` section as JSON; the process runs the real
TelemetryService (outbox on disk, the paho link with the protocol negotiation
the daemon uses, the status and its Will, the periodic report from fixed
readings, signed commands through the real dispatcher with a stand-in facade)
with its clock and sleeps sped up 10 times (the command checks keep the real
clock), until it is killed. It prints one line, "started", once the service runs.
DESANET_TEST_CERT_TRIAL in its environment shortens the cert.install trial
window (seconds; only this harness reads it, the daemon has no such knob);
DESANET_TEST_KILL_IN_CERT_TRIAL=1 makes the process kill -9 itself the moment
a cert.install has written its files, in the middle of the trial.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.clock import SystemClock
from gateway.config.telemetry import Telemetry
from gateway.core.events import Stamped
from gateway.kernel import DatabaseWorker
from gateway.store.telemetry_outbox import AsyncTelemetryOutbox, TelemetryOutbox
from gateway.telemetry import metrics
from gateway.telemetry.dispatch import Dispatcher
from gateway.telemetry.mqtt import connect
from gateway.telemetry.seen import SeenCommands
from gateway.telemetry.service import TelemetryService
from gateway.telemetry.topics import Topics

SPEED = 10.0


class FastClock:
    """Time SPEED times faster than the wall clock, from the start of the process."""

    def __init__(self) -> None:
        self.wall0, self.mono0 = time.time(), time.monotonic()

    def _gone(self) -> float:
        return (time.monotonic() - self.mono0) * SPEED

    def now(self) -> int:
        return int(self.time())

    def time(self) -> float:
        return self.wall0 + self._gone()

    def monotonic(self) -> float:
        return self.mono0 + self._gone()


class Ops:
    async def status(self) -> dict[str, Any]:
        return {"ready": True, "uptime": 1, "sessions_active": 0}

    async def deauthorize(self, mac: str) -> Any:
        raise NotImplementedError

    async def revoke_voucher(self, code: str) -> Any:
        raise NotImplementedError

    async def prefetch(self) -> dict[str, Any]:
        return {}


class NoEvents:
    async def wait_events(self, seq: int, timeout: float) -> list[Stamped]:
        await asyncio.sleep(timeout)
        return []


async def readings() -> metrics.Readings:
    system = metrics.SystemReadings(cpu=5.0, memory=40.0, disk=20.0, uptime=1000, load=0.2)
    return metrics.Readings(system, {"sessions_active": 3, "clients_connected": 4,
                                     "uplink": {"state": "up", "latency_ms": 600.0}})


def kill_in_cert_trial() -> None:
    """SIGKILL right after cert.install wrote the certificate and its trial (no cleanup)."""
    from gateway.telemetry import certtrial
    install = certtrial.install

    def then_die(*args: Any, **kwargs: Any) -> Any:
        install(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    certtrial.install = then_die


async def main() -> None:
    if "DESANET_TEST_CERT_TRIAL" in os.environ:  # the trial's log lines, for the test to read
        logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    if os.environ.get("DESANET_TEST_KILL_IN_CERT_TRIAL") == "1":
        kill_in_cert_trial()
    tel = Telemetry(**json.loads(sys.argv[1]))
    state = Path(sys.argv[2])
    worker = DatabaseWorker()
    box = TelemetryOutbox(state / "telemetry.db")
    clock = SystemClock()

    async def sleep(delay: float) -> None:
        await asyncio.sleep(delay / SPEED)

    svc = TelemetryService(lambda: tel, AsyncTelemetryOutbox(box, worker), connect, NoEvents(),
                           lambda: "0123456789ab", "9.9.9", FastClock(), rng=random.Random(3),
                           sleep=sleep, readings=readings)
    svc.commands = commands = Dispatcher(
        Ops(), SeenCommands(state / "commands.json"), lambda: tel.command_keys,
        lambda: Topics(tel.topic_prefix, tel.site_id), clock, lambda event: None, svc.rebirth,
        telemetry=lambda: tel, cert_trial=float(os.environ.get("DESANET_TEST_CERT_TRIAL", 600)))
    resumed = await commands.resume_cert_trial()  # as the daemon does
    if resumed is not None:
        svc.when_connected(resumed)
    await svc.start()
    print("started", flush=True)
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(main())
