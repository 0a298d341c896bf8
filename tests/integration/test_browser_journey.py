"""The villager's journey in a real phone browser (headless Chromium in a lab client).

Each test drives one Chromium (tests/integration/browser.py: 360x640, Android
user agent, ``Accept-Language: id-ID``) through the journey of issue #8 and
keeps a screenshot of every step (the artifacts directory is printed). The
assertions are on what a villager sees (texts in Bahasa Indonesia) and on
URLs; every wait is a condition with a deadline.

- online: an http site -> the portal -> terms -> "Lanjut ke ..." -> the site
  itself (not the portal again); logout; a wrong then a right voucher; logout.
- offline: the catalog online; the uplink cut -> an http site shows
  "Internet desa sedang terputus", the catalog says offline, a stored service
  page carries the offline banner, the service's form opens and a double
  submission is queued once; the uplink back -> delivered once.

Each test builds its own lab (a few seconds), so one cannot leave the other's
gateway offline or a client logged in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from desanet_lab import LabInfo, LabSpec
from desanet_lab import plan as p

pytest.importorskip("selenium", reason="needs selenium (a dev extra: pip install -e '.[dev]')")

from tests.integration.browser import (
    Browser,
    BrowserError,
    artifacts_dir,
    missing_browser,
    open_browser,
)
from tests.integration.conftest import (
    INTERNET_BODY,
    INTERNET_URL,
    LAB_TOOLS,
    PORTAL,
    LabFactory,
    desanet_json,
    require_root,
    require_tools,
    unique_prefix,
    wait_until,
)

_missing = missing_browser()
pytestmark = [
    pytest.mark.integration, require_root, require_tools(*LAB_TOOLS),
    pytest.mark.skipif(bool(_missing), reason=f"needs {', '.join(_missing)} "
                       "(apt-get install chromium chromium-driver; `bash .ci/setup` does)"),
]

PREFIX_ONLINE = unique_prefix("bo")
PREFIX_OFFLINE = unique_prefix("bf")
INTERNET = INTERNET_URL.rstrip("/")  # http://internet.lab

# What the villager reads (gateway/portal/i18n.py, Bahasa Indonesia).
ACCEPT = "Setuju dan sambungkan"
CONNECTED = "Anda sudah terhubung ke internet."
CONTINUE = "Lanjut ke"
LOGOUT = "Keluar"
LOGGED_OUT = "Anda sudah keluar"
VOUCHER_BUTTON = "Masuk dengan voucher"
VOUCHER_UNKNOWN = "Kode voucher tidak dikenal."
VOUCHER_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def clients_by_mac(lab: LabInfo) -> dict[str, dict[str, Any]]:
    return {c["mac"]: c for c in desanet_json(lab.control_socket, "clients")["clients"]}


def authorized_by(lab: LabInfo, k: int) -> str | None:
    """How client ``k`` is logged in ("terms", "voucher"), None when it is not."""
    row = clients_by_mac(lab).get(p.client_mac(k), {})
    return row.get("source") if row.get("authorized") else None


def on_portal(url: str) -> bool:
    return url.startswith(f"{PORTAL}/")


def portal_target(url: str) -> str:
    """The ``url=`` the portal was given (where the villager wanted to go)."""
    return parse_qs(urlsplit(url).query).get("url", [""])[0]


def see_internet(b: Browser, url: str) -> None:
    """The lab's internet site itself is shown at ``url`` (not the portal, not an error)."""
    b.wait_text(INTERNET_BODY)
    assert b.url == url, f"the site loaded from an unexpected URL: {b.url}"


class Soft:
    """Checks that need not stop the journey: each failure is kept, all are reported at the end,
    so one wrong text does not hide what the rest of the journey would have shown."""

    def __init__(self, b: Browser) -> None:
        self.b = b
        self.failed: list[str] = []

    def wait(self, condition: Callable[[Any], object], what: str, timeout: float = 5.0) -> None:
        try:
            self.b.wait(condition, what, timeout)
        except BrowserError as exc:
            self.failed.append(f"{exc} (screenshot {self.b.step('unexpected').name})")

    def text(self, text: str, timeout: float = 5.0) -> None:
        self.wait(lambda _: text in self.b.text(), f"the page to show {text!r}", timeout)

    def check(self) -> None:
        assert not self.failed, "the journey went through, but:\n" + "\n".join(self.failed)


def focused_id(b: Browser) -> str:
    return str(b.focused().get_attribute("id") or "")


def a_wrong_code(code: str) -> str:
    """A well-formed voucher code that differs from ``code`` in its last letter."""
    last = code[-1]
    return code[:-1] + next(ch for ch in VOUCHER_ALPHABET if ch != last)


# -- online -----------------------------------------------------------------------------------


@pytest.fixture
def online_lab(make_lab_for_test: LabFactory) -> LabInfo:
    # The site's own default language is English here: a portal in Bahasa Indonesia
    # then proves the browser really sent Accept-Language: id-ID.
    return make_lab_for_test(LabSpec(prefix=PREFIX_ONLINE, clients=1,
                                     extra={"site": {"language": "en"}}))


def test_online_journey_terms_continue_voucher_logout(online_lab: LabInfo, tmp_path: Path) -> None:
    lab = online_lab
    started = time.monotonic()
    with open_browser(lab.client(1).name, artifacts_dir(tmp_path, "online")) as b:
        soft = Soft(b)
        # An http site sends the new phone to the portal, in Bahasa Indonesia.
        b.open(f"{INTERNET}/")
        b.wait_url(on_portal, "the portal")
        assert portal_target(b.url) == f"{INTERNET}/", b.url
        b.wait_text("Selamat datang di hotspot", ACCEPT)
        assert b.driver.title.startswith("Masuk ke internet"), (
            f"Accept-Language id-ID was ignored: title {b.driver.title!r}")
        b.step("portal")

        # Terms: tap the accept button -> the "connected" page offers to continue.
        b.tap_button(ACCEPT)
        b.wait_text(CONNECTED, f"{CONTINUE} internet.lab")
        assert on_portal(b.url), b.url
        assert authorized_by(lab, 1) == "terms"
        b.step("terms-connected")

        # "Lanjut ke internet.lab" loads the site itself: the browser must not be
        # sent back to the portal over a connection it opened before the login.
        b.tap_button(f"{CONTINUE} internet.lab")
        see_internet(b, f"{INTERNET}/")
        b.step("continue-site")
        # ... and so does any other page of the site, typed in the address bar.
        b.open(f"{INTERNET}/berita")
        see_internet(b, f"{INTERNET}/berita")
        b.step("site-again")

        # Logout from the portal's page: back to the login page, the site redirects again.
        b.open(f"{PORTAL}/")
        b.wait_text(CONNECTED)
        b.tap_button(LOGOUT)
        b.wait_text(ACCEPT)
        assert on_portal(b.url), b.url
        soft.text(LOGGED_OUT)
        b.step("terms-logged-out")
        wait_until(lambda: authorized_by(lab, 1) is None, 10, "c1 to be logged out")
        b.open(f"{INTERNET}/")
        b.wait_url(on_portal, "the portal after logout")
        b.wait_text(ACCEPT)

        # Voucher: a wrong code is refused with the reason, and the field keeps the focus ...
        code = desanet_json(lab.control_socket, "vouchers", "create", "--count", "1",
                            "--duration", "1h")["vouchers"][0]["code"]
        b.type_into("#voucher", a_wrong_code(code))
        b.step("voucher-wrong-typed")
        b.tap_button(VOUCHER_BUTTON)
        b.wait_text(VOUCHER_UNKNOWN)
        error = b.element("css selector", "#voucher-error")
        assert error.get_attribute("role") == "alert", error.get_attribute("outerHTML")
        soft.wait(lambda _: focused_id(b) == "voucher",
                  "the voucher field to have the focus after a wrong code")
        assert portal_target(b.url) in ("", f"{INTERNET}/") and on_portal(b.url), b.url
        assert authorized_by(lab, 1) is None
        b.step("voucher-wrong")

        # ... then the right code (typed in lower case, as a villager might) gets online.
        b.type_into("#voucher", code.lower())
        b.tap_button(VOUCHER_BUTTON)
        b.wait_text(CONNECTED)
        assert authorized_by(lab, 1) == "voucher"
        b.step("voucher-connected")
        b.tap_button(f"{CONTINUE} internet.lab")
        see_internet(b, f"{INTERNET}/")
        b.step("voucher-continue-site")

        # Logout ends the voucher session too.
        b.open(f"{PORTAL}/")
        b.tap_button(LOGOUT)
        b.wait_text(ACCEPT)
        soft.text(LOGGED_OUT)
        b.step("voucher-logged-out")
        wait_until(lambda: authorized_by(lab, 1) is None, 10, "c1 to be logged out")
        b.open(f"{INTERNET}/")
        b.wait_url(on_portal, "the portal after the voucher logout")
        soft.check()
    print(f"online journey: {time.monotonic() - started:.1f} s in the browser")
