"""Typed control requests: normalisation, and every problem named like config problems."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from gateway.control.schema import (
    AuthRequest,
    ByRequest,
    ConfigApplyOut,
    ConfigApplyRequest,
    ConfigTextRequest,
    DeauthRequest,
    EventsOut,
    EventsQuery,
    PlanRequest,
    RequestInvalid,
    VoucherCreateRequest,
    VoucherRevokeRequest,
    parse_request,
    parse_request_bytes,
)
from gateway.errors import Invalid

MAC = "02:00:00:00:00:01"


@pytest.mark.parametrize(("model", "data", "expected"), [
    (AuthRequest, {"mac": "02-00-00-AA-BB-CC"},
     {"mac": "02:00:00:aa:bb:cc", "ip": None, "duration": None, "plan": None,
      "force": False}),
    (AuthRequest, {"mac": MAC, "ip": " 10.42.0.5", "duration": "4h", "plan": "school"},
     {"mac": MAC, "ip": "10.42.0.5", "duration": 14400, "plan": "school", "force": False}),
    (AuthRequest, {"mac": MAC, "duration": 90, "force": True},
     {"mac": MAC, "ip": None, "duration": 90, "plan": None, "force": True}),
    (DeauthRequest, {"mac": MAC.upper()}, {"mac": MAC}),
    (PlanRequest, {"mac": MAC, "plan": None}, {"mac": MAC, "plan": None}),
    (VoucherCreateRequest, {"duration": "1d"},
     {"count": 1, "duration": 86400, "max_devices": 1, "plan": None, "batch": None,
      "name": None, "seller": None}),
    (VoucherCreateRequest, {"duration": "366d", "count": 1000, "max_devices": 10,
                            "batch": "posyandu mei", "name": "Posyandu Mei",
                            "seller": "Warung Bu Sari"},
     {"count": 1000, "duration": 366 * 86400, "max_devices": 10, "plan": None,
      "batch": "posyandu mei", "name": "Posyandu Mei", "seller": "Warung Bu Sari"}),
    (VoucherRevokeRequest, {"code": "k7mqx 3par9"}, {"code": "K7MQX-3PAR9"}),
    (ConfigApplyRequest, {"text": "[site]\n", "confirm": "5m", "by": "budi"},
     {"text": "[site]\n", "confirm": 300, "by": "budi"}),
    (ConfigApplyRequest, {"text": ""}, {"text": "", "confirm": None, "by": None}),
    (ConfigTextRequest, {"text": "x"}, {"text": "x"}),
    (ByRequest, {}, {"by": None}),
    (EventsQuery, {}, {"since": 0, "timeout": 25.0}),
    (EventsQuery, {"since": "7", "timeout": "0"}, {"since": 7, "timeout": 0.0}),
])
def test_good_requests_are_normalised(model: type[BaseModel], data: dict[str, Any],
                                      expected: dict[str, Any]) -> None:
    assert parse_request(model, data).model_dump() == expected


@pytest.mark.parametrize(("model", "data", "fields"), [
    (AuthRequest, {}, ["mac"]),
    (AuthRequest, {"mac": 5}, ["mac"]),
    (AuthRequest, {"mac": "02:00:00:00:00:0g"}, ["mac"]),
    (AuthRequest, {"mac": MAC, "plan": ["school"]}, ["plan"]),
    (AuthRequest, {"mac": MAC, "plan": {"a": 1}}, ["plan"]),
    (AuthRequest, {"mac": MAC, "plan": ""}, ["plan"]),
    (AuthRequest, {"mac": MAC, "duration": 1.5}, ["duration"]),
    (AuthRequest, {"mac": MAC, "duration": ["4h"]}, ["duration"]),
    (AuthRequest, {"mac": MAC, "duration": "99999d"}, ["duration"]),
    (AuthRequest, {"mac": MAC, "duration": True}, ["duration"]),
    (AuthRequest, {"mac": MAC, "ip": 167772261}, ["ip"]),
    (AuthRequest, {"mac": MAC, "ip": "10.42.0.300"}, ["ip"]),
    (AuthRequest, {"mac": MAC, "ip": "fe80::1"}, ["ip"]),
    (AuthRequest, {"mac": "x", "ip": 1, "duration": 0, "plan": 3, "extra": 1},
     ["mac", "ip", "duration", "plan", "extra"]),
    (PlanRequest, {"mac": MAC}, ["plan"]),
    (VoucherCreateRequest, {}, ["duration"]),
    (VoucherCreateRequest, {"duration": "1d", "count": "3"}, ["count"]),
    (VoucherCreateRequest, {"duration": "1d", "count": 0}, ["count"]),
    (VoucherCreateRequest, {"duration": "1d", "count": 1001}, ["count"]),
    (VoucherCreateRequest, {"duration": "1d", "count": True}, ["count"]),
    (VoucherCreateRequest, {"duration": "1d", "max_devices": 11}, ["max_devices"]),
    (VoucherCreateRequest, {"duration": "400d"}, ["duration"]),
    (VoucherCreateRequest, {"duration": "1d", "batch": "x" * 65}, ["batch"]),
    (VoucherCreateRequest, {"duration": "1d", "batch": "a\nb"}, ["batch"]),
    (VoucherCreateRequest, {"duration": "1d", "batch": {"x": 1}}, ["batch"]),
    (VoucherCreateRequest, {"duration": "1d", "name": "x" * 65}, ["name"]),
    (VoucherCreateRequest, {"duration": "1d", "seller": "a\tb"}, ["seller"]),
    (VoucherCreateRequest, {"duration": "1d", "name": "Posyandu\x1b[2J"}, ["name"]),
    (VoucherCreateRequest, {"duration": "1d", "name": "   "}, ["name"]),
    (VoucherRevokeRequest, {"code": "nope"}, ["code"]),
    (VoucherRevokeRequest, {"code": 12345}, ["code"]),
    (VoucherRevokeRequest, {"code": None}, ["code"]),
    (VoucherRevokeRequest, {}, ["code"]),
    (ConfigApplyRequest, {"text": 3}, ["text"]),
    (ConfigApplyRequest, {"text": "", "confirm": "2d"}, ["confirm"]),
    (ConfigApplyRequest, {"text": "", "confirm": "soon"}, ["confirm"]),
    (ConfigApplyRequest, {"text": "", "by": "x" * 65}, ["by"]),
    (ByRequest, {"who": "budi"}, ["who"]),
    (EventsQuery, {"since": -1}, ["since"]),
    (EventsQuery, {"timeout": 61}, ["timeout"]),
    (EventsQuery, {"timeout": "soon"}, ["timeout"]),
])
def test_bad_requests_name_every_field(model: type[BaseModel], data: dict[str, Any],
                                       fields: list[str]) -> None:
    with pytest.raises(RequestInvalid) as info:
        parse_request(model, data)
    exc = info.value
    assert isinstance(exc, Invalid)
    assert exc.fields == fields
    assert exc.field == fields[0]
    assert str(exc).startswith(f"field {fields[0]}:")
    assert [p.split(":", 1)[0] for p in exc.problems] == [f"field {f}" for f in fields]
    assert str(exc) == "; ".join(exc.problems)


@pytest.mark.parametrize(("data", "text"), [
    ({"mac": MAC, "duration": "99999d"}, 'field duration: "99999d" is longer than 366 days'),
    ({"mac": MAC, "ip": "nope"}, 'field ip: "nope" is not an IPv4 address; write e.g. "10.42.0.100"'),
    ({}, 'field mac: required but missing; write e.g. "02:00:00:aa:bb:cc"'),
    ({"mac": MAC, "zz": 1}, "field zz: unknown key; valid keys here are: mac, ip, duration, plan"),
])
def test_messages_read_like_config_problems(data: dict[str, Any], text: str) -> None:
    with pytest.raises(RequestInvalid) as info:
        parse_request(AuthRequest, data)
    assert str(info.value).startswith(text)


@pytest.mark.parametrize("data", [[], "x", None, 3])
def test_body_must_be_an_object(data: object) -> None:
    with pytest.raises(RequestInvalid) as info:
        parse_request(DeauthRequest, data)
    assert info.value.field == "body"
    assert str(info.value).startswith("field body:")


def test_request_bytes() -> None:
    assert parse_request_bytes(ByRequest, b"").by is None
    assert parse_request_bytes(ByRequest, b'{"by": "budi"}').by == "budi"
    with pytest.raises(RequestInvalid, match="field body: not JSON"):
        parse_request_bytes(ByRequest, b"{nope")


def test_request_to_json_round_trips() -> None:
    req = AuthRequest(mac="02-00-00-00-00-01", duration="4h")
    assert req.to_json() == {"mac": MAC, "ip": None, "duration": 14400, "plan": None,
                             "force": False}
    assert parse_request(AuthRequest, req.to_json()) == req


def test_answers_keep_exactly_what_arrived() -> None:
    raw = {"applied": True, "version": "abc123abc123", "previous_version": "000000000000",
           "changes": [{"path": "portal.terms_text", "old": "a", "new": "b"}],
           "trial": {"started": 100, "deadline": 400, "previous_version": "000000000000",
                     "by": "budi"}, "new_key": [1]}
    out = ConfigApplyOut.model_validate(raw)
    assert out.trial is not None and out.trial.deadline == 400
    assert out.to_json() == raw
    events = {"events": [{"seq": 3, "time": 1700000000.5, "type": "session_ended",
                          "mac": MAC, "reason": "idle"}], "next": 3}
    parsed = EventsOut.model_validate(events)
    assert parsed.events[0].model_extra == {"mac": MAC, "reason": "idle"}
    assert parsed.to_json() == events
