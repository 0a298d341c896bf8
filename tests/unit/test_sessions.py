from __future__ import annotations

from gateway.core.session_rules import idle_sessions, new_session, stale_kernel_entries
from gateway.model import Session, Voucher
from tests.unit.conftest import make_config

NOW = 1_700_000_000


def test_terms_session_uses_configured_length() -> None:
    cfg = make_config(portal={"session_length": "2h", "idle_timeout": "10m"})
    s = new_session(cfg, "02:00:00:00:00:01", "10.42.0.5", NOW, "terms")
    assert (s.expires - NOW, s.idle_timeout, s.voucher) == (7200, 600, None)


def test_voucher_clock_starts_at_first_use() -> None:
    cfg = make_config()
    v = Voucher("ABCDE-FGHJK", 3600, "school", NOW - 100, "b1", first_used=NOW - 600)
    s = new_session(cfg, "02:00:00:00:00:01", "10.42.0.5", NOW, "voucher", voucher=v)
    assert s.expires == NOW + 3000
    assert s.plan == "school"
    assert s.voucher == "ABCDE-FGHJK"


def test_idle_sessions() -> None:
    young = Session("02:00:00:00:00:01", "10.42.0.1", NOW - 10, NOW + 100, 60, "terms")
    old_active = Session("02:00:00:00:00:02", "10.42.0.2", NOW - 999, NOW + 100, 60, "terms")
    old_idle = Session("02:00:00:00:00:03", "10.42.0.3", NOW - 999, NOW + 100, 60, "terms")
    active = {(old_active.mac, old_active.ip): 30}
    assert idle_sessions([young, old_active, old_idle], active, NOW) == [old_idle]


def test_stale_kernel_entries() -> None:
    s = Session("02:00:00:00:00:01", "10.42.0.1", NOW, NOW + 100, 60, "terms")
    kernel = [(s.mac, s.ip), ("02:00:00:00:00:09", "10.42.0.9"), (s.mac, "10.42.0.77")]
    assert stale_kernel_entries([s], kernel) == [("02:00:00:00:00:09", "10.42.0.9"),
                                                 (s.mac, "10.42.0.77")]
