"""A cert.install trial outlives a restart of the daemon (gateway/telemetry/certtrial.py):
after a kill -9 or a power cut the trial goes on with the window it has left, measured on
the monotonic clock and the boot id (never the wall clock), so a certificate the broker
refuses still gives way to the previous one; a good one is kept once connected."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from gateway.clock import FakeClock
from gateway.kernel import DatabaseWorker
from gateway.store.telemetry_outbox import AsyncTelemetryOutbox, TelemetryOutbox
from gateway.telemetry import certtrial
from gateway.telemetry.dispatch import Dispatcher
from gateway.telemetry.fake import FakeBroker
from gateway.telemetry.mqtt import Link, LinkError, LinkSettings, OnAck, OnLost, OnMessage
from gateway.telemetry.seen import SeenCommands
from gateway.telemetry.service import TelemetryService
from tests.unit.test_cert_install import TOPICS, Box

DEADLINE = 10.0
OLD, NEW, NEWER = "-----old-----\n", "-----new-----\n", "-----newer-----\n"


async def until(check: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not check():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def installed(tmp: Path, window: float = 600.0, mono: float = 100.0, boot: str = "b1") -> Path:
    cert = tmp / "device.crt"
    cert.write_text(OLD)
    certtrial.install(cert, NEW, "cmd-1", window, mono, boot)
    return cert


def on_disk(cert: Path) -> dict[str, object]:
    return dict(json.loads(certtrial.state_path(cert).read_text()))


# --- the file operations, with the clock in the test's hands ---------------------------------

def test_install_keeps_the_previous_and_writes_the_trial_before_the_certificate(tmp_path: Path) -> None:
    cert = installed(tmp_path)
    assert cert.read_text() == NEW and certtrial.previous_path(cert).read_text() == OLD
    state = on_disk(cert)
    assert (state["id"], state["sha256"], state["used"]) == ("cmd-1", certtrial.sha256(NEW.encode()), 0)
    # a second install during the trial keeps the last certificate known to work
    certtrial.install(cert, NEWER, "cmd-2", 600.0, 150.0, "b1")
    assert certtrial.previous_path(cert).read_text() == OLD
    assert on_disk(cert)["id"] == "cmd-2"


def test_a_restart_in_the_same_boot_counts_the_time_the_daemon_was_down(tmp_path: Path) -> None:
    cert = installed(tmp_path, mono=100.0)
    trial = certtrial.resume(cert, 400.0, "b1")
    assert trial is not None and trial.used == 300.0 and trial.remaining(400.0) == 300.0
    assert on_disk(cert)["used"] == 300.0 and on_disk(cert)["mono"] == 400.0
    # down longer than the window: nothing left, the caller rolls back at once
    gone = certtrial.resume(cert, 2000.0, "b1")
    assert gone is not None and gone.remaining(2000.0) <= 0


def test_after_a_reboot_each_restart_is_charged_one_step_so_the_window_ends(tmp_path: Path) -> None:
    """Another boot id: the monotonic clock started again (and the wall clock may be years
    off), so the time down is unknown; one step is charged: never endless, never zero."""
    cert = installed(tmp_path, mono=5000.0)
    first = certtrial.resume(cert, 3.0, "b2")
    assert first is not None and 0 < first.remaining(3.0) == 600.0 - 600.0 / certtrial.STEPS
    restarts = 1
    while (trial := certtrial.resume(cert, 3.0, f"b{restarts + 2}")) is not None \
            and trial.remaining(3.0) > 0:
        restarts += 1
    assert restarts == certtrial.STEPS - 1


def test_checkpoints_write_the_window_used(tmp_path: Path) -> None:
    cert = installed(tmp_path, mono=100.0)
    trial = certtrial.resume(cert, 100.0, "b1")
    assert trial is not None
    trial = certtrial.checkpoint(trial, 160.0)
    assert on_disk(cert)["used"] == 60.0
    assert certtrial.resume(cert, 10.0, "b9") is not None  # after a reboot: 60 + one step
    assert on_disk(cert)["used"] == 60.0 + 600.0 / certtrial.STEPS


def test_roll_back_and_confirm_leave_no_trial_behind(tmp_path: Path) -> None:
    cert = installed(tmp_path)
    trial = certtrial.resume(cert, 100.0, "b1")
    assert trial is not None and certtrial.roll_back(trial)
    assert cert.read_text() == OLD
    assert not certtrial.previous_path(cert).exists() and not certtrial.state_path(cert).exists()
    assert certtrial.resume(cert, 100.0, "b1") is None

    cert = installed(tmp_path)
    trial = certtrial.resume(cert, 100.0, "b1")
    assert trial is not None and certtrial.confirm(trial)
    assert cert.read_text() == NEW
    assert not certtrial.previous_path(cert).exists() and not certtrial.state_path(cert).exists()
    assert not certtrial.roll_back(trial)  # nothing to go back to any more
    assert cert.read_text() == NEW


def test_files_left_by_a_crash_between_two_writes_are_cleaned_up(tmp_path: Path) -> None:
    # mid-install or mid-roll-back: the trial names a certificate that is not there
    cert = installed(tmp_path)
    cert.write_text(OLD)
    assert certtrial.resume(cert, 100.0, "b1") is None
    assert cert.read_text() == OLD
    assert not certtrial.previous_path(cert).exists() and not certtrial.state_path(cert).exists()
    # mid-confirm: .prev already gone, the trial file still there
    cert = installed(tmp_path)
    certtrial.previous_path(cert).unlink()
    assert certtrial.resume(cert, 100.0, "b1") is None
    assert cert.read_text() == NEW and not certtrial.state_path(cert).exists()


def test_a_certificate_removed_during_the_trial_gives_way_to_the_previous(tmp_path: Path) -> None:
    cert = installed(tmp_path)
    cert.unlink()
    assert certtrial.resume(cert, 100.0, "b1") is None
    assert cert.read_text() == OLD and not certtrial.state_path(cert).exists()


def test_a_damaged_trial_file_still_ends_in_a_trial(tmp_path: Path) -> None:
    cert = installed(tmp_path)
    certtrial.state_path(cert).write_text("{not json")
    trial = certtrial.resume(cert, 100.0, "b1")
    assert trial is not None and 0 < trial.remaining(100.0) <= 600.0 / certtrial.STEPS
    assert certtrial.roll_back(trial) and cert.read_text() == OLD


# --- through the dispatcher and the telemetry service, restarted on the same files ----------

class Gateway:
    """One run of the daemon's telemetry: a real TelemetryService and Dispatcher on the
    box's files, and an in-memory broker that refuses the certificate ``refused``."""

    def __init__(self, box: Box, tmp: Path, refused: bytes | None, window: float,
                 cert_clock: Callable[[], float] = time.monotonic) -> None:
        self.broker = FakeBroker()
        self.cert_clock = cert_clock
        self.refused = refused
        self.refusals = 0
        self.box, self.tmp, self.window = box, tmp, window

    async def connect(self, settings: LinkSettings, on_ack: OnAck, on_lost: OnLost,
                      on_message: OnMessage | None = None) -> Link:
        assert settings.cert_file is not None
        if self.refused is not None and Path(settings.cert_file).read_bytes() == self.refused:
            self.refusals += 1
            raise LinkError("TLS handshake refused: certificate revoked (fake)")
        return await self.broker.connect(settings, on_ack, on_lost, on_message)

    @asynccontextmanager
    async def run(self) -> AsyncIterator[TelemetryService]:
        worker = DatabaseWorker()
        outbox = TelemetryOutbox(self.tmp / "telemetry.db")
        tel = self.box.tel.model_copy(update={
            "broker": "mqtt://broker.example", "start_delay_max": 0, "reconnect_min": 1,
            "reconnect_max": 1, "reconnect_jitter": 0})

        async def sleep(delay: float) -> None:
            await asyncio.sleep(delay / 100)  # backoffs of 10 ms

        svc = TelemetryService(lambda: tel, AsyncTelemetryOutbox(outbox, worker), self.connect,
                               _NoEvents(), lambda: "0123456789ab", "9.9.9", FakeClock(),
                               rng=random.Random(1), sleep=sleep)
        svc.commands = dispatcher = Dispatcher(
            object(), SeenCommands(self.tmp / "seen.json"),  # type: ignore[arg-type]
            lambda: tel.command_keys, lambda: TOPICS, self.box.clock, lambda e: None,
            svc.rebirth, telemetry=lambda: tel, cert_trial=self.window, cert_clock=self.cert_clock)
        resumed = await dispatcher.resume_cert_trial()  # as gateway/daemon/main.py does
        if resumed is not None:
            svc.when_connected(resumed)
        await svc.start()
        try:
            yield svc
        finally:  # a kill -9: nothing is cleaned up on disk
            for task in dispatcher.cert_trials:
                task.cancel()
            await svc.stop()
            outbox.close()
            worker.shutdown()


class _NoEvents:
    async def wait_events(self, seq: int, timeout: float) -> list[object]:
        await asyncio.sleep(timeout)
        return []


async def _install_then_die(box: Box, pem: str) -> None:
    """Run 1: the command installs ``pem``; the process dies before any reconnect."""
    reply = await box.send(pem)
    assert reply.body["ok"] is True, reply.body
    for task in box.dispatcher.cert_trials:
        task.cancel()
    assert certtrial.state_path(box.cert_file).exists()
    assert box.cert_file.read_text() == pem


async def _settled(box: Box, svc: TelemetryService, want: bytes) -> None:
    await until(lambda: svc.connected and box.cert_file.read_bytes() == want
                and not certtrial.state_path(box.cert_file).exists()
                and not certtrial.previous_path(box.cert_file).exists(), "the trial to end")


async def test_a_refused_certificate_gives_way_after_a_restart(tmp_path: Path) -> None:
    mono = [1000.0]  # the trial's clock, moved by the test (the sleeps between steps are real)
    box = Box(tmp_path, trial=2.0, cert_clock=lambda: mono[0])
    bad = box.renewed()
    await _install_then_die(box, bad)
    gateway = Gateway(box, tmp_path, bad.encode(), 2.0, cert_clock=lambda: mono[0])
    async with gateway.run() as svc:
        await until(lambda: gateway.refusals >= 2, "the new certificate to be tried and refused")
        assert box.cert_file.read_text() == bad and certtrial.state_path(box.cert_file).exists()
        assert not svc.connected
        mono[0] += 2.0  # the window is over
        await _settled(box, svc, box.old)
        assert gateway.broker.links and gateway.broker.links[-1].settings.cert_file == str(box.cert_file)


async def test_a_good_certificate_is_kept_after_a_restart(tmp_path: Path) -> None:
    """The positive control: the same restart, a certificate the broker takes."""
    box = Box(tmp_path, trial=600.0)
    good = box.renewed()
    await _install_then_die(box, good)
    gateway = Gateway(box, tmp_path, box.old, 600.0)  # this broker has revoked the old one
    async with gateway.run() as svc:
        await _settled(box, svc, good.encode())
        assert gateway.refusals == 0
