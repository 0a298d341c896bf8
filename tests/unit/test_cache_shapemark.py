"""The proxy's uplink-fed answers are shaped in the villager's class: the firewall's
``metered_output`` chain (gateway/firewall/planner.py) and the socket mark the proxy
sets (gateway/cache/shapemark.py)."""

from __future__ import annotations

import re
import socket

from aiohttp.test_utils import make_mocked_request

from gateway.cache.shapemark import SO_MARK, mark_metered
from gateway.firewall.planner import METERED_MARK, TRUSTED_CT_MARK, plan_ruleset
from gateway.model import Session
from tests.unit.conftest import make_config

NOW = 1_700_000_000
A = Session("02:00:00:00:00:01", "10.42.0.101", NOW - 60, NOW + 600, 1800, "terms")
ON = {"enabled": True}


def chain(script: str, name: str) -> str | None:
    match = re.search(rf"  chain {name} \{{\n(.*?)\n  \}}", script, re.S)
    return match.group(1) if match else None


def test_marked_output_to_the_lan_takes_the_clients_class() -> None:
    script = plan_ruleset(make_config(shaping=ON), [A], NOW)
    out = chain(script, "metered_output")
    assert out is not None
    lines = [line.strip() for line in out.splitlines()]
    mark = f"meta mark {METERED_MARK:#x}"
    # After filter_output (which makes everything "local"), in this order: unauthorized,
    # trusted by the connection's mark, then the client's own class by address.
    assert lines[0] == "type filter hook output priority filter + 10; policy accept;"
    assert lines[1] == f'oifname "br-lan" {mark} meta priority set 1:2'
    assert lines[2] == f'oifname "br-lan" {mark} ct mark {TRUSTED_CT_MARK:#x} meta priority set 1:4'
    assert lines[3] == f'oifname "br-lan" {mark} meta priority set ip daddr map @client_class'
    inp = chain(script, "metered_input")
    assert inp is not None and f"ct mark set {TRUSTED_CT_MARK:#x}" in inp
    # unmarked output (the portal, cache hits) keeps the local class
    assert 'meta priority set 1:3' in (chain(script, "filter_output") or "")


def test_no_metered_chains_without_shaping() -> None:
    script = plan_ruleset(make_config(), [A], NOW)
    assert chain(script, "metered_output") is None and "meta mark" not in script


class _Transport:
    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.sock if name == "socket" else default

    def is_closing(self) -> bool:
        return False


def test_mark_metered_sets_so_mark_on_a_tcp_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        request = make_mocked_request("GET", "/x", transport=_Transport(sock))
        marked = mark_metered(request)
        if marked:  # needs CAP_NET_ADMIN, as the daemon has
            assert sock.getsockopt(socket.SOL_SOCKET, SO_MARK) == METERED_MARK
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        assert not mark_metered(make_mocked_request("GET", "/x", transport=_Transport(unix)))
