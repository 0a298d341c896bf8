"""Load, validate and atomically write the gateway config.

Every problem is reported at once, each line starting with the field path
(``shaping.client_down: "10 Mbps" is not a rate; write e.g. "10mbit" ...``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from gateway.config.diff import is_secret
from gateway.config.schema import (
    CROSS_FIELD,
    Config,
    Dhcp,
    Network,
    Shaping,
    WalledGarden,
    garden_problems,
    lan_problems,
    wan_problems,
)
from gateway.config.telemetry import FIELD_LINES
from gateway.errors import ConfigError

DEFAULT_PATH = "/etc/desanet/gateway.toml"


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML file; raise ConfigError listing every problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(["file not found; create it from examples/gateway.toml"], source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read file: {exc}"], source) from exc
    return parse_config_text(text, source)


def parse_config_text(text: str, source: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"TOML syntax error: {exc}"], source) from exc
    return parse_config(data, source)


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = format_errors(exc)
        raise ConfigError(problems + _cross_checks_despite(exc, data), source) from None


def format_errors(exc: ValidationError, root: type[BaseModel] = Config) -> list[str]:
    """One line per problem, "path: message"; ``root`` is the model that was validated
    (the config by default; the control API's request models use it too)."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if err["type"] in (CROSS_FIELD, FIELD_LINES):
            lines += err["msg"].splitlines()  # each line names its own field
            continue
        path = _path(loc) or "(top level)"
        lines.append(f"{path}: {_message(err, loc, root)}")
    return lines


def _cross_checks_despite(exc: ValidationError, data: dict[str, Any]) -> list[str]:
    """Pydantic skips cross-section checks when any field is invalid; run them
    anyway on the sections they need, when those sections are valid, so the
    technician sees every problem at once."""
    if any(err["type"] == CROSS_FIELD for err in exc.errors()):
        return []
    try:
        network = Network.model_validate(data.get("network"))
    except ValidationError:
        return []
    problems = wan_problems(network)
    with contextlib.suppress(ValidationError):
        dhcp = Dhcp.model_validate(data.get("dhcp"))
        shaping = Shaping.model_validate(data.get("shaping", {}))
        problems += lan_problems(network, dhcp, shaping)
    with contextlib.suppress(ValidationError):
        problems += garden_problems(network, WalledGarden.model_validate(
            data.get("walled_garden", {})))
    return problems


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _message(err: Any, loc: tuple[Any, ...], root: type[BaseModel] = Config) -> str:
    kind = err["type"]
    msg: str = err["msg"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1], root)
        keys = ", ".join(model.model_fields) if model else "see examples/gateway.toml"
        return f"unknown key; valid keys here are: {keys}"
    example = _example(loc, root)
    hint = f"; write e.g. {example}" if example else ""
    if kind == "missing":
        return f"required but missing{hint}"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind.startswith(("literal_", "enum")):
        return f"{_found(err)} is not allowed: {msg[0].lower() + msg[1:]}"
    if err.get("ctx") is not None and kind not in ("string_pattern_mismatch",) and not loc:
        return msg
    found = _found(err)
    if loc and not isinstance(err.get("input"), dict):
        return f"{found} is not valid ({msg[0].lower() + msg[1:]}){hint}"
    return msg


def _found(err: Any) -> str:
    if is_secret(_path(tuple(err["loc"]))):
        return "(secret)"  # a password typed as a number must not land in a log either
    value = err.get("input")
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _model_at(loc: tuple[Any, ...], root: type[BaseModel] = Config) -> type[BaseModel] | None:
    model: Any = root
    for part in loc:
        field = _field(model, part)
        if field is None:
            # dict/list containers: the next part is a key or an index
            continue
        model = _inner_model(field)
        if model is None:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _field(model: Any, name: Any) -> FieldInfo | None:
    if isinstance(model, type) and issubclass(model, BaseModel) and isinstance(name, str):
        return model.model_fields.get(name)
    return None


def _inner_model(field: FieldInfo) -> type[BaseModel] | None:
    ann = field.annotation
    for candidate in (ann, *getattr(ann, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _example(loc: tuple[Any, ...], root: type[BaseModel] = Config) -> str:
    model: Any = root
    field: FieldInfo | None = None
    for part in loc:
        nxt = _field(model, part)
        if nxt is None:
            continue
        field = nxt
        model = _inner_model(nxt) or model
    if field is None or not field.examples:
        return ""
    return json.dumps(field.examples[0])


def write_config_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Validate, then replace ``path`` so that readers see the old or new file, never half."""
    parse_config_text(text, str(path))
    write_file_atomic(path, text)


def write_file_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text``: owner-only temp file, fsync, rename, fsync the
    directory, so a power cut leaves the old file or the new one. Blocks; raises OSError."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".gateway.", suffix=".toml", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
