"""Blocking client of the local control API (HTTP/1.1 + JSON over a unix socket).

Used by the CLI, the lab and the benchmarks; the TUI will use it too.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from typing import Any

from gateway.errors import ControlError


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

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request; return the decoded JSON or raise ControlError."""
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = _UnixHTTPConnection(self.socket_path, self.timeout)
            try:
                self._conn.request(method, path, body=payload, headers=headers)
                resp = self._conn.getresponse()
                raw = resp.read()
                break
            except (ConnectionError, http.client.HTTPException, BrokenPipeError) as exc:
                self.close()
                if attempt == 2:
                    raise ControlError(f"control socket {self.socket_path}: {exc}", 503) from exc
            except OSError as exc:
                self.close()
                raise ControlError(
                    f"cannot reach the daemon at {self.socket_path} ({exc.strerror or exc}); "
                    "is `desanet run` running, and are you root?",
                    503,
                ) from exc
        try:
            data = json.loads(raw) if raw else None
        except json.JSONDecodeError as exc:
            raise ControlError(f"daemon sent invalid JSON for {method} {path}", 502) from exc
        if resp.status >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            raise ControlError(message or f"{method} {path} failed with {resp.status}", resp.status)
        return data
