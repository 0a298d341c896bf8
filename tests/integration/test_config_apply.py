"""Config that cannot lock you out, with the real daemon in the virtual village.

`desanet config apply --confirm` that nobody confirms comes back by itself,
a confirmed one stays, a kill -9 during the window rolls back at the next
start, a config whose dnsmasq step fails is undone completely, a reload that
only changes the terms text keeps a villager's open portal connection, and
invalid files (apply, reload, SIGHUP) change nothing. Each case checks its
positive control beside it: the new config really ran, the client really
had access before, the connection really is the same one.

One lab for the module; every test leaves the original config running
(the autouse ``restored`` fixture checks and repairs it).
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from desanet_lab import LabInfo, LabSpec
from desanet_lab import netns as nsa
from desanet_lab import plan as p
from desanet_lab.labconfig import deep_merge
from tests.integration.conftest import (
    LAB_TOOLS,
    PORTAL,
    ROOT,
    LabFactory,
    desanet,
    desanet_argv,
    desanet_json,
    desanet_ok,
    ensure_gateway,
    gateway_pid,
    has_internet,
    http,
    in_namespace,
    login_terms,
    require_root,
    require_tools,
    start_gateway,
    stop_gateway,
    unique_prefix,
    wait_until,
)

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS, "ss")]

PREFIX = unique_prefix("ca")
WINDOW = "5s"  # the shortest confirm window the daemon accepts
# Where a CLI call must land inside the window (the confirm), some room for a loaded machine.
CONFIRM_WINDOW = "10s"
# A trial left to run out: its positive control (a status call and a portal fetch, each a new
# process) must land inside the window, which starts before the apply command has returned.
TRIAL_WINDOW = "15s"
ROLLBACK_WAIT = 35.0  # the 15 s window + the 1 s deadline timer + a converge, with room for load
# The default Indonesian terms (config/schema.py), shown while the lab's config runs.
DEFAULT_TERMS_ID = "Gunakan internet dengan bijak"


@dataclass(frozen=True)
class Original:
    """The config the lab started with: its text on disk and the version the daemon reports."""

    text: str
    version: str


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    """c1 logs in (terms) and keeps internet throughout; c2 stays at the portal."""
    info = make_lab(LabSpec(prefix=PREFIX, clients=2))
    assert not has_internet(info.client(1).name), "c1 had internet before logging in"
    r = login_terms(info.client(1).name)
    assert r.status in (302, 303), f"terms login of c1 answered {r.status} {r.error}"
    wait_until(lambda: has_internet(info.client(1).name), 10, "c1 online after the terms login")
    return info


@pytest.fixture(scope="module")
def original(lab: LabInfo) -> Original:
    return Original(Path(lab.config_path).read_text(encoding="utf-8"),
                    config_status(lab)["version"])


@pytest.fixture(autouse=True)
def restored(lab: LabInfo, original: Original) -> Iterator[None]:
    """After each test: the daemon runs the original config, the file holds its text,
    no trial is pending and c1 is online (so every test starts from the same state)."""
    yield
    ensure_gateway(lab)
    if config_status(lab)["trial"] is not None:
        desanet_ok(lab.control_socket, "config", "rollback")
    if Path(lab.config_path).read_text(encoding="utf-8") != original.text:
        Path(lab.config_path).write_text(original.text, encoding="utf-8")
        desanet_ok(lab.control_socket, "reload")
    cfg = config_status(lab)
    assert cfg["version"] == original.version and cfg["trial"] is None, \
        f"could not restore the original config: {cfg}"
    c1 = lab.client(1).name
    if not has_internet(c1):
        login_terms(c1)
        wait_until(lambda: has_internet(c1), 10, "c1 online again after the test")


# -- helpers -----------------------------------------------------------------------------------


def config_status(lab: LabInfo) -> dict[str, Any]:
    """The "config" part of `desanet status --json`."""
    data: dict[str, Any] = desanet_json(lab.control_socket, "status")["config"]
    return data


def running_without_trial(lab: LabInfo, version: str) -> bool:
    cfg = config_status(lab)
    return bool(cfg["version"] == version and cfg["trial"] is None)


def variant(original: Original, changes: dict[str, Any]) -> str:
    """The original config with ``changes`` deep-merged in, as TOML text."""
    return tomli_w.dumps(deep_merge(tomllib.loads(original.text), changes))


def write_file(tmp_path: Path, text: str, name: str = "new.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def marker(tag: str) -> str:
    """A terms text no page shows unless this test's config runs."""
    return f"SYARAT-{tag}-{os.getpid()}-{time.monotonic_ns()}"


def events(lab: LabInfo, since: int = 0) -> list[dict[str, Any]]:
    """`desanet events --no-follow --json --since N`: one JSON object per line.

    (Not through desanet_json: that parses stdout as one JSON document.)
    """
    proc = subprocess.run(
        [*desanet_argv(), "--socket", lab.control_socket, "events", "--no-follow", "--json",
         "--since", str(since)],
        capture_output=True, text=True, timeout=20, check=False, cwd=str(ROOT),
    )
    assert proc.returncode == 0, f"desanet events exited {proc.returncode}: {proc.stderr}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def last_seq(lab: LabInfo) -> int:
    found = events(lab)
    return int(found[-1]["seq"]) if found else 0


def config_events(lab: LabInfo, since: int) -> list[dict[str, Any]]:
    return [e for e in events(lab, since) if str(e["type"]).startswith("config_")]


def portal_page(lab: LabInfo, k: int = 2) -> str:
    """The portal's login page in Indonesian as client ``k`` sees it; asserts 200."""
    r = http(lab.client(k).name, f"{PORTAL}/?lang=id")
    assert r.status == 200, f"the portal did not answer c{k}: {r.status} {r.error}"
    return r.body


def shows_terms(lab: LabInfo, text: str) -> bool:
    r = http(lab.client(2).name, f"{PORTAL}/?lang=id")
    return r.status == 200 and text in r.body


def still_captive(lab: LabInfo) -> bool:
    """c2 (never logged in) is still sent to the portal: the firewall still enforces."""
    r = http(lab.client(2).name, f"http://{p.INTERNET_HOST}/")
    return r.redirected_to_portal()


def dnsmasq_state(lab: LabInfo) -> dict[str, Any]:
    data: dict[str, Any] = desanet_json(lab.control_socket, "status")["dnsmasq"]
    return data


def nft_table(lab: LabInfo) -> str:
    from gateway.firewall.planner import FAMILY, TABLE

    return in_namespace(lab.gw, "nft", "list", "table", FAMILY, TABLE)


def portal_listener_inode(lab: LabInfo) -> str:
    """The inode of the daemon's listening socket on the portal's LAN address, port 80."""
    out = in_namespace(lab.gw, "ss", "-Hltne", "sport = :80")
    inodes = [m.group(1) for line in out.splitlines() if f"{p.LAN_IP}:80" in line
              for m in [re.search(r"\bino:(\d+)", line)] if m]
    assert len(inodes) == 1, f"expected one portal listener on {p.LAN_IP}:80, ss says: {out!r}"
    return inodes[0]


def apply(lab: LabInfo, path: str, *extra: str) -> dict[str, Any]:
    data: dict[str, Any] = desanet_json(lab.control_socket, "config", "apply", path, *extra)
    assert data["applied"] is True, data
    return data


def assert_old_config_works(lab: LabInfo, original: Original, new_terms: str) -> None:
    """The original config runs again, and it works for villagers."""
    cfg = config_status(lab)
    assert cfg["version"] == original.version and cfg["trial"] is None, cfg
    assert Path(lab.config_path).read_text(encoding="utf-8") == original.text, \
        "the config file on disk is not the original text again"
    page = portal_page(lab)
    assert new_terms not in page, "the portal still shows the rolled-back terms"
    assert DEFAULT_TERMS_ID in page, "the portal does not show the original terms"
    assert has_internet(lab.client(1).name, retry=True), "c1 (logged in before) lost internet access"
    assert still_captive(lab), "c2 (never logged in) is no longer sent to the portal"


# -- 1. a trial nobody confirms comes back by itself --------------------------------------------


def test_unconfirmed_trial_rolls_back_by_itself_and_the_old_config_works(
        lab: LabInfo, original: Original, tmp_path: Path) -> None:
    assert has_internet(lab.client(1).name, retry=True), "control: c1 is online before the trial"
    terms = marker("TRIAL")
    new_text = variant(original, {"portal": {"terms_id": terms}})
    since = last_seq(lab)

    out = apply(lab, write_file(tmp_path, new_text), "--confirm", TRIAL_WINDOW)
    new_version = out["version"]
    assert new_version != original.version and out["previous_version"] == original.version
    assert out["trial"] and out["trial"]["previous_version"] == original.version, out
    assert any(c["path"] == "portal.terms_id" for c in out["changes"]), out["changes"]

    # Positive control: during the window the new config really runs.
    cfg = config_status(lab)
    assert cfg["version"] == new_version and cfg["trial"] is not None, cfg
    assert terms in portal_page(lab), "the trial's terms never reached the portal"
    assert Path(lab.config_path).read_text(encoding="utf-8") == new_text

    wait_until(lambda: running_without_trial(lab, original.version), ROLLBACK_WAIT,
               "the unconfirmed trial to roll back")
    assert_old_config_works(lab, original, terms)

    found = config_events(lab, since)
    applied = [e for e in found if e["type"] == "config_applied" and e["version"] == new_version]
    rolled = [e for e in found if e["type"] == "config_rolled_back"]
    assert len(applied) == 1 and applied[0]["source"] == "cli", found
    assert applied[0]["trial_deadline"] == out["trial"]["deadline"], applied
    assert len(rolled) == 1, found
    assert rolled[0]["source"] == "timer", rolled
    assert rolled[0]["version"] == original.version and rolled[0]["from_version"] == new_version
    assert applied[0]["seq"] < rolled[0]["seq"], found


# -- 2. a confirmed trial stays -----------------------------------------------------------------


def test_confirmed_trial_stays_past_its_deadline(
        lab: LabInfo, original: Original, tmp_path: Path) -> None:
    terms = marker("CONFIRMED")
    new_text = variant(original, {"portal": {"terms_id": terms}})
    since = last_seq(lab)

    out = apply(lab, write_file(tmp_path, new_text), "--confirm", CONFIRM_WINDOW)
    new_version, deadline = out["version"], out["trial"]["deadline"]
    # A separate CLI process: a new control connection, as the technician's new SSH login.
    confirmed = desanet_json(lab.control_socket, "config", "confirm")
    assert confirmed == {"confirmed": True, "version": new_version}, confirmed
    assert config_status(lab)["trial"] is None

    # Past the deadline, with the 1 s deadline timer given two more turns.
    wait_until(lambda: time.time() >= deadline + 2.5, 30, "the trial's deadline to pass",
               interval=0.5)
    cfg = config_status(lab)
    assert cfg["version"] == new_version and cfg["trial"] is None, cfg
    assert Path(lab.config_path).read_text(encoding="utf-8") == new_text
    assert terms in portal_page(lab), "the confirmed terms are no longer on the portal"
    assert has_internet(lab.client(1).name, retry=True)

    found = config_events(lab, since)
    assert [e["type"] for e in found] == ["config_applied", "config_confirmed"], found
    assert found[1]["version"] == new_version and found[1]["source"] == "cli", found


# -- 3. kill -9 during the window: the next start rolls back ------------------------------------


def test_kill_9_during_the_window_rolls_back_at_the_next_start(
        lab: LabInfo, original: Original, tmp_path: Path) -> None:
    terms = marker("KILLED")
    new_text = variant(original, {"portal": {"terms_id": terms}})
    # A long window: the rollback seen below can only come from the start, not the timer.
    out = apply(lab, write_file(tmp_path, new_text), "--confirm", "10m")
    new_version = out["version"]
    cfg = config_status(lab)
    assert cfg["version"] == new_version and cfg["trial"] is not None, cfg
    assert terms in portal_page(lab), "control: the trial's terms reached the portal"

    old_pid = stop_gateway(lab, signal.SIGKILL)
    assert Path(lab.config_path).read_text(encoding="utf-8") == new_text, \
        "control: the killed daemon left the trial's text in the file"
    new_pid = start_gateway(lab)
    assert new_pid != old_pid

    cfg = config_status(lab)
    assert cfg["version"] == original.version and cfg["trial"] is None, cfg
    assert Path(lab.config_path).read_text(encoding="utf-8") == original.text, \
        "the config file on disk is not the original text after the restart"
    rolled = [e for e in events(lab) if e["type"] == "config_rolled_back"]
    assert len(rolled) == 1, rolled
    assert rolled[0]["source"] == "start", rolled
    assert rolled[0]["version"] == original.version and rolled[0]["from_version"] == new_version
    assert (cfg["last_change"] or {}).get("type") == "config_rolled_back", cfg

    wait_until(lambda: has_internet(lab.client(1).name), 15, "c1 online after the restart")
    wait_until(lambda: shows_terms(lab, DEFAULT_TERMS_ID), 10, "the original terms on the portal")
    assert terms not in portal_page(lab)
    assert still_captive(lab)


@pytest.mark.parametrize("broken_by", ["dnsmasq", "parse"])
def test_a_config_that_fails_at_start_falls_back_to_the_last_that_ran(
        lab: LabInfo, original: Original, broken_by: str) -> None:
    """The file is edited by hand (into a config dnsmasq refuses, or into one that does
    not even parse), then the box restarts: the daemon comes up with the last config
    that ran, not with nothing."""
    terms = marker("BROKEN")
    if broken_by == "dnsmasq":
        broken = variant(original, {"portal": {"terms_id": terms},
                                    "programs": {"dnsmasq": "/bin/false"}})
    else:
        broken = original.text + f"\n[portal\nterms_id = {terms!r} = =\n"
    stop_gateway(lab, signal.SIGTERM)
    Path(lab.config_path).write_text(broken, encoding="utf-8")
    start_gateway(lab)

    cfg = config_status(lab)
    assert cfg["version"] == original.version and cfg["trial"] is None, cfg
    assert (cfg["last_refusal"] or {}).get("step") == broken_by, cfg
    assert Path(lab.config_path).read_text(encoding="utf-8") == original.text
    assert Path(lab.config_path + ".refused").read_text(encoding="utf-8") == broken
    rolled = [e for e in events(lab) if e["type"] == "config_rolled_back"]
    assert [e["source"] for e in rolled] == ["start"], rolled
    assert dnsmasq_state(lab)["running"]
    wait_until(lambda: has_internet(lab.client(1).name), 15, "c1 online after the restart")
    assert terms not in portal_page(lab) and still_captive(lab)


# -- 4. a config whose dnsmasq step fails: everything undone ------------------------------------


def test_failed_dnsmasq_step_undoes_everything(
        lab: LabInfo, original: Original, tmp_path: Path) -> None:
    c1_mac = lab.client(1).mac
    # Positive controls: what must survive is there before.
    dns = dnsmasq_state(lab)
    assert dns["running"] and dns["pid"], dns
    assert c1_mac in nft_table(lab), "control: c1's session is in the nftables sets"
    assert has_internet(lab.client(1).name, retry=True)
    since = last_seq(lab)

    terms = marker("BADDNS")  # the "config" step runs first: undone too, or the portal shows it
    bad = write_file(tmp_path, variant(original, {"portal": {"terms_id": terms},
                                                  "programs": {"dnsmasq": "/bin/false"}}))
    desanet_ok(lab.control_socket, "config", "check", bad)  # control: the file itself is valid
    res = desanet(lab.control_socket, "config", "apply", bad)
    assert res.rc == 1, res.describe()
    assert "dnsmasq" in res.stderr, f"the error does not name the step: {res.stderr!r}"

    cfg = config_status(lab)
    assert cfg["version"] == original.version and cfg["trial"] is None, cfg
    refusal = cfg["last_refusal"]
    assert refusal and refusal["step"] == "dnsmasq" and "dnsmasq" in refusal["reason"], cfg
    assert Path(lab.config_path).read_text(encoding="utf-8") == original.text

    after = dnsmasq_state(lab)
    assert after["running"] and after["pid"] == dns["pid"], \
        f"dnsmasq was touched by a refused config: before {dns}, after {after}"
    assert nsa.pid_alive(dns["pid"])
    table = nft_table(lab)
    assert c1_mac in table, "c1's session left the nftables sets"
    page = portal_page(lab)
    assert terms not in page and DEFAULT_TERMS_ID in page, "the refused config's terms are shown"
    assert has_internet(lab.client(1).name, retry=True), "c1 lost internet access"
    assert still_captive(lab)

    refused = [e for e in config_events(lab, since) if e["type"] == "config_refused"]
    assert [(e["step"], e["source"]) for e in refused] == [("dnsmasq", "cli")], refused
    assert not [e for e in config_events(lab, since) if e["type"] == "config_applied"]

    # The same as a trial: refused, and no trial is left pending to roll back later.
    res = desanet(lab.control_socket, "config", "apply", bad, "--confirm", WINDOW)
    assert res.rc == 1 and "dnsmasq" in res.stderr, res.describe()
    cfg = config_status(lab)
    assert cfg["version"] == original.version and cfg["trial"] is None, cfg
    assert dnsmasq_state(lab)["pid"] == dns["pid"]


# -- 5. a terms-only reload keeps a villager's open portal connection ---------------------------

_HELD_PORTAL = """
import http.client, json, sys
conn = http.client.HTTPConnection(sys.argv[1], 80, timeout=8)
conn.auto_open = 0  # never reconnect silently: a dropped connection is an error
conn.connect()
first = conn.sock
print(json.dumps({"connected": list(first.getsockname())}), flush=True)
extra = {"Connection": "close"} if sys.argv[2] == "close" else {}
for _ in sys.stdin:
    try:
        same = conn.sock is first
        conn.request("GET", "/?lang=id", headers={"Host": sys.argv[3], **extra})
        r = conn.getresponse()
        body = r.read().decode("utf-8", "replace")
        print(json.dumps({"status": r.status, "same_socket": same, "body": body}), flush=True)
    except Exception as exc:
        print(json.dumps({"status": 0, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
"""


class HeldPortalConnection:
    """One keep-alive HTTP connection from a client to the portal; each
    :meth:`get` sends one more request on it (never a new connection)."""

    def __init__(self, ns: str, close: bool = False) -> None:
        self.proc = subprocess.Popen(
            [nsa.IP, "netns", "exec", ns, sys.executable, "-c", _HELD_PORTAL, p.LAN_IP,
             "close" if close else "keep", p.PORTAL_HOSTNAME],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        first = self._line(10.0)
        assert "connected" in first, f"no connection to the portal from {ns}: {first}"

    def _line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            return {"status": 0, "error": "no answer from the client script"}
        data: dict[str, Any] = json.loads(line)
        return data

    def get(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self._line(15.0)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


def test_held_connection_notices_a_closed_connection(lab: LabInfo) -> None:
    """Control for the next test: the client script does fail when the server closes."""
    held = HeldPortalConnection(lab.client(2).name, close=True)
    try:
        first = held.get()
        assert first["status"] == 200, first
        second = held.get()
        assert second["status"] == 0 and second.get("error"), second
    finally:
        held.close()


@pytest.mark.parametrize("how", ["reload", "sighup"])
def test_terms_only_reload_keeps_an_open_portal_connection(
        lab: LabInfo, original: Original, how: str) -> None:
    listener = portal_listener_inode(lab)
    held = HeldPortalConnection(lab.client(2).name)
    try:
        first = held.get()
        assert first["status"] == 200, first
        assert DEFAULT_TERMS_ID in first["body"]

        terms = marker(how.upper())
        Path(lab.config_path).write_text(
            variant(original, {"portal": {"terms_id": terms}}), encoding="utf-8")
        if how == "reload":
            out = desanet_json(lab.control_socket, "reload")
            assert out["reloaded"] is True and out["version"] != original.version, out
            assert [c["path"] for c in out["changes"]] == ["portal.terms_id"], out
        else:
            os.kill(gateway_pid(lab), signal.SIGHUP)
            wait_until(lambda: config_status(lab)["version"] != original.version, 15,
                       "the SIGHUP reload to run")
            assert (config_status(lab)["last_change"] or {}).get("source") == "sighup"

        second = held.get()
        assert second["status"] == 200, f"the open portal connection was dropped: {second}"
        assert second["same_socket"] is True, second
        assert terms in second["body"], "the second request did not see the new terms"
        assert portal_listener_inode(lab) == listener, "the portal listener was replaced"
    finally:
        held.close()


# -- 6. invalid files change nothing ------------------------------------------------------------

INVALID = {
    "portal": {"mode": "sometimes", "http_port": 0},
    "dhcp": {"range_start": "not-an-address"},
}
INVALID_PATHS = ("portal.mode", "portal.http_port", "dhcp.range_start")


def invalid_text(original: Original) -> str:
    return variant(original, INVALID)


def assert_running_config_intact(lab: LabInfo, original: Original) -> None:
    assert config_status(lab)["version"] == original.version
    assert DEFAULT_TERMS_ID in portal_page(lab)
    assert has_internet(lab.client(1).name, retry=True), "c1 lost internet access"
    assert still_captive(lab)


def test_apply_of_an_invalid_file_exits_2_lists_every_problem_and_changes_nothing(
        lab: LabInfo, original: Original, tmp_path: Path) -> None:
    since = last_seq(lab)
    res = desanet(lab.control_socket, "config", "apply", write_file(tmp_path, invalid_text(
        original)), "--confirm", WINDOW)
    assert res.rc == 2, res.describe()
    for path in INVALID_PATHS:
        assert path in res.stderr, f"{path} is not among the problems: {res.stderr!r}"
    cfg = config_status(lab)
    assert cfg["version"] == original.version and cfg["trial"] is None, cfg
    assert Path(lab.config_path).read_text(encoding="utf-8") == original.text
    assert config_events(lab, since) == [], "an invalid file reached the daemon"
    assert_running_config_intact(lab, original)

    # A valid file with a window shorter than the daemon accepts: refused before sending too.
    valid = write_file(tmp_path, variant(original, {"portal": {"terms_id": marker("SHORT")}}),
                       "valid.toml")
    res = desanet(lab.control_socket, "config", "apply", valid, "--confirm", "4s")
    assert res.rc == 2 and "confirm" in res.stderr, res.describe()
    assert config_status(lab)["version"] == original.version
    assert config_events(lab, since) == [], "a too-short window reached the daemon"


def test_reload_of_an_invalid_file_is_refused_and_visible(
        lab: LabInfo, original: Original) -> None:
    since = last_seq(lab)
    started = int(time.time())
    Path(lab.config_path).write_text(invalid_text(original), encoding="utf-8")
    res = desanet(lab.control_socket, "reload")
    for path in INVALID_PATHS:
        assert path in res.stderr, f"{path} is not among the problems: {res.stderr!r}"

    cfg = config_status(lab)
    refusal = cfg["last_refusal"]
    assert refusal and refusal["source"] == "cli" and refusal["time"] >= started, cfg
    assert all(path in refusal["reason"] for path in INVALID_PATHS), refusal
    refused = [e for e in config_events(lab, since) if e["type"] == "config_refused"]
    assert [e["source"] for e in refused] == ["cli"], refused
    assert_running_config_intact(lab, original)
    # The contract: `desanet reload` exits 1 when refused (what systemctl reload reports).
    assert res.rc == 1, res.describe()


def test_sighup_with_an_invalid_file_is_refused_and_visible(
        lab: LabInfo, original: Original) -> None:
    since = last_seq(lab)
    started = int(time.time())
    pid = gateway_pid(lab)
    Path(lab.config_path).write_text(invalid_text(original), encoding="utf-8")
    os.kill(pid, signal.SIGHUP)

    def refused_by_sighup() -> list[dict[str, Any]]:
        return [e for e in config_events(lab, since)
                if e["type"] == "config_refused" and e["source"] == "sighup"]

    refused = wait_until(refused_by_sighup, 15, "the SIGHUP reload to be refused")
    assert len(refused) == 1, refused
    refusal = config_status(lab)["last_refusal"]
    assert refusal and refusal["source"] == "sighup" and refusal["time"] >= started, refusal
    assert all(path in refusal["reason"] for path in INVALID_PATHS), refusal
    assert gateway_pid(lab) == pid, "the daemon restarted on a refused SIGHUP"
    assert_running_config_intact(lab, original)
