"""Blocking client of the local control API (HTTP/1.1 + JSON over a unix socket).

Used by the CLI, the lab and the benchmarks (the TUI uses ``aclient.py``, the
asyncio twin). ``request(method, path, body)`` is the generic call; the typed
helpers build a request model from ``gateway.control.schema`` (so a bad value
raises ``RequestInvalid`` before anything is sent) and return an answer model.

Every error answer becomes :class:`~gateway.errors.ControlError` with the
daemon's message, HTTP status, ``kind``, ``field`` and ``reason``; a daemon
that cannot be reached is a ControlError with status 503, kind "unavailable",
reason "unreachable".

Retries: a request that changes something (POST) is never sent twice once
the daemon may have got it. Failing to connect, or to send (the head and body
go in one ``sendall``; on a unix socket a closed peer refuses the first byte),
means the daemon got nothing: that is tried once more on a new connection. A
failure after sending (no answer, the connection cut, a timeout) is reason
"outcome_unknown" and says which list command shows what happened. A change
rides a kept-alive connection only if it answered within ``reuse_for``
seconds (far inside the daemon's idle timeout), so the daemon closing an idle
connection cannot cut a change short. A read (GET) changes nothing and is
tried once more after any failure.
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

# Methods that change nothing: safe to send again when the answer was lost.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
# A change reuses a kept-alive connection that answered this recently (seconds); aiohttp
# closes idle ones after an hour.
REUSE_FOR_CHANGES = 30.0
UNREACHABLE = "unreachable"
OUTCOME_UNKNOWN = "outcome_unknown"

# Where to look after a change whose answer was lost (longest path prefix first).
_CHECK_WITH = (("/v1/clients", "desanet clients"), ("/v1/vouchers", "desanet vouchers list"),
               ("/v1/services", "desanet services"), ("/v1/config", "desanet status"),
               ("/v1/reload", "desanet status"))


def check_with(path: str) -> str:
    """The command that shows whether a change to ``path`` happened."""
    return next((cmd for prefix, cmd in _CHECK_WITH if path.startswith(prefix)),
                "desanet status")


def unreachable(socket_path: str, exc: BaseException) -> ControlError:
    reason = getattr(exc, "strerror", None) or exc
    return ControlError(f"cannot reach the daemon at {socket_path} ({reason}); "
                        "is `desanet run` running, and are you root?", 503, "unavailable",
                        reason=UNREACHABLE)


def outcome_unknown(method: str, path: str, why: str) -> ControlError:
    """A change was sent and its answer lost: it may or may not have happened."""
    return ControlError(f"{method} {path}: sent; outcome unknown ({why}), check with "
                        f"`{check_with(path)}`", 504, "unavailable", reason=OUTCOME_UNKNOWN)


def no_answer(method: str, path: str, wait: float) -> ControlError:
    if method in IDEMPOTENT:
        return ControlError(f"the daemon did not answer {method} {path} within {wait:g}s", 504,
                            "unavailable")
    return outcome_unknown(method, path, f"no answer within {wait:g}s")


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
    """One persistent connection; see the module doc for when a request is sent again."""

    def __init__(self, socket_path: str, timeout: float = 10.0,
                 reuse_for: float = REUSE_FOR_CHANGES) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.reuse_for = reuse_for
        self._conn: _UnixHTTPConnection | None = None
        self._answered: float | None = None  # monotonic time of the connection's last answer

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._answered = None

    def _connect(self, wait: float) -> _UnixHTTPConnection:
        """The open connection, or a new one; raises ControlError("unreachable")."""
        if self._conn is None:
            self._conn = _UnixHTTPConnection(self.socket_path, wait)
        self._conn.timeout = wait
        if self._conn.sock is None:
            try:
                self._conn.connect()
            except OSError as exc:  # refused, no such file, not root, accept backlog full
                self.close()
                raise unreachable(self.socket_path, exc) from exc
        else:
            self._conn.sock.settimeout(wait)
        return self._conn

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
        idempotent = method in IDEMPOTENT
        if not idempotent and self._answered is not None \
                and time.monotonic() - self._answered > self.reuse_for:
            self.close()  # idle a while: the daemon may close it under a change
        for attempt in (1, 2):
            again = attempt == 1 and idempotent
            conn = self._connect(wait)
            try:
                # One sendall of head and body: when it fails, the daemon has not got
                # the whole request and cannot have acted on it.
                conn.request(method, path, body=payload, headers=headers)
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if attempt == 1:
                    continue  # nothing reached the daemon: safe for a change too
                raise ControlError(f"{method} {path}: the daemon closed the connection before "
                                   f"the request was sent ({exc}); nothing was done", 503,
                                   "unavailable") from exc
            try:
                resp = conn.getresponse()
                raw = resp.read()
            except TimeoutError as exc:
                self.close()
                raise no_answer(method, path, wait) from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if again:
                    continue
                if idempotent:
                    raise ControlError(f"{method} {path}: the daemon closed the connection "
                                       f"without an answer ({exc})", 503, "unavailable") from exc
                raise outcome_unknown(method, path, f"the connection was cut: {exc}") from exc
            self._answered = time.monotonic()
            if resp.will_close:
                self.close()
            return decode_answer(method, path, resp.status, raw)
        raise AssertionError("unreachable: the second attempt returns or raises")

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
