"""What changes between two configs, in short lines a technician reads before applying.

Pure functions over plain dicts (a parsed TOML file, or a validated config
dumped with ``model_dump(mode="json")``)::

    >>> format_changes(config_changes({"portal": {"terms_text": "Setuju"}},
    ...                               {"portal": {"terms_text": "Saya setuju"}}))
    ["portal.terms_text: 'Setuju' -> 'Saya setuju'"]

Tables are compared key by key (dotted paths); lists and every other value
are compared whole. A key present on one side only is one change, however
big its value. Secrets (a path with a word like "password", "secret",
"token", "key", "psk") never show their values: "mqtt.password: (changed)".

``config_version`` names a config by content: the first 12 hex digits of the
sha256 of its canonical JSON, so comments, key order and whitespace of the
TOML file do not change it.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SECRET_WORDS = frozenset({"password", "passwords", "passwd", "passphrase", "secret", "secrets",
                          "token", "tokens", "key", "psk", "credential", "credentials"})
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")
_MAX_VALUE = 60


class _Absent:
    """The value of a key a config does not have (distinct from any TOML/JSON value)."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


@dataclass(frozen=True, slots=True)
class Change:
    """One value that differs; ``old``/``new`` is ``ABSENT`` for an added/removed key."""

    path: str
    old: Any
    new: Any

    @property
    def added(self) -> bool:
        return self.old is ABSENT

    @property
    def removed(self) -> bool:
        return self.new is ABSENT

    @property
    def secret(self) -> bool:
        return is_secret(self.path)

    def to_json(self) -> dict[str, Any]:
        """{"path", "old", "new"}: absent is null, a secret's values are "(secret)"."""
        def plain(value: Any) -> Any:
            if value is ABSENT:
                return None
            return "(secret)" if self.secret else redact(value)
        return {"path": self.path, "old": plain(self.old), "new": plain(self.new)}


def is_secret(path: str) -> bool:
    """True when a word of any part of ``path`` names a secret ("mqtt.api_key", not
    "portal.idle_timeout" or "keepalive")."""
    return any(word in SECRET_WORDS for word in _WORD_SPLIT.split(path.lower()))


def redact(value: Any) -> Any:
    """``value`` with the values of secret keys inside it (at any depth) as "(secret)"."""
    if isinstance(value, Mapping):
        return {k: "(secret)" if is_secret(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """Every difference between two config dicts, in a stable order (old keys first)."""
    out: list[Change] = []
    _walk("", old, new, out)
    return out


def _walk(prefix: str, old: Mapping[str, Any], new: Mapping[str, Any], out: list[Change]) -> None:
    keys = list(old) + [k for k in new if k not in old]
    for key in keys:
        path = f"{prefix}.{key}" if prefix else str(key)
        a = old.get(key, ABSENT)
        b = new.get(key, ABSENT)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            _walk(path, a, b, out)
        elif not _same(a, b):
            out.append(Change(path, a, b))


def _same(a: Any, b: Any) -> bool:
    # 1 == True and 1 == 1.0 in Python; in a config they are different values.
    return type(a) is type(b) and a == b


def format_changes(changes: list[Change]) -> list[str]:
    """One short line per change: "path: old -> new", "path: added 'x'", "path: removed"."""
    return [format_change(c) for c in changes]


def format_change(change: Change) -> str:
    if change.secret:
        what = "added" if change.added else "removed" if change.removed else "changed"
        return f"{change.path}: ({what})"
    if change.added:
        return f"{change.path}: added {_short(change.new)}"
    if change.removed:
        return f"{change.path}: removed (was {_short(change.old)})"
    return f"{change.path}: {_short(change.old)} -> {_short(change.new)}"


def _short(value: Any) -> str:
    text = repr(redact(value))
    return text if len(text) <= _MAX_VALUE else text[:_MAX_VALUE - 3] + "..."


# Settings the daemon reads only at start (where its state and control socket live):
# a reload or an apply that changes one is refused as "needs restart"
# (gateway/core/configuration.py), and `config diff` marks them.
RESTART_ONLY_PATHS = ("store.state_dir", "store.run_dir", "control.socket")


def needs_restart(path: str) -> bool:
    """True for a setting only a restart of the daemon may change."""
    return path in RESTART_ONLY_PATHS


def canonical_json(config: Mapping[str, Any]) -> str:
    """Key-sorted, compact JSON; dates and other non-JSON TOML values as text."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def config_version(config: str | Mapping[str, Any]) -> str:
    """First 12 hex digits of sha256(canonical JSON) of a TOML text or a config dict.

    Raises ``tomllib.TOMLDecodeError`` for text that is not TOML.
    """
    data = tomllib.loads(config) if isinstance(config, str) else config
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:12]


__all__ = ["ABSENT", "RESTART_ONLY_PATHS", "SECRET_WORDS", "Change", "canonical_json",
           "config_changes", "config_version", "format_change", "format_changes", "is_secret",
           "needs_restart", "redact"]
