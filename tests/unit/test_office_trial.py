"""The free trial's arithmetic per device per local day, across restarts and clock
steps (real SQLite store), and returning phones' decision (fakes)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from gateway.clock import FakeClock
from gateway.core.office import day_bounds
from gateway.core.returning import ReturningDevices
from gateway.core.trial import TRIAL_USED, TrialService, trial_day
from gateway.errors import PortalDenied
from gateway.kernel import DatabaseWorker
from gateway.model import Voucher
from gateway.store.office import AsyncOfficeStore, OfficeStore
from gateway.store.sqlite import Store
from tests.unit.conftest import make_config

TZ = "Asia/Jakarta"
DAY = day_bounds(dt.date(2026, 12, 2), TZ)[0]
MAC, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


def _cfg(minutes: int = 10, **plan: Any) -> Any:
    return make_config(portal={"trial_minutes": minutes, "trial_plan": "coba"},
                       shaping={"enabled": True, "plans": {
                           "coba": {"down": "512kbit", "up": "256kbit"},
                           "jam": {"down": "2mbit", "up": "1mbit", **plan}}})


class Trial:
    def __init__(self, tmp: Path, clock: FakeClock) -> None:
        self.store = Store(tmp / "state.db")
        self.worker = DatabaseWorker()
        self.office = AsyncOfficeStore(OfficeStore(self.store), self.worker)
        self.cfg = _cfg()
        self.service = TrialService(lambda: self.cfg, self.office, clock)

    def close(self) -> None:
        self.worker.shutdown()
        self.store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(DAY + 8 * 3600)  # 08:00 WIB


@pytest.fixture
def trial(tmp_path: Path, clock: FakeClock) -> Any:
    t = Trial(tmp_path, clock)
    yield t
    t.close()


async def denied(trial: Trial, mac: str = MAC) -> bool:
    try:
        await trial.service.grant(mac)
    except PortalDenied as exc:
        assert exc.reason == TRIAL_USED
        return True
    return False


async def test_a_day_has_its_minutes_per_device(trial: Trial, clock: FakeClock) -> None:
    assert await trial.service.grant(MAC) == (600, "coba")
    clock.advance(600)  # the trial session ran out
    assert await denied(trial)
    assert await trial.service.grant(MAC2) == (600, "coba")  # another device: its own
    clock.advance(16 * 3600 - 600)  # 00:00 WIB the next day
    assert await trial.service.grant(MAC) == (600, "coba")


async def test_a_replaced_or_refused_grant_gives_back_its_rest(trial: Trial,
                                                              clock: FakeClock) -> None:
    await trial.service.grant(MAC)
    clock.advance(240)
    assert await trial.service.grant(MAC) == (360, "coba")  # 4 of 10 minutes used
    clock.advance(360)
    assert await denied(trial)


async def test_the_count_survives_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    first = Trial(tmp_path, clock)
    await first.service.grant(MAC)
    first.close()  # as after a kill -9: the grant was committed when made
    clock.advance(600)
    again = Trial(tmp_path, clock)
    try:
        assert await denied(again)
    finally:
        again.close()


async def test_clock_steps_give_no_minutes_twice(trial: Trial, clock: FakeClock) -> None:
    await trial.service.grant(MAC)
    clock.wall -= 3600  # stepped back an hour (NTP after a wrong RTC), same local day
    assert await denied(trial)
    clock.wall += 2 * 3600  # and forward past the grant: counted as used
    assert await denied(trial)
    assert await trial.office.trial_used(MAC, trial_day(clock.now(), TZ), clock.now()) == 600


async def test_zero_minutes_is_off(trial: Trial) -> None:
    trial.cfg = _cfg(minutes=0)
    assert not trial.service.enabled()


# -- returning phones ------------------------------------------------------------------


class Sessions:
    def __init__(self) -> None:
        self.last: dict[str, tuple[str | None, str | None, int | None]] = {}
        self.codes: dict[str, Voucher] = {}
        self.lookups = 0

    async def last_session(self, mac: str) -> tuple[str | None, str | None, int | None] | None:
        self.lookups += 1
        return self.last.get(mac)

    async def voucher(self, code: str) -> Voucher | None:
        return self.codes.get(code)


CODE = "K7MQX-3PAR9"


def _returning(clock: FakeClock, **plan: Any) -> tuple[ReturningDevices, Sessions, Any]:
    box = {"cfg": _cfg(auto_login=True, **plan)}
    data = Sessions()
    data.codes[CODE] = Voucher(code=CODE, duration=86400, plan="jam", created=DAY,
                               batch="b", first_used=DAY + 3600)
    data.last[MAC] = (CODE, "idle", DAY + 7200)
    return ReturningDevices(lambda: box["cfg"], data, data, clock), data, box


@pytest.mark.parametrize(("last", "expected"), [
    ((CODE, "idle", 1), CODE), ((CODE, "expired", 1), CODE), ((CODE, None, None), CODE),
    ((CODE, "logout", 1), None), ((CODE, "voucher_released", 1), None),
    ((CODE, "deauth", 1), None), ((None, "idle", 1), None),
])
async def test_which_last_sessions_return(clock: FakeClock, last: Any, expected: Any) -> None:
    returning, data, _ = _returning(clock)
    data.last[MAC] = last
    assert await returning.voucher_for(MAC) == expected


async def test_refused_once_the_voucher_is_over(clock: FakeClock) -> None:
    returning, data, box = _returning(clock, time_of_use="1h")
    assert await returning.voucher_for(MAC) == CODE
    clock.advance(86400)  # a day after first use: the voucher's time is over
    assert await returning.voucher_for(MAC) is None
    clock.wall -= 86400
    returning.forget(MAC)
    v = data.codes[CODE]
    for over in (dict(revoked=True), dict(quota_state="cut"), dict(used_seconds=3600)):
        data.codes[CODE] = Voucher(**{**{f: getattr(v, f) for f in v.__slots__}, **over})
        returning.forget(MAC)
        assert await returning.voucher_for(MAC) is None, over
    data.codes[CODE] = v
    box["cfg"] = _cfg()  # the plan no longer has auto_login: applies at once
    returning.forget(MAC)
    assert await returning.voucher_for(MAC) is None


async def test_a_stranger_is_looked_up_once_per_window(clock: FakeClock) -> None:
    returning, data, _ = _returning(clock)
    for _ in range(5):
        assert await returning.voucher_for(MAC2) is None
    assert data.lookups == 1
    clock.advance(11)
    await returning.voucher_for(MAC2)
    assert data.lookups == 2


# -- the portal page -------------------------------------------------------------------


async def test_the_login_page_says_the_terms_button_is_a_trial() -> None:
    from tests.unit.test_portal_app import get, make_cfg, portal

    async with portal(make_cfg(trial_minutes=15)) as client:
        page = await (await get(client, "/")).text()
    assert "Coba gratis 15 menit per hari untuk perangkat ini." in page
    async with portal(make_cfg()) as client:  # positive control: no trial, no note
        page = await (await get(client, "/")).text()
    assert "Coba gratis" not in page


def test_an_unknown_trial_plan_names_the_field() -> None:
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        make_config(portal={"trial_minutes": 5, "trial_plan": "nope"})
    assert any(p.startswith("portal.trial_plan:") for p in err.value.problems), err.value
    with pytest.raises(ConfigError) as err:
        make_config(portal={"trial_minutes": 24 * 60 + 1})
    assert any(p.startswith("portal.trial_minutes") for p in err.value.problems)


async def test_old_trial_counts_are_forgotten(trial: Trial, clock: FakeClock) -> None:
    await trial.service.grant(MAC)
    clock.advance(7 * 86400)
    assert await trial.service.prune() == 0  # a week ago today: kept
    clock.advance(86400)
    assert await trial.service.prune() == 1
