"""A gateway.toml change applied while the gateway runs: only what changed is reloaded.

desanet-system-apply.path starts `desanet system render --reload` after every
write of gateway.toml (the wizard, `desanet config apply`, the daemon's rollback).
What villagers depend on: a portal text never bounces the uplink or the Wi-Fi, a
WAN change does reach systemd-networkd, and a rollback to the old file puts the
old network back. The configs are test_system_render's golden cases."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import parse_config_text
from gateway.system.cli import write_files
from gateway.system.reload import HOSTAPD_UNIT, PPPOE_UNIT, reload_commands, run_commands
from gateway.system.render import HOSTAPD_CONF, NETWORKD_DIR, PPPOE_OPTIONS, render
from tests.unit.test_system_render import GOLDEN, config_text

WAN = f"{NETWORKD_DIR}/10-desanet-wan.network"
LAN = f"{NETWORKD_DIR}/20-desanet-lan.network"


def files_of(text: str) -> dict[str, str]:
    return render(parse_config_text(text), "wlan0")


def with_terms(text: str, terms: str) -> str:
    return text + f'\n[portal]\nterms_id = "{terms}"\nterms_en = "{terms}"\n'


def test_rendering_the_same_config_twice_changes_nothing(tmp_path: Path) -> None:
    files = files_of(config_text("dhcp_bridge_open"))
    first = write_files(tmp_path, files)
    # The first run writes exactly the golden files of that case.
    golden = GOLDEN / "dhcp_bridge_open"
    assert first == sorted(str(p.relative_to(golden)) for p in golden.rglob("*") if p.is_file())
    mtimes = {rel: (tmp_path / rel).stat().st_mtime_ns for rel in files}
    assert write_files(tmp_path, files) == []
    assert {rel: (tmp_path / rel).stat().st_mtime_ns for rel in files} == mtimes  # not rewritten
    assert reload_commands([], files, "eth0") == []


def test_a_portal_text_changes_no_rendered_file(tmp_path: Path) -> None:
    text = config_text("dhcp_bridge_open")
    write_files(tmp_path, files_of(with_terms(text, "Syarat lama")))
    files = files_of(with_terms(text, "Syarat baru: maksimal 2 jam"))
    assert write_files(tmp_path, files) == []
    assert reload_commands([], files, "eth0") == []  # the WAN and the Wi-Fi stay up


def test_a_wan_method_change_changes_the_networkd_files_only(tmp_path: Path) -> None:
    dhcp = config_text("dhcp_bridge_open")
    write_files(tmp_path, files_of(dhcp))
    static = dhcp.replace('lan_interface = "br-lan"',
                          'lan_interface = "br-lan"\nwan_address = "static"\n'
                          'wan_static_address = "192.0.2.10/24"\n'
                          'wan_static_gateway = "192.0.2.1"')
    files = files_of(static)
    changed = write_files(tmp_path, files)
    assert changed == [WAN]  # not the LAN, not hostapd.conf
    assert "Address=192.0.2.10/24" in (tmp_path / WAN).read_text()
    assert reload_commands(changed, files, "eth0") == [
        ["networkctl", "reload"], ["networkctl", "reconfigure", "eth0"]]
    # The daemon's rollback writes the old gateway.toml back: the old WAN returns.
    back = write_files(tmp_path, files_of(dhcp))
    assert back == [WAN] and "DHCP=ipv4" in (tmp_path / WAN).read_text()


def test_pppoe_on_and_off_starts_and_stops_pppd(tmp_path: Path) -> None:
    write_files(tmp_path, files_of(config_text("dhcp_bridge_open")))
    pppoe = config_text("pppoe_dns")
    files = files_of(pppoe)
    changed = write_files(tmp_path, files)
    # pppoe_dns has no Wi-Fi name: the access point's file goes too.
    assert set(changed) == {WAN, PPPOE_OPTIONS, HOSTAPD_CONF,
                            f"{NETWORKD_DIR}/11-desanet-ppp.network"}
    assert reload_commands(changed, files, "eth0") == [
        ["networkctl", "reload"], ["networkctl", "reconfigure", "eth0"],
        ["systemctl", "restart", PPPOE_UNIT], ["systemctl", "stop", HOSTAPD_UNIT]]
    # Only the ISP's password changes: pppd restarts, the links are not touched.
    files = files_of(pppoe.replace('pppoe_username = "desa"',
                                   'pppoe_username = "desa"\npppoe_password = "baru"'))
    changed = write_files(tmp_path, files)
    assert changed == [PPPOE_OPTIONS]
    assert reload_commands(changed, files, "eth0") == [["systemctl", "restart", PPPOE_UNIT]]
    # Back to DHCP: pppd stops.
    files = files_of(config_text("dhcp_bridge_open"))
    changed = write_files(tmp_path, files)
    assert ["systemctl", "stop", PPPOE_UNIT] in reload_commands(changed, files, "eth0")
    assert ["systemctl", "restart", HOSTAPD_UNIT] in reload_commands(changed, files, "eth0")


def test_a_wifi_passphrase_change_restarts_hostapd_only(tmp_path: Path) -> None:
    text = config_text("static_wpa_wlan")
    write_files(tmp_path, files_of(text))
    files = files_of(text.replace("sukamaju2024", "rahasiabaru"))
    changed = write_files(tmp_path, files)
    assert changed == [HOSTAPD_CONF]
    assert reload_commands(changed, files, "eth0") == [["systemctl", "restart", HOSTAPD_UNIT]]


def test_a_mode_change_alone_is_a_change(tmp_path: Path) -> None:
    files = files_of(config_text("static_wpa_wlan"))
    write_files(tmp_path, files)
    (tmp_path / HOSTAPD_CONF).chmod(0o644)  # the passphrase readable by all: rewrite it
    assert write_files(tmp_path, files) == [HOSTAPD_CONF]
    assert (tmp_path / HOSTAPD_CONF).stat().st_mode & 0o777 == 0o600


def test_run_commands_runs_all_and_reports_a_failure(capsys: pytest.CaptureFixture[str]) -> None:
    ran: list[list[str]] = []

    def runner(argv: Sequence[str]) -> int:
        ran.append(list(argv))
        return 1 if argv[0] == "networkctl" else 0

    commands = [["networkctl", "reload"], ["systemctl", "restart", HOSTAPD_UNIT]]
    assert run_commands(commands, runner) == 1
    assert ran == commands  # a networkd failure still lets the Wi-Fi change through
    assert "networkctl reload: exit 1" in capsys.readouterr().err
    assert run_commands(commands, lambda argv: 0) == 0  # positive control


def test_cli_changed_only_prints_what_changed(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(config_text("dhcp_bridge_open"))
    root = tmp_path / "root"
    argv = ["system", "render", "--root", str(root), "--config", str(cfg),
            "--wifi-interface", "wlan0", "--changed-only"]
    assert main(argv) == 0
    assert f"{root / WAN}" in capsys.readouterr().out.split()
    assert main(argv) == 0
    assert capsys.readouterr().out == ""  # nothing changed, nothing printed
    cfg.write_text(with_terms(config_text("dhcp_bridge_open"), "Teks portal baru"))
    assert main(argv) == 0
    assert capsys.readouterr().out == ""
    cfg.write_text(config_text("dhcp_bridge_open").replace('lan_address = "10.42.0.1/24"',
                                                           'lan_address = "10.43.0.1/24"')
                   .replace("10.42.0.", "10.43.0."))
    assert main(argv) == 0
    assert capsys.readouterr().out.split() == [str(root / LAN)]
    # Without --changed-only every rendered file is listed, as before.
    assert main(argv[:-1]) == 0
    assert str(root / HOSTAPD_CONF) in capsys.readouterr().out.split()


def test_cli_reload_runs_the_commands_for_the_changes(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    ran: list[list[str]] = []

    def fake_run(argv: Sequence[str]) -> int:
        ran.append(list(argv))
        return 0

    monkeypatch.setattr("gateway.system.reload._run", fake_run)
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(config_text("dhcp_bridge_open"))
    argv = ["system", "render", "--root", str(tmp_path / "root"), "--config", str(cfg),
            "--wifi-interface", "wlan0", "--reload"]
    assert main(argv) == 0
    assert ["networkctl", "reload"] in ran and ["systemctl", "restart", HOSTAPD_UNIT] in ran
    ran.clear()
    cfg.write_text(with_terms(config_text("dhcp_bridge_open"), "Teks baru"))
    assert main(argv) == 0
    assert ran == []  # a portal text: nothing bounced
    assert "as gateway.toml says" in capsys.readouterr().out


def test_a_change_made_while_reloading_is_applied_too(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # systemd merges the path unit's start into the running apply; the run itself must
    # notice a gateway.toml written meanwhile (e.g. a rollback right after an apply).
    cfg = tmp_path / "gateway.toml"
    dhcp = config_text("dhcp_bridge_open")
    static = dhcp.replace('lan_interface = "br-lan"',
                          'lan_interface = "br-lan"\nwan_address = "static"\n'
                          'wan_static_address = "192.0.2.10/24"\n'
                          'wan_static_gateway = "192.0.2.1"')
    root = tmp_path / "root"
    write_files(root, files_of(dhcp))
    cfg.write_text(static)
    ran: list[list[str]] = []

    def fake_run(argv: Sequence[str]) -> int:
        ran.append(list(argv))
        if len(ran) == 1:
            cfg.write_text(dhcp)  # the old file comes back while networkd reloads
        return 0

    monkeypatch.setattr("gateway.system.reload._run", fake_run)
    assert main(["system", "render", "--root", str(root), "--config", str(cfg),
                 "--wifi-interface", "wlan0", "--reload"]) == 0
    assert ran.count(["networkctl", "reconfigure", "eth0"]) == 2  # static, then DHCP again
    assert "DHCP=ipv4" in (root / WAN).read_text()
