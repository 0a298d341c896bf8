"""TelemetryService: the daemon's reports to the region's broker (docs/mqtt.md).

Theory of operation
-------------------
Two tasks, both on the event loop:

- **events**: follows the core facade's event stream (``GatewayOps.wait_events``,
  the bus's replay ring), reduces each event to its allow-listed fields
  (:mod:`gateway.telemetry.payloads`: no personal data) and commits them to the
  durable outbox, a batch per transaction.
- **connection**: waits a random start delay (up to ``start_delay_max``), then
  connects; a failed attempt or a lost connection waits ``reconnect_min``
  doubling to ``reconnect_max``, each shortened by a random part of up to
  ``reconnect_jitter`` (:func:`reconnect_delay`). On every connect it publishes
  the retained status (``online: true``, the session counter), then sends the
  outbox from its lowest ``seq``, at most :data:`WINDOW` messages awaiting
  their PUBACK at a time. A PUBACK removes its message (several per
  transaction); a lost connection puts the ones in flight back, and the next
  connection sends them again, in order, with the same ``seq``.

- **metrics** (when the daemon gives it readings): a sample every
  ``telemetry_sample_interval``, a report (:mod:`gateway.telemetry.metrics`:
  deadbands, a full report every ``telemetry_full_every``) into the same
  outbox every ``telemetry_interval``, so it shares the events' ``seq``.

Remote commands (docs/mqtt.md "Commands"): when the daemon sets ``commands``
(a :class:`gateway.telemetry.dispatch.Dispatcher`), each connection subscribes
to ``cmd/req`` before it publishes the status (so an operator who sees the
gateway online can send at once); each request is handed to the dispatcher
on a task of its own and its reply published on this connection. A reply lost
with the connection is not queued: the operator sends the same command (id)
again and gets the recorded response.

The status is sent again when the running config changes (its
``config_version``) and every ``status_interval``. Settings are read at each
connect; a config that changes the ``[telemetry]`` section in use ends the
connection (with the Will) and connects again at once with the new settings,
and cuts short a backoff wait. The change waits for the answers of commands
being handled: they go out on the connection their requests came in on.

A reply may carry :class:`gateway.telemetry.dispatch.After`: once its answer
is PUBACKed (or :data:`REPLY_ACK_WAIT` passed), ``run`` runs (a reboot), and
``reconnect`` ends the connection and connects again at once (``config.set``:
the config now running may have changed the WAN); its ``on_connected`` runs
once a later connection is up: CONNACK, and the broker's SUBACK of
``cmd/req`` (the operator can reach the gateway again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from gateway.asynctools import wait_event
from gateway.clock import Clock
from gateway.config.telemetry import Telemetry
from gateway.core.events import Stamped
from gateway.errors import DesanetError, StoreError
from gateway.telemetry import batch, metrics, payloads
from gateway.telemetry.certexpiry import CertExpiry
from gateway.telemetry.dispatch import After, Reply
from gateway.telemetry.mqtt import (
    Connect,
    Incoming,
    Link,
    LinkError,
    LinkSettings,
    SubscriptionRefused,
)
from gateway.telemetry.outbox import InFlight, NewMessage, OutboxPort
from gateway.telemetry.topics import Topics

log = logging.getLogger("desanet.mqtt")

STOP_DRAIN = 2.0  # a clean stop waits this long for the PUBACKs of messages in flight
WINDOW = 20  # messages awaiting PUBACK at once (paho's default max_inflight_messages)
EVENT_WAIT = 60.0  # long-poll of the event stream
STORE_RETRY = 5.0  # after the outbox could not be written
REPLY_ACK_WAIT = 10.0  # an answer's PUBACK, before what follows it (a reboot) goes ahead
SUBACK_WAIT = 30.0  # the SUBACK of cmd/req that proves a new connection up


class EventSource(Protocol):
    """The part of the core facade (GatewayOps) telemetry reads."""

    async def wait_events(self, seq: int, timeout: float) -> list[Stamped]: ...


class CommandPort(Protocol):
    """Remote commands (telemetry/dispatch.py Dispatcher)."""

    async def handle(self, msg: Incoming) -> Reply: ...


def reconnect_delay(attempt: int, low: float, high: float, jitter: float,
                    rng: random.Random) -> float:
    """Seconds before attempt ``attempt`` + 1: ``low`` doubling to ``high``, minus up to
    ``jitter`` of itself at random (pure, rng injected)."""
    base = min(high, low * 2 ** max(0, min(attempt - 1, 40)))
    return base * (1.0 - jitter * rng.random())


class TelemetryService:
    def __init__(self, settings: Callable[[], Telemetry], outbox: OutboxPort, connect: Connect,
                 events: EventSource, config_version: Callable[[], str], version: str,
                 clock: Clock, rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 readings: Callable[[], Awaitable[metrics.Readings]] | None = None) -> None:
        self._settings = settings
        self._outbox = outbox
        self._connect = connect
        self._events = events
        self._config_version = config_version
        self._version = version
        self._clock = clock
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._readings = readings
        self.boot_time = clock.now()
        self.session = 0
        self._link: Link | None = None
        self._generation = 0
        self._flight = InFlight()
        self._acked: set[int] = set()  # acknowledged, not yet deleted from the outbox
        self._flushing: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._status_due = False
        self._stopping = False
        self._in_use: Telemetry | None = None  # the settings of the current connection
        self._reconfigured = asyncio.Event()
        self._ack_seen = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # counters for `desanet status` and the telemetry message
        self.connects = 0
        self.sent = 0
        self.acked = 0
        self.last_connected: int | None = None
        self.commands: CommandPort | None = None  # set by the daemon when commands are on
        self._answering: set[asyncio.Task[None]] = set()
        self._replying = 0  # commands being handled: a settings change waits for them
        self._reply_acks: dict[tuple[int, int], asyncio.Future[bool]] = {}
        self._force_reconnect = False
        self._on_connected: Callable[[], Awaitable[None]] | None = None
        self._cert = CertExpiry()  # the device certificate's end, re-read when renewed

    @property
    def connected(self) -> bool:
        return self._link is not None

    @property
    def backlog(self) -> int:
        """Messages in the outbox (queued or awaiting their PUBACK)."""
        return self._outbox.totals().count

    def status_json(self) -> dict[str, Any]:
        """For `desanet status`: whether the gateway reports, and what waits to be sent."""
        cfg = self._settings()
        return {"enabled": cfg.enabled, "connected": self.connected, "broker": cfg.broker,
                "site_id": cfg.site_id, "session": self.session, "backlog": self.backlog,
                "connects": self.connects, "sent": self.sent, "acked": self.acked,
                "last_connected": self.last_connected, "dropped": dict(self._outbox.totals().dropped),
                # "5" or "3.1.1" while connected (docs/mqtt.md "MQTT 3.1.1")
                "protocol": getattr(self._link, "protocol", None),
                # the device certificate's end (docs/provisioning.md "Renewal")
                "cert_expires": self._cert.not_after(cfg.cert_file),
                "cert_days": self._cert.days_left(cfg.cert_file, self._clock.time())}

    def identity(self) -> payloads.Identity:
        return payloads.Identity(self._settings().site_id, self._version, self.boot_time, self.session)

    async def start(self) -> None:
        """Count this start (the session counter, one fsync), then run both tasks.
        Raises StoreError when the outbox cannot be written."""
        self.session = await self._outbox.next_session()
        log.info("telemetry session %d: reporting to %s as %s", self.session,
                 self._settings().broker, self._settings().site_id)
        self._tasks = [asyncio.create_task(self._kept(self._follow_events), name="telemetry-events"),
                       asyncio.create_task(self._kept(self._run), name="telemetry-connection")]
        if self._readings is not None:
            self._tasks.append(asyncio.create_task(self._kept(self._report_metrics),
                                                   name="telemetry-metrics"))

    async def _kept(self, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job``; a bug that raises is logged and the job starts again (after a pause),
        so telemetry never stops for good while the gateway runs."""
        while True:
            try:
                await job()
            except Exception:
                log.exception("telemetry %s failed; starting it again", job.__name__)
                await self._sleep(STORE_RETRY)

    async def stop(self) -> None:
        """Stop both tasks; a connected link says goodbye with its Will (offline)."""
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_DRAIN
        while self._link is not None and len(self._flight) and loop.time() < deadline:
            self._ack_seen.clear()
            await wait_event(self._ack_seen, deadline - loop.time())
        for task in [*self._tasks, *self._answering]:
            task.cancel()
        for task in [*self._tasks, *self._answering]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        link, self._link = self._link, None
        if link is not None:
            await link.close(will=True)
        await self._flush_acks()

    # -- events into the outbox ------------------------------------------------------------

    async def _follow_events(self) -> None:
        seq = 0
        while True:
            batch = await self._events.wait_events(seq, EVENT_WAIT)
            if not batch:
                continue
            if batch[0].seq > seq + 1:
                log.error("telemetry missed events %d-%d: the event ring moved past them",
                          seq + 1, batch[0].seq - 1)
            items = [NewMessage("event", s.time, json.dumps(payloads.event_data(s.event)))
                     for s in batch]
            try:
                await self._outbox.add(self.session, items)
            except StoreError as exc:
                log.error("cannot queue %d event(s) for the broker: %s; trying again", len(items), exc)
                await self._sleep(STORE_RETRY)
                continue
            seq = batch[-1].seq
            if any(s.event.type.startswith("config_") for s in batch):
                self._status_due = True  # the status carries the config version
                self._check_settings()
            self._wake.set()

    # -- periodic telemetry into the outbox ---------------------------------------------------

    async def _sample(self, reporter: metrics.Reporter) -> None:
        assert self._readings is not None
        try:
            reporter.add(metrics.sample(await self._readings()))
        except (OSError, DesanetError) as exc:
            log.warning("telemetry: no sample this time: %s", exc)

    async def _report_metrics(self) -> None:
        reporter = metrics.Reporter(self._settings().telemetry_full_every)
        await self._sample(reporter)  # at start: the counters count from here
        while True:
            cfg = self._settings()
            reporter.full_every = cfg.telemetry_full_every
            for _ in range(max(1, round(cfg.telemetry_interval / cfg.telemetry_sample_interval))):
                await self._sleep(cfg.telemetry_sample_interval)
                await self._sample(reporter)
            body = reporter.report()
            if body is None:
                continue  # nothing moved past its deadband
            item = NewMessage("telemetry", self._clock.time(), json.dumps(body, separators=(",", ":")))
            try:
                await self._outbox.add(self.session, [item])
            except StoreError as exc:
                log.error("cannot queue a telemetry report for the broker: %s; skipping it", exc)
                continue
            self._wake.set()

    def _check_settings(self) -> None:
        """A config that changed ``[telemetry]`` ends the connection with the Will (offline);
        the next one uses the new settings, or none while telemetry is disabled."""
        if self._in_use is not None and self._settings() != self._in_use and not self._replying:
            log.info("MQTT: the telemetry settings changed; connecting again with the new ones")
            self._lost.set()
        self._reconfigured.set()

    async def _backoff(self, delay: float, cfg: Telemetry) -> None:
        """Wait ``delay`` before the next attempt, or less when the settings change (a
        rollback brings back the broker that worked)."""
        waiting = asyncio.ensure_future(self._sleep(delay))
        try:
            while not waiting.done() and self._settings() == cfg:
                self._reconfigured.clear()
                changed = asyncio.ensure_future(self._reconfigured.wait())
                try:
                    await asyncio.wait([waiting, changed], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
        finally:
            waiting.cancel()

    # -- the connection --------------------------------------------------------------------

    async def _run(self) -> None:
        cfg = self._settings()
        await self._sleep(self._rng.uniform(0, cfg.start_delay_max))
        attempt = 0
        while True:
            cfg = self._settings()
            if not cfg.enabled:
                log.info("MQTT: telemetry is disabled; not connecting")
                self._reconfigured.clear()
                await self._reconfigured.wait()
                continue
            try:
                link = await self._open(cfg)
            except LinkError as exc:
                attempt += 1
                delay = reconnect_delay(attempt, cfg.reconnect_min, cfg.reconnect_max,
                                        cfg.reconnect_jitter, self._rng)
                log.warning("MQTT: %s; next attempt in %.1fs", exc, delay)
                await self._backoff(delay, cfg)
                continue
            attempt = 1  # a lost connection waits reconnect_min (jittered) before the next
            self.connects += 1
            try:
                await self._serve(link, cfg)
            except (LinkError, StoreError) as exc:
                log.warning("MQTT: %s; starting the connection over", exc)
            finally:
                self._link = None
                self._generation += 1
                for waiter in self._reply_acks.values():  # answers whose PUBACK never came
                    if not waiter.done():
                        waiter.set_result(False)
                self._reply_acks.clear()
                back = self._flight.lost()
                if back:
                    log.info("MQTT: %d message(s) in flight will be sent again", len(back))
                # a clean stop, new settings or a reconnect asked for say goodbye with
                # the Will (offline); a lost link cannot
                await link.close(will=self._stopping or self._settings() != cfg
                                 or self._force_reconnect)
                self._in_use = None
            if self._settings() != cfg or self._force_reconnect:
                self._force_reconnect = False
                attempt = 0
                continue  # new settings, or a new config to prove: connect at once
            delay = reconnect_delay(attempt, cfg.reconnect_min, cfg.reconnect_max,
                                    cfg.reconnect_jitter, self._rng)
            log.warning("MQTT connection lost; reconnecting in %.1fs", delay)
            await self._backoff(delay, cfg)

    async def _open(self, cfg: Telemetry) -> Link:
        topics = Topics(cfg.topic_prefix, cfg.site_id)
        will = payloads.encode(payloads.status(self.identity(), self._config_version(), online=False))
        settings = LinkSettings(
            host=cfg.host, port=cfg.port, client_id=f"desanet-{cfg.site_id}", keepalive=cfg.keepalive,
            will_topic=topics.status, will_payload=will, tls=cfg.tls, ca_file=cfg.ca_file,
            cert_file=cfg.cert_file, key_file=cfg.key_file, username=cfg.username,
            password=cfg.password, protocol=cfg.protocol)
        # The new generation counts before the CONNACK: a loss reported right after it (while
        # this coroutine has not resumed yet) must not be taken for an old connection's.
        self._generation += 1
        generation = self._generation
        self._lost.clear()
        link = await self._connect(settings, lambda mid, ok: self._ack(generation, mid, ok),
                                   lambda reason: self._gone(generation, reason),
                                   lambda msg: self._command(topics, msg))
        self._link = link
        self._in_use = cfg
        self.last_connected = self._clock.now()
        log.info("MQTT connected to %s:%d", cfg.host, cfg.port)
        return link

    def _publish_status(self, link: Link, topics: Topics) -> None:
        body = payloads.status(self.identity(), self._config_version(), online=True,
                               dropped=self._outbox.totals().dropped)
        link.publish(topics.status, payloads.encode(body), retain=True)
        self._status_due = False

    async def _serve(self, link: Link, cfg: Telemetry) -> None:
        """Send until the connection is lost (returns) or fails (raises LinkError)."""
        topics = Topics(cfg.topic_prefix, cfg.site_id)
        who = self.identity()
        if self.commands is not None:
            link.subscribe(topics.cmd_req)
            job, self._on_connected = self._on_connected, None
            if job is not None:
                self._spawn(self._when_up(link, topics.cmd_req, job), "telemetry-connected")
        self._publish_status(link, topics)
        last_status = self._clock.monotonic()
        cursor = 0
        backlog_top = self._outbox.totals().last_seq  # what waits now was queued offline
        while not self._lost.is_set():
            self._wake.clear()
            if self._status_due or (cfg.status_interval and
                                    self._clock.monotonic() - last_status >= cfg.status_interval):
                self._publish_status(link, topics)
                last_status = self._clock.monotonic()
            room = WINDOW - len(self._flight)
            hold: float | None = None
            if room > 0:
                limit = room + batch.MAX_REPORTS  # room for a full batch; a bigger backlog: next round
                rows = await self._outbox.pending(after=cursor, limit=limit)
                if self._lost.is_set():
                    break
                # acknowledged on an earlier connection, delete pending: not sent again
                todo = [r for r in rows if r.seq not in self._acked]
                now = self._clock.time()
                # a report waiting for its batch is not history: only past both intervals
                hist = {r.seq: payloads.historical(
                    r.seq, r.session, backlog_top, self.session, r.created, now,
                    cfg.telemetry_interval + (cfg.telemetry_send_interval
                                              if r.kind == "telemetry" else 0)) for r in todo}
                hold = batch.held_until(todo, hist, now, cfg.telemetry_send_interval)
                if hold is None:
                    cut = batch.groups(todo)
                    for group in cut[:room]:
                        topic = topics.event if group[0].kind == "event" else topics.telemetry
                        payload = batch.encode(who, group, hist, cfg.telemetry_compress)
                        self._flight.published([r.seq for r in group], link.publish(topic, payload))
                        self.sent += len(group)
                        cursor = group[-1].seq
                    if len(cut) <= room and rows:
                        cursor = rows[-1].seq
                    if len(cut) >= room or len(rows) == limit:
                        continue  # maybe more behind them
            timeout = cfg.status_interval or None
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._wake.wait()),
                                                asyncio.ensure_future(self._lost.wait())]
            if hold is not None:  # the batch's time, on the service's (injectable) clock
                waits.append(asyncio.ensure_future(self._sleep(hold - self._clock.time())))
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    def rebirth(self) -> None:
        """Send the status again now (the ``rebirth`` command)."""
        self._status_due = True
        self._wake.set()

    def _spawn(self, job: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(job)
        task.set_name(name)
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    def _command(self, topics: Topics, msg: Incoming) -> None:
        if self.commands is None or msg.topic != topics.cmd_req or self._stopping:
            return
        self._spawn(self._answer(self.commands, msg), "telemetry-command")

    async def _answer(self, commands: CommandPort, msg: Incoming) -> None:
        self._replying += 1
        try:
            try:
                reply = await commands.handle(msg)
            except Exception:  # a bug: the request goes unanswered, the service carries on
                log.exception("MQTT: a command could not be handled")
                return
            acked = self._send_reply(reply)
            if reply.after is not None:
                if acked is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(acked, REPLY_ACK_WAIT)
                await self._follow_up(reply.after)
        finally:
            self._replying -= 1
            self._check_settings()  # a change that waited for this answer

    def _send_reply(self, reply: Reply) -> asyncio.Future[bool] | None:
        """Publish the answer; a future of its PUBACK, or None when it could not be sent."""
        link = self._link
        if link is None:
            log.warning("MQTT: the connection was lost before the answer to a command; the "
                        "operator may send it again (same id) to read the recorded answer")
            return None
        try:
            mid = link.publish(reply.topic, payloads.encode(reply.body),
                               correlation=reply.correlation)
        except LinkError as exc:
            log.warning("MQTT: cannot send the answer to a command: %s", exc)
            return None
        acked: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._reply_acks[(self._generation, mid)] = acked
        return acked

    async def _follow_up(self, after: After) -> None:
        """What a command does once its answer is out (even when the answer was lost: the
        operator asked for it, and the recorded answer says it was done)."""
        if after.reconnect and not self._stopping:
            self._on_connected = after.on_connected
            if self._link is not None:  # else the next connection comes anyway
                self._force_reconnect = True
                log.info("MQTT: connecting again to prove the new config reaches the broker")
                self._lost.set()
        if after.run is not None:
            try:
                await after.run()
            except Exception:
                log.exception("MQTT: what follows a command's answer failed")

    def when_connected(self, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job`` once a connection is up, as a command's ``on_connected`` (the daemon:
        a cert.install trial taken up after a restart)."""
        if self._on_connected is None:
            self._on_connected = job

    async def _when_up(self, link: Link, topic: str, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job`` once the broker acknowledged the subscription to ``topic``; a link
        lost first hands it to the next connection, a refused one drops it."""
        try:
            await link.subscribed(topic, SUBACK_WAIT)
        except SubscriptionRefused as exc:
            log.warning("MQTT: %s; the new config is not confirmed", exc)
            return
        except LinkError as exc:
            log.info("MQTT: %s; waiting for the next connection", exc)
            if self._on_connected is None and not self._stopping:
                self._on_connected = job  # lost before the SUBACK: the next connection
            return
        try:
            await job()
        except Exception:
            log.exception("MQTT: what follows a new connection failed")

    def _ack(self, generation: int, mid: int, ok: bool) -> None:
        waiter = self._reply_acks.pop((generation, mid), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(ok)  # a command's answer (not in the outbox)
        if generation != self._generation:
            return  # an old connection's late PUBACK: its messages are queued again anyway
        if not ok:
            seqs = self._flight.refused(mid)
            if seqs:
                log.error("MQTT: the broker refused message(s) %s (check the broker's ACL for "
                          "this site); they stay queued and the connection starts over",
                          ", ".join(map(str, seqs)))
                self._gone(generation, "message refused")
            return
        seqs = self._flight.acked(mid)
        self._ack_seen.set()
        if not seqs:
            return  # the status (not from the outbox)
        self._acked.update(seqs)
        self.acked += len(seqs)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush_acks(), name="telemetry-acks")
        self._wake.set()

    def _gone(self, generation: int, reason: str) -> None:
        if generation == self._generation:
            log.info("MQTT connection gone: %s", reason)
            self._lost.set()

    async def _flush_acks(self) -> None:
        """Delete acknowledged messages, all that arrived meanwhile in one transaction."""
        while self._acked:
            batch = set(self._acked)
            try:
                await self._outbox.ack(batch)
            except StoreError as exc:
                log.error("cannot remove %d sent message(s) from the outbox: %s (they may be "
                          "sent again after a restart)", len(batch), exc)
                return
            self._acked -= batch
