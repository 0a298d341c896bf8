"""Running the diagnostics: the registry, deadlines, a missing config, and `desanet diag`'s
output and exit status (no network, no root: only checks that read local files run)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.diag import CHECKS, CheckResult, run_checks
from gateway.diag import cli as diag_cli
from gateway.diag.context import DiagContext
from gateway.diag.result import verdict

GOOD = """[site]
name = "T"
village = "T"
[network]
lan_interface = "br-lan"
wan_interface = "eth0"
lan_address = "10.42.0.1/24"
[dhcp]
range_start = "10.42.0.100"
range_end = "10.42.0.200"
"""


@pytest.fixture
def good(tmp_path: Path) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(GOOD)
    return str(path)


def test_registry_names_and_titles() -> None:
    assert list(CHECKS) == ["config", "daemon", "arp-scan", "rogue-dhcp", "dns", "http", "mqtt", "cert",
                            "speed", "wifi", "disk", "clock", "logs"]
    for name, check in CHECKS.items():
        assert check.name == name
        assert check.title("id") and check.title("en") and check.deadline > 0


async def test_unknown_check_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown check nope; the checks are: config, daemon"):
        await run_checks(["disk", "nope"])


async def test_results_come_in_registry_order(good: str) -> None:
    results = await run_checks(["disk", "config", "disk"], good)
    assert [r.name for r in results] == ["config", "disk"]
    assert results[0].status == "ok" and good in results[0].summary_en


async def test_missing_config_fails_its_check_and_skips_those_needing_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = str(tmp_path / "nowhere.toml")
    monkeypatch.setattr("gateway.cli_connect.DEFAULT_SOCKET", str(tmp_path / "none.sock"))
    config, dns, disk = await run_checks(["config", "dns", "disk"], missing)
    assert config.status == "fail" and "file not found" in config.summary_en
    assert config.details["problems"]
    assert dns.status == "skip" and "`config`" in dns.advice_en
    assert disk.status != "skip"  # reads the system, config or not
    [daemon] = await run_checks(["daemon"], missing)
    assert daemon.status == "fail"  # asked at the default socket: nobody there
    assert daemon.details["socket"] == str(tmp_path / "none.sock")


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    patched = dict(CHECKS)
    monkeypatch.setattr("gateway.diag.registry.CHECKS", patched)
    return patched  # type: ignore[return-value]


async def test_a_check_past_its_deadline_fails_and_the_others_still_report(
        good: str, registry: dict[str, object]) -> None:
    async def wedged(_: DiagContext) -> CheckResult:
        await asyncio.Event().wait()  # never set: a probe that hangs
        raise AssertionError

    registry["wifi"] = dataclasses.replace(CHECKS["wifi"], run=wedged, deadline=0.2)
    wifi, disk = await run_checks(["wifi", "disk"], good)
    assert wifi.status == "fail" and "0.2 s" in wifi.summary_en and "0.2 detik" in wifi.summary_id
    assert disk.name == "disk" and disk.status in ("ok", "warn", "fail")


async def test_a_check_that_crashes_is_a_fail_naming_the_error(
        good: str, registry: dict[str, object]) -> None:
    async def broken(_: DiagContext) -> CheckResult:
        raise RuntimeError("boom")

    registry["clock"] = dataclasses.replace(CHECKS["clock"], run=broken)
    [clock] = await run_checks(["clock"], good)
    assert clock.status == "fail" and clock.details["error"] == "RuntimeError: boom"


# -- the CLI ----------------------------------------------------------------------------


def test_cli_unknown_check_exits_2_listing_the_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diag", "rogue-dhcpp"]) == 2
    err = capsys.readouterr().err
    assert "unknown check rogue-dhcpp" in err and "rogue-dhcp, dns" in err


def test_cli_bad_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["diag", "--speed-target", "fast"])
    assert exc.value.code == 2
    assert '"fast" is not a rate' in capsys.readouterr().err


def test_cli_json_is_a_stable_list(good: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diag", "--config", good, "--json", "config", "wifi"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in data] == ["config", "wifi"]
    for r in data:
        assert set(r) == {"name", "status", "summary_id", "summary_en", "advice_id",
                          "advice_en", "details"}


def test_cli_exit_1_when_a_check_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('"10.42.0.1/24"', '"10.42.0.1"'))
    assert main(["diag", "--config", str(bad), "config", "--lang", "en"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["CHECK", "STATUS", "RESULT"]
    assert "network.lan_address" in out and "FAIL" in out


def results() -> list[CheckResult]:
    return [verdict("config", "ok", ("Konfigurasi valid.", "The config is valid.")),
            verdict("rogue-dhcp", "fail",
                    ("Ada server DHCP liar di LAN: 10.42.0.150 (02:d5:00:00:00:02). " * 3,
                     "Rogue DHCP server on the LAN: 10.42.0.150 (02:d5:00:00:00:02). " * 3),
                    ("Cari perangkat dengan MAC itu.", "Find the device with that MAC.")),
            verdict("wifi", "skip", ("Tidak ada Wi-Fi.", "No Wi-Fi."))]


def test_table_fits_a_serial_console_and_shows_advice_for_problems() -> None:
    text = diag_cli.render_table(results(), "id")
    lines = text.splitlines()
    assert all(len(x) <= 80 for x in lines)
    assert lines[0].split() == ["PEMERIKSAAN", "STATUS", "HASIL"]
    assert lines[1].split()[:2] == ["config", "baik"]
    assert "-> Cari perangkat dengan MAC itu." in text
    assert text.count("->") == 2  # advice under the fail and the skip, none under the ok
    assert lines[-1] == "Ringkasan: 1 baik, 1 GAGAL, 1 lewat"
    assert "Rogue" not in text and "Rogue DHCP" in diag_cli.render_table(results(), "en")


def test_table_lists_devices_and_dhcp_servers() -> None:
    devices = [{"ip": f"10.42.0.{100 + i}", "mac": f"02:d5:00:00:00:{i:02x}", "vendor": "random"}
               for i in range(25)]
    scan = verdict("arp-scan", "ok", ("25 perangkat.", "25 devices."), devices=devices)
    dhcp = verdict("rogue-dhcp", "fail", ("Liar.", "Rogue."), ("Cari.", "Find."), servers=[
        {"server": "192.168.1.1", "mac": "c8:3a:35:00:00:09", "rogue": True}])
    text = diag_cli.render_table([scan, dhcp], "en")
    assert "10.42.0.100     02:d5:00:00:00:00  random MAC" in text
    assert "02:d5:00:00:00:00  MAC acak" in diag_cli.render_table([scan], "id")
    assert "10.42.0.124" not in text and "(+5 more; --json lists them all)" in text
    assert "192.168.1.1     c8:3a:35:00:00:09  ROGUE" in text
    assert "LIAR" in diag_cli.render_table([dhcp], "id")
    assert all(len(x) <= 80 for x in text.splitlines())


def test_long_paths_are_not_broken_at_hyphens() -> None:
    r = verdict("logs", "ok", ("Tidak ada galat (/run/desanet-lab/dgx/gateway.log).",
                               "No errors in the last 20 lines (/run/desanet-lab/dgx/gateway.log)."))
    assert "/run/desanet-lab/dgx/gateway.log" in diag_cli.render_table([r], "en", width=60)


@pytest.mark.parametrize("env, lang", [
    ({}, "id"), ({"LANG": "C.UTF-8"}, "id"), ({"LANG": "en_US.UTF-8"}, "en"),
    ({"LANG": "en_US.UTF-8", "LC_ALL": "id_ID.UTF-8"}, "id"),
    ({"LANGUAGE": "en", "LANG": "id_ID.UTF-8"}, "en"),
])
def test_language_from_the_environment(env: dict[str, str], lang: str) -> None:
    assert diag_cli.language_from_env(env) == lang


def test_exit_status() -> None:
    assert diag_cli.exit_status(results()) == 1
    assert diag_cli.exit_status(results()[::2]) == 0


# -- probes in daemon threads -------------------------------------------------------------


async def test_in_thread_returns_and_raises() -> None:
    from gateway.diag.threads import in_thread

    assert await in_thread(sum, [1, 2, 3]) == 6
    with pytest.raises(ZeroDivisionError):
        await in_thread(lambda: 1 / 0)


def test_a_wedged_probe_does_not_hold_the_process_at_exit() -> None:
    """The check gives up at its deadline and the process still ends (a default-executor
    thread would be waited for by asyncio.run, forever)."""
    import subprocess
    import sys

    code = ("import asyncio, threading\n"
            "from gateway.diag.threads import in_thread\n"
            "async def main():\n"
            "    try:\n"
            "        async with asyncio.timeout(0.1):\n"
            "            await in_thread(threading.Event().wait)\n"
            "    except TimeoutError:\n"
            "        print('gave up')\n"
            "asyncio.run(main())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert (proc.returncode, proc.stdout) == (0, "gave up\n"), proc.stderr


# -- the LAN checks without root, or without the interface --------------------------------


async def test_lan_checks_skip_without_root(good: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    scan, dhcp = await run_checks(["arp-scan", "rogue-dhcp"], good)
    assert scan.status == dhcp.status == "skip"
    assert "sudo desanet diag" in scan.advice_en and "root" in dhcp.summary_id


async def test_lan_checks_name_a_missing_interface(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)
    path = tmp_path / "gateway.toml"
    path.write_text(GOOD.replace('"br-lan"', '"nosuchlan0"'))
    scan, dhcp = await run_checks(["arp-scan", "rogue-dhcp"], str(path))
    for r in (scan, dhcp):
        assert r.status == "fail" and "nosuchlan0" in r.summary_en and "nosuchlan0" in r.summary_id
        assert "network.lan_interface" in r.advice_en


def test_the_packaged_oui_list_names_a_maker() -> None:
    from gateway.diag import oui

    if not any(p.is_file() for p in oui.OUI_FILES):
        pytest.skip("needs Debian's ieee-data (bash .ci/setup installs it)")
    assert "Raspberry Pi" in oui.vendors(["b8:27:eb:12:34:56"])["b8:27:eb:12:34:56"]
