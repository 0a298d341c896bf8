"""The wizard's Wi-Fi country and WAN address method (Step 9), keys only, against the
real control API on a temporary socket (the fixtures of test_tui_wizard.py): the fields
a method needs appear only for it, each problem is `desanet config check`'s line under
its field, and a PPPoE password never shows on the screen or in the diff."""

from __future__ import annotations

import shutil
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from textual.pilot import Pilot

from gateway.control.aclient import AsyncControlClient
from gateway.tui import i18n
from gateway.tui.wizard import SetupWizard
from gateway.tui.wizard_fields import BY_PATH, would_be_text
from tests.unit.corekit import Core, build_core
from tests.unit.test_tui_wizard import EXAMPLE, config_check_lines, login_session
from tests.unit.wizardkit import WizardApp, error_text, focus_by_keys, retype, served, until

STATIC = ("network.wan_static_address", "network.wan_static_gateway", "network.wan_dns")
PPPOE = ("network.pppoe_username", "network.pppoe_password", "network.wan_dns")


@pytest.fixture(autouse=True)
def indonesian() -> None:
    i18n.set_language("id")


@pytest.fixture
async def core(tmp_path: Path) -> Core:
    c = build_core(tmp_path, text=EXAMPLE.read_text(encoding="utf-8"))
    await c.start()
    return c


@pytest.fixture
async def client(core: Core) -> AsyncIterator[AsyncControlClient]:
    async with served(core) as c:
        yield c


def shown(wizard: SetupWizard, path: str) -> bool:
    return not wizard.query_one(f"#{BY_PATH[path].widget_id}-row").has_class("wz-hidden")


async def choose_wan(pilot: Pilot[None], wizard: SetupWizard, method: str) -> None:
    """Pick the WAN method in its Select with arrows (dhcp, static, pppoe, in that order)."""
    await focus_by_keys(pilot, BY_PATH["network.wan_address"].widget_id)
    order = ("dhcp", "static", "pppoe")
    steps = order.index(method) - order.index(wizard.values["network.wan_address"])
    await pilot.press("enter", *(["down"] * steps if steps > 0 else ["up"] * -steps), "enter")
    await until(pilot, lambda: wizard.values["network.wan_address"] == method, method)


async def shows_check_line(pilot: Pilot[None], wizard: SetupWizard, tmp_path: Path,
                           path: str) -> None:
    """The field shows the line `desanet config check` prints for the would-be file."""
    lines = config_check_lines(tmp_path, would_be_text(wizard.base, wizard.start, wizard.values))
    mine = [line for line in lines if line.startswith((path + ":", path + "["))]
    assert mine, lines
    await until(pilot, lambda: mine[0] in error_text(wizard, path), f"the line under {path}")


async def test_static_wan_and_country_invalid_then_valid_then_applied(
    core: Core, client: AsyncControlClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    login_session(monkeypatch, 7)
    version = core.config.version
    app = WizardApp(client)
    async with app.run_test(size=(80, 24)) as pilot:
        wizard = app.wizard
        await until(pilot, lambda: not wizard._loading, "the running config")
        assert wizard.values["network.wan_address"] == "dhcp"
        assert wizard.values["site.wifi_country"] == "ID"
        assert not any(shown(wizard, p) for p in STATIC + PPPOE)
        # hidden fields take no focus: Tab goes from the method straight to the LAN
        await focus_by_keys(pilot, BY_PATH["network.wan_address"].widget_id)
        await pilot.press("tab")
        assert app.focused is not None
        assert app.focused.id == BY_PATH["network.lan_interface"].widget_id

        await retype(pilot, "site.wifi_country", "id")
        await shows_check_line(pilot, wizard, tmp_path, "site.wifi_country")
        await choose_wan(pilot, wizard, "static")
        assert all(shown(wizard, p) for p in STATIC)
        assert not shown(wizard, "network.pppoe_username")
        await shows_check_line(pilot, wizard, tmp_path, "network.wan_static_address")
        await shows_check_line(pilot, wizard, tmp_path, "network.wan_static_gateway")
        await retype(pilot, "network.wan_static_address", "192.0.2.10/24")
        await retype(pilot, "network.wan_static_gateway", "198.51.100.1")
        await shows_check_line(pilot, wizard, tmp_path, "network.wan_static_gateway")
        assert "192.0.2.0/24" in error_text(wizard, "network.wan_static_gateway")
        await retype(pilot, "network.wan_dns", "1.1.1.1, dns")
        await shows_check_line(pilot, wizard, tmp_path, "network.wan_dns")
        await pilot.press("f2")  # refused while problems remain: nothing applied
        await pilot.pause()
        assert wizard.step == "form" and core.config.version == version

        await retype(pilot, "site.wifi_country", "MY")
        await retype(pilot, "network.wan_static_gateway", "192.0.2.1")
        await retype(pilot, "network.wan_dns", "1.1.1.1, 8.8.8.8")
        await until(pilot, lambda: not wizard.problems, "no problems")
        assert error_text(wizard, "network.wan_static_gateway") == ""
        await pilot.press("f2")
        await until(pilot, lambda: wizard.step == "review", "the review")
        assert wizard.diff == [
            "site.wifi_country: 'ID' -> 'MY'", "network.wan_address: 'dhcp' -> 'static'",
            "network.wan_static_address: added '192.0.2.10/24'",
            "network.wan_static_gateway: added '192.0.2.1'",
            "network.wan_dns: [] -> ['1.1.1.1', '8.8.8.8']"], wizard.diff
        await pilot.press("f3")
        await until(pilot, lambda: wizard.step == "waiting", "the question to keep it")
        await pilot.press("enter")
        await until(pilot, lambda: wizard.step == "done", "the apply")
    net = core.cfg.network
    assert (net.wan_address, str(net.wan_static_address), str(net.wan_static_gateway)) == \
        ("static", "192.0.2.10/24", "192.0.2.1")
    assert [str(a) for a in net.wan_dns] == ["1.1.1.1", "8.8.8.8"]
    assert core.cfg.site.wifi_country == "MY" and core.config.trial is None


async def test_pppoe_password_never_shows_and_a_hidden_method_is_not_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.toml"
    shutil.copy(EXAMPLE, path)
    secret = "SandiRahasiaISP"
    app = WizardApp(None, str(path))
    async with app.run_test(size=(80, 24)) as pilot:
        wizard = app.wizard
        await until(pilot, lambda: not wizard._loading, "the file")
        await choose_wan(pilot, wizard, "pppoe")
        assert all(shown(wizard, p) for p in PPPOE)
        assert not shown(wizard, "network.wan_static_address")
        await shows_check_line(pilot, wizard, tmp_path, "network.pppoe_username")
        await retype(pilot, "network.pppoe_username", "desa@isp")
        await retype(pilot, "network.pppoe_password", secret)
        await until(pilot, lambda: not wizard.problems, "no problems")
        assert secret not in app.export_screenshot()
        await pilot.press("f2")
        await until(pilot, lambda: wizard.step == "review", "the review")
        assert "network.pppoe_password: (changed)" in wizard.diff, wizard.diff
        assert secret not in app.export_screenshot()
        assert not any(secret in line for line in wizard.diff)

        # Back to DHCP before applying: the PPPoE fields hide and are not written.
        await pilot.press("escape")
        await until(pilot, lambda: wizard.step == "form", "the form")
        await choose_wan(pilot, wizard, "dhcp")
        assert not any(shown(wizard, p) for p in PPPOE)
        await pilot.press("f2")
        await until(pilot, lambda: wizard.step == "review", "the review")
        assert wizard.diff == [], wizard.diff
        await pilot.press("escape")
        await until(pilot, lambda: wizard.step == "form", "the form")

        await choose_wan(pilot, wizard, "pppoe")  # the typed values were kept in the form
        await pilot.press("f2")
        await until(pilot, lambda: wizard.step == "review", "the review")
        await pilot.press("f3")
        await until(pilot, lambda: wizard.step == "done", "the save")
    net = tomllib.loads(path.read_text(encoding="utf-8"))["network"]
    assert (net["wan_address"], net["pppoe_username"], net["pppoe_password"]) == \
        ("pppoe", "desa@isp", secret)
    assert "wan_static_address" not in net
