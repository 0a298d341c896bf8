"""The one domain-error -> HTTP table covers every error class of gateway.errors."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from gateway import errors as E
from gateway.control.errors import KINDS, TABLE, error_body, mapping_for
from gateway.control.schema import AuthRequest, RequestInvalid, parse_request


def _domain_classes() -> list[type[E.DesanetError]]:
    return [cls for _, cls in inspect.getmembers(E, inspect.isclass)
            if issubclass(cls, E.DesanetError) and cls.__module__ == E.__name__]


# Every class defined in gateway/errors.py, with the answer it must get.
EXPECTED: dict[str, tuple[int, str]] = {
    "DesanetError": (500, "internal"),
    "Invalid": (400, "invalid"),
    "ConfigError": (400, "invalid"),
    "SubmissionTooLarge": (413, "invalid"),
    "NotFound": (404, "not_found"),
    "Conflict": (409, "conflict"),
    "AmbiguousClient": (409, "conflict"),
    "OutboxStateError": (409, "conflict"),
    "Refused": (409, "refused"),
    "PortalDenied": (409, "refused"),
    "VoucherError": (404, "refused"),
    "ApplyFailed": (422, "refused"),
    "Unavailable": (503, "unavailable"),
    "UpstreamDown": (503, "unavailable"),
    "StoreError": (500, "internal"),
    "FirewallError": (500, "internal"),
    "ShapingError": (500, "internal"),
    "ServiceError": (500, "internal"),
    "LabError": (500, "internal"),
    "ControlError": (502, "internal"),
}


def test_discovery_finds_the_family() -> None:
    names = {cls.__name__ for cls in _domain_classes()}
    assert {"Invalid", "NotFound", "Refused", "ApplyFailed", "UpstreamDown"} <= names


@pytest.mark.parametrize("cls", _domain_classes(), ids=lambda c: c.__name__)
def test_every_domain_error_has_its_own_entry(cls: type[E.DesanetError]) -> None:
    assert cls in TABLE, f"{cls.__name__} has no entry in gateway/control/errors.py TABLE"
    assert cls.__name__ in EXPECTED, f"add {cls.__name__} to EXPECTED in this test"
    assert tuple(mapping_for(cls)) == EXPECTED[cls.__name__]
    assert mapping_for(cls).kind in KINDS


def _instance(cls: type[E.DesanetError]) -> E.DesanetError:
    """One instance of each class, built with its own constructor."""
    samples: dict[type[Any], E.DesanetError] = {
        E.Invalid: E.Invalid("plan", ["x"], "a plan name", '"school"'),
        E.ConfigError: E.ConfigError(["portal.mode: bad", "dhcp.range_end: bad"], "/tmp/x.toml"),
        E.SubmissionTooLarge: E.SubmissionTooLarge("form body over 1 MiB"),
        E.Refused: E.Refused("mode", "voucher logins are off"),
        E.PortalDenied: E.PortalDenied("full"),
        E.AmbiguousClient: E.AmbiguousClient("02:d5:00:00:00:01", ["10.42.0.1", "10.42.0.2"]),
        E.VoucherError: E.VoucherError("revoked", "this voucher was revoked"),
        E.ApplyFailed: E.ApplyFailed("dnsmasq", "exited with 1"),
        E.UpstreamDown: E.UpstreamDown("dukcapil down", 502),
        E.ControlError: E.ControlError("no such route", 404, "not_found"),
    }
    return samples.get(cls) or cls(f"{cls.__name__} happened")


@pytest.mark.parametrize("cls", _domain_classes(), ids=lambda c: c.__name__)
def test_error_body_has_status_kind_and_message(cls: type[E.DesanetError]) -> None:
    exc = _instance(cls)
    status, body = error_body(exc)
    expected = (404, "not_found") if cls is E.ControlError else EXPECTED[cls.__name__]
    assert (status, body["kind"]) == expected
    assert body["error"] == str(exc)


@pytest.mark.parametrize(("exc", "extra"), [
    (E.Invalid("plan", ["x"], "a plan name"), {"field": "plan"}),
    (E.VoucherError("revoked", "revoked"), {"reason": "revoked"}),
    (E.PortalDenied("full"), {"reason": "full"}),
    (E.ApplyFailed("dnsmasq", "exited with 1"), {"reason": "apply_failed", "step": "dnsmasq"}),
    (E.ConfigError(["portal.mode: bad", "dhcp: bad"], "x.toml"),
     {"field": "portal.mode", "problems": ["portal.mode: bad", "dhcp: bad"]}),
    (E.NotFound("02:00:00:00:00:01 has no active session"), {}),
])
def test_error_body_optional_keys(exc: E.DesanetError, extra: dict[str, Any]) -> None:
    _, body = error_body(exc)
    assert {k: v for k, v in body.items() if k not in ("error", "kind")} == extra


def test_request_invalid_lists_every_problem_and_names_first_field() -> None:
    with pytest.raises(RequestInvalid) as info:
        parse_request(AuthRequest, {"mac": "nope", "plan": 3})
    status, body = error_body(info.value)
    assert status == 400 and body["kind"] == "invalid" and body["field"] == "mac"
    assert body["error"].startswith("field mac:")
    assert [p.split(":")[0] for p in body["problems"]] == ["field mac", "field plan"]


@pytest.mark.parametrize(("status", "kind"), [(400, "invalid"), (404, "not_found"),
                                               (409, "conflict"), (500, "internal")])
def test_old_style_control_error_gets_a_kind_from_its_status(status: int, kind: str) -> None:
    assert error_body(E.ControlError("x", status)) == (status, {"error": "x", "kind": kind})


class Boom(Exception):
    pass


def test_unknown_exception_is_internal_and_names_only_its_type() -> None:
    status, body = error_body(Boom("secret detail /etc/shadow"))
    assert status == 500
    assert body == {"error": "internal error (Boom); see the daemon log", "kind": "internal"}


def test_subclass_outside_the_module_takes_its_ancestors_entry() -> None:
    class LocalMissing(E.NotFound):
        pass

    assert tuple(mapping_for(LocalMissing)) == (404, "not_found")
    assert tuple(mapping_for(RequestInvalid)) == (400, "invalid")
