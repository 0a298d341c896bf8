"""`desanet vouchers ...` end to end: the CLI, the real control API and core, the fake store."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway import cli
from gateway.timefmt import iso
from tests.unit.conftest import make_config
from tests.unit.corekit import NOW, Core, build_core


@pytest.fixture
def core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Core]:
    cfg = make_config(
        site={"wifi_ssid": "Hotspot Desa Uji", "wifi_password": "rahasia123"},
        shaping={"enabled": True, "plans": {"school": {"down": "4mbit", "up": "1mbit",
                                                       "label_id": "Paket Sekolah"}}},
    )
    c = build_core(tmp_path, cfg)
    sock = os.path.join(tempfile.mkdtemp(prefix="dn-sheet-", dir="/tmp"), "c.sock")
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(c.control_app())
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.UnixSite(runner, sock).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(5)
    monkeypatch.setenv("DESANET_SOCKET", sock)
    yield c
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def stored(core: Core) -> list[Any]:
    return asyncio.run(core.store.vouchers())


def test_create_a_named_batch_list_and_print_it(core: Core,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "vouchers", "create", "--count", "3", "--duration", "1d",
                       "--plan", "school", "--name", "Posyandu Mei", "--json")
    assert code == 0
    made = json.loads(out)
    batch = made["batch"]
    assert batch.startswith("posyandu-mei-")
    assert [(v["serial"], v["batch_name"]) for v in made["vouchers"]] == [
        (n, "Posyandu Mei") for n in (1, 2, 3)]

    code, out, _ = run(capsys, "vouchers", "list", "--json")
    rows = json.loads(out)["vouchers"]
    assert [(r["serial"], r["batch_name"], r["batch"]) for r in rows] == [
        (n, "Posyandu Mei", batch) for n in (1, 2, 3)]
    # JSON keeps epoch seconds and adds ISO 8601 in the site's zone (default WIB)
    assert rows[0]["created"] == NOW and rows[0]["created_iso"] == iso(NOW, "Asia/Jakarta")
    assert rows[0]["created_iso"].endswith("+07:00")
    assert (rows[0]["expires"], rows[0]["expires_iso"], rows[0]["first_used_iso"]) == (None,) * 3
    asyncio.run(core.store.redeem_voucher(rows[0]["code"], "02:00:00:00:00:0a", NOW + 60))
    used = json.loads(run(capsys, "vouchers", "list", "--json")[1])["vouchers"][0]
    assert (used["expires"], used["expires_iso"]) == (NOW + 60 + 86400,
                                                      iso(NOW + 60 + 86400, "Asia/Jakarta"))
    code, out, _ = run(capsys, "vouchers", "list")
    first = made["vouchers"][1]["code"]
    line = next(x for x in out.splitlines() if x.startswith(first))
    assert line.split()[-4:] == ["2", batch, "(Posyandu", "Mei)"]

    sheet = Path(tempfile.mkdtemp(prefix="dn-sheet-")) / "v.html"
    code, out, _ = run(capsys, "vouchers", "print", batch, "-o", str(sheet))
    assert code == 0 and "wrote 2 voucher(s)" in out  # the unused ones
    html = sheet.read_text(encoding="utf-8")
    # the daemon's config reached the sheet: Wi-Fi, plan label, portal address
    assert html.count('class="card"') == 2 and html.count("<svg") == 4
    assert "Hotspot Desa Uji" in html and "Kata sandi Wi-Fi: rahasia123" in html
    assert "Paket: Paket Sekolah" in html and "Posyandu Mei · No. 3" in html
    assert "Buka http://portal.desa/" in html and '<html lang="id">' in html  # site language
    code, out, _ = run(capsys, "vouchers", "print", "--batch", batch, "--lang", "en")
    assert code == 0 and "Plan: Paket Sekolah" in out and "Scan for Wi-Fi" in out
    code, _, err = run(capsys, "vouchers", "print", batch, "--batch", "other")
    assert code == 2 and "BATCH" in err


@pytest.mark.parametrize("bad", ["x" * 65, "Posyandu\x1b[31mMei", "Mei\nRT 3", "\x00"])
def test_a_bad_name_is_refused_and_nothing_is_created(core: Core, bad: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "vouchers", "create", "--count", "2", "--duration", "1h",
                       "--name", bad)
    assert code == 2
    assert "field name:" in err and "batch name" in err and "\x1b" not in err
    assert stored(core) == []
    # positive control: the same command with a good name works
    assert run(capsys, "vouchers", "create", "--duration", "1h", "--name", "RT 3")[0] == 0
    assert [v.batch_name for v in stored(core)] == ["RT 3"]


def test_the_daemon_refuses_a_bad_name_too(core: Core) -> None:
    from gateway.control.client import ControlClient
    from gateway.errors import ControlError

    client = ControlClient(os.environ["DESANET_SOCKET"])
    with pytest.raises(ControlError) as info:
        client.request("POST", "/v1/vouchers", {"duration": "1h", "name": "a\tb"})
    assert info.value.kind == "invalid" and "name" in str(info.value)
    assert stored(core) == []


def test_printing_an_unknown_batch_is_an_error(core: Core,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "vouchers", "print", "nope")
    assert code == 1 and out == "" and "no batch named 'nope'" in err


def test_nothing_left_to_print_is_an_error(core: Core, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "vouchers", "print")
    assert code == 1 and out == "" and "there are no unused vouchers" in err
    made = json.loads(run(capsys, "vouchers", "create", "--duration", "1h", "--json")[1])
    run(capsys, "vouchers", "revoke", made["vouchers"][0]["code"])
    code, out, err = run(capsys, "vouchers", "print", made["batch"], "-o", str(tmp_path / "s"))
    assert code == 1 and f"batch {made['batch']!r} has no unused vouchers" in err
    assert not (tmp_path / "s").exists()


def test_the_sheet_file_is_owner_only_and_a_bad_path_is_a_clean_error(
        core: Core, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "vouchers", "create", "--duration", "1h")
    code, _, _ = run(capsys, "vouchers", "print", "-o", str(tmp_path / "sheet.html"))
    assert code == 0 and (tmp_path / "sheet.html").stat().st_mode & 0o077 == 0
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "vouchers", "print", "-o", str(tmp_path / "file" / "sheet.html"))
    assert code == 1 and "cannot write" in err and "Traceback" not in err
