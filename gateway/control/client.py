"""Blocking client of the local control API (HTTP/1.1 + JSON over a unix socket).

Used by the CLI, the lab and the benchmarks (the TUI uses ``aclient.py``, the
asyncio twin). ``request(method, path, body)`` is the generic call; the typed
helpers build a request model from ``gateway.control.schema`` (so a bad value
raises ``RequestInvalid`` before anything is sent) and return an answer model.

Every error answer becomes :class:`~gateway.errors.ControlError` with the
daemon's message, HTTP status, ``kind``, ``field`` and ``reason``; a daemon
that cannot be reached is a ControlError with status 503, kind "unavailable".
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import Any, TypeVar
from urllib.parse import urlencode

from pydantic import BaseModel, ValidationError

from gateway.control.errors import KIND_OF_STATUS
from gateway.control.schema import (
    ByRequest,
    ConfigApplyOut,
    ConfigApplyRequest,
    ConfigConfirmOut,
    ConfigDiffOut,
    ConfigRollbackOut,
    ConfigShowOut,
    ConfigTextRequest,
    EventOut,
    EventsOut,
    EventsQuery,
    ReloadOut,
    parse_request,
)
from gateway.errors import ControlError

M = TypeVar("M", bound=BaseModel)

# The socket waits this much longer than a long-poll asks the daemon to wait.
LONG_POLL_MARGIN = 10.0


# A converge runs dnsmasq's check and restart and may rebuild thousands of classes:
# wait for its answer rather than report a change as failed that then goes on.
CONVERGE_TIMEOUT = 120.0

class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        # A unix socket with a timeout is non-blocking: a full accept backlog
        # answers EAGAIN at once instead of waiting. Wait and retry briefly.
        deadline = time.monotonic() + (self.timeout or 10.0)
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self._path)
            except BlockingIOError:
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
                continue
            except OSError:
                sock.close()
                raise
            self.sock = sock
            return


# -- shared with aclient.py -----------------------------------------------------------


def unreachable(socket_path: str, exc: BaseException) -> ControlError:
    reason = getattr(exc, "strerror", None) or exc
    return ControlError(f"cannot reach the daemon at {socket_path} ({reason}); "
                        "is `desanet run` running, and are you root?", 503, "unavailable")


def decode_answer(method: str, path: str, status: int, raw: bytes) -> Any:
    """The JSON of an answer, or the ControlError its error body describes."""
    try:
        data = json.loads(raw) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        if status >= 400:
            raise ControlError(f"{method} {path} failed with {status}", status,
                               "internal") from exc
        raise ControlError(f"daemon sent invalid JSON for {method} {path}", 502,
                           "internal") from exc
    if status >= 400:
        raise error_from_body(method, path, status, data)
    return data


def error_from_body(method: str, path: str, status: int, data: Any) -> ControlError:
    body = data if isinstance(data, dict) else {}

    def text(key: str) -> str | None:
        value = body.get(key)
        return value if isinstance(value, str) and value else None

    return ControlError(text("error") or f"{method} {path} failed with {status}", status,
                        text("kind") or KIND_OF_STATUS.get(status, "internal"),
                        text("field"), text("reason"))


def parse_answer(model: type[M], data: Any, what: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ControlError(f"daemon sent an unexpected answer for {what} "
                           f"({exc.error_count()} problem(s), first: "
                           f"{exc.errors()[0]['loc']} {exc.errors()[0]['msg']}); "
                           "are the CLI and the daemon the same version?", 502,
                           "internal") from None


def events_path(since: int, timeout: float) -> str:
    query = parse_request(EventsQuery, {"since": since, "timeout": timeout})
    return "/v1/events?" + urlencode({"since": query.since, "timeout": f"{query.timeout:g}"})


# -- the client ----------------------------------------------------------------------


class ControlClient:
    """One persistent connection; reconnects once if the daemon closed it."""

    def __init__(self, socket_path: str, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._conn: _UnixHTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                timeout: float | None = None) -> Any:
        """Send one request; return the decoded JSON or raise ControlError.

        ``timeout`` (seconds) overrides the client's for this request (long polls).
        """
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        wait = self.timeout if timeout is None else timeout
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = _UnixHTTPConnection(self.socket_path, wait)
            self._conn.timeout = wait
            if self._conn.sock is not None:
                self._conn.sock.settimeout(wait)
            try:
                self._conn.request(method, path, body=payload, headers=headers)
                resp = self._conn.getresponse()
                raw = resp.read()
                break
            except (ConnectionError, http.client.HTTPException, BrokenPipeError) as exc:
                self.close()
                if attempt == 2:
                    raise ControlError(f"control socket {self.socket_path}: {exc}", 503,
                                       "unavailable") from exc
            except TimeoutError as exc:
                self.close()
                raise ControlError(f"the daemon did not answer {method} {path} within "
                                   f"{wait:g}s", 504, "unavailable") from exc
            except OSError as exc:
                self.close()
                raise unreachable(self.socket_path, exc) from exc
        return decode_answer(method, path, resp.status, raw)

    # -- typed helpers ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        data = self.request("GET", "/v1/status")
        if not isinstance(data, dict):
            raise ControlError("daemon sent an unexpected answer for GET /v1/status", 502,
                               "internal")
        return data

    def config_show(self) -> ConfigShowOut:
        return parse_answer(ConfigShowOut, self.request("GET", "/v1/config"), "GET /v1/config")

    def config_diff(self, text: str) -> ConfigDiffOut:
        body = parse_request(ConfigTextRequest, {"text": text}).to_json()
        return parse_answer(ConfigDiffOut, self.request("POST", "/v1/config/diff", body),
                            "POST /v1/config/diff")

    def config_apply(self, text: str, confirm: str | int | None = None,
                     by: str | None = None) -> ConfigApplyOut:
        body = parse_request(ConfigApplyRequest,
                             {"text": text, "confirm": confirm, "by": by}).to_json()
        return parse_answer(ConfigApplyOut, self.request("POST", "/v1/config/apply", body,
                                         timeout=CONVERGE_TIMEOUT),
                            "POST /v1/config/apply")

    def config_confirm(self, by: str | None = None) -> ConfigConfirmOut:
        body = parse_request(ByRequest, {"by": by}).to_json()
        return parse_answer(ConfigConfirmOut, self.request("POST", "/v1/config/confirm", body,
                                         timeout=CONVERGE_TIMEOUT),
                            "POST /v1/config/confirm")

    def config_rollback(self, by: str | None = None) -> ConfigRollbackOut:
        body = parse_request(ByRequest, {"by": by}).to_json()
        return parse_answer(ConfigRollbackOut, self.request("POST", "/v1/config/rollback", body,
                                         timeout=CONVERGE_TIMEOUT),
                            "POST /v1/config/rollback")

    def reload(self, by: str | None = None, timeout: float = CONVERGE_TIMEOUT) -> ReloadOut:
        """Converge on the config file as it is on disk; waits for the outcome."""
        body = parse_request(ByRequest, {"by": by}).to_json()
        return parse_answer(ReloadOut, self.request("POST", "/v1/reload", body, timeout=timeout),
                            "POST /v1/reload")

    def events(self, since: int = 0, timeout: float = 25.0) -> EventsOut:
        """One long poll: events after ``since``, waiting up to ``timeout`` s for the first."""
        data = self.request("GET", events_path(since, timeout),
                            timeout=timeout + LONG_POLL_MARGIN)
        return parse_answer(EventsOut, data, "GET /v1/events")

    def follow_events(self, since: int = 0, timeout: float = 25.0) -> Iterator[EventOut]:
        """Every event after ``since``, forever (one long poll after another)."""
        while True:
            page = self.events(since, timeout)
            yield from page.events
            since = page.next
