"""State tables: every (state, event) pair of each table, legal or not, against a table written here.

The expected moves below are written out by hand from the documented state
diagrams (gateway/core/lifecycle.py, gateway/cache/outbox.py), not derived from
the implementation: a move added to or lost from a table fails a test here.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType

import pytest

from gateway.cache.outbox import Outbox
from gateway.core.lifecycle import (
    CONFIG_TRIAL,
    FORMS_OUTBOX,
    ConfigTrialEvent,
    ConfigTrialState,
    IllegalTransition,
    OutboxEvent,
    OutboxOutcome,
    OutboxState,
    TransitionTable,
    outbox_result_event,
)
from gateway.errors import DesanetError, OutboxStateError

T0 = 1_000_000.0

# -- the forms outbox ----------------------------------------------------------------

OUTBOX_STATES: tuple[OutboxState, ...] = ("queued", "sending", "delivered", "rejected", "unknown")
OUTBOX_EVENTS: tuple[OutboxEvent, ...] = (
    "mark_sending", "delivered", "rejected", "not_sent", "retry", "unknown", "recover", "kick",
)
OUTBOX_MOVES: dict[tuple[OutboxState, OutboxEvent], OutboxState] = {
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
}
OUTBOX_PAIRS = [(s, e) for s in OUTBOX_STATES for e in OUTBOX_EVENTS]

# -- the config trial ------------------------------------------------------------------

TRIAL_STATES: tuple[ConfigTrialState, ...] = ("none", "pending", "confirmed", "rolled_back")
TRIAL_EVENTS: tuple[ConfigTrialEvent, ...] = (
    "apply", "apply_with_confirm", "confirm", "rollback", "deadline", "restart", "reload",
)
TRIAL_MOVES: dict[tuple[ConfigTrialState, ConfigTrialEvent], ConfigTrialState] = {
    ("none", "apply"): "none",
    ("confirmed", "apply"): "none",
    ("rolled_back", "apply"): "none",
    ("none", "apply_with_confirm"): "pending",
    ("confirmed", "apply_with_confirm"): "pending",
    ("rolled_back", "apply_with_confirm"): "pending",
    ("pending", "confirm"): "confirmed",
    ("pending", "rollback"): "rolled_back",
    ("pending", "deadline"): "rolled_back",
    ("pending", "restart"): "rolled_back",
    ("none", "restart"): "none",
    ("confirmed", "restart"): "confirmed",
    ("rolled_back", "restart"): "rolled_back",
    ("none", "reload"): "none",
    ("confirmed", "reload"): "confirmed",
    ("rolled_back", "reload"): "rolled_back",
}
TRIAL_PAIRS = [(s, e) for s in TRIAL_STATES for e in TRIAL_EVENTS]


def test_tables_declare_the_documented_alphabets() -> None:
    assert FORMS_OUTBOX.states == OUTBOX_STATES
    assert FORMS_OUTBOX.events == OUTBOX_EVENTS
    assert dict(FORMS_OUTBOX.moves) == OUTBOX_MOVES
    assert CONFIG_TRIAL.states == TRIAL_STATES
    assert CONFIG_TRIAL.events == TRIAL_EVENTS
    assert dict(CONFIG_TRIAL.moves) == TRIAL_MOVES
    for table, pairs in ((FORMS_OUTBOX, OUTBOX_PAIRS), (CONFIG_TRIAL, TRIAL_PAIRS)):
        assert list(table.pairs()) == pairs  # every combination, each once


@pytest.mark.parametrize("state, event", OUTBOX_PAIRS)
def test_forms_outbox_every_pair(state: OutboxState, event: OutboxEvent) -> None:
    expected = OUTBOX_MOVES.get((state, event))
    assert FORMS_OUTBOX.is_legal(state, event) is (expected is not None)
    assert (event in FORMS_OUTBOX.allowed(state)) is (expected is not None)
    assert (state in FORMS_OUTBOX.sources(event)) is (expected is not None)
    if expected is not None:
        assert FORMS_OUTBOX.next(state, event) == expected
    else:
        with pytest.raises(IllegalTransition, match=f"forms outbox: {event} is not allowed in "
                                                    f"state {state}") as info:
            FORMS_OUTBOX.next(state, event)
        assert (info.value.table, info.value.state, info.value.event) == ("forms outbox", state, event)


@pytest.mark.parametrize("state, event", TRIAL_PAIRS)
def test_config_trial_every_pair(state: ConfigTrialState, event: ConfigTrialEvent) -> None:
    expected = TRIAL_MOVES.get((state, event))
    assert CONFIG_TRIAL.is_legal(state, event) is (expected is not None)
    assert (event in CONFIG_TRIAL.allowed(state)) is (expected is not None)
    if expected is not None:
        assert CONFIG_TRIAL.next(state, event) == expected
    else:
        with pytest.raises(IllegalTransition, match=f"config trial: {event} is not allowed") as info:
            CONFIG_TRIAL.next(state, event)
        assert info.value.reason  # every refusal of the trial says why, for the operator
        assert set(info.value.allowed) == {e for (s, e) in TRIAL_MOVES if s == state}


@pytest.mark.parametrize("event", ["apply", "apply_with_confirm"])
def test_an_apply_during_a_trial_says_confirm_or_roll_back_first(event: ConfigTrialEvent) -> None:
    with pytest.raises(IllegalTransition, match="confirm it or roll it back first") as info:
        CONFIG_TRIAL.next("pending", event)
    assert info.value.allowed == ("confirm", "rollback", "deadline", "restart")


def test_a_late_deadline_cannot_undo_a_confirmed_trial() -> None:
    with pytest.raises(IllegalTransition, match="confirmed before its deadline"):
        CONFIG_TRIAL.next(CONFIG_TRIAL.next("pending", "confirm"), "deadline")


FINALS = [("delivered", True), ("rejected", True), ("queued", False), ("sending", False),
          ("unknown", False)]


@pytest.mark.parametrize("state, final", FINALS)
def test_outbox_final_states(state: OutboxState, final: bool) -> None:
    assert FORMS_OUTBOX.is_final(state) is final
    if final:
        with pytest.raises(IllegalTransition, match=f"{state} is final, nothing is allowed"):
            FORMS_OUTBOX.next(state, "mark_sending")


RESULT_EVENTS: list[tuple[OutboxOutcome, bool, OutboxEvent]] = [
    ("delivered", False, "delivered"),
    ("delivered", True, "delivered"),
    ("rejected", False, "rejected"),
    ("rejected", True, "rejected"),
    ("not_sent", False, "not_sent"),
    ("not_sent", True, "unknown"),   # unknown is sticky
    ("retry", False, "retry"),
    ("retry", True, "unknown"),
    ("unknown", False, "unknown"),
    ("unknown", True, "unknown"),
]


@pytest.mark.parametrize("outcome, uncertain, event", RESULT_EVENTS)
def test_outbox_result_event(outcome: OutboxOutcome, uncertain: bool, event: OutboxEvent) -> None:
    assert outbox_result_event(outcome, uncertain) == event


# -- the generic table ----------------------------------------------------------------

LIGHT: TransitionTable[str, str] = TransitionTable(
    "light", {("off", "on"): "lit", ("lit", "off"): "off", ("lit", "break"): "broken"},
    refusals={("off", "off"): "it is already off"},
)


def test_generic_table_queries() -> None:
    assert LIGHT.states == ("off", "lit", "broken")  # from the moves, first appearance first
    assert LIGHT.events == ("on", "off", "break")
    assert LIGHT.next("off", "on") == "lit"
    assert LIGHT.allowed("lit") == frozenset({"off", "break"})
    assert LIGHT.allowed("broken") == frozenset()
    assert LIGHT.sources("off") == ("lit",)
    assert LIGHT.is_final("broken") and not LIGHT.is_final("lit") and not LIGHT.is_final("nowhere")
    assert len(list(LIGHT.pairs())) == 9
    assert isinstance(LIGHT.moves, MappingProxyType)  # read-only
    assert "light" in repr(LIGHT)


ILLEGAL: list[tuple[str, str, str]] = [
    ("off", "off", "light: off is not allowed in state off: it is already off (allowed in off: on)"),
    ("off", "break", "light: break is not allowed in state off (allowed in off: on)"),
    ("broken", "on", "light: on is not allowed in state broken (broken is final, nothing is allowed)"),
    ("dim", "on", "light: on is not allowed in state dim: unknown state"),
    ("off", "flicker", "light: flicker is not allowed in state off: unknown event"),
]


@pytest.mark.parametrize("state, event, message", ILLEGAL)
def test_generic_table_illegal_moves(state: str, event: str, message: str) -> None:
    with pytest.raises(IllegalTransition) as info:
        LIGHT.next(state, event)
    assert message in str(info.value)
    assert isinstance(info.value, DesanetError)


BAD_TABLES: list[tuple[Callable[[], object], str]] = [
    (lambda: TransitionTable("t", {("a", "go"): "b"}, states=["a"]), "b is not a declared state"),
    (lambda: TransitionTable("t", {("a", "go"): "a"}, events=["stop"]), "go is not a declared event"),
    (lambda: TransitionTable("t", {("a", "go"): "a"}, refusals={("a", "go"): "no"}),
     "both a move and a refusal"),
    (lambda: TransitionTable("t", {("a", "go"): "a"}, refusals={("z", "go"): "no"}),
     "undeclared state or event"),
]


@pytest.mark.parametrize("build, message", BAD_TABLES)
def test_malformed_tables_fail_at_construction(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


# -- the outbox's SQL methods obey the table ------------------------------------------------


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db", rng=random.Random(3))
    yield box
    box.close()


def submission_in(box: Outbox, state: OutboxState) -> str:
    """A stored submission in ``state``, reached through the public methods only."""
    ref = box.enqueue("dukcapil", "POST", "/daftar", [], b"nik=1", T0, uncertain=state == "unknown").ref
    if state in ("sending", "delivered", "rejected"):
        box.mark_sending(ref, T0)
    if state in ("delivered", "rejected"):
        box.mark_result(ref, state, 200 if state == "delivered" else 400, None, T0)
    sub = box.get(ref)
    assert sub is not None and sub.state == state
    return ref


OUTCOMES: dict[OutboxEvent, tuple[OutboxOutcome, int | None]] = {
    "delivered": ("delivered", 201), "rejected": ("rejected", 422), "not_sent": ("not_sent", None),
    "retry": ("retry", 503), "unknown": ("unknown", 504),
}


def fire(box: Outbox, ref: str, event: OutboxEvent, now: float) -> None:
    """The public method that fires ``event`` at one submission."""
    if event == "mark_sending":
        box.mark_sending(ref, now)
    else:
        outcome, status = OUTCOMES[event]
        box.mark_result(ref, outcome, status, "e", now)


@pytest.mark.parametrize("state, event", OUTBOX_PAIRS)
def test_outbox_methods_follow_the_table(outbox: Outbox, state: OutboxState, event: OutboxEvent) -> None:
    ref = submission_in(outbox, state)
    expected = OUTBOX_MOVES.get((state, event))
    later = T0 + 100_000  # every pending submission is due by then
    if event in ("recover", "kick"):  # bulk moves: only the states the table allows are touched
        moved = outbox.recover(later) if event == "recover" else outbox.kick(None, later)
        assert moved == (0 if expected is None else 1)
    elif expected is None:
        with pytest.raises(OutboxStateError, match=f"{ref} cannot be .*but it is {state}") as info:
            fire(outbox, ref, event, later)
        assert isinstance(info.value.__cause__, IllegalTransition)
    else:
        fire(outbox, ref, event, later)
    sub = outbox.get(ref)
    assert sub is not None and sub.state == (expected or state)  # an illegal move changed nothing


def test_mark_result_on_a_delivered_submission_is_refused(outbox: Outbox) -> None:
    ref = submission_in(outbox, "delivered")
    with pytest.raises(OutboxStateError, match="must be sending, but it is delivered"):
        outbox.mark_result(ref, "rejected", 400, "late", T0 + 1)
    sub = outbox.get(ref)
    assert sub is not None and sub.state == "delivered" and sub.response_status == 200


def test_an_uncertain_submission_stays_unknown_when_not_sent(outbox: Outbox) -> None:
    ref = submission_in(outbox, "unknown")
    outbox.mark_sending(ref, T0)
    assert outbox.mark_result(ref, "not_sent", None, "refused", T0).state == "unknown"
