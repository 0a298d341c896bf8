"""CLI plugins: extra `desanet` commands from other distributions.

A distribution adds commands by declaring an entry point in the group
``desanet.plugins`` whose object is ``register(subparsers) -> None`` (the
development-only lab does: ``lab = "desanet_lab.cli:register"``). A plugin
that fails to load or register is skipped with a warning on stderr; it never
breaks the CLI.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

GROUP = "desanet.plugins"


def register_plugins(subparsers: argparse._SubParsersAction, group: str = GROUP) -> list[str]:
    """Call every ``group`` entry point with ``subparsers``; return the names registered."""
    registered: list[str] = []
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            register = ep.load()
            register(subparsers)
        except Exception as exc:  # a broken plugin must not take the CLI down with it
            print(f"desanet: warning: plugin {ep.name!r} ({ep.value}) skipped: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        registered.append(ep.name)
    return registered
