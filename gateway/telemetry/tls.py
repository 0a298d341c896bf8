"""TLS for the MQTT link: SSL contexts that resume the last session (see gateway/telemetry/mqtt.py).

A reconnect over a satellite link costs a full TLS handshake with both
certificates (~3 kB with a client certificate); offering the session of the
previous connection lets the broker skip them. Python can resume a session
only with the SSL context that made it, so one context is kept per broker and
set of certificate files, as they are on disk (a renewed file makes a new
context and a full handshake).
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import Any, Protocol


class TlsSettings(Protocol):
    """What a context is made from (LinkSettings has it)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def ca_file(self) -> str | None: ...
    @property
    def cert_file(self) -> str | None: ...
    @property
    def key_file(self) -> str | None: ...


class ResumingContext(ssl.SSLContext):
    """A client SSL context that offers the TLS session of its last connection again."""

    session: ssl.SSLSession | None = None
    last: ssl.SSLSocket | None = None

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if self.session is not None:
            kwargs.setdefault("session", self.session)
        try:
            wrapped = super().wrap_socket(sock, *args, **kwargs)
        except ValueError:  # a session the context will not take: a full handshake
            kwargs.pop("session", None)
            wrapped = super().wrap_socket(sock, *args, **kwargs)
        self.last = wrapped
        return wrapped


class TlsContexts:
    """The Negotiator's SSL contexts, per broker and certificate files (see the module
    docstring). ``get`` reads the files: call it on a worker thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[tuple[object, ...], ResumingContext] = {}

    def get(self, s: TlsSettings) -> ResumingContext:
        stamps = tuple((f, os.stat(f).st_mtime_ns, os.stat(f).st_size) if f else None
                       for f in (s.ca_file, s.cert_file, s.key_file))
        key = (s.host, s.port, stamps)
        with self._lock:
            ctx = self._by_key.get(key)
            if ctx is None:
                ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the broker and its name
                if s.ca_file:
                    ctx.load_verify_locations(s.ca_file)
                else:
                    ctx.load_default_certs()
                if s.cert_file:
                    ctx.load_cert_chain(s.cert_file, s.key_file)
                self._by_key = {k: v for k, v in self._by_key.items() if k[:2] != key[:2]}
                self._by_key[key] = ctx
            return ctx
