"""Remote commands: a verified request -> one GatewayOps call -> the response.

Theory of operation
-------------------
The telemetry service hands each message of ``<prefix>/<site>/cmd/req`` to
:meth:`Dispatcher.handle` and publishes the :class:`Reply` it returns. Here:

1. :func:`gateway.telemetry.commands.verify` (signature, site, validity); a
   refusal is answered with its reason and changes nothing.
2. The record of seen ids (:mod:`gateway.telemetry.seen`): a known id is
   refused as ``replayed`` and the answer carries the first response
   (``first``), so applying an id twice has one effect and an operator whose
   answer was lost can send the same command again to read it.
3. The id is recorded durably, then the command calls the facade method the
   control API calls for the same thing (``deauth`` -> ``deauthorize``, ...),
   with the arguments parsed by the control API's own request models, so
   validation and errors exist once; a domain error is answered with
   ``reason: "failed"`` and the control API's error ``kind``.
4. Every command and its outcome becomes a ``command_handled`` event (id,
   name, outcome, reason; never the arguments, which may name a MAC or a code).

The replay check and the record of a new id happen under a lock, so two
copies of one id arriving together cannot both pass; the commands themselves
run outside it (a long prefetch does not hold up a deauth), and a copy that
arrives while the first still runs is refused as replayed with ``first: null``.

The response goes to the request's MQTT 5 response topic with its
correlation data, when that topic lies under this gateway's ``cmd/res`` (the
broker's ACL lets a device publish only in its own subtree); otherwise, and
for MQTT 3.1.1 clients, to ``cmd/res``, where the
operator matches the response by ``id``.

Commands that act after their answer
------------------------------------
A :class:`Reply` may carry :class:`After`: what the transport does once the
answer is out (PUBACKed, or after a bounded wait). ``config.set`` applies the
new config as a trial (the facade's ``config_apply`` with a confirm window),
answers, then the service reconnects to the broker with the config now
running and, once that connection is up, calls ``on_connected``: the
facade's ``config_confirm``, by ``mqtt:<command id>``. Without that
connection the trial's deadline rolls it back (Step 4). ``reboot`` answers,
then ``run`` reboots. ``vouchers.create`` seals the new codes to the
operator's X25519 key (``args.recipient``, :mod:`gateway.telemetry.sealed`),
bound to the site and command id: the codes are never in an answer, an
event or the record of seen ids in clear.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.clock import Clock
from gateway.config.telemetry import Telemetry
from gateway.control.errors import error_body
from gateway.control.schema import DeauthRequest, RequestInvalid, VoucherRevokeRequest, parse_request
from gateway.core.configuration import MIN_CONFIRM, ApplyResult
from gateway.core.events import ChangeSource, CommandHandled, Event
from gateway.errors import DesanetError, Refused, StoreError
from gateway.model import Session, Voucher
from gateway.telemetry import certinstall, certtrial, sealed
from gateway.telemetry import commands as c
from gateway.telemetry.cmdargs import ConfigSetArgs, VoucherCreateArgs
from gateway.telemetry.mqtt import Incoming
from gateway.telemetry.seen import SeenCommands
from gateway.telemetry.topics import Topics

if TYPE_CHECKING:  # cryptography loads at the first command (commands.parse_public_key)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger("desanet.mqtt")

# What of the facade's status an operator is sent: the gateway's health, no client data.
STATUS_KEYS = ("ready", "uptime", "portal_mode", "sessions_active", "config", "uplink",
               "telemetry", "degraded")


@dataclass(frozen=True)
class After:
    """What the transport does once a command's answer is out (see the module doc)."""

    reconnect: bool = False  # connect to the broker again, with the settings running now
    on_connected: Callable[[], Awaitable[None]] | None = None  # once that connection is up
    run: Callable[[], Awaitable[None]] | None = None  # e.g. reboot


@dataclass(frozen=True)
class Answer:
    """A command's result and what follows its answer."""

    result: dict[str, Any]
    after: After | None = None


@dataclass(frozen=True)
class Reply:
    topic: str
    body: dict[str, Any]
    correlation: bytes | None
    after: After | None = None


class CommandOps(Protocol):
    """The part of GatewayOps commands call (the same methods the control API calls)."""

    async def status(self) -> dict[str, Any]: ...

    async def deauthorize(self, mac: str) -> Session: ...

    async def revoke_voucher(self, code: str) -> Voucher: ...

    async def prefetch(self) -> dict[str, Any]: ...

    def config_show(self) -> dict[str, Any]: ...

    async def config_apply(self, text: str, confirm: int | None, by: str,
                           connection: object | None = None,
                           source: ChangeSource = ChangeSource.CLI,
                           expected_version: str | None = None) -> ApplyResult: ...

    async def config_confirm(self, by: str, connection: object | None = None,
                             source: ChangeSource = ChangeSource.CLI) -> str: ...

    async def create_vouchers(self, count: int, duration: int, max_devices: int,
                              plan: str | None, batch: str | None, name: str | None = None,
                              ) -> tuple[str, list[Voucher]]: ...

    def reboot_check(self) -> None: ...

    async def reboot(self, by: str) -> None: ...


Handler = Callable[[c.Command], Awaitable[dict[str, Any] | Answer]]


class Dispatcher:
    def __init__(self, ops: CommandOps, seen: SeenCommands, keys: Callable[[], Iterable[str]],
                 topics: Callable[[], Topics], clock: Clock, publish_event: Callable[[Event], object],
                 rebirth: Callable[[], None], telemetry: Callable[[], Telemetry] | None = None,
                 cert_trial: float = certinstall.TRIAL,
                 cert_clock: Callable[[], float] = time.monotonic,
                 boot_id: Callable[[], str] = certtrial.boot_id) -> None:
        self._ops = ops
        self._seen = seen
        self._keys = keys
        self._topics = topics
        self._clock = clock
        self._event = publish_event
        self._rebirth = rebirth
        self._telemetry = telemetry  # the running [telemetry] settings (cert.install)
        self._cert_trial = cert_trial
        # the trial's clock: the system's monotonic clock and boot id, as the file outlives us
        self._mono, self._boot = cert_clock, boot_id
        self._trials: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._handlers: Mapping[str, Handler] = {
            "status": self._status, "rebirth": self._do_rebirth, "deauth": self._deauth,
            "vouchers.revoke": self._revoke, "prefetch": self._prefetch,
            "config.set": self._config_set, "vouchers.create": self._vouchers_create,
            "reboot": self._reboot, "cert.install": self._cert_install}
        assert set(self._handlers) == set(c.NAMES)

    @property
    def cert_trials(self) -> set[asyncio.Task[None]]:
        """The certificate trials still running (cert.install, until connected or rolled back)."""
        return set(self._trials)

    def _public_keys(self) -> list[Ed25519PublicKey]:
        out = []
        for text in self._keys():
            try:
                out.append(c.parse_public_key(text))
            except ValueError as exc:  # the config validates them; a stale file may not
                log.error("telemetry.command_keys: %s", exc)
        return out

    def reply_topic(self, msg: Incoming) -> str:
        res = self._topics().cmd_res
        wanted = msg.response_topic
        if wanted and (wanted == res or wanted.startswith(res + "/")) \
                and not any(ch in wanted for ch in "+#\0"):
            return wanted
        return res

    async def handle(self, msg: Incoming) -> Reply:
        """Verify, run once, record, answer. Never raises for a bad request."""
        async with self._lock:
            admitted = await self._admit(msg)
        if isinstance(admitted, dict):
            return Reply(self.reply_topic(msg), admitted, msg.correlation)
        cmd, base = admitted
        out, after = await self._run(cmd, base)
        async with self._lock:
            try:
                await self._seen.finish(cmd.id, out)
            except StoreError as exc:
                log.error("MQTT command %s: its response is not recorded: %s", cmd.id, exc)
        return Reply(self.reply_topic(msg), out, msg.correlation, after)

    async def _admit(self, msg: Incoming) -> dict[str, Any] | tuple[c.Command, dict[str, Any]]:
        """The refusal's answer, or the command, recorded as begun (under the lock)."""
        topics = self._topics()
        now = self._clock.time()
        base: dict[str, Any] = {"v": c.VERSION, "site": topics.site, "time": int(now)}
        try:
            cmd = c.verify(msg.payload, self._public_keys(), topics.site, now)
        except c.CommandRefused as refused:
            log.warning("MQTT command %s refused: %s: %s", refused.id or "(no id)", refused.reason,
                        refused)
            self._event(CommandHandled(refused.id, refused.name, "refused", refused.reason))
            out = {**base, "id": refused.id, "name": refused.name, "ok": False,
                   "reason": refused.reason, "error": str(refused)}
            if refused.field:
                out["field"] = refused.field
            return out
        base.update(id=cmd.id, name=cmd.name)
        first = self._seen.get(cmd.id)
        if first is not None:
            log.warning("MQTT command %s (%s) refused: replayed", cmd.id, cmd.name)
            self._event(CommandHandled(cmd.id, cmd.name, "refused", c.REPLAYED))
            return {**base, "ok": False, "reason": c.REPLAYED,
                    "error": "this command id was already received"
                    + ("" if first.response else " (its outcome was not recorded)"),
                    "first": first.response}
        try:
            await self._seen.begin(cmd.id, cmd.expires + c.CLOCK_SKEW, now)
        except StoreError as exc:  # without the record a replay could not be refused
            log.error("MQTT command %s not carried out: %s", cmd.id, exc)
            self._event(CommandHandled(cmd.id, cmd.name, "failed", "unavailable"))
            return {**base, "ok": False, "reason": "failed", "kind": "unavailable",
                    "error": f"cannot record the command: {exc}"}
        return cmd, base

    async def _run(self, cmd: c.Command, base: dict[str, Any]
                   ) -> tuple[dict[str, Any], After | None]:
        try:
            got = await self._handlers[cmd.name](cmd)
        except RequestInvalid as exc:
            fld = f"args.{exc.field}"
            log.warning("MQTT command %s (%s) refused: malformed %s", cmd.id, cmd.name, fld)
            self._event(CommandHandled(cmd.id, cmd.name, "refused", c.MALFORMED))
            return {**base, "ok": False, "reason": c.MALFORMED, "field": fld,
                    "error": str(exc).replace("field ", "field args.")}, None
        except Exception as exc:
            _, err = error_body(exc)  # the control API's table: one mapping of domain errors
            detail = err.pop("reason", None)  # a Refused error's own key, e.g. "unknown"
            if detail:
                err["detail"] = detail
            if not isinstance(exc, DesanetError):
                log.exception("MQTT command %s (%s) failed", cmd.id, cmd.name)
            else:
                log.warning("MQTT command %s (%s) failed: %s", cmd.id, cmd.name, exc)
            self._event(CommandHandled(cmd.id, cmd.name, "failed", err["kind"]))
            return {**base, "ok": False, "reason": "failed", **err}, None
        answer = got if isinstance(got, Answer) else Answer(got)
        log.info("MQTT command %s (%s) done", cmd.id, cmd.name)
        self._event(CommandHandled(cmd.id, cmd.name, "ok", None))
        return {**base, "ok": True, "result": answer.result}, answer.after

    # -- the commands: parse the arguments, call the facade, shape the answer ----------------

    async def _status(self, cmd: c.Command) -> dict[str, Any]:
        _no_args(cmd.args)
        status = await self._ops.status()
        out = {k: status[k] for k in STATUS_KEYS if k in status}
        if isinstance(status.get("config"), dict):
            # the version and whether it is on trial; not its last change (who ran it, and
            # the changed values, which may name a trusted device) nor a refusal's text
            trial = status["config"].get("trial") or {}
            out["config"] = {"version": status["config"].get("version"),
                             "trial_deadline": trial.get("deadline")}
        return out

    async def _do_rebirth(self, cmd: c.Command) -> dict[str, Any]:
        _no_args(cmd.args)
        self._rebirth()
        return {"status_sent": True}

    async def _deauth(self, cmd: c.Command) -> dict[str, Any]:
        req = parse_request(DeauthRequest, dict(cmd.args))
        await self._ops.deauthorize(req.mac)
        return {"deauthorized": True}  # not the MAC nor the address: no personal data back

    async def _revoke(self, cmd: c.Command) -> dict[str, Any]:
        req = parse_request(VoucherRevokeRequest, dict(cmd.args))
        voucher = await self._ops.revoke_voucher(req.code)
        return {"revoked": True, "batch": voucher.batch}

    async def _prefetch(self, cmd: c.Command) -> dict[str, Any]:
        _no_args(cmd.args)
        return await self._ops.prefetch()

    async def _config_set(self, cmd: c.Command) -> Answer:
        req = parse_request(ConfigSetArgs, dict(cmd.args))
        if req.confirm is None or req.confirm < MIN_CONFIRM:
            raise RequestInvalid(
                [f"field confirm: {req.confirm!r}: config.set always runs as a trial of at "
                 f"least {MIN_CONFIRM} s (confirmed once the gateway is back on the broker); "
                 "write e.g. \"5m\""], ["confirm"], req.confirm)
        by = f"mqtt:{cmd.id}"
        result = await self._ops.config_apply(req.text, req.confirm, by, None, ChangeSource.MQTT,
                                              req.expected_version)

        async def confirm() -> None:
            running = self._ops.config_show().get("version")
            if running != result.version:
                log.warning("config.set %s: the running config is %s, not %s: not confirming",
                            cmd.id, running, result.version)
                return
            try:
                await self._ops.config_confirm(by, source=ChangeSource.MQTT)
            except DesanetError as exc:  # rolled back meanwhile, or the window ran out
                log.warning("config.set %s: cannot confirm: %s", cmd.id, exc)

        trial = result.trial
        return Answer({"version": result.version, "previous_version": result.previous_version,
                       "confirm_deadline": trial.deadline if trial else None,
                       "confirm": "on_reconnect",
                       # paths only: a value may name a device or be a secret
                       "changes": [str(ch["path"]) for ch in result.changes]},
                      After(reconnect=True, on_connected=confirm))

    async def _vouchers_create(self, cmd: c.Command) -> dict[str, Any]:
        req = parse_request(VoucherCreateArgs, dict(cmd.args))
        recipient = sealed.parse_public_key(req.recipient)  # checked by the model
        batch, made = await self._ops.create_vouchers(req.count, req.duration, req.max_devices,
                                                      req.plan, req.batch, req.name)
        plain = json.dumps({"codes": [v.code for v in made]}, separators=(",", ":")).encode()
        box = sealed.seal(plain, recipient, c.sealed_context(cmd.site, cmd.id, cmd.name))
        return {"batch": batch, "count": len(made), "duration": req.duration,
                "max_devices": req.max_devices, "plan": req.plan, "codes_sealed": box}

    async def _reboot(self, cmd: c.Command) -> Answer:
        _no_args(cmd.args)
        self._ops.reboot_check()  # refused now, in the answer, when nothing can reboot
        by = f"mqtt:{cmd.id}"

        async def reboot() -> None:
            await self._ops.reboot(by)
        return Answer({"rebooting": True}, After(run=reboot))

    async def _cert_install(self, cmd: c.Command) -> Answer:
        req = parse_request(certinstall.CertInstallArgs, dict(cmd.args))
        if self._telemetry is None:
            raise Refused("unavailable", "this gateway cannot install certificates remotely")
        done = await asyncio.to_thread(certinstall.install, req.cert, self._telemetry(),
                                       self._clock.time(), c.CLOCK_SKEW, id=cmd.id,
                                       window=self._cert_trial, mono=self._mono(),
                                       boot=self._boot())
        return Answer(done.result, After(reconnect=True, on_connected=self._run_trial(done.trial)))

    async def resume_cert_trial(self) -> Callable[[], Awaitable[None]] | None:
        """After a restart: take up a cert.install trial the last run left (certtrial.py).
        Returns what to run once a connection is up (the daemon hands it to the service)."""
        tel = self._telemetry() if self._telemetry is not None else None
        if tel is None or not tel.cert_file:
            return None
        try:
            trial = await asyncio.to_thread(certtrial.resume, Path(tel.cert_file), self._mono(),
                                            self._boot())
        except OSError as exc:
            log.error("cert.install: cannot read the trial left by the last run: %s", exc)
            return None
        if trial is None:
            return None
        log.warning("cert.install %s: the trial goes on after a restart (%.0f s left)",
                    trial.id, trial.remaining(trial.mono))
        return self._run_trial(trial)

    def _run_trial(self, trial: certtrial.Trial) -> Callable[[], Awaitable[None]]:
        """Start the trial's clock; returns what confirms it once connected."""
        task = asyncio.create_task(self._cert_trial_ends(trial))
        self._trials.add(task)
        task.add_done_callback(self._trials.discard)

        async def connected() -> None:
            task.cancel()
            if await asyncio.to_thread(certtrial.confirm, trial):
                log.info("cert.install %s: connected with the new certificate; kept", trial.id)
            else:
                log.warning("cert.install %s: connected, but not with the new certificate "
                            "(rolled back or replaced since)", trial.id)
        return connected

    async def _cert_trial_ends(self, trial: certtrial.Trial) -> None:
        trial = await certtrial.wait_out(trial, self._mono)
        if await asyncio.to_thread(certtrial.roll_back, trial):
            log.error("cert.install %s: no broker connection with the new certificate within "
                      "%g s; the previous certificate is back", trial.id, trial.window)


def _no_args(args: Mapping[str, Any]) -> None:
    if args:
        raise RequestInvalid([f"field {sorted(args)[0]}: this command takes no arguments"],
                             [str(sorted(args)[0])], args[sorted(args)[0]])
