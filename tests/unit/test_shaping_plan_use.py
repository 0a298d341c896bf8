"""Use per shaping plan (ShapingService.plan_use_json -> telemetry "pu"/"pd"): each counter
sample adds what each client class moved to its session's plan; totals only grow while
classes come and go with sessions, and nothing of a client but its plan's total leaves."""

from __future__ import annotations

import asyncio
import dataclasses

from gateway.clock import FakeClock
from gateway.model import Session
from gateway.shaping.fake import FakeShaper
from gateway.shaping.plan import client_minor
from gateway.shaping.service import ShapingService
from gateway.telemetry.metrics import Readings, Reporter, SystemReadings, sample
from tests.unit.conftest import make_config

CFG = make_config(shaping={"enabled": True, "uplink_down": "20mbit", "uplink_up": "5mbit",
                           "plans": {"school": {"down": "4mbit", "up": "1mbit"}}})
A = Session("02:00:00:00:00:0a", "10.42.0.110", 0, 10**10, 600, "voucher", "V1", "school")
B = Session("02:00:00:00:00:0b", "10.42.0.111", 0, 10**10, 600, "terms", None, None)


def run(shaper: FakeShaper, svc: ShapingService, moves: list[dict[str, tuple[int, int, int]]]) -> None:
    """Each step sets the clients' counters (ip -> (down bytes, up bytes, drops)) and samples."""
    async def go() -> None:
        for counters in moves:
            for ip, (down, up, drops) in counters.items():
                minor = client_minor(CFG, ip)
                shaper.set_stats("br-lan", minor, bytes=down, drops=drops)
                shaper.set_stats("wan0", minor, bytes=up)
            await svc.sample()
    asyncio.run(go())


def service() -> tuple[FakeShaper, ShapingService]:
    shaper = FakeShaper()
    svc = ShapingService(lambda: CFG, shaper, FakeClock())
    asyncio.run(svc.converge(CFG, [A, B]))
    return shaper, svc


def test_each_sample_adds_what_each_class_moved_to_its_plan() -> None:
    shaper, svc = service()
    run(shaper, svc, [{A.ip: (1000, 100, 1), B.ip: (50, 5, 0)},   # the base: not counted
                      {A.ip: (4000, 300, 3), B.ip: (250, 15, 0)},
                      {A.ip: (9000, 700, 3), B.ip: (250, 15, 4)}])
    assert svc.plan_use_json() == {
        "school": {"down_bytes": 8000, "up_bytes": 600, "drops": 2},
        "default": {"down_bytes": 200, "up_bytes": 10, "drops": 4}}
    assert svc.status_json()["plans"] == svc.plan_use_json()


def test_totals_keep_growing_when_a_class_is_recreated_or_its_session_ends() -> None:
    shaper, svc = service()
    run(shaper, svc, [{A.ip: (1000, 0, 0)}, {A.ip: (3000, 0, 0)},
                      {A.ip: (500, 0, 0)}])  # class re-created: its new count is new use
    assert svc.plan_use_json()["school"]["down_bytes"] == 2500
    asyncio.run(svc.remove(A))
    run(shaper, svc, [{A.ip: (900, 0, 0)}])  # a leftover count of a class no session owns
    assert svc.plan_use_json()["school"]["down_bytes"] == 2500


def test_a_plan_change_counts_later_use_to_the_new_plan() -> None:
    shaper, svc = service()
    run(shaper, svc, [{B.ip: (0, 0, 0)}, {B.ip: (100, 0, 0)}])
    asyncio.run(svc.add(dataclasses.replace(B, plan="school")))
    run(shaper, svc, [{B.ip: (400, 0, 0)}])
    use = svc.plan_use_json()
    assert use["default"]["down_bytes"] == 100 and use["school"]["down_bytes"] == 300


def test_telemetry_reports_plan_totals_and_never_a_plan_named_like_an_address() -> None:
    shaping = {"enabled": True, "directions": {}, "plans": {
        "school": {"down_bytes": 8000, "up_bytes": 600, "drops": 2},
        "10.42.0.110": {"down_bytes": 1, "up_bytes": 1, "drops": 1},
        "02:00:00:00:00:0a": {"down_bytes": 1, "up_bytes": 1, "drops": 1}}}
    s = sample(Readings(SystemReadings(), {"shaping": shaping}))
    assert {k: v for k, v in s.items() if k[:3] in ("pu/", "pd/")} == {"pu/school": 8600,
                                                                      "pd/school": 2}
    reporter = Reporter(full_every=1)
    reporter.add(s)
    assert reporter.report()["pu"] == {"school": 0}  # a counter: its increase since the base
    later = {**shaping, "plans": {"school": {"down_bytes": 9000, "up_bytes": 700, "drops": 5}}}
    reporter.add(sample(Readings(SystemReadings(), {"shaping": later})))
    body = reporter.report()
    assert body is not None and body["pu"] == {"school": 1100} and body["pd"] == {"school": 3}
