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

import contextlib
import importlib.util
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from desanet_lab import LabInfo, LabSpec, run_in
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
    desanet_argv,
    desanet_json,
    http,
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
RECONNECTING = "Menyambungkan"
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


# Before login outside names resolve to the gateway (no DNS tunnels, Step 6) and Chrome keeps
# a name's address up to a minute whatever the TTL; until then the gateway answers the
# logged-in browser "Menyambungkan…" and reloads the same address (never the login page).
AFTER_LOGIN_WAIT = 120.0


def continue_to_internet(b: Browser, url: str, step: str) -> None:
    """After a login, "Lanjut ke ..." ends on the site itself, perhaps via "Menyambungkan"."""
    seen: set[str] = set()

    def arrived(_: object) -> bool:
        text = b.text()
        if ACCEPT in text or VOUCHER_BUTTON in text:
            raise AssertionError(f"a logged-in browser was sent to the login page: {b.url}")
        if RECONNECTING in text and RECONNECTING not in seen:
            seen.add(RECONNECTING)
            b.step(f"{step}-reconnecting")
        return INTERNET_BODY in text

    b.wait(arrived, f"{url} to load after the login", AFTER_LOGIN_WAIT)
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
        continue_to_internet(b, f"{INTERNET}/", "continue")
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
        continue_to_internet(b, f"{INTERNET}/", "voucher-continue")
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


# -- offline ----------------------------------------------------------------------------------
#
# What this journey expects from the other parts of issue #8 (reconcile at merge):
# - uplink: `desanet lab uplink down|up --prefix P` (falls back to taking the gateway's
#   wan0 down, as test_local_services.py does, when desanet_lab.uplink is absent);
#   `desanet status --json` has {"uplink": {"state": "up"|"down", ...}}; an http page
#   opened by a logged-in villager while it is down shows "Internet desa sedang terputus"
#   with a link to the services host (an <a href="http://layanan.desa/...">); the portal's
#   page says "internet desa sedang terputus" too (any case).
# - offline services: the origin's start page links "Formulir permohonan" to its form
#   page ``formulir`` (a POST form with fields nama and keterangan and a "Kirim" button);
#   the prefetch finds it (its URL appears in `desanet services --json` "prefetch");
#   offline copies carry the banner <div id="desanet-offline"> "Salinan offline dari ...";
#   a form posts to a 303 -> /kiriman?ref=DN-XXXX-XXXX receipt "Formulir Anda tersimpan";
#   the same form sent twice (same one-time token) is one submission and one receipt;
#   the status page says "Sudah terkirim ke layanan." once delivered.
# - catalog badge while the service is unreachable: "Salinan offline dari ...".

OFFLINE_PAGE = "Internet desa sedang terputus"
BANNER_CSS = "#desanet-offline"
BANNER_TEXT = "Salinan offline dari"
CATALOG_ONLINE = "Terhubung"
SERVICE_TITLE = "Data Kependudukan (lab)"
FORM_LINK = "Formulir permohonan"
FORM_BUTTON = "Kirim"
RECEIPT = "Formulir Anda tersimpan"
DELIVERED = "Sudah terkirim ke layanan."
REF_RE = re.compile(r"DN-[0-9A-Z]{4}-[0-9A-Z]{4}")
ORIGIN = f"http://{p.DUKCAPIL_HOST}"
WAN_GW = "100.64.0.1"


def origin_json(lab: LabInfo, path: str) -> dict[str, Any]:
    proc = run_in(lab.wan, ["curl", "-sS", "--max-time", "5", f"{ORIGIN}{path}"])
    assert proc.returncode == 0, f"origin {path}: {proc.stderr.strip()}"
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def uplink_state(lab: LabInfo) -> str:
    return str(desanet_json(lab.control_socket, "status").get("uplink", {}).get("state"))


def has_lab_uplink_command() -> bool:
    return importlib.util.find_spec("desanet_lab.uplink") is not None


@contextlib.contextmanager
def uplink_cut(lab: LabInfo) -> Iterator[None]:
    """The village uplink is cut inside the block and restored after it, whatever happens."""
    if has_lab_uplink_command():
        desanet_ok_lab(lab, "down")
    else:
        print("no `desanet lab uplink`: taking the gateway's wan0 down instead")
        run_in(lab.gw, ["ip", "link", "set", p.WAN_INTERFACE, "down"], check=True)
    try:
        yield
    finally:
        if has_lab_uplink_command():
            desanet_ok_lab(lab, "up")
        else:
            run_in(lab.gw, ["ip", "link", "set", p.WAN_INTERFACE, "up"], check=True)
            if "default" not in run_in(lab.gw, ["ip", "-4", "route", "show", "default"]).stdout:
                run_in(lab.gw, ["ip", "route", "replace", "default", "via", WAN_GW], check=True)


def desanet_ok_lab(lab: LabInfo, state: str) -> None:
    proc = subprocess.run([*desanet_argv(), "lab", "uplink", state, "--prefix", lab.prefix],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, f"desanet lab uplink {state}: {proc.stderr.strip()}"


def reload_until(b: Browser, url: str, texts: tuple[str, ...], what: str,
                 timeout: float = 30.0) -> str:
    """Open ``url`` again and again (a villager tapping reload) until it shows ``texts``."""
    def shown(_: Any) -> str | bool:
        b.open(url)
        text = b.text()
        return text if all(t in text for t in texts) else False

    return str(b.wait(shown, f"{url} to show {texts!r} ({what})", timeout))


def banner(b: Browser) -> str:
    """The offline banner's text, "" when the page has none."""
    found = b.driver.find_elements("css selector", BANNER_CSS)
    return str(found[0].text) if found else ""


@pytest.fixture
def offline_lab(make_lab_for_test: LabFactory) -> LabInfo:
    return make_lab_for_test(LabSpec(prefix=PREFIX_OFFLINE, clients=1))


def test_offline_journey_terputus_catalog_banner_form_once(offline_lab: LabInfo,
                                                           tmp_path: Path) -> None:
    lab = offline_lab
    name = f"Warga {PREFIX_OFFLINE} {time.time_ns() % 10**6}"
    site = f"http://{desanet_json(lab.control_socket, 'services')['hostname']}"
    started = time.monotonic()
    # The form page must be prefetched: the villager never opens it while online.
    wait_until(lambda: f"{ORIGIN}/formulir" in json.dumps(
        desanet_json(lab.control_socket, "services").get("prefetch", {})),
        60, "the prefetch to find and keep the service's form page", interval=0.5)
    with open_browser(lab.client(1).name, artifacts_dir(tmp_path, "offline")) as b:
        # Online: log in on the portal, then the catalog and a service page, live.
        b.open(f"{PORTAL}/")
        b.tap_button(ACCEPT)
        b.wait_text(CONNECTED)
        b.step("online-connected")
        b.open(f"{site}/")
        b.wait_text(SERVICE_TITLE, CATALOG_ONLINE)
        b.step("online-catalog")
        # Positive control, by curl: the live service page has no banner. (Not in the browser:
        # it would keep that copy for the origin's max-age and show it offline without asking.)
        live = http(lab.client(1).name, f"{site}/dukcapil/")
        assert live.status == 200 and "Dukcapil (lab)" in live.text, live
        assert BANNER_CSS[1:] not in live.text, "a live page carries the offline banner"

        with uplink_cut(lab):
            wait_until(lambda: uplink_state(lab) == "down", 30, "the gateway to see the uplink down",
                       interval=0.5)
            # Any http site: the gateway's own page says the village internet is down ...
            b.open(f"{INTERNET}/")
            b.wait_text(OFFLINE_PAGE)
            assert not on_portal(b.url), f"sent to the portal instead: {b.url}"
            b.step("offline-terputus")
            # ... and so does the portal's own page ...
            b.open(f"{PORTAL}/")
            b.wait(lambda _: OFFLINE_PAGE.lower() in b.text().lower(),
                   "the portal to say the village internet is down")
            b.step("offline-portal")
            b.driver.back()
            b.wait_text(OFFLINE_PAGE)
            # ... and links to the village services, whose catalog says offline.
            b.tap(b.element("css selector", f"a[href^='{site}']"))
            b.wait_url(lambda u: u.startswith(f"{site}/"), "the services catalog")
            reload_until(b, f"{site}/", (SERVICE_TITLE, BANNER_TEXT), "the catalog's offline badge")
            assert CATALOG_ONLINE not in b.text(), b.text()
            b.step("offline-catalog")
            # The stored service page, marked as an offline copy.
            b.tap_button(SERVICE_TITLE)
            b.wait_text("Dukcapil (lab)", FORM_LINK)
            assert b.url == f"{site}/dukcapil/", b.url
            assert BANNER_TEXT in banner(b), f"no offline banner on the stored page: {b.text()[:400]}"
            b.step("offline-service-banner")
            # The form page (prefetched, never opened online) opens, with the banner.
            b.tap_button(FORM_LINK)
            b.wait_text("Formulir permohonan (lab)")
            assert b.url == f"{site}/dukcapil/formulir", b.url
            assert BANNER_TEXT in banner(b), f"no offline banner on the form: {b.text()[:400]}"
            b.type_into("input[name='nama']", name)
            b.type_into("textarea[name='keterangan']", "uji browser: dikirim dua kali")
            b.step("offline-form-filled")
            # Sent twice, as a double tap or a retry on a weak Wi-Fi does: the same filled-in
            # form (same one-time token) once in the background, then by tapping "Kirim".
            first = b.js("""
                const form = document.querySelector("form[method='post']");
                const body = new URLSearchParams(new FormData(form));
                return fetch(form.action, {method: "POST", body: body, redirect: "follow"})
                    .then(r => r.text().then(t => [r.status, r.url, t]));
            """)
            assert first[0] == 200 and "/kiriman?ref=" in first[1], first[:2]
            first_refs = REF_RE.findall(first[2])
            assert first_refs, f"no reference number after the first send: {first[2][:400]}"
            b.tap_button(FORM_BUTTON)
            receipt = b.wait_text(RECEIPT)
            assert "/kiriman?ref=" in b.url, f"no Post/Redirect/Get to the receipt: {b.url}"
            refs = set(REF_RE.findall(receipt))
            assert refs == {first_refs[0]}, f"two sends, two receipts: {first_refs} then {refs}"
            ref = first_refs[0]
            b.step("offline-receipt")
            # A refresh of the receipt sends nothing again.
            b.driver.refresh()
            b.wait_text(RECEIPT, ref)
            outbox = desanet_json(lab.control_socket, "services")["outbox"]
            waiting = sum(int(outbox.get(k, 0)) for k in ("queued", "unknown", "sending"))
            assert waiting == 1, f"the form was queued {waiting} times: {outbox}"
            assert not [s for s in origin_json(lab, "/_lab/submissions").values()
                        if s.get("reference") == ref], "delivered while the uplink was down"

        # Uplink back: the form is delivered, once.
        wait_until(lambda: uplink_state(lab) == "up", 30, "the gateway to see the uplink up",
                   interval=0.5)

        def arrived() -> list[dict[str, Any]]:
            return [s for s in origin_json(lab, "/_lab/submissions").values()
                    if s.get("reference") == ref or name.replace(" ", "+") in str(s.get("body"))]

        subs = wait_until(arrived, 60, f"the origin to receive {ref}", interval=0.5)
        reload_until(b, f"{site}/kiriman?ref={ref}", (ref, DELIVERED), "the status page",
                     timeout=30)
        b.step("online-delivered")
        subs = arrived()
        assert len(subs) == 1, f"{ref} arrived {len(subs)} times: {subs}"
        assert subs[0]["repeats"] == 0, f"{ref} was sent to the origin again: {subs[0]}"
        assert subs[0]["reference"] == ref, subs[0]
    print(f"offline journey: {time.monotonic() - started:.1f} s")
