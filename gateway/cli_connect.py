"""Which daemon the `desanet` command talks to, and what it learns from it first.

The socket: ``--socket``, ``$DESANET_SOCKET``, the config file's
``control.socket``, the installed default, or the one lab that is up. When
the daemon cannot be reached, :func:`unreachable_hint` lists the labs that
are up so a technician can pick one.

The time zone: dates shown to people are the site's local time
(``site.timezone``). The CLI learns the zone from the daemon's ``GET
/v1/status`` answer (its ``timezone`` key), not from a config file, because
the daemon it talks to (a lab, another config path) is the one whose site
the dates belong to. A daemon too old to say, or not answering, gives the
default zone.
"""

from __future__ import annotations

import argparse
import glob
import os
import shlex
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config import DEFAULT_PATH, load_config
from gateway.errors import ConfigError, ControlError
from gateway.timefmt import DEFAULT_TIMEZONE, is_known_zone

DEFAULT_SOCKET = "/run/desanet/control.sock"
LAB_SOCKETS = "/run/desanet-lab/*/control.sock"


def resolve_socket(args: argparse.Namespace) -> str:
    """--socket, $DESANET_SOCKET, the config's control.socket, the default, or the one lab."""
    if getattr(args, "socket", None):
        return str(args.socket)
    if os.environ.get("DESANET_SOCKET"):
        return os.environ["DESANET_SOCKET"]
    config = getattr(args, "config", None)
    if config or Path(DEFAULT_PATH).exists():
        try:
            return load_config(config or DEFAULT_PATH).control.socket
        except ConfigError:
            pass
    if Path(DEFAULT_SOCKET).exists():
        return DEFAULT_SOCKET
    labs = sorted(glob.glob(LAB_SOCKETS))
    if len(labs) == 1:
        return labs[0]
    return DEFAULT_SOCKET


def _answers(path: str) -> bool | None:
    """True when something accepts on ``path``, None when we may not look (not root)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(1.0)
    try:
        sock.connect(path)
    except PermissionError:
        return None
    except OSError:
        return False  # a socket file left by a lab that is gone
    finally:
        sock.close()
    return True


def labs_up(pattern: str = LAB_SOCKETS) -> list[tuple[str, str]]:
    """(prefix, socket path) of every lab whose daemon socket is there and answers."""
    found = []
    for path in sorted(glob.glob(pattern)):
        if _answers(path) is not False:
            found.append((Path(path).parent.name, path))
    return found


def unreachable_hint(tried: str, argv: list[str], pattern: str = LAB_SOCKETS) -> list[str]:
    """Lines naming the labs that are up (other than ``tried``) and how to pick one."""
    labs = [(prefix, path) for prefix, path in labs_up(pattern) if path != tried]
    if not labs:
        return []
    rest = shlex.join(_without_socket(argv))
    lines = ["labs that are up; pick one with --socket (or $DESANET_SOCKET; the lab's own "
             "commands take --prefix P, e.g. `desanet lab status --prefix P`):"]
    lines += [f"  lab {prefix!r}: desanet --socket {path} {rest}".rstrip() for prefix, path in labs]
    return lines


def _without_socket(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == "--socket":
            skip = True
        elif not word.startswith("--socket="):
            out.append(word)
    return out


def zone_of(status: Any) -> str:
    """The site's time zone named in a status answer; the default if it names none we know."""
    name = status.get("timezone") if isinstance(status, dict) else None
    return name if isinstance(name, str) and is_known_zone(name) else DEFAULT_TIMEZONE


class SiteZone:
    """The zone for the dates one CLI call prints: asked of the daemon once, when needed."""

    def __init__(self, client: Callable[[], Any]) -> None:
        self._client = client
        self._name: str | None = None

    def learn(self, status: Any) -> None:
        """Take it from a status answer the command already has (no second request)."""
        self._name = zone_of(status)

    @property
    def name(self) -> str:
        if self._name is None:
            try:
                self.learn(self._client().request("GET", "/v1/status"))
            except ControlError:
                return DEFAULT_TIMEZONE  # not kept: the next date may find the daemon back
        assert self._name is not None
        return self._name
