"""`clients auth` never silently replaces a villager's voucher session (only with force)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.core.sessions import VOUCHER_SESSION
from gateway.errors import Refused
from gateway.model import ClientView
from tests.unit.conftest import make_config
from tests.unit.corekit import NOW, Core, build_core
from tests.unit.test_cli import FakeDaemon, daemon, run

__all__ = ["daemon"]  # a fixture, imported for the CLI tests below

MAC, IP = "02:00:00:00:00:01", "10.42.0.101"

Client = TestClient[Any, Any]


@pytest.fixture
async def core(tmp_path: Path) -> Core:
    c = build_core(tmp_path, make_config())
    c.neighbours.add(IP, MAC)
    await c.start()
    return c


async def voucher_login(core: Core) -> str:
    _, made = await core.vouchers.create_batch(1, 7200, 1, None, "t")
    await core.sessions.login_voucher(ClientView(IP, MAC, None), made[0].code)
    return made[0].code


async def test_a_voucher_session_is_not_replaced_without_force(core: Core) -> None:
    code = await voucher_login(core)
    before = await core.snapshot()
    with pytest.raises(Refused) as info:
        await core.ops.authorize(MAC, None, 600, None)
    assert info.value.reason == VOUCHER_SESSION
    assert code in str(info.value) and "2h left" in str(info.value)
    assert await core.snapshot() == before
    session = await core.store.active_session(MAC, NOW)
    assert session is not None and session.voucher == code and session.expires == NOW + 7200


async def test_with_force_the_voucher_session_is_replaced(core: Core) -> None:
    await voucher_login(core)
    s = await core.ops.authorize(MAC, None, 600, None, force=True)
    assert (s.source, s.voucher, s.expires) == ("manual", None, NOW + 600)


async def test_other_sessions_are_replaced_without_force(core: Core) -> None:
    # Positive control: only a voucher session is protected.
    await core.sessions.login_terms(ClientView(IP, MAC, None))
    s = await core.ops.authorize(MAC, None, 600, None)
    assert (s.source, s.expires) == ("manual", NOW + 600)


@pytest.fixture
async def client(core: Core) -> AsyncIterator[Client]:
    async with TestClient(TestServer(core.control_app())) as c:
        yield c


async def test_the_api_answers_409_refused_with_the_reason(client: Client, core: Core) -> None:
    await voucher_login(core)
    resp = await client.post("/v1/clients/auth", json={"mac": MAC})
    data = await resp.json()
    assert (resp.status, data["kind"], data["reason"]) == (409, "refused", VOUCHER_SESSION)
    resp = await client.post("/v1/clients/auth", json={"mac": MAC, "force": True})
    assert resp.status == 200
    assert (await resp.json())["client"]["source"] == "manual"


async def test_force_must_be_a_boolean(client: Client, core: Core) -> None:
    before = await core.snapshot()
    resp = await client.post("/v1/clients/auth", json={"mac": MAC, "force": "yes"})
    data = await resp.json()
    assert resp.status == 400 and "force" in data["error"]
    assert await core.snapshot() == before


# -- the CLI --------------------------------------------------------------------------------


def test_cli_prints_the_refusal_and_exits_1(daemon: FakeDaemon,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    daemon.errors["/v1/clients/auth"] = Refused(VOUCHER_SESSION, f"{MAC} is online with "
                                                "voucher AAAAA-BBBBB (2h left)")
    assert run(daemon, "clients", "auth", MAC) == 1
    err = capsys.readouterr().err
    assert "AAAAA-BBBBB" in err and "--force" in err and "nothing changed" in err
    assert daemon.requests[-1][2] == {"mac": MAC}


def test_cli_sends_force(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.answers["/v1/clients/auth"] = {"client": {"mac": MAC, "ip": IP, "expires": NOW}}
    assert run(daemon, "clients", "auth", MAC, "--force") == 0
    assert ("POST", "/v1/clients/auth", {"mac": MAC, "force": True}) in daemon.requests
