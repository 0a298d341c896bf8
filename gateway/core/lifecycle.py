"""State machines of the gateway, each declared as one transition table.

Theory of operation
-------------------
Several things in the gateway live through a small number of states: a queued
form submission, a config trial and a telemetry message. Each of them is
written down here as **one table** mapping ``(state, event)`` to the next state,
in the style of h11's ``_state.py``:

* A pair that is in the table is a legal move and :meth:`TransitionTable.next`
  returns where it leads. A pair that is *not* in the table is illegal and
  raises :class:`IllegalTransition`, naming the table, the state, the event and
  the events that would have been allowed. There is no silent "ignore": a move
  the table does not list is a bug or a race in the caller, and it must be
  seen. A table may give a reason for a particular illegal pair (``refusals``),
  so an operator reads "a trial is pending: confirm or roll back first"
  instead of a bare "not allowed".
* The owner of the state (SQL for the outbox, the config applier for a trial)
  asks the table *before* it changes anything, then stores the state the table
  returned. Which moves are legal is decided here and nowhere else; the owner
  only decides *when* to fire an event and what else to record with it.
* Flags that live beside a state are kept out of the table and folded into the
  event by a small pure function next to it (h11 keeps ``keep_alive`` beside
  its states the same way). The forms outbox's ``uncertain`` flag is the one
  example: see :func:`outbox_result_event`.
* Tables are plain data, built at import, checked once (every state and event
  of a move is declared, every target is a state) and never changed. Tests
  iterate :meth:`TransitionTable.pairs`, which yields *every* (state, event)
  combination, legal or not, and compare with an expected table written out
  by hand, so a move added or lost here fails a test.

The module is pure: no I/O, no clock, no imports beyond :mod:`gateway.errors`.

Tables
------
:data:`FORMS_OUTBOX` (``gateway/cache/outbox.py`` stores it in SQLite)::

    queued  ──mark_sending──▶ sending ──delivered──▶ delivered   (final)
    unknown ──mark_sending──▶ sending ──rejected───▶ rejected    (final)
                                      ──not_sent───▶ queued
                                      ──retry──────▶ queued
                                      ──unknown────▶ unknown
                                      ──recover────▶ unknown     (restart after a crash)
    queued  ──kick──▶ queued      unknown ──kick──▶ unknown      (made due now)

A submission is created ``queued``, or ``unknown`` if a direct attempt may
already have reached the upstream.

:data:`CONFIG_TRIAL` (the config applier keeps the pending record on disk)::

    none | confirmed | rolled_back ──apply_with_confirm──▶ pending
    none | confirmed | rolled_back ──apply──────────────▶ none
    pending ──confirm──▶ confirmed
    pending ──rollback | deadline | restart──▶ rolled_back
    none | confirmed | rolled_back ──restart──▶ (unchanged)

``none`` is "no trial has happened (since the last plain apply or start)";
``confirmed`` and ``rolled_back`` record how the last trial ended, and like
``none`` they allow a new apply. While a trial is ``pending`` every apply is
refused (confirm or roll back first), and a late ``deadline`` after a confirm
is refused too, so a stale timer can never undo a confirmed config.

:data:`TELEMETRY_OUTBOX` (``gateway/store/telemetry_outbox.py``; a row on disk is ``queued``,
``in_flight`` lives in memory, an ``acked`` row is deleted)::

    queued ──publish──▶ in_flight ──puback──▶ acked            (final)
                        in_flight ──connection_lost | refused──▶ queued
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Generic, Literal, TypeVar, get_args

from gateway.errors import Conflict

S = TypeVar("S", bound=Hashable)
E = TypeVar("E", bound=Hashable)


class IllegalTransition(Conflict):
    """An event was fired in a state whose table does not allow it.

    ``table`` is the table's name, ``state`` and ``event`` the refused pair,
    ``allowed`` the events that state does allow (in declaration order; empty
    for a final state), and ``reason`` the table's explanation, if it has one.
    """

    def __init__(self, table: str, state: Hashable, event: Hashable,
                 allowed: tuple[Hashable, ...], reason: str | None = None) -> None:
        self.table = table
        self.state = state
        self.event = event
        self.allowed = allowed
        self.reason = reason
        if allowed:
            options = f"allowed in {state!s}: {', '.join(str(e) for e in allowed)}"
        else:
            options = f"{state!s} is final, nothing is allowed"
        why = f": {reason}" if reason else ""
        super().__init__(f"{table}: {event!s} is not allowed in state {state!s}{why} ({options})")


class TransitionTable(Generic[S, E]):
    """A fixed set of legal moves ``(state, event) -> next state``; anything else raises.

    ``states`` and ``events`` declare the full alphabet (pass ``get_args`` of the
    Literal types so final states and unused events are known too); when left
    out they are taken from the moves, in order of first appearance. A
    malformed table raises ``ValueError`` at construction, i.e. at import.
    """

    def __init__(self, name: str, moves: Mapping[tuple[S, E], S], *,
                 states: Iterable[S] | None = None, events: Iterable[E] | None = None,
                 refusals: Mapping[tuple[S, E], str] | None = None) -> None:
        self.name = name
        found_states = [x for (s, _), t in moves.items() for x in (s, t)]
        found_events = [e for (_, e) in moves]
        self._states: tuple[S, ...] = tuple(dict.fromkeys(found_states if states is None else states))
        self._events: tuple[E, ...] = tuple(dict.fromkeys(found_events if events is None else events))
        self._moves: Mapping[tuple[S, E], S] = MappingProxyType(dict(moves))
        self._refusals: Mapping[tuple[S, E], str] = MappingProxyType(dict(refusals or {}))
        problems = [f"{s!s} is not a declared state" for s in dict.fromkeys(found_states)
                    if s not in self._states]
        problems += [f"{e!s} is not a declared event" for e in dict.fromkeys(found_events)
                     if e not in self._events]
        for state, event in self._refusals:
            if (state, event) in self._moves:
                problems.append(f"({state!s}, {event!s}) is both a move and a refusal")
            elif state not in self._states or event not in self._events:
                problems.append(f"refusal ({state!s}, {event!s}) names an undeclared state or event")
        if problems:
            raise ValueError(f"transition table {name!r}: " + "; ".join(problems))
        self._allowed: dict[S, tuple[E, ...]] = {
            s: tuple(e for e in self._events if (s, e) in self._moves) for s in self._states
        }

    @property
    def states(self) -> tuple[S, ...]:
        """Every state, in declaration order."""
        return self._states

    @property
    def events(self) -> tuple[E, ...]:
        """Every event, in declaration order."""
        return self._events

    @property
    def moves(self) -> Mapping[tuple[S, E], S]:
        """The legal moves, read-only."""
        return self._moves

    def next(self, state: S, event: E) -> S:
        """The state ``event`` leads to from ``state``; raises :class:`IllegalTransition`."""
        try:
            return self._moves[(state, event)]
        except KeyError:
            pass
        if state not in self._allowed or event not in self._events:
            raise IllegalTransition(self.name, state, event, self._allowed.get(state, ()),
                                    f"unknown {'state' if state not in self._allowed else 'event'}")
        raise IllegalTransition(self.name, state, event, self._allowed[state],
                                self._refusals.get((state, event)))

    def is_legal(self, state: S, event: E) -> bool:
        return (state, event) in self._moves

    def allowed(self, state: S) -> frozenset[E]:
        """The events ``state`` allows (empty for a final or unknown state)."""
        return frozenset(self._allowed.get(state, ()))

    def sources(self, event: E) -> tuple[S, ...]:
        """The states in which ``event`` is legal, in declaration order."""
        return tuple(s for s in self._states if (s, event) in self._moves)

    def is_final(self, state: S) -> bool:
        """True for a declared state that allows no event."""
        return state in self._allowed and not self._allowed[state]

    def pairs(self) -> Iterator[tuple[S, E]]:
        """Every (state, event) combination, legal or not: what tests iterate over."""
        for state in self._states:
            for event in self._events:
                yield state, event

    def __repr__(self) -> str:
        return f"<TransitionTable {self.name!r}: {len(self._states)} states, {len(self._moves)} moves>"


# -- the forms outbox (gateway/cache/outbox.py) ---------------------------------------

OutboxState = Literal["queued", "sending", "delivered", "rejected", "unknown"]
OutboxEvent = Literal[
    "mark_sending",                                           # a deliverer claims it
    "delivered", "rejected", "not_sent", "retry", "unknown",  # how that attempt ended
    "recover",                                                # start-up after a crash
    "kick",                                                   # an operator makes it due now
]
OutboxOutcome = Literal["delivered", "rejected", "not_sent", "retry", "unknown"]

FORMS_OUTBOX: TransitionTable[OutboxState, OutboxEvent] = TransitionTable(
    "forms outbox",
    {
        ("queued", "mark_sending"): "sending",
        ("unknown", "mark_sending"): "sending",
        ("sending", "delivered"): "delivered",
        ("sending", "rejected"): "rejected",
        ("sending", "not_sent"): "queued",
        ("sending", "retry"): "queued",
        ("sending", "unknown"): "unknown",
        ("sending", "recover"): "unknown",
        ("queued", "kick"): "queued",
        ("unknown", "kick"): "unknown",
    },
    states=get_args(OutboxState),
    events=get_args(OutboxEvent),
)


def outbox_result_event(outcome: OutboxOutcome, uncertain: bool) -> OutboxEvent:
    """The event an attempt's outcome fires, given the submission's ``uncertain`` flag.

    ``unknown`` is sticky: once some attempt may have reached the upstream, a
    later attempt that surely did not (``not_sent``) or was told to come back
    (``retry``) leaves the overall outcome unknown, so it fires ``unknown``.
    """
    if uncertain and outcome in ("not_sent", "retry"):
        return "unknown"
    return outcome


# -- the config trial (gateway/config/apply.py, confirm or roll back) -----------------

ConfigTrialState = Literal["none", "pending", "confirmed", "rolled_back"]
ConfigTrialEvent = Literal[
    "apply", "apply_with_confirm", "confirm", "rollback", "deadline", "restart", "reload",
]

_PENDING_APPLY = "a trial is pending: confirm it or roll it back first"
_NO_TRIAL = "no trial is pending"

CONFIG_TRIAL: TransitionTable[ConfigTrialState, ConfigTrialEvent] = TransitionTable(
    "config trial",
    {
        ("none", "apply"): "none",
        ("confirmed", "apply"): "none",
        ("rolled_back", "apply"): "none",
        ("none", "apply_with_confirm"): "pending",
        ("confirmed", "apply_with_confirm"): "pending",
        ("rolled_back", "apply_with_confirm"): "pending",
        ("pending", "confirm"): "confirmed",
        ("pending", "rollback"): "rolled_back",
        ("pending", "deadline"): "rolled_back",
        ("pending", "restart"): "rolled_back",  # a trial found on disk at start rolls back
        ("none", "restart"): "none",
        ("confirmed", "restart"): "confirmed",
        ("rolled_back", "restart"): "rolled_back",
        # re-reading the file (SIGHUP, `desanet reload`) leaves the trial state alone,
        # and is refused while a trial runs: the file then holds the trial's config
        ("none", "reload"): "none",
        ("confirmed", "reload"): "confirmed",
        ("rolled_back", "reload"): "rolled_back",
    },
    states=get_args(ConfigTrialState),
    events=get_args(ConfigTrialEvent),
    refusals={
        ("pending", "apply"): _PENDING_APPLY,
        ("pending", "apply_with_confirm"): _PENDING_APPLY,
        ("pending", "reload"): "a trial is pending: confirm it or roll it back before reloading",
        ("none", "confirm"): f"{_NO_TRIAL}, there is nothing to confirm",
        ("confirmed", "confirm"): f"{_NO_TRIAL}, the last trial is already confirmed",
        ("rolled_back", "confirm"): f"{_NO_TRIAL}, the last trial was rolled back; apply it again",
        ("none", "rollback"): f"{_NO_TRIAL}, there is nothing to roll back",
        ("confirmed", "rollback"): f"{_NO_TRIAL}, the last trial is confirmed; apply the old config",
        ("rolled_back", "rollback"): f"{_NO_TRIAL}, the last trial was already rolled back",
        ("none", "deadline"): f"{_NO_TRIAL}, a stale timer fired",
        ("confirmed", "deadline"): f"{_NO_TRIAL}, the trial was confirmed before its deadline",
        ("rolled_back", "deadline"): f"{_NO_TRIAL}, the trial was already rolled back",
    },
)


# -- the telemetry outbox (gateway/store/telemetry_outbox.py) -------------------------------

TelemetryState = Literal["queued", "in_flight", "acked"]
TelemetryEvent = Literal["publish", "puback", "connection_lost", "refused"]

TELEMETRY_OUTBOX: TransitionTable[TelemetryState, TelemetryEvent] = TransitionTable(
    "telemetry outbox",
    {
        ("queued", "publish"): "in_flight",
        ("in_flight", "puback"): "acked",
        ("in_flight", "connection_lost"): "queued",  # sent again, same seq, on the next connection
        ("in_flight", "refused"): "queued",  # the broker's PUBACK said no (e.g. not authorized)
    },
    states=get_args(TelemetryState),
    events=get_args(TelemetryEvent),
)

__all__ = [
    "CONFIG_TRIAL",
    "FORMS_OUTBOX",
    "TELEMETRY_OUTBOX",
    "ConfigTrialEvent",
    "ConfigTrialState",
    "IllegalTransition",
    "OutboxEvent",
    "OutboxOutcome",
    "OutboxState",
    "TelemetryEvent",
    "TelemetryState",
    "TransitionTable",
    "outbox_result_event",
]
