"""Hostile villagers against the portal (issue #9, portalsec): slow connections,
cross-site logout, malformed forms, voucher guessing from many MACs.

One lab, five clients, a small config so the limits are reached quickly:
20 connections per client (nftables ct count), 30 for the whole portal (the
daemon's cap at accept), a 4 s header timeout, 6 wrong voucher codes a minute
for the village. Each test proves the attempt fails and that a positive
control (another client, or the same action done the villager's way) works;
"online" is judged by what reaches the WAN's internet server (has_internet).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from desanet_lab import LabInfo, LabSpec
from desanet_lab import netns as nsa
from desanet_lab import plan as p
from tests.integration.conftest import (
    LAB_TOOLS,
    PORTAL,
    LabFactory,
    desanet,
    desanet_json,
    form_token,
    has_internet,
    http,
    in_namespace,
    login_terms,
    portal_post,
    require_root,
    require_tools,
    unique_prefix,
    wait_until,
)

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS)]

PER_CLIENT = 20
CAP = 30
HEADER_TIMEOUT = 4
VILLAGE_FAILURES = 6
AGENT = Path(__file__).with_name("slowloris_agent.py")
VILLAGE_LIMITED = "Terlalu banyak kode voucher salah dicoba di jaringan desa"


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    return make_lab(LabSpec(prefix=unique_prefix("hp"), clients=5, extra={"portal": {
        "max_connections_per_client": PER_CLIENT, "max_connections": CAP,
        "header_timeout": f"{HEADER_TIMEOUT}s", "voucher_failures_per_minute": VILLAGE_FAILURES,
    }}))


def ns(lab: LabInfo, k: int) -> str:
    return lab.client(k).name


class Agent:
    """A slowloris agent in a client's namespace; ``last`` is its latest JSON line."""

    def __init__(self, namespace: str, port: int, conns: int) -> None:
        self.proc = subprocess.Popen(
            [nsa.IP, "netns", "exec", namespace, sys.executable, str(AGENT), p.LAN_IP,
             str(port), str(conns)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.last: dict[str, int] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.last = json.loads(line)

    def get(self, key: str) -> int:
        return self.last.get(key, 0)

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)


@contextmanager
def attacking(namespace: str, conns: int, port: int = 80) -> Iterator[Agent]:
    agent = Agent(namespace, port, conns)
    try:
        yield agent
    finally:
        agent.stop()


def portal_loads(namespace: str) -> bool:
    page = http(namespace, f"{PORTAL}/", timeout=3)
    return page.status == 200 and 'name="csrf"' in page.body


def status_answers(lab: LabInfo) -> bool:
    return desanet(lab.control_socket, "status", timeout=10).returncode == 0


# -- slow connections ----------------------------------------------------------------------


def test_one_client_cannot_hold_more_than_its_share_of_slow_connections(lab: LabInfo) -> None:
    c1, c2 = ns(lab, 1), ns(lab, 2)
    assert portal_loads(c2) and status_answers(lab), "control: the portal and the CLI answer"
    with attacking(c1, 200) as agent:
        wait_until(lambda: agent.get("refused") >= 5, 20, "the firewall refusing c1's surplus")
        # the header timeout cuts the slow ones (they never finish their headers)
        wait_until(lambda: agent.get("cut") >= PER_CLIENT, 30, "slow headers cut by the daemon")
        assert 0 < agent.get("max_open") <= PER_CLIENT, agent.last
        # the firewall counts c1's connections (the refusals are its resets, not timeouts)
        # (an element lives while c1 holds a connection: between a cut and the next
        # reconnect it may be gone, so wait to see it rather than read once)
        ip1 = lab.client(1).ipv4
        assert ip1
        wait_until(lambda: ip1 in in_namespace(lab.gw, "nft", "list", "set", "inet", "desanet",
                                               "portal_conns4"),
                   20, "c1's address in the firewall's connection counts")
        # positive control: while c1 keeps attacking, another client and the CLI are served
        assert portal_loads(c2)
        assert status_answers(lab)
    assert wait_until(lambda: portal_loads(c1), 10, "c1 served again once it stops")


def test_many_slow_clients_hit_the_cap_and_the_control_socket_still_answers(
        lab: LabInfo) -> None:
    c1, c2, c3 = ns(lab, 1), ns(lab, 2), ns(lab, 3)
    with attacking(c1, PER_CLIENT) as a1, attacking(c3, PER_CLIENT) as a3:
        # 40 wanted, 30 served: the daemon resets the rest as it accepts them
        wait_until(lambda: a1.get("early") + a3.get("early") >= 5, 30,
                   "connections over the portal's cap reset at accept")
        assert status_answers(lab), "the control socket has its own handles"
        info = desanet_json(lab.control_socket, "status")
        assert info, "status answers with content"
    # positive control: once the attackers stop, the portal serves everyone again
    wait_until(lambda: portal_loads(c2), 10, "c2 served once the attack stops")
    assert portal_loads(c1)


# -- cross-site logout ---------------------------------------------------------------------------


def test_a_logout_without_the_villagers_form_token_is_refused(lab: LabInfo) -> None:
    c2, c3 = ns(lab, 2), ns(lab, 3)
    assert login_terms(c2).status == 303
    wait_until(lambda: has_internet(c2), 10, "c2 online")
    others = form_token(c3)  # a token, but bound to another client
    for headers, form in (([], {"lang": "id"}), (["Origin: null"], {"lang": "id"}),
                          (["Origin: null"], {"lang": "id", "csrf": others}),
                          ([f"Origin: {PORTAL}"], {"csrf": "0" * 32})):
        out = http(c2, f"{PORTAL}/logout", form=form, headers=headers)
        assert out.status == 403, (headers, form, out.status)
        assert "Formulir ini sudah kedaluwarsa" in out.body and 'action="/logout"' in out.body
        assert has_internet(c2, retry=True), f"c2 logged out by {headers} {form}"
    # positive control: the villager's own logout button
    out = portal_post(c2, f"{PORTAL}/logout", {"lang": "id"})
    assert out.status == 303 and out.location == "/?keluar=1"
    wait_until(lambda: not has_internet(c2), 10, "c2 offline after its own logout")


def test_a_login_without_a_form_token_logs_nobody_in(lab: LabInfo) -> None:
    c4 = ns(lab, 4)
    refused = http(c4, f"{PORTAL}/login", form={"action": "terms"}, headers=["Origin: null"])
    assert refused.status == 403 and 'name="csrf"' in refused.body  # the form again
    assert not has_internet(c4)


# -- malformed forms -------------------------------------------------------------------------------


@pytest.mark.parametrize(("content_type", "body"), [
    ("multipart/form-data", "--x\r\nContent-Disposition: form-data\r\n\r\nterms\r\n--x--\r\n"),
    ("multipart/form-data; boundary=x",
     "--x\r\nContent-Disposition: form-data\r\n\r\nterms\r\n--x--\r\n"),
    ("multipart/form-data; boundary=x", "garbage"),
])
def test_a_multipart_login_without_boundary_or_name_is_a_400(
        lab: LabInfo, content_type: str, body: str) -> None:
    c5 = ns(lab, 5)
    out = http(c5, f"{PORTAL}/login", data=body, headers=[f"Content-Type: {content_type}"])
    assert out.status == 400 and "Formulir tidak lengkap" in out.body, out
    assert not has_internet(c5)
    # positive control: a well-formed multipart form logs in (curl -F)
    token = form_token(c5)
    good = http(c5, f"{PORTAL}/login", extra=("-F", "action=terms", "-F", f"csrf={token}"))
    assert good.status == 303, good
    wait_until(lambda: has_internet(c5), 10, "c5 online after a well-formed multipart login")
    assert desanet(lab.control_socket, "clients", "deauth", lab.client(5).mac).returncode == 0
    wait_until(lambda: not has_internet(c5), 10, "c5 offline again")


# -- voucher guessing from many MACs ---------------------------------------------------------------


def voucher(namespace: str, code: str) -> Any:
    return portal_post(namespace, f"{PORTAL}/login", {"action": "voucher", "voucher": code})


def test_rotating_macs_share_one_village_budget_and_right_codes_still_get_in(
        lab: LabInfo) -> None:
    """6 wrong codes a minute for the whole village, whatever the number of MACs. A right
    code does not spend the budget; while wrong codes have spent it every code waits (no
    guess is answered), and the wait ends by itself a minute after the guessing."""
    sock = lab.control_socket
    made = desanet_json(sock, "vouchers", "create", "--count", "2", "--duration", "1h")
    right = [v["code"] for v in made["vouchers"]]
    guesses = iter(f"ZZZZ{a}-{b}ZZZZ" for a in "23456789" for b in "23456789")
    c1, c3, c4 = ns(lab, 1), ns(lab, 3), ns(lab, 4)
    for _ in range(5):  # the first "MAC": its own budget of 5
        assert voucher(c1, next(guesses)).status == 403
    # a right code meanwhile: in, and the village budget untouched by it
    assert voucher(c4, right[0]).status == 303
    wait_until(lambda: has_internet(c4), 10, "c4 online with a right code")
    assert voucher(c3, next(guesses)).status == 403  # the sixth wrong code of the village
    for k in (3, 2, 5):  # more MACs get no more guesses
        out = voucher(ns(lab, k), next(guesses))
        assert out.status == 429 and VILLAGE_LIMITED in out.body, (k, out.status)
        assert 1 <= int(out.headers["retry-after"]) <= 60
    # while it is spent a right code waits too (else guessing would simply go on) ...
    c2 = ns(lab, 2)
    assert voucher(c2, right[1]).status == 429
    assert not has_internet(c2)
    # ... and gets in once the first wrong code is a minute old (not shut out for good)
    wait_until(lambda: voucher(c2, right[1]).status == 303, 75, "c2's right code accepted",
               interval=5)
    wait_until(lambda: has_internet(c2), 10, "c2 online")
    for k in (2, 4):
        desanet(sock, "clients", "deauth", lab.client(k).mac)
