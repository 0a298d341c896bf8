"""What every check may read: the config file (or why it cannot be read) and the options.

Diagnostics must work when the daemon is down, so they read the config file and the
system directly; nothing here needs the daemon. The config is loaded once per run and
shared by the checks (read only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from gateway.config import DEFAULT_PATH, Config, load_config
from gateway.errors import ConfigError

DEFAULT_SPEED_TARGET = 1_000_000  # bit/s: a modest village uplink still reaches this
DEFAULT_SPEED_BYTES = 1024 * 1024  # a small download: a metered VSAT pays for every byte
DEFAULT_TIMEOUT = 4.0  # s: one network exchange (a DNS answer, a TCP connect, a TLS handshake)


@dataclass(frozen=True)
class DiagOptions:
    """Knobs of a run; the defaults keep a run short and cheap on a metered uplink."""

    timeout: float = DEFAULT_TIMEOUT
    speed_url: str | None = None  # default: the first local service's upstream
    speed_target: int = DEFAULT_SPEED_TARGET  # bit/s
    speed_bytes: int = DEFAULT_SPEED_BYTES
    dns_name: str | None = None  # default: a service or walled-garden host name
    socket: str | None = None  # the control socket (default: the config's control.socket)
    log_file: str | None = None  # default: journald's desanet unit, else a gateway.log
    log_lines: int = 20


@dataclass
class DiagContext:
    config_path: str
    config: Config | None
    config_problems: list[str]
    options: DiagOptions = field(default_factory=DiagOptions)

    @property
    def is_root(self) -> bool:
        return os.geteuid() == 0


def load_context(config_path: str | None, options: DiagOptions | None = None) -> DiagContext:
    """Read the config file; a file that is missing or invalid is recorded, not raised
    (the `config` check reports it and the checks needing it are skipped)."""
    path = config_path or DEFAULT_PATH
    try:
        return DiagContext(path, load_config(path), [], options or DiagOptions())
    except ConfigError as exc:
        return DiagContext(path, None, list(exc.problems), options or DiagOptions())
