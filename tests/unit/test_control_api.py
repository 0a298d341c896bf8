"""The control API's input checks, against a stub daemon with a real store.

Bad input must change nothing and the error must name the field.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.config import Config
from gateway.control.server import create_control_app
from gateway.model import Session, SessionSource
from gateway.store import Store
from tests.unit.conftest import make_config

NOW = 1_700_000_000
MAC = "02:00:00:00:00:01"


class StubNetlink:
    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


class StubNeighbours:
    def ip_of(self, mac: str) -> str | None:
        return "10.42.0.101"


class StubGateway:
    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self.netlink = StubNetlink()
        self.neighbours = StubNeighbours()
        self.calls: list[tuple[Any, ...]] = []

    def now(self) -> int:
        return NOW

    async def authorize(self, mac: str, ip: str, source: SessionSource,
                        duration: int | None = None, plan: str | None = None) -> Session:
        self.calls.append(("authorize", mac, ip, duration, plan))
        return Session(mac, ip, NOW, NOW + (duration or 3600), 1800, source, None, plan)

    async def change_plan(self, mac: str, plan: str | None) -> Session:
        self.calls.append(("plan", mac, plan))
        return Session(mac, "10.42.0.101", NOW, NOW + 3600, 1800, "manual", None, plan)

    async def sweep(self) -> None:
        self.calls.append(("sweep",))


@pytest.fixture
def gw(tmp_path: Path) -> StubGateway:
    cfg = make_config(shaping={"plans": {"school": {"down": "4mbit", "up": "1mbit"}}})
    return StubGateway(cfg, Store(tmp_path / "db"))


@pytest.fixture
async def client(gw: StubGateway) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_control_app(gw)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as c:
        yield c


async def post(client: TestClient[Any, Any], path: str, body: Any) -> tuple[int, Any]:
    resp = await client.post(path, json=body)
    return resp.status, await resp.json()


@pytest.mark.parametrize(("body", "field"), [
    ({"mac": MAC, "plan": ["school"]}, "field plan"),
    ({"mac": MAC, "plan": {"a": 1}}, "field plan"),
    ({"mac": MAC, "plan": "nosuchplan"}, "field plan"),
    ({"mac": MAC, "duration": 1.5}, "field duration"),
    ({"mac": MAC, "duration": ["4h"]}, "field duration"),
    ({"mac": MAC, "duration": "99999d"}, "field duration"),
    ({"mac": MAC, "ip": 167772261}, "field ip"),
    ({"mac": MAC, "ip": "10.42.0.1"}, "field ip"),  # the gateway itself
    ({"mac": MAC, "ip": "10.42.0.255"}, "field ip"),  # broadcast
    ({"mac": MAC, "ip": "10.42.0.101", "plan": ["x"], "duration": "4h"}, "field plan"),
])
async def test_auth_bad_input_names_field_and_changes_nothing(
    client: TestClient[Any, Any], gw: StubGateway, body: dict[str, Any], field: str
) -> None:
    status, data = await post(client, "/v1/clients/auth", body)
    assert 400 <= status < 500, data
    assert field in data["error"]
    assert gw.calls == []


async def test_auth_good_input_reaches_daemon(
    client: TestClient[Any, Any], gw: StubGateway
) -> None:
    status, data = await post(client, "/v1/clients/auth",
                              {"mac": MAC, "duration": "4h", "plan": "school"})
    assert status == 200, data
    assert gw.calls == [("authorize", MAC, "10.42.0.101", 4 * 3600, "school")]


@pytest.mark.parametrize(("body", "field"), [
    ({"duration": "1d", "plan": ["school"]}, "field plan"),
    ({"duration": "1d", "batch": {"x": 1}}, "field batch"),
    ({"duration": "1d", "batch": "x" * 200}, "field batch"),
    ({"duration": "1d", "batch": "a\nb"}, "field batch"),
    ({"duration": 2.5}, "field duration"),
    ({"duration": "400d"}, "field duration"),
    ({"duration": "1d", "count": "3"}, "field count"),
])
async def test_voucher_create_bad_input(
    client: TestClient[Any, Any], gw: StubGateway, body: dict[str, Any], field: str
) -> None:
    status, data = await post(client, "/v1/vouchers", body)
    assert status == 400, data
    assert field in data["error"]
    assert gw.store.vouchers() == []


async def test_voucher_create_with_batch_name(
    client: TestClient[Any, Any], gw: StubGateway
) -> None:
    status, data = await post(client, "/v1/vouchers", {"duration": "1d", "batch": "posyandu"})
    assert status == 201, data
    assert data["batch"] == "posyandu"
    assert [v.batch for v in gw.store.vouchers()] == ["posyandu"]


@pytest.mark.parametrize("code", ["nope", 12345, None, ["K7MQX-3PAR9"]])
async def test_revoke_bad_code_is_400_naming_field(
    client: TestClient[Any, Any], gw: StubGateway, code: Any
) -> None:
    status, data = await post(client, "/v1/vouchers/revoke", {"code": code})
    assert status == 400, data
    assert "code" in data["error"]
    assert gw.calls == []


@pytest.mark.parametrize("plan", [["school"], 3, "nosuchplan"])
async def test_plan_change_bad_plan(
    client: TestClient[Any, Any], gw: StubGateway, plan: Any
) -> None:
    status, data = await post(client, "/v1/clients/plan", {"mac": MAC, "plan": plan})
    assert 400 <= status < 500, data
    assert "field plan" in data["error"]
    assert gw.calls == []


async def test_store_failure_is_json_500_with_store_message(
    client: TestClient[Any, Any], gw: StubGateway
) -> None:
    gw.store.close()  # every store call now fails
    resp = await client.get("/v1/vouchers")
    assert resp.status == 500
    data = await resp.json()
    assert "state database" in data["error"]


async def test_bug_is_json_500(
    client: TestClient[Any, Any], gw: StubGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(mac: str, plan: str | None) -> Session:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gw, "change_plan", broken)
    status, data = await post(client, "/v1/clients/plan", {"mac": MAC, "plan": None})
    assert status == 500
    assert "RuntimeError" in data["error"]
