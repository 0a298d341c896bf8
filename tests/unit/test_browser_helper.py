"""The pure parts of the integration tests' phone browser (tests/integration/browser.py)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from desanet_lab import plan as p

pytest.importorskip("selenium", reason="needs selenium (a dev extra: pip install -e '.[dev]')")

from tests.integration import browser


@pytest.mark.parametrize(("text", "literal"), [
    ("Lanjut ke internet.lab", "'Lanjut ke internet.lab'"),
    ("Jum'at", '"Jum\'at"'),
    ("say \"it's\"", "concat('say \"it', \"'\", 's\"')"),
])
def test_xpath_literal_quotes_any_text(text: str, literal: str) -> None:
    assert browser.xpath_literal(text) == literal


def test_names_kept_from_dns_are_never_lab_names() -> None:
    # The lab serves the OS connectivity checks (e.g. connectivitycheck.gstatic.com,
    # clients3.google.com): hiding one of them from the browser would change what it sees.
    lab_names = [*p.CONNCHECK_HOSTS, p.INTERNET_HOST, p.GOVERNMENT_HOST, p.DUKCAPIL_HOST,
                 p.OUTSIDE_HOST, p.PORTAL_HOSTNAME, "layanan.desa"]
    for pattern in browser.SERVICE_HOSTS_NOT_RESOLVED:
        assert not [n for n in lab_names if fnmatch.fnmatch(n, pattern)], pattern
    rules = next(f for f in browser.CHROMIUM_FLAGS if f.startswith("--host-resolver-rules="))
    assert "MAP accounts.google.com ~NOTFOUND" in rules


def test_the_phone_is_small_android_and_indonesian() -> None:
    assert (browser.WIDTH, browser.HEIGHT) == (360, 640)
    assert browser.PREFS["intl.accept_languages"].startswith("id-ID")
    assert "--lang=id-ID" in browser.CHROMIUM_FLAGS and "--no-proxy-server" in browser.CHROMIUM_FLAGS
    ua = browser.android_user_agent("/bin/echo")  # prints no version: a default is used
    assert "Android" in ua and "Mobile Safari" in ua and "Chrome/" in ua


def test_artifacts_go_to_the_configured_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(browser.ARTIFACTS_ENV, raising=False)
    assert browser.artifacts_dir(tmp_path, "x") == tmp_path / "browser"
    monkeypatch.setenv(browser.ARTIFACTS_ENV, str(tmp_path / "ci"))
    got = browser.artifacts_dir(tmp_path, "test_online[a/b]")
    assert got == tmp_path / "ci" / "test_online_a_b_" and got.is_dir()
