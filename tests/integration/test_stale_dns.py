"""Right after login, a client's DNS cache still sends outside names to the gateway.

Before login the pre-login resolver answers every outside name with the gateway's
LAN address; curl keeps that answer 60 s and Chrome up to a minute, so the first
requests after login still reach the portal app with ``Host: internet.lab``. The
gateway relays them to the real site (gateway/portal/passthrough.py). What the
relay reaches is judged in the WAN namespace: an nftables counter there counts the
connections that arrive at each address.
"""

from __future__ import annotations

import json
import re

import pytest

from desanet_lab import LabInfo, LabSpec, run_in
from desanet_lab import plan as p
from gateway.shaping.plan import LOCAL_MINOR, TRUSTED_MINOR
from tests.integration.conftest import (
    INTERNET_BODY,
    INTERNET_URL,
    LAB_TOOLS,
    PORTAL,
    LabFactory,
    desanet,
    http,
    in_namespace,
    login_terms,
    require_root,
    require_tools,
    unique_prefix,
)

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS)]

WATCH = "stalewatch"
# counter -> the connections (first packets) the WAN namespace receives on port 80
COUNTERS = {"site": p.INTERNET_V4, "modem": p.WAN_ISP_V4}


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    # c1 logs in, c2 never does, c3's MAC is trusted (its own fixed shaping class)
    info = make_lab(LabSpec(prefix=unique_prefix("sd"), clients=3, extra={
        "access": {"trusted_macs": [p.client_mac(3)]}}))
    rules = [f"add table inet {WATCH}",
             f"add chain inet {WATCH} input {{ type filter hook input priority 0; }}"]
    for name, address in COUNTERS.items():
        rules += [f"add counter inet {WATCH} {name}",
                  f"add rule inet {WATCH} input ip daddr {address} tcp dport 80 "
                  f"tcp flags & (syn | ack) == syn counter name {name}"]
    for rule in rules:
        in_namespace(info.wan, "nft", rule)
    return info


def connections(lab: LabInfo, name: str) -> int:
    out = json.loads(in_namespace(lab.wan, "nft", "-j", "list", "counter", "inet", WATCH, name))
    return next(int(o["counter"]["packets"]) for o in out["nftables"] if "counter" in o)


def deauth(lab: LabInfo, k: int) -> None:
    out = desanet(lab.control_socket, "clients", "deauth", p.client_mac(k))
    assert out.returncode == 0, out.stderr


def stale(name: str) -> str:
    """curl's --resolve for ``name`` as the pre-login resolver answered it."""
    return f"{name}:80:{p.LAN_IP}"


def test_one_curl_process_gets_the_site_right_after_login(lab: LabInfo) -> None:
    """Issue #8's reproduction without --resolve: curl's own DNS cache holds the
    pre-login answer for the third request."""
    c1 = lab.client(1).name
    site_before = connections(lab, "site")
    out = in_namespace(
        c1, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}\\n",
        INTERNET_URL,
        "--next", "-s", "-o", "/dev/null", "-w", "%{http_code}\\n", "-d", "action=terms",
        f"{PORTAL}/login",
        "--next", "-s", "-w", "\\n%{http_code} %{remote_ip}", INTERNET_URL, timeout=30)
    try:
        first, login, *third = out.split("\n")
        # positive control: before login the same URL is the portal's redirect
        assert first.split()[0] == "302" and first.split()[1].startswith(f"{PORTAL}/"), out
        assert login == "303", out
        body, status = "\n".join(third[:-1]), third[-1].split()
        # the third request still went to the gateway (curl's cached answer) and got the site
        assert status == ["200", p.LAN_IP], out
        assert body.strip() == INTERNET_BODY, out
        assert connections(lab, "site") > site_before  # fetched from the real site
    finally:
        deauth(lab, 1)


def test_the_relay_never_connects_to_a_private_answer(lab: LabInfo) -> None:
    c1, c2 = lab.client(1).name, lab.client(2).name
    assert login_terms(c1).status == 303
    try:
        modem, site = connections(lab, "modem"), connections(lab, "site")
        # modem.lab's public answer is the ISP's link address (100.64.0.1, not global)
        refused = http(c1, f"http://{p.PRIVATE_ANSWER_HOST}/",
                       resolve=stale(p.PRIVATE_ANSWER_HOST))
        assert refused.status == 200 and "Menyambungkan" in refused.body, refused
        assert connections(lab, "modem") == modem
        # positive control: the same stale request for a global (lab: documentation) name
        relayed = http(c1, INTERNET_URL, resolve=stale(p.INTERNET_HOST))
        assert relayed.status == 200 and relayed.body.strip() == INTERNET_BODY, relayed
        assert relayed.headers.get("connection", "").lower() == "close"
        posted = http(c1, INTERNET_URL, resolve=stale(p.INTERNET_HOST), data="nama=Siti")
        assert posted.status == 200 and posted.body.strip() == INTERNET_BODY, posted
        assert connections(lab, "site") >= site + 2
        # a client that is not logged in is never relayed: the portal, nothing to the site
        site = connections(lab, "site")
        other = http(c2, INTERNET_URL, resolve=stale(p.INTERNET_HOST))
        assert other.redirected_to_portal(), other
        assert connections(lab, "site") == site
    finally:
        deauth(lab, 1)


def class_bytes(lab: LabInfo, minor: int) -> int:
    out = run_in(lab.gw, ["tc", "-s", "class", "show", "dev", p.LAN_INTERFACE,
                          "classid", f"1:{minor:x}"], check=True).stdout
    match = re.search(r"Sent (\d+) bytes", out)
    assert match, f"class 1:{minor:x} not on {p.LAN_INTERFACE}: {out!r}"
    return int(match.group(1))


def test_a_relayed_answer_is_shaped_in_the_clients_class(lab: LabInfo) -> None:
    """The relay's answer carries uplink bytes: the trusted client's class counts them,
    not the gateway's "local" class (which is not charged to the uplink)."""
    c3 = lab.client(3).name
    size = 1 << 20  # mb=1
    trusted, local = class_bytes(lab, TRUSTED_MINOR), class_bytes(lab, LOCAL_MINOR)
    got = in_namespace(c3, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                       "--resolve", stale(p.DUKCAPIL_HOST), f"http://{p.DUKCAPIL_HOST}/big?mb=1",
                       timeout=60)
    assert got.split() == ["200", str(size)], got
    assert class_bytes(lab, TRUSTED_MINOR) - trusted >= size
    assert class_bytes(lab, LOCAL_MINOR) - local < size // 10
