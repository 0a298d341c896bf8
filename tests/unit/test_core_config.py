"""ConfigService against the fakes and a real config file: apply, trials, confirm,
rollback, the deadline, reload, and recovery of a trial at start."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config
from gateway.config.pending import TrialRecord, TrialStore, recover_trial
from gateway.core.configuration import version_of
from gateway.core.events import (
    ChangeSource,
    ConfigApplied,
    ConfigConfirmed,
    ConfigRefused,
    ConfigRolledBack,
)
from gateway.core.lifecycle import IllegalTransition
from gateway.errors import (
    ApplyFailed,
    ConfigError,
    Conflict,
    Invalid,
    Refused,
    ServiceError,
    StoreError,
)
from gateway.firewall.fake import FakeFirewall
from tests.unit.conftest import make_config
from tests.unit.corekit import NOW, Core, build_core, config_text, edited


class ProbeFirewall(FakeFirewall):
    """Records, at each ruleset apply, what is on disk at that moment."""

    def __init__(self, state_dir: Path, config_path: Path) -> None:
        super().__init__()
        self.trials = TrialStore(state_dir)
        self.config_path = config_path
        self.seen: list[tuple[TrialRecord | None, str]] = []

    async def apply(self, cfg: Config, sessions: Any, now: int,
                    carry_garden: bool = True, meters: Any = ()) -> None:
        self.seen.append((self.trials.load(), self.config_path.read_text()))
        await super().apply(cfg, sessions, now, carry_garden, meters)


@pytest.fixture
async def core(tmp_path: Path) -> Core:
    c = build_core(tmp_path, make_config(),
                   firewall=ProbeFirewall(tmp_path / "state", tmp_path / "gateway.toml"))
    await c.start()
    return c


def text_b(core: Core) -> str:
    return edited(core.config_path.read_text(), portal={"terms_id": "Aturan B."})


def text_c(core: Core) -> str:
    return edited(core.config_path.read_text(), portal={"terms_id": "Aturan C.",
                                                        "session_length": "2h"})


def trial_on_disk(core: Core) -> TrialRecord | None:
    return TrialStore(core.state_dir).load()


def probe(core: Core) -> ProbeFirewall:
    assert isinstance(core.firewall, ProbeFirewall)
    return core.firewall


async def state(core: Core) -> tuple[Any, ...]:
    """What a refused change must leave alone."""
    return (core.config_path.read_text(), core.cfg, core.config.text, core.config.trial,
            core.config.trial_state, trial_on_disk(core), core.firewall.applied,
            TrialStore(core.state_dir).load_previous())


# -- apply ---------------------------------------------------------------------------------


async def test_plain_apply(core: Core) -> None:
    old_text, old = core.config_path.read_text(), core.cfg
    new_text = text_b(core)
    result = await core.ops.config_apply(new_text, None, "budi")
    assert core.config_path.read_text() == new_text and core.config.text == new_text
    assert core.cfg.portal.terms_id == "Aturan B."
    assert (result.version, result.previous_version) == (version_of(core.cfg), version_of(old))
    assert [c["path"] for c in result.changes] == ["portal.terms_id"]
    assert result.trial is None and core.config.trial_state == "none"
    assert trial_on_disk(core) is None
    assert TrialStore(core.state_dir).load_previous() == old_text  # kept for rollback
    event = core.events()[-1].event
    assert isinstance(event, ConfigApplied)
    assert (event.version, event.previous_version, event.source, event.by,
            event.trial_deadline) == (result.version, result.previous_version, ChangeSource.CLI,
                                      "budi", None)
    assert event.changes and "portal.terms_id" in event.changes[0]
    status = core.config.status_json()
    assert status["trial"] is None and status["last_change"]["type"] == "config_applied"


async def test_apply_with_confirm_records_the_trial_before_anything_changes(core: Core) -> None:
    old_text, old_version = core.config_path.read_text(), core.config.version
    new_text = text_b(core)
    result = await core.config.apply(new_text, 300, "budi", ChangeSource.CLI)
    record, file_text = probe(core).seen[-1]  # on disk when the firewall got the new ruleset
    assert record is not None and record.previous_text == old_text
    assert file_text == new_text
    assert (record.started, record.deadline, record.previous_version, record.version,
            record.by) == (NOW, NOW + 300, old_version, result.version, "budi")
    assert result.trial == record == core.config.trial == trial_on_disk(core)
    assert core.config.trial_state == "pending"
    event = core.events()[-1].event
    assert isinstance(event, ConfigApplied) and event.trial_deadline == NOW + 300
    assert core.config.status_json()["trial"] == record.public_json()


@pytest.mark.parametrize("confirm", [0, 4, 86401, -5])
async def test_apply_with_a_confirm_window_out_of_range_is_invalid(core: Core,
                                                                   confirm: int) -> None:
    before = await state(core)
    with pytest.raises(Invalid) as info:
        await core.config.apply(text_b(core), confirm, "", ChangeSource.CLI)
    assert info.value.field == "confirm"
    assert await state(core) == before


@pytest.mark.parametrize("confirm", [None, 300])
async def test_invalid_text_names_every_problem_and_changes_nothing(
    core: Core, confirm: int | None
) -> None:
    bad = edited(core.config_path.read_text(), portal={"http_port": 0, "mode": "open"},
                 shaping={"client_down": "fast"})
    seq = core.bus.last_seq
    before = await state(core)
    with pytest.raises(ConfigError) as info:
        await core.ops.config_apply(bad, confirm, "budi")
    paths = {p.split(":", 1)[0] for p in info.value.problems}
    assert {"portal.http_port", "portal.mode", "shaping.client_down"} <= paths
    assert await state(core) == before
    assert core.bus.last_seq == seq
    with pytest.raises(ConfigError):
        core.ops.config_diff(bad)


async def test_apply_while_a_trial_is_pending_is_refused(core: Core) -> None:
    await core.config.apply(text_b(core), 300, "budi", ChangeSource.CLI)
    before = await state(core)
    for confirm in (None, 60):
        with pytest.raises(IllegalTransition) as info:
            await core.config.apply(text_c(core), confirm, "ani", ChangeSource.CLI)
        assert isinstance(info.value, Conflict)
        assert "confirm it or roll it back first" in str(info.value)
        assert await state(core) == before


async def test_apply_without_a_config_file_is_a_conflict(tmp_path: Path) -> None:
    core = build_core(tmp_path, config_file=False)
    await core.start()
    with pytest.raises(Conflict, match="--config FILE"):
        await core.config.apply(edited(config_text(core.cfg), portal={"terms_id": "x"}),
                                None, "", ChangeSource.CLI)
    assert not core.config_path.exists()


@pytest.mark.parametrize("confirm", [None, 300])
async def test_apply_whose_step_fails_puts_everything_back(core: Core,
                                                           confirm: int | None) -> None:
    before = await state(core)
    old_text = core.config_path.read_text()
    seq = core.bus.last_seq
    core.servers.fail_on["sync_portal"] = ServiceError("port 8080 taken")
    new_text = edited(old_text, portal={"http_port": 8080})
    with pytest.raises(ApplyFailed) as info:
        await core.config.apply(new_text, confirm, "budi", ChangeSource.CLI)
    assert info.value.step == "portal"
    after = await state(core)
    # file, running config, trial: as before (the firewall was applied and re-applied)
    assert after[:6] == before[:6]
    assert core.config_path.read_text() == old_text
    assert [s.event.type for s in core.events(seq)] == ["config_refused"]
    refused = core.events(seq)[0].event
    assert isinstance(refused, ConfigRefused) and (refused.step, refused.by) == ("portal", "budi")
    assert core.config.last_refusal is not None
    assert core.config.last_refusal["step"] == "portal"


# -- confirm ------------------------------------------------------------------------------


async def test_confirm_from_the_same_connection_is_refused(core: Core) -> None:
    conn = object()
    await core.ops.config_apply(text_b(core), 300, "budi", conn)
    with pytest.raises(Refused) as info:
        await core.ops.config_confirm("budi", conn)
    assert info.value.reason == "same_connection"
    assert core.config.trial_state == "pending" and trial_on_disk(core) is not None

    version = await core.ops.config_confirm("budi", object())
    assert version == core.config.version
    assert core.config.trial is None and trial_on_disk(core) is None
    assert core.config.trial_state == "confirmed"
    assert core.cfg.portal.terms_id == "Aturan B."
    event = core.events()[-1].event
    assert event == ConfigConfirmed(version, ChangeSource.CLI, "budi")


async def test_a_terminal_proof_lets_the_same_login_confirm_but_never_the_same_connection(
        core: Core) -> None:
    from gateway.control.api import Origin
    applied = Origin(1, 7, object())
    await core.ops.config_apply(text_b(core), 300, "tui", applied)
    same_login = Origin(2, 7, object())
    with pytest.raises(Refused) as info:  # without proof: a second command of the same shell
        await core.ops.config_confirm("tui", same_login)
    assert info.value.reason == "same_connection"
    with pytest.raises(Refused) as info:  # proof or not, the applying connection proves nothing
        await core.ops.config_confirm("tui", applied, terminal_proof=True)
    assert info.value.reason == "same_connection" and core.config.trial_state == "pending"
    version = await core.ops.config_confirm("tui", same_login, terminal_proof=True)
    assert version == core.config.version and core.config.trial_state == "confirmed"


async def test_confirm_without_a_trial_is_an_illegal_transition(core: Core) -> None:
    with pytest.raises(IllegalTransition, match="nothing to confirm"):
        await core.config.confirm("budi")
    await core.config.apply(text_b(core), 300, "budi", ChangeSource.CLI)
    await core.config.confirm("ani")
    with pytest.raises(IllegalTransition, match="already confirmed"):
        await core.config.confirm("ani")


# -- rollback -----------------------------------------------------------------------------


async def test_rollback_of_a_trial(core: Core) -> None:
    old_text, old = core.config_path.read_text(), core.cfg
    result = await core.config.apply(text_b(core), 300, "budi", ChangeSource.CLI)
    version = await core.ops.config_rollback("ani")
    assert version == version_of(old) and core.cfg == old
    assert core.config_path.read_text() == old_text and core.config.text == old_text
    assert core.config.trial is None and trial_on_disk(core) is None
    assert core.config.trial_state == "rolled_back"
    assert core.firewall.last_config == old
    event = core.events()[-1].event
    assert isinstance(event, ConfigRolledBack)
    assert (event.version, event.from_version, event.source, event.by) == (
        version_of(old), result.version, ChangeSource.CLI, "ani")
    # a new apply is allowed again
    await core.config.apply(text_c(core), None, "ani", ChangeSource.CLI)


async def test_rollback_without_a_trial_uses_the_kept_previous_text(core: Core) -> None:
    a_text, a = core.config_path.read_text(), core.cfg
    b_text = text_b(core)
    await core.config.apply(b_text, None, "budi", ChangeSource.CLI)
    await core.config.rollback("ani", ChangeSource.CLI, "asked")
    assert core.cfg == a and core.config_path.read_text() == a_text
    assert core.config.trial_state == "none"
    # the kept text is used up: a second rollback cannot bring back what was rolled away
    assert TrialStore(core.state_dir).load_previous() is None
    with pytest.raises(Conflict):
        await core.config.rollback("ani", ChangeSource.CLI, "asked")
    assert core.cfg == a


async def test_rollback_with_nothing_kept_is_a_conflict(core: Core) -> None:
    before = await state(core)
    with pytest.raises(Conflict, match="nothing to roll back to"):
        await core.ops.config_rollback("ani")
    assert await state(core) == before


async def test_rollback_after_a_confirmed_trial_goes_to_the_config_it_replaced(
    core: Core,
) -> None:
    await core.config.apply(text_b(core), None, "budi", ChangeSource.CLI)  # A -> B
    await core.config.apply(text_c(core), 300, "budi", ChangeSource.CLI)  # B -> C, trial
    await core.config.confirm("budi")
    await core.config.rollback("ani", ChangeSource.CLI, "asked")
    assert core.cfg.portal.terms_id == "Aturan B."  # today: A's, two applies back


# -- the deadline -------------------------------------------------------------------------


async def test_deadline_rolls_the_trial_back(core: Core) -> None:
    old_text, old = core.config_path.read_text(), core.cfg
    await core.config.apply(text_b(core), 60, "budi", ChangeSource.CLI)
    core.clock.advance(59)
    await core.config.check_deadline()
    assert core.config.trial_state == "pending" and core.cfg != old
    core.clock.advance(1)
    await core.config.check_deadline()
    assert core.cfg == old and core.config_path.read_text() == old_text
    assert core.config.trial_state == "rolled_back" and trial_on_disk(core) is None
    event = core.events()[-1].event
    assert isinstance(event, ConfigRolledBack) and event.source == ChangeSource.TIMER
    await core.config.check_deadline()  # nothing pending: nothing happens
    assert core.events()[-1].event is event


async def test_deadline_after_a_confirm_does_nothing(core: Core) -> None:
    await core.config.apply(text_b(core), 60, "budi", ChangeSource.CLI)
    await core.config.confirm("budi")
    core.clock.advance(3600)
    seq = core.bus.last_seq
    await core.config.check_deadline()
    assert core.cfg.portal.terms_id == "Aturan B." and core.bus.last_seq == seq


async def test_deadline_racing_a_confirm_cannot_undo_it(core: Core) -> None:
    await core.config.apply(text_b(core), None, "budi", ChangeSource.CLI)  # keeps A as previous
    await core.config.apply(text_c(core), 60, "budi", ChangeSource.CLI)  # trial of C
    core.clock.advance(59)
    confirm = asyncio.create_task(core.config.confirm("ani"))
    await asyncio.sleep(0)  # confirm holds the lock (in time), clearing the record off the loop
    core.clock.advance(1)  # the window runs out while it does
    await core.config.check_deadline()
    await confirm
    assert core.config.trial_state == "confirmed"
    assert core.cfg.portal.terms_id == "Aturan C."  # today: rolled back to A's


# -- reload ----------------------------------------------------------------------------------


async def test_reload_reads_the_file(core: Core) -> None:
    core.config_path.write_text(text_b(core))
    result = await core.ops.reload(ChangeSource.SIGHUP, "systemd")
    assert core.cfg.portal.terms_id == "Aturan B."
    assert [c["path"] for c in result.changes] == ["portal.terms_id"]
    event = core.events()[-1].event
    assert isinstance(event, ConfigApplied) and (event.source, event.by) == (
        ChangeSource.SIGHUP, "systemd")


@pytest.mark.parametrize(("content", "error", "words"), [
    ('[portal]\nhttp_port = "eighty"\n', ConfigError, "site"),
    ("this is not toml = = \n", ConfigError, "TOML syntax error"),
    (None, Invalid, "a readable config file"),
])
async def test_reload_refused_when_the_file_is_invalid(
    core: Core, content: str | None, error: type[Exception], words: str
) -> None:
    old, old_applied = core.cfg, core.firewall.applied
    if content is None:
        core.config_path.unlink()
    else:
        core.config_path.write_text(content)
    with pytest.raises(error) as info:
        await core.config.reload(ChangeSource.SIGHUP)
    assert words in str(info.value)
    assert core.cfg is old and core.firewall.applied == old_applied
    refusal = core.config.last_refusal
    assert refusal is not None and refusal["time"] == NOW and refusal["source"] == "sighup"
    event = core.events()[-1].event
    assert isinstance(event, ConfigRefused) and event.source == ChangeSource.SIGHUP
    assert core.config.status_json()["last_refusal"] == refusal


# -- a trial found at start ------------------------------------------------------------------


async def test_recover_trial_restores_the_previous_file(tmp_path: Path) -> None:
    core = build_core(tmp_path)
    old_text = core.config_path.read_text()
    await core.start()
    await core.config.apply(text_b(core), 300, "budi", ChangeSource.CLI)
    assert core.config_path.read_text() != old_text
    # kill -9 here; at the next start:
    trials = TrialStore(core.state_dir)
    record = await asyncio.to_thread(recover_trial, trials, str(core.config_path))
    assert record is not None and record.previous_text == old_text and record.by == "budi"
    assert core.config_path.read_text() == old_text
    assert trials.load() is None
    assert recover_trial(trials, str(core.config_path)) is None  # once only

    restarted = build_core(tmp_path / "again", text=old_text)
    restarted.config.note_recovered_trial(record)
    assert restarted.config.trial_state == "rolled_back"
    event = restarted.events()[-1].event
    assert isinstance(event, ConfigRolledBack)
    assert (event.version, event.from_version, event.source) == (
        record.previous_version, record.version, ChangeSource.START)


def test_recover_without_a_trial_leaves_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("anything")
    assert recover_trial(TrialStore(tmp_path), str(path)) is None
    assert path.read_text() == "anything"


# -- the service follows the trial table --------------------------------------------------------


async def _into(core: Core, state_name: str) -> None:
    if state_name == "none":
        return
    await core.config.apply(text_b(core), 300, "", ChangeSource.CLI)
    if state_name == "confirmed":
        await core.config.confirm("")
    elif state_name == "rolled_back":
        await core.config.rollback("", ChangeSource.CLI, "test")


@pytest.mark.parametrize("state_name", ["none", "pending", "confirmed", "rolled_back"])
@pytest.mark.parametrize(("op", "legal_in"), [
    ("apply", {"none", "confirmed", "rolled_back"}),
    ("apply_with_confirm", {"none", "confirmed", "rolled_back"}),
    ("confirm", {"pending"}),
])
async def test_service_moves_follow_the_trial_table(core: Core, state_name: str, op: str,
                                                    legal_in: set[str]) -> None:
    await _into(core, state_name)
    assert core.config.trial_state == state_name
    text = text_c(core)

    async def fire() -> None:
        if op == "confirm":
            await core.config.confirm("")
        else:
            await core.config.apply(text, 300 if op == "apply_with_confirm" else None, "",
                                    ChangeSource.CLI)

    if state_name in legal_in:
        await fire()
        assert core.config.trial_state == {"apply": "none", "apply_with_confirm": "pending",
                                           "confirm": "confirmed"}[op]
    else:
        before = await state(core)
        with pytest.raises(IllegalTransition):
            await fire()
        assert await state(core) == before


# -- settings that only a restart may change ------------------------------------------


@pytest.mark.parametrize(("section", "values"), [
    ("store", {"state_dir": "/var/lib/elsewhere"}),
    ("store", {"run_dir": "/run/elsewhere"}),
    ("control", {"socket": "/run/elsewhere/control.sock"}),
])
async def test_moving_state_or_socket_is_refused_and_changes_nothing(
    core: Core, section: str, values: dict[str, str]
) -> None:
    before = await state(core)
    moved = edited(core.config_path.read_text(), **{section: values})
    for confirm in (None, 60):
        with pytest.raises(Refused) as info:
            await core.config.apply(moved, confirm, "ani", ChangeSource.CLI)
        assert info.value.reason == "restart_needed"
        assert f"{section}.{next(iter(values))}" in str(info.value)
        assert await state(core) == before
    # positive control: the same edit without the moved setting applies
    await core.config.apply(text_b(core), None, "ani", ChangeSource.CLI)
    assert core.cfg.portal.terms_id == "Aturan B."


async def test_reload_of_a_moved_state_dir_is_refused(core: Core) -> None:
    old = core.cfg
    core.config_path.write_text(edited(core.config_path.read_text(),
                                       store={"state_dir": "/var/lib/elsewhere"}))
    with pytest.raises(Refused):
        await core.config.reload(ChangeSource.SIGHUP)
    assert core.cfg is old
    assert core.config.last_refusal is not None
    assert "restart" in core.config.last_refusal["reason"]


async def test_a_confirm_after_the_window_ran_out_is_refused(core: Core) -> None:
    await core.config.apply(text_b(core), 60, "budi", ChangeSource.CLI)
    core.clock.advance(30)
    # positive control: in time, from another connection, it would be accepted (see above)
    core.clock.advance(31)
    with pytest.raises(Refused) as info:
        await core.config.confirm("ani")
    assert info.value.reason == "too_late"
    await core.config.check_deadline()
    assert core.config.trial_state == "rolled_back" and core.cfg.portal.terms_id != "Aturan B."


async def test_a_reload_during_a_trial_is_refused(core: Core) -> None:
    await core.config.apply(text_b(core), 60, "budi", ChangeSource.CLI)
    with pytest.raises(IllegalTransition, match="before reloading"):
        await core.config.reload(ChangeSource.SIGHUP)
    assert core.config.trial_state == "pending"


async def test_a_missing_interface_is_refused_before_anything_changes(core: Core) -> None:
    core.config.check_network = lambda cfg: (
        [] if cfg.network.lan_interface == core.cfg.network.lan_interface
        else [("network.lan_interface", cfg.network.lan_interface, "an interface this gateway has")])
    before = await state(core)
    typo = edited(core.config_path.read_text(), network={"lan_interface": "br-lam"})
    with pytest.raises(Invalid) as info:
        await core.config.apply(typo, 60, "budi", ChangeSource.CLI)
    assert info.value.field == "network.lan_interface" and "br-lam" in str(info.value)
    assert await state(core) == before
    await core.config.apply(text_b(core), None, "budi", ChangeSource.CLI)  # positive control


# -- a config that fails at start ------------------------------------------------------


async def test_a_config_that_fails_at_start_falls_back_to_the_last_that_ran(
    tmp_path: Path
) -> None:
    first = build_core(tmp_path, make_config())
    good = first.config_path.read_text()
    await first.config.start()  # it ran: that makes it the last good config
    broken = edited(good, portal={"terms_id": "Rusak."})  # the file edited by hand, then a reboot
    core = build_core(tmp_path, text=broken)
    core.dhcp.refuse_next_start = True  # ... and this config cannot start (say a renamed interface)
    await core.config.start()
    assert core.cfg.portal.terms_id != "Rusak." and core.dhcp.running
    assert core.config_path.read_text() == good and core.config.text == good
    assert Path(f"{core.config_path}.refused").read_text() == broken
    event = core.events()[-1].event
    assert isinstance(event, ConfigRolledBack) and event.source is ChangeSource.START
    assert core.config.last_refusal is not None


@pytest.mark.parametrize("step", ["dnsmasq", "portal"])
async def test_a_config_that_fails_at_start_with_nothing_kept_is_an_error(
    tmp_path: Path, step: str
) -> None:
    core = build_core(tmp_path, make_config())
    if step == "dnsmasq":
        core.dhcp.refuse_next_start = True
    else:
        core.servers.fail_on["sync_portal"] = ServiceError("port 80 is taken")
    with pytest.raises(ApplyFailed) as info:
        await core.config.start()
    assert info.value.step == step
    assert not core.dhcp.running and core.servers.portal is None  # nothing left half-started
    core.servers.fail_on.clear()
    await core.config.start()  # positive control: the same config starts once dnsmasq does
    assert core.dhcp.running and core.servers.portal is core.cfg


async def test_a_trial_keeps_its_deadline_when_a_bookkeeping_copy_cannot_be_written(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(text: str) -> None:
        raise StoreError("cannot write config-previous.toml: No space left on device")

    monkeypatch.setattr(core.config.trials, "save_previous", full_disk)
    result = await core.config.apply(text_b(core), 60, "budi", ChangeSource.CLI)
    assert result.trial is not None and core.config.trial is not None
    core.clock.advance(61)
    await core.config.check_deadline()
    assert core.cfg.portal.terms_id != "Aturan B."  # the window still closes


def test_an_unreadable_file_is_replaced_by_the_last_good_one(tmp_path: Path) -> None:
    from gateway.config.pending import recover_unreadable

    path = tmp_path / "gateway.toml"
    path.write_text("[portal\nbroken = = \n")
    assert recover_unreadable(str(path)) is None  # nothing to fall back to: left alone
    assert path.read_text() == "[portal\nbroken = = \n"
    good = config_text(make_config())
    Path(f"{path}.last-good").write_text(good)
    assert recover_unreadable(str(path)) == f"{path}.refused"
    assert path.read_text() == good
    assert Path(f"{path}.refused").read_text() == "[portal\nbroken = = \n"
