"""The integration harness: one way to get a lab, run the CLI, speak HTTP and wait.

Every integration test module uses these (import the helpers from
``tests.integration.conftest``; the fixtures come from pytest)::

    pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS, "nft")]
    PREFIX = unique_prefix("xy")          # 2 letters per module; unique per run

    @pytest.fixture(scope="module")
    def lab(make_lab: LabFactory) -> LabInfo:
        return make_lab(LabSpec(prefix=PREFIX, clients=2))   # torn down after the module

    def test_x(lab: LabInfo) -> None:
        r = http(lab.client(1).name, "http://internet.lab/")
        assert r.redirected_to_portal()
        rows = desanet_json(lab.control_socket, "clients")["clients"]
        wait_until(lambda: is_online(...), 10, "c1 to come online")

Nothing here is a fake: every helper runs a real process (curl, the CLI, ip)
and returns what it observed. Waits are on conditions with a deadline, never
on a fixed sleep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from desanet_lab import LabInfo, LabSpec, broker, lab_down, lab_status, lab_up, run_in, services
from desanet_lab import netns as nsa
from desanet_lab import plan as p

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]

# -- marks -------------------------------------------------------------------------------------------

# What every lab needs (`desanet lab up` checks the same); add the module's own tools.
LAB_TOOLS: tuple[str, ...] = ("ip", "busybox", "curl", "nft", services.DNSMASQ,
                              broker.MOSQUITTO)  # the region's broker in the WAN

require_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (network namespaces, nftables, tc): run as root")


def missing_tools(tools: Sequence[str]) -> list[str]:
    """The ``tools`` not installed: names looked up on PATH, absolute paths checked as files."""
    return [t for t in tools
            if not (Path(t).exists() if os.path.isabs(t) else shutil.which(t) is not None)]


def require_tools(*tools: str) -> pytest.MarkDecorator:
    """Skip (with the names in the reason) when any of ``tools`` is missing."""
    missing = missing_tools(tools)
    return pytest.mark.skipif(
        bool(missing),
        reason=f"needs {', '.join(missing)} (run `bash .ci/setup` to install them)",
    )


# -- waiting -----------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Call ``predicate`` until it returns something truthy and return that value.

    Fails (AssertionError naming ``what`` and the last value) after ``timeout``
    seconds. The predicate is always called at least once, and once more at
    the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


# A positive check (something MUST work) may try again: on a busy machine one try can time
# out or be reset. Absence checks (something must NOT get through) stay one short try.
RETRY_WITHIN = 10.0  # s: how long a positive check keeps trying
RETRY_TIMEOUT = 8.0  # s: the budget of each of its tries


def retried(attempt: Callable[[], T], ok: Callable[[T], object],
            within: float = RETRY_WITHIN, interval: float = 0.5) -> T:
    """``attempt()`` until ``ok(result)`` or ``within`` s have passed; the last result.

    For positive checks: unlike :func:`wait_until` it does not raise, the caller
    asserts on what came back (with its own message).
    """
    deadline = time.monotonic() + within
    while True:
        result = attempt()
        if ok(result) or time.monotonic() >= deadline:
            return result
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


# -- labs --------------------------------------------------------------------------------------------

# One id per pytest process: two runs (or two engineers) never share a namespace name,
# and a leftover of a crashed run never has the name a new run asks for.
RUN_ID = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(3))
OWNER_FILE = "harness-owner"  # in a lab's state dir: the pid of the pytest that built it


def unique_prefix(tag: str) -> str:
    """A lab prefix for this module and run: ``tag`` (1-5 letters/digits) + the run id."""
    prefix = f"{tag}{RUN_ID}"
    return p.validate_prefix(prefix)


def sweep_leftover_labs() -> list[str]:
    """Take down labs this harness built in a pytest process that no longer exists."""
    swept = []
    root = p.STATE_ROOT
    if not root.is_dir():
        return swept
    for d in sorted(root.iterdir()):
        owner = d / OWNER_FILE
        try:
            pid = int(owner.read_text().strip())
        except (OSError, ValueError):
            continue
        if pid != os.getpid() and not nsa.pid_alive(pid):
            with contextlib.suppress(Exception):
                lab_down(d.name)
                swept.append(d.name)
    return swept


@pytest.fixture(scope="session", autouse=True)
def _leftover_labs() -> None:
    if os.geteuid() == 0:
        sweep_leftover_labs()


class LabFactory:
    """Builds labs for one test module; :meth:`close` takes every one of them down."""

    def __init__(self) -> None:
        self.prefixes: list[str] = []

    def __call__(self, spec: LabSpec, *, dhcp_clients: int | None = None) -> LabInfo:
        """Build the lab of ``spec`` (a leftover with the same prefix is replaced).

        ``dhcp_clients=N`` (with ``spec.dhcp=False``): only the first N clients
        ask for an address. Returns the lab's status after everything ran.
        """
        self.prefixes.append(spec.prefix)  # before building: a half-built lab is taken down too
        info = lab_up(spec)
        (Path(info.state_dir) / OWNER_FILE).write_text(f"{os.getpid()}\n")
        if dhcp_clients is not None:
            plan = p.plan_lab(spec)
            services.run_dhcp(_first_clients(plan, dhcp_clients))
            info = lab_status(spec.prefix)
        return info

    def close(self) -> None:
        errors = []
        for prefix in reversed(self.prefixes):
            try:
                lab_down(prefix)
            except Exception as exc:  # take the others down too, then report
                errors.append(f"{prefix}: {exc}")
        self.prefixes.clear()
        assert not errors, "lab teardown failed: " + "; ".join(errors)


def _first_clients(plan: p.LabPlan, n: int) -> p.LabPlan:
    return dataclasses.replace(plan, clients=plan.clients[:n])


@pytest.fixture(scope="module")
def make_lab() -> Iterator[LabFactory]:
    """``make_lab(LabSpec(...), dhcp_clients=None) -> LabInfo``; labs end with the module."""
    factory = LabFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def make_lab_for_test() -> Iterator[LabFactory]:
    """Like ``make_lab`` but the labs end with the test."""
    factory = LabFactory()
    try:
        yield factory
    finally:
        factory.close()


# -- the daemon's process ----------------------------------------------------------------------------


def wait_exit(pid: int, timeout: float) -> int | None:
    """Wait for ``pid`` to end; its exit code when it is our child, else None.

    Raises AssertionError when it is still running after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, wstatus = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            wait_until(lambda: not nsa.pid_alive(pid), max(0.1, deadline - time.monotonic()),
                       f"process {pid} to exit", interval=0.05)
            return None
        if done:
            return os.waitstatus_to_exitcode(wstatus)
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still running after {timeout:g} s")
        time.sleep(0.05)


def gateway_pid(lab: LabInfo) -> int:
    info = lab_status(lab.prefix)
    assert info.gateway_running and info.gateway_pid, "the lab's gateway daemon is not running"
    return info.gateway_pid


def start_gateway(lab: LabInfo) -> int:
    """Start the lab's daemon the way the lab does; its pid once it is ready."""
    return services.start_gateway(p.plan_lab(LabSpec(prefix=lab.prefix)))


def ensure_gateway(lab: LabInfo) -> int:
    """The lab's daemon pid, starting it the way the lab does when it is down."""
    info = lab_status(lab.prefix)
    if info.gateway_running and info.gateway_pid:
        return info.gateway_pid
    return start_gateway(lab)


def stop_gateway(lab: LabInfo, sig: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> int:
    """Send ``sig`` to the lab's daemon and wait for it to exit; the pid it had."""
    pid = gateway_pid(lab)
    os.kill(pid, sig)
    wait_exit(pid, timeout)
    return pid


# -- the CLI -----------------------------------------------------------------------------------------


def desanet_argv() -> list[str]:
    exe = Path(sys.executable).with_name("desanet")
    if exe.exists():
        return [str(exe)]
    venv = ROOT / ".venv" / "bin" / "desanet"
    if venv.exists():
        return [str(venv)]
    return [sys.executable, "-m", "gateway"]


@dataclass
class CliResult:
    """What one `desanet` run did; ``json`` is the parsed stdout when ``--json`` was given."""

    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    json: Any = None

    @property
    def returncode(self) -> int:
        return self.rc

    def describe(self) -> str:
        return f"`desanet {' '.join(self.argv)}` exited {self.rc}: {self.stderr.strip()}"


def desanet(socket: str, *args: str, timeout: float = 20.0) -> CliResult:
    """Run ``desanet --socket SOCKET ARGS`` as a subprocess (the real CLI)."""
    proc = subprocess.run(
        [*desanet_argv(), "--socket", socket, *args],
        capture_output=True, text=True, timeout=timeout, check=False, cwd=str(ROOT),
    )
    data = None
    if "--json" in args and proc.returncode == 0 and proc.stdout.strip():
        if args and args[0] == "events":  # JSON lines: one event per line
            data = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        else:
            data = json.loads(proc.stdout)
    return CliResult(list(args), proc.returncode, proc.stdout, proc.stderr, data)


def desanet_ok(socket: str, *args: str, timeout: float = 20.0) -> CliResult:
    """:func:`desanet`, asserting exit code 0."""
    res = desanet(socket, *args, timeout=timeout)
    assert res.rc == 0, res.describe()
    return res


def desanet_json(socket: str, *args: str, timeout: float = 20.0) -> Any:
    """``desanet --socket SOCKET ARGS --json``: asserts exit code 0, returns the parsed JSON."""
    return desanet_ok(socket, *args, "--json", timeout=timeout).json


# -- HTTP from a namespace ---------------------------------------------------------------------------

PORTAL = f"http://{p.PORTAL_HOSTNAME}"
INTERNET_URL = f"http://{p.INTERNET_HOST}/"
INTERNET_BODY = "desanet-lab internet OK"
# For when the gateway (and with it its DNS) may be down: no DNS needed.
RESOLVE_INTERNET = f"{p.INTERNET_HOST}:80:{p.INTERNET_V4}"


@dataclass
class Http:
    """One HTTP exchange as a client saw it; ``status`` 0 means no (complete) answer."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""
    error: str = ""
    rc: int = 0
    stderr: str = ""
    seconds: float = 0.0

    @property
    def body(self) -> str:
        return self.raw.decode(errors="replace")

    text = body

    @property
    def location(self) -> str:
        return self.headers.get("location", "")

    @property
    def cache_status(self) -> str:
        return self.headers.get("cache-status", "")

    def redirected_to_portal(self) -> bool:
        return self.status == 302 and self.location.startswith(f"{PORTAL}/")


def http(
    ns: str,
    url: str,
    *,
    method: str = "GET",
    form: Mapping[str, str] | None = None,
    data: str | None = None,
    headers: Sequence[str] = (),
    resolve: str | None = None,
    extra: Sequence[str] = (),
    timeout: float = 4.0,
    retry: bool = False,
) -> Http:
    """One request by curl in namespace ``ns``; never follows redirects.

    ``form`` is sent url-encoded (POST), ``data`` as is; ``method="HEAD"``
    uses ``-I``; ``extra`` goes to curl unchanged. A curl that fails, or whose
    output is no HTTP answer, gives ``status`` 0 with curl's message in
    ``error`` (headers and body of a partial answer are still parsed).

    ``retry`` (positive checks of requests that may be repeated): a try with no
    answer (status 0) is repeated for up to RETRY_WITHIN s, each try with at
    least RETRY_TIMEOUT s; any real answer, whatever its status, ends it.
    """
    if retry:
        timeout = max(timeout, RETRY_TIMEOUT)
    argv = ["curl", "-sS", "-i", "--max-time", f"{timeout:g}", "--connect-timeout", f"{timeout:g}"]
    if method == "HEAD":
        argv.append("-I")
    elif method != "GET":
        argv += ["-X", method]
    for h in headers:
        argv += ["-H", h]
    if resolve:
        argv += ["--resolve", resolve]
    for key, value in (form or {}).items():
        argv += ["--data-urlencode", f"{key}={value}"]
    if data is not None:
        argv += ["--data", data]
    argv += [*extra, url]
    if retry:
        return retried(lambda: _curl(ns, argv, timeout), lambda r: r.status != 0)
    return _curl(ns, argv, timeout)


def _curl(ns: str, argv: list[str], timeout: float) -> Http:
    """Run curl's ``argv`` (with ``-i``) in ``ns``; what came back."""
    started = time.monotonic()
    proc = subprocess.run([nsa.IP, "netns", "exec", ns, *argv], capture_output=True,
                          timeout=timeout + 10, check=False)
    seconds = time.monotonic() - started
    out, err = proc.stdout, proc.stderr.decode(errors="replace")
    if not out.startswith(b"HTTP/"):
        return Http(0, error=(err or out.decode(errors="replace")).strip(), rc=proc.returncode,
                    stderr=err, seconds=seconds)
    head, sep, body = out.partition(b"\r\n\r\n")
    if not sep:
        head, _, body = out.partition(b"\n\n")
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    hdrs: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        hdrs[name.strip().lower()] = value.strip()
    status = int(lines[0].split()[1]) if proc.returncode == 0 else 0
    return Http(status, hdrs, body, error="" if status else err.strip(), rc=proc.returncode,
                stderr=err, seconds=seconds)


def internet(ns: str, *, by_address: bool = False, retry: bool = False) -> Http:
    """Fetch http://internet.lab/ (by address when the gateway's DNS may be down).

    ``retry`` for a positive check (an answer MUST come: the page or the portal's
    redirect); an absence check (no answer, no 200) stays one try.
    """
    return http(ns, INTERNET_URL, resolve=RESOLVE_INTERNET if by_address else None, retry=retry)


def has_internet(ns: str, *, by_address: bool = False, retry: bool = False) -> bool:
    """internet.lab's page loads for ``ns``; ``retry`` as for :func:`internet`
    (``assert has_internet(c, retry=True)``, but ``assert not has_internet(c)``)."""
    r = internet(ns, by_address=by_address, retry=retry)
    return r.status == 200 and r.body.strip() == INTERNET_BODY


_FORM_TOKEN = re.compile(r'name="csrf" value="([0-9a-f]*)"')


def form_token(ns: str, base: str = PORTAL, **kw: Any) -> str:
    """The form token of the portal page ``ns`` sees (bound to its address and MAC);
    login and logout posts need it (portalsec, Step 6). ``kw`` goes to http().
    A page MUST come: a try with no answer is repeated (unless ``retry=False``)."""
    page = http(ns, f"{base}/", **{"retry": True, **kw})
    found = _FORM_TOKEN.search(page.body)
    assert found, f"no form token on {base}/ for {ns}: {page.status} {page.error}"
    return found.group(1)


def portal_post(ns: str, url: str, form: Mapping[str, str], **kw: Any) -> Http:
    """POST a portal form (``url`` ends in /login or /logout) as the villager's page
    does: with the form token of the same portal (fetched first, same ``kw``)."""
    base = url.rsplit("/", 1)[0]
    return http(ns, url, form={**form, "csrf": form_token(ns, base, **kw)}, **kw)


def login_terms(ns: str, *, retry: bool = True) -> Http:
    """Accept the terms on the portal, as a villager's browser does. An answer MUST come
    (callers assert its status), so a try with no answer is repeated: harmless, a second
    terms login of the same client is one more 303. ``retry=False`` for load that must
    not wait out a daemon that is down (one try, no answer is status 0)."""
    return portal_post(ns, f"{PORTAL}/login", {"action": "terms"}, retry=retry)


def in_namespace(ns: str, *argv: str, timeout: float = 10.0) -> str:
    """Run ``argv`` in ``ns``; assert it succeeded; its stdout."""
    proc = run_in(ns, list(argv), timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(argv)} in {ns}: {proc.stderr.strip()}"
    return proc.stdout


# -- the MQTT broker (tests/integration/mosquitto.py) ------------------------------------------------


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Any]:
    """A real Mosquitto with its own config, stopped after the test: a plain listener on a
    free loopback port (``port``) and a TLS one (``tls_port``) taking only device
    certificates of its test CA (``pki``). Not root: no namespace needed."""
    from tests.integration.mosquitto import have_mosquitto, running_broker

    if not have_mosquitto():
        pytest.skip("needs mosquitto (apt-get install mosquitto mosquitto-clients)")
    with running_broker(tmp_path / "broker", tls=True) as broker:
        yield broker


# The image module builds the gateway image and boots it: by far the longest module, so
# it goes first and one xdist worker starts on it while the other takes everything else.
# xdist hands out modules in this order (pyproject's --no-loadscope-reorder keeps it from
# sorting them by their number of tests, which put the image module last).
FIRST_MODULES = ("test_image.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in FIRST_MODULES)  # stable: the rest keep order
