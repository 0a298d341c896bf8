"""A real phone browser for integration tests: headless Chromium in a lab client.

Usage (one browser per test, reused for every step of the journey)::

    with open_browser(lab.client(1).name, artifacts_dir(tmp_path, "journey")) as b:
        b.open("http://internet.lab/")
        b.wait_text("Setuju dan sambungkan")
        b.step("portal")                       # a screenshot, kept as a test artifact
        b.tap_button("Setuju dan sambungkan")

How it runs. Chromium and chromedriver (Debian's packages) run inside the
client's network namespace, started by ``ip netns exec``: the browser has the
client's address, goes through the gateway like a phone, and resolves names
through the lab's DNS (``ip netns exec`` shows /etc/netns/NS/resolv.conf,
written by the lab's DHCP hook, as /etc/resolv.conf). The test process stays
in the root namespace; it drives the browser with Selenium through a root-
namespace TCP socket that :mod:`tests.integration.netns_relay` (in the
namespace, the parent of chromedriver) accepts on and forwards to chromedriver.
Selenium because it is the maintained WebDriver client, chromedriver is
packaged next to chromium, and waits/conditions come with it.

The browser looks like a cheap Android phone: 360x640 CSS pixels, an Android
Chrome user agent with touch, ``Accept-Language: id-ID,id``. It gets a fresh
profile (and HOME) in a temp dir, no proxy, and Chromium's own background
traffic (component updates, safe browsing, sync, translate, DoH, HTTPS
upgrades, ...) switched off so that only the page under test makes requests.

Cleanup. ``close()`` (also on failure, via the context manager) quits the
browser, closes the relay's stdin (it then kills its process group) and kills
any process left in the namespace whose command line names this browser's
temp dir. If the test process dies, the relay sees EOF and ends the browser;
a leftover temp dir of a dead owner is removed by the next run. Every browser
has its own temp dir and ports, so nothing of a crashed run is reused.

Artifacts. :meth:`Browser.step` saves ``NN-name.png``; on failure the context
manager adds ``failure.png``/``failure.html``. chromedriver's log is kept too.
The directory is printed; set ``DESANET_ARTIFACTS`` to collect them in CI.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.proxy import Proxy, ProxyType
from selenium.webdriver.remote.client_config import ClientConfig
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from desanet_lab import netns as nsa

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
RELAY = HERE / "netns_relay.py"
# The real binaries, not Debian's /usr/bin/chromium wrapper: the wrapper sources
# /etc/chromium.d (Google API keys, remote extensions) which only adds background traffic.
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")
CHROMEDRIVER_CANDIDATES = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver", "chromedriver")
WIDTH, HEIGHT, PIXEL_RATIO = 360, 640, 2.0
ACCEPT_LANGUAGES = "id-ID,id"
DEFAULT_WAIT = 15.0
START_TIMEOUT = 30.0
TEMP_PREFIX = "desanet-browser-"
OWNER_FILE = "owner.pid"
ARTIFACTS_ENV = "DESANET_ARTIFACTS"
PROXY_ENV = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")

# Switched off so that the browser makes no request of its own during a test.
DISABLED_FEATURES = (
    "HttpsUpgrades",                          # would try https:// first for http:// navigations
    "HttpsFirstBalancedMode",
    "HttpsFirstBalancedModeAutoEnable",
    "HttpsFirstModeV2ForTypicallySecureUsers",
    "DnsOverHttps",                           # names must go to the lab's resolver
    "Translate",
    "OptimizationHints",
    "MediaRouter",
    "DialMediaRouteProvider",
    "AutofillServerCommunication",
    "CertificateTransparencyComponentUpdater",
    "NetworkTimeServiceQuerying",
    "InterestFeedContentSuggestions",
    "PrivacySandboxSettings4",
)
# Chromium still calls these at start whatever the switches say (seen in a net log: the
# search engine's new-tab page, Google account list, the update service). They never
# resolve, so they cannot reach the lab or the gateway; every other name goes to the
# lab's DNS. (Not *.gstatic.com or clients3.google.com: the lab serves those probes.)
SERVICE_HOSTS_NOT_RESOLVED = ("accounts.google.com", "*.googleapis.com", "duckduckgo.com",
                              "*.duckduckgo.com")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",                           # CI runs as root: the sandbox refuses root
    "--disable-dev-shm-usage",                # small /dev/shm in containers
    "--no-proxy-server",
    "--lang=id-ID",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    "--disable-search-engine-choice-screen",
    "--metrics-recording-only",
    "--no-pings",
    "--dns-prefetch-disable",
    "--mute-audio",
    "--password-store=basic",
    "--deny-permission-prompts",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--disable-features=" + ",".join(DISABLED_FEATURES),
    "--host-resolver-rules=" + ", ".join(f"MAP {h} ~NOTFOUND" for h in SERVICE_HOSTS_NOT_RESOLVED),
)
PREFS: dict[str, Any] = {
    "intl.accept_languages": ACCEPT_LANGUAGES,
    "https_only_mode_enabled": False,
    "dns_over_https.mode": "off",
    "safebrowsing.enabled": False,
    "translate.enabled": False,
    "credentials_enable_service": False,
    "profile.password_manager_enabled": False,
    "autofill.profile_enabled": False,
    "search.suggest_enabled": False,
    "net.network_prediction_options": 2,      # no preconnect / prefetch
}


class BrowserError(AssertionError):
    """The browser could not be started or a wait failed (a test failure, with context)."""


def _which(candidates: tuple[str, ...]) -> str | None:
    for c in candidates:
        if os.path.isabs(c):
            if os.access(c, os.X_OK):
                return c
        elif found := shutil.which(c):
            return found
    return None


def chromium_path() -> str | None:
    return _which(CHROMIUM_CANDIDATES)


def chromedriver_path() -> str | None:
    return _which(CHROMEDRIVER_CANDIDATES)


def missing_browser() -> list[str]:
    """What a browser test lacks ("chromium", "chromium-driver", "selenium"); empty when ready."""
    out = []
    if chromium_path() is None:
        out.append("chromium")
    if chromedriver_path() is None:
        out.append("chromium-driver")
    return out


def android_user_agent(chromium: str) -> str:
    """Chrome on Android's (reduced) user agent, with this Chromium's major version."""
    proc = subprocess.run([chromium, "--version"], capture_output=True, text=True, timeout=20,
                          check=False)
    m = re.search(r"(\d+)\.\d+", proc.stdout)
    major = m.group(1) if m else "120"
    return (f"Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
            f"Chrome/{major}.0.0.0 Mobile Safari/537.36")


def artifacts_dir(tmp_path: Path, name: str) -> Path:
    """Where a test keeps its screenshots: $DESANET_ARTIFACTS/NAME, else TMP_PATH/browser."""
    base = os.environ.get(ARTIFACTS_ENV)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    path = Path(base) / safe if base else tmp_path / "browser"
    path.mkdir(parents=True, exist_ok=True)
    print(f"browser artifacts: {path}", file=sys.stderr)
    return path


def sweep_leftover_temp() -> None:
    """Remove temp dirs of browsers whose test process no longer exists."""
    for d in Path(tempfile.gettempdir()).glob(TEMP_PREFIX + "*"):
        try:
            pid = int((d / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        if pid != os.getpid() and not nsa.pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)


def xpath_literal(text: str) -> str:
    """``text`` as an XPath string literal, whatever quotes it contains."""
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    parts = text.split("'")
    return "concat(" + ", \"'\", ".join(f"'{p}'" for p in parts) + ")"


class Browser:
    """One headless Chromium in namespace ``ns``; use as a context manager."""

    def __init__(self, ns: str, artifacts: Path) -> None:
        self.ns = ns
        self.artifacts = artifacts
        self.steps = 0
        self.temp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{ns}-"))
        self.relay: subprocess.Popen[bytes] | None = None
        self._driver: webdriver.Remote | None = None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> Browser:
        sweep_leftover_temp()
        self.artifacts.mkdir(parents=True, exist_ok=True)
        (self.temp / OWNER_FILE).write_text(f"{os.getpid()}\n")
        chromium, driver = chromium_path(), chromedriver_path()
        if chromium is None or driver is None:
            raise BrowserError(f"needs {', '.join(missing_browser())} (apt-get install chromium "
                               "chromium-driver)")
        home = self.temp / "home"
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_ENV}
        env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
                   XDG_CACHE_HOME=str(home / ".cache"), TMPDIR=str(self.temp))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(16)
            local_port = listener.getsockname()[1]
            argv = [nsa.IP, "netns", "exec", self.ns, sys.executable, str(RELAY),
                    "--listen-fd", str(listener.fileno()), "--",
                    driver, "--port={port}", "--allowed-ips=127.0.0.1",
                    f"--log-path={self.artifacts / 'chromedriver.log'}"]
            with open(self.artifacts / "relay.log", "ab") as log:
                self.relay = subprocess.Popen(
                    argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                    pass_fds=(listener.fileno(),), start_new_session=True, cwd=str(self.temp))
        ready = self._read_ready(START_TIMEOUT)
        if not ready.startswith("ready "):
            raise BrowserError(f"browser in {self.ns} did not start: {ready or 'no answer'} "
                               f"(see {self.artifacts / 'relay.log'} and chromedriver.log)")
        url = f"http://127.0.0.1:{local_port}"
        self._driver = webdriver.Remote(
            command_executor=url,
            client_config=ClientConfig(url,
                                       proxy=Proxy({"proxyType": ProxyType.DIRECT}), timeout=60),
            options=self._options(chromium),
        )
        self._driver.set_page_load_timeout(30)
        print(f"browser: chromium in {self.ns} (relay pid {self.relay.pid}), "
              f"artifacts in {self.artifacts}", file=sys.stderr)
        return self

    def _options(self, chromium: str) -> webdriver.ChromeOptions:
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for flag in CHROMIUM_FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={self.temp / 'profile'}")
        opts.add_experimental_option("prefs", PREFS)
        opts.add_experimental_option("mobileEmulation", {
            "deviceMetrics": {"width": WIDTH, "height": HEIGHT, "pixelRatio": PIXEL_RATIO,
                              "touch": True, "mobile": True},
            "userAgent": android_user_agent(chromium),
            "clientHints": {"platform": "Android", "mobile": True},
        })
        opts.proxy = Proxy({"proxyType": ProxyType.DIRECT})
        return opts

    def _read_ready(self, timeout: float) -> str:
        assert self.relay is not None and self.relay.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.relay.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                return f"no answer within {timeout:g} s"
            return self.relay.stdout.readline().decode(errors="replace").strip()
        finally:
            sel.close()

    def close(self) -> None:
        """Quit the browser and make sure none of its processes is left; never raises."""
        if self._driver is not None:
            with contextlib.suppress(Exception):
                self._driver.quit()
            self._driver = None
        if self.relay is not None:
            with contextlib.suppress(OSError):
                assert self.relay.stdin is not None
                self.relay.stdin.close()  # the relay ends chromedriver and its process group
            try:
                self.relay.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.relay.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.relay.wait(5)
            if self.relay.stdout is not None:
                self.relay.stdout.close()
            self.relay = None
        self._kill_leftovers()
        shutil.rmtree(self.temp, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        """Kill processes in the namespace that belong to this browser: those whose command
        line or environment (HOME, TMPDIR: the relay, chromedriver, Chromium) name its temp dir."""
        mark = str(self.temp).encode()
        ours = []
        with contextlib.suppress(Exception):
            for pid in nsa.namespace_pids(self.ns):
                with contextlib.suppress(OSError):
                    proc = Path(f"/proc/{pid}")
                    if mark in (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes():
                        ours.append(pid)
        if ours:
            nsa.stop_pids(ours, grace=1.0)

    def __enter__(self) -> Browser:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc is not None and self._driver is not None:
                self._save_failure()
        finally:
            self.close()

    def _save_failure(self) -> None:
        with contextlib.suppress(Exception):
            self.driver.save_screenshot(str(self.artifacts / "failure.png"))
        with contextlib.suppress(Exception):
            (self.artifacts / "failure.html").write_text(
                f"<!-- {self.driver.current_url} -->\n{self.driver.page_source}")
        print(f"browser: failure screenshot in {self.artifacts}", file=sys.stderr)

    # -- driving -------------------------------------------------------------------------------

    @property
    def driver(self) -> webdriver.Remote:
        if self._driver is None:
            raise BrowserError("the browser is not running")
        return self._driver

    @property
    def url(self) -> str:
        return str(self.driver.current_url)

    def step(self, name: str) -> Path:
        """Save a screenshot of the page as it is now: ``NN-name.png`` in the artifacts dir."""
        self.steps += 1
        path = self.artifacts / f"{self.steps:02d}-{re.sub(r'[^A-Za-z0-9_-]+', '-', name)}.png"
        self.driver.save_screenshot(str(path))
        return path

    def open(self, url: str) -> None:
        """Go to ``url`` as if typed in the address bar (returns when the page has loaded)."""
        self.driver.get(url)

    def text(self) -> str:
        """The visible text of the page (``innerText`` of the body); "" while none."""
        try:
            return str(self.driver.find_element(By.TAG_NAME, "body").text)
        except WebDriverException:  # no body yet, or the document is being replaced
            return ""

    def wait(self, condition: Callable[[webdriver.Remote], T], what: str,
             timeout: float = DEFAULT_WAIT) -> T:
        """Wait until ``condition(driver)`` is truthy; fail naming ``what``, the URL and the page.

        WebDriver errors while polling count as "not yet": in the middle of a
        navigation chromedriver answers with stale-element or "node does not
        belong to the document" errors. The last one is reported on timeout.
        """
        last: list[WebDriverException] = []

        def polled(driver: webdriver.Remote) -> T | bool:
            try:
                return condition(driver)
            except WebDriverException as exc:
                last[:] = [exc]
                return False

        try:
            result: T = WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(polled)
        except TimeoutException:
            error = f"; last error: {last[0].msg}" if last else ""
            raise BrowserError(
                f"timed out after {timeout:g} s waiting for {what}; at {self.url}, "
                f"page text: {self.text()[:600]!r}{error}") from None
        return result

    def wait_text(self, *texts: str, timeout: float = DEFAULT_WAIT) -> str:
        """Wait until every one of ``texts`` is on the page; the page text."""
        return self.wait(lambda _: (t := self.text()) and all(x in t for x in texts) and t,
                         f"the page to show {texts!r}", timeout)

    def wait_url(self, predicate: Callable[[str], bool], what: str,
                 timeout: float = DEFAULT_WAIT) -> str:
        return self.wait(lambda d: predicate(str(d.current_url)) and str(d.current_url),
                         f"the URL to be {what}", timeout)

    def element(self, by: str, value: str, timeout: float = DEFAULT_WAIT) -> WebElement:
        """The element once it is visible."""
        found: WebElement = self.wait(ec.visibility_of_element_located((by, value)),
                                      f"element {value!r}", timeout)
        return found

    def button(self, label: str, timeout: float = DEFAULT_WAIT) -> WebElement:
        """A button or link whose visible text is, or starts with, ``label``."""
        lit = xpath_literal(label)
        xpath = (f"//button[starts-with(normalize-space(), {lit})]"
                 f" | //a[starts-with(normalize-space(), {lit})]"
                 f" | //input[@type='submit' and starts-with(@value, {lit})]")
        return self.element(By.XPATH, xpath, timeout)

    def tap(self, element: WebElement, timeout: float = DEFAULT_WAIT) -> None:
        """Click ``element`` and wait until the browser has loaded the next document."""
        old = self.driver.find_element(By.TAG_NAME, "html")
        element.click()
        self.wait(ec.staleness_of(old), "the tap to load a new page", timeout)
        self.wait(lambda d: d.execute_script("return document.readyState") == "complete",
                  "the new page to finish loading", timeout)

    def tap_button(self, label: str, timeout: float = DEFAULT_WAIT) -> None:
        self.tap(self.button(label, timeout), timeout)

    def type_into(self, css: str, text: str) -> WebElement:
        field = self.element(By.CSS_SELECTOR, css)
        field.clear()
        field.send_keys(text)
        return field

    def focused(self) -> WebElement:
        return self.driver.switch_to.active_element

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)


@contextlib.contextmanager
def open_browser(ns: str, artifacts: Path) -> Iterator[Browser]:
    """A started :class:`Browser` in ``ns``; closed (with a failure screenshot) at the end."""
    with Browser(ns, artifacts) as b:
        yield b


__all__ = ["Browser", "BrowserError", "WebDriverException", "android_user_agent",
           "artifacts_dir", "missing_browser", "open_browser", "xpath_literal"]
