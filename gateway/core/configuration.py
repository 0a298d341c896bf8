"""Config changes that cannot lock anyone out: apply, confirm, roll back, reload.

Theory of operation
-------------------
Every change goes through :meth:`Reconciler.converge` (all steps or none).
``apply(text, confirm=300)`` is a trial (states in
:data:`gateway.core.lifecycle.CONFIG_TRIAL`):

1. the new text is validated (every problem at once) - nothing changes if not;
2. the trial record (previous text, deadline) is fsynced to the state dir;
3. the new text replaces the config file (atomically), then converge;
4. ``confirm`` (from a *new* control connection: proof that the technician
   can still reach the box) removes the record; the deadline timer, an
   explicit ``rollback`` or a start that finds the record (power cut,
   kill -9) restores the previous text and converges back to it.

A plain apply (no ``confirm``) keeps the text it replaced, for
``rollback`` later. Each apply, confirm, rollback and refusal is an event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.clock import Clock
from gateway.config.diff import RESTART_ONLY_PATHS, config_changes, config_version, format_changes
from gateway.config.loader import parse_config_text, write_config_atomic
from gateway.config.pending import TrialRecord, TrialStore
from gateway.config.schema import Config
from gateway.core.events import (
    ChangeSource,
    ConfigApplied,
    ConfigConfirmed,
    ConfigRefused,
    ConfigRolledBack,
    Event,
    EventBus,
    Stamped,
)
from gateway.core.lifecycle import CONFIG_TRIAL, ConfigTrialEvent, ConfigTrialState
from gateway.core.reconcile import ConfigHolder, Reconciler
from gateway.errors import ApplyFailed, Conflict, DesanetError, Invalid, Refused

log = logging.getLogger("desanet.config")

MIN_CONFIRM = 5
MAX_CONFIRM = 24 * 3600


# Where the daemon keeps its state and its control socket: they cannot move under a
# running daemon (the trial record itself lives in the state directory, so a trial
# that moved it could never be rolled back after a power cut). A change of them is
# refused as a whole, nothing applied, with "needs restart": the technician edits the
# file and restarts the service. (Checked: every other setting is applied by converge
# or read per request; the daemon reads only these at start, gateway/daemon/main.py.)
RESTART_ONLY: tuple[tuple[str, str], ...] = tuple(
    (section, name) for section, name in (p.split(".") for p in RESTART_ONLY_PATHS))


class RestartNeeded(Refused):
    """A change of settings only a restart may change; ``problems`` has one line per
    field path (the control API passes them on), ``fields`` the paths."""

    def __init__(self, changed: list[tuple[str, object, object]]) -> None:
        self.fields = [path for path, _, _ in changed]
        self.problems = [f"{path}: {old!r} -> {new!r} needs a restart" for path, old, new
                         in changed]
        super().__init__(
            "restart_needed",
            f"needs restart: {', '.join(self.fields)} cannot change while the daemon runs (its "
            "state and control socket live there); nothing was changed. Keep the new value in "
            "the config file and restart the service (systemctl restart desanet)")


def restart_only_changes(old: Config, new: Config) -> list[str]:
    return [path for path, _, _ in _restart_only(old, new)]


def _restart_only(old: Config, new: Config) -> list[tuple[str, object, object]]:
    out = []
    for section, name in RESTART_ONLY:
        a, b = getattr(getattr(old, section), name), getattr(getattr(new, section), name)
        if a != b:
            out.append((f"{section}.{name}", a, b))
    return out


def refuse_restart_only(old: Config, new: Config) -> None:
    """Raises RestartNeeded (a Refused "restart_needed") when ``new`` moves the state
    dir or the socket."""
    changed = _restart_only(old, new)
    if changed:
        raise RestartNeeded(changed)


def version_of(cfg: Config) -> str:
    return config_version(cfg.model_dump(mode="json"))


def changes_between(old: Config, new: Config) -> list[dict[str, Any]]:
    """What differs, one entry per dotted field path: {"path", "old", "new"}."""
    changes = config_changes(old.model_dump(mode="json"), new.model_dump(mode="json"))
    lines = format_changes(changes)
    # to_json hides secret values ("(secret)"): answers and events never carry them.
    return [{**c.to_json(), "text": line} for c, line in zip(changes, lines, strict=True)]


def change_lines(changes: list[dict[str, Any]]) -> tuple[str, ...]:
    return tuple(str(c["text"]) for c in changes)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    version: str
    previous_version: str
    changes: list[dict[str, Any]]
    trial: TrialRecord | None


class ConfigService:
    def __init__(self, holder: ConfigHolder, reconciler: Reconciler, bus: EventBus, clock: Clock,
                 state_dir: Path, path: str | None, text: str | None) -> None:
        self.holder = holder
        self.reconciler = reconciler
        self.bus = bus
        self.clock = clock
        self.path = path
        self.text = text  # the running config's text (None: started from an object)
        self.trials = TrialStore(state_dir, path)
        self.trial: TrialRecord | None = None
        self.trial_state: ConfigTrialState = "none"
        self._trial_connection: object | None = None
        self._trial_due: float | None = None
        self.last_refusal: dict[str, Any] | None = None
        self.last_change: Stamped | None = None
        self._retry_pause, self._retry_at = 5.0, 0.0
        # Interfaces and addresses the box really has (injected: tests run without them).
        self.check_network: Callable[[Config], list[tuple[str, Any, str]]] = lambda cfg: []
        self._lock = asyncio.Lock()

    @property
    def current(self) -> Config:
        return self.holder.current

    @property
    def version(self) -> str:
        return version_of(self.holder.current)

    # -- start-up ---------------------------------------------------------------------

    def note_recovered_trial(self, record: TrialRecord) -> None:
        """The daemon found ``record`` on disk at start and put the previous config back
        (:func:`gateway.config.pending.recover_trial`); say so."""
        self.trial_state = CONFIG_TRIAL.next("pending", "restart")
        log.warning("a config trial (%s) was pending at start: rolled back to %s",
                    record.version, record.previous_version)
        self._changed(ConfigRolledBack(
            record.previous_version, record.version, ChangeSource.START,
            "the gateway restarted before the trial was confirmed", record.by))

    async def start(self) -> None:
        """The first converge. When the config file fails at start (it ran once, but say
        an interface was renamed since, or the file was edited by hand) the last config
        that ran is started instead and the file gets it back, with the refused text
        kept beside it: a box that cannot start its config must not leave the village
        locked out.

        Raises ApplyFailed when neither can start.
        """
        cfg = self.current
        try:
            await self.reconciler.converge(cfg, None)
        except DesanetError as exc:
            await self._start_last_good(cfg, exc)
            return
        await self._ran(self.text)

    async def _start_last_good(self, cfg: Config, failure: DesanetError) -> None:
        good = await asyncio.to_thread(self.trials.load_good)
        previous = None
        if good and good != self.text and self.path is not None:
            try:
                previous = self.parse(good, "the last config that ran")
            except DesanetError:
                previous = None
        if previous is None or good is None or self.path is None \
                or restart_only_changes(cfg, previous):
            raise failure
        log.error("the config failed at start (%s); starting the last one that ran", failure)
        await self.reconciler.converge(previous, None)
        refused_text, self.text = self.text or "", good
        await asyncio.to_thread(self.trials.save_refused, refused_text)
        await asyncio.to_thread(write_config_atomic, self.path, good)
        self.last_refusal = {"time": self.clock.now(), "reason": str(failure),
                             "source": str(ChangeSource.START),
                             "step": failure.step if isinstance(failure, ApplyFailed) else ""}
        self._changed(ConfigRolledBack(
            version_of(previous), version_of(cfg), ChangeSource.START,
            f"the config failed at start ({failure}); it is kept in "
            f"{self.trials.refused_path}", ""))

    async def _ran(self, text: str | None) -> None:
        """Remember ``text`` as the last config that ran (the fallback at start)."""
        if text:
            await self._keep(self.trials.save_good, text)

    @staticmethod
    async def _keep(save: Callable[[str], None], text: str) -> None:
        """A bookkeeping copy (for rollback or the start-up fallback): worth keeping, not
        worth failing a change that already runs. A failure is logged."""
        try:
            await asyncio.to_thread(save, text)
        except DesanetError as exc:
            log.error("could not keep a copy of the config: %s", exc)

    def note_unreadable_file(self, problem: str, refused_path: str) -> None:
        """The daemon found a config file that did not parse and started the last config
        that ran instead (:func:`gateway.config.pending.recover_unreadable`); say so."""
        self.last_refusal = {"time": self.clock.now(), "reason": problem,
                             "source": str(ChangeSource.START), "step": "parse"}
        self._changed(ConfigRolledBack(
            self.version, "", ChangeSource.START,
            f"the config file did not parse ({problem}); it is kept in {refused_path}", ""))

    # -- requests ------------------------------------------------------------------------

    def parse(self, text: str, source: str = "request") -> Config:
        """Raises ConfigError (an Invalid) with every problem."""
        return parse_config_text(text, source)

    def diff(self, text: str) -> list[dict[str, Any]]:
        return changes_between(self.current, self.parse(text))

    async def _check(self, old: Config, new: Config) -> None:
        """What a config file alone cannot tell: settings only a restart may change, and
        interfaces and addresses this box really has (a typo in lan_interface would cut
        the whole village off). Raises Refused / Invalid."""
        refuse_restart_only(old, new)
        problems = await asyncio.to_thread(self.check_network, new)
        if problems:
            raise Invalid(*problems[0])

    async def apply(self, text: str, confirm: int | None, by: str, source: ChangeSource,
                    connection: object | None = None) -> ApplyResult:
        """Apply a config text now; with ``confirm`` seconds, as a trial.

        Raises Invalid/ConfigError (nothing changed), Refused (restart needed),
        Conflict (a trial is pending, or no config file), ApplyFailed (a step
        failed, all undone).
        """
        new = self.parse(text)
        if confirm is not None and not MIN_CONFIRM <= confirm <= MAX_CONFIRM:
            raise Invalid("confirm", confirm, f"a confirm window of {MIN_CONFIRM} s .. "
                          f"{MAX_CONFIRM // 3600} h", '"5m"')
        await self._check(self.current, new)
        async with self._lock:
            event: ConfigTrialEvent = "apply" if confirm is None else "apply_with_confirm"
            next_state = CONFIG_TRIAL.next(self.trial_state, event)
            path = self._path()
            old, old_text = self.current, self.text or ""
            record = None
            if confirm is not None:
                now = self.clock.now()
                record = TrialRecord(now, now + confirm, old_text, version_of(old),
                                     version_of(new), by)
                await asyncio.to_thread(self.trials.save, record)
            await asyncio.to_thread(write_config_atomic, path, text)
            try:
                await self.reconciler.converge(new, old)
            except Exception as exc:
                # Whatever failed, the file and the record go back: the next boot or
                # SIGHUP must not pick up a config that was never running.
                await asyncio.to_thread(write_config_atomic, path, old_text)
                if record is not None:
                    await asyncio.to_thread(self.trials.clear)
                if isinstance(exc, DesanetError):
                    self._refused(source, by, exc)
                raise
            # The new config runs: the service knows it (and a trial's deadline) before
            # any bookkeeping write that might fail on a full SD card.
            self.text = text
            self.trial, self.trial_state = record, next_state
            self._trial_connection = connection if record is not None else None
            # In-process the window runs on the monotonic clock (an NTP jump at boot
            # cannot end it early); the record's wall-clock deadline is for restarts.
            self._trial_due = self.clock.monotonic() + confirm if confirm is not None else None
            # Kept for a later `config rollback` (a trial keeps it in its record too).
            await self._keep(self.trials.save_previous, old_text)
            if record is None:
                await self._ran(text)  # a trial counts once it is confirmed
            changes = changes_between(old, new)
            result = ApplyResult(version_of(new), version_of(old), changes, record)
        log.info("config %s applied by %s (%s)%s", result.version, by or "?", source,
                 f", confirm by {record.deadline}" if record else "")
        self._changed(ConfigApplied(result.version, result.previous_version, source, by,
                                    change_lines(changes), record.deadline if record else None))
        return result

    async def confirm(self, by: str, connection: object | None = None,
                      source: ChangeSource = ChangeSource.CLI) -> str:
        """Keep the trial config. Raises IllegalTransition (no trial), Refused (the same
        connection or login session as the apply; the window already ran out)."""
        async with self._lock:
            next_state = CONFIG_TRIAL.next(self.trial_state, "confirm")
            if connection is not None and _same_origin(connection, self._trial_connection):
                raise Refused("same_connection",
                              "confirm from a new connection (a new SSH login): the connection "
                              "or login session that applied the config proves nothing")
            if self._trial_expired():
                raise Refused("too_late", "the confirm window has run out; the previous config "
                              "is coming back, apply the new one again if it was right")
            await asyncio.to_thread(self.trials.clear)
            await self._ran(self.text)
            record = self.trial
            self.trial, self.trial_state, self._trial_connection = None, next_state, None
            self._trial_due = None
        version = record.version if record else self.version
        log.info("config %s confirmed by %s", version, by or "?")
        self._changed(ConfigConfirmed(version, source, by))
        return version

    async def rollback(self, by: str, source: ChangeSource, reason: str) -> str:
        """Go back to the config before the trial (or, with none pending, before the last
        apply: once; the kept text is then used up, so a second rollback cannot bring
        back the config that was just rolled away from).

        Raises Conflict when there is nothing to roll back to, ApplyFailed.
        """
        async with self._lock:
            if source is ChangeSource.TIMER and (self.trial is None or not self._trial_expired()):
                return self.version  # confirmed (or re-applied) while the timer waited
            if self.trial is not None:
                event: ConfigTrialEvent = "deadline" if source is ChangeSource.TIMER \
                    else "rollback"
                next_state = CONFIG_TRIAL.next(self.trial_state, event)
                previous_text = self.trial.previous_text
            else:
                next_state = self.trial_state
                loaded = await asyncio.to_thread(self.trials.load_previous)
                if not loaded or loaded == self.text:
                    raise Conflict("no config trial is pending and no earlier config is kept; "
                                   "nothing to roll back to")
                previous_text = loaded
            old = self.current
            previous = self.parse(previous_text, "the previous config")
            path = self._path()
            # The file first, as in apply: a power cut during the converge then starts
            # the config that was asked for.
            await asyncio.to_thread(write_config_atomic, path, previous_text)
            try:
                await self.reconciler.converge(previous, old)
            except Exception as exc:
                await asyncio.to_thread(write_config_atomic, path, self.text or "")
                if isinstance(exc, DesanetError):
                    self._refused(source, by, exc)
                raise
            await self._ran(previous_text)
            await asyncio.to_thread(self.trials.forget_previous)
            await asyncio.to_thread(self.trials.clear)
            self.text = previous_text
            self.trial, self.trial_state, self._trial_connection = None, next_state, None
            self._trial_due = None
            version = version_of(previous)
        log.warning("config rolled back to %s (%s, by %s)", version, reason, by or "?")
        self._changed(ConfigRolledBack(version, version_of(old), source, reason, by))
        return version

    async def reload(self, source: ChangeSource, by: str = "") -> ApplyResult:
        """Re-read the config file and converge to it (SIGHUP, ``desanet reload``).

        Raises Conflict (no file, or a trial pending), ConfigError (the running
        config stays), Refused, ApplyFailed.
        """
        path = self._path()
        async with self._lock:  # read inside: an apply cannot slip in between
            old = self.current
            try:
                CONFIG_TRIAL.next(self.trial_state, "reload")
                text = await asyncio.to_thread(Path(path).read_text, encoding="utf-8")
                new = self.parse(text, path)
                await self._check(old, new)
                await self.reconciler.converge(new, old)
            except OSError as exc:
                err = Invalid("config", path, f"a readable config file ({exc.strerror or exc})")
                self._refused(source, by, err)
                raise err from exc
            except DesanetError as exc:
                self._refused(source, by, exc)
                raise
            self.text = text
            await self._ran(text)
            changes = changes_between(old, new)
            result = ApplyResult(version_of(new), version_of(old), changes, self.trial)
        log.info("config reloaded (%s): %d change(s)", source, len(changes))
        self._changed(ConfigApplied(result.version, result.previous_version, source, by,
                                    change_lines(changes), None))
        return result

    async def check_deadline(self) -> None:
        """The reconcile loop's timer: roll a trial back once its window ran out.

        A rollback that fails is retried with a growing pause (not every second:
        each failure is an event, and the ring must keep room for the others).
        """
        if self.trial is None or not self._trial_expired():
            return
        if self.clock.monotonic() < self._retry_at:
            return
        log.warning("config trial %s was not confirmed in time; rolling back", self.trial.version)
        try:
            await self.rollback("", ChangeSource.TIMER, "not confirmed before the deadline")
        except DesanetError:
            self._retry_pause = min(self._retry_pause * 2, 600.0)
            self._retry_at = self.clock.monotonic() + self._retry_pause
            raise
        self._retry_pause, self._retry_at = 5.0, 0.0

    def _trial_expired(self) -> bool:
        if self._trial_due is not None:
            return self.clock.monotonic() >= self._trial_due
        return self.trial is not None and self.clock.now() >= self.trial.deadline

    # -- status -------------------------------------------------------------------------

    def status_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "path": self.path,
            "last_change": self.last_change.to_json() if self.last_change else None,
            "trial": self.trial.public_json() if self.trial else None,
            "last_refusal": self.last_refusal,
        }

    def _changed(self, event: Event) -> None:
        # Kept here, not only in the event ring: a busy box pushes old events out.
        self.last_change = self.bus.publish(event)

    def _path(self) -> str:
        if self.path is None:
            raise Conflict("the daemon was started without a config file; start it with "
                           "--config FILE to apply configs")
        return self.path

    def _refused(self, source: ChangeSource, by: str, exc: DesanetError) -> None:
        step = exc.step if isinstance(exc, ApplyFailed) else ""
        self.last_refusal = {"time": self.clock.now(), "reason": str(exc), "source": str(source),
                             "step": step}
        log.error("config change refused (%s): %s", source, exc)
        self._changed(ConfigRefused(source, str(exc), step, by))


def _same_origin(a: object, b: object | None) -> bool:
    """The same control connection, or the same known login session (see control/api.py)."""
    if b is None:
        return False
    if a is b or a == b:
        return True
    session_a, session_b = getattr(a, "login_session", None), getattr(b, "login_session", None)
    return session_a is not None and session_a == session_b
